// The address spaces iopfd resolves page requests against: per PASID (or none), a sorted set of
// regions, each backed by a shared file, divided into map units, with what iopfd holds mapped.
//
// A map unit is what one map call maps and what one eviction unmaps: IOMMU_IOAS_UNMAP cannot
// split or truncate a mapping (io_pagetable.c refuses a range that cuts an area with ENOENT), so
// a unit, once mapped alone, can be unmapped alone, and adjacent units in one call.
// A unit may also be mapped in part (a "partial" unit): its first page request, alone in its
// unit, maps only the page asked for (first_touch = "page"), as does a later stray page of it;
// a request beside a page it holds maps the rest, hole by hole (FaultProcessor::Alone). The unit is
// still one eviction granule: an unmap may cover several areas with holes between them, as long as
// it cuts none (KERNEL_FACTS.md 11).
#ifndef IOPFD_FAULT_ADDRESS_SPACE_H_
#define IOPFD_FAULT_ADDRESS_SPACE_H_

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopfd/base/ids.h"
#include "iopfd/fault/map_record.h"

namespace iopfd {

class PagedSpace;

// The map unit when the configuration names none (region.map_unit): 64 KiB, or the page size
// of a hugetlbfs backing when larger. See docs/PAGING.md for the measurements behind it.
inline uint64_t DefaultMapUnit(uint64_t page_size) {
  return std::max<uint64_t>(page_size, uint64_t{64} << 10);
}

// One map call: [iova, iova + length) of an IOAS from [file_offset, file_offset + length) of a
// shmem or hugetlbfs file. user_va is the same memory in iopfd's address space, for kernels
// without IOMMU_IOAS_MAP_FILE (may be null when the caller never needs that fallback).
struct MapRequest {
  IoasId ioas;
  uint64_t iova = 0;
  uint64_t length = 0;
  int fd = -1;
  uint64_t file_offset = 0;
  void* user_va = nullptr;
  uint32_t flags = 0;  // uapi::kIoasMapReadable | kIoasMapWriteable
};

// The seam between fault resolution and the kernel: the daemon maps through iommufd, tests
// through a fake that records calls and injects failures.
class Mapper {
 public:
  virtual ~Mapper() = default;
  // Maps req at a fixed IOVA. Returns OK, or an error carrying the errno (see ErrnoOf):
  // AlreadyExists (EEXIST) when part of the range is already mapped by anyone.
  virtual absl::Status Map(const MapRequest& req) = 0;
  // Unmaps [iova, iova + length) of `ioas`, which must cover whole mappings (ENOENT otherwise,
  // and when nothing is mapped there); there may be holes between them. `held` is what the
  // caller holds mapped in the range, in bytes (0: not known): the kernel unmapping anything
  // else is an error (EIO: something was unmapped or mapped there behind the caller's back).
  // Returns OK or an error carrying the errno.
  virtual absl::Status Unmap(IoasId ioas, uint64_t iova, uint64_t length, uint64_t held) = 0;
  // Returns whether the device wrote any page of [iova, iova + length) since the last call
  // (the IOMMU's dirty bits on `hwpt`, which this clears; pass a range mapped without a hole:
  // the kernel stops at one without saying so), or an error carrying the errno. Unimplemented
  // where the mapper reads no dirty bits.
  virtual absl::StatusOr<bool> TakeDirty(HwptId /*hwpt*/, uint64_t /*iova*/, uint64_t /*length*/,
                                         uint64_t /*page_size*/) {
    return absl::UnimplementedError("this mapper reads no dirty bits");
  }
};

// Names a map unit of an address space: its region's index and the unit's index in it.
struct UnitRef {
  static constexpr uint32_t kNone = ~uint32_t{0};
  uint32_t region = kNone;
  uint32_t unit = 0;
  bool valid() const { return region != kNone; }
  bool operator==(const UnitRef&) const = default;
};

// What the pager knows of one map unit (pager.h). No IOMMU has an accessed bit and a resident
// unit never faults again, so what is known is when it was mapped and evicted.
struct Unit {
  enum class State : uint8_t {
    kUnmapped,
    kInactive,  // mapped; on the space's probation (first in, first out) list
    kActive,    // mapped; came back soon after an eviction: on the protected list
    // Not iopfd's alone: its unmap failed, or part of it was mapped by someone else (its pages
    // are then mapped one by one, Region::MarkPagePresent). Never evicted.
    kStuck,
  };
  State state = State::kUnmapped;
  uint8_t quick_refaults = 0;  // re-faults in a row within the thrash window
  uint8_t heat = 0;            // working-set re-faults not yet spent as second chances
  uint32_t dirty_run = 0;      // the eviction run that last gave it a dirty second chance
  // Mapped in part: how many of its pages are (those marked present, Region::MarkPagePresent);
  // 0 when it is mapped whole or not at all.
  uint32_t partial_pages = 0;
  uint64_t mapped_ns = 0;        // when it was last mapped
  uint64_t evicted_ns = 0;       // when it was last evicted (0: never)
  uint64_t evicted_seq = 0;      // the space's eviction count when it was evicted
  uint64_t pin_batch = 0;        // the device's batch whose answers rely on it
  uint64_t protected_until = 0;  // thrash protection: not evicted before this time
  UnitRef prev, next;            // its place on the list its state names
  bool mapped() const { return state != State::kUnmapped; }
};

// A region at run time. The backing (fd, user_va) is owned by whoever built the region and must
// outlive it.
class Region {
 public:
  // iova, size and offset must be multiples of page_size, unit_bytes a power of two multiple of
  // page_size (config validation guarantees it; 0 means one page). Units are aligned to the
  // region's start; the last one ends at the region's end.
  // first_touch_page: a unit's first page request, alone in its unit, maps only its page.
  Region(uint64_t iova, uint64_t size, uint64_t page_size, uint32_t access, uint64_t prefetch,
         int backing_fd, uint64_t backing_offset, void* backing_va, uint64_t unit_bytes = 0,
         bool first_touch_page = false);

