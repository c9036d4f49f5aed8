// The drain state machine of one device: halt page requests, flush every outstanding tag, and
// resume, in step with device resets, so that a stale answer never meets a reused tag
// (shared/reference/000_be90ba70f49c598f.txt; docs/KERNEL_FACTS.md for the kernel's part).
//
//   RUNNING -> HALTING -> FLUSHING -> (RESETTING -> FLUSHING) -> RESUMING -> RUNNING
//                                  -> HALTED (held by Halt until Resume)
//   any -> QUARANTINED (a step failed or the owner never confirmed its halt; Resume leaves it)
//   any -> DETACHED (the device is going away)
//
// HALTING is the DMA stop, by the device's halt method: `owner` waits for the owner's Halt
// (with a timeout); `reset` lets the function level reset that follows the park be the stop.
// FLUSHING parks the attachments (the kernel answers INVALID to every group of them, queued or
// read), drops what iopfd held for them unwritten (their cookies may already name new groups),
// and reads the queue empty, answering what other attachments sent. RESETTING is the FLR, after
// the park so that nothing queued before it can be answered to a function that forgot it.
// RESUMING puts the IOPF-capable HWPTs back with a new epoch.
#ifndef IOPFD_DEVICE_DRAIN_H_
#define IOPFD_DEVICE_DRAIN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "iopfd/device/device.h"
#include "iopfd/fault/response_queue.h"

namespace iopfd {

enum class DrainState : uint8_t {
  kRunning,
  kHalting,
  kFlushing,
  kResetting,
  kResuming,
  kHalted,
  kQuarantined,
  kDetached,
};

// Returns "running", "halting", ... for logs, ListDevices and Monitor.
const char* DrainStateName(DrainState state);

// HaltMethod is in config.h (a device file's [drain] halt).
struct DrainOptions {
  HaltMethod halt = HaltMethod::kOwner;
  uint64_t halt_timeout_ns = 10'000'000'000;  // owner: how long to wait for Halt
};

// Returns the options a device file's [drain] table asks for.
inline DrainOptions DrainOptionsOf(const DrainConfig& c) {
  return {c.halt, uint64_t{c.halt_timeout_ms} * 1'000'000};
}

// One state change and why it happened.
struct DrainTransition {
  DrainState from;
  DrainState to;
  std::string cause;
  uint64_t epoch;  // the device's epoch after the change
};

// What the controller needs from whoever reads the device's fault queue: to stop and restart
// that reading, so that it may read and write the fault fd itself in between.
class DrainIo {
 public:
  virtual ~DrainIo() = default;
  // Returns false when the reader could not be stopped (its operations are still in flight).
  virtual bool Quiesce(Device& device) = 0;
  virtual void Rearm(Device& device) = 0;
  // Runs `job`, a step that may block for long (a function reset of `device`), without
  // holding up the other devices' faults, then `done` with its result from the loop's thread.
  // The default runs both now (tests that want every step synchronous).
  virtual void RunBlocking(const Device& /*device*/, std::function<absl::Status()> job,
                           std::function<void(absl::Status)> done) {
    std::function<absl::Status()> run = std::move(job);
    std::function<void(absl::Status)> finish = std::move(done);
    finish(run());
  }
  // Makes sure no job of `device` is left (waits for it, or runs it now) and calls its `done`
  // now. Other devices' jobs are left alone.
  virtual void FinishBlocking(const Device& /*device*/) {}
};

// Per device. Not thread-safe: used from the fault loop's thread. The device must be able to
// park (vfio mode): Drain, Reset and Halt fail with Unimplemented otherwise.
class DrainController {
 public:
  DrainController(Device* device, DrainIo* io, DrainOptions options);
  // A reset's result that comes back afterwards is ignored.
  ~DrainController();
  DrainController(const DrainController&) = delete;
  DrainController& operator=(const DrainController&) = delete;

  DrainState state() const { return state_; }
  // Incremented at every resume: answers of an older epoch are never written after one.
  uint64_t epoch() const { return epoch_; }

