// iopfd's configuration model and its TOML loader.
//
// A global file (default /etc/iopfd/iopfd.toml) and one file per device in a directory
// (default /etc/iopfd/devices.d/, files ending in .toml, read in name order). The schema, with
// every key, type and default, is documented in docs/CONFIG.md and config/ examples.
#ifndef IOPFD_CONFIG_CONFIG_H_
#define IOPFD_CONFIG_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace iopfd {

// Where a value came from, for error messages ("file:line:col: message").
struct SourceLocation {
  std::string file;
  int line = 0;
  int column = 0;
};

// A value a setting carries along but that is not part of it: where the setting was read from.
// Equal to any other, so that the defaulted operator== of the settings below compares settings
// only: a reload keeps a device whose settings are unchanged, whichever file or line they now
// come from. Otherwise it is the value it wraps (its members, its conversions; compared with a
// T it compares as a T).
template <typename T>
struct NotASetting : T {
  NotASetting() = default;
  explicit NotASetting(T value) : T(std::move(value)) {}
  NotASetting& operator=(T value) {
    T::operator=(std::move(value));
    return *this;
  }
  friend bool operator==(const NotASetting&, const NotASetting&) { return true; }
};

// One problem found while loading or validating configuration.
struct ConfigError {
  SourceLocation where;
  std::string message;
  // Returns "file:line:col: message" (or "file: message" when line is 0).
  std::string ToString() const;
};

// The name of one value of an enum, as configuration files and every output spell it. Each enum
// has one table of them, which parsing and printing both use.
template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

// Returns the name of `value` in `table` ("" when the table lacks it, which a test rules out).
template <typename E, size_t N>
constexpr std::string_view NameOf(const EnumName<E> (&table)[N], E value) {
  for (const EnumName<E>& e : table) {
    if (e.value == value) return e.name;
  }
  return "";
}

// Returns the value `table` names `name`, or nullopt when it names none.
template <typename E, size_t N>
constexpr std::optional<E> ValueNamed(const EnumName<E> (&table)[N], std::string_view name) {
  for (const EnumName<E>& e : table) {
    if (e.name == name) return e.value;
  }
  return std::nullopt;
}

// Returns the names for an error message: "\"a\", \"b\" or \"c\"".
template <typename E, size_t N>
std::string NamesForMessage(const EnumName<E> (&table)[N]) {
  std::string out;
  for (size_t i = 0; i < N; ++i) {
    if (i > 0) out += i + 1 == N ? " or " : ", ";
    out.append("\"").append(table[i].name).append("\"");
  }
  return out;
}

enum class AttachMode { kAdopt, kVfio };
inline constexpr EnumName<AttachMode> kAttachModeNames[] = {{AttachMode::kAdopt, "adopt"},
                                                            {AttachMode::kVfio, "vfio"}};

enum class BackingKind {
  kFile,         // a shared file: /dev/shm/..., /dev/hugepages/..., any shmem or hugetlbfs file
  kAnonymous,    // daemon-owned, zero-filled memory (a memfd iopfd creates)
  kInheritedFd,  // a memfd or shmem fd handed over by LISTEN_FDS, named by LISTEN_FDNAMES
};

// One IOVA range of an address space and the memory behind it.
struct RegionConfig {
  uint64_t iova = 0;  // first IOVA; aligned to the region's page size
  uint64_t size = 0;  // bytes; a multiple of the page size, > 0
  BackingKind backing = BackingKind::kAnonymous;
  std::string path;       // kFile: the backing file
  std::string fd_name;    // kInheritedFd: the LISTEN_FDNAMES name of the fd
  uint64_t offset = 0;    // byte offset into the backing; aligned to the page size
  uint32_t access = 0;    // uapi::PgfaultPerm bits a request may ask for (READ|WRITE|EXEC|PRIV)
  uint64_t prefetch = 0;  // bytes mapped ahead of a faulting page (0 = only what is asked)
  // What one map call maps and one eviction unmaps (docs/PAGING.md): a power of two, a multiple
  // of the page size; 0 = the default (DefaultMapUnit: 64 KiB, or the huge page size).
  uint64_t map_unit = 0;
  // A unit first touched by one page request alone maps only that page, a later stray page of
  // it too, and a page beside one it holds maps the rest ("page", the default); or every first
  // touch maps the whole unit ("unit").
  bool first_touch_page = true;
  // The page size mappings are made in: 4 KiB, or the huge page size of a hugetlbfs backing.
  // Filled in by validation (it stats the backing); 0 until then.
  uint64_t page_size = 0;
  NotASetting<SourceLocation> where;
  bool operator==(const RegionConfig&) const = default;
};