  uint64_t iova() const { return iova_; }
  uint64_t size() const { return size_; }
  uint64_t end() const { return iova_ + size_; }  // exclusive
  uint64_t page_size() const { return page_size_; }
  uint64_t pages() const { return size_ / page_size_; }
  uint32_t access() const { return access_; }
  // The backing file and where the region starts in it.
  int backing_fd() const { return backing_fd_; }
  uint64_t backing_offset() const { return backing_offset_; }
  uint64_t prefetch() const { return prefetch_; }
  // Whether a unit first touched by one page request alone maps only that page (a partial unit).
  bool first_touch_page() const { return first_touch_page_ && unit_pages_ > 1; }
  bool Contains(uint64_t iova) const { return iova >= iova_ && iova - iova_ < size_; }
  // Index of the page holding iova (which must be inside the region).
  uint64_t PageIndex(uint64_t iova) const { return (iova - iova_) / page_size_; }

  // Map units: their size, count, the unit holding a page, and each unit's pages.
  uint64_t unit_pages() const { return unit_pages_; }
  uint64_t unit_bytes() const { return unit_pages_ * page_size_; }
  uint32_t unit_count() const { return static_cast<uint32_t>(units_.size()); }
  uint32_t UnitOf(uint64_t page) const { return static_cast<uint32_t>(page / unit_pages_); }
  uint64_t UnitFirstPage(uint32_t unit) const { return uint64_t{unit} * unit_pages_; }
  uint64_t UnitPageCount(uint32_t unit) const {
    return std::min(unit_pages_, pages() - UnitFirstPage(unit));
  }
  uint64_t UnitLength(uint32_t unit) const { return UnitPageCount(unit) * page_size_; }
  uint64_t UnitIova(uint32_t unit) const { return iova_ + UnitFirstPage(unit) * page_size_; }
  Unit& unit(uint32_t index) { return units_[index]; }
  const Unit& unit(uint32_t index) const { return units_[index]; }

