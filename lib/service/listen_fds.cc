#include "iopfd/service/listen_fds.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace iopfd {

// systemd passes fds starting at 3 (SD_LISTEN_FDS_START).
constexpr int kListenFdsStart = 3;

absl::StatusOr<ListenFds> ListenFds::FromEnvironment() {
  ListenFds out;
  const char* pid_env = std::getenv("LISTEN_PID");        // NOLINT(concurrency-mt-unsafe): startup
  const char* fds_env = std::getenv("LISTEN_FDS");        // NOLINT(concurrency-mt-unsafe)
  const char* names_env = std::getenv("LISTEN_FDNAMES");  // NOLINT(concurrency-mt-unsafe)
  std::string pid_s = pid_env ? pid_env : "";
  std::string fds_s = fds_env ? fds_env : "";
  std::string names_s = names_env ? names_env : "";
  // The variables are for this process only: children must not see them.
  unsetenv("LISTEN_PID");      // NOLINT(concurrency-mt-unsafe)
  unsetenv("LISTEN_FDS");      // NOLINT(concurrency-mt-unsafe)
  unsetenv("LISTEN_FDNAMES");  // NOLINT(concurrency-mt-unsafe)
  if (fds_s.empty()) return out;

  int64_t pid = 0;
  if (!absl::SimpleAtoi(pid_s, &pid)) {
    return absl::InvalidArgumentError(absl::StrCat("LISTEN_PID: not a number: '", pid_s, "'"));
  }
  if (pid != getpid()) return out;  // meant for another process (systemd's rule)
  int count = 0;
  if (!absl::SimpleAtoi(fds_s, &count) || count < 0 || count > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("LISTEN_FDS: not a count: '", fds_s, "'"));
  }
  std::vector<std::string> names;
  if (!names_s.empty()) names = absl::StrSplit(names_s, ':');
  if (!names.empty() && static_cast<int>(names.size()) != count) {
    return absl::InvalidArgumentError(
        absl::StrCat("LISTEN_FDNAMES: ", names.size(), " names for LISTEN_FDS=", count));
  }
  for (int i = 0; i < count; ++i) {
    int fd = kListenFdsStart + i;
    if (fcntl(fd, F_GETFD) < 0) {  // NOLINT(cppcoreguidelines-pro-type-vararg)
      return absl::InvalidArgumentError(absl::StrCat("LISTEN_FDS: fd ", fd, " is not open"));
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);  // NOLINT(cppcoreguidelines-pro-type-vararg)
    // systemd names unnamed fds "unknown".
    out.Add(names.empty() ? "unknown" : names[i], UniqueFd(fd));
  }
  return out;
}

absl::StatusOr<UniqueFd> ListenFds::Take(const std::string& name) {
  for (auto it = fds_.begin(); it != fds_.end(); ++it) {
    if (it->first == name && it->second.valid()) {
      UniqueFd fd = std::move(it->second);
      fds_.erase(it);
      return fd;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no fd named '", name,
                   "' was handed over (LISTEN_FDNAMES at start, or with the Adopt call), or "
                   "another device holds it"));
}

std::vector<UniqueFd> ListenFds::TakeAll() {
  std::vector<UniqueFd> out;
  for (auto& entry : fds_) {
    if (entry.second.valid()) out.push_back(std::move(entry.second));
  }
  fds_.clear();
  return out;
}

std::vector<std::string> ListenFds::Untaken() const {
  std::vector<std::string> out;
  for (const auto& [n, fd] : fds_) {
    if (fd.valid()) out.push_back(n);
  }
  return out;
}

}  // namespace iopfd
