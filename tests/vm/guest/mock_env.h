// The mock-device environment shared by the VM tier's guest driver (tests/vm/guest) and the
// benchmark (bench/): a VMM-like owner of a mock PRI device that hands its fault queue to iopfd.
// Compiled at test time against the booted kernel's drivers/iommu/iommufd/iommufd_test.h.
#ifndef IOPFD_TESTS_VM_GUEST_MOCK_ENV_H_
#define IOPFD_TESTS_VM_GUEST_MOCK_ENV_H_

#include <fcntl.h>
#include <linux/iommufd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "iommufd_test.h"

namespace mockenv {

constexpr uint64_t kPage = 4096;
constexpr uint32_t kPasid = 5;
// Regions, inside the mock aperture [MOCK_APERTURE_START, MOCK_APERTURE_LAST].
constexpr uint64_t kR0 = 0x1000000;  // no PASID, rw, 1 MiB, file /dev/shm/iopf-ram0
constexpr uint64_t kR0Size = 1 << 20;
constexpr uint64_t kR1 = 0x2000000;  // no PASID, read-only, 256 KiB, inherited memfd "ram1"
constexpr uint64_t kR1Size = 256 << 10;
constexpr uint64_t kR2 = 0x1000000;  // PASID 5, rw, 256 KiB, file /dev/shm/iopf-ram2
constexpr uint64_t kR2Size = 256 << 10;
constexpr uint64_t kHole = 0x1800000;  // between regions: no region

[[noreturn]] inline void Die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "iopf-guest: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::exit(2);
}

inline std::string Format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

inline int TestCmd(int iommufd, iommu_test_cmd* cmd) {
  cmd->size = sizeof(*cmd);
  return ioctl(iommufd, IOMMU_TEST_CMD, cmd) < 0 ? -errno : 0;
}

// A mock device set up the way a VMM would before handing the fault queue to iopfd.
struct Env {
  int iommufd = -1;
  uint32_t ioas = 0, ioas_pasid = 0;
  uint32_t stdev = 0, idev = 0;
  uint32_t fault_id = 0;
  int fault_fd = -1;
  uint32_t hwpt = 0, hwpt_pasid = 0;
  int ram0 = -1, ram1 = -1, ram2 = -1;
  char* va0 = nullptr;
  char* va1 = nullptr;
  char* va2 = nullptr;
  std::string dir;     // config directory
  std::string dev;     // the device's name in iopfd's configuration
  std::string prefix;  // of its fd names: "" for mock0 ("iommufd", "fault", "ram1"), else "dev."
  // The descriptors iopfd inherits for this device, with their LISTEN_FDNAMES names.
  std::vector<std::pair<std::string, int>> Fds() const {
    return {{prefix + "iommufd", iommufd}, {prefix + "fault", fault_fd}, {prefix + "ram1", ram1}};
  }

  ~Env() {
    if (va0) munmap(va0, kR0Size);
    if (va1) munmap(va1, kR1Size);
    if (va2) munmap(va2, kR2Size);
    for (int fd : {ram0, ram1, ram2, fault_fd, iommufd}) {
      if (fd >= 0) close(fd);
    }
  }
};

inline uint32_t IoasAlloc(int iommufd) {
  iommu_ioas_alloc cmd = {};
  cmd.size = sizeof(cmd);
  if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &cmd)) Die("IOMMU_IOAS_ALLOC: %s", strerror(errno));
  return cmd.out_ioas_id;
}

inline uint32_t HwptAlloc(const Env& e, uint32_t ioas) {
  iommu_hwpt_alloc cmd = {};
  cmd.size = sizeof(cmd);
  cmd.flags = IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID;
  cmd.dev_id = e.idev;
  cmd.pt_id = ioas;
  cmd.fault_id = e.fault_id;
  if (ioctl(e.iommufd, IOMMU_HWPT_ALLOC, &cmd)) Die("IOMMU_HWPT_ALLOC: %s", strerror(errno));
  return cmd.out_hwpt_id;
}

inline int ShmFile(const char* path, uint64_t size) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(size))) Die("%s: %s", path, strerror(errno));
  return fd;
}

inline char* MapFile(int fd, uint64_t size) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) Die("mmap: %s", strerror(errno));
  return static_cast<char*>(p);
}

inline void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  if (!f) Die("write %s", path.c_str());
}

