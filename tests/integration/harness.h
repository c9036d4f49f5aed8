// The integration tier's harness: a real iopfd process in a scratch directory, and a raw
// Varlink client (one NUL-terminated JSON message per call; descriptors by SCM_RIGHTS).
#ifndef IOPFD_TESTS_INTEGRATION_HARNESS_H_
#define IOPFD_TESTS_INTEGRATION_HARNESS_H_

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace iopfd_test {

using nlohmann::json;

// Waits up to timeout_ms for the child pid to exit; returns true with *status set, or false
// after killing it (SIGKILL) and reaping it, so that a test whose process hangs fails with a
// message instead of hanging until CTest's timeout.
inline bool WaitPidFor(pid_t pid, int timeout_ms, int* status) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    if (waitpid(pid, status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, status, 0);
  return false;
}

// Runs a shell command line (stderr joined to stdout); returns its exit status (-1 when it did
// not exit normally), with its output in *out when out is not null.
inline int Shell(const std::string& command, std::string* out = nullptr) {
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  std::string got;
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) got.append(buf, n);
  const int status = pclose(p);
  if (out != nullptr) *out = got;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs fn in a child that has dropped to uid/gid/groups; returns fn's exit status.
inline int AsUser(uid_t uid, gid_t gid, std::vector<gid_t> groups, const std::function<int()>& fn) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(groups.size(), groups.data()) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
      _exit(100);
    }
    _exit(fn());
  }
  int status = 0;
  if (!WaitPidFor(pid, 30000, &status)) return 102;  // the child hung
  return WIFEXITED(status) ? WEXITSTATUS(status) : 101;
}

struct IopfdOptions {
  // The global file's text.
  std::string global =
      "[control]\ngroup = \"daemon\"\nadmin_group = \"bin\"\n"
      "max_connections = 8\nmax_connections_per_uid = 6\n"
      "max_message_bytes = 4096\n";
  // Device files written to devices.d before start: file name -> text.
  std::vector<std::pair<std::string, std::string>> devices;
  // Descriptors handed over as LISTEN_FDS, with their LISTEN_FDNAMES names.
  std::vector<std::pair<std::string, int>> fds;
  // Environment variables set for iopfd; a value "@pid" becomes iopfd's pid (WATCHDOG_PID).
  std::vector<std::pair<std::string, std::string>> env;
};

