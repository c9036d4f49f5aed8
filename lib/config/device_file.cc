// Device files: one device per file in devices.d (docs/CONFIG.md).

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

// The effective map unit of a parsed region (its map_unit, or the default for its page size).
uint64_t MapUnitOf(const RegionConfig& region) {
  return region.map_unit != 0 ? region.map_unit
                              : std::max<uint64_t>(region.page_size, uint64_t{64} << 10);
}

// A region's map_unit: a power of two, a multiple of its page size, and no more than one fault
// may map (limits.max_fault_map_bytes, or one page when a page is larger).
void ParseMapUnit(Reporter& rep, const toml::table& table, const std::string& prefix,
                  const DeviceLimits& limits, RegionConfig* region) {
  if (const auto touch = GetString(rep, table, prefix, "first_touch", /*required=*/false)) {
    if (touch->value == "page" || touch->value == "unit") {
      region->first_touch_page = touch->value == "page";
    } else {
      rep.At(*touch->node, Cat(JoinPath(prefix, "first_touch"),
                               ": must be \"page\" or \"unit\" (got \"", touch->value, "\")"));
    }
  }
  const auto unit = GetSize(rep, table, prefix, "map_unit", /*required=*/false);
  if (!unit) return;
  const std::string path = JoinPath(prefix, "map_unit");
  const uint64_t page = region->page_size;
  const uint64_t most = std::max(limits.max_fault_map_bytes, page);
  if (unit->value == 0 || (unit->value & (unit->value - 1)) != 0) {
    rep.At(*unit->node, Cat(path, ": must be a power of two (got ", unit->value, ")"));
  } else if (unit->value < page) {
    rep.At(*unit->node,
           Cat(path, ": must be at least the page size ", page, " (got ", unit->value, ")"));
  } else if (unit->value > most) {
    rep.At(*unit->node, Cat(path, ": must not exceed limits.max_fault_map_bytes (", most, ") (got ",
                            unit->value, ")"));
  } else {
    region->map_unit = unit->value;
  }
}

// A budget (max_resident) must hold the largest map unit it covers: one that cannot hold a
// single unit could map nothing at all.
void CheckBudget(Reporter& rep, const Field<uint64_t>& budget, const std::string& path,
                 const std::vector<const RegionConfig*>& regions) {
  uint64_t largest = 0;
  const RegionConfig* which = nullptr;
  for (const RegionConfig* r : regions) {
    if (MapUnitOf(*r) > largest) {
      largest = MapUnitOf(*r);
      which = r;
    }
  }
  if (which != nullptr && budget.value < largest) {
    rep.At(*budget.node,
           Cat(path, ": ", budget.value, " bytes cannot hold one map unit (", largest,
               " bytes, the region at line ", which->where.line, "); make it at least that"));
  }
}

