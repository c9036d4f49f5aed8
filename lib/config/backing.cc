// The checks of a file: backing (a regular file on tmpfs or hugetlbfs, big enough).

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/uapi.h"
#include "iopfd/config/toml_guard.h"
#include "toml_reader.h"

namespace iopfd::config_internal {
namespace {

bool IsHugetlbfs(const struct statfs& fs) {
  return static_cast<uint32_t>(fs.f_type) == static_cast<uint32_t>(HUGETLBFS_MAGIC);
}
bool IsTmpfs(const struct statfs& fs) {
  return static_cast<uint32_t>(fs.f_type) == static_cast<uint32_t>(TMPFS_MAGIC);
}

}  // namespace

// The page size mappings of `path` are made in: the huge page size on hugetlbfs, else 4 KiB
// (also when the file cannot be examined; FileBackingProblem reports that).
uint64_t PageSizeOf(const std::string& path) {
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) == 0 && IsHugetlbfs(fs) && fs.f_bsize > 0) {
    return static_cast<uint64_t>(fs.f_bsize);
  }
  return kBasePageSize;
}

// Checks that a file backing can serve the region; returns the problem, or nullopt.
std::optional<std::string> FileBackingProblem(const RegionConfig& region) {
  const std::string& path = region.path;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return std::string(ErrnoStatus(errno, path, "stat").message());
  }
  if (!S_ISREG(st.st_mode)) return Cat(path, ": not a regular file");
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) != 0) {
    return std::string(ErrnoStatus(errno, path, "statfs").message());
  }
  if (!IsTmpfs(fs) && !IsHugetlbfs(fs)) {
    return Cat(path, ": not on tmpfs or hugetlbfs (filesystem magic ",
               Hex(static_cast<uint32_t>(fs.f_type)),
               "); only shared memory files can back a region");
  }
  const bool writable = (region.access & uapi::kPermWrite) != 0;
  // O_NONBLOCK: never wait on a file swapped for a FIFO since the stat.
  UniqueFd fd(
      ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    return std::string(
        ErrnoStatus(errno, path, writable ? "open O_RDWR" : "open O_RDONLY").message());
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (region.offset > file_size || region.size > file_size - region.offset) {
    const uint64_t end = region.offset + region.size;
    const std::string needed = end < region.offset ? std::string("more than 2^64") : Cat(end);
    return Cat(path, ": file is ", file_size, " bytes, smaller than offset + size (", needed, ")");
  }
  return std::nullopt;
}

}  // namespace iopfd::config_internal