// The device file iopfd reads for e's device. With fd_backings, every region's memory is an fd
// named <prefix>ram0/1/2 (as io.iopfd.Adopt requires) instead of a /dev/shm path.
inline std::string DeviceFile(const Env& e, bool fd_backings = false) {
  const std::string shm =
      fd_backings ? "fd:" + e.prefix
                  : "file:/dev/shm/iopf-" + (e.dev == "mock0" ? std::string() : e.dev + "-");
  return Format(
      "name = \"%s\"\nattach = \"adopt\"\n\n"
      "[adopt]\niommufd_fd = \"%siommufd\"\nfault_fd = \"%sfault\"\ndevice_id = %u\n\n"
      "[[space]]\nioas_id = %u\n"
      "  [[space.region]]\n  iova = 0x%llx\n  size = \"1MiB\"\n"
      "  backing = \"%sram0\"\n  access = \"rw\"\n"
      "  [[space.region]]\n  iova = 0x%llx\n  size = \"256KiB\"\n"
      "  backing = \"fd:%sram1\"\n  access = \"r\"\n\n"
      "[[space]]\npasid = %u\nioas_id = %u\n"
      "  [[space.region]]\n  iova = 0x%llx\n  size = \"256KiB\"\n"
      "  backing = \"%sram2\"\n  access = \"rw\"\n",
      e.dev.c_str(), e.prefix.c_str(), e.prefix.c_str(), e.idev, e.ioas,
      static_cast<unsigned long long>(kR0), shm.c_str(), static_cast<unsigned long long>(kR1),
      e.prefix.c_str(), kPasid, e.ioas_pasid, static_cast<unsigned long long>(kR2), shm.c_str());
}

// The device file `text` with its first region (ram0) mapping whole units from the first touch
// (first_touch = "unit"): for the cases that count 64 KiB units.
inline std::string WholeUnits(std::string text) {
  const std::string first = "backing = \"";
  const size_t at = text.find('\n', text.find("access = \"rw\"", text.find(first)));
  if (at == std::string::npos) Die("device file: no first region");
  text.insert(at + 1, "  first_touch = \"unit\"\n");
  return text;
}

// The device file with a way for iopfd to park the device (drains): the VM tier's switch
// module (tests/vm/guest/mock_switch.cc) naming e's self-test device, the owner's IOPF-capable
// HWPT of each space, and the drain settings.
inline std::string SwitchableDeviceFile(const Env& e, const std::string& drain) {
  std::string f = DeviceFile(e);
  auto insert_after = [&f](const std::string& line, const std::string& text) {
    size_t at = f.find(line);
    if (at == std::string::npos) Die("device file: no '%s'", line.c_str());
    f.insert(at + line.size(), text);
  };
  insert_after(
      Format("device_id = %u\n", e.idev),
      Format("switch_module = \"/lib/iopfd/mock-switch.so\"\nswitch_target = \"%u\"\n", e.stdev));
  insert_after(Format("ioas_id = %u\n", e.ioas), Format("hwpt_id = %u\n", e.hwpt));
  insert_after(Format("ioas_id = %u\n", e.ioas_pasid), Format("hwpt_id = %u\n", e.hwpt_pasid));
  return f + "\n[drain]\n" + drain;
}

// Runs argv (argv[0] a path), returns its exit status (-1 when it did not exit) and stdout.
inline std::pair<int, std::string> RunCapture(const std::vector<std::string>& argv) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) Die("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) Die("fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(out[1], 1);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;)
    text.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

