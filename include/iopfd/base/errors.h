// Turning errno values into absl::Status with context.
#ifndef IOPFD_BASE_ERRORS_H_
#define IOPFD_BASE_ERRORS_H_

#include <string_view>

#include "absl/status/status.h"

namespace iopfd {

// Returns the symbolic name of an errno value ("EINVAL"), or "E<number>" when unknown.
std::string_view ErrnoName(int err);

// Returns a Status whose code follows the errno (ENOENT -> NotFound, EINVAL -> InvalidArgument,
// EPERM/EACCES -> PermissionDenied, EOPNOTSUPP/ENOTTY -> Unimplemented, EEXIST ->
// AlreadyExists, ENOMEM/ENOSPC -> ResourceExhausted, EBUSY/EAGAIN -> Unavailable, others ->
// Internal) and whose message reads "<object>: <op>: <ENAME> (<strerror>)[: <hint>]".
// `object` may be empty, in which case it and its colon are left out. The errno is attached as
// a payload; ErrnoOf() gets it back.
absl::Status ErrnoStatus(int err, std::string_view object, std::string_view op,
                         std::string_view hint = {});

// Returns the errno a Status from ErrnoStatus carries, or 0 when it carries none.
int ErrnoOf(const absl::Status& status);

}  // namespace iopfd

#endif  // IOPFD_BASE_ERRORS_H_
