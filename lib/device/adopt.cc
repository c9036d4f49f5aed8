// Adopt mode: the owner (a VMM) set the device up and hands iopfd its iommufd, its fault queue
// and, to let iopfd drain it, its VFIO device fd or a switch module.
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/device/device.h"

namespace iopfd {
namespace {

// Takes the inherited fd a config key names, or NotFound naming the device and the key.
absl::StatusOr<UniqueFd> TakeNamed(ListenFds* fds, const std::string& device, const char* key,
                                   const std::string& fd_name) {
  auto fd = fds->Take(fd_name);
  if (!fd.ok()) {
    return absl::NotFoundError(
        absl::StrCat(device, ": ", key, ": ", std::string(fd.status().message())));
  }
  return fd;
}

}  // namespace

absl::Status Device::SetUpAdopt(ListenFds* fds, DeviceId* dev_id, std::vector<IoasId>* ioas) {
  const DeviceConfig& config = config_;
  const std::string& name = config.name;
  auto iommufd = TakeNamed(fds, name, "iommufd_fd", config.adopt.iommufd_fd);
  if (!iommufd.ok()) return iommufd.status();
  iommufd_.emplace(*std::move(iommufd), sys_, name);
  auto fault = TakeNamed(fds, name, "fault_fd", config.adopt.fault_fd);
  if (!fault.ok()) return fault.status();
  fault_fd_ = *std::move(fault);
  *dev_id = DeviceId(config.adopt.device_id);
  for (size_t i = 0; i < config.spaces.size(); ++i) (*ioas)[i] = IoasId(config.spaces[i].ioas_id);
  if (!config.adopt.device_fd.empty()) {
    auto dev_fd = TakeNamed(fds, name, "device_fd", config.adopt.device_fd);
    if (!dev_fd.ok()) return dev_fd.status();
    attachments_.SetVfio(VfioDevice::FromFd(*std::move(dev_fd), sys_, name, *dev_id));
  } else if (!config.adopt.switch_module.empty()) {
    auto module = ModuleSwitch::Load(sys_, name, config.adopt.switch_module,
                                     config.adopt.switch_target, iommufd_->fd(), *dev_id);
    if (!module.ok()) return module.status();
    attachments_.SetModule(*std::move(module));
    if (config.drain.halt == HaltMethod::kReset && !attachments_.can_reset()) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, ": drain.halt = \"reset\" but the switch module ",
                       config.adopt.switch_module, " does not export " IOPFD_RESET_SYMBOL));
    }
  }
  if (!attachments_.can_switch()) return absl::OkStatus();  // the owner parks; iopfd cannot
  // The owner's HWPTs were allocated PASID-capable when it uses PASIDs (the kernel insists
  // every domain of such a device is); the park HWPTs must match.
  for (size_t i = 0; i < config.spaces.size(); ++i) {
    const SpaceConfig& s = config.spaces[i];
    auto park = iommufd_->HwptAlloc(*dev_id, (*ioas)[i], FaultId(), UsesPasid(config));
    if (!park.ok()) return park.status();
    attachments_.Add(
        {s.pasid ? *s.pasid : kNoPasidAttachment, s.pasid, HwptId(s.hwpt_id), *park, false});
  }
  return absl::OkStatus();
}

void Device::DestroyParkHwpts() {
  if (!iommufd_ || iommufd_->fd() < 0) return;
  attachments_.GiveBack(*iommufd_, [this](const Attachments::Attachment& a) {
    if (!quarantined_) SetRefusing(a.pasid, false);
  });
}

}  // namespace iopfd
