#include "iopfd/iommufd.h"

#include <endian.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "iopfd/errors.h"
#include "iopfd/uapi.h"

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

absl::StatusOr<HwptId> Iommufd::HwptAlloc(DeviceId dev, IoasId ioas, FaultId fault,
                                          bool pasid_capable) {
  uapi::IommuHwptAlloc cmd{};
  cmd.size = sizeof(cmd);
  cmd.dev_id = dev.value();
  cmd.pt_id = ioas.value();
  if (fault.valid()) {
    cmd.flags |= uapi::kHwptFaultIdValid;
    cmd.fault_id = fault.value();
  }
  if (pasid_capable) cmd.flags |= uapi::kHwptAllocPasid;
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

absl::StatusOr<VfioDevice> VfioDevice::Bind(Syscalls* sys, const std::string& name,
                                            const std::string& cdev, const Iommufd& iommufd) {
  int fd = sys->Open(cdev.c_str(), O_RDWR);
  if (fd < 0) return ErrnoStatus(-fd, name, "open " + cdev);
  UniqueFd dev_fd(fd);
  uapi::VfioDeviceBindIommufd bind{};
  bind.argsz = sizeof(bind);
  bind.iommufd = iommufd.fd();
  int rc = sys->Ioctl(dev_fd.get(), uapi::kVfioDeviceBindIommufd, &bind);
  if (rc < 0) return ErrnoStatus(-rc, name, "VFIO_DEVICE_BIND_IOMMUFD");
  return VfioDevice(std::move(dev_fd), sys, name, DeviceId(bind.out_devid));
}

absl::Status VfioDevice::Attach(HwptId hwpt, std::optional<uint32_t> pasid) {
  uapi::VfioDeviceAttachIommufdPt cmd{};
  cmd.argsz = sizeof(cmd);
  cmd.pt_id = hwpt.value();
  if (pasid.has_value()) {
    cmd.flags = uapi::kVfioDeviceAttachPasid;
    cmd.pasid = *pasid;
  }
  int rc = sys_->Ioctl(fd_.get(), uapi::kVfioDeviceAttachIommufdPt, &cmd);
  if (rc < 0) {
    return ErrnoStatus(-rc, name_,
                       pasid ? absl::StrCat("VFIO_DEVICE_ATTACH_IOMMUFD_PT pasid ", *pasid)
                             : "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  }
  return absl::OkStatus();
}

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

absl::StatusOr<uint16_t> VfioDevice::ReadCommand() {
  if (!config_offset_) {
    uapi::VfioRegionInfo info{};
    info.argsz = sizeof(info);
    info.index = uapi::kVfioPciConfigRegionIndex;
    int rc = sys_->Ioctl(fd_.get(), uapi::kVfioDeviceGetRegionInfo, &info);
    if (rc < 0) return ErrnoStatus(-rc, name_, "VFIO_DEVICE_GET_REGION_INFO (config)");
    config_offset_ = info.offset;
  }
  uint16_t le = 0;
  ssize_t n = sys_->Pread(fd_.get(), &le, sizeof(le), *config_offset_ + uapi::kPciCommand);
  if (n != static_cast<ssize_t>(sizeof(le))) {
    return ErrnoStatus(n < 0 ? static_cast<int>(-n) : EIO, name_, "read PCI command register");
  }
  // Config space is little-endian; vfio-pci hands it over as it is (vfio_config_do_rw).
  return le16toh(le);
}

absl::StatusOr<bool> VfioDevice::BusMaster() {
  absl::StatusOr<uint16_t> command = ReadCommand();
  if (!command.ok()) return command.status();
  return (*command & uapi::kPciCommandMaster) != 0;
}

absl::StatusOr<bool> VfioDevice::SetBusMaster(bool enable) {
  absl::StatusOr<uint16_t> command = ReadCommand();
  if (!command.ok()) return command.status();
  const bool was = (*command & uapi::kPciCommandMaster) != 0;
  if (was == enable) return was;
  // A read-modify-write of the whole register: the owner must not write it meanwhile (the
  // drain contract, docs/DRAIN.md), or one of the two writes is lost.
  const uint16_t next = enable ? (*command | uapi::kPciCommandMaster)
                               : static_cast<uint16_t>(*command & ~uapi::kPciCommandMaster);
  const uint16_t le = htole16(next);
  ssize_t n = sys_->Pwrite(fd_.get(), &le, sizeof(le), *config_offset_ + uapi::kPciCommand);
  if (n != static_cast<ssize_t>(sizeof(le))) {
    return ErrnoStatus(n < 0 ? static_cast<int>(-n) : EIO, name_,
                       enable ? "set Bus Master Enable" : "clear Bus Master Enable");
  }
  return was;
}

absl::Status VfioDevice::SetIrqEventfd(uint32_t index, int eventfd) {
  uapi::VfioIrqSetEventfd set{};
  set.argsz = sizeof(set);
  set.flags = uapi::kVfioIrqSetDataEventfd | uapi::kVfioIrqSetActionTrigger;
  set.index = index;
  set.start = 0;
  set.count = 1;
  set.eventfd = eventfd;
  int rc = sys_->Ioctl(fd_.get(), uapi::kVfioDeviceSetIrqs, &set);
  if (rc < 0) return ErrnoStatus(-rc, name_, absl::StrCat("VFIO_DEVICE_SET_IRQS index ", index));
  return absl::OkStatus();
}

absl::Status VfioDevice::Reset() {
  int rc = sys_->Ioctl(fd_.get(), uapi::kVfioDeviceReset, nullptr);
  if (rc < 0) return ErrnoStatus(-rc, name_, "VFIO_DEVICE_RESET");
  return absl::OkStatus();
}

absl::StatusOr<std::string> VfioCdevForPci(const std::string& pci, const std::string& sysfs_root) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(sysfs_root) / "bus/pci/devices" / pci / "vfio-dev";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string leaf = entry.path().filename().string();
    if (leaf.rfind("vfio", 0) == 0) return "/dev/vfio/devices/" + leaf;
  }
  return absl::NotFoundError(
      absl::StrCat(pci, ": no VFIO cdev under ", dir.string(),
                   ec ? absl::StrCat(" (", ec.message(), ")") : std::string(),
                   ": is the device bound to vfio-pci on a kernel with CONFIG_VFIO_DEVICE_CDEV?"));
}

}  // namespace iopfd
