#include "iopfd/fault_loop.h"

#include <poll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>

#include "absl/strings/str_cat.h"
#include "iopfd/blocking_worker.h"
#include "iopfd/errors.h"
#include "iopfd/log.h"

namespace iopfd {
namespace {
// Control work done between two looks at the fault queues (ProcessCompletions).
constexpr uint64_t kClientSliceNs = 50000;
}  // namespace

absl::StatusOr<std::unique_ptr<FaultLoop>> FaultLoop::Create(const GlobalConfig& config) {
  std::unique_ptr<FaultLoop> loop(new FaultLoop(config));
  // One thread owns the ring: SINGLE_ISSUER and COOP_TASKRUN spare the kernel the cross-thread
  // wakeups (Linux >= 6.0). Older kernels refuse the flags with EINVAL; retry without them.
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
  int rc = io_uring_queue_init_params(config.ring_entries, &loop->ring_, &params);
  if (rc == -EINVAL) rc = io_uring_queue_init(config.ring_entries, &loop->ring_, 0);
  if (rc < 0) return ErrnoStatus(-rc, "", "io_uring_queue_init");
  loop->ring_ready_ = true;

  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGHUP}) sigaddset(&set, sig);
  int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "", "signalfd");
  loop->signal_fd_.Reset(fd);
  return loop;
}

FaultLoop::~FaultLoop() {
  if (ring_ready_) io_uring_queue_exit(&ring_);
}

void FaultLoop::Add(Device* device) {
  // However the queue fails (the ring's read or write, or a synchronous one of a drain), the
  // daemon hears of it once.
  device->queue().on_failed = [this, device](const std::string& why) {
    Log(LogLevel::kError, absl::StrCat(device->name(), ": ", why), {{"DEVICE", device->name()}});
    if (on_device_failed) on_device_failed(*device, why);
  };
  auto slot = std::make_unique<Slot>();
  slot->device = device;
  slot->poll = {OpKind::kPoll, slot.get()};
  slot->read = {OpKind::kRead, slot.get()};
  slot->write = {OpKind::kWrite, slot.get()};
  Slot& ref = *slot;
  slots_.push_back(std::move(slot));
  if (running_ && !stopping_) ArmRead(ref);
}

FaultLoop::Slot* FaultLoop::SlotOf(const Device* device) {
  for (auto& s : slots_) {
    if (s->device == device) return s.get();
  }
  return nullptr;
}

bool FaultLoop::QuiesceSlot(Slot& slot) {
  slot.quiesced = true;
  if (slot.read.in_flight) {
    // Cancelling the poll fails the linked read (no completion of its own); a read already past
    // its poll completes normally and its records are processed like any others.
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel(sqe, &slot.poll, 0);
    io_uring_sqe_set_data(sqe, &cancel_op_);
  }
  // Wait for this device's operations only. Other devices' completions are handled and their
  // responses written as usual; clients' are deferred (DrainCq) and served at the next turn,
  // so no client handler runs inside the one that called us.
  while (slot.read.in_flight || slot.write.in_flight) {
    SubmitWrites();
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
      Log(LogLevel::kError,
          std::string(ErrnoStatus(-rc, slot.device->name(), "io_uring_submit_and_wait (quiesce)")
                          .message()));
      break;
    }
    DrainCq();
  }
  return !slot.read.in_flight && !slot.write.in_flight;
}

bool FaultLoop::Quiesce(Device* device) {
  Slot* slot = SlotOf(device);
  return slot != nullptr && QuiesceSlot(*slot);
}

void FaultLoop::Rearm(Device* device) {
  Slot* slot = SlotOf(device);
  if (slot == nullptr) return;
  slot->quiesced = false;
  if (running_ && !stopping_) ArmRead(*slot);
}

std::optional<uint64_t> FaultLoop::Remove(Device* device) {
  Slot* found = SlotOf(device);
  if (found == nullptr) return 0;
  Slot& slot = *found;
  if (!QuiesceSlot(slot)) {
    // The ring failed under us: the read buffer and the responses may still be the kernel's.
    // Keep the slot, and the caller keeps the device, rather than free memory the kernel may
    // write or answer a group a second time.
    Log(LogLevel::kError,
        absl::StrCat(device->name(), ": operations still in flight; cannot release it"));
    return std::nullopt;
  }
  ReadRemaining(device, MonotonicNs() + 100000000ull);
  WriteAll(device);
  const DeviceStats& st = device->stats();
  removed_owed_ += st.outstanding();
  device->queue().on_failed = nullptr;  // the loop no longer answers for it
  slots_.erase(std::find_if(slots_.begin(), slots_.end(), [device](const std::unique_ptr<Slot>& s) {
    return s->device == device;
  }));
  return st.outstanding() + st.responses_abandoned;
}

