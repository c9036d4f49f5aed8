// iopf-bench: runs inside the test VM (see bench/run-bench.sh). Not a test: it prints numbers.
//
// A generator plays a PRI device with a fixed number K of page requests outstanding: it triggers
// requests for fresh pages of a large sparse region and sees one complete when the page shows up
// in the IO page table (IOMMU_TEST_OP_MD_CHECK_MAP). Every handler maps a page before it answers
// it, so this times what a device waits for (trigger to translation present), the same way for
// all. The handlers, each on a fresh mock device:
//   iopfd  the daemon in adopt mode (batched reads, map units, one write per turn)
//   naive  one at a time: poll, read one record, IOMMU_IOAS_MAP_FILE one page, write one response
//   floor  the least a batched handler can do (issue 15): poll, one read of up to 512 records,
//          a bitmap of mapped pages to drop repeats, one IOMMU_IOAS_MAP_FILE per run of adjacent
//          pages, one write of every response; plain syscalls, no io_uring, no bookkeeping
// Parts (the first argument may be "parts:a+b+..."; default all):
//   floor    queued bursts (the handler stopped while N requests queue, then the time until all
//            are mapped), sequential and random; K = 1, 8, 64 (or as given); a sequential stream
//            over a region with prefetch, where a page already translated is a hit (ATS) and
//            not a request; iopfd and the floor each serving 64 devices against one. Each case 5
//            times, the handlers in turn: median and spread, iopfd/floor and iopfd/naive side
//            by side (ratios taken within a round).
//   control  iopfd at K=8 quiet, under 200 control clients calling GetStats, and under hostile
//            control clients (docs/RELIABILITY.md).
//   drain    iopfd at K=8 beside a second device, mockD, left running and drained over and over.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mock_env.h"

