#include "iopfd/iommu/iommufd.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/uapi.h"

namespace iopfd {

absl::StatusOr<Iommufd> Iommufd::Open(Syscalls* sys, std::string name) {
  int fd = sys->Open("/dev/iommu", O_RDWR);
  if (fd < 0) {
    return ErrnoStatus(-fd, name, "open /dev/iommu",
                       -fd == ENOENT ? "kernel without CONFIG_IOMMUFD" : "");
  }
  return Iommufd(UniqueFd(fd), sys, std::move(name));
}

absl::StatusOr<IoasId> Iommufd::IoasAlloc() {
  uapi::IommuIoasAlloc cmd{};
  cmd.size = sizeof(cmd);
  int rc = sys_->Ioctl(fd(), uapi::kIommuIoasAlloc, &cmd);
  if (rc < 0) return ErrnoStatus(-rc, name_, "IOMMU_IOAS_ALLOC");
  return IoasId(cmd.out_ioas_id);
}

absl::StatusOr<std::pair<FaultId, UniqueFd>> Iommufd::FaultQueueAlloc() {
  uapi::IommuFaultAlloc cmd{};
  cmd.size = sizeof(cmd);
  int rc = sys_->Ioctl(fd(), uapi::kIommuFaultQueueAlloc, &cmd);
  if (rc < 0) {
    return ErrnoStatus(-rc, name_, "IOMMU_FAULT_QUEUE_ALLOC",
                       -rc == ENOTTY ? "kernel without iommufd fault queues (need >= 6.11)" : "");
  }
  return std::make_pair(FaultId(cmd.out_fault_id), UniqueFd(static_cast<int>(cmd.out_fault_fd)));
}

absl::StatusOr<uint64_t> Iommufd::HwCapabilities(DeviceId dev) {
  uapi::IommuHwInfo cmd{};
  cmd.size = sizeof(cmd);
  cmd.dev_id = dev.value();
  int rc = sys_->Ioctl(fd(), uapi::kIommuGetHwInfo, &cmd);
  if (rc < 0) return ErrnoStatus(-rc, name_, "IOMMU_GET_HW_INFO");
  return cmd.out_capabilities;
}

absl::StatusOr<HwptId> Iommufd::HwptAlloc(DeviceId dev, IoasId ioas, FaultId fault,
                                          bool pasid_capable, bool dirty_tracking) {
  uapi::IommuHwptAlloc cmd{};
  cmd.size = sizeof(cmd);
  cmd.dev_id = dev.value();
  cmd.pt_id = ioas.value();
  if (fault.valid()) {
    cmd.flags |= uapi::kHwptFaultIdValid;
    cmd.fault_id = fault.value();
  }
  if (pasid_capable) cmd.flags |= uapi::kHwptAllocPasid;
  if (dirty_tracking) cmd.flags |= uapi::kHwptAllocDirtyTracking;
  int rc = sys_->Ioctl(fd(), uapi::kIommuHwptAlloc, &cmd);
  if (rc < 0) {
    return ErrnoStatus(-rc, name_, "IOMMU_HWPT_ALLOC",
                       -rc == EOPNOTSUPP && fault.valid()
                           ? "kernel lacks fault-capable paging HWPTs (need >= 7.x)"
                           : "");
  }
  return HwptId(cmd.out_hwpt_id);
}

absl::Status Iommufd::Destroy(uint32_t id) {
  uapi::IommuDestroy cmd{};
  cmd.size = sizeof(cmd);
  cmd.id = id;
  int rc = sys_->Ioctl(fd(), uapi::kIommuDestroy, &cmd);
  if (rc < 0) return ErrnoStatus(-rc, name_, absl::StrCat("IOMMU_DESTROY ", id));
  return absl::OkStatus();
}

absl::Status Iommufd::Copy(IoasId dst, IoasId src, uint64_t iova, uint64_t length) {
  uapi::IommuIoasCopy cmd{};
  cmd.size = sizeof(cmd);
  cmd.flags = uapi::kIoasMapFixedIova | uapi::kIoasMapReadable;
  cmd.dst_ioas_id = dst.value();
  cmd.src_ioas_id = src.value();
  cmd.length = length;
  cmd.dst_iova = iova;
  cmd.src_iova = iova;
  int rc = sys_->Ioctl(fd(), uapi::kIommuIoasCopy, &cmd);
  if (rc < 0) return ErrnoStatus(-rc, name_, "IOMMU_IOAS_COPY");
  return absl::OkStatus();
}

absl::Status Iommufd::Map(const MapRequest& req) {
  if (has_map_file_) {
    uapi::IommuIoasMapFile cmd{};
    cmd.size = sizeof(cmd);
    cmd.flags = req.flags | uapi::kIoasMapFixedIova;
    cmd.ioas_id = req.ioas.value();
    cmd.fd = req.fd;
    cmd.start = req.file_offset;
    cmd.length = req.length;
    cmd.iova = req.iova;
    int rc = sys_->Ioctl(fd(), uapi::kIommuIoasMapFile, &cmd);
    if (rc >= 0) return absl::OkStatus();
    // Kernels before 6.13 do not know the command (ENOTTY). Fall back to mapping the user
    // address of the same pages, for good.
    if (rc != -ENOTTY || req.user_va == nullptr) {
      return ErrnoStatus(-rc, name_, "IOMMU_IOAS_MAP_FILE");
    }
    has_map_file_ = false;
  }
  if (req.user_va == nullptr) {
    return ErrnoStatus(EOPNOTSUPP, name_, "IOMMU_IOAS_MAP", "no user mapping of the backing");
  }
  uapi::IommuIoasMap cmd{};
  cmd.size = sizeof(cmd);
  cmd.flags = req.flags | uapi::kIoasMapFixedIova;
  cmd.ioas_id = req.ioas.value();
  cmd.user_va = reinterpret_cast<uintptr_t>(req.user_va);
  cmd.length = req.length;
  cmd.iova = req.iova;
  int rc = sys_->Ioctl(fd(), uapi::kIommuIoasMap, &cmd);
  if (rc < 0) return ErrnoStatus(-rc, name_, "IOMMU_IOAS_MAP");
  return absl::OkStatus();
}

absl::Status Iommufd::Unmap(IoasId ioas, uint64_t iova, uint64_t length,
                            std::optional<uint64_t> held) {
  uapi::IommuIoasUnmap cmd{};
  cmd.size = sizeof(cmd);
  cmd.ioas_id = ioas.value();
  cmd.iova = iova;
  cmd.length = length;
  int rc = sys_->Ioctl(fd(), uapi::kIommuIoasUnmap, &cmd);
  if (rc < 0) {
    return ErrnoStatus(-rc, name_, "IOMMU_IOAS_UNMAP",
                       absl::StrCat("iova 0x", absl::Hex(iova), " length ", length));
  }
  // The kernel reports what it unmapped in length: all of the range for whole units, what the
  // caller holds where there are holes (partial units).
  const uint64_t want = held.value_or(length);
  if (want != 0 && cmd.length != want) {
    return ErrnoStatus(EIO, name_, "IOMMU_IOAS_UNMAP",
                       absl::StrCat("unmapped ", cmd.length, " bytes where ", want,
                                    " were held, at 0x", absl::Hex(iova), " length ", length));
  }
  return absl::OkStatus();
}

absl::Status Iommufd::SetDirtyTracking(HwptId hwpt, bool enable) {
  uapi::IommuHwptSetDirtyTracking cmd{};
  cmd.size = sizeof(cmd);
  cmd.flags = enable ? uapi::kDirtyTrackingEnable : 0;
  cmd.hwpt_id = hwpt.value();
  int rc = sys_->Ioctl(fd(), uapi::kIommuHwptSetDirtyTracking, &cmd);
  if (rc < 0) {
    return ErrnoStatus(
        -rc, name_, "IOMMU_HWPT_SET_DIRTY_TRACKING",
        -rc == EOPNOTSUPP ? absl::StrCat("HWPT ", hwpt.value(),
                                         " was not allocated with dirty tracking "
                                         "(IOMMU_HWPT_ALLOC_DIRTY_TRACKING), or the IOMMU has none")
                          : absl::StrCat("HWPT ", hwpt.value()));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Iommufd::TakeDirty(HwptId hwpt, uint64_t iova, uint64_t length,
                                        uint64_t page_size) {
  // One bit per page; a map unit is at most a few hundred pages (2 MiB of 4 KiB), so the bitmap
  // lives on the stack up to 4096 pages and is read in chunks beyond that.
  constexpr uint64_t kWords = 64;
  uint64_t bitmap[kWords];
  const uint64_t chunk = kWords * 64 * page_size;
  bool dirty = false;
  for (uint64_t at = iova; at < iova + length; at += chunk) {
    std::fill(std::begin(bitmap), std::end(bitmap), 0);
    uapi::IommuHwptGetDirtyBitmap cmd{};
    cmd.size = sizeof(cmd);
    cmd.hwpt_id = hwpt.value();
    cmd.iova = at;
    cmd.length = std::min(chunk, iova + length - at);
    cmd.page_size = page_size;
    cmd.data = reinterpret_cast<uintptr_t>(bitmap);
    int rc = sys_->Ioctl(fd(), uapi::kIommuHwptGetDirtyBitmap, &cmd);
    if (rc < 0) {
      return ErrnoStatus(
          -rc, name_, "IOMMU_HWPT_GET_DIRTY_BITMAP",
          absl::StrCat("HWPT ", hwpt.value(), " iova 0x", absl::Hex(at), " length ", cmd.length));
    }
    // Every chunk is read, even after a dirty one: reading is what clears the bits.
    for (uint64_t w : bitmap) dirty = dirty || w != 0;
  }
  return dirty;
}

}  // namespace iopfd
