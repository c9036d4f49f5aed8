#include "iopfd/fault/fault_loop.h"

#include <algorithm>
#include <cerrno>
#include <memory>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {

FaultLoop::FaultLoop(RingIo* ring) : ring_(ring) {}

// The queues may be gone already (the device layer often outlives the loop by less): a queue's
// hook checks that the loop still exists instead of the loop clearing every hook here.
FaultLoop::~FaultLoop() = default;

void FaultLoop::QueueFlush(Slot& slot) {
  if (slot.flush_queued) return;
  slot.flush_queued = true;
  to_flush_.push_back(&slot);
}

void FaultLoop::Add(FaultQueue* queue) {
  auto slot = std::make_unique<Slot>();
  slot->queue = queue;
  slot->poll = {this, kPoll, slot.get(), false};
  slot->read = {this, kRead, slot.get(), false};
  slot->write = {this, kWrite, slot.get(), false};
  Slot& ref = *slot;
  slots_.push_back(std::move(slot));
  // A queue may outlive the loop (and answer, from an obligation's destructor): the hook then
  // finds the loop gone and does nothing.
  queue->responses().set_on_first_pending([alive = std::weak_ptr<FaultLoop*>(self_), slot = &ref] {
    if (auto loop = alive.lock()) (*loop)->QueueFlush(*slot);
  });
  QueueFlush(ref);  // answers queued before it joined (crash recovery) are written too
  if (ring_->running() && !ring_->stopping()) ArmRead(ref);
}

FaultLoop::Slot* FaultLoop::SlotOf(const FaultQueue* queue) {
  for (auto& s : slots_) {
    if (s->queue == queue) return s.get();
  }
  return nullptr;
}

void FaultLoop::CancelRead(Slot& slot) {
  if (!slot.read.in_flight) return;
  // Cancelling the poll fails the linked read (no completion of its own); a read already past
  // its poll completes normally and its records are processed like any others.
  ring_->CancelPoll(&slot.poll);
}

bool FaultLoop::QuiesceSlot(Slot& slot) {
  slot.quiesced = true;
  CancelRead(slot);
  // Wait for this queue's operations only. Other queues' completions are handled and their
  // responses written as usual; clients' are deferred and served at the next turn, so no client
  // handler runs inside the one that called us.
  return ring_->WaitUntil([&slot] { return !slot.read.in_flight && !slot.write.in_flight; },
                          slot.queue->name().c_str());
}

bool FaultLoop::Quiesce(FaultQueue* queue) {
  Slot* slot = SlotOf(queue);
  return slot != nullptr && QuiesceSlot(*slot);
}

void FaultLoop::Rearm(FaultQueue* queue) {
  Slot* slot = SlotOf(queue);
  if (slot == nullptr) return;
  slot->quiesced = false;
  // Whatever the synchronous paths left unwritten while it was quiesced (a short write's rest).
  QueueFlush(*slot);
  if (ring_->running() && !ring_->stopping()) ArmRead(*slot);
}

std::optional<uint64_t> FaultLoop::Remove(FaultQueue* queue) {
  Slot* found = SlotOf(queue);
  if (found == nullptr) return 0;
  Slot& slot = *found;
  if (!QuiesceSlot(slot)) {
    // The ring failed under us: the read buffer and the responses may still be the kernel's.
    // Keep the slot, and the caller keeps the queue, rather than free memory the kernel may
    // write or answer a group a second time.
    Log(LogLevel::kError,
        absl::StrCat(queue->name(), ": operations still in flight; cannot release it"));
    return std::nullopt;
  }
  ReadRemaining(queue, MonotonicNs() + 100000000ull);
  (void)queue->WriteQueued();  // a failure is reported through on_failed, once
  const DeviceStats& st = queue->stats();
  removed_owed_ += st.outstanding();
  queue->responses().set_on_first_pending(nullptr);
  std::erase(to_flush_, &slot);
  slots_.erase(std::find_if(slots_.begin(), slots_.end(),
                            [queue](const std::unique_ptr<Slot>& s) { return s->queue == queue; }));
  return st.outstanding() + st.responses_abandoned;
}

void FaultLoop::ArmRead(Slot& slot) {
  FaultQueue* q = slot.queue;
  if (q->read_failed() || slot.read.in_flight || slot.quiesced) return;
  // The fault fd has ->read but not ->read_iter and no FMODE_NOWAIT. io_uring serves it through
  // loop_rw_iter (io_uring/rw.c), which refuses IOCB_NOWAIT unless the file is O_NONBLOCK; and
  // on an O_NONBLOCK file without FMODE_NOWAIT io_uring sets REQ_F_NOWAIT and hands EAGAIN back
  // instead of waiting (io_rw_init_file). So readiness is made explicit: a one-shot POLL_ADD
  // linked to the READ (Ring::ReadWhenReadable). The read is issued only once groups are
  // queued and then runs inline. Offset 0: the fault fd's read insists on *ppos == 0 and never
  // advances it.
  auto buf = q->BeginRead();
  ring_->ReadWhenReadable(q->fd(), buf.data(), buf.size_bytes(), &slot.poll, &slot.read);
}

