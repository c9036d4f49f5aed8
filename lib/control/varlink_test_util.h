// Test helpers for the control client: a scripted fake Varlink server and process runner.
#ifndef IOPFD_LIB_CONTROL_VARLINK_TEST_UTIL_H_
#define IOPFD_LIB_CONTROL_VARLINK_TEST_UTIL_H_

#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "iopfd/base/fd.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace iopfd::testutil {

// Generous: only reached when the code under test hangs, which then fails instead of blocking.
constexpr int kTimeoutMs = 20000;

// A private directory under /tmp (short enough for sun_path), removed with its contents.
class TempDir {
 public:
  TempDir() {
    char templ[] = "/tmp/iopfctl-test.XXXXXX";
    if (mkdtemp(templ) == nullptr) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes all of data; returns false when the peer is gone.
inline bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Writes data one byte at a time, each only after the peer has read the previous one (the
// socket's send queue is empty again), so every byte arrives in a read of its own.
inline bool WriteByteByByte(int fd, std::string_view data) {
  for (char c : data) {
    if (!WriteAll(fd, std::string_view(&c, 1))) return false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
    int queued = 1;
    while (queued > 0) {
      if (::ioctl(fd, SIOCOUTQ, &queued) != 0) return false;
      if (queued == 0) break;
      // A reader that gave up (and shut its end) will never drain the queue. It may also have
      // read the byte just before shutting down, hence the second look at the queue.
      pollfd p = {fd, POLLOUT, 0};
      if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0) {
        return ::ioctl(fd, SIOCOUTQ, &queued) == 0 && queued == 0;
      }
      if (std::chrono::steady_clock::now() > deadline) return false;
      if (queued > 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  return true;
}

// Returns one message (without its NUL) read from fd, or "<eof>"/"<timeout>"/"<error>". Reads a
// byte at a time so that nothing after the NUL is consumed.
inline std::string ReadMessage(int fd) {
  std::string out;
  while (true) {
    pollfd p = {fd, POLLIN, 0};
    int r = ::poll(&p, 1, kTimeoutMs);
    if (r == 0) return "<timeout>";
    if (r < 0) {
      if (errno == EINTR) continue;
      return "<error>";
    }
    char c;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return "<error>";
    if (n == 0) return "<eof>";
    if (c == '\0') return out;
    out.push_back(c);
  }
}

// Makes reads on fd fail with EAGAIN after kTimeoutMs, so that a client waiting for a reply
// that never comes fails its test instead of hanging it.
inline void LimitReadWait(int fd) {
  timeval tv = {kTimeoutMs / 1000, 0};
  EXPECT_EQ(::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
}

// Returns a message of the Varlink wire format: the JSON and its NUL.
inline std::string Frame(const nlohmann::json& message) { return message.dump() + '\0'; }

// A Varlink server on a Unix socket path that accepts one connection and runs a script on it in
// a thread; the script's EXPECTs count for the test.
class FakeServer {
 public:
  FakeServer(std::string path, std::function<void(int fd)> script) : path_(std::move(path)) {
    listener_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener_.get(), 4) != 0) {
      ADD_FAILURE() << "bind/listen " << path_ << ": " << std::strerror(errno);
      return;
    }
    thread_ = std::thread([this, script = std::move(script)] {
      pollfd p = {listener_.get(), POLLIN, 0};
      if (::poll(&p, 1, kTimeoutMs) != 1) {
        ADD_FAILURE() << "nobody connected to " << path_;
        return;
      }
      UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn.valid()) {
        ADD_FAILURE() << "accept: " << std::strerror(errno);
        return;
      }
      script(conn.get());
    });
  }
  ~FakeServer() { Join(); }

  // Waits for the script to finish.
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  UniqueFd listener_;
  std::thread thread_;
};

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  std::string out;
  std::string err;
};

// Runs argv[0] with argv (stdin from /dev/null, output to files in tmp), calls while_running
// (if given) with its pid and the path of its stdout, waits for it with a timeout, and returns
// its exit code and output.
inline ProcessResult RunProcess(
    const std::vector<std::string>& args, const std::string& tmp,
    const std::function<void(pid_t, const std::string&)>& while_running = nullptr) {
  ProcessResult result;
  std::string out_path = tmp + "/stdout", err_path = tmp + "/stderr";
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    ADD_FAILURE() << "posix_spawn " << args[0] << ": " << std::strerror(rc);
    return result;
  }
  if (while_running) while_running(pid, out_path);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << args[0] << " timed out";
      return result;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  auto slurp = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  result.out = slurp(out_path);
  result.err = slurp(err_path);
  return result;
}

}  // namespace iopfd::testutil

#endif  // IOPFD_LIB_CONTROL_VARLINK_TEST_UTIL_H_
