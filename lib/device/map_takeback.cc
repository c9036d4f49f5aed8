// Adopt mode across restarts: which units iopfd holds mapped in the owner's IOAS (map_record.h).
#include <sys/stat.h>

#include <cerrno>
#include <optional>
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
      // What the units map, not only where: the same IOVA from another file (an anonymous
      // backing is a new memfd in every process) or with other access is another unit.
      struct stat st {};
      if (r.backing_fd() < 0 || fstat(r.backing_fd(), &st) != 0) {
        st.st_dev = ~dev_t{0};
        st.st_ino = static_cast<ino_t>(MonotonicNs());  // matches nothing
      }
      layout.push_back(RecordedRegion{s.ioas(), r.iova(), r.size(), r.unit_bytes(), r.access(),
                                      static_cast<uint64_t>(st.st_dev),
                                      static_cast<uint64_t>(st.st_ino), r.backing_offset()});
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

// Where a recorded unit is in this device's spaces: the unit of a region over the same IOAS,
// with the same access and backing file and offset, at exactly its IOVA and length.
struct Found {
  AddressSpace* space = nullptr;
  Region* region = nullptr;
  uint32_t unit = 0;
};

Found Locate(std::vector<AddressSpace>& spaces, const std::vector<RecordedRegion>& layout,
             const RecordedRegion& was, const RecordedUnit& ru) {
  size_t index = 0;
  for (AddressSpace& s : spaces) {
    for (Region& r : s.regions()) {
      const RecordedRegion& now = layout[index++];
      if (now.ioas != ru.ioas || !r.Contains(ru.iova) || now.access != was.access ||
          now.backing_dev != was.backing_dev || now.backing_ino != was.backing_ino ||
          now.backing_offset + (ru.iova - now.iova) != was.backing_offset + (ru.iova - was.iova)) {
        continue;
      }
      const uint32_t unit = r.UnitOf(r.PageIndex(ru.iova));
      if (r.UnitIova(unit) == ru.iova && r.UnitLength(unit) == ru.length) return {&s, &r, unit};
    }
  }
  return {};
}

// The pages of a recorded partial unit that are mapped: each copied alone into `scratch` (a copy
// succeeds only over what is mapped, KERNEL_FACTS.md 11). A partial unit holds few pages.
std::vector<uint64_t> PresentPages(Iommufd& iommufd, IoasId scratch, IoasId ioas,
                                   const Region& region, uint32_t unit) {
  std::vector<uint64_t> present;
  const uint64_t first = region.UnitFirstPage(unit);
  for (uint64_t p = first; p < first + region.UnitPageCount(unit); ++p) {
    if (iommufd.Copy(scratch, ioas, region.iova() + p * region.page_size(), region.page_size())
            .ok()) {
      present.push_back(p);
    }
  }
  return present;
}

// One take-back pass over a previous process's record: what each recorded unit becomes, and the
// tally. Owns the scratch IOAS the checks copy into (allocated at the first need, destroyed with
// the pass: its copies go with it).
class TakeBackPass {
 public:
  TakeBackPass(Iommufd& iommufd, Mapper& mapper, FaultProcessor& processor, DeviceStats& stats,
               uint64_t now)
      : iommufd_(iommufd), mapper_(mapper), processor_(processor), stats_(stats), now_(now) {}
  ~TakeBackPass() {
    if (scratch_) (void)iommufd_.Destroy(scratch_->value());
  }
  TakeBackPass(const TakeBackPass&) = delete;
  TakeBackPass& operator=(const TakeBackPass&) = delete;

  // A recorded unit no unit of this layout matches: iopfd's own mapping, with other bounds or
  // of another file. Unrecorded before the unmap, as always (map_record.h).
  void Unmap(MapRecord& from, const RecordedUnit& ru) {
    from.Set(ru.region, ru.unit, false);
    // A partial unit's pages are not known here: whatever is in its range is iopfd's.
    absl::Status st = mapper_.Unmap(ru.ioas, ru.iova, ru.length, ru.partial ? 0 : ru.length);
    if (st.ok()) {
      ++out.unmapped;
    } else if (ErrnoOf(st) != ENOENT) {  // ENOENT: gone already, or not one whole mapping
      Failed(st);
    }
  }

  // A unit recorded as held in part: whichever of its pages are still mapped are iopfd's again
  // (the owner maps nothing inside iopfd's regions; a unit it replaced was recorded whole).
  void TakePartial(const Found& f) {
    if (!HaveScratch()) {
      ++out.partial;
      return;
    }
    const std::vector<uint64_t> present =
        PresentPages(iommufd_, *scratch_, f.space->ioas(), *f.region, f.unit);
    if (present.empty() || !processor_.TakeBack(f.space, f.region, f.unit, now_, present)) return;
    ++out.units;
    out.bytes += present.size() * f.region->page_size();
  }

