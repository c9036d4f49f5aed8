// The fault path on the ring: every served fault queue read and answered.
#ifndef IOPFD_FAULT_FAULT_LOOP_H_
#define IOPFD_FAULT_FAULT_LOOP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iopfd/fault/fault_queue.h"
#include "iopfd/loop/ring.h"

namespace iopfd {

// All fault queues on one ring. Each queue has one poll-linked read in flight (the read runs
// inline once groups are queued, so no worker thread is involved; see ArmRead); all responses
// of one turn go out in one write per fault fd, submitted together with the next wait. What a
// result means is the FaultQueue's to say. When the ring stops, everything read and
// everything still queued is answered. It knows no device: the device layer serves its
// devices' queues through it (LoopHost, lib/device/loop_host.cc).
class FaultLoop : public RingClient {
 public:
  // Serves fault queues through `ring` (the daemon's Ring, where the loop is the priority client:
  // fault completions handled as they are reaped, answers submitted before any other client's
  // work; or the simulated kernel's SimRing). The ring must outlive the loop.
  explicit FaultLoop(RingIo* ring);
  ~FaultLoop() override;
  FaultLoop(const FaultLoop&) = delete;
  FaultLoop& operator=(const FaultLoop&) = delete;

  // Adds a queue. Before Run its first read is armed when Run starts; while running (from a
  // client's completion or a hook), at once. The queue must stay alive until Remove returns or
  // the loop is destroyed.
  void Add(FaultQueue* queue);
  // Stops serving a queue while the loop runs: cancels its read, waits for its operations in
  // flight (handling other queues' completions meanwhile; clients' are deferred to the next
  // turn), then reads what is still queued and answers everything it read, synchronously and
  // bounded by 100 ms of reading. Afterwards the loop no longer refers to the queue. Returns
  // the number of groups read from it that were never answered (left owed, or abandoned when
  // its fd failed; 0 normally). Returns nullopt when the ring failed while operations of the
  // queue were in flight: the loop then still refers to the queue, which must be kept alive.
  // Call it from a client's completion handler or a hook, never from inside the fault path.
  // Returns 0 and does nothing for a queue the loop does not serve.
  std::optional<uint64_t> Remove(FaultQueue* queue);
  // Stops the ring's reading of a queue the loop serves: cancels its read and waits for its
  // operations in flight, handling other queues' completions meanwhile (clients' are deferred),
  // so that the caller may then read and write its fault fd synchronously (a drain). Returns
  // false when the ring failed with operations of the queue still in flight (nothing may then
  // touch its buffers) or the loop does not serve it. Same calling rules as Remove.
  bool Quiesce(FaultQueue* queue);
  // Resumes reading a queue Quiesce stopped.
  void Rearm(FaultQueue* queue);
  // Returns true once the ring is stopping (a stop signal arrived).
  bool stopping() const { return ring_->stopping(); }
  // Runs the ring until a stop signal, then answers everything read and everything still
  // queued. Returns the process exit code: 0 when every read group was answered, 1 otherwise.
  int Run();

  // What any ring driving the loop calls: ArmAll arms every queue's read; Complete handles a
  // completion of one of the loop's operations; SubmitAnswers writes what was answered (one
  // write per queue); CancelAll cancels the reads (the stop); Busy is true while an
  // operation is in flight.
  void ArmAll();
  void Complete(RingOp& op, int res);
  void SubmitAnswers();
  void CancelAll();
  // RingClient (the daemon's Ring): the same.
  void Start(Ring& /*ring*/) override { ArmAll(); }
  void OnCompletion(Ring& /*ring*/, RingOp& op, int res) override { Complete(op, res); }
  void Flush(Ring& /*ring*/) override { SubmitAnswers(); }
  void Stop(Ring& /*ring*/) override { CancelAll(); }
  bool Busy() const override;
  // The queues the loop serves, in the order they were added.
  std::vector<FaultQueue*> served() const;

 private:
  enum OpKind { kPoll = 1, kRead, kWrite };
  struct Slot {
    FaultQueue* queue;
    RingOp poll;  // linked ahead of read; see ArmRead
    RingOp read;
    RingOp write;
    bool quiesced = false;      // the ring does not read it (Quiesce, Remove); never re-arm
    bool flush_queued = false;  // on to_flush_
  };

  void ArmRead(Slot& slot);
  Slot* SlotOf(const FaultQueue* queue);
  // Quiesce's work on a slot; false when the ring failed with operations in flight.
  bool QuiesceSlot(Slot& slot);
  void CancelRead(Slot& slot);
  void HandleRead(Slot& slot, int res, uint64_t now);
  void HandlePollFailure(Slot& slot, int res);
  void HandleWrite(Slot& slot, int res, uint64_t now);
  // Reads the queue empty (until deadline) and processes what it read, synchronously.
  void ReadRemaining(FaultQueue* q, uint64_t deadline);
  // Puts the slot on the list SubmitAnswers visits (once).
  void QueueFlush(Slot& slot);
  // The time of the completions the ring collected in its current batch (RingIo::reaps): read
  // at the batch's first completion the loop handles.
  uint64_t TurnNs();

  RingIo* ring_;
  std::vector<std::unique_ptr<Slot>> slots_;
  uint64_t removed_owed_ = 0;  // groups removed queues left owed, for the exit code
  uint64_t turn_ns_ = 0;       // TurnNs's reading; 0: not read yet
  uint64_t turn_reaps_ = 0;    // the ring's reaps() when it was read
  // What the queues' hooks hold (weakly) to find the loop: gone with it.
  std::shared_ptr<FaultLoop*> self_ = std::make_shared<FaultLoop*>(this);
  // The slots that may have answers to write: queued when a response is queued behind an empty
  // queue (ResponseQueue::set_on_first_pending), when a write completes (a short write leaves
  // some to re-send) and when a queue is added or re-armed. SubmitAnswers visits these only: a
  // turn costs the same with 64 devices as with one.
  std::vector<Slot*> to_flush_;
  std::vector<Slot*> flushing_;  // SubmitAnswers' scratch
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_FAULT_LOOP_H_
