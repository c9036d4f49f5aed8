// A real iopfd started the way systemd starts a Type=notify service with WatchdogSec=: it says
// READY=1 only after every configured device attached or failed with a logged reason, pings the
// watchdog from its loop, announces reloads (RELOADING=1 with MONOTONIC_USEC, then READY=1) and
// its stop (STOPPING=1).
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"

namespace {

using iopfd_test::Iopfd;
using iopfd_test::IopfdOptions;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// The service manager's end: a datagram socket iopfd's sd_notify writes to.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path_;
  }
  ~NotifySocket() {
    close(fd_);
    unlink(path_.c_str());
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  // The next message (within 10 s).
  std::optional<std::string> Next() {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) return std::nullopt;
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }
  // The next message that is not a watchdog ping; counts the pings passed over.
  std::optional<std::string> NextNotPing(int* pings) {
    while (true) {
      std::optional<std::string> m = Next();
      if (!m.has_value() || m->compare("WATCHDOG=1") != 0) return m;
      ++*pings;
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

uint64_t MonotonicUsec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

TEST(ServiceNotifyTest, ReadyAfterDevicesThenWatchdogReloadAndStop) {
  std::string path = ::testing::TempDir();
  path.append("/notify-").append(std::to_string(getpid()));
  NotifySocket manager(path);
  IopfdOptions o;
  // A device that cannot attach (its descriptors were never handed over): READY=1 still comes,
  // after the failure is logged.
  o.devices = {{"gone.toml",
                "name = \"gone\"\nattach = \"adopt\"\n\n[adopt]\niommufd_fd = \"gone.iommufd\"\n"
                "fault_fd = \"gone.fault\"\ndevice_id = 7\n\n[[space]]\nioas_id = 1\n"
                "  [[space.region]]\n  iova = 0x100000\n  size = \"64KiB\"\n"
                "  backing = \"anonymous\"\n  access = \"rw\"\n"}};
  o.env = {
      {"NOTIFY_SOCKET", manager.path()}, {"WATCHDOG_USEC", "200000"}, {"WATCHDOG_PID", "@pid"}};
  Iopfd iopfd(o);
  int pings = 0;
  std::optional<std::string> ready = manager.NextNotPing(&pings);
  ASSERT_TRUE(ready.has_value()) << iopfd.Log();
  EXPECT_EQ(*ready, "READY=1\nSTATUS=serving 0 device(s), 1 configured");
  EXPECT_THAT(iopfd.Log(), HasSubstr("gone"));  // the reason was logged before READY=1

  // Pings every 100 ms (half of WatchdogSec) from the loop: a handful arrive.
  while (pings < 3) {
    std::optional<std::string> m = manager.Next();
    ASSERT_TRUE(m.has_value()) << "no watchdog ping; iopfd's log:\n" << iopfd.Log();
    if (*m == "WATCHDOG=1") ++pings;
  }

  const uint64_t before = MonotonicUsec();
  iopfd.Signal(SIGHUP);
  std::optional<std::string> reloading = manager.NextNotPing(&pings);
  ASSERT_TRUE(reloading.has_value());
  EXPECT_THAT(*reloading, StartsWith("RELOADING=1\nMONOTONIC_USEC="));
  const uint64_t usec = std::stoull(reloading->substr(reloading->find('=', 12) + 1));
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, MonotonicUsec());
  std::optional<std::string> again = manager.NextNotPing(&pings);
  ASSERT_TRUE(again.has_value());
  EXPECT_THAT(*again, StartsWith("READY=1\nSTATUS=serving 0 device(s), 1 configured"));

  iopfd.Signal(SIGTERM);
  std::optional<std::string> stopping = manager.NextNotPing(&pings);
  ASSERT_TRUE(stopping.has_value());
  EXPECT_THAT(*stopping, StartsWith("STOPPING=1\n"));
  EXPECT_EQ(iopfd.Stop(), 0);
}

TEST(ServiceNotifyTest, WithoutNotifySocketNothingChanges) {
  Iopfd iopfd;
  EXPECT_EQ(iopfd.Stop(), 0);
  EXPECT_THAT(iopfd.Log(), ::testing::Not(HasSubstr("sd_notify")));
  EXPECT_THAT(iopfd.Log(), ::testing::Not(HasSubstr("watchdog")));
}

}  // namespace
