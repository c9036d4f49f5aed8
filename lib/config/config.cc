#include "iopfd/config/config.h"

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

namespace iopfd {

// The reader's parts (toml_reader.h), by their short names here.
using namespace config_internal;  // NOLINT(google-build-using-namespace)

namespace {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus(errno, "", "open");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "", "fstat");
  if (S_ISDIR(st.st_mode)) return ErrnoStatus(EISDIR, "", "read");
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError("not a regular file");
  std::string text;
  char buffer[8192];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "", "read");
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > kMaxConfigFileBytes) {
      return absl::InvalidArgumentError(Cat("file is larger than ", kMaxConfigFileBytes, " bytes"));
    }
  }
  return text;
}

// Lists the *.toml files of `dir` (not hidden ones), sorted by name.
absl::StatusOr<std::vector<std::string>> ListDeviceFiles(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus(errno, "", "cannot open devices directory");
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const struct dirent* entry = ::readdir(d);
    if (entry == nullptr) {
      const int err = errno;
      ::closedir(d);
      if (err != 0) return ErrnoStatus(err, "", "cannot read devices directory");
      break;
    }
    const std::string_view name = entry->d_name;
    if (name.empty() || name[0] == '.' || !name.ends_with(".toml")) continue;
    names.emplace_back(name);
  }
  std::sort(names.begin(), names.end());
  const std::string base = absl::EndsWith(dir, "/") ? dir : Cat(dir, "/");
  for (std::string& name : names) name = Cat(base, name);
  return names;
}

}  // namespace

std::string ConfigError::ToString() const {
  if (where.line == 0) {
    if (where.file.empty()) return message;
    return Cat(where.file, ": ", message);
  }
  return Cat(where.file, ":", where.line, ":", where.column, ": ", message);
}

absl::StatusOr<uint64_t> ParseSize(std::string_view text) {
  const auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(Cat("invalid size ", Quote(text), ": ", why));
  };
  std::string_view s = text;
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  if (s.empty()) return invalid("empty");
  if (s[0] == '-') return invalid("must not be negative");
  size_t digits = 0;
  while (digits < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[digits]))) {
    ++digits;
  }
  if (digits == 0) return invalid("expected a number of bytes, optionally followed by a unit");
  uint64_t number = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + digits, number);
  if (ec == std::errc::result_out_of_range) return invalid("does not fit in 64 bits");
  if (ec != std::errc() || end != s.data() + digits) return invalid("not a number");
  std::string_view unit = s.substr(digits);
  while (!unit.empty() && absl::ascii_isspace(static_cast<unsigned char>(unit.front()))) {
    unit.remove_prefix(1);
  }
  if (!unit.empty() && unit[0] == '.') return invalid("fractional sizes are not supported");
  struct Unit {
    std::string_view name;
    int shift;
  };
  constexpr Unit kUnits[] = {{"", 0},   {"B", 0},    {"KiB", 10}, {"K", 10},   {"MiB", 20},
                             {"M", 20}, {"GiB", 30}, {"G", 30},   {"TiB", 40}, {"T", 40}};
  const auto it = std::find_if(std::begin(kUnits), std::end(kUnits),
                               [&](const Unit& u) { return u.name == unit; });
  if (it == std::end(kUnits)) {
    return invalid(Cat("unknown unit ", Quote(unit), " (use B, KiB, MiB, GiB, TiB, K, M, G or T)"));
  }
  if (number > (std::numeric_limits<uint64_t>::max() >> it->shift)) {
    return invalid("does not fit in 64 bits");
  }
  return number << it->shift;
}

absl::StatusOr<uint32_t> ParseAccess(std::string_view text) {
  if (text.empty()) {
    return absl::InvalidArgumentError("empty access string (use the letters r, w, x, p)");
  }
  uint32_t bits = 0;
  for (char c : text) {
    uint32_t bit = 0;
    switch (c) {
      case 'r':
        bit = uapi::kPermRead;
        break;
      case 'w':
        bit = uapi::kPermWrite;
        break;
      case 'x':
        bit = uapi::kPermExec;
        break;
      case 'p':
        bit = uapi::kPermPriv;
        break;
      default:
        return absl::InvalidArgumentError(Cat("unknown access letter '",
                                              absl::CHexEscape(absl::string_view(&c, 1)), "' in ",
                                              Quote(text), " (use r, w, x, p)"));
    }
    if ((bits & bit) != 0) {
      return absl::InvalidArgumentError(
          Cat("repeated access letter '", std::string_view(&c, 1), "' in ", Quote(text)));
    }
    bits |= bit;
  }
  return bits;
}

