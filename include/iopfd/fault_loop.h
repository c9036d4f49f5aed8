// The io_uring loop that drives every fault fd and the daemon's signals.
#ifndef IOPFD_FAULT_LOOP_H_
#define IOPFD_FAULT_LOOP_H_

#include <liburing.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/clock.h"
#include "iopfd/config.h"
#include "iopfd/device.h"
#include "iopfd/device_manager.h"
#include "iopfd/fd.h"

namespace iopfd {

class BlockingWorker;  // iopfd/blocking_worker.h

class FaultLoop;
class RingClient;

// One operation in flight on the loop's ring; its address is the SQE's user_data. Components
// other than the fault path (the control server) embed these and get their completions.
struct RingOp {
  RingClient* client = nullptr;  // null for the loop's own operations
  int kind = 0;                  // the owner's own tag
  void* owner = nullptr;         // the owner's own context
  // True from Bind until the completion that ends the operation is delivered: for a multishot
  // operation (IORING_CQE_F_MORE on its completions), only the last one.
  bool in_flight = false;
};

// A component that shares the loop's ring and thread. All calls come from the loop's thread,
// so a client needs no locking to read daemon state.
class RingClient {
 public:
  virtual ~RingClient() = default;
  // Arms the client's first operations; called once before the loop starts waiting.
  virtual void Start(FaultLoop& loop) = 0;
  // Handles a completion of one of the client's operations. op.in_flight is already false,
  // unless the completion carried IORING_CQE_F_MORE (a multishot operation that goes on).
  virtual void OnCompletion(FaultLoop& loop, RingOp& op, int res) = 0;
  // Submits what became ready during this turn (replies); called before every wait.
  virtual void Flush(FaultLoop& loop) = 0;
  // Cancels everything on shutdown; the loop keeps collecting completions while Busy().
  virtual void Stop(FaultLoop& loop) = 0;
  virtual bool Busy() const = 0;
};

// One ring for all fault fds. Each device has one poll-linked read in flight (the read runs
// inline once groups are queued, so no worker thread is involved; see ArmRead); all
// responses of one loop turn go out in one write per fault fd, submitted together with the next
// wait. SIGTERM/SIGINT stop the loop after answering everything read and everything still
// queued; SIGUSR1 calls on_stats.
class FaultLoop : public DeviceHost {
 public:
  // Creates the ring (ring_entries SQEs) and a signalfd for SIGTERM, SIGINT, SIGUSR1, SIGHUP,
  // which the caller must have blocked in every thread. Errors name io_uring_queue_init or
  // signalfd and the errno.
  static absl::StatusOr<std::unique_ptr<FaultLoop>> Create(const GlobalConfig& config);
  ~FaultLoop() override;
  FaultLoop(const FaultLoop&) = delete;
  FaultLoop& operator=(const FaultLoop&) = delete;

  // Adds a device. Before Run its first read is armed when Run starts; while running (from a
  // client's completion or a hook), at once. The device must stay alive until Remove returns
  // or the loop is destroyed.
  void Add(Device* device);
  // Stops serving a device while the loop runs: cancels its read, waits for its operations in
  // flight (handling other devices' completions meanwhile; clients' are deferred to the next
  // turn), then reads what is still queued and answers everything it read, synchronously and
  // bounded by 100 ms of reading. Afterwards the loop no longer refers to the device. Returns
  // the number of groups read from it that were never answered (left owed, or abandoned when
  // its fd failed; 0 normally). Returns nullopt when the ring failed while operations of the
  // device were in flight: the loop then still refers to the device, which must be kept
  // alive. Call it from a client's completion handler or a hook, never from inside the fault
  // path. Returns 0 and does nothing for a device the loop does not serve.
  std::optional<uint64_t> Remove(Device* device);
  // Stops the ring's reading of a device the loop serves: cancels its read and waits for its
  // operations in flight, handling other devices' completions meanwhile (clients' are deferred),
  // so that the caller may then read and write its fault fd synchronously (a drain). Returns
  // false when the ring failed with operations of the device still in flight (nothing may then
  // touch its buffers) or the loop does not serve it. Same calling rules as Remove.
  bool Quiesce(Device* device);
  // Resumes reading a device Quiesce stopped.
  void Rearm(Device* device);

