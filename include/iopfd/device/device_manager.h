// The set of devices iopfd serves, and how it changes at run time: configuration reloads,
// devices handed over over the control socket (Adopt) and handed back (Detach).
#ifndef IOPFD_DEVICE_DEVICE_MANAGER_H_
#define IOPFD_DEVICE_DEVICE_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/config/config.h"
#include "iopfd/device/device.h"
#include "iopfd/device/drain.h"
#include "iopfd/fault/stats.h"

namespace iopfd {

struct Uevent;         // iopfd/device/uevent.h
class EventfdWatcher;  // iopfd/device/eventfd_watcher.h

// What the manager needs from whoever drives the fault queues (the FaultLoop; a fake in
// tests): serving devices, and stopping and restarting a device's reading for its drains.
class DeviceHost : public DrainIo {
 public:
  ~DeviceHost() override = default;
  // Starts serving d; d stays alive until RemoveDevice(d) returned.
  virtual void AddDevice(Device* d) = 0;
  // Stops serving d after answering everything read from it. Returns the number of groups
  // read and never answered (0 unless its fault fd failed), or nullopt when d could not be
  // released (it must then be kept alive: the host still refers to it).
  virtual std::optional<uint64_t> RemoveDevice(Device* d) = 0;
};

// A device a reload or an adoption could not attach, and why.
struct DeviceProblem {
  std::string device;
  std::string error;
};

// What a reload did, device by device.
struct ReloadReport {
  std::vector<std::string> added;      // newly configured, now served
  std::vector<std::string> removed;    // no longer configured, no longer served
  std::vector<std::string> restarted;  // configuration changed: removed and attached again
  std::vector<std::string> kept;       // unchanged, not disturbed
  std::vector<std::string> detached;   // detached by Detach and unchanged since: left alone
  std::vector<DeviceProblem> failed;   // configured but not attached (removed ones included)
  uint64_t unanswered = 0;             // groups removals left unanswered (fd failures only)
};

// Owns the served devices. A device is either configured (a file in devices.d; reloads manage
// it) or adopted at run time (Adopt; only Detach removes it, reloads leave it alone).
//
// Inherited fds (LISTEN_FDS at start) live in a pool: attaching a device takes the fds its
// configuration names, and those no device names stay held for a later reload. A device
// restarted by a reload (its settings changed) gives its fds back to the pool and takes them
// again. A device removed from the configuration, or detached, is handed back: its fds are
// closed, so that when iopfd held the last reference the kernel can tear the objects down and
// answer what is still queued. So is a device whose fault fd failed.
//
// Not thread-safe: used from the fault loop's thread only.
class DeviceManager {
 public:
  // host and sys must outlive the manager. `pool` holds the inherited fds; limits size each
  // device's read buffer (daemon.read_records, daemon.max_read_records).
  DeviceManager(DeviceHost* host, Syscalls* sys, ListenFds pool, ReadLimits limits);
  ~DeviceManager();
  DeviceManager(const DeviceManager&) = delete;
  DeviceManager& operator=(const DeviceManager&) = delete;

  // Makes the configured devices those of `devices` (a validated configuration): removes those
  // no longer configured, restarts those whose configuration changed (anything but source
  // positions), attaches the new ones and retries those that failed before. Devices whose
  // configuration is unchanged are not touched. A name taken by a device adopted at run time is
  // reported in `failed`. Attach errors name the device, the step and the errno.
  ReloadReport Apply(const std::vector<DeviceConfig>& devices);

  // Attaches an adopt-mode device at run time with the fds passed along (named as its
  // configuration refers to them). Errors: AlreadyExists when a device of that name is served
  // or configured; InvalidArgument when the configuration is not adopt mode or a passed fd is
  // not named by it; the attach errors otherwise. On error every passed fd is closed. With a
  // ledger (inflight_ledger.h: the fd store keeps the device across restarts), the device
  // records in it what a crash would lose, after answering what a previous process left there
  // (Device::UseLedger; a recovered answer that cannot be written is logged, not an error).
  // With `maps` (the map record a previous process kept for the device), it first takes back
  // what that process held mapped (Device::TakeBackMappings).
  absl::Status Adopt(const DeviceConfig& config, ListenFds fds,
                     std::unique_ptr<InflightLedger> ledger = nullptr,
                     std::unique_ptr<MapRecord> maps = nullptr);

