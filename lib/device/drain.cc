#include "iopfd/device/drain.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {
// How long one synchronous flush may read: a device that never stops faulting cannot hold the
// loop (its requests go on being answered by the ring once it is re-armed).
constexpr uint64_t kFlushReadNs = 100'000'000;
}  // namespace

const char* DrainStateName(DrainState state) {
  switch (state) {
    case DrainState::kRunning:
      return "running";
    case DrainState::kHalting:
      return "halting";
    case DrainState::kFlushing:
      return "flushing";
    case DrainState::kResetting:
      return "resetting";
    case DrainState::kResuming:
      return "resuming";
    case DrainState::kHalted:
      return "halted";
    case DrainState::kQuarantined:
      return "quarantined";
    case DrainState::kDetached:
      return "detached";
  }
  return "unknown";
}

DrainController::DrainController(Device* device, DrainIo* io, DrainOptions options)
    : device_(device), io_(io), options_(options), alive_(std::make_shared<int>(0)) {}

DrainController::~DrainController() = default;

void DrainController::Enter(DrainState next, const std::string& cause) {
  DrainTransition t{state_, next, cause, epoch_};
  state_ = next;
  device_->RecordDrain(Device::DrainEvent::kTransition);
  LogFields fields = {{"DEVICE", device_->name()},
                      {"STATE", DrainStateName(next)},
                      {"PREVIOUS_STATE", DrainStateName(t.from)},
                      {"EPOCH", std::to_string(epoch_)},
                      {"CAUSE", cause}};
  if (scope_) fields.emplace_back("PASID", std::to_string(*scope_));  // a PASID drain
  Log(next == DrainState::kQuarantined ? LogLevel::kError : LogLevel::kInfo,
      absl::StrCat(device_->name(), ": ", DrainStateName(t.from), " -> ", DrainStateName(next),
                   " (", cause, ")"),
      fields);
  if (on_transition) on_transition(t);
}

absl::Status DrainController::Refuse(const char* request) const {
  return absl::FailedPreconditionError(
      absl::StrCat(device_->name(), ": cannot ", request, " while ", DrainStateName(state_)));
}

absl::Status DrainController::Drain(std::optional<AttachmentKey> attachment,
                                    const std::string& cause, uint64_t now_ns) {
  return Start(Goal::kDrain, attachment, cause, now_ns);
}

absl::Status DrainController::Reset(const std::string& cause, uint64_t now_ns) {
  return Start(Goal::kReset, std::nullopt, cause, now_ns);
}

absl::Status DrainController::Start(Goal goal, std::optional<AttachmentKey> scope,
                                    const std::string& cause, uint64_t now_ns) {
  if (!device_->can_park()) {
    return absl::UnimplementedError(
        absl::StrCat(device_->name(),
                     ": drains need a way to switch the device's attachments: vfio mode, or "
                     "in adopt mode adopt.device_fd or adopt.switch_module (without them the "
                     "owner holds the attachments)"));
  }
  if (options_.halt == HaltMethod::kBusMaster && !device_->can_stop_bus_master()) {
    return absl::UnimplementedError(
        absl::StrCat(device_->name(),
                     ": halt = \"bus-master\" needs the VFIO device fd (vfio mode, or "
                     "adopt.device_fd)"));
  }
  const bool resets = goal == Goal::kReset || options_.halt == HaltMethod::kReset;
  if (resets && !device_->can_reset()) {
    return absl::UnimplementedError(absl::StrCat(
        device_->name(),
        ": a reset needs the VFIO device fd (vfio mode, or adopt.device_fd) or a switch "
        "module that exports " IOPFD_RESET_SYMBOL "; this device's switch module does not"));
  }
  if (state_ != DrainState::kRunning) return Refuse(goal == Goal::kReset ? "reset" : "drain");
  if (scope) {
    bool known = false;
    for (AttachmentKey k : device_->attachment_keys()) known |= k == *scope;
    if (!known) {
      return absl::NotFoundError(
          absl::StrCat(device_->name(), ": no address space for PASID ", *scope));
    }
  }
  // A reset concerns the whole function; a drain with the reset method is a reset.
  if (goal == Goal::kDrain && options_.halt == HaltMethod::kReset) {
    goal = Goal::kReset;
    scope.reset();
  }
  goal_ = goal;
  scope_ = scope;
  Enter(DrainState::kHalting, cause);
  if (goal == Goal::kHold || options_.halt == HaltMethod::kReset) return Continue(cause);
  if (options_.halt == HaltMethod::kBusMaster) {
    // The DMA stop is iopfd's own: with Bus Master Enable clear the function issues no memory
    // requests. Page requests it may still send meet the park next and are answered at once.
    if (absl::Status st = device_->StopBusMaster(); !st.ok()) {
      return Quarantine(absl::StrCat("clear Bus Master Enable: ", st.message()));
    }
    return Continue(cause);
  }
  halt_deadline_ns_ = now_ns + options_.halt_timeout_ns;
  return absl::OkStatus();  // the owner's Halt continues
}

