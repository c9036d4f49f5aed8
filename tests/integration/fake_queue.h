// A stand-in fault queue for adopt-mode devices in the integration tier. No IOMMU here: the
// fault fd iopfd reads is one end of a SOCK_SEQPACKET socketpair whose other end the test keeps
// to inject page-request groups and read iopfd's responses. Its "iommufd" is /dev/null, so every
// map fails (ENOTTY) and every group is answered INVALID (map_failed): what is checked is that
// each group gets exactly one answer whatever happens around it.
#ifndef IOPFD_TESTS_INTEGRATION_FAKE_QUEUE_H_
#define IOPFD_TESTS_INTEGRATION_FAKE_QUEUE_H_

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "gtest/gtest.h"

namespace iopfd_test {

// struct iommu_hwpt_pgfault and struct iommu_hwpt_page_response, as the kernel lays them out.
struct Record {
  uint32_t flags, dev_id, pasid, grpid, perm, reserved;
  uint64_t addr;
  uint32_t length, cookie;
};
static_assert(sizeof(Record) == 40);
struct Response {
  uint32_t cookie, code;
};
constexpr uint32_t kLastPage = 1u << 1;
constexpr uint32_t kRead = 1u << 0;
constexpr uint32_t kDevId = 7;

// A stand-in fault queue and iommufd for one adopt-mode device.
struct FakeQueue {
  int ours = -1;    // the test's end: inject records, read responses
  int theirs = -1;  // iopfd's fault fd
  int iommufd = -1;
  uint32_t next_cookie = 1;
  FakeQueue() {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0) {
      ours = sv[0];
      theirs = sv[1];
    }
    iommufd = open("/dev/null", O_RDWR | O_CLOEXEC);
  }
  ~FakeQueue() {
    for (int fd : {ours, theirs, iommufd}) {
      if (fd >= 0) close(fd);
    }
  }
  FakeQueue(const FakeQueue&) = delete;
  FakeQueue& operator=(const FakeQueue&) = delete;
  // Queues one single-page group; returns its cookie.
  uint32_t Fault(uint64_t addr) {
    Record r{kLastPage, kDevId, 0, 1, kRead, 0, addr, 0, next_cookie++};
    EXPECT_EQ(send(ours, &r, sizeof(r), MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(r)));
    return r.cookie;
  }
  // Queues one single-page group unless the queue stays full for `ms` (nobody reads it);
  // returns its cookie, or 0 then.
  uint32_t FaultWithin(uint64_t addr, int ms) {
    pollfd p{ours, POLLOUT, 0};
    if (poll(&p, 1, ms) != 1) return 0;
    Record r{kLastPage, kDevId, 0, 1, kRead, 0, addr, 0, next_cookie};
    if (send(ours, &r, sizeof(r), MSG_NOSIGNAL | MSG_DONTWAIT) != static_cast<ssize_t>(sizeof(r))) {
      return 0;
    }
    return next_cookie++;
  }
  // Collects responses until `want` arrived or `seconds` passed; returns cookie -> count.
  std::map<uint32_t, int> Responses(size_t want, int seconds = 10) {
    std::map<uint32_t, int> seen;
    size_t total = 0;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (total < want && std::chrono::steady_clock::now() < end) {
      pollfd p{ours, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      Response buf[4096];
      ssize_t n = recv(ours, buf, sizeof(buf), MSG_DONTWAIT);
      for (ssize_t i = 0; i < n / static_cast<ssize_t>(sizeof(Response)); ++i) {
        ++seen[buf[i].cookie];
        ++total;
      }
    }
    return seen;
  }
  // True when nothing more arrives within ms.
  bool Quiet(int ms) {
    pollfd p{ours, POLLIN, 0};
    return poll(&p, 1, ms) == 0;
  }
};

inline std::string DeviceText(const std::string& name, const std::string& extra = "") {
  return "name = \"" + name + "\"\nattach = \"adopt\"\n\n[adopt]\niommufd_fd = \"" + name +
         ".iommufd\"\nfault_fd = \"" + name + ".fault\"\ndevice_id = 7\n" + extra +
         "\n[[space]]\nioas_id = 1\n  [[space.region]]\n  iova = 0x100000\n"
         "  size = \"64KiB\"\n  backing = \"anonymous\"\n  access = \"rw\"\n";
}

// Expects every cookie in [first, first + n) answered exactly once.
inline void ExpectEachOnce(const std::map<uint32_t, int>& seen, uint32_t first, uint32_t n,
                           const std::string& what) {
  EXPECT_EQ(seen.size(), n) << what;
  for (uint32_t c = first; c < first + n; ++c) {
    auto it = seen.find(c);
    EXPECT_TRUE(it != seen.end() && it->second == 1) << what << ": cookie " << c;
  }
}

}  // namespace iopfd_test

#endif  // IOPFD_TESTS_INTEGRATION_FAKE_QUEUE_H_
