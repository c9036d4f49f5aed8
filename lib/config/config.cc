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

namespace iopfd {
namespace {

// The page size of every backing except a hugetlbfs file.
constexpr uint64_t kBasePageSize = 4096;
// PCIe PASIDs are 20 bits wide; 0 is the kernel's "no PASID".
constexpr int64_t kMaxPasid = (int64_t{1} << 20) - 1;
constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
constexpr int64_t kMaxI64 = std::numeric_limits<int64_t>::max();
// Configuration files larger than this are refused rather than read.
constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;
// systemd's limit on a LISTEN_FDNAMES name (FileDescriptorName=).
constexpr size_t kMaxFdNameLength = 255;
// Keep in step with FdStore's names (include/iopfd/service/fd_store.h).
constexpr std::string_view kReservedFdNamePrefixes[] = {"iopfd-adopted/", "iopfd-ledger/"};
constexpr size_t kMaxDeviceNameLength = 64;

// Debian's Abseil has its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW is 0), which
// does not convert from std::string_view; Cat() converts such arguments for absl::StrCat.
absl::string_view Arg(std::string_view s) { return absl::string_view(s.data(), s.size()); }
template <typename T>
requires(!std::is_convertible_v<const T&, std::string_view>) const T& Arg(const T& value) {
  return value;
}
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(Arg(args)...);
}

std::string Hex(uint64_t v) { return Cat("0x", absl::Hex(v)); }

std::string Quote(std::string_view s) { return Cat("\"", absl::CHexEscape(Arg(s)), "\""); }

std::string JoinPath(std::string_view prefix, std::string_view key) {
  if (prefix.empty()) return std::string(key);
  return Cat(prefix, ".", key);
}

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown type";
}

// Collects the errors of one file, located by toml++ source regions.
class Reporter {
 public:
  Reporter(std::string file, const toml::table* root, std::vector<ConfigError>* errors)
      : file_(std::move(file)), root_(root), errors_(errors) {}

  const std::string& file() const { return file_; }

  SourceLocation Where(const toml::source_region& region) const {
    return SourceLocation{file_, static_cast<int>(region.begin.line),
                          static_cast<int>(region.begin.column)};
  }
  SourceLocation Where(const toml::node& node) const { return Where(node.source()); }

  void At(const toml::source_region& region, std::string message) {
    errors_->push_back(ConfigError{Where(region), std::move(message)});
  }
  void At(const toml::node& node, std::string message) { At(node.source(), std::move(message)); }
  void At(const SourceLocation& where, std::string message) {
    errors_->push_back(ConfigError{where, std::move(message)});
  }
  void AtFile(std::string message) {
    errors_->push_back(ConfigError{SourceLocation{file_, 0, 0}, std::move(message)});
  }
  // Problems with a whole table are located at its header, or at the file for the root table.
  void AtTable(const toml::table& table, std::string message) {
    if (&table == root_) {
      AtFile(std::move(message));
    } else {
      At(table, std::move(message));
    }
  }

 private:
  std::string file_;
  const toml::table* root_;
  std::vector<ConfigError>* errors_;
};

// Sorts errors[from..] by position, keeping the order of errors at the same position. toml++
// iterates tables in key order; this puts a file's errors back in reading order.
void SortErrorsFrom(std::vector<ConfigError>* errors, size_t from) {
  std::stable_sort(errors->begin() + static_cast<std::ptrdiff_t>(from), errors->end(),
                   [](const ConfigError& a, const ConfigError& b) {
                     if (a.where.line != b.where.line) return a.where.line < b.where.line;
                     return a.where.column < b.where.column;
                   });
}

template <typename T>
struct Field {
  T value;
  const toml::node* node;
};

std::string JoinNames(std::initializer_list<std::string_view> names) {
  std::string out;
  for (std::string_view name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

// Reports every key of `table` that is not in `allowed`.
void CheckKeys(Reporter& rep, const toml::table& table, std::string_view prefix,
               std::initializer_list<std::string_view> allowed) {
  for (auto&& [key, value] : table) {
    if (std::find(allowed.begin(), allowed.end(), key.str()) != allowed.end()) continue;
    rep.At(key.source(), Cat(JoinPath(prefix, key.str()), ": unknown key (expected one of ",
                             JoinNames(allowed), ")"));
  }
}

const toml::node* Lookup(Reporter& rep, const toml::table& table, std::string_view prefix,
                         std::string_view key, bool required) {
  const toml::node* node = table.get(key);
  if (node == nullptr && required) {
    rep.AtTable(table, Cat(JoinPath(prefix, key), ": missing required key"));
  }
  return node;
}

void WrongType(Reporter& rep, const toml::node& node, std::string_view path,
               std::string_view expected) {
  rep.At(node, Cat(path, ": expected ", expected, ", got ", TypeName(node.type())));
}

std::optional<Field<std::string>> GetString(Reporter& rep, const toml::table& table,
                                            std::string_view prefix, std::string_view key,
                                            bool required) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const auto* str = node->as_string();
  if (str == nullptr) {
    WrongType(rep, *node, JoinPath(prefix, key), "a string");
    return std::nullopt;
  }
  return Field<std::string>{str->get(), node};
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == kMaxI64) return Cat("must be >= ", min);
  return Cat("must be in ", min, "..", max);
}