absl::Status DrainController::Halt(const std::string& cause, uint64_t now_ns) {
  if (state_ == DrainState::kHalting) return Continue(cause);
  if (state_ != DrainState::kRunning) return Refuse("halt");
  return Start(Goal::kHold, std::nullopt, cause, now_ns);
}

void DrainController::Tick(uint64_t now_ns) {
  if (state_ == DrainState::kHalting && options_.halt == HaltMethod::kOwner &&
      now_ns >= halt_deadline_ns_) {
    (void)Quarantine("the owner did not confirm its halt in time");
  }
}

absl::Status DrainController::FlushQueue(const std::string& when) {
  absl::Status st = device_->ReadAvailable(MonotonicNs() + kFlushReadNs);
  if (st.ok()) st = device_->WriteQueued();
  if (!st.ok()) return Quarantine(absl::StrCat("flush ", when, ": ", st.message()));
  return absl::OkStatus();
}

absl::Status DrainController::Continue(const std::string& cause) {
  Enter(DrainState::kFlushing, cause);
  if (!io_->Quiesce(*device_)) {
    return Quarantine("the fault queue's reader could not be stopped");
  }
  quiesced_ = true;
  // Answers already read are written first: their groups are still the function's, and the
  // park below would make them stale.
  if (absl::Status st = device_->WriteQueued(); !st.ok())
    return Quarantine(std::string(st.message()));
  if (absl::Status st = device_->Park(scope_); !st.ok()) {
    return Quarantine(absl::StrCat("park: ", st.message()));
  }
  // The park's auto-response answers what is on the fault queue when it runs, but a group the
  // IOMMU driver matched to the IOPF HWPT just before the replace can still be added to the
  // queue after it (find_fault_handler, then iommufd_fault_iopf_handler: docs/KERNEL_FACTS.md
  // section 2). Read now, it is answered while the function still holds its tag; and the
  // attachments a PASID drain leaves running keep being served meanwhile.
  if (absl::Status st = FlushQueue("after the park"); !st.ok()) return st;
  if (goal_ == Goal::kReset) {
    // The reset must meet a function whose DMA is stopped: if the owner set Bus Master Enable
    // again behind iopfd's back, the halt did not hold.
    if (absl::Status st = device_->CheckBusMasterStillStopped(); !st.ok()) {
      return Quarantine(std::string(st.message()));
    }
    Enter(DrainState::kResetting, cause);
    device_->RecordDrain(Device::DrainEvent::kFunctionReset);
    // An FLR takes 100 ms and more (PCIe: no config request for 100 ms after it), a switch
    // module's reset is the owner's code: neither may hold up the other devices' faults. The
    // device stays quiesced and parked meanwhile, so the loop has nothing of it to serve; the
    // job touches only the device's VFIO fd or module, and the device is not freed under it
    // (DeviceManager waits for it first).
    blocking_ = true;
    auto inline_result = std::make_shared<std::optional<absl::Status>>();
    std::weak_ptr<int> alive = alive_;
    Device* device = device_;
    io_->RunBlocking(
        *device_, [device] { return device->ResetFunction(); },
        [this, alive, cause, inline_result](const absl::Status& st) {
          if (alive.expired()) return;
          *inline_result = AfterReset(st, cause);
        });
    if (inline_result->has_value()) return **inline_result;
    return absl::OkStatus();  // RESETTING until the reset's result comes back
  }
  return Finish(cause);
}

absl::Status DrainController::AfterReset(const absl::Status& reset, const std::string& cause) {
  blocking_ = false;
  // Decided otherwise meanwhile (a failed recovery quarantined it, it went away): the reset's
  // result changes nothing more; the device stays where it is (parked).
  if (state_ != DrainState::kResetting) return absl::OkStatus();
  if (!reset.ok()) return Quarantine(absl::StrCat("reset: ", reset.message()));
  Enter(DrainState::kFlushing, "after the reset");
  // A group that raced the park may also land while the reset runs: the function forgot it.
  // Answered now, before the resume, the answer meets no group (the function discards an
  // unexpected index); read after the resume, it would complete a new group that reuses the
  // index (drain_test.cc has both races).
  if (absl::Status st = FlushQueue("after the reset"); !st.ok()) return st;
  return Finish(cause);
}

