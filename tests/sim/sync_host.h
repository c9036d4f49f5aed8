// The fault loop's part, synchronously, for tests and fuzz targets that drive a DeviceManager on
// the simulated kernel: serving a device is reading its queue and writing its answers when the
// test says so (Turn), stopping and restarting its reader is bookkeeping, and blocking jobs (a
// function reset) run at once or, with defer_blocking, when the test runs them (as the worker
// thread would, while the loop goes on).
#ifndef IOPFD_TESTS_SIM_SYNC_HOST_H_
#define IOPFD_TESTS_SIM_SYNC_HOST_H_

#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/device_manager.h"

namespace iopfd::sim {

class SyncHost : public DeviceHost {
 public:
  void AddDevice(Device* d) override { served.push_back(d); }
  std::optional<uint64_t> RemoveDevice(Device* d) override {
    (void)d->ReadAvailable(~0ull);
    (void)d->WriteQueued();
    std::erase(served, d);
    return d->stats().outstanding();
  }
  bool Quiesce(Device& /*d*/) override {
    ++quiesces;
    return true;
  }
  void Rearm(Device& /*d*/) override { ++rearms; }
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
  // One loop turn for every served device. Returns the first error a read or write gave.
  absl::Status TurnStatus() {
    absl::Status first;
    for (Device* d : std::vector<Device*>(served)) {
      if (absl::Status st = d->ReadAvailable(~0ull); !st.ok() && first.ok()) first = st;
      if (absl::Status st = d->WriteQueued(); !st.ok() && first.ok()) first = st;
    }
    return first;
  }

  std::vector<Device*> served;
  int quiesces = 0;
  int rearms = 0;
  int finishes = 0;
  bool defer_blocking = false;
  std::vector<std::pair<std::function<absl::Status()>, std::function<void(absl::Status)>>> blocking;
};

}  // namespace iopfd::sim

#endif  // IOPFD_TESTS_SIM_SYNC_HOST_H_
