#include <cerrno>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/iommu/attachment_switch.h"

namespace iopfd {

absl::StatusOr<std::unique_ptr<ModuleSwitch>> ModuleSwitch::Load(Syscalls* sys, std::string name,
                                                                 const std::string& path,
                                                                 std::string target, int iommufd,
                                                                 DeviceId device) {
  std::string error;
  Syscalls::SwitchModule module = sys->LoadSwitchModule(path, &error);
  if (module.attach == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(name, ": switch module ", path, ": ", error));
  }
  return std::unique_ptr<ModuleSwitch>(
      new ModuleSwitch(module, std::move(name), path, std::move(target), iommufd, device));
}

iopfd_switch_request ModuleSwitch::Request(HwptId hwpt, std::optional<uint32_t> pasid) const {
  iopfd_switch_request req{};
  req.size = sizeof(req);
  req.iommufd = iommufd_;
  req.target = target_.c_str();
  req.device_id = device_.value();
  req.pasid = pasid.value_or(IOPFD_SWITCH_NO_PASID);
  req.hwpt_id = hwpt.value();
  return req;
}

absl::Status ModuleSwitch::Attach(HwptId hwpt, std::optional<uint32_t> pasid) {
  iopfd_switch_request req = Request(hwpt, pasid);
  if (int rc = module_.attach(&req); rc < 0) {
    return ErrnoStatus(-rc, name_,
                       absl::StrCat("switch module ", path_, " (HWPT ", hwpt.value(),
                                    pasid ? absl::StrCat(", pasid ", *pasid) : std::string(), ")"));
  }
  return absl::OkStatus();
}

absl::Status ModuleSwitch::Reset() {
  if (module_.reset == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(name_, ": switch module ", path_, " does not export " IOPFD_RESET_SYMBOL));
  }
  iopfd_switch_request req = Request(HwptId(), std::nullopt);
  if (int rc = module_.reset(&req); rc < 0) {
    return ErrnoStatus(-rc, name_, absl::StrCat("switch module ", path_, " reset"));
  }
  return absl::OkStatus();
}

}  // namespace iopfd
