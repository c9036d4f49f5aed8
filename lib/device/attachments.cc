#include "iopfd/device/attachments.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/service/log.h"

namespace iopfd {

void Attachments::SetVfio(VfioDevice vfio) {
  vfio_.emplace(std::move(vfio));
  switch_ = &*vfio_;
}

void Attachments::SetModule(std::unique_ptr<ModuleSwitch> module) {
  module_ = std::move(module);
  switch_ = module_.get();
}

std::vector<AttachmentKey> Attachments::keys() const {
  std::vector<AttachmentKey> out;
  out.reserve(attachments_.size());
  for (const Attachment& a : attachments_) out.push_back(a.key);
  return out;
}

bool Attachments::parked(std::optional<AttachmentKey> which) const {
  for (const Attachment& a : attachments_) {
    if ((!which || a.key == *which) && a.parked) return true;
  }
  return false;
}

bool Attachments::parked_pasid(std::optional<uint32_t> pasid) const {
  for (const Attachment& a : attachments_) {
    if (a.parked && a.pasid == pasid) return true;
  }
  return false;
}

absl::Status Attachments::Park(std::optional<AttachmentKey> which,
                               const std::function<void(const Attachment&)>& on_parked) {
  if (switch_ == nullptr) {
    return absl::FailedPreconditionError(
        name_ +
        ": cannot park: the attachments belong to the owner (adopt mode without "
        "adopt.device_fd or adopt.switch_module)");
  }
  bool found = false;
  for (Attachment& a : attachments_) {
    if (which && a.key != *which) continue;
    found = true;
    if (a.parked) continue;
    absl::Status st = switch_->Attach(a.park, a.pasid);
    if (!st.ok()) return st;
    a.parked = true;
    on_parked(a);
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat(name_, ": no attachment for PASID ", *which));
  }
  return absl::OkStatus();
}

absl::Status Attachments::Unpark(std::optional<AttachmentKey> which,
                                 const std::function<void(const Attachment&)>& on_unparked) {
  if (switch_ == nullptr) {
    return absl::FailedPreconditionError(
        name_ +
        ": cannot unpark: the attachments belong to the owner (adopt mode without "
        "adopt.device_fd or adopt.switch_module)");
  }
  bool found = false;
  for (Attachment& a : attachments_) {
    if (which && a.key != *which) continue;
    found = true;
    if (!a.parked) continue;
    absl::Status st = switch_->Attach(a.iopf, a.pasid);
    if (!st.ok()) return st;
    a.parked = false;
    on_unparked(a);
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat(name_, ": no attachment for PASID ", *which));
  }
  return absl::OkStatus();
}

void Attachments::GiveBack(Iommufd& iommufd,
                           const std::function<void(const Attachment&)>& on_unparked) {
  // A parked attachment goes back to the owner's IOPF-capable HWPT first (a reload restart, a
  // Detach of a halted device): the owner gets its device as it handed it over, and the park
  // HWPT is free to go.
  if (switch_ != nullptr && parked(std::nullopt)) {
    if (absl::Status st = Unpark(std::nullopt, on_unparked); !st.ok()) {
      Log(LogLevel::kWarning, absl::StrCat(st.message(), " (giving the device back)"));
    }
  }
  // And with bus mastering as it was handed over (a quarantine or a restart mid-drain leaves
  // it clear): only after the unpark, so its page requests have a handler; a device left
  // parked keeps it clear.
  if (!parked(std::nullopt)) {
    if (absl::Status st = RestoreBusMaster(); !st.ok()) {
      Log(LogLevel::kWarning, absl::StrCat(st.message(), " (giving the device back)"));
    }
  }
  for (Attachment& a : attachments_) {
    if (!a.park.valid()) continue;
    absl::Status st = iommufd.Destroy(a.park.value());
    if (!st.ok()) {
      // Still attached (the device is left parked, say after a quarantine): the owner's replace
      // or its closing the iommufd frees it.
      Log(LogLevel::kWarning,
          absl::StrCat(std::string(st.message()), " (park HWPT ", a.park.value(),
                       a.parked ? ", still attached" : "", ")"));
    }
    a.park = HwptId();
  }
}

absl::Status Attachments::StopBusMaster() {
  if (!vfio_) {
    return absl::FailedPreconditionError(name_ + ": no VFIO device fd for Bus Master Enable");
  }
  absl::StatusOr<bool> was = vfio_->SetBusMaster(false);
  if (!was.ok()) return was.status();
  bus_master_stopped_ = bus_master_stopped_ || *was;
  return absl::OkStatus();
}

absl::Status Attachments::RestoreBusMaster() {
  if (!bus_master_stopped_) return absl::OkStatus();
  if (!vfio_) {
    return absl::FailedPreconditionError(name_ + ": no VFIO device fd for Bus Master Enable");
  }
  absl::StatusOr<bool> was = vfio_->SetBusMaster(true);
  if (!was.ok()) return was.status();
  bus_master_stopped_ = false;
  return absl::OkStatus();
}

absl::Status Attachments::CheckBusMasterStillStopped() {
  if (!bus_master_stopped_ || !vfio_) return absl::OkStatus();
  absl::StatusOr<bool> on = vfio_->BusMaster();
  if (!on.ok()) return on.status();
  if (*on) {
    return absl::FailedPreconditionError(
        name_ +
        ": Bus Master Enable was set again during the drain (by the device's owner?): "
        "its DMA did not stay stopped");
  }
  return absl::OkStatus();
}

absl::Status Attachments::Reset() {
  if (!can_reset()) {
    return absl::FailedPreconditionError(
        name_ + ": cannot reset: iopfd holds no VFIO device fd and no switch module reset");
  }
  return switch_->Reset();
}

}  // namespace iopfd
