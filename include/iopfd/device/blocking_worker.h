// Steps that may block for long (a function level reset waits 100 ms or more; a switch
// module's reset is the owner's code) run on a worker thread, so that the fault loop goes on
// serving every other device meanwhile. Their results come back on the loop's thread.
#ifndef IOPFD_DEVICE_BLOCKING_WORKER_H_
#define IOPFD_DEVICE_BLOCKING_WORKER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/base/fd.h"
#include "iopfd/loop/ring.h"

namespace iopfd {

// One worker thread, started with the first job; jobs run one at a time, in the order posted.
// Post, Finish and the RingClient calls are for the loop's thread only.
class BlockingWorker : public RingClient {
 public:
  using Job = std::function<absl::Status()>;
  using Done = std::function<void(absl::Status)>;

  BlockingWorker() = default;
  // Waits for the job that is running, if any; jobs not started are dropped, their `done`
  // never called.
  ~BlockingWorker() override;
  BlockingWorker(const BlockingWorker&) = delete;
  BlockingWorker& operator=(const BlockingWorker&) = delete;

  // Creates the eventfd the worker signals the loop with. Errors name eventfd(2) and the errno.
  absl::Status Init();
  // Runs `job` on the worker thread, then `done` with its result on the loop's thread (from
  // the ring's completion of the worker's eventfd, among the clients' completions). `key` names
  // what the job works on (a device), for Finish. Without Init, once stopping, or after the
  // eventfd failed, both run now, on the caller's thread.
  void Post(const void* key, Job job, Done done);
  // Makes sure no job of `key` is left: one not started yet runs now, on the caller's thread;
  // the running one is waited for; then their `done` are called now (a device going away must
  // not be freed under its job). Other keys' jobs are left alone. Returns at once when `key`
  // has none.
  void Finish(const void* key);
  // Returns the number of jobs posted whose `done` has not been called yet.
  size_t pending() const { return pending_; }

  // RingClient.
  void Start(Ring& loop) override;
  void OnCompletion(Ring& loop, RingOp& op, int res) override;
  void Flush(Ring& /*loop*/) override {}
  // Waits for the running job (the thread is joined); cancels the eventfd's read.
  void Stop(Ring& loop) override;
  bool Busy() const override { return read_op_.in_flight || cancel_op_.in_flight; }

 private:
  void Arm(Ring& loop);
  void ThreadMain();
  // Calls `done` of every job that has finished (of `key` only, when given).
  void Collect(const void* key = nullptr);
  void Join();

  UniqueFd efd_;
  RingOp read_op_{this, 0, nullptr, false};
  RingOp cancel_op_{this, 1, nullptr, false};
  uint64_t value_ = 0;
  bool stopping_ = false;
  size_t pending_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  struct Queued {
    const void* key;
    Job job;
    Done done;
  };
  struct Finished {
    const void* key;
    Done done;
    absl::Status status;
  };
  std::deque<Queued> queue_;        // guarded by mu_
  std::vector<Finished> finished_;  // guarded by mu_
  const void* running_ = nullptr;   // guarded by mu_: the key of the job that runs
  bool busy_ = false;               // guarded by mu_: a job runs
  bool quit_ = false;               // guarded by mu_
  bool dead_ = false;               // the eventfd's read failed: jobs run inline
  std::thread thread_;
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_BLOCKING_WORKER_H_
