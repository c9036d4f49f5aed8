// systemd's side of the fd store for unit tests (fd_store.h): what FDSTORE=1 and
// FDSTOREREMOVE=1 do, and LISTEN_FDS at the next start.
#ifndef IOPFD_LIB_DAEMON_FAKE_SERVICE_MANAGER_H_
#define IOPFD_LIB_DAEMON_FAKE_SERVICE_MANAGER_H_

#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "iopfd/base/fd.h"
#include "iopfd/device/device.h"
#include "iopfd/service/fd_store.h"

namespace iopfd {

// systemd's side: keeps a copy of every descriptor sent with FDSTORE=1 under its FDNAME,
// drops every entry of a name on FDSTOREREMOVE=1, and hands them all over at the next start.
class FakeServiceManager {
 public:
  FdStore::Sender sender() {
    return [this](const std::string& message, std::span<const int> fds) -> int {
      messages.push_back(message);
      if (fail_after >= 0 && static_cast<int>(messages.size()) > fail_after) return -EPIPE;
      std::string name;
      bool store = false, remove = false, poll_off = false;
      for (absl::string_view line : absl::StrSplit(message, '\n')) {
        if (line == "FDSTORE=1") store = true;
        if (line == "FDSTOREREMOVE=1") remove = true;
        if (line == "FDPOLL=0") poll_off = true;
        if (line.substr(0, 7) == "FDNAME=") name = std::string(line.substr(7));
      }
      if (store) {
        EXPECT_TRUE(poll_off) << message;
        for (int fd : fds) entries.emplace_back(name, UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 3)));
      }
      if (remove) {
        EXPECT_TRUE(fds.empty());
        std::erase_if(entries, [&](const auto& e) { return e.first == name; });
      }
      return 1;
    };
  }
  // LISTEN_FDS at the next start: copies of what is stored, plus the control socket.
  ListenFds Restart() const {
    ListenFds out;
    out.Add("control", UniqueFd(memfd_create("control", MFD_CLOEXEC)));
    for (const auto& [name, fd] : entries) {
      out.Add(name, UniqueFd(fcntl(fd.get(), F_DUPFD_CLOEXEC, 3)));
    }
    return out;
  }
  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    for (const auto& e : entries) out.push_back(e.first);
    return out;
  }
  std::vector<std::string> messages;
  std::vector<std::pair<std::string, UniqueFd>> entries;
  int fail_after = -1;  // messages after this many fail
};

}  // namespace iopfd

#endif  // IOPFD_LIB_DAEMON_FAKE_SERVICE_MANAGER_H_
