#include "iopfd/loop/ring.h"

#include <poll.h>
#include <sys/signalfd.h>
#include <time.h>

#include <cerrno>
#include <csignal>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {
// Client work done between two looks at the priority client's operations (ProcessCompletions).
constexpr uint64_t kClientSliceNs = 50000;
}  // namespace

absl::StatusOr<std::unique_ptr<Ring>> Ring::Create(uint32_t entries) {
  std::unique_ptr<Ring> ring(new Ring());
  // One thread owns the ring: SINGLE_ISSUER and COOP_TASKRUN spare the kernel the cross-thread
  // wakeups (Linux >= 6.0). Older kernels refuse the flags with EINVAL; retry without them.
  // (DEFER_TASKRUN was tried: with it, iopfd serving 64 devices did not finish its stop within
  // 30 s in the VM bench, while with one device it stopped normally; not understood yet, so
  // not used. PERFORMANCE.md.)
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
  int rc = io_uring_queue_init_params(entries, &ring->ring_, &params);
  if (rc == -EINVAL) rc = io_uring_queue_init(entries, &ring->ring_, 0);
  if (rc < 0) return ErrnoStatus(-rc, "", "io_uring_queue_init");
  ring->ring_ready_ = true;

  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGHUP}) sigaddset(&set, sig);
  int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "", "signalfd");
  ring->signal_fd_.Reset(fd);
  return ring;
}

Ring::~Ring() {
  if (ring_ready_) io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // The submission queue is full: hand it to the kernel and take a fresh entry.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

io_uring_sqe* Ring::GetSqes(unsigned n) {
  // Linked entries must be submitted together: make room for all of them first.
  if (io_uring_sq_space_left(&ring_) < n) io_uring_submit(&ring_);
  return GetSqe();
}

void Ring::ReadWhenReadable(int fd, void* buf, size_t len, RingOp* poll, RingOp* read) {
  io_uring_sqe* p = GetSqes(2);
  io_uring_prep_poll_add(p, fd, POLLIN);
  io_uring_sqe_set_data(p, poll);
  // Only a failed poll posts a completion; when the head of a link marked
  // IOSQE_CQE_SKIP_SUCCESS fails, io_uring suppresses the linked requests' completions too
  // (req_set_fail, io_fail_links), so the read then never completes.
  p->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
  io_uring_sqe* r = GetSqe();
  io_uring_prep_read(r, fd, buf, static_cast<unsigned>(len), 0);
  Bind(r, read);
}

void Ring::Write(int fd, const void* buf, size_t len, RingOp* op) {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_write(sqe, fd, buf, static_cast<unsigned>(len), 0);
  Bind(sqe, op);
}

void Ring::CancelPoll(RingOp* poll) {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_cancel(sqe, poll, 0);
  BindIgnored(sqe);
}

void Ring::ArmSignal() {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, signal_fd_.get(), siginfo_, sizeof(signalfd_siginfo), 0);
  Bind(sqe, &signal_op_);
}

void Ring::HandleSignal(int res) {
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
        // Not here: a reload adds and removes work, which must not happen while this batch
        // of completions is being walked.
        reload_requested_ = true;
        break;
      default:
        break;
    }
  }
  if (!stopping_) ArmSignal();
}

int Ring::Reap() {
  io_uring_cqe* cqe;
  unsigned head;
  int seen = 0;
  ++reaps_;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++seen;
    auto* op = static_cast<RingOp*>(io_uring_cqe_get_data(cqe));
    if (op == nullptr) continue;
    const bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (op->client == nullptr) {
      op->in_flight = more;
      if (op->kind == kSignal) HandleSignal(cqe->res);
    } else if (op->client == priority_) {
      op->in_flight = more;
      priority_->OnCompletion(*this, *op, cqe->res);
    } else {
      // Deferred: client work runs after this turn's priority work is on its way. The op stays
      // "in flight" until it is delivered, so that a client freeing its owner on an earlier
      // completion of this batch cannot free one that still has a completion to come.
      deferred_.push_back({op, cqe->res, more});
    }
  }
  io_uring_cq_advance(&ring_, seen);
  return seen;
}

