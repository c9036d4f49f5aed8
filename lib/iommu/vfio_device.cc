#include "iopfd/iommu/vfio_device.h"

#include <endian.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/uapi.h"

namespace iopfd {

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
