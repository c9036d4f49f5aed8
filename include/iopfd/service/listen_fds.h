// Descriptors inherited from the parent or from systemd (socket activation, the fd store).
#ifndef IOPFD_SERVICE_LISTEN_FDS_H_
#define IOPFD_SERVICE_LISTEN_FDS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"

namespace iopfd {

// File descriptors handed to iopfd by its parent or by systemd (LISTEN_PID, LISTEN_FDS,
// LISTEN_FDNAMES: fds 3.. named in order, names separated by ':').
class ListenFds {
 public:
  ListenFds() = default;
  // Reads and unsets the environment variables. Returns InvalidArgument when they are malformed
  // (count not a number, names not matching the count); no variables means no fds. LISTEN_PID
  // must name this process, else the fds are not for it and are ignored (systemd's rule).
  static absl::StatusOr<ListenFds> FromEnvironment();
  // For tests and the runtime adopt path: adds an owned fd under a name.
  void Add(std::string name, UniqueFd fd) { fds_.emplace_back(std::move(name), std::move(fd)); }
  // Takes the fd named `name`. NotFound when there is none or it was taken already.
  absl::StatusOr<UniqueFd> Take(const std::string& name);
  // Takes every fd still held, in the order they were handed over (for a program that serves
  // whatever sockets it is given, whatever their names).
  std::vector<UniqueFd> TakeAll();
  // Returns the names of fds nobody took (they are closed with this object).
  std::vector<std::string> Untaken() const;
  // Returns the number of fds held.
  size_t size() const { return fds_.size(); }

 private:
  std::vector<std::pair<std::string, UniqueFd>> fds_;
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_LISTEN_FDS_H_