  // Stops serving a device after answering everything read from it, and closes its fds; a
  // configured device stays detached across reloads until its configuration changes. Returns
  // the device's final statistics (outstanding() is what was left unanswered: 0 unless its fd
  // failed). NotFound when no such device is served.
  absl::StatusOr<DeviceStats> Detach(const std::string& name);

  // Returns the device of that name, or nullptr.
  Device* Find(const std::string& name);
  // The served devices, in the order they were attached.
  const std::vector<std::unique_ptr<Device>>& devices() const { return devices_; }
  // Returns true for a device adopted at run time (not from the configuration).
  bool IsAdoptedAtRunTime(const std::string& name) const { return runtime_.count(name) != 0; }
  // Returns the number of configured devices (served or not).
  size_t configured() const { return configured_.size(); }
  // Returns the number of configured devices taken away by Detach.
  size_t detached() const { return detached_.size(); }
  // Returns the names of inherited fds no device has taken.
  std::vector<std::string> UnclaimedFds() const { return pool_.Untaken(); }

  // Returns the drain state machine of a served device, or nullptr when there is no such
  // device. Every served device has one; in adopt mode its requests fail with Unimplemented
  // (the owner holds the attachments).
  DrainController* DrainOf(const std::string& name);
  const DrainController* DrainOf(const Device& device) const;
  // Returns the earliest drain deadline (an owner's halt timing out), or nullopt.
  std::optional<uint64_t> NextDeadline() const;
  // Runs the drain deadlines that passed by now_ns (the device is quarantined).
  void Tick(uint64_t now_ns);

  // Called for every drain state change of a device.
  std::function<void(const Device&, const DrainTransition&)> on_transition;

  // A kernel uevent (UeventListener): acts on the served device whose devpath it names, if any.
  //   remove, unbind: the device is gone (its attachments went with it, and the kernel answered
  //     their groups): DETACHED, what iopfd held for it is dropped unwritten, and it is removed
  //     (a configured one is attached again by a later reload that finds it).
  //   change with ERROR_EVENT=BEGIN_RECOVERY: PCI error recovery stopped the device: halt its
  //     page requests and hold it (HALTED); SUCCESSFUL_RECOVERY resumes a device the recovery
  //     held (not one an operator held); FAILED_RECOVERY quarantines it.
  // Returns the name of the device it acted on, or "" (not ours, or nothing to do).
  std::string OnUevent(const Uevent& event);

  // vfio mode: VFIO's error interrupt (AER: the PCI core's error_detected) and request
  // interrupt (the kernel asks for the device back: unbind, hot-unplug) of each device are
  // eventfds the watcher reads on the loop. Set before the first Apply/Adopt; may stay null.
  void set_irq_watcher(EventfdWatcher* watcher) { irqs_ = watcher; }
  // Keeps every device attached from now on within its budgets and the daemon's (pager.h); the
  // pager must outlive the manager's devices.
  void set_pager(Pager* pager) { pager_ = pager; }
  // A VFIO interrupt of the device `name`: ERR holds it halted like BEGIN_RECOVERY (the
  // recovery's SUCCESSFUL_RECOVERY uevent resumes it); REQ drains it (everything parked, held
  // answers dropped) and releases it, closing its fds so the kernel can take the device.
  // Returns true when it acted.
  bool OnVfioIrq(const std::string& name, uint32_t index);

  // Called when a device adopted at run time is no longer served (Detach, its removal by the
  // kernel, a VFIO request interrupt): its owner has it back, a restart must not adopt it again.
  // Not called when the manager is destroyed at exit.
  std::function<void(const std::string&)> on_adopted_gone;

  // Called for a configured adopt-mode device once attached, before it is served (nothing read
  // from its fault queue yet): returns the in-flight ledger it is to record its reads in
  // (configured_ledgers.h), or nullptr for none. Unset: none.
  std::function<std::unique_ptr<InflightLedger>(Device&)> configured_ledger;
  // Called for a configured adopt-mode device once attached, before it is served: returns the
  // map record a previous process kept for it, to take back (Device::TakeBackMappings), or
  // nullptr. Unset: none. (A device a reload restarts takes over its predecessor's record.)
  std::function<std::unique_ptr<MapRecord>(Device&)> configured_maps;
  // Called for a configured adopt-mode device after it took back what it could, before it is
  // served: to keep its map record across restarts. Unset: not kept.
  std::function<void(const Device&)> keep_configured_maps;
  // Called when a configured adopt-mode device is no longer served (removed or restarted by a
  // reload, detached, removed by the kernel). Not called when the manager is destroyed at exit.
  std::function<void(const std::string&)> on_configured_gone;