namespace {

using namespace mockenv;  // NOLINT(google-build-using-namespace): the guest's shared helpers

constexpr uint64_t kBenchIova = 0x40000000;  // 1 GiB, inside the mock aperture
constexpr uint64_t kBenchSize = 512ull << 20;

// Swaps the environment's inherited memfd for a sparse 512 MiB one and writes the device's file
// into `dir`'s devices.d (its own config directory by default): one rw region with `prefetch`
// bytes mapped ahead (none by default, so every request needs exactly its own map unit).
void UseBenchRegion(Env& e, const std::string& prefetch = "0", std::string dir = "",
                    const std::string& map_unit = "64KiB",
                    const std::string& first_touch = "page") {
  munmap(e.va1, kR1Size);
  close(e.ram1);
  e.ram1 = memfd_create("iopf-bench", MFD_CLOEXEC);
  if (e.ram1 < 0 || ftruncate(e.ram1, static_cast<off_t>(kBenchSize))) Die("bench memfd");
  e.va1 = MapFile(e.ram1, kBenchSize);
  if (dir.empty()) dir = e.dir;
  WriteFile(dir + "/devices.d/" + e.dev + ".toml",
            Format("name = \"%s\"\nattach = \"adopt\"\n\n"
                   "[adopt]\niommufd_fd = \"%siommufd\"\nfault_fd = \"%sfault\"\ndevice_id = %u\n\n"
                   "[[space]]\nioas_id = %u\n"
                   "  [[space.region]]\n  iova = 0x%llx\n  size = \"512MiB\"\n"
                   "  backing = \"fd:%sram1\"\n  access = \"rw\"\n  prefetch = \"%s\"\n"
                   "  map_unit = \"%s\"\n  first_touch = \"%s\"\n",
                   e.dev.c_str(), e.prefix.c_str(), e.prefix.c_str(), e.idev, e.ioas,
                   static_cast<unsigned long long>(kBenchIova), e.prefix.c_str(), prefetch.c_str(),
                   map_unit.c_str(), first_touch.c_str()));
}

// Env's destructor unmaps the small region it made; the bench region replaced it. Without this
// the 512 MiB mapping, and every page the run put in its memfd, would outlive the run.
struct BenchRegionGuard {
  Env& e;
  ~BenchRegionGuard() {
    if (e.va1 != nullptr) munmap(e.va1, kBenchSize);
    e.va1 = nullptr;
  }
};
struct BenchRegionsGuard {
  std::vector<Env*> envs;
  ~BenchRegionsGuard() {
    for (Env* e : envs) BenchRegionGuard{*e};
  }
};

std::atomic<bool> g_stop{false};
// Map calls a forked handler made, in memory its parent reads (MAP_SHARED, set up in main).
uint64_t* g_child_maps = nullptr;

// The baseline handler: everything one request at a time, the way a first attempt would do it.
[[noreturn]] void NaiveLoop(const Env& e) {
  signal(SIGTERM, [](int) { g_stop.store(true); });
  uint64_t answered = 0;
  while (true) {
    pollfd p = {e.fault_fd, POLLIN, 0};
    int ready = poll(&p, 1, 50);
    if (ready <= 0) {
      if (g_stop.load()) break;
      continue;
    }
    iommu_hwpt_pgfault rec;
    ssize_t n = read(e.fault_fd, &rec, sizeof(rec));
    if (n != static_cast<ssize_t>(sizeof(rec))) continue;
    iommu_hwpt_page_response resp = {rec.cookie, IOMMUFD_PAGE_RESP_INVALID};
    uint64_t page = rec.addr & ~(kPage - 1);
    if (page >= kBenchIova && page < kBenchIova + kBenchSize) {
      iommu_ioas_map_file map = {};
      map.size = sizeof(map);
      map.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
      map.ioas_id = e.ioas;
      map.fd = e.ram1;
      map.start = page - kBenchIova;
      map.length = kPage;
      map.iova = page;
      if (g_child_maps != nullptr) ++*g_child_maps;
      if (ioctl(e.iommufd, IOMMU_IOAS_MAP_FILE, &map) == 0 || errno == EEXIST) {
        resp.code = IOMMUFD_PAGE_RESP_SUCCESS;
      }
    }
    if (write(e.fault_fd, &resp, sizeof(resp)) == static_cast<ssize_t>(sizeof(resp))) ++answered;
  }
  _exit(answered > 0 ? 0 : 1);
}

// The floor: the least a batched user-space handler can do per read, on this kernel. With
// several devices, one poll over all their fault fds, then each readable one served in turn (the
// same per-read work; what a handler cannot avoid is a read and a write per fault fd that has
// requests).
class Floor {
 public:
  explicit Floor(const Env& e) : e_(e), mapped_(kPages / 64), recs_(kMax), resp_(kMax) {
    fresh_.reserve(kMax);
  }
  // Reads what is queued (up to 512 records), maps the pages not mapped yet, answers every group.
  // Returns the groups answered.
  uint64_t Serve() {
    ssize_t n = read(e_.fault_fd, recs_.data(), kMax * sizeof(recs_[0]));
    if (n <= 0) return 0;
    const size_t count = static_cast<size_t>(n) / sizeof(recs_[0]);
    // The pages not mapped yet, each once, in order; then one map call per run of adjacent ones.
    fresh_.clear();
    for (size_t i = 0; i < count; ++i) {
      const uint64_t page = recs_[i].addr & ~(kPage - 1);
      if (page < kBenchIova || page >= kBenchIova + kBenchSize) continue;
      const uint64_t idx = (page - kBenchIova) / kPage;
      if (Bit(idx)) continue;
      mapped_[idx / 64] |= 1ull << (idx % 64);
      fresh_.push_back(idx);
    }
    std::sort(fresh_.begin(), fresh_.end());
    for (size_t i = 0; i < fresh_.size();) {
      size_t j = i + 1;
      while (j < fresh_.size() && fresh_[j] == fresh_[j - 1] + 1) ++j;
      iommu_ioas_map_file map = {};
      map.size = sizeof(map);
      map.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
      map.ioas_id = e_.ioas;
      map.fd = e_.ram1;
      map.start = fresh_[i] * kPage;
      map.length = (j - i) * kPage;
      map.iova = kBenchIova + fresh_[i] * kPage;
      ++*g_child_maps;
      if (ioctl(e_.iommufd, IOMMU_IOAS_MAP_FILE, &map) != 0 && errno != EEXIST) {
        for (size_t k = i; k < j; ++k) mapped_[fresh_[k] / 64] &= ~(1ull << (fresh_[k] % 64));
      }
      i = j;
    }
    // One response per group: the kernel copies a group's records together, its last one
    // flagged.
    size_t out = 0;
    for (size_t i = 0; i < count; ++i) {
      if ((recs_[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) == 0) continue;
      const uint64_t page = recs_[i].addr & ~(kPage - 1);
      const bool ok =
          page >= kBenchIova && page < kBenchIova + kBenchSize && Bit((page - kBenchIova) / kPage);
      resp_[out++] = {recs_[i].cookie, ok ? IOMMUFD_PAGE_RESP_SUCCESS : IOMMUFD_PAGE_RESP_INVALID};
    }
    return write(e_.fault_fd, resp_.data(), out * sizeof(resp_[0])) > 0 ? out : 0;
  }

 private:
  static constexpr size_t kMax = 512;
  static constexpr uint64_t kPages = kBenchSize / kPage;
  bool Bit(uint64_t p) const { return (mapped_[p / 64] >> (p % 64)) & 1; }

  const Env& e_;
  std::vector<uint64_t> mapped_;  // a bit per page of the region
  std::vector<iommu_hwpt_pgfault> recs_;
  std::vector<iommu_hwpt_page_response> resp_;
  std::vector<uint64_t> fresh_;
};

[[noreturn]] void FloorLoop(const std::vector<Env*>& envs) {
  signal(SIGTERM, [](int) { g_stop.store(true); });
  std::vector<Floor> floors;
  std::vector<pollfd> polls;
  floors.reserve(envs.size());
  for (const Env* e : envs) {
    floors.emplace_back(*e);
    polls.push_back({e->fault_fd, POLLIN, 0});
  }
  uint64_t answered = 0;
  while (true) {
    if (poll(polls.data(), polls.size(), 50) <= 0) {
      if (g_stop.load()) break;
      continue;
    }
    for (size_t i = 0; i < polls.size(); ++i) {
      if (polls[i].revents & POLLIN) answered += floors[i].Serve();
    }
  }
  _exit(answered > 0 ? 0 : 1);
}

struct Result {
  double faults_per_s;
  double p50_us, p99_us, max_us;
  uint64_t map_calls;
  bool ok;
  // iopfd's own view (read completion to response written), from its statistics.
  double served_p50_us = 0, served_p99_us = 0;
  uint64_t control_replies = 0;  // GetStats replies the load clients got during the run
  uint64_t hostile_acts = 0;     // what the hostile clients did (connections, messages)
  uint64_t other_sent = 0;       // page requests sent to the second device (mockD)
  uint64_t other_drains = 0;     // drains of mockD that ran to completion (resets included)
  uint64_t other_resets = 0;     // of which function resets
};

// Drives n requests with k outstanding against whatever handler serves e's fault queue.
Result Generate(const Env& e, int n, int k) {
  std::vector<std::chrono::steady_clock::time_point> sent(n);
  std::vector<double> lat_us;
  lat_us.reserve(n);
  int next = 0, done = 0;
  auto page_iova = [](int i) { return kBenchIova + static_cast<uint64_t>(i) * kPage; };
  // Warm-up: the handler must be up and serving (iopfd's exec and attach take ~100 ms under
  // TCG) before the clock starts. Page n is never used by the timed requests.
  Trigger(e, page_iova(n), IOMMU_PGFAULT_PERM_READ, false, 0);
  if (!WaitFor([&] { return CheckMap(e, e.hwpt, page_iova(n), kPage, e.va1 + n * kPage); },
               30000)) {
    Die("the handler never answered the warm-up request");
  }
  auto t0 = std::chrono::steady_clock::now();
  auto deadline = t0 + std::chrono::seconds(120);
  bool ok = true;
  while (done < n) {
    while (next < n && next - done < k) {
      sent[next] = std::chrono::steady_clock::now();
      if (Trigger(e, page_iova(next), IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE, false,
                  static_cast<uint32_t>(next % 512))) {
        Die("trigger %d failed", next);
      }
      ++next;
    }
    // Completions are observed oldest first; every newer one already present is collected too.
    while (done < next && CheckMap(e, e.hwpt, page_iova(done), kPage,
                                   e.va1 + static_cast<uint64_t>(done) * kPage)) {
      lat_us.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - sent[done])
              .count());
      ++done;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ok = false;
      break;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::sort(lat_us.begin(), lat_us.end());
  auto pct = [&](double q) {
    return lat_us.empty()
               ? 0.0
               : lat_us[std::min(lat_us.size() - 1, static_cast<size_t>(q * lat_us.size()))];
  };
  return {done / secs, pct(0.5), pct(0.99), lat_us.empty() ? 0.0 : lat_us.back(), 0, ok};
}

// What else iopfd does while the measured device (mock0) is driven.
struct Load {
  int clients = 0;       // control clients calling GetStats as fast as they can
  bool other = false;    // a second device, mockD, with a steady stream of page requests
  bool drains = false;   // mockD drained over and over (Drain, then the owner's Halt)
  bool hostile = false;  // the hostile control clients (Hostile below)
};

// Control clients that try to wear iopfd down, of every kind docs/RELIABILITY.md lists, each
// kind over and over for the whole run, each client pausing 1 ms between attempts (52 clients
// spinning flat out would measure the guest's two vCPUs being taken from iopfd, not iopfd):
//   stallers    send half a message and wait (until iopfd's message timeout closes them)
//   non-readers send GetStats calls without ever reading a reply
//   churners    connect and close as fast as they can
//   garbage     send messages iopfd must refuse: nesting 100,000 and 10,000 deep, invalid
//               UTF-8, a lone surrogate, a number out of range, not JSON; read the error and
//               go on (or reconnect when closed)
//   fd senders  send 16 descriptors with a message that does not parse
struct Hostile {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acts{0};
  std::vector<std::thread> threads;
  static void Pause() { std::this_thread::sleep_for(std::chrono::milliseconds(1)); }

