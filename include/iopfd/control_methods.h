// The io.iopfd methods of the control socket (lib/control/io.iopfd.varlink).
#ifndef IOPFD_CONTROL_METHODS_H_
#define IOPFD_CONTROL_METHODS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "iopfd/device.h"
#include "iopfd/varlink.h"

namespace iopfd {

// What the methods read and change. Owned by main; outlives the service.
struct DaemonState {
  std::string version;
  uint64_t start_ns = 0;  // CLOCK_MONOTONIC at start
  size_t devices_configured = 0;
  std::vector<std::unique_ptr<Device>>* devices = nullptr;
  EventBus* events = nullptr;  // Monitor's subscribers
};

// The text of lib/control/io.iopfd.varlink, compiled in.
extern const char kIopfdInterfaceDescription[];

// Registers interface io.iopfd and its methods on service.
void RegisterIopfdMethods(VarlinkService* service, DaemonState* state);

// Returns the statistics of the given devices in the Prometheus text exposition format.
std::string PrometheusText(const std::vector<const Device*>& devices);

}  // namespace iopfd

#endif  // IOPFD_CONTROL_METHODS_H_
