// The device layer's side of the fault loop: serves each device's fault queue on a FaultLoop,
// runs function resets on the blocking worker, and tells the daemon when a queue is given up.
#ifndef IOPFD_DEVICE_LOOP_HOST_H_
#define IOPFD_DEVICE_LOOP_HOST_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "iopfd/device/device.h"
#include "iopfd/device/device_manager.h"
#include "iopfd/fault/fault_loop.h"

namespace iopfd {

class BlockingWorker;  // iopfd/device/blocking_worker.h

class LoopHost : public DeviceHost {
 public:
  // loop must outlive the host.
  explicit LoopHost(FaultLoop* loop) : loop_(loop) {}

  // DeviceHost: the device's FaultQueue added to, removed from, quiesced and re-armed on the
  // loop (FaultLoop's calling rules apply). A device served here reports a queue given up
  // (whichever path gave it up) through on_device_failed, once, and logs it.
  void AddDevice(Device* d) override;
  std::optional<uint64_t> RemoveDevice(Device* d) override;
  bool Quiesce(Device& d) override { return loop_->Quiesce(&d.queue()); }
  void Rearm(Device& d) override { loop_->Rearm(&d.queue()); }
  // On the worker set with set_blocking_worker (a client of the loop's ring), else now.
  void RunBlocking(const Device& device, std::function<absl::Status()> job,
                   std::function<void(absl::Status)> done) override;
  void FinishBlocking(const Device& device) override;
  // Where RunBlocking's jobs run; it must be one of the ring's clients and outlive the host.
  void set_blocking_worker(BlockingWorker* worker) { blocking_ = worker; }

  // Returns the devices served, in the order they were added.
  std::vector<Device*> served() const { return devices_; }
  FaultLoop& loop() { return *loop_; }

  // A device's fault queue was given up for reading or writing (why says which and how).
  std::function<void(const Device&, const std::string& why)> on_device_failed;

 private:
  FaultLoop* loop_;
  BlockingWorker* blocking_ = nullptr;
  std::vector<Device*> devices_;
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_LOOP_HOST_H_
