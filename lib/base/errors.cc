#include "iopfd/base/errors.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace iopfd {
namespace {

constexpr absl::string_view kErrnoPayload = "iopfd.errno";

absl::StatusCode CodeFor(int err) {
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO:
      return absl::StatusCode::kNotFound;
    case EINVAL:
    case ESPIPE:
    case EOVERFLOW:
    case ERANGE:
      return absl::StatusCode::kInvalidArgument;
    case EPERM:
    case EACCES:
      return absl::StatusCode::kPermissionDenied;
    case EOPNOTSUPP:
    case ENOTTY:
    case ENOSYS:
      return absl::StatusCode::kUnimplemented;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
      return absl::StatusCode::kResourceExhausted;
    case EBUSY:
    case EAGAIN:
    case EINTR:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

std::string_view ErrnoName(int err) {
  // strerrorname_np is glibc >= 2.32, which Debian 12 has; it returns nullptr when unknown.
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  static thread_local std::string fallback;
  fallback = absl::StrCat("E", err);
  return fallback;
}

absl::Status ErrnoStatus(int err, std::string_view object, std::string_view op,
                         std::string_view hint) {
  // Debian's Abseil is built with its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so
  // std::string_view is joined with std::string here rather than StrCat.
  std::string msg;
  if (!object.empty()) msg.append(object).append(": ");
  msg.append(op).append(": ").append(ErrnoName(err));
  msg.append(" (").append(strerrordesc_np(err)).append(")");
  if (!hint.empty()) msg.append(": ").append(hint);
  absl::Status status(CodeFor(err), msg);
  status.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return status;
}

int ErrnoOf(const absl::Status& status) {
  auto payload = status.GetPayload(kErrnoPayload);
  if (!payload.has_value()) return 0;
  int err = 0;
  if (!absl::SimpleAtoi(std::string(*payload), &err)) return 0;
  return err;
}

}  // namespace iopfd