  // Called for every change: event ("device_added", "device_removed", "device_restarted",
  // "device_attach_failed", "device_adopted", "device_detached"), device, detail.
  std::function<void(const std::string&, const std::string&, const std::string&)> on_event;

 private:
  // Attaches config; on success serves it (with `ledger`, or for a configured device the one
  // configured_ledger gives), after taking back what `maps` recorded. Returns the attach error
  // otherwise.
  absl::Status AttachAndServe(const DeviceConfig& config, ListenFds* fds,
                              std::unique_ptr<InflightLedger> ledger,
                              std::unique_ptr<MapRecord> maps, bool configured);
  // Apply's first step: removes the configured devices `wanted` no longer names and those whose
  // settings changed (their fds back to the pool), reporting each in *report. Returns the
  // configurations of the changed ones, to attach again.
  // Takes back what `maps` recorded (for a configured adopt-mode device without one: what its
  // predecessor before a reload, or configured_maps, gives), then keeps a configured device's
  // record (keep_configured_maps).
  void TakeBackMappings(Device& dev, std::unique_ptr<MapRecord> maps, bool configured_adopt);
  // The map records of configured devices a reload is restarting, for their successors.
  std::map<std::string, std::unique_ptr<MapRecord>> carried_maps_;
  std::vector<const DeviceConfig*> RemoveChanged(
      const std::map<std::string, const DeviceConfig*>& wanted, ReloadReport* report);
  // Apply's last step: attaches each of to_attach (new, restarted or failed before) and reports
  // each outcome in *report (a restarted device that fails to attach again is removed).
  void AttachAll(const std::vector<const DeviceConfig*>& to_attach, ReloadReport* report);
  // Stops serving the device at index i and destroys it; its adopt fds go to the pool when
  // keep_fds, else they are closed. Returns its final statistics.
  DeviceStats RemoveAt(size_t i, bool keep_fds);
  void Emit(const std::string& event, const std::string& device, const std::string& detail);
  // The device at index i is gone or must be given up: DETACHED, its held answers dropped
  // unwritten (the kernel answered or will answer their groups), removed with its fds closed.
  void RemoveGone(size_t i, const std::string& cause);

  DeviceHost* host_;
  Syscalls* sys_;
  ListenFds pool_;
  ReadLimits limits_;
  std::vector<std::unique_ptr<Device>> devices_;
  std::map<std::string, DeviceConfig> configured_;  // the configuration last applied
  std::map<std::string, DeviceConfig> detached_;    // configured devices Detach took away
  std::set<std::string> runtime_;                   // names adopted at run time
  EventfdWatcher* irqs_ = nullptr;
  Pager* pager_ = nullptr;
  std::map<const Device*, std::vector<int>> irq_fds_;  // the eventfds watched for a device
  // Devices a PCI error recovery holds (BEGIN_RECOVERY seen, no outcome yet).
  std::set<std::string> recovering_;
  // One per served device (keyed by the device, which outlives it).
  std::map<const Device*, std::unique_ptr<DrainController>> drains_;
  // Devices the host could not release (its ring failed): kept alive, never served again.
  std::vector<std::unique_ptr<Device>> unreleased_;
};

// The outcome of re-reading the configuration files.
struct ReloadOutcome {
  std::vector<ConfigError> errors;  // not empty: the configuration is invalid, nothing changed
  ReloadReport report;
  // Global settings that changed but take effect only at the next start (their key names).
  std::vector<std::string> restart_required;
};

// Loads the configuration as `options` say. When it is valid, applies its devices to manager,
// sets the log level, and updates *global with the settings that apply at run time (log_level,
// control.group, control.admin_group); the others keep their values and are listed in
// restart_required when they changed. When it is invalid, changes nothing.
ReloadOutcome ReloadFromFiles(const LoadOptions& options, GlobalConfig* global,
                              DeviceManager* manager);

}  // namespace iopfd

#endif  // IOPFD_DEVICE_DEVICE_MANAGER_H_
