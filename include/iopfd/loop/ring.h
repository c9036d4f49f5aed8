// The loop: one io_uring and one thread for everything iopfd waits on. It knows no device.
//
// Components are clients of the ring: each embeds RingOps (an operation's address is its SQE's
// user_data) and gets their completions. One client, the priority client (the fault path,
// FaultLoop), is served first: its completions are handled as they are reaped and its queued
// work is submitted before any other client's; the others' completions are deferred to the end
// of the turn and handled in slices, between which the priority client catches up (Yield). The
// ring also reads the daemon's signals (a signalfd) and wakes for deadlines.
#ifndef IOPFD_LOOP_RING_H_
#define IOPFD_LOOP_RING_H_

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"

namespace iopfd {

class Ring;
class RingClient;

// One operation in flight on the ring; its address is the SQE's user_data.
struct RingOp {
  RingClient* client = nullptr;  // null for the ring's own operations
  int kind = 0;                  // the owner's own tag
  void* owner = nullptr;         // the owner's own context
  // True from Bind until the completion that ends the operation is delivered: for a multishot
  // operation (IORING_CQE_F_MORE on its completions), only the last one.
  bool in_flight = false;
};

// A component that shares the ring and its thread. All calls come from the ring's thread, so a
// client needs no locking to read daemon state.
class RingClient {
 public:
  virtual ~RingClient() = default;
  // Arms the client's first operations; called once before the ring starts waiting.
  virtual void Start(Ring& ring) = 0;
  // Handles a completion of one of the client's operations. op.in_flight is already false,
  // unless the completion carried IORING_CQE_F_MORE (a multishot operation that goes on).
  virtual void OnCompletion(Ring& ring, RingOp& op, int res) = 0;
  // Submits what became ready during this turn (replies, answers); called before every wait.
  virtual void Flush(Ring& ring) = 0;
  // Cancels everything on shutdown; the ring keeps collecting completions while Busy().
  virtual void Stop(Ring& ring) = 0;
  virtual bool Busy() const = 0;
};

// The operations the fault path issues, as an interface so that the simulated kernel can carry
// them out (tests/sim/sim_ring.h) and the sim tier drives the same fault path as the daemon.
// Ring carries them out on io_uring. Completions go to the op's client.
class RingIo {
 public:
  virtual ~RingIo() = default;
  // Reads len bytes of fd into buf (at offset 0) once fd polls readable. The read's completion
  // comes on `read`; only when the poll fails (or is cancelled) a completion comes on `poll`,
  // and then none on `read`.
  virtual void ReadWhenReadable(int fd, void* buf, size_t len, RingOp* poll, RingOp* read) = 0;
  // Writes len bytes of buf to fd (at offset 0); the completion comes on `op`.
  virtual void Write(int fd, const void* buf, size_t len, RingOp* op) = 0;
  // Cancels the poll of a ReadWhenReadable: its completion comes with -ECANCELED, unless the
  // read had begun (its own completion then comes as usual).
  virtual void CancelPoll(RingOp* poll) = 0;
  // Waits until done() is true, delivering the completions of the priority client's operations
  // as they come (others wait for the next turn). Returns false when the ring failed first (or
  // nothing that could make done() true is in flight).
  virtual bool WaitUntil(const std::function<bool()>& done, const char* what) = 0;
  // Runs the ring until it stops (see Ring::Run). Returns false when it failed.
  virtual bool Run() = 0;
  // True once the ring serves (operations armed now complete); true once it is stopping.
  virtual bool running() const = 0;
  virtual bool stopping() const = 0;
  // Returns how many times the ring collected completions from the kernel so far: completions
  // delivered with the same count were collected together (the fault loop reads the clock once
  // for them).
  virtual uint64_t reaps() const = 0;
};

class Ring : public RingIo {
 public:
  // Creates the ring (`entries` SQEs) and a signalfd for SIGTERM, SIGINT, SIGUSR1 and SIGHUP,
  // which the caller must have blocked in every thread. Errors name io_uring_queue_init or
  // signalfd and the errno.
  static absl::StatusOr<std::unique_ptr<Ring>> Create(uint32_t entries);
  ~Ring() override;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // The client served first (see the file comment). Set before Run; it must outlive the ring.
  void SetPriorityClient(RingClient* client) { priority_ = client; }
  // Adds a client before Run. The client must outlive the ring.
  void AddClient(RingClient* client) { clients_.push_back(client); }

