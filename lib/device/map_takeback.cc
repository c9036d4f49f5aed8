// Adopt mode across restarts: which units iopfd holds mapped in the owner's IOAS (map_record.h).
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/device/device.h"
#include "iopfd/service/log.h"

namespace iopfd {

std::vector<RecordedRegion> Device::Layout() const {
  std::vector<RecordedRegion> layout;
  for (const AddressSpace& s : spaces_->spaces()) {
    for (const Region& r : s.regions()) {
      layout.push_back(RecordedRegion{s.ioas(), r.iova(), r.size(), r.unit_bytes()});
    }
  }
  return layout;
}

void Device::AttachMapRecord(MapRecord* record) {
  uint32_t index = 0;
  for (AddressSpace& s : spaces_->spaces()) {
    for (Region& r : s.regions()) r.AttachRecord(record, index++);
  }
}

void Device::SetUpMapRecord() {
  auto record = MapRecord::Create(name_, Layout());
  if (!record.ok()) {
    Log(LogLevel::kWarning,
        absl::StrCat(record.status().message(),
                     "; after a restart what iopfd mapped is served as someone else's, outside "
                     "the budgets"),
        {{"DEVICE", name_}});
    return;
  }
  map_record_ = *std::move(record);
  AttachMapRecord(map_record_.get());
}

std::unique_ptr<MapRecord> Device::ReleaseMapRecord() {
  if (map_record_ != nullptr) AttachMapRecord(nullptr);
  return std::move(map_record_);
}

namespace {

// Where a recorded unit is in this device's spaces: the unit of a region of a space over the
// same IOAS with exactly its IOVA and length.
struct Found {
  AddressSpace* space = nullptr;
  Region* region = nullptr;
  uint32_t unit = 0;
};

Found Locate(std::vector<AddressSpace>& spaces, const RecordedUnit& ru) {
  for (AddressSpace& s : spaces) {
    if (s.ioas() != ru.ioas) continue;
    Region* r = s.Find(ru.iova);
    if (r == nullptr) continue;
    const uint32_t unit = r->UnitOf(r->PageIndex(ru.iova));
    if (r->UnitIova(unit) == ru.iova && r->UnitLength(unit) == ru.length) return {&s, r, unit};
  }
  return {};
}

}  // namespace

// Longer than 60 lines: the three outcomes of a recorded unit, the budgets, and the report are
// one pass that reads best in one place.
Device::TakenBack Device::TakeBackMappings(std::unique_ptr<MapRecord> previous) {
  TakenBack out;
  if (previous == nullptr || map_record_ == nullptr) return out;
  const uint64_t now = MonotonicNs();
  const bool same = previous->layout() == map_record_->layout();
  if (same) {
    // Go on in the file the store keeps: nothing to replace there.
    AttachMapRecord(previous.get());
    map_record_ = std::move(previous);
  }
  MapRecord& from = *(same ? map_record_ : previous);
  std::string first_error;
  for (const RecordedUnit& ru : from.HeldUnits()) {
    Found f = Locate(spaces_->spaces(), ru);
    if (f.region == nullptr) {
      // Not a unit of this layout: iopfd's own mapping, with other bounds. Unrecorded before
      // the unmap, as always (map_record.h).
      from.Set(ru.region, ru.unit, false);
      absl::Status st = mapper_->Unmap(ru.ioas, ru.iova, ru.length);
      if (st.ok() || ErrnoOf(st) == ENOENT) {
        out.unmapped += st.ok() ? 1 : 0;  // ENOENT: gone already (the owner unmapped it)
      } else {
        ++out.failed;
        if (first_error.empty()) first_error = std::string(st.message());
      }
      continue;
    }
    // The bit says iopfd mapped it; a map call says whether it is still there (EEXIST) or
    // puts it back, so that no unit is believed mapped that is not.
    if (same) map_record_->Set(ru.region, ru.unit, false);  // set again once resident
    absl::Status st = mapper_->Map(f.region->MakeUnitRequest(f.space->ioas(), f.unit));
    if (!st.ok() && ErrnoOf(st) != EEXIST) {
      ++out.failed;
      if (first_error.empty()) first_error = std::string(st.message());
      continue;
    }
    if (!processor_->TakeBack(f.space, f.region, f.unit, now)) continue;
    ++out.units;
    out.bytes += f.region->UnitLength(f.unit);
    out.remapped += st.ok() ? 1 : 0;
    if (st.ok()) stats_->bytes_mapped += f.region->UnitLength(f.unit);
  }
  if (pager_ != nullptr && out.units != 0) {
    // Budgets may be smaller than what the previous process held (a changed configuration, or
    // what it held beyond them): back under each at once, innermost first.
    const uint64_t evicted_before = stats_->paging.evicted_units;
    for (AddressSpace& s : spaces_->spaces()) {
      if (PagedSpace* p = s.paging(); p != nullptr) {
        pager_->SetBudget(p->scope(), p->scope().budget, now);
      }
    }
    pager_->SetBudget(paged_->scope(), paged_->scope().budget, now);
    pager_->SetBudget(pager_->daemon_scope(), pager_->daemon_scope().budget, now);
    out.evicted = stats_->paging.evicted_units - evicted_before;
  }
  if (out.units + out.unmapped + out.failed != 0) {
    Log(out.failed != 0 ? LogLevel::kWarning : LogLevel::kInfo,
        absl::StrCat(name_, ": took back ", out.units, " unit(s) (", out.bytes,
                     " bytes) the previous iopfd mapped (", out.remapped,
                     " were gone and mapped again), unmapped ", out.unmapped,
                     " of another layout, evicted ", out.evicted, " for the budgets",
                     out.failed != 0
                         ? absl::StrCat("; ", out.failed, " left as they are, first: ", first_error)
                         : std::string()),
        {{"DEVICE", name_}});
  }
  return out;
}

}  // namespace iopfd
