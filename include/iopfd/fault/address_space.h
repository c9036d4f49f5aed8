// The address spaces iopfd resolves page requests against: per PASID (or none), a sorted set of
// regions, each backed by a shared file, with a record of which pages iopfd has mapped.
#ifndef IOPFD_FAULT_ADDRESS_SPACE_H_
#define IOPFD_FAULT_ADDRESS_SPACE_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/base/ids.h"

namespace iopfd {

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
};

// A region at run time. The backing (fd, user_va) is owned by whoever built the region and must
// outlive it.
class Region {
 public:
  // iova, size and offset must be multiples of page_size (config validation guarantees it).
  Region(uint64_t iova, uint64_t size, uint64_t page_size, uint32_t access, uint64_t prefetch,
         int backing_fd, uint64_t backing_offset, void* backing_va);

  uint64_t iova() const { return iova_; }
  uint64_t size() const { return size_; }
  uint64_t end() const { return iova_ + size_; }  // exclusive
  uint64_t page_size() const { return page_size_; }
  uint64_t pages() const { return size_ / page_size_; }
  uint32_t access() const { return access_; }
  uint64_t prefetch() const { return prefetch_; }
  bool Contains(uint64_t iova) const { return iova >= iova_ && iova - iova_ < size_; }
  // Index of the page holding iova (which must be inside the region).
  uint64_t PageIndex(uint64_t iova) const { return (iova - iova_) / page_size_; }

  bool IsMapped(uint64_t page) const { return (mapped_[page / 64] >> (page % 64)) & 1; }
  void MarkMapped(uint64_t first, uint64_t count);
  // Returns the number of pages iopfd has mapped in this region.
  uint64_t mapped_pages() const { return mapped_count_; }

  // Builds the map request for pages [first, first + count) of this region into `ioas`.
  MapRequest MakeRequest(IoasId ioas, uint64_t first, uint64_t count) const;

 private:
  uint64_t iova_, size_, page_size_;
  uint32_t access_;
  uint64_t prefetch_;
  int backing_fd_;
  uint64_t backing_offset_;
  void* backing_va_;
  std::vector<uint64_t> mapped_;
  uint64_t mapped_count_ = 0;
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
  // While set (its attachment is parked, or the device quarantined), requests for this space
  // are answered INVALID without mapping anything.
  bool refusing() const { return refusing_; }
  void set_refusing(bool refusing) { refusing_ = refusing; }

 private:
  std::optional<uint32_t> pasid_;
  IoasId ioas_;
  bool refusing_ = false;
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
