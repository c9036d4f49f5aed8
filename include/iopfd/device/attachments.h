// A device's attachments and what iopfd may do to them behind the fault path: switch each
// between its IOPF-capable HWPT and its park HWPT (a drain), clear and restore Bus Master
// Enable, reset the function, route its VFIO interrupts. What a park means for the answers
// iopfd holds is the device's business (Device::Park); here is only the switching.
#ifndef IOPFD_DEVICE_ATTACHMENTS_H_
#define IOPFD_DEVICE_ATTACHMENTS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/base/ids.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/iommu/attachment_switch.h"
#include "iopfd/iommu/iommufd.h"
#include "iopfd/iommu/vfio_device.h"

namespace iopfd {

class Attachments {
 public:
  // One attachment (the device's, or one PASID's) and its two HWPTs.
  struct Attachment {
    AttachmentKey key;
    std::optional<uint32_t> pasid;
    HwptId iopf;
    HwptId park;
    bool parked = false;
  };

  // name names the device in errors.
  explicit Attachments(std::string name) : name_(std::move(name)) {}
  Attachments(const Attachments&) = delete;
  Attachments& operator=(const Attachments&) = delete;

  // Setup. The VFIO device (vfio mode, or adopt mode with adopt.device_fd) switches the
  // attachments; otherwise a switch module the owner provides does; otherwise nothing can.
  void SetVfio(VfioDevice vfio);
  void SetModule(std::unique_ptr<ModuleSwitch> module);
  void Add(const Attachment& a) { attachments_.push_back(a); }
  // The VFIO device, or nullptr (adopt mode without adopt.device_fd).
  VfioDevice* vfio() { return vfio_ ? &*vfio_ : nullptr; }
  const VfioDevice* vfio() const { return vfio_ ? &*vfio_ : nullptr; }

  // True when the attachments can be switched (a VFIO device or a switch module).
  bool can_switch() const { return switch_ != nullptr; }
  // True when the function can be reset (the VFIO device, or a module that exports a reset).
  bool can_reset() const { return switch_ != nullptr && switch_->can_reset(); }
  // The attachments' keys, in configuration order.
  std::vector<AttachmentKey> keys() const;
  // True when `which` (any, for nullopt) is parked.
  bool parked(std::optional<AttachmentKey> which) const;
  // True when the attachment of `pasid` (nullopt: the device's) is parked.
  bool parked_pasid(std::optional<uint32_t> pasid) const;

  // Switches `which` (every one when nullopt) to its park HWPT, calling on_parked for each one
  // that was not parked, right after its switch. Errors: FailedPrecondition when nothing can
  // switch; NotFound for an unknown attachment; the switch's error naming device, PASID and
  // errno (those parked before it stay parked).
  absl::Status Park(std::optional<AttachmentKey> which,
                    const std::function<void(const Attachment&)>& on_parked);
  // Puts the IOPF-capable HWPT back on `which` (every parked one when nullopt), calling
  // on_unparked for each. Errors as Park's.
  absl::Status Unpark(std::optional<AttachmentKey> which,
                      const std::function<void(const Attachment&)>& on_unparked);
  // Adopt mode, giving the device back: unparks what is parked, restores Bus Master Enable if
  // iopfd cleared it, and destroys the park HWPTs iopfd allocated in the owner's iommufd. One
  // still attached is left (logged); nothing fails.
  void GiveBack(Iommufd& iommufd, const std::function<void(const Attachment&)>& on_unparked);

  // Clears Bus Master Enable through the VFIO config region, remembering that iopfd did (only
  // then does RestoreBusMaster set it again). FailedPrecondition without the VFIO device, else
  // the step's error.
  absl::Status StopBusMaster();
  // Sets Bus Master Enable again if StopBusMaster cleared it; OK and nothing done otherwise.
  absl::Status RestoreBusMaster();
  bool bus_master_stopped() const { return bus_master_stopped_; }
  // OK when Bus Master Enable is still clear after StopBusMaster; FailedPrecondition naming
  // the device when something set it again meanwhile; else the read's error.
  absl::Status CheckBusMasterStillStopped();
  // VFIO_DEVICE_RESET, or the switch module's reset. FailedPrecondition when !can_reset().
  absl::Status Reset();

 private:
  std::string name_;
  std::optional<VfioDevice> vfio_;
  std::unique_ptr<ModuleSwitch> module_;
  AttachmentSwitch* switch_ = nullptr;  // one of the two, when the device can park
  std::vector<Attachment> attachments_;
  bool bus_master_stopped_ = false;  // iopfd cleared Bus Master Enable; it sets it back
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_ATTACHMENTS_H_