uint64_t FaultLoop::TurnNs() {
  // One clock read per batch of completions the ring collected together, not per completion
  // (two per page request at K=1: a third of the loop's own CPU in bench/fault_path.cc). Every
  // completion of a batch was posted before the batch was collected, so its first reading is no
  // earlier than any of them: a latency measured from it is never longer than the real one, and
  // it errs by at most the work done on that batch before it.
  const uint64_t reaps = ring_->reaps();
  if (turn_ns_ == 0 || reaps != turn_reaps_) {
    turn_ns_ = MonotonicNs();
    turn_reaps_ = reaps;
  }
  return turn_ns_;
}

void FaultLoop::SubmitAnswers() {
  // A slot whose write is in flight is queued again when that write completes.
  flushing_.swap(to_flush_);
  for (Slot* slot : flushing_) {
    slot->flush_queued = false;
    ResponseQueue& answers = slot->queue->responses();
    if (slot->write.in_flight || !answers.HasUnwritten()) continue;
    if (slot->queue->write_failed()) {
      answers.AbandonAll();
      continue;
    }
    auto span = answers.BeginWrite();
    ring_->Write(slot->queue->fd(), span.data(), span.size_bytes(), &slot->write);
  }
  flushing_.clear();
}

void FaultLoop::Complete(RingOp& op, int res) {
  Slot& slot = *static_cast<Slot*>(op.owner);
  if (GetLogLevel() >= LogLevel::kDebug) {
    Log(LogLevel::kDebug,
        absl::StrCat("cqe kind=", op.kind, " res=", res, " dev=", slot.queue->name()));
  }
  switch (op.kind) {
    case kRead:
      HandleRead(slot, res, TurnNs());
      break;
    case kWrite:
      HandleWrite(slot, res, TurnNs());
      break;
    case kPoll:
      HandlePollFailure(slot, res);
      break;
    default:
      break;
  }
}

void FaultLoop::HandleRead(Slot& slot, int res, uint64_t now) {
  FaultQueue& q = *slot.queue;
  switch (q.OnRead(res, FaultQueue::ReadMode::kPolled, now)) {
    case FaultQueue::ReadResult::kCanceled:
    case FaultQueue::ReadResult::kFailed:
      return;  // not read again (a failure was reported through on_failed)
    case FaultQueue::ReadResult::kRetry:
      if (!q.error().ok()) Log(LogLevel::kError, std::string(q.error().message()));
      break;
    case FaultQueue::ReadResult::kProcessed:
    case FaultQueue::ReadResult::kEmpty:
    case FaultQueue::ReadResult::kGrown:
      break;
  }
  if (!ring_->stopping()) ArmRead(slot);
}

void FaultLoop::HandlePollFailure(Slot& slot, int res) {
  // Only a failed poll posts a completion (its success is skipped). When the head of a link
  // marked IOSQE_CQE_SKIP_SUCCESS fails, io_uring suppresses the completions of the requests
  // linked to it as well (req_set_fail, io_fail_links), so the read behind this poll is over
  // too and no completion will come for it.
  slot.read.in_flight = false;
  if (res != -ECANCELED) {
    slot.queue->MarkReadFailed(std::string(ErrnoStatus(-res, "", "poll fault fd").message()));
    return;
  }
  if (!ring_->stopping()) ArmRead(slot);
}

void FaultLoop::HandleWrite(Slot& slot, int res, uint64_t now) {
  // A dead fd is reported through on_failed.
  (void)slot.queue->OnWrite(res, now);
  QueueFlush(slot);  // what a short write left, and what settling it let waiting groups answer
}

void FaultLoop::ArmAll() {
  for (auto& slot : slots_) ArmRead(*slot);
}

std::vector<FaultQueue*> FaultLoop::served() const {
  std::vector<FaultQueue*> out;
  out.reserve(slots_.size());
  for (const auto& slot : slots_) out.push_back(slot->queue);
  return out;
}

void FaultLoop::CancelAll() {
  // The armed reads are cancelled; a read that raced the cancel and returned records is
  // processed like any other before the ring's stop is over.
  for (auto& slot : slots_) CancelRead(*slot);
}

bool FaultLoop::Busy() const {
  return std::any_of(slots_.begin(), slots_.end(), [](const std::unique_ptr<Slot>& s) {
    return s->read.in_flight || s->write.in_flight;
  });
}

int FaultLoop::Run() {
  ring_->Run();
  // Then read what is still queued and answer everything, synchronously: the fault fd's read
  // and write never block. Bounded so that a device faulting without pause cannot hold up the
  // exit.
  const uint64_t deadline = MonotonicNs() + 1000000000ull;
  for (auto& slot : slots_) {
    ReadRemaining(slot->queue, deadline);
    (void)slot->queue->WriteQueued();  // a failure is reported through on_failed, once
  }
  uint64_t owed = removed_owed_;
  for (auto& slot : slots_) owed += slot->queue->stats().outstanding();
  if (owed != 0) {
    Log(LogLevel::kError, absl::StrCat(owed, " page request groups left unanswered at exit"));
    return 1;
  }
  return 0;
}

void FaultLoop::ReadRemaining(FaultQueue* q, uint64_t deadline) {
  absl::Status st = q->ReadAvailable(deadline);
  if (!st.ok()) Log(LogLevel::kError, std::string(st.message()));
}

}  // namespace iopfd
