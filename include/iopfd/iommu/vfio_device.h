// A VFIO device cdev bound to an iommufd: attach, bus mastering, interrupts, reset.
#ifndef IOPFD_IOMMU_VFIO_DEVICE_H_
#define IOPFD_IOMMU_VFIO_DEVICE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/ids.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/iommu/attachment_switch.h"
#include "iopfd/iommu/iommufd.h"

namespace iopfd {

// A VFIO device cdev bound to an iommufd (vfio attach mode, or handed over in adopt mode).
class VfioDevice : public AttachmentSwitch {
 public:
  // Opens `cdev` (/dev/vfio/devices/vfioN) and binds it to iommufd (VFIO_DEVICE_BIND_IOMMUFD).
  // Errors name the device, the step and the errno.
  static absl::StatusOr<VfioDevice> Bind(Syscalls* sys, const std::string& name,
                                         const std::string& cdev, const Iommufd& iommufd);
  // VFIO_DEVICE_ATTACH_IOMMUFD_PT of hwpt, on `pasid` when given (VFIO_DEVICE_ATTACH_PASID).
  // On an attached device or PASID this replaces the HWPT (a different one: attaching the same
  // HWPT again does nothing at all, docs/KERNEL_FACTS.md section 1).
  absl::Status Attach(HwptId hwpt, std::optional<uint32_t> pasid) override;
  // VFIO_DEVICE_RESET: a function level reset (or the device's own). The function forgets the
  // page request tags it issued; the kernel answers nothing on its behalf (park first).
  absl::Status Reset() override;
  bool can_reset() const override { return true; }
  DeviceId id() const { return id_; }
  // Sets or clears Bus Master Enable in the command register, through the config region
  // (vfio-pci passes that bit to the device: docs/KERNEL_FACTS.md section 5). With it clear
  // the function may issue no memory requests: its DMA stops. Returns whether the bit was set
  // before (nothing is written when it already has the wanted value). Errors name the device,
  // the step (region info, config read or write) and the errno.
  absl::StatusOr<bool> SetBusMaster(bool enable);
  // Returns whether Bus Master Enable is set now; errors as SetBusMaster's.
  absl::StatusOr<bool> BusMaster();
  // VFIO_DEVICE_SET_IRQS: signal `eventfd` on the device's interrupt `index` (ERR or REQ).
  absl::Status SetIrqEventfd(uint32_t index, int eventfd);
  // Wraps a device fd its owner opened and bound to the iommufd as device `id` (adopt mode).
  static VfioDevice FromFd(UniqueFd fd, Syscalls* sys, std::string name, DeviceId id) {
    return VfioDevice(std::move(fd), sys, std::move(name), id);
  }
  // Gives the fd back (adopt mode hands it on); unusable afterwards.
  UniqueFd ReleaseFd() { return std::move(fd_); }
  // Returns the device fd (-1 after ReleaseFd); it stays this object's.
  int fd() const { return fd_.get(); }

 private:
  VfioDevice(UniqueFd fd, Syscalls* sys, std::string name, DeviceId id)
      : fd_(std::move(fd)), sys_(sys), name_(std::move(name)), id_(id) {}
  // The command register (host order). Errors as SetBusMaster's.
  absl::StatusOr<uint16_t> ReadCommand();
  UniqueFd fd_;
  Syscalls* sys_;
  std::string name_;
  DeviceId id_;
  std::optional<uint64_t> config_offset_;  // of the config region, once asked
};

// Resolves a PCI address (DDDD:BB:DD.F) to its VFIO cdev through
// /sys/bus/pci/devices/<addr>/vfio-dev/vfioN. sysfs_root is "/sys" except in tests.
// Errors: NotFound when the device does not exist or is not bound to a VFIO driver with cdev
// support.
absl::StatusOr<std::string> VfioCdevForPci(const std::string& pci,
                                           const std::string& sysfs_root = "/sys");

}  // namespace iopfd

#endif  // IOPFD_IOMMU_VFIO_DEVICE_H_