std::optional<Field<int64_t>> GetInt(Reporter& rep, const toml::table& table,
                                     std::string_view prefix, std::string_view key, bool required,
                                     int64_t min, int64_t max) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const auto* integer = node->as_integer();
  if (integer == nullptr) {
    WrongType(rep, *node, JoinPath(prefix, key), "an integer");
    return std::nullopt;
  }
  const int64_t value = integer->get();
  if (value < min || value > max) {
    rep.At(*node, Cat(JoinPath(prefix, key), ": ", RangeText(min, max), " (got ", value, ")"));
    return std::nullopt;
  }
  return Field<int64_t>{value, node};
}

// A size is an integer number of bytes or a string accepted by ParseSize.
std::optional<Field<uint64_t>> GetSize(Reporter& rep, const toml::table& table,
                                       std::string_view prefix, std::string_view key,
                                       bool required) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const std::string path = JoinPath(prefix, key);
  if (const auto* integer = node->as_integer()) {
    if (integer->get() < 0) {
      rep.At(*node, Cat(path, ": a size must not be negative (got ", integer->get(), ")"));
      return std::nullopt;
    }
    return Field<uint64_t>{static_cast<uint64_t>(integer->get()), node};
  }
  if (const auto* str = node->as_string()) {
    absl::StatusOr<uint64_t> size = ParseSize(str->get());
    if (!size.ok()) {
      rep.At(*node, Cat(path, ": ", size.status().message()));
      return std::nullopt;
    }
    return Field<uint64_t>{*size, node};
  }
  WrongType(rep, *node, path, "a size (an integer or a string such as \"2MiB\")");
  return std::nullopt;
}

const toml::table* GetTable(Reporter& rep, const toml::table& table, std::string_view prefix,
                            std::string_view key) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return nullptr;
  const toml::table* sub = node->as_table();
  if (sub == nullptr) WrongType(rep, *node, JoinPath(prefix, key), "a table");
  return sub;
}

// Returns the tables of the array-of-tables `key` (at least one), with nullptr for elements that
// are not tables (reported). `what` names the array in TOML syntax for the error messages.
std::vector<const toml::table*> GetTableArray(Reporter& rep, const toml::table& table,
                                              std::string_view prefix, std::string_view key,
                                              std::string_view what) {
  std::vector<const toml::table*> tables;
  const std::string path = JoinPath(prefix, key);
  const toml::node* node = table.get(key);
  if (node == nullptr) {
    rep.AtTable(table, Cat(path, ": at least one ", what, " is required"));
    return tables;
  }
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    WrongType(rep, *node, path, Cat("an array of tables (", what, ")"));
    return tables;
  }
  if (array->empty()) {
    rep.At(*node, Cat(path, ": at least one ", what, " is required"));
    return tables;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    const toml::table* sub = element.as_table();
    if (sub == nullptr) WrongType(rep, element, Cat(path, "[", i, "]"), "a table");
    tables.push_back(sub);
  }
  return tables;
}

// Returns why `name` is not a usable LISTEN_FDNAMES name, or nullopt when it is. These are
// systemd's rules for FileDescriptorName=.
std::optional<std::string> FdNameProblem(std::string_view name) {
  if (name.empty()) return "must not be empty";
  if (name.size() > kMaxFdNameLength) {
    return Cat("must be at most ", kMaxFdNameLength, " characters");
  }
  for (char c : name) {
    if (c == ':') return "must not contain ':' (the LISTEN_FDNAMES separator)";
    if (c < 0x20 || c > 0x7e) return "must be printable ASCII";
  }
  // iopfd keeps adopted devices' descriptors in systemd's fd store under these names and takes
  // every one of them back at start (fd_store.h): a configured name there would be taken too.
  for (std::string_view reserved : kReservedFdNamePrefixes) {
    if (name.substr(0, reserved.size()) == reserved) {
      return Cat("must not begin with '", reserved, "' (iopfd's own names in systemd's fd store)");
    }
  }
  return std::nullopt;
}

std::optional<std::string> GetFdName(Reporter& rep, const toml::table& table,
                                     std::string_view prefix, std::string_view key,
                                     const toml::node** node_out, bool required = true) {
  auto field = GetString(rep, table, prefix, key, required);
  if (!field) return std::nullopt;
  if (auto problem = FdNameProblem(field->value)) {
    rep.At(*field->node, Cat(JoinPath(prefix, key), ": file descriptor name ", Quote(field->value),
                             " ", *problem));
    return std::nullopt;
  }
  *node_out = field->node;
  return field->value;
}

