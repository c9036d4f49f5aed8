// What switches a device's attachments between their HWPTs (a drain parks and unparks through
// it): the VFIO device (vfio_device.h) or a switch module the owner provides.
#ifndef IOPFD_IOMMU_ATTACHMENT_SWITCH_H_
#define IOPFD_IOMMU_ATTACHMENT_SWITCH_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "iopfd/base/ids.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/switch_module.h"

namespace iopfd {

// What switches a device's attachments between HWPTs (drains park and unpark through it).
class AttachmentSwitch {
 public:
  virtual ~AttachmentSwitch() = default;
  // Attaches hwpt to the device (on `pasid` when given), replacing the HWPT attached there.
  // Errors name the device, the operation and the errno.
  virtual absl::Status Attach(HwptId hwpt, std::optional<uint32_t> pasid) = 0;
  // Returns true when Reset can work.
  virtual bool can_reset() const = 0;
  // Resets the function (it forgets its page request tags). Errors name the device, the
  // operation and the errno; FailedPrecondition when it cannot reset.
  virtual absl::Status Reset() = 0;
};

// A switch module (iopfd/switch_module.h) the owner of an adopt-mode device provides.
class ModuleSwitch : public AttachmentSwitch {
 public:
  // Loads the module at `path` through sys. Errors: FailedPrecondition naming the device, the
  // path and what dlopen/dlsym said.
  static absl::StatusOr<std::unique_ptr<ModuleSwitch>> Load(Syscalls* sys, std::string name,
                                                            const std::string& path,
                                                            std::string target, int iommufd,
                                                            DeviceId device);
  absl::Status Attach(HwptId hwpt, std::optional<uint32_t> pasid) override;
  bool can_reset() const override { return module_.reset != nullptr; }
  absl::Status Reset() override;

 private:
  ModuleSwitch(Syscalls::SwitchModule module, std::string name, std::string path,
               std::string target, int iommufd, DeviceId device)
      : module_(module),
        name_(std::move(name)),
        path_(std::move(path)),
        target_(std::move(target)),
        iommufd_(iommufd),
        device_(device) {}
  iopfd_switch_request Request(HwptId hwpt, std::optional<uint32_t> pasid) const;
  Syscalls::SwitchModule module_;
  std::string name_, path_, target_;
  int iommufd_;
  DeviceId device_;
};

}  // namespace iopfd

#endif  // IOPFD_IOMMU_ATTACHMENT_SWITCH_H_