  // A page is mapped when its unit is whole; for a partial or stuck unit, when the page was
  // marked present.
  bool IsMapped(uint64_t page) const {
    const Unit& u = units_[UnitOf(page)];
    if (u.state != Unit::State::kStuck && u.partial_pages == 0) return u.mapped();
    return PagePresent(page);
  }
  bool PagePresent(uint64_t page) const {
    return !present_.empty() && ((present_[page / 64] >> (page % 64)) & 1) != 0;
  }
  // Marks one page of a partial or stuck unit as present (mapped alone, or found mapped by
  // someone else).
  void MarkPagePresent(uint64_t page);
  // Clears the present marks of a unit's pages (it is unmapped, or mapped whole now).
  void ClearPresent(uint32_t unit);
  // Returns the pages of a mapped unit iopfd holds: all of them, or a partial unit's.
  uint64_t ResidentPages(uint32_t unit) const {
    const Unit& u = units_[unit];
    return u.partial_pages != 0 ? u.partial_pages : UnitPageCount(unit);
  }
  uint64_t ResidentBytes(uint32_t unit) const { return ResidentPages(unit) * page_size_; }
  // Returns the number of pages iopfd holds mapped in this region.
  uint64_t mapped_pages() const { return mapped_count_; }
  // Keeps mapped_pages() current as a unit is mapped (its partial_pages set first: what it holds
  // counts), grows or is unmapped (the pager's bookkeeping); a unit noted mapped is recorded as
  // held (AttachRecord), partial or whole.
  void NoteUnitMapped(uint32_t unit) {
    mapped_count_ += ResidentPages(unit);
    RecordHeld(unit, true);
  }
  // A partial unit got `pages` more mapped (marked present by the caller): once all of its pages
  // are, it is whole (its marks cleared, recorded whole).
  void NotePagesMapped(uint32_t unit, uint64_t pages);
  void NoteUnitUnmapped(uint32_t unit) { mapped_count_ -= ResidentPages(unit); }
  // From now on records in `record`, as its region `index`, which units iopfd holds mapped
  // (map_record.h); nullptr stops. The record must outlive the region or be detached first.
  void AttachRecord(MapRecord* record, uint32_t index) {
    record_ = record;
    record_index_ = index;
  }
  // Records that iopfd holds unit `unit` mapped (set after its map call succeeded) or no longer
  // does (cleared before its unmap call is issued: a crash in between leaves it unrecorded,
  // which is safe, where recorded-but-gone would not be), and whether in part (its partial_pages
  // as it is now). Nothing without a record.
  void RecordHeld(uint32_t unit, bool held) {
    if (record_ != nullptr) {
      record_->Set(record_index_, unit, held, held && units_[unit].partial_pages != 0);
    }
  }

  // Builds the map request for unit `unit` of this region into `ioas`.
  MapRequest MakeUnitRequest(IoasId ioas, uint32_t unit) const;
  // Builds the map request for the single page `page` into `ioas`.
  MapRequest MakePageRequest(IoasId ioas, uint64_t page) const;
  // Builds the map request for `count` pages from page `first` into `ioas`.
  MapRequest MakeRange(IoasId ioas, uint64_t first, uint64_t count) const;

 private:
  uint64_t iova_, size_, page_size_;
  uint32_t access_;
  uint64_t prefetch_;
  int backing_fd_;
  uint64_t backing_offset_;
  void* backing_va_;
  uint64_t unit_pages_;
  bool first_touch_page_;
  std::vector<Unit> units_;
  // Pages of partial and stuck units present (allocated when first set).
  std::vector<uint64_t> present_;
  uint64_t mapped_count_ = 0;
  MapRecord* record_ = nullptr;
  uint32_t record_index_ = 0;
};

// The regions of one PASID (or of requests without one), mapped into one IOAS.
class AddressSpace {
 public:
  // Regions must not overlap; they are sorted here.
  AddressSpace(std::optional<uint32_t> pasid, IoasId ioas, std::vector<Region> regions);

  const std::optional<uint32_t>& pasid() const { return pasid_; }
  IoasId ioas() const { return ioas_; }
  // Returns the region containing iova, or nullptr. O(log regions).
  Region* Find(uint64_t iova);
  std::vector<Region>& regions() { return regions_; }
  const std::vector<Region>& regions() const { return regions_; }
  // While set (its attachment is parked, or the device quarantined), requests for this space
  // are answered INVALID without mapping anything.
  bool refusing() const { return refusing_; }
  void set_refusing(bool refusing) { refusing_ = refusing; }

  // Its paging state (pager.h): set when the space is registered with a pager, nullptr before.
  PagedSpace* paging() const { return paging_; }
  void set_paging(PagedSpace* paging) { paging_ = paging; }
  // Returns the unit `ref` names.
  Unit& unit(UnitRef ref) { return regions_[ref.region].unit(ref.unit); }
  // Returns the index of `region`, which must be one of this space's.
  uint32_t IndexOf(const Region* region) const {
    return static_cast<uint32_t>(region - regions_.data());
  }

 private:
  std::optional<uint32_t> pasid_;
  IoasId ioas_;
  bool refusing_ = false;
  PagedSpace* paging_ = nullptr;
  std::vector<Region> regions_;
};

// All address spaces of a device, looked up by the PASID a request carries.
class SpaceTable {
 public:
  // Takes the spaces; at most one per PASID and one without (validated by config).
  explicit SpaceTable(std::vector<AddressSpace> spaces);
  // Returns the space for a request: pasid_valid selects by pasid, else the no-PASID space.
  // nullptr when there is none.
  AddressSpace* Find(bool pasid_valid, uint32_t pasid);
  std::vector<AddressSpace>& spaces() { return spaces_; }

 private:
  std::vector<AddressSpace> spaces_;
  int no_pasid_ = -1;
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_ADDRESS_SPACE_H_
