#include "iopfd/device/loop_host.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/device/blocking_worker.h"
#include "iopfd/service/log.h"

namespace iopfd {

void LoopHost::AddDevice(Device* d) {
  // However the queue is given up (the ring's read or write, or a synchronous one of a drain),
  // the daemon hears of it once.
  d->queue().on_failed = [this, d](const std::string& why) {
    Log(LogLevel::kError, absl::StrCat(d->name(), ": ", why), {{"DEVICE", d->name()}});
    if (on_device_failed) on_device_failed(*d, why);
  };
  devices_.push_back(d);
  loop_->Add(&d->queue());
}

std::optional<uint64_t> LoopHost::RemoveDevice(Device* d) {
  std::optional<uint64_t> unanswered = loop_->Remove(&d->queue());
  if (!unanswered.has_value()) return std::nullopt;  // still the loop's: kept, still reported
  d->queue().on_failed = nullptr;                    // the host no longer answers for it
  std::erase(devices_, d);
  return unanswered;
}

void LoopHost::RunBlocking(const Device& device, std::function<absl::Status()> job,
                           std::function<void(absl::Status)> done) {
  if (blocking_ == nullptr) {
    done(job());
    return;
  }
  blocking_->Post(&device, std::move(job), std::move(done));
}

void LoopHost::FinishBlocking(const Device& device) {
  if (blocking_ != nullptr) blocking_->Finish(&device);
}

}  // namespace iopfd