class Iopfd {
 public:
  explicit Iopfd(const IopfdOptions& options = {}) {
    static int serial = 0;
    dir_ = std::filesystem::temp_directory_path() /
           ("iopfd-it-" + std::to_string(getpid()) + "-" + std::to_string(serial++));
    std::filesystem::create_directories(dir_ / "devices.d");
    std::ofstream(dir_ / "iopfd.toml") << options.global;
    for (const auto& [file, text] : options.devices) WriteDevice(file, text);
    socket_ = (dir_ / "run/io.iopfd").string();
    pid_ = fork();
    if (pid_ == 0) {
      // Descriptors to 3, 4, ... without clobbering one another: first out of the way, then down.
      std::vector<int> high;
      for (const auto& f : options.fds) high.push_back(fcntl(f.second, F_DUPFD, 100));
      std::string names;
      for (size_t i = 0; i < high.size(); ++i) {
        if (high[i] < 0 || dup2(high[i], static_cast<int>(3 + i)) < 0) _exit(120);
        names += (i ? ":" : "") + options.fds[i].first;
      }
      if (!high.empty()) {
        setenv("LISTEN_FDS", std::to_string(high.size()).c_str(), 1);
        setenv("LISTEN_FDNAMES", names.c_str(), 1);
        setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
      }
      for (const auto& [name, value] : options.env) {
        setenv(name.c_str(), value == "@pid" ? std::to_string(getpid()).c_str() : value.c_str(), 1);
      }
      int log = open((dir_ / "iopfd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(log, 2);
      execl(IOPFD_PATH, "iopfd", "--config", (dir_ / "iopfd.toml").c_str(), "--devices-dir",
            (dir_ / "devices.d").c_str(), "--control-socket", socket_.c_str(), "--stats-json",
            (dir_ / "stats.json").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 500 && !std::filesystem::exists(socket_); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~Iopfd() {
    if (pid_ > 0) Stop();
    std::filesystem::remove_all(dir_);
  }
  Iopfd(const Iopfd&) = delete;
  Iopfd& operator=(const Iopfd&) = delete;

  // SIGTERM; returns the exit status (-1 when it did not exit normally, -2 when it had not
  // exited 60 s later and was killed).
  int Stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    const bool exited = WaitPidFor(pid_, 60000, &status);
    pid_ = -1;
    int rc = !exited ? -2 : WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (!exited) std::cerr << "iopfd did not exit within 60 s of SIGTERM\n";
    if (rc != 0) {
      // Whatever went wrong (a sanitizer report, an error) is in iopfd's stderr.
      std::cerr << "iopfd exited " << rc << "; its stderr:\n" << Log();
    }
    return rc;
  }
  void Signal(int sig) const { kill(pid_, sig); }
  // Waits up to timeout_ms for iopfd to exit by itself; returns its exit status, or -2 after
  // killing it when it did not.
  int WaitExit(int timeout_ms) {
    int status = 0;
    for (int waited = 0; waited < timeout_ms; waited += 10) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    std::cerr << "iopfd did not exit within " << timeout_ms << " ms; its stderr:\n" << Log();
    return -2;
  }
  // Writes (or replaces) a device file; an empty text removes it.
  void WriteDevice(const std::string& file, const std::string& text) const {
    if (text.empty()) {
      std::filesystem::remove(dir_ / "devices.d" / file);
    } else {
      std::ofstream(dir_ / "devices.d" / file) << text;
    }
  }
  // iopfd's stderr so far.
  std::string Log() const {
    std::ifstream f(dir_ / "iopfd.log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  // The --stats-json lines written at exit, by device name.
  std::vector<json> ExitStats() const {
    std::vector<json> out;
    std::ifstream f(dir_ / "stats.json");
    for (std::string line; std::getline(f, line);) out.push_back(json::parse(line));
    return out;
  }
  const std::string& socket() const { return socket_; }
  const std::filesystem::path& dir() const { return dir_; }
  pid_t pid() const { return pid_; }
  // The number of descriptors iopfd has open.
  size_t OpenFds() const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd")) {
      ++n;
    }
    return n;
  }

 private:
  std::filesystem::path dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

class Client {
 public:
  explicit Client(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    // A send into a server that stopped reading fails after 10 s instead of hanging the test.
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // Sends bytes in one sendmsg with fds attached (SCM_RIGHTS).
  bool SendWithFds(const std::string& bytes, const std::vector<int>& fds) {
    iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    if (!fds.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    }
    return sendmsg(fd_, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  bool Call(const json& call) { return Send(call.dump() + std::string(1, '\0')); }
  // The next reply, or nullopt when the server closed the connection (or 10 s passed).
  std::optional<json> Next() {
    while (true) {
      size_t nul = buf_.find('\0');
      if (nul != std::string::npos) {
        json j = json::parse(buf_.substr(0, nul));
        buf_.erase(0, nul + 1);
        return j;
      }
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10000) <= 0) return std::nullopt;
      char tmp[65536];
      ssize_t n = recv(fd_, tmp, sizeof(tmp), 0);
      if (n <= 0) return std::nullopt;
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  json CallOne(const json& call) {
    Call(call);
    auto r = Next();
    return r ? *r : json(nullptr);
  }
  json CallWithFds(const json& call, const std::vector<int>& fds) {
    if (!SendWithFds(call.dump() + std::string(1, '\0'), fds)) return json(nullptr);
    auto r = Next();
    return r ? *r : json(nullptr);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  bool connected_ = false;
  std::string buf_;
};

}  // namespace iopfd_test

#endif  // IOPFD_TESTS_INTEGRATION_HARNESS_H_