bool IsValidDeviceName(std::string_view name) {
  if (name.empty() || name.size() > kMaxDeviceNameLength) return false;
  // "." and ".." match the character set but would make surprising path components.
  if (name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

// Parses a PCI address DDDD:BB:DD.F (the domain may have up to 8 hex digits, as sysfs prints
// domains above 0xffff) into its lowercase sysfs spelling.
std::optional<std::string> NormalizePci(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos || colon < 4 || colon > 8) return std::nullopt;
  const std::string_view rest = text.substr(colon + 1);
  if (rest.size() != 7 || rest[2] != ':' || rest[5] != '.') return std::nullopt;
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool separator = i == colon || i == colon + 3 || i == colon + 6;
    if (separator) {
      out.push_back(c);
      continue;
    }
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
    out.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  // Device numbers are 5 bits, function numbers 3 bits.
  const int device = std::stoi(out.substr(colon + 4, 2), nullptr, 16);
  const char function = out[colon + 7];
  if (device > 0x1f || function < '0' || function > '7') return std::nullopt;
  return out;
}

// ---- Backing checks.

bool IsHugetlbfs(const struct statfs& fs) {
  return static_cast<uint32_t>(fs.f_type) == static_cast<uint32_t>(HUGETLBFS_MAGIC);
}
bool IsTmpfs(const struct statfs& fs) {
  return static_cast<uint32_t>(fs.f_type) == static_cast<uint32_t>(TMPFS_MAGIC);
}

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

// ---- Device files.

struct DeviceParse {
  DeviceConfig device;
  std::optional<SourceLocation> name_where;  // set when the name is valid
};

// Parses a region's backing string into `region`; returns false (reported) when invalid.
bool ParseBacking(Reporter& rep, const Field<std::string>& backing, const std::string& path,
                  RegionConfig* region) {
  const std::string& text = backing.value;
  if (text == "anonymous") {
    region->backing = BackingKind::kAnonymous;
    return true;
  }
  if (absl::StartsWith(text, "file:")) {
    std::string file = text.substr(5);
    if (file.empty() || file[0] != '/') {
      rep.At(*backing.node, Cat(path, ": the file of ", Quote(text), " must be an absolute path"));
      return false;
    }
    region->backing = BackingKind::kFile;
    region->path = std::move(file);
    return true;
  }
  if (absl::StartsWith(text, "fd:")) {
    std::string name = text.substr(3);
    if (auto problem = FdNameProblem(name)) {
      rep.At(*backing.node, Cat(path, ": file descriptor name ", Quote(name), " ", *problem));
      return false;
    }
    region->backing = BackingKind::kInheritedFd;
    region->fd_name = std::move(name);
    return true;
  }
  rep.At(*backing.node,
         Cat(path, ": must be \"anonymous\", \"file:/absolute/path\" or \"fd:NAME\" (got ",
             Quote(text), ")"));
  return false;
}

// Parses and validates one [[space.region]]. Returns true when its IOVA range is valid, so that
// it can take part in the overlap check.
// Longer than 60 lines: a region's keys checked in turn; divided with the config split of
// issue 13.
bool ParseRegion(Reporter& rep, const toml::table& table, const std::string& prefix,
                 const DeviceLimits& limits, bool check_backings, RegionConfig* region) {
  CheckKeys(rep, table, prefix, {"iova", "size", "backing", "offset", "access", "prefetch"});
  region->where = rep.Where(table);
  region->page_size = kBasePageSize;

  const auto iova = GetInt(rep, table, prefix, "iova", /*required=*/true, 0, kMaxI64);
  const auto size = GetSize(rep, table, prefix, "size", /*required=*/true);
  const auto backing = GetString(rep, table, prefix, "backing", /*required=*/true);
  const auto offset = GetSize(rep, table, prefix, "offset", /*required=*/false);
  const auto access = GetString(rep, table, prefix, "access", /*required=*/true);
  const auto prefetch = GetSize(rep, table, prefix, "prefetch", /*required=*/false);

  bool backing_ok = false;
  if (backing) backing_ok = ParseBacking(rep, *backing, JoinPath(prefix, "backing"), region);
  if (access) {
    absl::StatusOr<uint32_t> bits = ParseAccess(access->value);
    if (bits.ok()) {
      region->access = *bits;
    } else {
      rep.At(*access->node, Cat(JoinPath(prefix, "access"), ": ", bits.status().message()));
    }
  }
  if (iova) region->iova = static_cast<uint64_t>(iova->value);
  if (size) region->size = size->value;
  if (offset) region->offset = offset->value;
  if (prefetch) region->prefetch = prefetch->value;

  const bool file_backing = backing_ok && region->backing == BackingKind::kFile;
  if (file_backing && check_backings) region->page_size = PageSizeOf(region->path);
  const uint64_t page = region->page_size;

  bool range_ok = iova.has_value() && size.has_value();
  if (iova && region->iova % page != 0) {
    rep.At(*iova->node, Cat(JoinPath(prefix, "iova"), ": must be aligned to the page size ", page,
                            " (got ", Hex(region->iova), ")"));
  }
  if (size) {
    if (region->size == 0) {
      rep.At(*size->node, Cat(JoinPath(prefix, "size"), ": must be greater than 0"));
      range_ok = false;
    } else if (region->size % page != 0) {
      rep.At(*size->node, Cat(JoinPath(prefix, "size"), ": must be a multiple of the page size ",
                              page, " (got ", region->size, ")"));
    }
    if (iova && region->size > std::numeric_limits<uint64_t>::max() - region->iova) {
      rep.At(*size->node, Cat(JoinPath(prefix, "size"), ": iova ", Hex(region->iova), " + size ",
                              Hex(region->size), " overflows 64 bits"));
      range_ok = false;
    }
  }
  if (offset && backing_ok) {
    if (region->backing == BackingKind::kAnonymous && region->offset != 0) {
      rep.At(*offset->node, Cat(JoinPath(prefix, "offset"),
                                ": must be 0 for an anonymous backing (got ", region->offset, ")"));
    } else if (region->offset % page != 0) {
      rep.At(*offset->node, Cat(JoinPath(prefix, "offset"), ": must be aligned to the page size ",
                                page, " (got ", region->offset, ")"));
    }
  }
  if (prefetch) {
    if (region->prefetch % kBasePageSize != 0) {
      rep.At(*prefetch->node, Cat(JoinPath(prefix, "prefetch"), ": must be a multiple of ",
                                  kBasePageSize, " (got ", region->prefetch, ")"));
    } else if (region->prefetch > limits.max_fault_map_bytes) {
      rep.At(*prefetch->node,
             Cat(JoinPath(prefix, "prefetch"), ": must not exceed limits.max_fault_map_bytes (",
                 limits.max_fault_map_bytes, ") (got ", region->prefetch, ")"));
    }
  }
  // The file is only examined when everything it is checked against parsed.
  const bool offset_ok = offset.has_value() || !table.contains("offset");
  if (file_backing && check_backings && region->access != 0 && range_ok && offset_ok) {
    if (auto problem = FileBackingProblem(*region)) {
      rep.At(*backing->node, Cat(JoinPath(prefix, "backing"), ": ", *problem));
    }
  }
  return range_ok;
}

// A parsed region with its index in the file and whether its IOVA range is valid.
struct ParsedRegion {
  RegionConfig region;
  size_t index = 0;
  bool range_ok = false;
};

// Sorts the regions of a space by IOVA and reports the ones that overlap another.
void SortAndCheckOverlaps(Reporter& rep, const std::string& space_path,
                          std::vector<ParsedRegion>& regions, SpaceConfig* space) {
  std::stable_sort(
      regions.begin(), regions.end(),
      [](const ParsedRegion& a, const ParsedRegion& b) { return a.region.iova < b.region.iova; });
  // Sweep in IOVA order, remembering the region that reaches furthest so far. A region starting
  // below that end overlaps it.
  const ParsedRegion* furthest = nullptr;
  for (const ParsedRegion& parsed : regions) {
    if (!parsed.range_ok) continue;
    const RegionConfig& r = parsed.region;
    if (furthest != nullptr) {
      const RegionConfig& f = furthest->region;
      if (r.iova < f.iova + f.size) {
        rep.At(r.where, Cat(space_path, ".region[", parsed.index, "] [", Hex(r.iova), ", ",
                            Hex(r.iova + r.size), ") overlaps ", space_path, ".region[",
                            furthest->index, "] [", Hex(f.iova), ", ", Hex(f.iova + f.size), ")"));
      }
      if (r.iova + r.size <= f.iova + f.size) continue;
    }
    furthest = &parsed;
  }
  for (ParsedRegion& parsed : regions) space->regions.push_back(std::move(parsed.region));
}

// Parses one [[space]]. `pasid_present` tells a missing pasid from an invalid one.
void ParseSpace(Reporter& rep, const toml::table& table, const std::string& prefix,
                std::optional<AttachMode> mode, const DeviceLimits& limits, bool check_backings,
                SpaceConfig* space, const toml::node** pasid_node, bool* pasid_present) {
  CheckKeys(rep, table, prefix, {"pasid", "ioas_id", "hwpt_id", "region"});
  space->where = rep.Where(table);
  *pasid_present = table.contains("pasid");
  if (auto pasid = GetInt(rep, table, prefix, "pasid", /*required=*/false, 1, kMaxPasid)) {
    space->pasid = static_cast<uint32_t>(pasid->value);
    *pasid_node = pasid->node;
  }
  if (mode == AttachMode::kVfio) {
    if (const toml::node* ioas = table.get("ioas_id")) {
      rep.At(*ioas, Cat(JoinPath(prefix, "ioas_id"),
                        ": not allowed with attach = \"vfio\" (iopfd allocates the IOAS)"));
    }
  } else if (auto ioas =
                 GetInt(rep, table, prefix, "ioas_id", mode == AttachMode::kAdopt, 1, kMaxU32)) {
    space->ioas_id = static_cast<uint32_t>(ioas->value);
  }
  // hwpt_id: whether it is required depends on [adopt] (checked once both are parsed).
  if (mode == AttachMode::kVfio) {
    if (const toml::node* hwpt = table.get("hwpt_id")) {
      rep.At(*hwpt, Cat(JoinPath(prefix, "hwpt_id"),
                        ": not allowed with attach = \"vfio\" (iopfd allocates the HWPTs)"));
    }
  } else if (auto hwpt = GetInt(rep, table, prefix, "hwpt_id", /*required=*/false, 1, kMaxU32)) {
    space->hwpt_id = static_cast<uint32_t>(hwpt->value);
  }

  std::vector<ParsedRegion> regions;
  const std::vector<const toml::table*> tables =
      GetTableArray(rep, table, prefix, "region", "[[space.region]]");
  for (size_t i = 0; i < tables.size(); ++i) {
    if (tables[i] == nullptr) continue;
    ParsedRegion parsed;
    parsed.index = i;
    parsed.range_ok = ParseRegion(rep, *tables[i], Cat(prefix, ".region[", i, "]"), limits,
                                  check_backings, &parsed.region);
    regions.push_back(std::move(parsed));
  }
  SortAndCheckOverlaps(rep, prefix, regions, space);
}

void ParseAdopt(Reporter& rep, const toml::table& table, AdoptConfig* adopt) {
  CheckKeys(rep, table, "adopt",
            {"iommufd_fd", "fault_fd", "device_id", "device_fd", "switch_module", "switch_target"});
  const toml::node* iommufd_node = nullptr;
  const toml::node* fault_node = nullptr;
  if (auto name = GetFdName(rep, table, "adopt", "iommufd_fd", &iommufd_node)) {
    adopt->iommufd_fd = *name;
  }
  if (auto name = GetFdName(rep, table, "adopt", "fault_fd", &fault_node)) {
    adopt->fault_fd = *name;
  }
  if (iommufd_node != nullptr && fault_node != nullptr && adopt->iommufd_fd == adopt->fault_fd) {
    rep.At(*fault_node, Cat("adopt.fault_fd: must differ from adopt.iommufd_fd (both are ",
                            Quote(adopt->fault_fd), ")"));
  }
  if (auto id = GetInt(rep, table, "adopt", "device_id", /*required=*/true, 1, kMaxU32)) {
    adopt->device_id = static_cast<uint32_t>(id->value);
  }
  const toml::node* device_node = nullptr;
  if (auto name = GetFdName(rep, table, "adopt", "device_fd", &device_node, /*required=*/false)) {
    if (*name == adopt->iommufd_fd || *name == adopt->fault_fd) {
      rep.At(*device_node, Cat("adopt.device_fd: must differ from adopt.iommufd_fd and "
                               "adopt.fault_fd (got ",
                               Quote(*name), ")"));
    } else {
      adopt->device_fd = *name;
    }
  }
  const auto module = GetString(rep, table, "adopt", "switch_module", /*required=*/false);
  const auto target = GetString(rep, table, "adopt", "switch_target", /*required=*/false);
  if (module) {
    if (module->value.empty() || module->value[0] != '/') {
      rep.At(*module->node,
             Cat("adopt.switch_module: must be an absolute path (got ", Quote(module->value), ")"));
    } else if (device_node != nullptr) {
      rep.At(*module->node,
             "adopt.switch_module: not with adopt.device_fd (one way to switch attachments)");
    } else {
      adopt->switch_module = module->value;
    }
  }
  if (target) {
    if (!module) {
      rep.At(*target->node, "adopt.switch_target: only with adopt.switch_module");
    } else {
      adopt->switch_target = target->value;
    }
  }
}

void ParseVfio(Reporter& rep, const toml::table& table, VfioConfig* vfio) {
  CheckKeys(rep, table, "vfio", {"cdev", "pci"});
  const auto cdev = GetString(rep, table, "vfio", "cdev", /*required=*/false);
  const auto pci = GetString(rep, table, "vfio", "pci", /*required=*/false);
  const bool has_cdev = table.contains("cdev");
  const bool has_pci = table.contains("pci");
  if (has_cdev && has_pci) {
    rep.AtTable(table, "vfio: set exactly one of cdev and pci, not both");
  } else if (!has_cdev && !has_pci) {
    rep.AtTable(table, "vfio: one of cdev and pci is required");
  }
  if (cdev) {
    if (cdev->value.empty() || cdev->value[0] != '/') {
      rep.At(*cdev->node,
             Cat("vfio.cdev: must be an absolute path (got ", Quote(cdev->value), ")"));
    } else {
      vfio->cdev = cdev->value;
    }
  }
  if (pci) {
    if (auto normalized = NormalizePci(pci->value)) {
      vfio->pci = *normalized;
    } else {
      rep.At(*pci->node, Cat("vfio.pci: ", Quote(pci->value),
                             " is not a PCI address DDDD:BB:DD.F (e.g. \"0000:00:04.0\")"));
    }
  }
}

void ParseLimits(Reporter& rep, const toml::table& table, DeviceLimits* limits) {
  CheckKeys(rep, table, "limits", {"max_group_records", "max_fault_map_bytes"});
  if (auto records =
          GetInt(rep, table, "limits", "max_group_records", /*required=*/false, 1, 65536)) {
    limits->max_group_records = static_cast<uint32_t>(records->value);
  }
  if (auto bytes = GetSize(rep, table, "limits", "max_fault_map_bytes", /*required=*/false)) {
    constexpr uint64_t kMin = 4096;
    constexpr uint64_t kMax = uint64_t{1} << 30;
    if (bytes->value < kMin || bytes->value > kMax) {
      rep.At(*bytes->node, Cat("limits.max_fault_map_bytes: must be in ", kMin, "..", kMax,
                               " bytes (got ", bytes->value, ")"));
    } else {
      limits->max_fault_map_bytes = bytes->value;
    }
  }
}

void ParseDrain(Reporter& rep, const toml::table& table, std::optional<AttachMode> mode,
                const AdoptConfig& adopt, DrainConfig* drain) {
  CheckKeys(rep, table, "drain", {"halt", "halt_timeout_ms"});
  if (auto halt = GetString(rep, table, "drain", "halt", /*required=*/false)) {
    const std::optional<HaltMethod> method = ValueNamed(kHaltMethodNames, halt->value);
    if (method == HaltMethod::kOwner) {
      drain->halt = HaltMethod::kOwner;
    } else if (method.has_value()) {
      // Both act on the VFIO device fd (VFIO_DEVICE_RESET; the config region): vfio mode, or
      // adopt.device_fd. A switch module may reset too (checked when it is loaded).
      const bool reset = method == HaltMethod::kReset;
      if (mode == AttachMode::kAdopt && adopt.device_fd.empty() &&
          !(reset && !adopt.switch_module.empty())) {
        rep.At(*halt->node,
               Cat("drain.halt: \"", halt->value,
                   "\" needs the VFIO device fd (attach = \"vfio\", or adopt.device_fd",
                   reset ? ", or a switch module that resets" : "",
                   "); otherwise the owner stops the device (\"owner\")"));
      } else {
        drain->halt = *method;
      }
    } else {
      rep.At(*halt->node, Cat("drain.halt: must be ", NamesForMessage(kHaltMethodNames), " (got ",
                              Quote(halt->value), ")"));
    }
  }
  if (auto ms = GetInt(rep, table, "drain", "halt_timeout_ms", /*required=*/false, 1, 600000)) {
    drain->halt_timeout_ms = static_cast<uint32_t>(ms->value);
  }
}

// Longer than 60 lines: one check after another of a device file's top level, in the order
// the file documents them; the config split of issue 13 (reader, device file, backings) divides
// it.
void ParseDeviceTable(Reporter& rep, const toml::table& root, bool check_backings,
                      DeviceParse* out) {
  DeviceConfig& device = out->device;
  CheckKeys(rep, root, "",
            {"name", "attach", "sysfs", "adopt", "vfio", "limits", "drain", "space"});

  if (auto name = GetString(rep, root, "", "name", /*required=*/true)) {
    if (IsValidDeviceName(name->value)) {
      device.name = name->value;
      out->name_where = rep.Where(*name->node);
    } else {
      rep.At(*name->node, Cat("name: ", Quote(name->value),
                              " is not a valid device name (1 to 64 of A-Z a-z 0-9 _ . -)"));
    }
  }

  // Where the device is in sysfs, to follow its uevents (removal, PCI error recovery).
  if (auto sysfs = GetString(rep, root, "", "sysfs", /*required=*/false)) {
    if (sysfs->value.rfind("/sys/", 0) != 0 || sysfs->value.size() <= 5) {
      rep.At(*sysfs->node, Cat("sysfs: must be a path below /sys (got ", Quote(sysfs->value), ")"));
    } else {
      device.sysfs = sysfs->value;
    }
  }

  std::optional<AttachMode> mode;
  const auto attach = GetString(rep, root, "", "attach", /*required=*/true);
  if (attach) {
    mode = ValueNamed(kAttachModeNames, attach->value);
    if (!mode.has_value()) {
      rep.At(*attach->node, Cat("attach: must be ", NamesForMessage(kAttachModeNames), " (got ",
                                Quote(attach->value), ")"));
    }
  }
  if (mode) device.mode = *mode;

  const toml::table* adopt = GetTable(rep, root, "", "adopt");
  const toml::table* vfio = GetTable(rep, root, "", "vfio");
  if (mode == AttachMode::kAdopt) {
    if (!root.contains("adopt")) {
      rep.At(*attach->node, "adopt: table [adopt] is required when attach = \"adopt\"");
    }
    if (root.contains("vfio")) {
      rep.At(*root.get("vfio"), "vfio: not allowed when attach = \"adopt\"");
      vfio = nullptr;
    }
  } else if (mode == AttachMode::kVfio) {
    if (!root.contains("vfio")) {
      rep.At(*attach->node, "vfio: table [vfio] is required when attach = \"vfio\"");
    }
    if (root.contains("adopt")) {
      rep.At(*root.get("adopt"), "adopt: not allowed when attach = \"vfio\"");
      adopt = nullptr;
    }
  }
  if (adopt != nullptr) ParseAdopt(rep, *adopt, &device.adopt);
  if (vfio != nullptr) ParseVfio(rep, *vfio, &device.vfio);

  // Limits first: region prefetch is checked against them.
  if (const toml::table* limits = GetTable(rep, root, "", "limits")) {
    ParseLimits(rep, *limits, &device.limits);
  }
  if (const toml::table* drain = GetTable(rep, root, "", "drain")) {
    ParseDrain(rep, *drain, mode, device.adopt, &device.drain);
  }

  const std::vector<const toml::table*> tables = GetTableArray(rep, root, "", "space", "[[space]]");
  std::vector<std::pair<size_t, uint32_t>> pasids;  // (space index, pasid)
  std::optional<size_t> no_pasid;                   // index of the space without pasid
  for (size_t i = 0; i < tables.size(); ++i) {
    if (tables[i] == nullptr) continue;
    const std::string prefix = Cat("space[", i, "]");
    SpaceConfig space;
    const toml::node* pasid_node = nullptr;
    bool pasid_present = false;
    ParseSpace(rep, *tables[i], prefix, mode, device.limits, check_backings, &space, &pasid_node,
               &pasid_present);
    if (space.pasid) {
      auto same = std::find_if(pasids.begin(), pasids.end(),
                               [&](const auto& p) { return p.second == *space.pasid; });
      if (same != pasids.end()) {
        rep.At(*pasid_node, Cat(prefix, ".pasid: PASID ", *space.pasid,
                                " is already used by space[", same->first, "]"));
      } else {
        pasids.emplace_back(i, *space.pasid);
      }
    } else if (!pasid_present) {
      if (no_pasid) {
        rep.At(*tables[i], Cat(prefix, ": a second space without pasid (space[", *no_pasid,
                               "] is the no-PASID space)"));
      } else {
        no_pasid = i;
      }
    }
    device.spaces.push_back(std::move(space));
  }

  // Parking puts the owner's IOPF-capable HWPT back afterwards: iopfd must know it.
  if (device.mode == AttachMode::kAdopt) {
    for (size_t i = 0; i < device.spaces.size(); ++i) {
      const SpaceConfig& space = device.spaces[i];
      if (device.adopt.can_switch() && space.hwpt_id == 0) {
        rep.At(space.where, Cat("space[", i, "].hwpt_id: required with adopt.",
                                device.adopt.device_fd.empty() ? "switch_module" : "device_fd",
                                " (the IOPF-capable HWPT the owner attached, which a drain "
                                "puts back)"));
      } else if (!device.adopt.can_switch() && space.hwpt_id != 0) {
        rep.At(space.where, Cat("space[", i,
                                "].hwpt_id: only with adopt.device_fd or adopt.switch_module "
                                "(iopfd cannot switch attachments without one)"));
      }
    }
  }

  // A region's inherited fd must be memory: naming the device's own iommufd or fault queue there
  // would hand that file to the map call.
  if (device.mode == AttachMode::kAdopt) {
    for (const SpaceConfig& space : device.spaces) {
      for (const RegionConfig& r : space.regions) {
        if (r.backing != BackingKind::kInheritedFd) continue;
        const char* clash = r.fd_name == device.adopt.iommufd_fd ? "adopt.iommufd_fd"
                            : r.fd_name == device.adopt.fault_fd ? "adopt.fault_fd"
                            : !device.adopt.device_fd.empty() && r.fd_name == device.adopt.device_fd
                                ? "adopt.device_fd"
                                : nullptr;
        if (clash != nullptr) {
          rep.At(r.where,
                 Cat("region backing: fd ", Quote(r.fd_name), " is ", clash, ", not memory"));
        }
      }
    }
  }
}

// Parses TOML text; reports a syntax error and returns nullopt on failure.
std::optional<toml::table> ParseToml(std::string_view text, const std::string& file,
                                     std::vector<ConfigError>* errors) {
  // toml++ must never see text it may crash on (toml_guard.h).
  if (std::optional<TomlTextProblem> p = CheckTomlText(text)) {
    errors->push_back(
        ConfigError{SourceLocation{file, p->line, p->column}, Cat("invalid TOML: ", p->message)});
    return std::nullopt;
  }
  try {
    return toml::parse(text, std::string_view(file));
  } catch (const toml::parse_error& e) {
    errors->push_back(ConfigError{SourceLocation{file, static_cast<int>(e.source().begin.line),
                                                 static_cast<int>(e.source().begin.column)},
                                  Cat("invalid TOML: ", e.description())});
    return std::nullopt;
  }
}

// Returns nullopt after a TOML syntax error (nothing could be parsed).
std::optional<DeviceParse> ParseDevice(std::string_view text, const std::string& file,
                                       bool check_backings, std::vector<ConfigError>* errors) {
  const size_t first_error = errors->size();
  std::optional<toml::table> root = ParseToml(text, file, errors);
  if (!root) return std::nullopt;
  DeviceParse parse;
  parse.device.file = file;
  Reporter rep(file, &*root, errors);
  ParseDeviceTable(rep, *root, check_backings, &parse);
  SortErrorsFrom(errors, first_error);
  return parse;
}

// ---- The global file.

// Resolves a group name to its gid; reports an unknown group at the key.
std::optional<uint32_t> ResolveGroup(Reporter& rep, const Field<std::string>& field,
                                     std::string_view key) {
  std::vector<char> buf(16384);
  struct group grp {};
  struct group* found = nullptr;
  int rc = ::getgrnam_r(field.value.c_str(), &grp, buf.data(), buf.size(), &found);
  if (rc != 0 || found == nullptr) {
    rep.At(*field.node, Cat(key, ": no such group ", Quote(field.value),
                            rc != 0 ? Cat(" (", ErrnoName(rc), ")") : std::string()));
    return std::nullopt;
  }
  return static_cast<uint32_t>(found->gr_gid);
}

void ParseControl(Reporter& rep, const toml::table& table, ControlConfig* control) {
  const std::string_view p = "control";
  CheckKeys(rep, table, p,
            {"socket", "group", "admin_group", "max_connections", "max_connections_per_uid",
             "max_message_bytes", "message_timeout_ms", "idle_timeout_ms"});
  if (auto socket = GetString(rep, table, p, "socket", /*required=*/false)) {
    // sun_path holds 108 bytes including the NUL.
    if (socket->value.empty() || socket->value[0] != '/' || socket->value.size() > 107) {
      rep.At(*socket->node, Cat("control.socket: must be an absolute path of at most 107 bytes "
                                "(got ",
                                Quote(socket->value), ")"));
    } else {
      control->socket = socket->value;
    }
  }
  if (auto group = GetString(rep, table, p, "group", /*required=*/false)) {
    control->group = group->value;
    control->group_gid = ResolveGroup(rep, *group, "control.group");
  }
  if (auto group = GetString(rep, table, p, "admin_group", /*required=*/false)) {
    control->admin_group = group->value;
    control->admin_group_gid = ResolveGroup(rep, *group, "control.admin_group");
  }
  if (auto n = GetInt(rep, table, p, "max_connections", /*required=*/false, 1, 4096)) {
    control->max_connections = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "max_connections_per_uid", /*required=*/false, 1, 4096)) {
    control->max_connections_per_uid = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "max_message_bytes", /*required=*/false, 1024, 64 << 20)) {
    control->max_message_bytes = static_cast<uint64_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "message_timeout_ms", /*required=*/false, 100, 600000)) {
    control->message_timeout_ms = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "idle_timeout_ms", /*required=*/false, 1000, 86400000)) {
    control->idle_timeout_ms = static_cast<uint32_t>(n->value);
  }
}