// Parses and validates one [[space.region]]. Returns true when its IOVA range is valid, so that
// it can take part in the overlap check.
// Longer than 60 lines: a region's keys checked in turn, each check using the values read
// before it (iova, size, the page size its backing gives, offset); divided, they would all be
// passed around.
bool ParseRegion(Reporter& rep, const toml::table& table, const std::string& prefix,
                 const DeviceLimits& limits, bool check_backings, RegionConfig* region) {
  CheckKeys(rep, table, prefix,
            {"iova", "size", "backing", "offset", "access", "prefetch", "map_unit", "first_touch"});
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
  ParseMapUnit(rep, table, prefix, limits, region);
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
  CheckKeys(rep, table, prefix,
            {"pasid", "ioas_id", "hwpt_id", "dirty_tracking", "max_resident", "region"});
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
  if (auto dirty = GetBool(rep, table, prefix, "dirty_tracking", /*required=*/false)) {
    space->dirty_tracking = dirty->value;
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
  if (auto budget = GetSize(rep, table, prefix, "max_resident", /*required=*/false)) {
    space->max_resident = budget->value;
    std::vector<const RegionConfig*> all;
    for (const RegionConfig& r : space->regions) all.push_back(&r);
    CheckBudget(rep, *budget, JoinPath(prefix, "max_resident"), all);
  }
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
  CheckKeys(rep, table, "limits", {"max_group_records", "max_fault_map_bytes", "max_resident"});
  if (auto budget = GetSize(rep, table, "limits", "max_resident", /*required=*/false)) {
    limits->max_resident = budget->value;  // checked against the map units once they are read
  }
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

// The device's name and where it is in sysfs.
void ParseIdentity(Reporter& rep, const toml::table& root, DeviceParse* out) {
  DeviceConfig& device = out->device;
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
}

// The attach mode and its table ([adopt] or [vfio]; the other one is an error). Returns the
// mode, or nullopt when it is missing or invalid (reported).
std::optional<AttachMode> ParseMode(Reporter& rep, const toml::table& root, DeviceConfig* device) {
  std::optional<AttachMode> mode;
  const auto attach = GetString(rep, root, "", "attach", /*required=*/true);
  if (attach) {
    mode = ValueNamed(kAttachModeNames, attach->value);
    if (!mode.has_value()) {
      rep.At(*attach->node, Cat("attach: must be ", NamesForMessage(kAttachModeNames), " (got ",
                                Quote(attach->value), ")"));
    }
  }
  if (mode) device->mode = *mode;
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
  if (adopt != nullptr) ParseAdopt(rep, *adopt, &device->adopt);
  if (vfio != nullptr) ParseVfio(rep, *vfio, &device->vfio);
  return mode;
}

// The [[space]] tables: each one's regions, and no PASID used twice, and at most one space
// without a PASID.
void ParseSpaces(Reporter& rep, const toml::table& root, std::optional<AttachMode> mode,
                 bool check_backings, DeviceConfig* device) {
  const std::vector<const toml::table*> tables = GetTableArray(rep, root, "", "space", "[[space]]");
  std::vector<std::pair<size_t, uint32_t>> pasids;  // (space index, pasid)
  std::optional<size_t> no_pasid;                   // index of the space without pasid
  for (size_t i = 0; i < tables.size(); ++i) {
    if (tables[i] == nullptr) continue;
    const std::string prefix = Cat("space[", i, "]");
    SpaceConfig space;
    const toml::node* pasid_node = nullptr;
    bool pasid_present = false;
    ParseSpace(rep, *tables[i], prefix, mode, device->limits, check_backings, &space, &pasid_node,
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
    device->spaces.push_back(std::move(space));
  }
}

// Adopt mode: what the spaces must say given what iopfd can switch, and inherited region fds
// that are not memory.
void CheckAdoptSpaces(Reporter& rep, const DeviceConfig& device) {
  // Parking puts the owner's IOPF-capable HWPT back afterwards: iopfd must know it.
  for (size_t i = 0; i < device.spaces.size(); ++i) {
    const SpaceConfig& space = device.spaces[i];
    // Reading a HWPT's dirty bits clears them: two spaces reading one would steal each other's.
    const bool dirty = space.WantsDirtyBits(AttachMode::kAdopt);
    for (size_t j = 0; j < i && dirty && space.hwpt_id != 0; ++j) {
      if (device.spaces[j].WantsDirtyBits(AttachMode::kAdopt) &&
          device.spaces[j].hwpt_id == space.hwpt_id) {
        rep.At(space.where,
               Cat("space[", i, "].hwpt_id: ", space.hwpt_id, " reads its dirty bits for space[", j,
                   "] already (dirty_tracking): one space per HWPT"));
      }
    }
    if (device.adopt.can_switch() && space.hwpt_id == 0) {
      rep.At(space.where, Cat("space[", i, "].hwpt_id: required with adopt.",
                              device.adopt.device_fd.empty() ? "switch_module" : "device_fd",
                              " (the IOPF-capable HWPT the owner attached, which a drain "
                              "puts back)"));
    } else if (dirty && space.hwpt_id == 0) {
      rep.At(space.where, Cat("space[", i,
                              "].hwpt_id: required with dirty_tracking = true (the HWPT whose "
                              "dirty bits iopfd reads)"));
    } else if (!device.adopt.can_switch() && !dirty && space.hwpt_id != 0) {
      rep.At(space.where, Cat("space[", i,
                              "].hwpt_id: only with adopt.device_fd or adopt.switch_module "
                              "(iopfd cannot switch attachments without one) or with "
                              "dirty_tracking = true"));
    }
  }
  // A region's inherited fd must be memory: naming the device's own iommufd or fault queue there
  // would hand that file to the map call.
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

// A device file's top level, in the order the file documents it.
void ParseDeviceTable(Reporter& rep, const toml::table& root, bool check_backings,
                      DeviceParse* out) {
  DeviceConfig& device = out->device;
  CheckKeys(rep, root, "",
            {"name", "attach", "sysfs", "adopt", "vfio", "limits", "drain", "space"});
  ParseIdentity(rep, root, out);
  const std::optional<AttachMode> mode = ParseMode(rep, root, &device);
  // Limits first: region prefetch is checked against them.
  if (const toml::table* limits = GetTable(rep, root, "", "limits")) {
    ParseLimits(rep, *limits, &device.limits);
  }
  if (const toml::table* drain = GetTable(rep, root, "", "drain")) {
    ParseDrain(rep, *drain, mode, device.adopt, &device.drain);
  }
  ParseSpaces(rep, root, mode, check_backings, &device);
  if (device.mode == AttachMode::kAdopt) CheckAdoptSpaces(rep, device);
  if (const toml::table* limits = root["limits"].as_table()) {
    if (const toml::node* node = limits->get("max_resident"); node && device.limits.max_resident) {
      std::vector<const RegionConfig*> all;
      for (const SpaceConfig& s : device.spaces) {
        for (const RegionConfig& r : s.regions) all.push_back(&r);
      }
      CheckBudget(rep, Field<uint64_t>{*device.limits.max_resident, node}, "limits.max_resident",
                  all);
    }
  }
}

}  // namespace

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

}  // namespace iopfd::config_internal
