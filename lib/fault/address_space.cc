#include "iopfd/fault/address_space.h"

#include <algorithm>

#include "iopfd/base/uapi.h"

namespace iopfd {

Region::Region(uint64_t iova, uint64_t size, uint64_t page_size, uint32_t access, uint64_t prefetch,
               int backing_fd, uint64_t backing_offset, void* backing_va, uint64_t unit_bytes,
               bool first_touch_page)
    : iova_(iova),
      size_(size),
      page_size_(page_size),
      access_(access),
      prefetch_(prefetch),
      backing_fd_(backing_fd),
      backing_offset_(backing_offset),
      backing_va_(backing_va),
      unit_pages_(std::max<uint64_t>(unit_bytes / page_size, 1)),
      first_touch_page_(first_touch_page),
      units_((size / page_size + unit_pages_ - 1) / unit_pages_) {}

void Region::MarkPagePresent(uint64_t page) {
  if (present_.empty()) present_.assign((pages() + 63) / 64, 0);
  present_[page / 64] |= uint64_t{1} << (page % 64);
}

void Region::ClearPresent(uint32_t unit) {
  if (present_.empty()) return;
  const uint64_t first = UnitFirstPage(unit);
  for (uint64_t p = first; p < first + UnitPageCount(unit); ++p) {
    present_[p / 64] &= ~(uint64_t{1} << (p % 64));
  }
}

void Region::NotePagesMapped(uint32_t unit, uint64_t pages) {
  Unit& u = units_[unit];
  mapped_count_ += pages;
  u.partial_pages += static_cast<uint32_t>(pages);
  if (u.partial_pages < UnitPageCount(unit)) return;
  u.partial_pages = 0;
  ClearPresent(unit);
  RecordHeld(unit, true);
}

MapRequest Region::MakeUnitRequest(IoasId ioas, uint32_t unit) const {
  return MakeRange(ioas, UnitFirstPage(unit), UnitPageCount(unit));
}

MapRequest Region::MakePageRequest(IoasId ioas, uint64_t page) const {
  return MakeRange(ioas, page, 1);
}

MapRequest Region::MakeRange(IoasId ioas, uint64_t first, uint64_t count) const {
  MapRequest req;
  req.ioas = ioas;
  req.iova = iova_ + first * page_size_;
  req.length = count * page_size_;
  req.fd = backing_fd_;
  req.file_offset = backing_offset_ + first * page_size_;
  req.user_va =
      backing_va_ == nullptr ? nullptr : static_cast<char*>(backing_va_) + first * page_size_;
  // The IOMMU has no execute or privilege bits for an IOAS mapping: exec implies read, and
  // privileged requests are gated by the permission check before any map.
  if (access_ & (uapi::kPermRead | uapi::kPermExec)) req.flags |= uapi::kIoasMapReadable;
  if (access_ & uapi::kPermWrite) req.flags |= uapi::kIoasMapWriteable;
  return req;
}

AddressSpace::AddressSpace(std::optional<uint32_t> pasid, IoasId ioas, std::vector<Region> regions)
    : pasid_(pasid), ioas_(ioas), regions_(std::move(regions)) {
  std::sort(regions_.begin(), regions_.end(),
            [](const Region& a, const Region& b) { return a.iova() < b.iova(); });
}

Region* AddressSpace::Find(uint64_t iova) {
  // First region starting after iova; the one before it is the only candidate.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), iova,
                             [](uint64_t v, const Region& r) { return v < r.iova(); });
  if (it == regions_.begin()) return nullptr;
  --it;
  return it->Contains(iova) ? &*it : nullptr;
}

SpaceTable::SpaceTable(std::vector<AddressSpace> spaces) : spaces_(std::move(spaces)) {
  for (size_t i = 0; i < spaces_.size(); ++i) {
    if (!spaces_[i].pasid().has_value()) no_pasid_ = static_cast<int>(i);
  }
}

AddressSpace* SpaceTable::Find(bool pasid_valid, uint32_t pasid) {
  if (!pasid_valid) return no_pasid_ < 0 ? nullptr : &spaces_[no_pasid_];
  // Devices use few PASIDs (one per process or work queue); a linear scan beats hashing here.
  for (AddressSpace& s : spaces_) {
    if (s.pasid().has_value() && *s.pasid() == pasid) return &s;
  }
  return nullptr;
}

}  // namespace iopfd
