// One iommufd context (/dev/iommu, opened or inherited) and the objects iopfd makes in it.
#ifndef IOPFD_IOMMU_IOMMUFD_H_
#define IOPFD_IOMMU_IOMMUFD_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/ids.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/fault/address_space.h"

namespace iopfd {

// Wraps an iommufd file descriptor. Every method returns OK or a Status naming the owner
// (`name`, the device), the ioctl and the errno (see ErrnoStatus).
class Iommufd {
 public:
  // Takes fd (opened from /dev/iommu or inherited from a VMM). sys must outlive this.
  Iommufd(UniqueFd fd, Syscalls* sys, std::string name)
      : fd_(std::move(fd)), sys_(sys), name_(std::move(name)) {}

  // Opens /dev/iommu. Errors: NotFound (ENOENT: kernel without CONFIG_IOMMUFD), others as open.
  static absl::StatusOr<Iommufd> Open(Syscalls* sys, std::string name);

  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }
  // Gives the fd back (adopt mode hands it on); this object is unusable afterwards.
  UniqueFd ReleaseFd() { return std::move(fd_); }

  // IOMMU_IOAS_ALLOC: returns the new IOAS.
  absl::StatusOr<IoasId> IoasAlloc();
  // IOMMU_FAULT_QUEUE_ALLOC: returns the fault object and its fd (made O_NONBLOCK, see .cc).
  absl::StatusOr<std::pair<FaultId, UniqueFd>> FaultQueueAlloc();
  // IOMMU_HWPT_ALLOC of a paging HWPT over `ioas` for `dev`, delivering page requests to
  // `fault` (when valid) and usable for PASID attachment when `pasid_capable`. Unimplemented
  // (EOPNOTSUPP) on kernels before 7.x, which only accept a fault id on nested HWPTs.
  // With `dirty_tracking`, the HWPT has the IOMMU's dirty bits (IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
  // EOPNOTSUPP where HwCapabilities lacks kHwCapDirtyTracking).
  absl::StatusOr<HwptId> HwptAlloc(DeviceId dev, IoasId ioas, FaultId fault, bool pasid_capable,
                                   bool dirty_tracking = false);
  // IOMMU_GET_HW_INFO for a bound device: returns its IOMMU's capability bits
  // (uapi::kHwCapDirtyTracking). Errors: EOPNOTSUPP (no IOMMU), ENOENT (no such device).
  absl::StatusOr<uint64_t> HwCapabilities(DeviceId dev);
  // IOMMU_DESTROY of any object id.
  absl::Status Destroy(uint32_t id);
  // IOMMU_IOAS_COPY of [iova, iova + length) of `src` to the same IOVA of `dst` (readable):
  // into an IOAS with no domain attached it pins nothing, and it succeeds only where the whole
  // range is mapped in src. Errors: NotFound (ENOENT) when part of the range is not mapped in
  // src, AlreadyExists (EEXIST) when dst has something there, others naming the device and
  // errno.
  absl::Status Copy(IoasId dst, IoasId src, uint64_t iova, uint64_t length);
  // Maps req at its fixed IOVA: IOMMU_IOAS_MAP_FILE from req.fd, or, on a kernel without it
  // (ENOTTY/EOPNOTSUPP, remembered), IOMMU_IOAS_MAP from req.user_va. AlreadyExists (EEXIST)
  // when part of the range is mapped.
  absl::Status Map(const MapRequest& req);
  // Unmaps [iova, iova + length) of `ioas` with IOMMU_IOAS_UNMAP. The range must cover whole
  // mappings (io_pagetable.c: ENOENT for a range that cuts one, or holds none), with or without
  // holes between them. Returns OK, or the error naming the device, the call and the errno; EIO
  // when the kernel says it unmapped other than `held` bytes (the range's length by default; 0:
  // whatever was there).
  absl::Status Unmap(IoasId ioas, uint64_t iova, uint64_t length,
                     std::optional<uint64_t> held = std::nullopt);
  // IOMMU_HWPT_SET_DIRTY_TRACKING: starts (or stops) the IOMMU's dirty bits on `hwpt`. Errors:
  // Unimplemented (EOPNOTSUPP) when the HWPT was allocated without IOMMU_HWPT_ALLOC_DIRTY_TRACKING
  // or the IOMMU has no dirty bits; NotFound (ENOENT) for no such HWPT.
  absl::Status SetDirtyTracking(HwptId hwpt, bool enable);
  // IOMMU_HWPT_GET_DIRTY_BITMAP over [iova, iova + length), in page_size bits: returns whether
  // any page was written since the bits were last read, and clears them. The range should be
  // mapped without a hole: the kernel silently stops at one (KERNEL_FACTS.md section 13). Errors
  // (ENOENT: no such HWPT; EOPNOTSUPP: no dirty bits; EINVAL: misaligned) name the HWPT and range.
  absl::StatusOr<bool> TakeDirty(HwptId hwpt, uint64_t iova, uint64_t length, uint64_t page_size);

 private:
  UniqueFd fd_;
  Syscalls* sys_;
  std::string name_;
  bool has_map_file_ = true;
};

// The Mapper the daemon uses: maps through an Iommufd.
class IommufdMapper : public Mapper {
 public:
  explicit IommufdMapper(Iommufd* iommufd) : iommufd_(iommufd) {}
  absl::Status Map(const MapRequest& req) override { return iommufd_->Map(req); }
  absl::Status Unmap(IoasId ioas, uint64_t iova, uint64_t length, uint64_t held) override {
    return iommufd_->Unmap(ioas, iova, length, held);
  }
  absl::StatusOr<bool> TakeDirty(HwptId hwpt, uint64_t iova, uint64_t length,
                                 uint64_t page_size) override {
    return iommufd_->TakeDirty(hwpt, iova, length, page_size);
  }

 private:
  Iommufd* iommufd_;
};

}  // namespace iopfd

#endif  // IOPFD_IOMMU_IOMMUFD_H_
