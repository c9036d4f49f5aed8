// Vfio mode: iopfd opens /dev/iommu, binds the VFIO cdev, and allocates and attaches an IOAS
// and an IOPF-capable HWPT per address space (and a park HWPT beside each, for drains).
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/uapi.h"
#include "iopfd/device/device.h"
#include "iopfd/service/log.h"

namespace iopfd {

absl::Status Device::SetUpVfio(DeviceId* dev_id, std::vector<IoasId>* ioas) {
  const DeviceConfig& config = config_;
  const std::string& name = config.name;
  std::string cdev = config.vfio.cdev;
  if (cdev.empty()) {
    auto resolved = VfioCdevForPci(config.vfio.pci);
    if (!resolved.ok()) {
      return absl::NotFoundError(
          absl::StrCat(name, ": ", std::string(resolved.status().message())));
    }
    cdev = *resolved;
  }
  auto iommufd = Iommufd::Open(sys_, name);
  if (!iommufd.ok()) return iommufd.status();
  iommufd_.emplace(*std::move(iommufd));
  auto vfio = VfioDevice::Bind(sys_, name, cdev, *iommufd_);
  if (!vfio.ok()) return vfio.status();
  attachments_.SetVfio(*std::move(vfio));
  VfioDevice& device = *attachments_.vfio();
  *dev_id = device.id();
  auto fault = iommufd_->FaultQueueAlloc();
  if (!fault.ok()) return fault.status();
  fault_fd_ = std::move(fault->second);
  const bool uses_pasid = UsesPasid(config);
  // Dirty bits where the IOMMU has them (the pager's second chance, docs/PAGING.md). Without
  // the capability a HWPT asking for them would be refused; without the answer, none is asked.
  bool iommu_dirty = false;
  if (auto caps = iommufd_->HwCapabilities(*dev_id); caps.ok()) {
    iommu_dirty = (*caps & uapi::kHwCapDirtyTracking) != 0;
  } else {
    Log(LogLevel::kInfo, absl::StrCat(caps.status().message(), "; no dirty bits"),
        {{"DEVICE", name}});
  }
  dirty_capable_.assign(config.spaces.size(), std::nullopt);
  for (size_t i = 0; i < config.spaces.size(); ++i) {
    const SpaceConfig& s = config.spaces[i];
    auto id = iommufd_->IoasAlloc();
    if (!id.ok()) return id.status();
    (*ioas)[i] = *id;
    const bool dirty = iommu_dirty && s.WantsDirtyBits(AttachMode::kVfio);
    if (!iommu_dirty && s.dirty_tracking.value_or(false)) {
      Log(LogLevel::kWarning,
          absl::StrCat(name, ": space[", i,
                       "].dirty_tracking = true, but the IOMMU has no dirty tracking "
                       "(IOMMU_GET_HW_INFO); evicting without dirty bits"),
          {{"DEVICE", name}});
    }
    auto hwpt = iommufd_->HwptAlloc(*dev_id, *id, fault->first, uses_pasid, dirty);
    if (!hwpt.ok()) return hwpt.status();
    if (dirty) dirty_capable_[i] = *hwpt;
    // The park HWPT: same IOAS, so the same mappings, but no fault queue. Switching to it
    // makes the kernel flush the attachment's page requests (a drain), and back resumes.
    auto park = iommufd_->HwptAlloc(*dev_id, *id, FaultId(), uses_pasid);
    if (!park.ok()) return park.status();
    absl::Status st = device.Attach(*hwpt, s.pasid);
    if (!st.ok()) return st;
    attachments_.Add({s.pasid ? *s.pasid : kNoPasidAttachment, s.pasid, *hwpt, *park, false});
  }
  return absl::OkStatus();
}

}  // namespace iopfd
