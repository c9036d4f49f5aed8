// The io_uring loop that drives every fault fd and the daemon's signals.
#ifndef IOPFD_FAULT_LOOP_H_
#define IOPFD_FAULT_LOOP_H_

#include <liburing.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/config.h"
#include "iopfd/device.h"
#include "iopfd/fd.h"

namespace iopfd {

// One ring for all fault fds. Each device has one poll-linked read in flight (the read runs
// inline once groups are queued, so no worker thread is involved; see ArmRead); all
// responses of one loop turn go out in one write per fault fd, submitted together with the next
// wait. SIGTERM/SIGINT stop the loop after answering everything read and everything still
// queued; SIGUSR1 calls on_stats.
class FaultLoop {
 public:
  // Creates the ring (ring_entries SQEs) and a signalfd for SIGTERM, SIGINT, SIGUSR1, SIGHUP,
  // which the caller must have blocked in every thread. Errors name io_uring_queue_init or
  // signalfd and the errno.
  static absl::StatusOr<std::unique_ptr<FaultLoop>> Create(const GlobalConfig& config);
  ~FaultLoop();
  FaultLoop(const FaultLoop&) = delete;
  FaultLoop& operator=(const FaultLoop&) = delete;

  // Adds a device before Run. The device must outlive the loop.
  void Add(Device* device);
  // Runs until a stop signal, then drains. Returns the process exit code: 0 when every read
  // group was answered, 1 otherwise.
  int Run();

  std::function<void()> on_stats;  // SIGUSR1

 private:
  enum class OpKind : uint8_t { kPoll, kRead, kWrite, kSignal, kCancel };
  struct Slot;
  // What a submission is for; its address is the SQE's user_data.
  struct Op {
    OpKind kind;
    Slot* slot = nullptr;
    bool in_flight = false;
  };
  struct Slot {
    Device* device;
    Op poll;  // linked ahead of read; see ArmRead
    Op read;
    Op write;
  };

  explicit FaultLoop(const GlobalConfig& config) : config_(config) {}
  io_uring_sqe* GetSqe();
  void ArmRead(Slot& slot);
  void ArmSignal();
  void SubmitWrites();
  void HandleRead(Slot& slot, int res, uint64_t now);
  void HandlePollFailure(Slot& slot, int res);
  void HandleWrite(Slot& slot, int res, uint64_t now);
  void HandleSignal(int res);
  int ProcessCompletions();
  void Drain();

  GlobalConfig config_;
  io_uring ring_{};
  bool ring_ready_ = false;
  UniqueFd signal_fd_;
  Op signal_op_{OpKind::kSignal, nullptr};
  Op cancel_op_{OpKind::kCancel, nullptr};
  alignas(8) unsigned char siginfo_[128]{};
  std::vector<std::unique_ptr<Slot>> slots_;
  bool stopping_ = false;
};

// Returns CLOCK_MONOTONIC in nanoseconds.
uint64_t MonotonicNs();

}  // namespace iopfd

#endif  // IOPFD_FAULT_LOOP_H_
