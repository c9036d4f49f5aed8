// The io.iopfd methods of the control socket (lib/control/io.iopfd.varlink).
#ifndef IOPFD_CONTROL_CONTROL_METHODS_H_
#define IOPFD_CONTROL_CONTROL_METHODS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iopfd/control/varlink.h"
#include "iopfd/device/device.h"
#include "iopfd/device/device_manager.h"
#include "iopfd/device/uevent.h"
#include "iopfd/fault/pager.h"
#include "iopfd/service/fd_store.h"

namespace iopfd {

// What the methods read and change. Owned by main; outlives the service.
struct DaemonState {
  std::string version;
  uint64_t start_ns = 0;  // CLOCK_MONOTONIC at start
  DeviceManager* manager = nullptr;
  EventBus* events = nullptr;  // Monitor's subscribers
  // Re-reads the configuration files and applies them (Reload).
  std::function<ReloadOutcome()> reload;
  // True once the daemon is stopping: Reload, Adopt and Detach then answer io.iopfd.Busy.
  std::function<bool()> stopping;
  // The kernel uevent listener, or null when the socket could not be opened.
  const UeventListener* uevents = nullptr;
  // Called after a successful Adopt with the device and the call's config text (the fd store
  // keeps both for the next start). May be empty.
  std::function<void(const Device&, const std::string& config_text)> on_adopted = nullptr;
  // systemd's fd store, reported by GetStatus; may be null (reported as not enabled).
  const FdStore* fd_store = nullptr;
  // Makes the in-flight ledger of a device being adopted (when the fd store keeps adopted
  // devices across restarts), or returns null (none: the error is logged). May be empty.
  std::function<std::unique_ptr<InflightLedger>(const std::string& device)> make_ledger = nullptr;
  // The pager (budgets, eviction), for GetStats' daemon-wide and per-space paging counters; may
  // be null (none reported).
  const Pager* pager = nullptr;
};

// An Adopt call's device, or why it cannot be adopted.
struct AdoptRequest {
  std::optional<DeviceConfig> config;  // set when the text is acceptable
  std::vector<std::string> errors;     // otherwise, each error with its position
};

// Parses and checks the config text of an Adopt call (or of an adoption the fd store kept):
// exactly one device, valid, without file: backings (a path would let the caller map any file
// iopfd can open) or a switch module (a path iopfd would load). Whether it is adopt mode is
// DeviceManager::Adopt's check. Returns the device, or every error.
AdoptRequest ParseAdoptConfig(const std::string& text);

// The text of lib/control/io.iopfd.varlink, compiled in.
extern const char kIopfdInterfaceDescription[];

// Returns who may call each io.iopfd method (registered on the service by RegisterIopfdMethods).
const std::vector<std::pair<std::string, Access>>& IopfdMethodAccess();

// Registers interface io.iopfd, its methods and their access entries on service.
void RegisterIopfdMethods(VarlinkService* service, DaemonState* state);

// Returns the statistics of the given devices in the Prometheus text exposition format; with
// state_of, also an iopfd_device_state gauge naming each device's state.
std::string PrometheusText(const std::vector<const Device*>& devices,
                           const std::function<const char*(const Device&)>& state_of = nullptr);

}  // namespace iopfd

#endif  // IOPFD_CONTROL_CONTROL_METHODS_H_