io_uring_sqe* FaultLoop::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // The submission queue is full: hand it to the kernel and take a fresh entry.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void FaultLoop::ArmRead(Slot& slot) {
  Device* d = slot.device;
  if (d->read_failed() || slot.read.in_flight || slot.quiesced) return;
  // The fault fd has ->read but not ->read_iter and no FMODE_NOWAIT. io_uring serves it through
  // loop_rw_iter (io_uring/rw.c), which refuses IOCB_NOWAIT unless the file is O_NONBLOCK; and
  // on an O_NONBLOCK file without FMODE_NOWAIT io_uring sets REQ_F_NOWAIT and hands EAGAIN back
  // instead of waiting (io_rw_init_file). So readiness is made explicit: a one-shot POLL_ADD
  // linked to the READ. The read is issued only once groups are queued and then runs inline;
  // the poll's own completion is skipped on success.
  if (io_uring_sq_space_left(&ring_) < 2) io_uring_submit(&ring_);
  io_uring_sqe* poll = GetSqe();
  io_uring_prep_poll_add(poll, d->fault_fd(), POLLIN);
  io_uring_sqe_set_data(poll, &slot.poll);
  poll->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
  io_uring_sqe* sqe = GetSqe();
  auto buf = d->BeginRead();
  // Offset 0: the fault fd's read insists on *ppos == 0 and never advances it.
  io_uring_prep_read(sqe, d->fault_fd(), buf.data(), static_cast<unsigned>(buf.size_bytes()), 0);
  io_uring_sqe_set_data(sqe, &slot.read);
  slot.read.in_flight = true;
}

void FaultLoop::ArmSignal() {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, signal_fd_.get(), siginfo_, sizeof(signalfd_siginfo), 0);
  io_uring_sqe_set_data(sqe, &signal_op_);
  signal_op_.in_flight = true;
}

void FaultLoop::SubmitWrites() {
  for (auto& slot : slots_) {
    ResponseQueue& q = slot->device->responses();
    if (slot->write.in_flight || !q.HasUnwritten()) continue;
    if (slot->device->write_failed()) {
      q.AbandonAll();
      continue;
    }
    auto span = q.BeginWrite();
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_write(sqe, slot->device->fault_fd(), span.data(),
                        static_cast<unsigned>(span.size_bytes()), 0);
    io_uring_sqe_set_data(sqe, &slot->write);
    slot->write.in_flight = true;
  }
}

void FaultLoop::HandleRead(Slot& slot, int res, uint64_t now) {
  slot.read.in_flight = false;
  FaultQueue& q = slot.device->queue();
  switch (q.OnRead(res, FaultQueue::ReadMode::kPolled, now)) {
    case FaultQueue::ReadResult::kCanceled:
    case FaultQueue::ReadResult::kFailed:
      return;  // not read again (a failure was reported through on_failed: see Add)
    case FaultQueue::ReadResult::kRetry:
      if (!q.error().ok()) Log(LogLevel::kError, std::string(q.error().message()));
      break;
    case FaultQueue::ReadResult::kProcessed:
    case FaultQueue::ReadResult::kEmpty:
    case FaultQueue::ReadResult::kGrown:
      break;
  }
  if (!stopping_) ArmRead(slot);
}

void FaultLoop::HandlePollFailure(Slot& slot, int res) {
  // Only a failed poll posts a completion (its success is skipped). When the head of a link
  // marked IOSQE_CQE_SKIP_SUCCESS fails, io_uring suppresses the completions of the requests
  // linked to it as well (req_set_fail, io_fail_links), so the read behind this poll is over
  // too and no completion will come for it.
  slot.read.in_flight = false;
  if (res != -ECANCELED) {
    slot.device->queue().MarkReadFailed(
        std::string(ErrnoStatus(-res, "", "poll fault fd").message()));
    return;
  }
  if (!stopping_) ArmRead(slot);
}

void FaultLoop::HandleWrite(Slot& slot, int res, uint64_t now) {
  slot.write.in_flight = false;
  // A dead fd is reported through on_failed (see Add).
  (void)slot.device->queue().OnWrite(res, now);
}