// The IO virtual address space of one PASID (or of requests without a PASID).
struct SpaceConfig {
  std::optional<uint32_t> pasid;  // nullopt: the no-PASID space
  uint32_t ioas_id = 0;           // adopt mode: the IOAS the owner allocated; vfio mode: unused
  // Adopt mode with a way to switch attachments (adopt.device_fd or adopt.switch_module): the
  // IOPF-capable HWPT the owner attached for this space, which a drain parks and puts back.
  // 0 otherwise.
  uint32_t hwpt_id = 0;
  // Read the IOMMU's dirty bits as the pager's second-chance signal (a unit the device wrote
  // since it was last looked at is not evicted yet; docs/PAGING.md). Adopt mode: on hwpt_id,
  // when true (default false); the owner must have allocated that HWPT with
  // IOMMU_HWPT_ALLOC_DIRTY_TRACKING and must not use its dirty bits itself (reading them clears
  // them: a VMM migrating the guest would miss pages). Vfio mode: on iopfd's own HWPT, allocated
  // with dirty tracking where the IOMMU has it, unless false (default true).
  std::optional<bool> dirty_tracking;
  // Whether dirty bits are wanted for this space in `mode` (the defaults above).
  bool WantsDirtyBits(AttachMode mode) const {
    return dirty_tracking.value_or(mode == AttachMode::kVfio);
  }
  std::vector<RegionConfig> regions;  // sorted by iova, non-overlapping after validation
  // Bytes iopfd may hold mapped in this space (pager.h); nullopt: unbounded.
  std::optional<uint64_t> max_resident;
  NotASetting<SourceLocation> where;
  bool operator==(const SpaceConfig&) const = default;
};

struct AdoptConfig {
  std::string iommufd_fd;  // LISTEN_FDNAMES name of the inherited iommufd
  std::string fault_fd;    // LISTEN_FDNAMES name of the inherited fault queue fd
  uint32_t device_id = 0;  // the iommufd device object id the fault records carry
  // Optional ways for iopfd to switch the device's attachments (drains), at most one:
  // the VFIO device cdev fd the owner bound to the iommufd (LISTEN_FDNAMES name; also allows
  // halt = "reset"), or a switch module (a shared object implementing
  // iopfd/switch_module.h) and the target string it is given.
  std::string device_fd;
  std::string switch_module;
  std::string switch_target;
  // Returns true when iopfd can park the device's attachments.
  bool can_switch() const { return !device_fd.empty() || !switch_module.empty(); }
  bool operator==(const AdoptConfig&) const = default;
};

struct VfioConfig {
  std::string cdev;  // /dev/vfio/devices/vfioN, or empty when pci is given
  std::string pci;   // PCI address DDDD:BB:DD.F, resolved through sysfs to the cdev
  bool operator==(const VfioConfig&) const = default;
};

struct DeviceLimits {
  // Groups with more records than this are answered INVALID without resolving them.
  uint32_t max_group_records = 512;
  // Upper bound on what one fault may map through prefetch and the length hint.
  uint64_t max_fault_map_bytes = 2ull << 20;
  // Bytes iopfd may hold mapped for the device, all its spaces together; nullopt: unbounded.
  std::optional<uint64_t> max_resident;
  bool operator==(const DeviceLimits&) const = default;
};

// How a drain stops the device's DMA before its page requests are halted ([drain]).
enum class HaltMethod : uint8_t {
  kOwner,      // the device's owner stops its DMA and confirms with Halt over the control socket
  kReset,      // the function level reset (VFIO_DEVICE_RESET) after the park is the DMA stop
  kBusMaster,  // iopfd clears Bus Master Enable (the config region) and sets it at resume
};
inline constexpr EnumName<HaltMethod> kHaltMethodNames[] = {{HaltMethod::kOwner, "owner"},
                                                            {HaltMethod::kReset, "reset"},
                                                            {HaltMethod::kBusMaster, "bus-master"}};

struct DrainConfig {
  HaltMethod halt = HaltMethod::kOwner;
  // owner: how long a drain waits for the owner's Halt before it quarantines the device.
  uint32_t halt_timeout_ms = 10000;
  bool operator==(const DrainConfig&) const = default;
};

// Two device configurations are equal when every setting is (not where they were read from):
// Reload restarts a device exactly when its configuration is not equal to the one it runs with.
struct DeviceConfig {
  std::string name;               // unique across devices; [A-Za-z0-9_.-]{1,64}
  NotASetting<std::string> file;  // the file it was read from
  AttachMode mode = AttachMode::kAdopt;
  // The device in sysfs ("/sys/devices/..."), whose uevents iopfd follows; empty: derived from
  // the VFIO device in vfio mode, none in adopt mode.
  std::string sysfs;
  AdoptConfig adopt;
  VfioConfig vfio;
  std::vector<SpaceConfig> spaces;  // at most one per PASID and one without
  DeviceLimits limits;
  DrainConfig drain;
  bool operator==(const DeviceConfig&) const = default;
};

enum class LogLevel { kError, kWarning, kInfo, kDebug };
inline constexpr EnumName<LogLevel> kLogLevelNames[] = {{LogLevel::kError, "error"},
                                                        {LogLevel::kWarning, "warning"},
                                                        {LogLevel::kInfo, "info"},
                                                        {LogLevel::kDebug, "debug"}};

