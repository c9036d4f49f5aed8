#include "iopfd/blocking_worker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "iopfd/errors.h"
#include "iopfd/log.h"

namespace iopfd {

BlockingWorker::~BlockingWorker() { Join(); }

absl::Status BlockingWorker::Init() {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "blocking worker", "eventfd");
  efd_.Reset(fd);
  return absl::OkStatus();
}

void BlockingWorker::Post(Job job, Done done) {
  if (!efd_.valid() || stopping_) {
    done(job());
    return;
  }
  ++pending_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(std::move(job), std::move(done));
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
    auto [job, done] = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    absl::Status st = job();
    lock.lock();
    busy_ = false;
    finished_.emplace_back(std::move(done), std::move(st));
    cv_.notify_all();  // Finish waits for the queue to empty
    const uint64_t one = 1;
    (void)!::write(efd_.get(), &one, sizeof(one));
  }
}

void BlockingWorker::Collect() {
  std::vector<std::pair<Done, absl::Status>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished.swap(finished_);
  }
  for (auto& [done, st] : finished) {
    --pending_;
    done(std::move(st));
  }
}

void BlockingWorker::Finish() {
  if (pending_ == 0) return;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }
  Collect();
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

void BlockingWorker::Start(FaultLoop& loop) {
  if (efd_.valid()) Arm(loop);
}

void BlockingWorker::Arm(FaultLoop& loop) {
  if (stopping_ || read_op_.in_flight) return;
  io_uring_sqe* sqe = loop.GetSqe();
  io_uring_prep_read(sqe, efd_.get(), &value_, sizeof(value_), 0);
  loop.Bind(sqe, &read_op_);
}

void BlockingWorker::OnCompletion(FaultLoop& loop, RingOp& op, int res) {
  if (&op == &cancel_op_) return;
  if (res < 0 && res != -EAGAIN && res != -EINTR) {
    if (res != -ECANCELED) {
      Log(LogLevel::kError,
          std::string(ErrnoStatus(-res, "blocking worker", "read eventfd").message()));
    }
    return;
  }
  Collect();
  Arm(loop);
}

void BlockingWorker::Stop(FaultLoop& loop) {
  stopping_ = true;
  Join();
  if (read_op_.in_flight && !cancel_op_.in_flight) {
    io_uring_sqe* sqe = loop.GetSqe();
    io_uring_prep_cancel(sqe, &read_op_, 0);
    loop.Bind(sqe, &cancel_op_);
  }
}

}  // namespace iopfd
