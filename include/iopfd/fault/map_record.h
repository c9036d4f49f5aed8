// Which map units iopfd holds mapped in an owner's IOAS, recorded so that the next process
// knows them.
//
// In adopt mode the IOAS is the owner's and outlives iopfd: after a crash, or a stop and a
// start, what iopfd mapped is still mapped (a clean stop leaves it, so that the device keeps
// working). Without a record the next process finds those units by EEXIST one by one, serves
// them as someone else's and never counts or evicts them, so what is pinned can exceed the
// budget by whatever was resident before. With it, the next process takes the recorded units
// back as resident (the same layout) or unmaps exactly them (another), and touches nothing
// else: a mapping the owner made inside a region is never iopfd's to unmap.
//
// The record is a sealed memfd kept with the device's descriptors in systemd's fd store
// (fd_store.h): a header, the layout it was made for (per region: IOAS, IOVA, size, map unit)
// and one bit per unit, with a second bit per unit saying it is held in part (a partial unit,
// address_space.h: the next process finds which of its pages are mapped by copying each). A bit is
// set after the map call that made the unit succeeded and cleared before the unmap call that
// removes it, so a crash at any point leaves a set bit only on a unit that was mapped by iopfd (or,
// once, on one whose unmap had just succeeded). The next process checks each set bit by mapping the
// unit again (Device::TakeBackMappings): success says it was gone and is mapped now; EEXIST that
// something is there, and a copy of the unit into a scratch IOAS (IOMMU_IOAS_COPY, which needs all
// of it mapped) that it is all there. So a stale bit costs a call or two, never a unit believed
// mapped that is not (which would leave the device faulting on it forever). The layout names each
// region's access and backing file too: a unit mapped from another file (an anonymous backing is a
// new memfd in every process) is not taken back but unmapped.
//
// Not thread-safe: the fault loop's thread only.
#ifndef IOPFD_FAULT_MAP_RECORD_H_
#define IOPFD_FAULT_MAP_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/ids.h"

namespace iopfd {

// The map record's name among an adopted device's stored descriptors (the fd store's reserved
// prefix: no device file can give a descriptor this name).
inline constexpr char kMapRecordFdName[] = "iopfd-adopted/maps";

// One region as the record knows it: where it is, how it is divided, and what is mapped there
// (its access, and its backing file's identity and offset: a unit mapped from another file, or
// with other access, is not one the new layout has, even at the same IOVA).
struct RecordedRegion {
  IoasId ioas;
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t unit_bytes = 0;
  uint32_t access = 0;       // uapi::kPermRead | kPermWrite
  uint64_t backing_dev = 0;  // st_dev and st_ino of the backing file (fstat)
  uint64_t backing_ino = 0;
  uint64_t backing_offset = 0;  // where the region starts in it
  bool operator==(const RecordedRegion&) const = default;
};

// One unit the record says iopfd holds mapped: where (its region and index in the record) and
// what (IOAS, IOVA, length: the last unit of a region ends at the region's end).
struct RecordedUnit {
  uint32_t region = 0;
  uint32_t unit = 0;
  IoasId ioas;
  uint64_t iova = 0;
  uint64_t length = 0;
  bool partial = false;  // held in part: some of its pages, each mapped alone or in runs
  bool operator==(const RecordedUnit&) const = default;
};

class MapRecord {
 public:
  // At most this many regions (a device file allows far fewer).
  static constexpr uint32_t kMaxRegions = 4096;

  // Creates an empty record for `layout` (regions with a non-zero size and a power-of-two unit
  // of at least 4 KiB, as configuration validation guarantees) in a memfd whose size is sealed.
  // Returns it, or InvalidArgument naming the device for a layout outside those bounds, or an
  // error naming the device and the failing call (memfd_create, ftruncate, fcntl seals, mmap)
  // with its errno.
  static absl::StatusOr<std::unique_ptr<MapRecord>> Create(
      const std::string& device, const std::vector<RecordedRegion>& layout);
  // Maps a record a previous process made (handed back by the fd store; a version 2 file, which
  // records no partial units, is read too). Returns it, or InvalidArgument naming the device and
  // what is wrong when the file is not one (not sealed against shrinking, its size, magic,
  // version, or a region's bounds: "region N: ..."), or an errno error for fstat/mmap.
  static absl::StatusOr<std::unique_ptr<MapRecord>> Open(const std::string& device, UniqueFd fd);
  ~MapRecord();
  MapRecord(const MapRecord&) = delete;
  MapRecord& operator=(const MapRecord&) = delete;

  // The memfd, for the fd store.
  int fd() const { return fd_.get(); }
  // The layout it records units of.
  const std::vector<RecordedRegion>& layout() const { return layout_; }
  // Returns true when `layout` fits this file as it is: this version's file, as many regions,
  // each with as many bitmap words (Relayout can then reuse it).
  bool Fits(const std::vector<RecordedRegion>& layout) const;
  // Makes the file record `layout`, which must fit: clears every bit, then rewrites the
  // regions (a crash in between leaves a record naming no unit). So a device whose layout
  // changed (another backing file, an anonymous one in each process) goes on in the file the
  // fd store keeps.
  void Relayout(const std::vector<RecordedRegion>& layout);
  // Records whether unit `unit` of region `region` is held mapped, and whether in part (which
  // an older version's file cannot record: it then reads as whole); out-of-range indices are
  // ignored.
  void Set(uint32_t region, uint32_t unit, bool held, bool partial = false);
  // Returns whether it is recorded as held (false out of range).
  bool Held(uint32_t region, uint32_t unit) const;
  // Returns whether it is recorded as held in part (false when not held, or out of range).
  bool Partial(uint32_t region, uint32_t unit) const;
  // The file's format version (Open reads older ones).
  uint32_t version() const { return version_; }
  // Calls fn for every unit recorded as held, in layout order, without allocating (a record
  // may hold millions); fn may change the record (each word is read before its units are
  // visited).
  void ForEachHeld(const std::function<void(const RecordedUnit&)>& fn) const;
  // Returns every unit recorded as held, in layout order (for tests and small records).
  std::vector<RecordedUnit> HeldUnits() const;
  // Returns the number of units recorded as held.
  uint64_t held_count() const;

 private:
  MapRecord(UniqueFd fd, void* map, size_t size, uint32_t version,
            std::vector<RecordedRegion> layout, std::vector<uint64_t> first_word);
  uint64_t* words() const;
  // The partial bits, as many words as the held bits; nullptr in a version 2 file.
  uint64_t* partial_words() const;
  static uint64_t UnitCount(const RecordedRegion& r) {
    return (r.size + r.unit_bytes - 1) / r.unit_bytes;
  }

  UniqueFd fd_;
  void* map_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  std::vector<RecordedRegion> layout_;
  std::vector<uint64_t> first_word_;  // per region: its first bitmap word
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_MAP_RECORD_H_