LoadResult ParseDeviceText(std::string_view text, const std::string& file, bool check_backings) {
  LoadResult result;
  if (auto parse = ParseDevice(text, file, check_backings, &result.errors)) {
    result.config.devices.push_back(std::move(parse->device));
  }
  return result;
}

namespace {

// [daemon] max_resident must hold the largest map unit of any device: one that cannot hold a
// single unit could map nothing at all.
void CheckDaemonBudget(const Config& config, std::vector<ConfigError>* errors) {
  const std::optional<uint64_t>& budget = config.global.paging.max_resident;
  if (!budget) return;
  for (const DeviceConfig& d : config.devices) {
    for (const SpaceConfig& s : d.spaces) {
      for (const RegionConfig& r : s.regions) {
        const uint64_t unit =
            r.map_unit != 0 ? r.map_unit : std::max<uint64_t>(r.page_size, uint64_t{64} << 10);
        if (*budget < unit) {
          errors->push_back(ConfigError{
              config.global.paging.max_resident_where,
              Cat("daemon.max_resident: ", *budget, " bytes cannot hold one map unit of device ",
                  Quote(d.name), " (", unit, " bytes, ", r.where.file, ":", r.where.line,
                  "); make it at least that")});
          return;
        }
      }
    }
  }
}

}  // namespace

LoadResult LoadConfig(const LoadOptions& options) {
  LoadResult result;
  Config& config = result.config;

  absl::StatusOr<std::string> global_text = ReadTextFile(options.global_path);
  if (global_text.ok()) {
    ParseGlobal(*global_text, options.global_path, &config.global, &result.errors);
  } else if (!(options.global_optional && ErrnoOf(global_text.status()) == ENOENT)) {
    result.errors.push_back(ConfigError{SourceLocation{options.global_path, 0, 0},
                                        std::string(global_text.status().message())});
  }

  const std::string dir = options.devices_dir.value_or(config.global.devices_dir);
  absl::StatusOr<std::vector<std::string>> files = ListDeviceFiles(dir);
  if (!files.ok()) {
    result.errors.push_back(
        ConfigError{SourceLocation{dir, 0, 0}, std::string(files.status().message())});
    return result;
  }
  std::vector<std::pair<std::string, std::string>> names;  // (device name, file)
  for (const std::string& file : *files) {
    absl::StatusOr<std::string> text = ReadTextFile(file);
    if (!text.ok()) {
      result.errors.push_back(
          ConfigError{SourceLocation{file, 0, 0}, std::string(text.status().message())});
      continue;
    }
    std::optional<DeviceParse> parse =
        ParseDevice(*text, file, options.check_backings, &result.errors);
    if (!parse) continue;
    if (parse->name_where) {
      const std::string& name = parse->device.name;
      auto same =
          std::find_if(names.begin(), names.end(), [&](const auto& n) { return n.first == name; });
      if (same != names.end()) {
        result.errors.push_back(ConfigError{
            *parse->name_where,
            Cat("name: device name ", Quote(name), " is already used by ", same->second)});
      } else {
        names.emplace_back(name, file);
      }
    }
    config.devices.push_back(std::move(parse->device));
  }
  CheckDaemonBudget(config, &result.errors);
  return result;
}

bool SameDeviceSettings(const DeviceConfig& a, const DeviceConfig& b) { return a == b; }

bool SameDeviceSettingsBesidesBudgets(const DeviceConfig& a, const DeviceConfig& b) {
  if (a.spaces.size() != b.spaces.size()) return false;
  DeviceConfig x = a;
  x.limits.max_resident = b.limits.max_resident;
  for (size_t i = 0; i < x.spaces.size(); ++i) x.spaces[i].max_resident = b.spaces[i].max_resident;
  return x == b;
}

}  // namespace iopfd
