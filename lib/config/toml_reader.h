// The configuration reader's shared parts: errors located in their file (Reporter), typed
// lookups of TOML keys that report what is wrong and where, and the name checks every file
// uses. Internal to lib/config (config.cc, global_file.cc, device_file.cc, backing.cc).
#ifndef IOPFD_LIB_CONFIG_TOML_READER_H_
#define IOPFD_LIB_CONFIG_TOML_READER_H_

#include <toml++/toml.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "iopfd/config/config.h"

namespace iopfd::config_internal {

// The page size of every backing except a hugetlbfs file.
inline constexpr uint64_t kBasePageSize = 4096;

// PCIe PASIDs are 20 bits wide; 0 is the kernel's "no PASID".
inline constexpr int64_t kMaxPasid = (int64_t{1} << 20) - 1;

inline constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();

inline constexpr int64_t kMaxI64 = std::numeric_limits<int64_t>::max();

// Configuration files larger than this are refused rather than read.
inline constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;

// systemd's limit on a LISTEN_FDNAMES name (FileDescriptorName=).
inline constexpr size_t kMaxFdNameLength = 255;

// Keep in step with FdStore's names (include/iopfd/service/fd_store.h).
inline constexpr std::string_view kReservedFdNamePrefixes[] = {"iopfd-adopted/", "iopfd-ledger/",
                                                               "iopfd-maps/"};

inline constexpr size_t kMaxDeviceNameLength = 64;

// Debian's Abseil has its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW is 0), which
// does not convert from std::string_view; Cat() converts such arguments for absl::StrCat.
inline absl::string_view Arg(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <typename T>
requires(!std::is_convertible_v<const T&, std::string_view>) const T& Arg(const T& value) {
  return value;
}

template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(Arg(args)...);
}

std::string Hex(uint64_t v);

std::string Quote(std::string_view s);

std::string JoinPath(std::string_view prefix, std::string_view key);

std::string_view TypeName(toml::node_type type);

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
void SortErrorsFrom(std::vector<ConfigError>* errors, size_t from);

template <typename T>
struct Field {
  T value;
  const toml::node* node;
};

std::string JoinNames(std::initializer_list<std::string_view> names);

// Reports every key of `table` that is not in `allowed`.
void CheckKeys(Reporter& rep, const toml::table& table, std::string_view prefix,
               std::initializer_list<std::string_view> allowed);

const toml::node* Lookup(Reporter& rep, const toml::table& table, std::string_view prefix,
                         std::string_view key, bool required);

void WrongType(Reporter& rep, const toml::node& node, std::string_view path,
               std::string_view expected);

std::optional<Field<std::string>> GetString(Reporter& rep, const toml::table& table,
                                            std::string_view prefix, std::string_view key,
                                            bool required);

// Returns the boolean at `key`, nullopt when absent (an error when required) or not a boolean
// (an error naming the key and the type found).
std::optional<Field<bool>> GetBool(Reporter& rep, const toml::table& table, std::string_view prefix,
                                   std::string_view key, bool required);

std::string RangeText(int64_t min, int64_t max);

std::optional<Field<int64_t>> GetInt(Reporter& rep, const toml::table& table,
                                     std::string_view prefix, std::string_view key, bool required,
                                     int64_t min, int64_t max);

// A size is an integer number of bytes or a string accepted by ParseSize.
std::optional<Field<uint64_t>> GetSize(Reporter& rep, const toml::table& table,
                                       std::string_view prefix, std::string_view key,
                                       bool required);

const toml::table* GetTable(Reporter& rep, const toml::table& table, std::string_view prefix,
                            std::string_view key);

// Returns the tables of the array-of-tables `key` (at least one), with nullptr for elements that
// are not tables (reported). `what` names the array in TOML syntax for the error messages.
std::vector<const toml::table*> GetTableArray(Reporter& rep, const toml::table& table,
                                              std::string_view prefix, std::string_view key,
                                              std::string_view what);

// Returns why `name` is not a usable LISTEN_FDNAMES name, or nullopt when it is. These are
// systemd's rules for FileDescriptorName=.
std::optional<std::string> FdNameProblem(std::string_view name);

std::optional<std::string> GetFdName(Reporter& rep, const toml::table& table,
                                     std::string_view prefix, std::string_view key,
                                     const toml::node** node_out, bool required = true);

bool IsValidDeviceName(std::string_view name);

// Parses a PCI address DDDD:BB:DD.F (the domain may have up to 8 hex digits, as sysfs prints
// domains above 0xffff) into its lowercase sysfs spelling.
std::optional<std::string> NormalizePci(std::string_view text);

// Parses TOML text (guarded against toml++'s known crashes: toml_guard.h), reporting a syntax
// error at its position. Returns the table, or nullopt.
std::optional<toml::table> ParseToml(std::string_view text, const std::string& file,
                                     std::vector<ConfigError>* errors);

// Device files (device_file.cc): one file's device, and where its name is (when valid), for
// the duplicate-name errors across files.
struct DeviceParse {
  DeviceConfig device;
  std::optional<SourceLocation> name_where;  // set when the name is valid
};
std::optional<DeviceParse> ParseDevice(std::string_view text, const std::string& file,
                                       bool check_backings, std::vector<ConfigError>* errors);

// The global file (global_file.cc).
void ParseGlobal(std::string_view text, const std::string& file, GlobalConfig* global,
                 std::vector<ConfigError>* errors);

// Backings (backing.cc): why a file: backing cannot be used, or nullopt; and the page size
// its mappings are made in (the huge page size on hugetlbfs, else 4 KiB, also when the file
// cannot be examined: FileBackingProblem reports that).
std::optional<std::string> FileBackingProblem(const RegionConfig& region);
uint64_t PageSizeOf(const std::string& path);

}  // namespace iopfd::config_internal

#endif  // IOPFD_LIB_CONFIG_TOML_READER_H_