void FaultLoop::HandleSignal(int res) {
  signal_op_.in_flight = false;
  if (res == static_cast<int>(sizeof(signalfd_siginfo))) {
    const auto* info = reinterpret_cast<const signalfd_siginfo*>(siginfo_);
    switch (info->ssi_signo) {
      case SIGTERM:
      case SIGINT:
        Log(LogLevel::kInfo, absl::StrCat("signal ", info->ssi_signo, ": stopping"));
        stopping_ = true;
        if (on_stopping) on_stopping();
        break;
      case SIGUSR1:
        if (on_stats) on_stats();
        break;
      case SIGHUP:
        // Not here: a reload adds and removes devices, which must not happen while this
        // batch of completions is being walked.
        reload_requested_ = true;
        break;
      default:
        break;
    }
  }
  if (!stopping_) ArmSignal();
}

void FaultLoop::RunBlocking(const Device& device, std::function<absl::Status()> job,
                            std::function<void(absl::Status)> done) {
  if (blocking_ == nullptr) {
    done(job());
    return;
  }
  blocking_->Post(&device, std::move(job), std::move(done));
}

void FaultLoop::FinishBlocking(const Device& device) {
  if (blocking_ != nullptr) blocking_->Finish(&device);
}

int FaultLoop::DrainCq() {
  io_uring_cqe* cqe;
  unsigned head;
  int seen = 0;
  const uint64_t now = MonotonicNs();
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++seen;
    auto* ring_op = static_cast<RingOp*>(io_uring_cqe_get_data(cqe));
    if (ring_op == nullptr) continue;
    if (ring_op->client != nullptr) {
      // Deferred: control work runs after this turn's fault responses are on their way. The op
      // stays "in flight" until it is delivered, so that a client freeing its owner on an
      // earlier completion of this batch cannot free one that still has a completion to come.
      deferred_.push_back({ring_op, cqe->res, (cqe->flags & IORING_CQE_F_MORE) != 0});
      continue;
    }
    auto* op = static_cast<Op*>(ring_op);
    if (GetLogLevel() >= LogLevel::kDebug) {
      Log(LogLevel::kDebug,
          absl::StrCat("cqe kind=", static_cast<int>(op->op_kind), " res=", cqe->res,
                       op->slot ? " dev=" + op->slot->device->name() : ""));
    }
    switch (op->op_kind) {
      case OpKind::kRead:
        HandleRead(*op->slot, cqe->res, now);
        break;
      case OpKind::kWrite:
        HandleWrite(*op->slot, cqe->res, now);
        break;
      case OpKind::kSignal:
        HandleSignal(cqe->res);
        break;
      case OpKind::kPoll:
        HandlePollFailure(*op->slot, cqe->res);
        break;
      case OpKind::kCancel:
        break;
    }
  }
  io_uring_cq_advance(&ring_, seen);
  return seen;
}

int FaultLoop::ServeFaultsNow() {
  // Entering the kernel runs the task work that completes polls and reads (COOP_TASKRUN defers
  // it to our next kernel entry); the reads' records are then processed, and the responses
  // written (inline) and reaped. Client completions that come in are deferred as usual.
  io_uring_submit_and_get_events(&ring_);
  int seen = DrainCq();
  SubmitWrites();
  io_uring_submit(&ring_);
  return seen + DrainCq();
}

int FaultLoop::ProcessCompletions() {
  int seen = DrainCq();
  if (!deferred_.empty()) {
    // Fault responses first: queue this turn's writes and hand them to the kernel (they run
    // inline), collect their completions, and only then serve the clients. A burst of control
    // calls thus never sits between a page request and its answer, nor in its measured latency.
    SubmitWrites();
    io_uring_submit(&ring_);
    seen += DrainCq();
    std::vector<Deferred> batch;
    batch.swap(deferred_);
    slice_start_ = MonotonicNs();
    served_in_slices_ = 0;
    for (const Deferred& d : batch) {
      d.op->in_flight = d.more;
      d.op->client->OnCompletion(*this, *d.op, d.res);
      // A turn can carry hundreds of control calls (each a JSON reply to build). Every slice of
      // that work, page requests that arrived meanwhile are read and answered first, so control
      // load adds at most about one slice to a fault's latency.
      YieldToFaults();
    }
    slice_start_ = 0;
    seen += served_in_slices_;
  }
  return seen;
}