  // DeviceHost: the same as Add, Remove, Quiesce and Rearm.
  void AddDevice(Device* device) override { Add(device); }
  std::optional<uint64_t> RemoveDevice(Device* device) override { return Remove(device); }
  bool Quiesce(Device& device) override { return Quiesce(&device); }
  void Rearm(Device& device) override { Rearm(&device); }
  // On the worker set with set_blocking_worker (a client of this loop), else now.
  void RunBlocking(const Device& device, std::function<absl::Status()> job,
                   std::function<void(absl::Status)> done) override;
  void FinishBlocking(const Device& device) override;
  // Where RunBlocking's jobs run; it must be one of the loop's clients and outlive it.
  void set_blocking_worker(BlockingWorker* worker) { blocking_ = worker; }
  // Returns true once a stop signal arrived (the loop is draining or about to).
  bool stopping() const { return stopping_; }
  // Stops the loop as SIGTERM does (from the loop's thread: a hook or a client).
  void RequestStop() { stopping_ = true; }
  // Adds a client before Run. The client must outlive the loop.
  void AddClient(RingClient* client) { clients_.push_back(client); }
  // Returns a submission entry, submitting the queue first when it is full. For clients.
  io_uring_sqe* GetSqe();
  // Queues op on sqe (sets user_data and marks it in flight).
  void Bind(io_uring_sqe* sqe, RingOp* op) {
    io_uring_sqe_set_data(sqe, op);
    op->in_flight = true;
  }
  // For clients, between units of work inside OnCompletion (a control call): once a slice of
  // client work (50 us) has passed since the fault queues were last looked at, reads what they
  // have, processes it and writes the responses before the client goes on. Outside a client
  // completion, or before the slice is over, does nothing.
  void YieldToFaults();
  // Runs until a stop signal, then drains. Returns the process exit code: 0 when every read
  // group was answered, 1 otherwise.
  int Run();

  std::function<void()> on_stats;     // SIGUSR1
  std::function<void()> on_stopping;  // a stop signal arrived; the loop drains next
  // SIGHUP: run at the start of the next turn (not inside completion handling), so that it may
  // Add and Remove devices.
  std::function<void()> on_reload;
  // Timers (drain deadlines): the loop never sleeps past next_deadline(), and once it passed
  // calls on_deadline(now) at the start of a turn (not inside completion handling).
  std::function<std::optional<uint64_t>()> next_deadline;
  std::function<void(uint64_t now_ns)> on_deadline;
  // A device's fault queue failed for reading or writing (why says which and how).
  std::function<void(const Device&, const std::string& why)> on_device_failed;

 private:
  enum class OpKind : uint8_t { kPoll, kRead, kWrite, kSignal, kCancel };
  struct Slot;
  // What a submission is for; its address is the SQE's user_data.
  struct Op : RingOp {
    Op() = default;
    Op(OpKind k, Slot* s) : op_kind(k), slot(s) {}
    OpKind op_kind = OpKind::kCancel;
    Slot* slot = nullptr;
  };
  struct Slot {
    Device* device;
    Op poll;  // linked ahead of read; see ArmRead
    Op read;
    Op write;
    bool quiesced = false;  // the ring does not read it (Quiesce, Remove); never re-arm
  };

  explicit FaultLoop(const GlobalConfig& config) : config_(config) {}
  void ArmRead(Slot& slot);
  void ArmSignal();
  void SubmitWrites();
  Slot* SlotOf(const Device* device);
  // Quiesce's work on a slot; false when the ring failed with operations in flight.
  bool QuiesceSlot(Slot& slot);
  void HandleRead(Slot& slot, int res, uint64_t now);
  void HandlePollFailure(Slot& slot, int res);
  void HandleWrite(Slot& slot, int res, uint64_t now);
  void HandleSignal(int res);
  // Handles every completion now in the queue; clients' are deferred. Returns how many.
  int DrainCq();
  int ProcessCompletions();
  // Between client completions: collects fault completions that arrived, processes them and
  // writes the responses. Returns the completions handled.
  int ServeFaultsNow();
  void Drain();
  // Reads the device's queue empty (until deadline) and processes what it read, synchronously.
  void ReadRemaining(Device* d, uint64_t deadline);
  // Writes every queued response of the device synchronously.
  void WriteAll(Device* d);

  GlobalConfig config_;
  io_uring ring_{};
  bool ring_ready_ = false;
  UniqueFd signal_fd_;
  Op signal_op_{OpKind::kSignal, nullptr};
  Op cancel_op_{OpKind::kCancel, nullptr};
  alignas(8) unsigned char siginfo_[128]{};
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<RingClient*> clients_;
  BlockingWorker* blocking_ = nullptr;
  struct Deferred {
    RingOp* op;
    int res;
    bool more;  // IORING_CQE_F_MORE: the operation stays armed
  };
  std::vector<Deferred> deferred_;  // client completions of the current turn
  bool stopping_ = false;
  bool running_ = false;
  // While client completions are handled (ProcessCompletions): when the fault queues were last
  // served; 0 otherwise.
  uint64_t slice_start_ = 0;
  int served_in_slices_ = 0;  // completions ServeFaultsNow handled during those completions
  bool reload_requested_ = false;
  uint64_t removed_owed_ = 0;  // groups removed devices left owed, for the exit code
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_LOOP_H_