  static int Connect(const std::string& sock) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock.c_str());
    if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    if (fd >= 0) close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // refused: at the limit
    return -1;
  }
  // Waits up to ms for something to read; returns false when the peer closed.
  static bool Drain(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    char buf[65536];
    while (poll(&p, 1, ms) == 1) {
      ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n <= 0) return n < 0 && errno == EAGAIN;
      if (buf[n - 1] == '\0') return true;
    }
    return true;
  }

  void Begin(const std::string& sock) {
    for (int i = 0; i < 16; ++i) {
      threads.emplace_back([this, sock] {
        while (!stop.load()) {
          int fd = Connect(sock);
          if (fd < 0) continue;
          const char half[] = R"({"method":"io.iopfd.GetSt)";
          (void)send(fd, half, sizeof(half) - 1, MSG_NOSIGNAL);
          ++acts;
          pollfd p{fd, POLLIN, 0};
          while (!stop.load() && poll(&p, 1, 50) == 0) {
          }
          close(fd);
        }
      });
    }
    for (int i = 0; i < 16; ++i) {
      threads.emplace_back([this, sock] {
        while (!stop.load()) {
          int fd = Connect(sock);
          if (fd < 0) continue;
          const std::string call =
              std::string(R"({"method":"io.iopfd.GetStats","parameters":{"device":"mock0"}})") +
              '\0';
          while (!stop.load()) {
            ssize_t n = send(fd, call.data(), call.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno != EAGAIN) break;
            if (n > 0) ++acts;
            std::this_thread::sleep_for(std::chrono::milliseconds(n < 0 ? 5 : 1));
          }
          close(fd);
        }
      });
    }
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([this, sock] {
        while (!stop.load()) {
          int fd = Connect(sock);
          if (fd >= 0) {
            close(fd);
            ++acts;
          }
          Pause();
        }
      });
    }
    std::vector<std::string> garbage = {
        R"({"method":"io.iopfd.GetStatus","parameters":{"x":)" + std::string(100000, '[') + "]}}",
        R"({"method":"io.iopfd.GetStatus","parameters":{"x":)" + std::string(10000, '[') +
            std::string(10000, ']') + "}}",
        "{\"method\":\"io.iopfd.GetStats\",\"parameters\":{\"device\":\"\xff\xfe\"}}",
        R"({"method":"io.iopfd.GetStats","parameters":{"device":"\ud800"}})",
        R"({"method":"io.iopfd.Drain","parameters":{"device":"mock0","timeout_ms":1e400}})",
        "not json at all",
    };
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([this, sock, garbage, i] {
        int fd = -1;
        for (size_t m = static_cast<size_t>(i); !stop.load(); ++m) {
          if (fd < 0) fd = Connect(sock);
          if (fd < 0) continue;
          const std::string msg = garbage[m % garbage.size()] + '\0';
          if (send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size()) ||
              !Drain(fd, 1000)) {
            close(fd);
            fd = -1;
          }
          ++acts;
          Pause();
        }
        if (fd >= 0) close(fd);
      });
    }
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([this, sock] {
        while (!stop.load()) {
          int fd = Connect(sock);
          if (fd < 0) continue;
          std::vector<int> fds;
          for (int f = 0; f < 16; ++f) fds.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
          char msg[] = "{\"method\":";
          iovec iov{msg, sizeof(msg)};
          alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)] = {};
          msghdr mh{};
          mh.msg_iov = &iov;
          mh.msg_iovlen = 1;
          mh.msg_control = control;
          mh.msg_controllen = sizeof(control);
          cmsghdr* cm = CMSG_FIRSTHDR(&mh);
          cm->cmsg_level = SOL_SOCKET;
          cm->cmsg_type = SCM_RIGHTS;
          cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
          std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
          (void)sendmsg(fd, &mh, MSG_NOSIGNAL);
          for (int f : fds) close(f);
          (void)Drain(fd, 1000);
          close(fd);
          ++acts;
          Pause();
        }
      });
    }
  }
  void End() {
    stop = true;
    for (auto& t : threads) t.join();
  }
};

// Drives mockD's page requests at a steady pace (bursts of 32, then 2 ms off) so both runs of
// the drain comparison put the same load on iopfd; and, with `drains`, drains mockD in a loop
// the way a VMM would around resets (Drain, Halt confirming the DMA stop, 10 ms of running).
struct OtherDevice {
  Env o;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> sent{0}, drains{0}, resets{0};
  std::atomic<int> bad{0};
  std::string bad_reply;
  std::thread traffic, drainer;