void FaultLoop::YieldToFaults() {
  if (slice_start_ == 0 || MonotonicNs() - slice_start_ < kClientSliceNs) return;
  served_in_slices_ += ServeFaultsNow();
  slice_start_ = MonotonicNs();
}

int FaultLoop::Run() {
  for (auto& slot : slots_) ArmRead(*slot);
  ArmSignal();
  for (RingClient* c : clients_) c->Start(*this);
  running_ = true;
  while (!stopping_) {
    if (reload_requested_) {
      reload_requested_ = false;
      if (on_reload) {
        on_reload();
      } else {
        Log(LogLevel::kWarning, "SIGHUP: nothing to reload");
      }
    }
    // ~0: no deadline (a plain uint64_t: GCC 12 misjudges an optional here as uninitialized).
    auto next = [this] { return next_deadline ? next_deadline().value_or(~uint64_t{0}) : ~0ull; };
    uint64_t deadline = next();
    if (deadline != ~uint64_t{0} && MonotonicNs() >= deadline) {
      if (on_deadline) on_deadline(MonotonicNs());
      deadline = next();
    }
    SubmitWrites();
    for (RingClient* c : clients_) c->Flush(*this);
    // A stop signal handled inside a reload's removal (the signal read is not re-armed once
    // stopping): drain now rather than wait for a completion that may never come.
    if (stopping_) break;
    int rc;
    if (!deferred_.empty()) {
      // Completions deferred by a Remove are waiting: do not sleep before serving them.
      rc = io_uring_submit(&ring_);
    } else if (deadline != ~uint64_t{0}) {
      const uint64_t now = MonotonicNs();
      const uint64_t wait = deadline > now ? deadline - now : 0;
      __kernel_timespec ts{static_cast<int64_t>(wait / 1'000'000'000),
                           static_cast<long long>(wait % 1'000'000'000)};
      io_uring_cqe* cqe = nullptr;
      rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      if (rc == -ETIME) rc = 0;
    } else {
      rc = io_uring_submit_and_wait(&ring_, 1);
    }
    if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
      Log(LogLevel::kError,
          std::string(ErrnoStatus(-rc, "", "io_uring_submit_and_wait").message()));
      break;
    }
    ProcessCompletions();
  }
  Drain();
  uint64_t owed = removed_owed_;
  for (auto& slot : slots_) owed += slot->device->stats().outstanding();
  if (owed != 0) {
    Log(LogLevel::kError, absl::StrCat(owed, " page request groups left unanswered at exit"));
    return 1;
  }
  return 0;
}

void FaultLoop::Drain() {
  // 1. Cancel the armed reads (and the signal read) and collect every completion still owed by
  //    the ring: a read that raced the cancel and returned records is processed like any other.
  for (auto& slot : slots_) {
    if (!slot->read.in_flight) continue;
    io_uring_sqe* sqe = GetSqe();
    // Cancelling the poll fails the linked read with -ECANCELED; a read already past its poll
    // completes normally and is processed.
    io_uring_prep_cancel(sqe, &slot->poll, 0);
    io_uring_sqe_set_data(sqe, &cancel_op_);
  }
  if (signal_op_.in_flight) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel(sqe, &signal_op_, 0);
    io_uring_sqe_set_data(sqe, &cancel_op_);
  }
  for (RingClient* c : clients_) c->Stop(*this);
  auto busy = [this] {
    if (signal_op_.in_flight) return true;
    for (RingClient* c : clients_) {
      if (c->Busy()) return true;
    }
    for (auto& slot : slots_) {
      if (slot->read.in_flight || slot->write.in_flight) return true;
    }
    return false;
  };
  while (busy()) {
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EBUSY) break;
    ProcessCompletions();
  }

  // 2. Read what is still queued and answer everything, synchronously: the fault fd's read and
  //    write never block. Bounded so that a device faulting without pause cannot hold up exit.
  const uint64_t deadline = MonotonicNs() + 1000000000ull;
  for (auto& slot : slots_) {
    ReadRemaining(slot->device, deadline);
    WriteAll(slot->device);
  }
}

void FaultLoop::ReadRemaining(Device* d, uint64_t deadline) {
  absl::Status st = d->ReadAvailable(deadline);
  if (!st.ok()) Log(LogLevel::kError, std::string(st.message()));
}

void FaultLoop::WriteAll(Device* d) {
  // A failure is reported through on_failed (see Add), once.
  (void)d->WriteQueued();
}

}  // namespace iopfd
