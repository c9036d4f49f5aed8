// The fault path's ring, carried out by the simulated kernel: the sim tier drives the daemon's
// own FaultLoop (poll-linked reads, one write per device and turn, cancels, quiesce, removal)
// instead of a copy of it. An operation completes when the test turns the ring (SimHost::Turn):
// a write at once, a read once its fault queue has a group queued (its poll), a cancelled poll
// with -ECANCELED. Completions are delivered as the daemon's Ring delivers them: the op is no
// longer in flight, then FaultLoop::Complete.
#ifndef IOPFD_TESTS_SIM_SIM_RING_H_
#define IOPFD_TESTS_SIM_SIM_RING_H_

#include <cerrno>
#include <deque>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/base/errors.h"
#include "iopfd/device/loop_host.h"
#include "iopfd/fault/fault_loop.h"
#include "iopfd/loop/ring.h"
#include "sim_kernel.h"

namespace iopfd::sim {

class SimRing : public RingIo {
 public:
  explicit SimRing(SimKernel* kernel) : kernel_(kernel) {}
  // The loop whose operations these are (set once, before anything is armed).
  void set_loop(FaultLoop* loop) { loop_ = loop; }

  void ReadWhenReadable(int fd, void* buf, size_t len, RingOp* poll, RingOp* read) override {
    read->in_flight = true;
    reads_.push_back({fd, buf, len, poll, read});
  }
  void Write(int fd, const void* buf, size_t len, RingOp* op) override {
    op->in_flight = true;
    writes_.push_back({fd, buf, len, op});
  }
  void CancelPoll(RingOp* poll) override {
    for (auto it = reads_.begin(); it != reads_.end(); ++it) {
      if (it->poll != poll) continue;
      reads_.erase(it);
      // As io_uring does: the poll's completion comes with the next reap, not inside the call.
      completions_.push_back({poll, -ECANCELED});
      return;
    }
  }
  bool WaitUntil(const std::function<bool()>& done, const char* /*what*/) override {
    while (!done()) {
      loop_->SubmitAnswers();
      // Only what completes without the function's help: the cancels and the writes. A read
      // still waiting for its queue would wait for ever here, as on a real ring.
      if (!DeliverCompletions() && !CompleteWrites()) return false;
    }
    return true;
  }
  // The simulated loop does not run by itself: one turn, as far as it goes.
  bool Run() override { return Turn().ok(); }
  bool running() const override { return true; }
  bool stopping() const override { return stopping_; }
  // Every completion is delivered on its own: each gets its own clock reading.
  uint64_t reaps() const override { return delivered_; }
  void set_stopping(bool stopping) { stopping_ = stopping; }

  // One turn of the loop: until nothing more happens, cancels are delivered, writes and the
  // reads whose queues have groups complete, and the answers go out. Returns the first error a
  // read or write returned other than "nothing queued" and a cancel (the loop has handled it:
  // logged, retried, or given the queue up).
  absl::Status Turn() {
    absl::Status first;
    for (int guard = 0; guard < 10000; ++guard) {
      loop_->SubmitAnswers();
      bool progress = DeliverCompletions();
      progress |= CompleteWrites(&first);
      progress |= CompleteReads(&first);
      if (!progress) return first;
    }
    return absl::InternalError("SimRing: the loop never settled (10000 rounds)");
  }
  // Operations pending: reads waiting for their queue, writes not yet carried out.
  size_t pending_reads() const { return reads_.size(); }
  size_t pending_writes() const { return writes_.size(); }

 private:
  struct PendingRead {
    int fd;
    void* buf;
    size_t len;
    RingOp* poll;
    RingOp* read;
  };
  struct PendingWrite {
    int fd;
    const void* buf;
    size_t len;
    RingOp* op;
  };

  void Deliver(RingOp* op, int res) {
    ++delivered_;
    op->in_flight = false;
    loop_->Complete(*op, res);
  }
  static void Note(absl::Status* first, ssize_t res, const char* what) {
    if (first != nullptr && first->ok() && res < 0 && res != -EAGAIN && res != -ECANCELED) {
      *first = ErrnoStatus(static_cast<int>(-res), "sim", what);
    }
  }
  bool DeliverCompletions() {
    if (completions_.empty()) return false;
    std::deque<std::pair<RingOp*, int>> now;
    now.swap(completions_);
    for (auto [op, res] : now) Deliver(op, res);
    return true;
  }
  bool CompleteWrites(absl::Status* first = nullptr) {
    if (writes_.empty()) return false;
    std::vector<PendingWrite> now;
    now.swap(writes_);
    for (const PendingWrite& w : now) {
      ssize_t res = kernel_->Write(w.fd, w.buf, w.len);
      Note(first, res, "write fault fd");
      Deliver(w.op, static_cast<int>(res));
    }
    return true;
  }
  bool CompleteReads(absl::Status* first) {
    bool progress = false;
    std::vector<PendingRead> now;
    now.swap(reads_);
    for (const PendingRead& r : now) {
      if (kernel_->Queued(r.fd) == 0) {
        reads_.push_back(r);  // its poll waits on
        continue;
      }
      ssize_t res = kernel_->Read(r.fd, r.buf, r.len);
      Note(first, res, "read fault fd");
      Deliver(r.read, static_cast<int>(res));
      progress = true;
    }
    return progress;
  }

  SimKernel* kernel_;
  FaultLoop* loop_ = nullptr;
  std::vector<PendingRead> reads_;
  std::vector<PendingWrite> writes_;
  std::deque<std::pair<RingOp*, int>> completions_;
  bool stopping_ = false;
  uint64_t delivered_ = 0;
};

// The daemon's FaultLoop and LoopHost on a SimRing, with what tests watch: how often the drain
// stopped and resumed a device's reading, and blocking jobs (a function reset) that run at once
// or, with defer_blocking, when the test runs them (as the worker thread would, while the loop
// goes on).
class SimHost : public LoopHost {
 public:
  explicit SimHost(SimKernel* kernel) : LoopHost(&loop_), ring_(kernel), loop_(&ring_) {
    ring_.set_loop(&loop_);
  }

  // One loop turn (SimRing::Turn). Returns the first error a read or write gave.
  absl::Status TurnStatus() { return ring_.Turn(); }
  SimRing& ring() { return ring_; }

  bool Quiesce(Device& d) override {
    ++quiesces;
    return LoopHost::Quiesce(d);
  }
  void Rearm(Device& d) override {
    ++rearms;
    LoopHost::Rearm(d);
  }
  void RunBlocking(const Device& /*d*/, std::function<absl::Status()> job,
                   std::function<void(absl::Status)> done) override {
    if (!defer_blocking) return done(job());
    blocking.emplace_back(std::move(job), std::move(done));
  }
  void FinishBlocking(const Device& /*d*/) override {
    ++finishes;
    RunPendingJobs();
  }
  // The worker finishes every job; their results come back to the loop.
  void RunPendingJobs() {
    auto jobs = std::move(blocking);
    blocking.clear();
    for (auto& [job, done] : jobs) done(job());
  }

  int quiesces = 0;
  int rearms = 0;
  int finishes = 0;
  bool defer_blocking = false;
  std::vector<std::pair<std::function<absl::Status()>, std::function<void(absl::Status)>>> blocking;

 private:
  SimRing ring_;
  FaultLoop loop_;
};

}  // namespace iopfd::sim

#endif  // IOPFD_TESTS_SIM_SIM_RING_H_