  // Drains `attachment` (every attachment when nullopt) and resumes. From RUNNING only, else
  // FailedPrecondition naming the state. With the owner method it returns in HALTING, and the
  // owner's Halt continues it; with the reset and bus-master methods it runs to RUNNING (or
  // QUARANTINED) now.
  absl::Status Drain(std::optional<AttachmentKey> attachment, const std::string& cause,
                     uint64_t now_ns);
  // Halt, park, FLR, flush again, resume. From RUNNING only. The FLR runs through
  // DrainIo::RunBlocking: when that is asynchronous the call returns in RESETTING, and the
  // drain goes on when the reset's result comes back.
  absl::Status Reset(const std::string& cause, uint64_t now_ns);
  // In HALTING: the owner confirms its DMA is stopped, and the drain or reset goes on. In
  // RUNNING: halt page requests and hold the device parked (HALTED) until Resume; the caller
  // (the owner) has stopped DMA itself. FailedPrecondition otherwise.
  absl::Status Halt(const std::string& cause, uint64_t now_ns);
  // From HALTED or QUARANTINED: put the IOPF-capable HWPTs back and run. FailedPrecondition
  // otherwise; an unpark that fails quarantines (again) and returns the error.
  absl::Status Resume(const std::string& cause, uint64_t now_ns);
  // Checks the owner's halt deadline: past it, the device is quarantined.
  void Tick(uint64_t now_ns);
  // The device is going away: park everything (best effort) and stay DETACHED.
  void Detach(const std::string& cause);
  // Something outside iopfd failed the device (PCI error recovery failed): quarantine it, from
  // any state but DETACHED (a drain in progress is abandoned as a failed step would).
  void Fail(const std::string& cause);

  // Called on every state change.
  std::function<void(const DrainTransition&)> on_transition;

  // Its counters are the device's (DeviceStats: drain_transitions, drains, function_resets,
  // quarantines, drain_epoch, drain_unaccounted).

  // Returns when the owner's halt times out (HALTING with the owner method), else nullopt.
  std::optional<uint64_t> deadline() const {
    if (state_ == DrainState::kHalting && options_.halt == HaltMethod::kOwner) {
      return halt_deadline_ns_;
    }
    return std::nullopt;
  }
  const DrainOptions& options() const { return options_; }
  // Returns true while a reset runs away from the loop (RESETTING, or quarantined or detached
  // since): the device must not be freed before DrainIo::FinishBlocking.
  bool blocking() const { return blocking_; }

 private:
  enum class Goal : uint8_t { kNone, kDrain, kReset, kHold };
  absl::Status Start(Goal goal, std::optional<AttachmentKey> scope, const std::string& cause,
                     uint64_t now_ns);
  // From HALTING onwards, to RUNNING, HALTED or QUARANTINED; with a reset, to RESETTING when
  // DrainIo runs it on a worker (AfterReset goes on).
  absl::Status Continue(const std::string& cause);
  // The reset's result: flush again and finish (or quarantine).
  absl::Status AfterReset(const absl::Status& reset, const std::string& cause);
  // Parked and flushed: check nothing is owed, then hold (HALTED) or resume.
  absl::Status Finish(const std::string& cause);
  // Reads the queue empty and answers what was read; on failure quarantines and returns its
  // Aborted status.
  absl::Status FlushQueue(const std::string& when);
  absl::Status Quarantine(const std::string& why);
  void Enter(DrainState next, const std::string& cause);
  absl::Status Refuse(const char* request) const;

  Device* device_;
  DrainIo* io_;
  DrainOptions options_;
  DrainState state_ = DrainState::kRunning;
  uint64_t epoch_ = 0;
  Goal goal_ = Goal::kNone;
  std::optional<AttachmentKey> scope_;
  uint64_t halt_deadline_ns_ = 0;
  bool quiesced_ = false;
  bool blocking_ = false;       // a reset runs on DrainIo's worker
  std::shared_ptr<int> alive_;  // the reset's result comes back only while this lives
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_DRAIN_H_