void ParseGlobal(std::string_view text, const std::string& file, GlobalConfig* global,
                 std::vector<ConfigError>* errors) {
  const size_t first_error = errors->size();
  std::optional<toml::table> root = ParseToml(text, file, errors);
  if (!root) return;
  Reporter rep(file, &*root, errors);
  CheckKeys(rep, *root, "", {"daemon", "control"});
  if (const toml::table* control = GetTable(rep, *root, "", "control")) {
    ParseControl(rep, *control, &global->control);
  }
  const toml::table* daemon = GetTable(rep, *root, "", "daemon");
  if (daemon != nullptr) {
    const std::string_view p = "daemon";
    CheckKeys(rep, *daemon, p,
              {"log_level", "devices_dir", "ring_entries", "read_records", "max_read_records"});
    if (auto level = GetString(rep, *daemon, p, "log_level", /*required=*/false)) {
      if (auto l = ValueNamed(kLogLevelNames, level->value)) {
        global->log_level = *l;
      } else {
        rep.At(*level->node, Cat("daemon.log_level: must be ", NamesForMessage(kLogLevelNames),
                                 " (got ", Quote(level->value), ")"));
      }
    }
    if (auto dir = GetString(rep, *daemon, p, "devices_dir", /*required=*/false)) {
      if (dir->value.empty() || dir->value[0] != '/') {
        rep.At(*dir->node,
               Cat("daemon.devices_dir: must be an absolute path (got ", Quote(dir->value), ")"));
      } else {
        global->devices_dir = dir->value;
      }
    }
    if (auto ring = GetInt(rep, *daemon, p, "ring_entries", /*required=*/false, 8, 32768)) {
      if ((ring->value & (ring->value - 1)) != 0) {
        rep.At(*ring->node,
               Cat("daemon.ring_entries: must be a power of two (got ", ring->value, ")"));
      } else {
        global->ring_entries = static_cast<uint32_t>(ring->value);
      }
    }
    constexpr int64_t kMaxRecords = 1 << 20;
    const auto max_records =
        GetInt(rep, *daemon, p, "max_read_records", /*required=*/false, 1, kMaxRecords);
    if (max_records) global->max_read_records = static_cast<uint32_t>(max_records->value);
    const auto records =
        GetInt(rep, *daemon, p, "read_records", /*required=*/false, 1, kMaxRecords);
    if (records) global->read_records = static_cast<uint32_t>(records->value);
    if (global->read_records > global->max_read_records) {
      // Blame read_records when it was given, else the max that undercuts its default.
      const toml::node* node = records ? records->node : max_records->node;
      rep.At(*node,
             Cat("daemon.read_records (", global->read_records,
                 ") must not exceed daemon.max_read_records (", global->max_read_records, ")"));
    }
  }
  SortErrorsFrom(errors, first_error);
}

// ---- Files and directories.

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
  return result;
}

bool SameDeviceSettings(const DeviceConfig& a, const DeviceConfig& b) { return a == b; }

}  // namespace iopfd