int Ring::ServePriority() {
  // Entering the kernel runs the task work that completes polls and reads (COOP_TASKRUN defers
  // it to our next kernel entry); what they bring is handled, and the priority client's work
  // submitted (it runs inline) and reaped.
  io_uring_submit_and_get_events(&ring_);
  int seen = Reap();
  if (priority_ != nullptr) priority_->Flush(*this);
  io_uring_submit(&ring_);
  return seen + Reap();
}

void Ring::ProcessCompletions() {
  Reap();
  if (deferred_.empty()) return;
  // The priority client's work first: queued and handed to the kernel (it runs inline), its
  // completions collected, and only then the other clients served. A burst of control calls
  // thus never sits between a page request and its answer, nor in its measured latency.
  if (priority_ != nullptr) priority_->Flush(*this);
  io_uring_submit(&ring_);
  Reap();
  std::vector<Deferred> batch;
  batch.swap(deferred_);
  slice_start_ = MonotonicNs();
  for (const Deferred& d : batch) {
    d.op->in_flight = d.more;
    d.op->client->OnCompletion(*this, *d.op, d.res);
    // A turn can carry hundreds of control calls (each a JSON reply to build). Every slice of
    // that work, what arrived for the priority client meanwhile is served first, so client load
    // adds at most about one slice to a page request's latency.
    Yield();
  }
  slice_start_ = 0;
}

void Ring::Yield() {
  if (slice_start_ == 0 || MonotonicNs() - slice_start_ < kClientSliceNs) return;
  ServePriority();
  slice_start_ = MonotonicNs();
}

bool Ring::WaitUntil(const std::function<bool()>& done, const char* what) {
  while (!done()) {
    if (priority_ != nullptr) priority_->Flush(*this);
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
      Log(LogLevel::kError,
          std::string(ErrnoStatus(-rc, what, "io_uring_submit_and_wait").message()));
      return false;
    }
    Reap();
  }
  return true;
}

uint64_t Ring::StartTurn() {
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
  return deadline;
}

bool Ring::Run() {
  if (priority_ != nullptr) priority_->Start(*this);
  ArmSignal();
  for (RingClient* c : clients_) c->Start(*this);
  running_ = true;
  while (!stopping_) {
    const uint64_t deadline = StartTurn();
    if (priority_ != nullptr) priority_->Flush(*this);
    for (RingClient* c : clients_) c->Flush(*this);
    // A stop signal handled inside a reload (the signal read is not re-armed once stopping):
    // stop now rather than wait for a completion that may never come.
    if (stopping_) break;
    int rc;
    if (!deferred_.empty()) {
      // Completions deferred by a WaitUntil are waiting: do not sleep before serving them.
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
      failed_ = true;
      break;
    }
    ProcessCompletions();
  }
  Drain();
  return !failed_;
}

bool Ring::AnyBusy() const {
  if (signal_op_.in_flight) return true;
  if (priority_ != nullptr && priority_->Busy()) return true;
  for (RingClient* c : clients_) {
    if (c->Busy()) return true;
  }
  return false;
}

void Ring::Drain() {
  // Cancel the signal read and have every client cancel what it has in flight, then collect
  // every completion still owed by the ring: an operation that raced its cancel and succeeded
  // is handled like any other.
  if (signal_op_.in_flight) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel(sqe, &signal_op_, 0);
    BindIgnored(sqe);
  }
  if (priority_ != nullptr) priority_->Stop(*this);
  for (RingClient* c : clients_) c->Stop(*this);
  while (AnyBusy()) {
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
      failed_ = true;
      break;
    }
    ProcessCompletions();
  }
}

}  // namespace iopfd