absl::Status DrainController::Finish(const std::string& cause) {
  // Nothing may be left owed now: the kernel answered the parked attachments' groups and what
  // iopfd held for them was dropped; everything else read was answered by the flush, and the
  // ring reads nothing while quiesced. A group still counted outstanding is a bookkeeping bug:
  // say so and count it (it is not silently carried into the next epoch).
  if (uint64_t owed = device_->stats().outstanding(); owed != 0) {
    device_->RecordDrain(Device::DrainEvent::kUnaccounted);
    Log(LogLevel::kError, absl::StrCat(device_->name(), ": INVARIANT: ", owed,
                                       " group(s) read and unaccounted for after the flush"));
  }
  if (goal_ == Goal::kHold) {
    io_->Rearm(*device_);  // other requests (none expected) are answered INVALID, refused
    quiesced_ = false;
    Enter(DrainState::kHalted, cause);
    goal_ = Goal::kNone;
    return absl::OkStatus();
  }
  return Resume(cause, 0);
}

absl::Status DrainController::Resume(const std::string& cause, uint64_t /*now_ns*/) {
  if (blocking_) {
    // Quarantined while its reset runs: the function is not back yet.
    return absl::FailedPreconditionError(absl::StrCat(device_->name(), ": cannot resume while ",
                                                      DrainStateName(state_),
                                                      ": its function reset is still running"));
  }
  const bool mid_drain = state_ == DrainState::kFlushing && goal_ != Goal::kNone;
  if (!mid_drain && state_ != DrainState::kHalted && state_ != DrainState::kQuarantined) {
    return Refuse("resume");
  }
  Enter(DrainState::kResuming, cause);
  const bool whole = !mid_drain || !scope_.has_value();
  if (absl::Status st = device_->Unpark(whole ? std::nullopt : scope_); !st.ok()) {
    return Quarantine(absl::StrCat("unpark: ", st.message()));
  }
  // DMA back on only once page requests have a handler again (the unpark above), and only
  // if iopfd turned it off.
  if (absl::Status st = device_->RestoreBusMaster(); !st.ok()) {
    return Quarantine(absl::StrCat("set Bus Master Enable: ", st.message()));
  }
  device_->SetQuarantined(false);
  ++epoch_;
  device_->RecordDrain(Device::DrainEvent::kCompleted, epoch_, mid_drain);
  goal_ = Goal::kNone;
  scope_.reset();
  io_->Rearm(*device_);
  quiesced_ = false;
  Enter(DrainState::kRunning, cause);
  return absl::OkStatus();
}

absl::Status DrainController::Quarantine(const std::string& why) {
  // Page requests stay off as far as iopfd can make them: every attachment parked (best
  // effort: the park may be what failed), everything answered INVALID, no mapping made.
  // The ring's reading stops first (a timeout or an outside failure comes with it running): no
  // write may be in flight for the park, and nothing read before it may slip past its fence.
  if (!quiesced_) quiesced_ = io_->Quiesce(*device_);
  // With the bus-master method iopfd stops the function's DMA itself (best effort: it may be
  // what failed) before the park, whatever led here: a quarantined function issues nothing.
  std::string bus_master;
  // Not while the function resets (the kernel holds config access for the reset's length, and
  // the drain cleared bus mastering before it anyway).
  if (options_.halt == HaltMethod::kBusMaster && device_->can_stop_bus_master() && !blocking_) {
    if (absl::Status st = device_->StopBusMaster(); !st.ok()) {
      bus_master = absl::StrCat("; clear Bus Master Enable: ", st.message());
    }
  }
  absl::Status park = device_->Park(std::nullopt);
  device_->SetQuarantined(true);
  (void)device_->WriteQueued();
  if (quiesced_) {
    io_->Rearm(*device_);  // what still arrives is answered INVALID (refused)
    quiesced_ = false;
  }
  goal_ = Goal::kNone;
  scope_.reset();
  device_->RecordDrain(Device::DrainEvent::kQuarantine);
  Enter(DrainState::kQuarantined,
        absl::StrCat(why, bus_master, park.ok() ? "" : absl::StrCat("; park: ", park.message())));
  return absl::AbortedError(absl::StrCat(device_->name(), ": quarantined: ", why));
}

void DrainController::Fail(const std::string& cause) {
  if (state_ == DrainState::kDetached) return;
  (void)Quarantine(cause);
}

void DrainController::Detach(const std::string& cause) {
  if (device_->can_park()) (void)device_->Park(std::nullopt);
  goal_ = Goal::kNone;
  Enter(DrainState::kDetached, cause);
}

}  // namespace iopfd