  // Returns a submission entry, submitting the queue first when it is full.
  io_uring_sqe* GetSqe();
  // Returns a submission entry with room for `n` linked entries after it in the queue.
  io_uring_sqe* GetSqes(unsigned n);
  // Queues op on sqe (sets user_data and marks it in flight).
  void Bind(io_uring_sqe* sqe, RingOp* op) {
    io_uring_sqe_set_data(sqe, op);
    op->in_flight = true;
  }
  // Queues an operation whose completion nobody waits for (a cancel): its user_data is the
  // ring's own no-op.
  void BindIgnored(io_uring_sqe* sqe) { io_uring_sqe_set_data(sqe, &ignored_op_); }

  // For clients, between units of work inside OnCompletion (a control call): once a slice of
  // client work (50 us) has passed since the priority client was last served, reaps what
  // arrived for it, handles it and submits its work before the client goes on. Outside a
  // client completion, or before the slice is over, does nothing.
  void Yield();
  // RingIo::WaitUntil: the priority client's work is submitted as it waits (other clients'
  // completions are deferred to the next turn, so no client handler runs inside the caller).
  // The failure is logged, naming `what`. For the priority client, from a handler or a hook.
  bool WaitUntil(const std::function<bool()>& done, const char* what) override;

  // RingIo on io_uring: the poll is a one-shot POLL_ADD linked to the READ, its own completion
  // skipped on success.
  void ReadWhenReadable(int fd, void* buf, size_t len, RingOp* poll, RingOp* read) override;
  void Write(int fd, const void* buf, size_t len, RingOp* op) override;
  void CancelPoll(RingOp* poll) override;

  // Runs until a stop signal (or RequestStop, or a failure of the ring), then stops every
  // client and collects their completions until none is busy. Returns false when the ring
  // failed.
  bool Run() override;
  // Returns true once Run started arming operations.
  bool running() const override { return running_; }
  // Returns true once a stop signal arrived (or RequestStop).
  bool stopping() const override { return stopping_; }
  uint64_t reaps() const override { return reaps_; }
  // Stops the ring as SIGTERM does (from the ring's thread: a hook or a client).
  void RequestStop() { stopping_ = true; }

  std::function<void()> on_stats;     // SIGUSR1
  std::function<void()> on_stopping;  // a stop signal arrived; the ring stops next
  // SIGHUP: run at the start of the next turn (not inside completion handling), so that it may
  // add and remove work.
  std::function<void()> on_reload;
  // Timers: the ring never sleeps past next_deadline(), and once it passed calls
  // on_deadline(now) at the start of a turn (not inside completion handling).
  std::function<std::optional<uint64_t>()> next_deadline;
  std::function<void(uint64_t now_ns)> on_deadline;

 private:
  enum OwnKind { kSignal = 1, kIgnored };
  Ring() = default;
  void ArmSignal();
  void HandleSignal(int res);
  // Handles every completion now in the queue: the ring's own and the priority client's at
  // once, other clients' deferred. Returns how many.
  int Reap();
  // Submits the priority client's work, and reaps.
  int ServePriority();
  // One turn's completions: Reap, then the priority client's work submitted and reaped, then
  // the deferred client completions in slices (Yield between them).
  void ProcessCompletions();
  // Runs the hooks due at the start of a turn; returns the next deadline (~0: none).
  uint64_t StartTurn();
  void Drain();
  bool AnyBusy() const;

  io_uring ring_{};
  bool ring_ready_ = false;
  UniqueFd signal_fd_;
  RingOp signal_op_{nullptr, kSignal, nullptr, false};
  RingOp ignored_op_{nullptr, kIgnored, nullptr, false};
  alignas(8) unsigned char siginfo_[128]{};
  RingClient* priority_ = nullptr;
  std::vector<RingClient*> clients_;
  struct Deferred {
    RingOp* op;
    int res;
    bool more;  // IORING_CQE_F_MORE: the operation stays armed
  };
  std::vector<Deferred> deferred_;  // client completions of the current turn
  bool stopping_ = false;
  uint64_t reaps_ = 0;  // see reaps()
  bool running_ = false;
  bool failed_ = false;
  bool reload_requested_ = false;
  // While deferred client completions are handled: when the priority client was last served;
  // 0 otherwise.
  uint64_t slice_start_ = 0;
};

}  // namespace iopfd

#endif  // IOPFD_LOOP_RING_H_