// Builds the whole environment: IOAS per space, mock device with PASID support, fault queue,
// IOPF-capable HWPTs attached to the device and to PASID 5, backings, iopfd's configuration
// (in /tmp/iopfd-<name>, the device named `dev`; its file is devices.d/<dev>.toml).
inline void Setup(Env& e, const std::string& name, const std::string& log_level = "info",
                  const std::string& dev = "mock0") {
  e.dev = dev;
  e.prefix = dev == "mock0" ? "" : dev + ".";
  const std::string shm = "/dev/shm/iopf-" + (dev == "mock0" ? std::string() : dev + "-");
  e.iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  if (e.iommufd < 0) Die("/dev/iommu: %s", strerror(errno));
  e.ioas = IoasAlloc(e.iommufd);
  e.ioas_pasid = IoasAlloc(e.iommufd);

  iommu_test_cmd mock = {};
  mock.op = IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS;
  mock.id = e.ioas;
  mock.mock_domain_flags.dev_flags = MOCK_FLAGS_DEVICE_PASID;
  if (int rc = TestCmd(e.iommufd, &mock)) Die("MOCK_DOMAIN_FLAGS: %s", strerror(-rc));
  e.stdev = mock.mock_domain_flags.out_stdev_id;
  e.idev = mock.mock_domain_flags.out_idev_id;

  iommu_fault_alloc fa = {};
  fa.size = sizeof(fa);
  if (ioctl(e.iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) Die("FAULT_QUEUE_ALLOC: %s", strerror(errno));
  e.fault_id = fa.out_fault_id;
  e.fault_fd = static_cast<int>(fa.out_fault_fd);

  e.hwpt = HwptAlloc(e, e.ioas);
  iommu_test_cmd replace = {};
  replace.op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE;
  replace.id = e.stdev;
  replace.mock_domain_replace.pt_id = e.hwpt;
  if (int rc = TestCmd(e.iommufd, &replace)) Die("MOCK_DOMAIN_REPLACE: %s", strerror(-rc));

  e.hwpt_pasid = HwptAlloc(e, e.ioas_pasid);
  iommu_test_cmd attach = {};
  attach.op = IOMMU_TEST_OP_PASID_ATTACH;
  attach.id = e.stdev;
  attach.pasid_attach.pasid = kPasid;
  attach.pasid_attach.pt_id = e.hwpt_pasid;
  if (int rc = TestCmd(e.iommufd, &attach)) Die("PASID_ATTACH: %s", strerror(-rc));

  e.ram0 = ShmFile((shm + "ram0").c_str(), kR0Size);
  e.ram2 = ShmFile((shm + "ram2").c_str(), kR2Size);
  e.ram1 = memfd_create("iopf-ram1", MFD_CLOEXEC);
  if (e.ram1 < 0 || ftruncate(e.ram1, kR1Size)) Die("memfd: %s", strerror(errno));
  e.va0 = MapFile(e.ram0, kR0Size);
  e.va1 = MapFile(e.ram1, kR1Size);
  e.va2 = MapFile(e.ram2, kR2Size);

  e.dir = "/tmp/iopfd-" + name;
  mkdir(e.dir.c_str(), 0755);
  mkdir((e.dir + "/devices.d").c_str(), 0755);
  WriteFile(e.dir + "/iopfd.toml", "[daemon]\nlog_level = \"" + log_level +
                                       "\"\n[control]\nsocket = \"" + e.dir +
                                       "/ctl.sock\"\nmax_connections = 512\n"
                                       "max_connections_per_uid = 512\n");
  WriteFile(e.dir + "/devices.d/" + dev + ".toml", DeviceFile(e));
}
// s as a JSON string literal (quotes included).
inline std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out + "\"";
}

inline int Trigger(const Env& e, uint64_t addr, uint32_t perm, bool with_pasid = false,
                   uint32_t grpid = 1) {
  iommu_test_cmd cmd = {};
  cmd.op = IOMMU_TEST_OP_TRIGGER_IOPF;
  cmd.trigger_iopf.dev_id = e.idev;
  cmd.trigger_iopf.pasid = with_pasid ? kPasid : 0;
  cmd.trigger_iopf.grpid = grpid;
  cmd.trigger_iopf.perm = perm;
  cmd.trigger_iopf.addr = addr;
  return TestCmd(e.iommufd, &cmd);
}

// MD_CHECK_MAP: does [iova, iova+len) of hwpt translate to exactly the pages behind uptr?
inline bool CheckMap(const Env& e, uint32_t hwpt, uint64_t iova, uint64_t len, const void* uptr) {
  iommu_test_cmd cmd = {};
  cmd.op = IOMMU_TEST_OP_MD_CHECK_MAP;
  cmd.id = hwpt;
  cmd.check_map.iova = iova;
  cmd.check_map.length = len;
  cmd.check_map.uptr = reinterpret_cast<uintptr_t>(uptr);
  return TestCmd(e.iommufd, &cmd) == 0;
}

