#include "iopfd/device/eventfd_watcher.h"

#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>

#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {

absl::StatusOr<int> EventfdWatcher::Watch(std::function<void()> signalled) {
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "", "eventfd");
  auto e = std::make_unique<Entry>();
  e->fd.Reset(fd);
  e->signalled = std::move(signalled);
  e->read.client = this;
  e->read.owner = e.get();
  e->cancel.client = this;
  e->cancel.owner = e.get();
  e->cancel.kind = 1;
  entries_.push_back(std::move(e));
  if (loop_ != nullptr) Arm(*entries_.back());
  return fd;
}

void EventfdWatcher::Arm(Entry& e) {
  if (stopping_ || e.closing || e.dead || e.read.in_flight) return;
  io_uring_sqe* sqe = loop_->GetSqe();
  io_uring_prep_read(sqe, e.fd.get(), &e.value, sizeof(e.value), 0);
  loop_->Bind(sqe, &e.read);
}

void EventfdWatcher::Cancel(Entry& e) {
  if (!e.read.in_flight || e.cancel.in_flight || loop_ == nullptr) return;
  io_uring_sqe* sqe = loop_->GetSqe();
  io_uring_prep_cancel(sqe, &e.read, 0);
  loop_->Bind(sqe, &e.cancel);
}

void EventfdWatcher::Reap() {
  // An entry goes (and its fd closes) only once neither of its operations is in flight: the
  // ring must never read into freed memory or a reused fd number.
  std::erase_if(entries_, [this](const std::unique_ptr<Entry>& e) {
    return e->closing && !e->read.in_flight && !e->cancel.in_flight && e.get() != dispatching_;
  });
}

void EventfdWatcher::Unwatch(int fd) {
  for (auto& e : entries_) {
    if (e->fd.get() != fd || e->closing) continue;
    e->closing = true;
    e->signalled = nullptr;
    Cancel(*e);
  }
  Reap();
}

size_t EventfdWatcher::watched() const {
  return static_cast<size_t>(
      std::count_if(entries_.begin(), entries_.end(), [](const auto& e) { return !e->closing; }));
}

void EventfdWatcher::Start(Ring& loop) {
  loop_ = &loop;
  for (auto& e : entries_) Arm(*e);
}

void EventfdWatcher::OnCompletion(Ring& /*loop*/, RingOp& op, int res) {
  auto* e = static_cast<Entry*>(op.owner);
  if (&op == &e->read && !e->closing) {
    if (res == static_cast<int>(sizeof(e->value))) {
      // The callback may unwatch this very entry (a REQ releases its device): it stays alive
      // until the callback returned, and is then not re-armed.
      dispatching_ = e;
      std::function<void()> cb = e->signalled;
      if (cb) cb();
      dispatching_ = nullptr;
    } else if (res < 0 && res != -EAGAIN && res != -EINTR && res != -ECANCELED) {
      Log(LogLevel::kError, std::string(ErrnoStatus(-res, "", "read interrupt eventfd").message()));
      e->dead = true;  // not read again (no spinning); its fd stays its own until Unwatch
    }
    Arm(*e);
  }
  Reap();
}

void EventfdWatcher::Stop(Ring& /*loop*/) {
  stopping_ = true;
  for (auto& e : entries_) Cancel(*e);
}

bool EventfdWatcher::Busy() const {
  return std::any_of(entries_.begin(), entries_.end(),
                     [](const auto& e) { return e->read.in_flight || e->cancel.in_flight; });
}

}  // namespace iopfd
