// Eventfds read on the fault loop's ring: how VFIO's error (AER) and request interrupts reach
// iopfd (VFIO_DEVICE_SET_IRQS with an eventfd per interrupt).
#ifndef IOPFD_DEVICE_EVENTFD_WATCHER_H_
#define IOPFD_DEVICE_EVENTFD_WATCHER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/loop/ring.h"

namespace iopfd {

// Not thread-safe: used from the loop's thread.
class EventfdWatcher : public RingClient {
 public:
  EventfdWatcher() = default;
  EventfdWatcher(const EventfdWatcher&) = delete;
  EventfdWatcher& operator=(const EventfdWatcher&) = delete;

  // Creates an eventfd (non-blocking, close-on-exec) and calls `signalled` from the loop each
  // time it is signalled (several signals between two reads make one call). Returns the fd,
  // which the watcher owns, to hand to the kernel. Errors name eventfd(2) and the errno.
  absl::StatusOr<int> Watch(std::function<void()> signalled);
  // Stops watching fd: no call after this returns; the fd is closed once the ring lets go of
  // it. Unknown fds are ignored. May be called from a `signalled` callback.
  void Unwatch(int fd);
  // Returns the number of fds watched (not being unwatched).
  size_t watched() const;

  // RingClient.
  void Start(Ring& loop) override;
  void OnCompletion(Ring& loop, RingOp& op, int res) override;
  void Flush(Ring& /*loop*/) override {}
  void Stop(Ring& loop) override;
  bool Busy() const override;

 private:
  struct Entry {
    UniqueFd fd;
    std::function<void()> signalled;
    RingOp read;
    RingOp cancel;
    uint64_t value = 0;
    bool closing = false;  // Unwatch was called: goes once nothing of it is in flight
    bool dead = false;     // its read failed for good: not read again, kept until Unwatch
  };
  void Arm(Entry& e);
  void Cancel(Entry& e);
  void Reap();

  Ring* loop_ = nullptr;
  bool stopping_ = false;
  Entry* dispatching_ = nullptr;  // whose callback runs: never freed under it
  std::vector<std::unique_ptr<Entry>> entries_;
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_EVENTFD_WATCHER_H_
