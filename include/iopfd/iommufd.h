// One iommufd context (/dev/iommu, opened or inherited) and the objects iopfd makes in it.
#ifndef IOPFD_IOMMUFD_H_
#define IOPFD_IOMMUFD_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "iopfd/address_space.h"
#include "iopfd/fd.h"
#include "iopfd/ids.h"
#include "iopfd/syscalls.h"

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
  absl::StatusOr<HwptId> HwptAlloc(DeviceId dev, IoasId ioas, FaultId fault, bool pasid_capable);
  // IOMMU_DESTROY of any object id.
  absl::Status Destroy(uint32_t id);
  // Maps req at its fixed IOVA: IOMMU_IOAS_MAP_FILE from req.fd, or, on a kernel without it
  // (ENOTTY/EOPNOTSUPP, remembered), IOMMU_IOAS_MAP from req.user_va. AlreadyExists (EEXIST)
  // when part of the range is mapped.
  absl::Status Map(const MapRequest& req);

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

 private:
  Iommufd* iommufd_;
};

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

#endif  // IOPFD_IOMMUFD_H_