  void Begin(const std::string& sock, bool drain) {
    traffic = std::thread([this] {
      for (int i = 0; !stop.load();) {
        for (int j = 0; j < 32; ++j, ++i) {
          if (Trigger(o, kR0 + (i % 200) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512) == 0) {
            ++sent;
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
    if (!drain) return;
    drainer = std::thread([this, sock] {
      ControlClient c(sock);
      for (int i = 0; !stop.load(); ++i) {
        // Drains and resets in turn; a reset's FLR (100 ms in the VM's switch module, as on
        // hardware) runs on iopfd's worker thread: Halt answers "resetting", and the device is
        // back once ListDevices says so.
        const bool reset = (i % 2) == 1;
        std::string r1 =
            c.Call(reset ? R"({"method":"io.iopfd.Reset","parameters":{"device":"mockD"}})"
                         : R"({"method":"io.iopfd.Drain","parameters":{"device":"mockD"}})");
        std::string r2 = c.Call(R"({"method":"io.iopfd.Halt","parameters":{"device":"mockD"}})");
        bool ok = r1.find(R"("state":"halting")") != std::string::npos;
        if (reset) {
          // ("running" when the reset ran on the loop's thread: a build without the worker)
          ok = ok && (r2.find(R"("state":"resetting")") != std::string::npos ||
                      r2.find(R"("state":"running")") != std::string::npos);
          for (int w = 0; ok && w < 1000; ++w) {
            std::string l = c.Call(R"({"method":"io.iopfd.ListDevices"})");
            if (l.find(R"("name":"mockD")") == std::string::npos) ok = false;
            size_t at = l.find(R"("name":"mockD")");
            size_t running = l.find(R"("state":"running")", at);
            size_t next = l.find(R"("name":")", at + 1);
            if (running != std::string::npos && running < next) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
        } else {
          ok = ok && r2.find(R"("state":"running")") != std::string::npos;
        }
        if (!ok) {
          ++bad;
          bad_reply = r1 + " " + r2;
          return;
        }
        ++(reset ? resets : drains);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  void End() {
    stop = true;
    if (traffic.joinable()) traffic.join();
    if (drainer.joinable()) drainer.join();
  }
};

// Runs iopfd against n requests with k outstanding on mock0, with `load` beside it.
Result RunIopfd(int n, int k, const Load& load = {}) {
  Env e;
  Setup(e,
        Format("bench-iopfd-%d-%d-%d%d", k, load.clients, load.other ? 1 : 0, load.drains ? 1 : 0),
        "warning");
  UseBenchRegion(e);
  BenchRegionGuard guard{e};
  auto fds = e.Fds();
  OtherDevice other;
  if (load.other) {
    Setup(other.o, e.dir.substr(e.dir.rfind('/') + 1) + "-mockD", "warning", "mockD");
    WriteFile(e.dir + "/devices.d/mockD.toml",
              SwitchableDeviceFile(other.o, "halt = \"owner\"\nhalt_timeout_ms = 60000\n"));
    for (const auto& f : other.o.Fds()) fds.push_back(f);
  }
  Daemon d = StartWith(e.dir, fds);
  const int clients = load.clients;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> replies{0};
  std::atomic<int> bad{0};
  std::vector<std::thread> getters;
  const std::string sock = e.dir + "/ctl.sock";
  if (clients > 0 && !WaitFor([&] { return ControlClient(sock).ok(); })) Die("no control socket");
  for (int i = 0; i < clients; ++i) {
    getters.emplace_back([&] {
      ControlClient c(sock);
      while (!stop.load()) {
        std::string r = c.Call(R"({"method":"io.iopfd.GetStats","parameters":{"device":"mock0"}})");
        if (r.find("\"responses_written\"") == std::string::npos) {
          ++bad;
          return;
        }
        ++replies;
      }
    });
  }
  if (load.other) {
    if (!WaitFor([&] { return ControlClient(sock).ok(); })) Die("no control socket");
    other.Begin(sock, load.drains);
  }
  Hostile hostile;
  if (load.hostile) {
    if (!WaitFor([&] { return ControlClient(sock).ok(); })) Die("no control socket");
    hostile.Begin(sock);
  }
  Result r = Generate(e, n, k);
  stop = true;
  for (auto& t : getters) t.join();
  if (load.hostile) {
    hostile.End();
    r.hostile_acts = hostile.acts.load();
    // Still serving the control socket, and still the same process.
    const std::string status = ControlClient(sock).Call(R"({"method":"io.iopfd.GetStatus"})");
    if (status.find(R"("health":"ok")") == std::string::npos) {
      std::printf("IOPF-BENCH hostile clients: GetStatus afterwards failed: %s\n", status.c_str());
      r.ok = false;
    }
  }
  other.End();
  if (load.other && !WaitFor([&] { return QueueEmpty(other.o); }, 60000)) r.ok = false;
  int rc = Stop(d);
  auto s = ReadStats(d);
  r.map_calls = s["map_calls"] - 1;  // less the warm-up's
  r.ok = r.ok && rc == 0 && s["responses_written"] == static_cast<uint64_t>(n) + 1 &&
         s["outstanding"] == 0 && bad.load() == 0;
  if (load.other) {
    // mockD's own accounting: every group read answered or dropped as stale at a park, and as
    // many completed drains as the drainer counted.
    auto so = ReadStats(d, "mockD");
    r.other_sent = other.sent.load();
    r.other_drains = so["drain.drains"];
    r.other_resets = so["drain.function_resets"];
    r.ok = r.ok && other.bad.load() == 0 &&
           so["drain.drains"] == other.drains.load() + other.resets.load() &&
           so["drain.function_resets"] == other.resets.load() &&
           so["groups"] == so["responses_written"] + so["responses_stale_dropped"] &&
           so["responses_rejected"] == 0 && so["outstanding"] == 0;
    if (other.bad.load() != 0)
      std::printf("IOPF-BENCH mockD drain failed: %s\n", other.bad_reply.c_str());
  }
  r.served_p50_us = static_cast<double>(s["latency_ns.p50"]) / 1000;
  r.served_p99_us = static_cast<double>(s["latency_ns.p99"]) / 1000;
  r.control_replies = replies.load();
  return r;
}

// ---- Against the floor (issue 15) ----

// iopfd: the defaults (64 KiB units, a first touch alone maps its page); iopfd-unit: every
// first touch maps its whole unit (first_touch = "unit", as before partial units); iopfd4k: 4 KiB
// map units, mapping what the floor maps per request.
enum class Handler { kNaive, kFloor, kIopfd, kIopfdUnit, kIopfd4k };
const char* Name(Handler h) {
  switch (h) {
    case Handler::kNaive:
      return "naive";
    case Handler::kFloor:
      return "floor";
    case Handler::kIopfd:
      return "iopfd";
    case Handler::kIopfdUnit:
      return "iopfd-unit";
    case Handler::kIopfd4k:
      return "iopfd4k";
  }
  return "?";
}
bool IsIopfd(Handler h) {
  return h == Handler::kIopfd || h == Handler::kIopfdUnit || h == Handler::kIopfd4k;
}
// The bench region for handler h (prefetch as given).
void UseRegionOf(Handler h, Env& e, const std::string& prefetch) {
  UseBenchRegion(e, prefetch, "", h == Handler::kIopfd4k ? "4KiB" : "64KiB",
                 h == Handler::kIopfdUnit ? "unit" : "page");
}

// One handler serving the devices of a config directory: naive forked on the first device,
// floor forked on all of them (one poll over their fault fds), iopfd started on all of them.
// Pause/Resume stop and continue it (SIGSTOP/SIGCONT), so that requests queue meanwhile.
class Served {
 public:
  Served(Handler h, std::vector<Env*> envs) : h_(h), envs_(std::move(envs)) {
    *g_child_maps = 0;
    if (IsIopfd(h_)) {
      std::vector<std::pair<std::string, int>> fds;
      for (Env* e : envs_) {
        for (const auto& f : e->Fds()) fds.push_back(f);
      }
      d_ = StartWith(envs_[0]->dir, fds);
      pid_ = d_.pid;
    } else {
      pid_ = fork();
      if (pid_ == 0) {
        if (h_ == Handler::kNaive) NaiveLoop(*envs_[0]);
        FloorLoop(envs_);
      }
    }
  }
  void Pause() const { kill(pid_, SIGSTOP); }
  void Resume() const { kill(pid_, SIGCONT); }
  // Stops the handler; returns false when it did not end well. *maps: its map calls; *own_p50_us
  // (iopfd, when given): its own p50 latency, read completion to write completion, of the first
  // device.
  bool Finish(uint64_t* maps, double* own_p50_us = nullptr) {
    if (IsIopfd(h_)) {
      const int rc = Stop(d_);
      uint64_t total = 0;
      bool ok = rc == 0;
      for (Env* e : envs_) {
        auto st = ReadStats(d_, e->dev);
        total += st["map_calls"];
        ok = ok && st["outstanding"] == 0;
        if (own_p50_us != nullptr && e == envs_[0]) {
          *own_p50_us = static_cast<double>(st["latency_ns.p50"]) / 1000;
        }
      }
      *maps = total;
      return ok;
    }
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    *maps = *g_child_maps;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

 private:
  Handler h_;
  std::vector<Env*> envs_;
  Daemon d_;
  pid_t pid_ = -1;
};

uint64_t PageIova(uint64_t page) { return kBenchIova + page * kPage; }
bool Mapped(const Env& e, uint64_t page) {
  return CheckMap(e, e.hwpt, PageIova(page), kPage, e.va1 + page * kPage);
}
// The region's last page, which no timed request uses: one request there, answered, says the
// handler serves (iopfd's exec and attach take ~100 ms under TCG).
bool WarmUp(const Env& e) {
  constexpr uint64_t kLast = kBenchSize / kPage - 1;
  if (Trigger(e, PageIova(kLast), IOMMU_PGFAULT_PERM_READ, false, 0)) return false;
  return WaitFor([&] { return Mapped(e, kLast); }, 30000);
}

struct Sample {
  double rate = 0;      // faults (or pages) per second
  double p50_us = 0;    // where it applies
  uint64_t maps = 0;    // map calls
  uint64_t faults = 0;  // page requests sent
  bool ok = false;
  double map_ms = 0;      // the stream ceiling's one map call
  double own_p50_us = 0;  // iopfd's own p50 (read to write completion), where it applies
};

// Queued burst: the handler stopped, n requests queued (sequential pages, or n distinct random
// ones), then continued; the time until every page is mapped.
Sample Burst(Handler h, int n, bool random, int rep) {
  Env e;
  Setup(e, Format("burst-%s-%d-%d", Name(h), random ? 1 : 0, rep), "warning");
  UseRegionOf(h, e, "0");
  BenchRegionGuard guard{e};
  Served s(h, {&e});
  Sample out;
  if (!WarmUp(e)) Die("%s never answered the warm-up request", Name(h));
  std::vector<uint64_t> pages(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) pages[static_cast<size_t>(i)] = static_cast<uint64_t>(i);
  if (random) {
    // n distinct pages of the region (not the warm-up's), the same for every handler.
    std::vector<uint64_t> all(kBenchSize / kPage - 1);
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::swap(all[i], all[i + x % (all.size() - i)]);
    }
    pages.assign(all.begin(), all.begin() + n);
  }
  s.Pause();
  for (int i = 0; i < n; ++i) {
    if (Trigger(e, PageIova(pages[static_cast<size_t>(i)]),
                IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE, false,
                static_cast<uint32_t>(i % 512))) {
      Die("trigger %d failed", i);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  s.Resume();
  const auto deadline = t0 + std::chrono::seconds(120);
  out.ok = true;
  for (int i = 0; i < n;) {
    if (Mapped(e, pages[static_cast<size_t>(i)])) {
      ++i;
    } else if (std::chrono::steady_clock::now() > deadline) {
      out.ok = false;
      break;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.rate = n / secs;
  out.faults = static_cast<uint64_t>(n);
  out.ok = s.Finish(&out.maps) && out.ok;
  out.maps -= 1;  // the warm-up's
  return out;
}

// K outstanding (the Generate loop above) for any handler.
Sample Concurrent(Handler h, int n, int k, int rep) {
  Env e;
  Setup(e, Format("k-%s-%d-%d", Name(h), k, rep), "warning");
  UseRegionOf(h, e, "0");
  BenchRegionGuard guard{e};
  Served s(h, {&e});
  Result r = Generate(e, n, k);
  Sample out{r.faults_per_s, r.p50_us, 0, static_cast<uint64_t>(n), r.ok};
  out.ok = s.Finish(&out.maps, &out.own_p50_us) && out.ok;
  out.maps -= 1;
  return out;
}

// A sequential stream: the device reads pages 0..n-1 in order, one at a time; a page already
// translated is a hit (ATS: no request), else it sends a request and waits for the translation.
// iopfd's region maps `prefetch` ahead; naive and floor map what is asked. Rate: pages/s.
Sample Stream(Handler h, int n, int rep) {
  Env e;
  Setup(e, Format("stream-%s-%d", Name(h), rep), "warning");
  UseRegionOf(h, e, "1MiB");
  BenchRegionGuard guard{e};
  Served s(h, {&e});
  Sample out;
  if (!WarmUp(e)) Die("%s never answered the warm-up request", Name(h));
  out.ok = true;
  const auto t0 = std::chrono::steady_clock::now();
  for (int p = 0; p < n && out.ok; ++p) {
    const auto page = static_cast<uint64_t>(p);
    if (Mapped(e, page)) continue;
    if (Trigger(e, PageIova(page), IOMMU_PGFAULT_PERM_READ, false,
                static_cast<uint32_t>(p % 512))) {
      Die("trigger %d failed", p);
    }
    ++out.faults;
    // Spinning, as the device would (WaitFor's 2 ms naps would be the whole measurement).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!Mapped(e, page)) {
      if (std::chrono::steady_clock::now() > deadline) {
        out.ok = false;
        break;
      }
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.rate = n / secs;
  out.ok = s.Finish(&out.maps) && out.ok;
  out.maps -= 1;
  return out;
}

// The stream's ceiling: the same walk over pages all mapped before it starts (one map call, no
// handler, no request): what the device's own checks cost per page, which bounds every
// handler's rate in the stream case. The map call is timed apart (map_ms): populating the pages
// (allocating, zeroing and pinning them) is work every handler does too, in its own calls.
Sample StreamCeiling(int n, int rep) {
  Env e;
  Setup(e, Format("stream-ceiling-%d", rep), "warning");
  UseBenchRegion(e);
  BenchRegionGuard guard{e};
  iommu_ioas_map_file map = {};
  map.size = sizeof(map);
  map.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
  map.ioas_id = e.ioas;
  map.fd = e.ram1;
  map.length = static_cast<uint64_t>(n) * kPage;
  map.iova = kBenchIova;
  Sample out;
  const auto m0 = std::chrono::steady_clock::now();
  if (ioctl(e.iommufd, IOMMU_IOAS_MAP_FILE, &map) != 0) Die("stream ceiling: map");
  out.map_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - m0).count();
  out.ok = true;
  const auto t0 = std::chrono::steady_clock::now();
  for (int p = 0; p < n; ++p) {
    if (!Mapped(e, static_cast<uint64_t>(p))) out.ok = false;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.rate = n / secs;
  return out;
}

// A handler (iopfd or the floor) serving `devices` mock devices at once, n requests with k
// outstanding spread over them in turn (request i to device i % devices, each to a fresh page of
// its region).
Sample Many(Handler h, int devices, int n, int k, int rep) {
  std::vector<std::unique_ptr<Env>> envs;
  std::vector<Env*> raw;
  for (int i = 0; i < devices; ++i) {
    envs.push_back(std::make_unique<Env>());
    Setup(*envs.back(), Format("many-%s-%d-%d-%d", Name(h), devices, rep, i), "warning",
          i == 0 ? "mock0" : Format("mock%02d", i));
    UseBenchRegion(*envs.back(), "0", envs[0]->dir);
    raw.push_back(envs.back().get());
  }
  BenchRegionsGuard guard{raw};
  Served s(h, raw);
  Sample out;
  for (Env* e : raw) {
    if (!WarmUp(*e)) Die("%s never answered %s's warm-up request", Name(h), e->dev.c_str());
  }
  auto dev = [&](int i) -> const Env& { return *raw[static_cast<size_t>(i % devices)]; };
  auto page = [&](int i) { return static_cast<uint64_t>(i / devices); };
  std::vector<std::chrono::steady_clock::time_point> sent(static_cast<size_t>(n));
  std::vector<double> lat;
  int next = 0, done = 0;
  out.ok = true;
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + std::chrono::seconds(120);
  while (done < n && out.ok) {
    while (next < n && next - done < k) {
      sent[static_cast<size_t>(next)] = std::chrono::steady_clock::now();
      if (Trigger(dev(next), PageIova(page(next)),
                  IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE, false,
                  static_cast<uint32_t>(next % 512))) {
        Die("trigger %d failed", next);
      }
      ++next;
    }
    while (done < next && Mapped(dev(done), page(done))) {
      lat.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                              sent[static_cast<size_t>(done)])
                        .count());
      ++done;
    }
    if (std::chrono::steady_clock::now() > deadline) out.ok = false;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.rate = done / secs;
  std::sort(lat.begin(), lat.end());
  out.p50_us = lat.empty() ? 0 : lat[lat.size() / 2];
  out.faults = static_cast<uint64_t>(n);
  out.ok = s.Finish(&out.maps) && out.ok;
  out.maps -= static_cast<uint64_t>(devices);
  return out;
}

// A case repeated: the median run (by rate) with the spread of the rates, and each run's rate
// in the order of the rounds.
struct Repeated {
  Sample median;
  double min = 0, max = 0;
  bool ok = true;
  std::vector<double> rates;  // by round
};

// Runs each key's case `reps` times, a round at a time: every key once per round, in turn. The
// guest's speed under TCG drifts over a boot (a handler's rate moved 1.7x between two boots and
// within one), so runs of different handlers are interleaved for the drift to fall on all alike,
// and ratios are taken within a round (Ratio).
template <typename Key>
std::map<Key, Repeated> Rounds(int reps, const std::vector<Key>& keys,
                               const std::function<Sample(Key, int)>& run) {
  std::map<Key, std::vector<Sample>> all;
  std::map<Key, Repeated> out;
  for (int i = 0; i < reps; ++i) {
    for (const Key& key : keys) {
      all[key].push_back(run(key, i));
      out[key].ok = out[key].ok && all[key].back().ok;
      out[key].rates.push_back(all[key].back().rate);
    }
  }
  for (auto& [key, samples] : all) {
    std::sort(samples.begin(), samples.end(),
              [](const Sample& a, const Sample& b) { return a.rate < b.rate; });
    Repeated& r = out[key];
    r.median = samples[samples.size() / 2];
    r.min = samples.front().rate;
    r.max = samples.back().rate;
  }
  return out;
}

// mine's rate over base's, round by round: the median and the range of the rounds' ratios.
std::string Ratio(const Repeated& mine, const Repeated& base) {
  std::vector<double> r;
  for (size_t i = 0; i < mine.rates.size() && i < base.rates.size(); ++i) {
    r.push_back(base.rates[i] > 0 ? mine.rates[i] / base.rates[i] : 0);
  }
  if (r.empty()) return "-";
  std::sort(r.begin(), r.end());
  return Format("%.2fx [%.2f-%.2f]", r[r.size() / 2], r.front(), r.back());
}

std::string Cell(const Repeated& r) {
  return Format("%8.0f/s [%6.0f-%6.0f]%s", r.median.rate, r.min, r.max,
                r.ok ? "" : " (INCOMPLETE)");
}

// Prints one case: each handler's median rate and spread, map calls per request, and iopfd's
// ratios to the floor and to the naive loop (where they ran).
void PrintCase(const std::string& label, const std::map<Handler, Repeated>& by,
               const char* per = "req") {
  std::string line = "IOPF-BENCH " + label;
  for (const auto& [h, r] : by) {
    line += Format("   %s %s maps/%s %.3f", Name(h), Cell(r).c_str(), per,
                   r.median.faults ? static_cast<double>(r.median.maps) / r.median.faults : 0.0);
    if (r.median.p50_us > 0) line += Format(" p50 %.1f us", r.median.p50_us);
    if (r.median.own_p50_us > 0) line += Format(" (own %.1f)", r.median.own_p50_us);
  }
  for (Handler mine : {Handler::kIopfd, Handler::kIopfdUnit, Handler::kIopfd4k}) {
    const auto io = by.find(mine);
    for (Handler base : {Handler::kFloor, Handler::kNaive}) {
      const auto b = by.find(base);
      if (io == by.end() || b == by.end()) continue;
      line += Format("   %s/%s %s", Name(mine), Name(base), Ratio(io->second, b->second).c_str());
      if (io->second.median.p50_us > 0 && b->second.median.p50_us > 0) {
        line += Format(" (p50 %.2fx)", io->second.median.p50_us / b->second.median.p50_us);
      }
    }
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// The parts "burst", "k", "stream" and "devices" ("floor" is all four).
bool RunFloorParts(const std::set<std::string>& parts, int n, const std::vector<int>& ks) {
  constexpr int kReps = 5;
  const std::vector<Handler> all = {Handler::kFloor, Handler::kNaive, Handler::kIopfd,
                                    Handler::kIopfdUnit, Handler::kIopfd4k};
  auto want = [&](const char* part) { return parts.count(part) || parts.count("floor"); };
  auto all_ok = [](const auto& by) {
    return std::all_of(by.begin(), by.end(), [](const auto& kv) { return kv.second.ok; });
  };
  bool ok = true;
  std::printf(
      "IOPF-BENCH floor: each case %d times, the handlers in turn; median rate [min-max], ratios "
      "within a round: median [min-max]; n = %d\n",
      kReps, n);
  for (bool random : {false, true}) {
    if (!want("burst")) break;
    auto by =
        Rounds<Handler>(kReps, all, [&](Handler h, int rep) { return Burst(h, n, random, rep); });
    ok = ok && all_ok(by);
    PrintCase(Format("burst  %-10s", random ? "random" : "sequential"), by);
  }
  for (int k : ks) {
    if (!want("k")) break;
    auto by =
        Rounds<Handler>(kReps, all, [&](Handler h, int rep) { return Concurrent(h, n, k, rep); });
    ok = ok && all_ok(by);
    PrintCase(Format("K=%-4d %-10s", k, ""), by);
  }
  if (want("stream")) {
    auto by = Rounds<Handler>(
        kReps, {Handler::kFloor, Handler::kNaive, Handler::kIopfd, Handler::kIopfdUnit},
        [&](Handler h, int rep) { return Stream(h, n, rep); });
    ok = ok && all_ok(by);
    // Map calls per page read (not per request: most pages are hits).
    const uint64_t iopfd_requests = by[Handler::kIopfd].median.faults;
    for (auto& [h, r] : by) r.median.faults = static_cast<uint64_t>(n);
    PrintCase(Format("stream %-10s", "prefetch"), by, "page");
    // What no handler can beat: the walk alone, every page a hit.
    Repeated ceiling =
        Rounds<int>(kReps, {0}, [&](int, int rep) { return StreamCeiling(n, rep); })[0];
    ok = ok && ceiling.ok;
    std::printf(
        "IOPF-BENCH stream ceiling   the walk alone %s (its pages mapped before, in one call "
        "of %.1f ms)   naive/ceiling %.3f   iopfd/ceiling %.2f (%llu requests, %.1f ms in all)   "
        "ceiling/naive %.1fx\n",
        Cell(ceiling).c_str(), ceiling.median.map_ms,
        by[Handler::kNaive].median.rate / ceiling.median.rate,
        by[Handler::kIopfd].median.rate / ceiling.median.rate,
        static_cast<unsigned long long>(iopfd_requests),
        1000.0 * n / by[Handler::kIopfd].median.rate,
        ceiling.median.rate / by[Handler::kNaive].median.rate);
  }
  if (want("devices")) {
    // The floor's 64/1 is what any handler loses to a read and a write per fault fd: iopfd's
    // 64/1 is to be read against it.
    constexpr int kK = 64;
    using Key = std::pair<Handler, int>;  // the handler, how many devices
    auto by = Rounds<Key>(
        kReps,
        {{Handler::kFloor, 1}, {Handler::kFloor, 64}, {Handler::kIopfd, 1}, {Handler::kIopfd, 64}},
        [&](Key key, int rep) { return Many(key.first, key.second, n, kK, rep); });
    ok = ok && all_ok(by);
    for (Handler h : {Handler::kFloor, Handler::kIopfd}) {
      std::printf("IOPF-BENCH devices K=%d   %s 1 device %s   64 devices %s   64/1 %s\n", kK,
                  Name(h), Cell(by[{h, 1}]).c_str(), Cell(by[{h, 64}]).c_str(),
                  Ratio(by[{h, 64}], by[{h, 1}]).c_str());
    }
    std::printf("IOPF-BENCH devices K=%d   iopfd/floor 1 device %s   64 devices %s\n", kK,
                Ratio(by[{Handler::kIopfd, 1}], by[{Handler::kFloor, 1}]).c_str(),
                Ratio(by[{Handler::kIopfd, 64}], by[{Handler::kFloor, 64}]).c_str());
  }
  return ok;
}

bool RunControl(int n);
bool RunDrain(int n);
// The concurrency of the control and drain parts.
constexpr int kLoadK = 8;

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  void* shared =
      mmap(nullptr, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) Die("mmap");
  g_child_maps = static_cast<uint64_t*>(shared);
  std::set<std::string> parts = {"floor", "control", "drain"};
  int first = 1;
  if (argc > 1 && std::strncmp(argv[1], "parts:", 6) == 0) {
    parts.clear();
    std::stringstream list(argv[1] + 6);
    // '+' between parts: the kernel command line carries the arguments with ',' between them.
    for (std::string part; std::getline(list, part, '+');) parts.insert(part);
    first = 2;
  }
  int n = argc > first ? std::atoi(argv[first]) : 10000;
  std::vector<int> ks;
  for (int i = first + 1; i < argc; ++i) ks.push_back(std::atoi(argv[i]));
  if (ks.empty()) ks = {1, 8, 64};
  std::printf(
      "IOPF-BENCH %d page requests per run, each to a fresh page; K = requests outstanding\n", n);
  // What a clock read costs depends on it (under TCG, anything but the TSC is an emulated
  // device: a system call and an MMIO read per clock_gettime).
  std::ifstream cs("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string clocksource;
  std::getline(cs, clocksource);
  timespec t0{}, t1{};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  constexpr int kReads = 10000;
  for (int i = 0; i < kReads; ++i) clock_gettime(CLOCK_MONOTONIC, &t1);
  std::printf("IOPF-BENCH clocksource %s, clock_gettime %.2f us\n",
              clocksource.empty() ? "unknown" : clocksource.c_str(),
              ((t1.tv_sec - t0.tv_sec) * 1e9 + static_cast<double>(t1.tv_nsec - t0.tv_nsec)) /
                  kReads / 1000);
  bool ok = true;
  ok = RunFloorParts(parts, n, ks) && ok;
  if (parts.count("control")) ok = RunControl(n) && ok;
  if (parts.count("drain")) ok = RunDrain(n) && ok;
  return ok ? 0 : 1;
}

namespace {

bool RunControl(int n) {
  bool ok = true;
  // The control plane must not stall the fault path: the same run, quiet and with 200 clients
  // calling GetStats throughout. Device-observed latency shares the guest's two CPUs with the
  // clients; iopfd's own (read to response written) shows what the loop itself adds.
  constexpr int kClients = 200;
  Result quiet = RunIopfd(n, kLoadK);
  Result loaded = RunIopfd(n, kLoadK, Load{.clients = kClients});
  Result hostile = RunIopfd(n, kLoadK, Load{.hostile = true});
  for (const auto& [label, r] : {std::pair{"quiet", quiet}, std::pair{"+200 GetStats", loaded},
                                 std::pair{"+52 hostile", hostile}}) {
    std::printf(
        "IOPF-BENCH control %-13s K=%d %8.0f faults/s   device p50 %8.1f us p99 %8.1f us   "
        "iopfd p50 %8.1f us p99 %8.1f us   %llu control replies, %llu hostile acts %s\n",
        label, kLoadK, r.faults_per_s, r.p50_us, r.p99_us, r.served_p50_us, r.served_p99_us,
        static_cast<unsigned long long>(r.control_replies),
        static_cast<unsigned long long>(r.hostile_acts), r.ok ? "" : "(INCOMPLETE)");
  }
  std::printf("IOPF-BENCH ratio  control load/quiet: device p99 %.2fx, iopfd p99 %.2fx\n",
              loaded.p99_us / quiet.p99_us, loaded.served_p99_us / quiet.served_p99_us);
  std::printf("IOPF-BENCH ratio  hostile/quiet: device p99 %.2fx, iopfd p99 %.2fx\n",
              hostile.p99_us / quiet.p99_us, hostile.served_p99_us / quiet.served_p99_us);
  ok = ok && quiet.ok && loaded.ok && hostile.ok;
  return ok;
}

bool RunDrain(int n) {
  bool ok = true;
  // Drains of one device must not delay the others: mock0 driven as above while a second
  // device (mockD) gets a steady stream of page requests, first left running, then drained
  // over and over. Same boot, same load; only the drains differ.
  // Long enough for a few resets (100 ms each) whatever n is.
  const int drain_n = std::max(n, 20000);
  Result steady = RunIopfd(drain_n, kLoadK, Load{.other = true});
  Result drained = RunIopfd(drain_n, kLoadK, Load{.other = true, .drains = true});
  for (const auto& [label, r] :
       {std::pair{"no drains", steady}, std::pair{"mockD drained", drained}}) {
    std::printf(
        "IOPF-BENCH drain   %-13s K=%d %8.0f faults/s   device p50 %8.1f us p99 %8.1f us   "
        "iopfd p50 %8.1f us p99 %8.1f us   mockD %llu requests, %llu drains (%llu resets) %s\n",
        label, kLoadK, r.faults_per_s, r.p50_us, r.p99_us, r.served_p50_us, r.served_p99_us,
        static_cast<unsigned long long>(r.other_sent),
        static_cast<unsigned long long>(r.other_drains),
        static_cast<unsigned long long>(r.other_resets), r.ok ? "" : "(INCOMPLETE)");
  }
  std::printf(
      "IOPF-BENCH ratio  mockD drained/no drains: mock0 device p99 %.2fx, iopfd p99 %.2fx\n",
      drained.p99_us / steady.p99_us, drained.served_p99_us / steady.served_p99_us);
  ok = ok && steady.ok && drained.ok && drained.other_drains > 0 && drained.other_resets > 0;
  return ok;
}

}  // namespace