// The control socket ([control] in the global file).
struct ControlConfig {
  std::string socket = "/run/iopfd/io.iopfd";
  // Group that owns the socket and may call read-only methods; nullopt: root only.
  std::optional<std::string> group;
  std::optional<uint32_t> group_gid;  // resolved from group at load
  // Group that may also call the methods that change state; nullopt: root only.
  std::optional<std::string> admin_group;
  std::optional<uint32_t> admin_group_gid;
  uint32_t max_connections = 64;
  uint32_t max_connections_per_uid = 16;
  uint64_t max_message_bytes = 1 << 20;  // a larger message closes the connection
  // A message begun and not finished, or replies not read, for this long closes the connection.
  uint32_t message_timeout_ms = 10000;
  // A connection with no call in progress, nothing to send and no Monitor stream, that sends
  // no call for this long, is closed.
  uint32_t idle_timeout_ms = 300000;
};

// Which map units eviction takes first (pager.h).
enum class EvictionPolicy : uint8_t {
  kWorkingset,  // probation first in, first out; units that come back soon are protected
  kFifo,        // the unit mapped longest ago
};
inline constexpr EnumName<EvictionPolicy> kEvictionPolicyNames[] = {
    {EvictionPolicy::kWorkingset, "workingset"}, {EvictionPolicy::kFifo, "fifo"}};

// [paging] of the global file, and [daemon] max_resident.
struct PagingConfig {
  std::optional<uint64_t> max_resident;  // all devices together; nullopt: unbounded
  SourceLocation max_resident_where;     // where it was set (checked against map units)
  EvictionPolicy policy = EvictionPolicy::kWorkingset;
  // Thrashing: a unit faulted again within thrash_window_us of its eviction, thrash_events times
  // in a row, is not evicted for thrash_protect_ms.
  uint32_t thrash_window_us = 500;
  uint32_t thrash_events = 3;
  uint32_t thrash_protect_ms = 150;
};

struct GlobalConfig {
  LogLevel log_level = LogLevel::kInfo;
  std::string devices_dir = "/etc/iopfd/devices.d";
  uint32_t ring_entries = 256;        // io_uring submission queue size, power of two 8..32768
  uint32_t read_records = 256;        // records per fault fd read buffer at start
  uint32_t max_read_records = 65536;  // the buffer grows (doubling) up to this on EINVAL
  PagingConfig paging;
  ControlConfig control;
};

struct Config {
  GlobalConfig global;
  std::vector<DeviceConfig> devices;
};

struct LoadOptions {
  std::string global_path = "/etc/iopfd/iopfd.toml";
  // Overrides global.devices_dir when set (--devices-dir).
  std::optional<std::string> devices_dir;
  // When true, a missing global file is not an error (defaults apply).
  bool global_optional = true;
  // When true, check that file backings exist, are readable/writable as their access needs, are
  // shmem or hugetlbfs files, and are large enough for offset + size.
  bool check_backings = true;
};

struct LoadResult {
  Config config;
  std::vector<ConfigError> errors;  // empty when the configuration is valid
  bool ok() const { return errors.empty(); }
};

// Loads and validates the global file and every device file. Never throws; every problem is
// reported as a ConfigError naming file, line and column (unknown keys, wrong types, bad
// sizes, misaligned or out-of-range values, overlapping regions, duplicate device names or
// PASIDs, unreadable backings). On errors, config holds what could be parsed.
LoadResult LoadConfig(const LoadOptions& options);

// Parses one device file's text (for tests and Reload); `file` names it in errors.
LoadResult ParseDeviceText(std::string_view text, const std::string& file, bool check_backings);

// Returns true when a and b configure the same device the same way, whatever file, line and
// column they were written at (a reload restarts a device only when this is false).
bool SameDeviceSettings(const DeviceConfig& a, const DeviceConfig& b);
// Returns true when a and b differ at most in their budgets (limits.max_resident and the
// spaces' max_resident), which a running device takes without a restart (Device::SetBudget).
bool SameDeviceSettingsBesidesBudgets(const DeviceConfig& a, const DeviceConfig& b);

// Parses a size: a plain integer (bytes) or an integer with a unit suffix B, KiB, MiB, GiB, TiB
// (also K, M, G, T meaning the same binary multiples). Returns InvalidArgument naming the
// problem for anything else, including overflow of 64 bits.
absl::StatusOr<uint64_t> ParseSize(std::string_view text);

// Parses an access string made of the letters r, w, x, p (read, write, exec, privileged) into
// uapi::PgfaultPerm bits. Returns InvalidArgument for an empty string, a repeated or unknown
// letter.
absl::StatusOr<uint32_t> ParseAccess(std::string_view text);

// Returns "error", "warning", "info" or "debug".
constexpr std::string_view LogLevelName(LogLevel level) { return NameOf(kLogLevelNames, level); }

}  // namespace iopfd

#endif  // IOPFD_CONFIG_CONFIG_H_
