#include "iopfd/base/fd.h"

#include <unistd.h>

namespace iopfd {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) {
    // On Linux the descriptor is released even when close() reports an error (including
    // EINTR), so retrying would risk closing a descriptor another thread just opened.
    (void)::close(fd_);
  }
  fd_ = fd;
}

}  // namespace iopfd