// MD_CHECK_REFS: is every page of [uptr, uptr+len) pinned exactly `pins` times? (The kernel
// divides each page's refcount by GUP_PIN_COUNTING_BIAS: a pin counts 1024 references.)
inline bool CheckPins(const Env& e, const void* uptr, uint64_t len, uint32_t pins) {
  iommu_test_cmd cmd = {};
  cmd.op = IOMMU_TEST_OP_MD_CHECK_REFS;
  cmd.check_refs.length = len;
  cmd.check_refs.uptr = reinterpret_cast<uintptr_t>(uptr);
  cmd.check_refs.refs = pins;
  return TestCmd(e.iommufd, &cmd) == 0;
}

inline bool WaitFor(const std::function<bool()>& pred, int timeout_ms = 10000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

// True when no group waits unread in the fault queue.
inline bool QueueEmpty(const Env& e) {
  pollfd p = {e.fault_fd, POLLIN, 0};
  return poll(&p, 1, 0) == 0;
}

// A raw Varlink connection to iopfd's control socket (no JSON library in the guest: replies are
// returned as text).
class ControlClient {
 public:
  explicit ControlClient(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ok_ = fd_ >= 0 && connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~ControlClient() {
    if (fd_ >= 0) close(fd_);
  }
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;
  bool ok() const { return ok_; }
  // Sends one call (JSON text) and returns the reply text, or "" when the connection failed.
  // `fds` travel with it (SCM_RIGHTS), as a VMM hands a device over with io.iopfd.Adopt.
  std::string Call(const std::string& json, const std::vector<int>& fds = {}) {
    std::string msg = json + std::string(1, '\0');
    iovec iov{msg.data(), msg.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    if (!fds.empty()) {
      mh.msg_control = control.data();
      mh.msg_controllen = control.size();
      cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    }
    if (sendmsg(fd_, &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size())) return "";
    std::string reply;
    char buf[8192];
    while (reply.empty() || reply.back() != '\0') {
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return "";
      reply.append(buf, static_cast<size_t>(n));
    }
    reply.pop_back();
    return reply;
  }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

struct Daemon {
  pid_t pid = -1;
  std::string stats_path;
  std::string log_path;  // iopfd's stderr
};

// Starts iopfd on the configuration in dir, handing it `fds` (LISTEN_FDS, in order, with their
// names).
inline Daemon StartWith(const std::string& dir, const std::vector<std::pair<std::string, int>>& fds,
                        const std::vector<std::pair<std::string, std::string>>& env = {}) {
  Daemon d;
  d.stats_path = dir + "/stats.json";
  d.log_path = dir + "/iopfd.log";
  unlink(d.stats_path.c_str());
  pid_t pid = fork();
  if (pid < 0) Die("fork: %s", strerror(errno));
  if (pid == 0) {
    // Move the handed-over fds to 3, 4, ... (LISTEN_FDS numbering) without clobbering each
    // other: first out of the way, then down.
    std::vector<int> high;
    std::string names;
    for (const auto& [name, fd] : fds) {
      high.push_back(fcntl(fd, F_DUPFD, 100));
      names += (names.empty() ? "" : ":") + name;
    }
    for (size_t i = 0; i < high.size(); ++i) {
      if (high[i] < 0 || dup2(high[i], static_cast<int>(3 + i)) < 0) _exit(120);
    }
    int log = open(d.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (log < 0 || dup2(log, 2) < 0) _exit(121);
    setenv("LISTEN_FDS", std::to_string(high.size()).c_str(), 1);
    setenv("LISTEN_FDNAMES", names.c_str(), 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    execl("/bin/iopfd", "iopfd", "--config", (dir + "/iopfd.toml").c_str(), "--devices-dir",
          (dir + "/devices.d").c_str(), "--stats-json", d.stats_path.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  d.pid = pid;
  return d;
}

inline Daemon Start(const Env& e) { return StartWith(e.dir, e.Fds()); }

inline std::string ReadLog(const Daemon& d) {
  std::ifstream f(d.log_path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Copies iopfd's stderr to the console, each line prefixed, for whoever reads the VM log.
inline void EchoLog(const Daemon& d) {
  std::istringstream in(ReadLog(d));
  for (std::string line; std::getline(in, line);) std::printf("  iopfd| %s\n", line.c_str());
}

// SIGTERM, wait up to 30 s, and return iopfd's exit status; -1 when it did not exit normally,
// -2 when it had to be killed.
inline int Stop(Daemon& d) {
  kill(d.pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 3000; ++i) {
    pid_t r = waitpid(d.pid, &status, WNOHANG);
    if (r == d.pid) {
      d.pid = -1;
      EchoLog(d);
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::printf("iopf-guest: iopfd did not exit within 30 s of SIGTERM; killing it\n");
  kill(d.pid, SIGKILL);
  waitpid(d.pid, &status, 0);
  d.pid = -1;
  EchoLog(d);
  return -2;
}

// A crash: kills iopfd (SIGKILL: nothing is answered or unmapped on the way out) and reaps it.
inline void Crash(Daemon& d) {
  kill(d.pid, SIGKILL);
  int status = 0;
  waitpid(d.pid, &status, 0);
  d.pid = -1;
}

// systemd's file descriptor store, as iopfd sees it (NOTIFY_SOCKET and FDSTORE): keeps every
// descriptor sent with FDSTORE=1 under its FDNAME, drops a name's entries on FDSTOREREMOVE=1,
// and hands them back at the next start. Messages are taken in as they come, by a thread of its
// own, as systemd would: a unix datagram socket queues only a few (net.unix.max_dgram_qlen), and
// iopfd's sends block beyond, at a start, a reload or a stop alike.
class FdStoreKeeper {
 public:
  explicit FdStoreKeeper(const std::string& path) : path_(path) {
    unlink(path.c_str());
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      Die("fd store socket %s: %s", path.c_str(), strerror(errno));
    }
    int big = 1 << 20;
    setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        pollfd p{fd_, POLLIN, 0};
        if (poll(&p, 1, 20) == 1) Receive();
      }
    });
  }
  ~FdStoreKeeper() {
    stop_ = true;
    thread_.join();
    for (const auto& [name, fd] : entries_) close(fd);
    close(fd_);
    unlink(path_.c_str());
  }
  FdStoreKeeper(const FdStoreKeeper&) = delete;
  FdStoreKeeper& operator=(const FdStoreKeeper&) = delete;
  // The environment iopfd gets from a unit with FileDescriptorStoreMax=64.
  std::vector<std::pair<std::string, std::string>> Env() const {
    return {{"NOTIFY_SOCKET", path_}, {"FDSTORE", "64"}};
  }
  // Takes in every message waiting (the thread does too).
  void Receive() {
    std::lock_guard<std::mutex> lock(mu_);
    for (;;) {
      char buf[4096];
      iovec iov{buf, sizeof(buf)};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      if (n < 0) return;
      std::vector<int> fds;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        fds.resize(count);
        std::memcpy(fds.data(), CMSG_DATA(c), count * sizeof(int));
      }
      std::string text(buf, static_cast<size_t>(n)), name;
      bool store = false, remove = false;
      std::istringstream lines(text);
      for (std::string line; std::getline(lines, line);) {
        if (line == "FDSTORE=1") store = true;
        if (line == "FDSTOREREMOVE=1") remove = true;
        if (line.rfind("FDNAME=", 0) == 0) name = line.substr(7);
      }
      if (store) {
        for (int fd : fds) entries_.emplace_back(name, fd);
        fds.clear();
      }
      if (remove) {
        for (auto it = entries_.begin(); it != entries_.end();) {
          if (it->first == name) {
            close(it->second);
            it = entries_.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (int fd : fds) close(fd);
    }
  }
  // What it holds now (the descriptors stay its own).
  std::vector<std::pair<std::string, int>> entries() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_;
  }

 private:
  std::string path_;
  int fd_ = -1;
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, int>> entries_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// After iopfd exited, with the device's fault fd still held here (the owner's copy): answers
// every cookie the kernel may still hold as read and unanswered, and counts those it accepts
// (each a group iopfd read and never answered); then reads and answers what is still queued
// (unread: waiting, not lost) and counts it.
struct Probe {
  size_t unanswered = 0;
  size_t unread = 0;
};
inline Probe ProbeFaultQueue(const Env& e) {
  Probe p;
  for (uint32_t cookie = 0; cookie < 4096; ++cookie) {
    iommu_hwpt_page_response r = {};
    r.cookie = cookie;
    r.code = IOMMUFD_PAGE_RESP_INVALID;
    if (write(e.fault_fd, &r, sizeof(r)) == static_cast<ssize_t>(sizeof(r))) ++p.unanswered;
  }
  for (;;) {
    pollfd pfd{e.fault_fd, POLLIN, 0};
    if (poll(&pfd, 1, 0) != 1) break;
    iommu_hwpt_pgfault recs[64];
    ssize_t n = read(e.fault_fd, recs, sizeof(recs));
    if (n <= 0) break;
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(recs[0]); ++i) {
      if ((recs[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) == 0) continue;
      ++p.unread;
      iommu_hwpt_page_response r = {};
      r.cookie = recs[i].cookie;
      r.code = IOMMUFD_PAGE_RESP_INVALID;
      (void)!write(e.fault_fd, &r, sizeof(r));
    }
  }
  return p;
}

// One case's verdict, accumulated by Expect(); Report() prints its IOPF-RESULT line.
struct Verdict {
  explicit Verdict(std::string n) : name(std::move(n)) {}
  std::string name;
  std::vector<std::string> failures;
  void Expect(bool ok, const std::string& what) {
    if (!ok) failures.push_back(what);
  }
  void ExpectEq(const std::map<std::string, uint64_t>& s, const std::string& key, uint64_t want) {
    auto it = s.find(key);
    uint64_t got = it == s.end() ? ~0ull : it->second;
    Expect(got == want,
           Format("%s=%llu want %llu", key.c_str(), static_cast<unsigned long long>(got),
                  static_cast<unsigned long long>(want)));
  }
  bool Report() const {
    std::string detail;
    for (const auto& f : failures) detail += (detail.empty() ? "" : "; ") + f;
    std::printf("IOPF-RESULT %s %s %s\n", name.c_str(), failures.empty() ? "PASS" : "FAIL",
                detail.c_str());
    std::fflush(stdout);
    return failures.empty();
  }
};

// The unsigned numbers of the JSON text that starts with one device's stats object (a
// --stats-json line, a final-counters entry from its "{"), keyed by their path in it: "groups",
// "drain.epoch", "latency_ns.p99" (keys of nested objects joined with dots). The guest has no
// JSON library; this reads the shape iopfd writes (keys without escapes).
inline std::map<std::string, uint64_t> ParseCounters(const std::string& text) {
  std::map<std::string, uint64_t> out;
  std::vector<std::string> path;  // the key of each object and array we are in
  std::string key;                // the last key read, until its value
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      size_t end = text.find('"', i + 1);
      if (end == std::string::npos) break;
      size_t j = end + 1;
      while (j < text.size() && std::isspace(static_cast<unsigned char>(text[j]))) ++j;
      // A key when a colon follows; otherwise a string value, which ends the key's value.
      key = j < text.size() && text[j] == ':' ? text.substr(i + 1, end - i - 1) : "";
      i = end;
    } else if (c == '{' || c == '[') {
      path.push_back(key);
      key.clear();
    } else if (c == '}' || c == ']') {
      if (!path.empty()) path.pop_back();
      key.clear();
    } else if (std::isdigit(static_cast<unsigned char>(c)) && !key.empty()) {
      std::string full;
      for (const std::string& p : path) full += p.empty() ? "" : p + ".";
      out[full + key] = std::strtoull(text.c_str() + i, nullptr, 10);
      while (i + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1]))) ++i;
      key.clear();
    }
  }
  return out;
}

// What follows marker in text ("" when it is not there).
inline std::string After(const std::string& text, const std::string& marker) {
  size_t at = text.find(marker);
  return at == std::string::npos ? std::string() : text.substr(at + marker.size());
}

// The counters of iopfd's --stats-json line for `device` (empty when it has none).
inline std::map<std::string, uint64_t> ReadStats(const Daemon& d,
                                                 const std::string& device = "mock0") {
  std::ifstream f(d.stats_path);
  const std::string tag = "\"name\":\"" + device + "\"";
  for (std::string line; std::getline(f, line);) {
    if (line.find(tag) != std::string::npos) return ParseCounters(line);
  }
  return {};
}

// The final counters iopfd logged when it stopped serving `device` (empty when it did not).
inline std::map<std::string, uint64_t> FinalCounters(const Daemon& d, const std::string& device) {
  std::istringstream in(ReadLog(d));
  const std::string tag = device + ": final counters {";
  for (std::string line; std::getline(in, line);) {
    size_t at = line.find(tag);
    if (at != std::string::npos) return ParseCounters(line.substr(at + tag.size() - 1));
  }
  return {};
}

}  // namespace mockenv

#endif  // IOPFD_TESTS_VM_GUEST_MOCK_ENV_H_
