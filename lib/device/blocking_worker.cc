#include "iopfd/device/blocking_worker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {

BlockingWorker::~BlockingWorker() { Join(); }

absl::Status BlockingWorker::Init() {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "blocking worker", "eventfd");
  efd_.Reset(fd);
  return absl::OkStatus();
}

void BlockingWorker::Post(const void* key, Job job, Done done) {
  if (!efd_.valid() || stopping_ || dead_) {
    done(job());
    return;
  }
  ++pending_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back({key, std::move(job), std::move(done)});
  }
  // Started with the first job: a daemon that never resets a function has no extra thread. It
  // inherits the loop thread's signal mask, which blocks the signals the loop reads.
  if (!thread_.joinable()) thread_ = std::thread([this] { ThreadMain(); });
  cv_.notify_all();
}

void BlockingWorker::ThreadMain() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return quit_ || !queue_.empty(); });
    if (quit_) return;
    Queued q = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    running_ = q.key;
    lock.unlock();
    absl::Status st = q.job();
    lock.lock();
    busy_ = false;
    running_ = nullptr;
    finished_.push_back({q.key, std::move(q.done), std::move(st)});
    cv_.notify_all();  // Finish may wait for this job
    const uint64_t one = 1;
    (void)!::write(efd_.get(), &one, sizeof(one));
  }
}

void BlockingWorker::Collect(const void* key) {
  std::vector<Finished> now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Finished> later;
    for (Finished& f : finished_) {
      (key == nullptr || f.key == key ? now : later).push_back(std::move(f));
    }
    finished_.swap(later);
  }
  for (Finished& f : now) {
    --pending_;
    f.done(std::move(f.status));
  }
}

void BlockingWorker::Finish(const void* key) {
  if (pending_ == 0) return;
  std::vector<Queued> not_started;
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->key == key) {
        not_started.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    cv_.wait(lock, [this, key] { return !busy_ || running_ != key; });
  }
  Collect(key);
  for (Queued& q : not_started) {
    --pending_;
    q.done(q.job());
  }
}

void BlockingWorker::Join() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BlockingWorker::Start(Ring& loop) {
  if (efd_.valid()) Arm(loop);
}

void BlockingWorker::Arm(Ring& loop) {
  if (stopping_ || read_op_.in_flight) return;
  io_uring_sqe* sqe = loop.GetSqe();
  io_uring_prep_read(sqe, efd_.get(), &value_, sizeof(value_), 0);
  loop.Bind(sqe, &read_op_);
}

void BlockingWorker::OnCompletion(Ring& loop, RingOp& op, int res) {
  if (&op == &cancel_op_) return;
  if (res < 0 && res != -EAGAIN && res != -EINTR) {
    if (res != -ECANCELED) {
      // Results could no longer come back: from now on jobs run on the loop's thread (slow,
      // but every drain finishes), and those already out are waited for here.
      Log(LogLevel::kError,
          absl::StrCat(ErrnoStatus(-res, "blocking worker", "read eventfd").message(),
                       "; function resets now run on the fault loop's thread"));
      dead_ = true;
      std::vector<const void*> keys;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const Queued& q : queue_) keys.push_back(q.key);
        if (busy_) keys.push_back(running_);
        for (const Finished& f : finished_) keys.push_back(f.key);
      }
      for (const void* key : keys) Finish(key);
    }
    return;
  }
  Collect();
  Arm(loop);
}

void BlockingWorker::Stop(Ring& loop) {
  stopping_ = true;
  Join();
  if (read_op_.in_flight && !cancel_op_.in_flight) {
    io_uring_sqe* sqe = loop.GetSqe();
    io_uring_prep_cancel(sqe, &read_op_, 0);
    loop.Bind(sqe, &cancel_op_);
  }
}

}  // namespace iopfd