  // A unit recorded whole: a map call puts it back where it is gone; where it says something is
  // there (EEXIST), a copy of the whole unit into the scratch IOAS says whether all of it is
  // mapped (EEXIST alone only says that something overlaps it: the owner may have replaced
  // iopfd's mapping with one of its own inside the unit, and a unit believed mapped that is only
  // partly so would leave the device faulting on the rest for good).
  void TakeWhole(const Found& f) {
    const MapRequest req = f.region->MakeUnitRequest(f.space->ioas(), f.unit);
    absl::Status st = mapper_.Map(req);
    // ENOMEM is a transient allocation failure on the way (FaultProcessor::CallMap).
    for (int retry = 0; retry < 2 && ErrnoOf(st) == ENOMEM; ++retry) st = mapper_.Map(req);
    if (ErrnoOf(st) == EEXIST) {
      st = HaveScratch() ? iommufd_.Copy(*scratch_, f.space->ioas(), req.iova, req.length)
                         : absl::UnavailableError("no IOAS to check the unit with");
      if (!st.ok()) {
        ++out.partial;  // not all mapped: served as someone else's (stuck), as before records
        return;
      }
    } else if (st.ok()) {
      ++out.remapped;
      stats_.bytes_mapped += req.length;
    } else {
      Failed(st);
      return;
    }
    if (!processor_.TakeBack(f.space, f.region, f.unit, now_)) return;
    ++out.units;
    out.bytes += req.length;
  }

  Device::TakenBack out;
  std::string first_error;  // of the first unit left as it is

 private:
  void Failed(const absl::Status& st) {
    ++out.failed;
    if (first_error.empty()) first_error = std::string(st.message());
  }
  // An IOAS of iopfd's own with no domain (so nothing is pinned) to copy into.
  bool HaveScratch() {
    if (!scratch_ && !scratch_failed_) {
      auto id = iommufd_.IoasAlloc();
      scratch_failed_ = !id.ok();
      if (id.ok()) scratch_ = *id;
    }
    return scratch_.has_value();
  }

  Iommufd& iommufd_;
  Mapper& mapper_;
  FaultProcessor& processor_;
  DeviceStats& stats_;
  const uint64_t now_;
  std::optional<IoasId> scratch_;
  bool scratch_failed_ = false;
};

}  // namespace

Device::TakenBack Device::TakeBackMappings(std::unique_ptr<MapRecord> previous) {
  if (previous == nullptr || map_record_ == nullptr || !iommufd_) return {};
  const uint64_t now = MonotonicNs();
  // An older file (map_record.h) cannot record partial units: the device records in its own.
  const bool same =
      previous->layout() == map_record_->layout() && previous->version() == map_record_->version();
  std::unique_ptr<MapRecord> old;  // the previous file, when its layout is not this one
  if (same) {
    // Go on in the file the store keeps: nothing to replace there.
    AttachMapRecord(previous.get());
    map_record_ = std::move(previous);
  } else {
    old = std::move(previous);
  }
  MapRecord& from = old != nullptr ? *old : *map_record_;
  TakeBackPass pass(*iommufd_, *mapper_, *processor_, *stats_, now);
  const std::vector<RecordedRegion>& layout = map_record_->layout();  // this device's
  from.ForEachHeld([&](const RecordedUnit& ru) {
    Found f = Locate(spaces_->spaces(), layout, from.layout()[ru.region], ru);
    if (f.region == nullptr) {
      pass.Unmap(from, ru);
      return;
    }
    if (same) map_record_->Set(ru.region, ru.unit, false);  // set again once resident
    if (ru.partial) {
      pass.TakePartial(f);
    } else {
      pass.TakeWhole(f);
    }
  });
  if (old != nullptr && old->Fits(map_record_->layout())) {
    // Go on in the stored file all the same, under the new layout: the store keeps it already.
    old->Relayout(map_record_->layout());
    map_record_->ForEachHeld(
        [&](const RecordedUnit& u) { old->Set(u.region, u.unit, true, u.partial); });
    AttachMapRecord(old.get());
    map_record_ = std::move(old);
  }
  TakenBack& out = pass.out;
  if (pager_ != nullptr && out.units != 0) out.evicted = BackUnderBudgets(now);
  if (out.units + out.unmapped + out.partial + out.failed != 0) {
    Log(out.failed != 0 ? LogLevel::kWarning : LogLevel::kInfo,
        absl::StrCat(
            name_, ": took back ", out.units, " unit(s) (", out.bytes,
            " bytes) the previous iopfd mapped (", out.remapped,
            " were gone and mapped again), unmapped ", out.unmapped, " of another layout, left ",
            out.partial, " only partly mapped to their owner, evicted ", out.evicted,
            " for the budgets",
            out.failed != 0
                ? absl::StrCat("; ", out.failed, " left as they are, first: ", pass.first_error)
                : std::string()),
        {{"DEVICE", name_}});
  }
  return out;
}

uint64_t Device::BackUnderBudgets(uint64_t now) {
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
  return stats_->paging.evicted_units - evicted_before;
}

}  // namespace iopfd
