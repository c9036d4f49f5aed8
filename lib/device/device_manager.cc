#include "iopfd/device/device_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/device/eventfd_watcher.h"
#include "iopfd/device/uevent.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

// The fd names a device's configuration refers to (adopt mode), in no particular order.
std::vector<std::string> FdNamesOf(const DeviceConfig& c) {
  std::vector<std::string> names;
  if (c.mode != AttachMode::kAdopt) return names;
  names.push_back(c.adopt.iommufd_fd);
  names.push_back(c.adopt.fault_fd);
  if (!c.adopt.device_fd.empty()) names.push_back(c.adopt.device_fd);
  for (const SpaceConfig& s : c.spaces) {
    for (const RegionConfig& r : s.regions) {
      if (r.backing == BackingKind::kInheritedFd) names.push_back(r.fd_name);
    }
  }
  return names;
}

}  // namespace

DeviceManager::DeviceManager(DeviceHost* host, Syscalls* sys, ListenFds pool, ReadLimits limits)
    : host_(host), sys_(sys), pool_(std::move(pool)), limits_(limits) {}

DeviceManager::~DeviceManager() = default;

Device* DeviceManager::Find(const std::string& name) {
  for (auto& d : devices_) {
    if (d->name() == name) return d.get();
  }
  return nullptr;
}

void DeviceManager::Emit(const std::string& event, const std::string& device,
                         const std::string& detail) {
  if (on_event) on_event(event, device, detail);
}

void DeviceManager::TakeBackMappings(Device& dev, std::unique_ptr<MapRecord> maps,
                                     bool configured_adopt) {
  if (maps == nullptr && configured_adopt) {
    if (auto carried = carried_maps_.find(dev.name()); carried != carried_maps_.end()) {
      maps = std::move(carried->second);
      carried_maps_.erase(carried);
    } else if (configured_maps) {
      maps = configured_maps(dev);
    }
  }
  if (maps != nullptr) (void)dev.TakeBackMappings(std::move(maps));
  if (configured_adopt && keep_configured_maps) keep_configured_maps(dev);
}

absl::Status DeviceManager::AttachAndServe(const DeviceConfig& config, ListenFds* fds,
                                           std::unique_ptr<InflightLedger> ledger,
                                           std::unique_ptr<MapRecord> maps, bool configured) {
  auto dev = Device::Attach(config, fds, sys_, limits_);
  if (!dev.ok()) return dev.status();
  // Budgets before anything is mapped (a ledger's leftovers are resolved just below), and what
  // a previous process mapped counted against them before that.
  if (pager_ != nullptr) (*dev)->UsePager(pager_);
  TakeBackMappings(**dev, std::move(maps), configured && config.mode == AttachMode::kAdopt);
  if (ledger == nullptr && configured && config.mode == AttachMode::kAdopt && configured_ledger) {
    ledger = configured_ledger(**dev);
  }
  if (ledger != nullptr) {
    // Before the loop reads the device: what a dead process left in the ledger's buffer would
    // be overwritten by the first read.
    absl::Status st = (*dev)->UseLedger(std::move(ledger));
    if (!st.ok()) Log(LogLevel::kError, std::string(st.message()), {{"DEVICE", config.name}});
  }
  Log(LogLevel::kInfo,
      absl::StrCat(config.name, ": attached (", std::string(NameOf(kAttachModeNames, config.mode)),
                   ", ", config.spaces.size(), " address space(s))"),
      {{"DEVICE", config.name}});
  devices_.push_back(*std::move(dev));
  Device* d = devices_.back().get();
  auto drain = std::make_unique<DrainController>(d, host_, DrainOptionsOf(config.drain));
  drain->on_transition = [this, d](const DrainTransition& t) {
    // A recovery's hold ends when the device leaves HALTED, whoever moved it: a later
    // SUCCESSFUL_RECOVERY must not resume a hold an operator made since.
    if (t.from == DrainState::kHalted) recovering_.erase(d->name());
    if (on_transition) on_transition(*d, t);
  };
  drains_[d] = std::move(drain);
  host_->AddDevice(d);
  if (irqs_ != nullptr && config.mode == AttachMode::kVfio) {
    // A device without AER (or a kernel refusing the index) still gets served; it just is not
    // followed through its interrupts (uevents still are).
    for (uint32_t index : {uapi::kVfioPciErrIrqIndex, uapi::kVfioPciReqIrqIndex}) {
      const std::string name = config.name;
      auto fd = irqs_->Watch([this, name, index] { (void)OnVfioIrq(name, index); });
      absl::Status st = fd.ok() ? d->SetIrqEventfd(index, *fd) : fd.status();
      if (!st.ok()) {
        if (fd.ok()) irqs_->Unwatch(*fd);
        Log(LogLevel::kWarning,
            absl::StrCat(st.message(), ": its ",
                         index == uapi::kVfioPciErrIrqIndex ? "error (AER)" : "request",
                         " interrupt is not followed"));
        continue;
      }
      irq_fds_[d].push_back(*fd);
    }
  }
  return absl::OkStatus();
}

bool DeviceManager::OnVfioIrq(const std::string& name, uint32_t index) {
  for (size_t i = 0; i < devices_.size(); ++i) {
    Device* d = devices_[i].get();
    if (d->name() != name) continue;
    DrainController* drain = drains_[d].get();
    if (index == uapi::kVfioPciErrIrqIndex) {
      // vfio-pci's error_detected: the PCI core is recovering the device; its DMA is stopped.
      Log(LogLevel::kWarning, name + ": VFIO error interrupt (AER)", {{"DEVICE", name}});
      if (drain->state() != DrainState::kRunning) return false;
      (void)drain->Halt("VFIO error interrupt (AER)", MonotonicNs());
      if (drain->state() == DrainState::kHalted) recovering_.insert(name);
      return true;
    }
    if (index == uapi::kVfioPciReqIrqIndex) {
      // vfio_pci_core_request: the kernel wants the device (unbind, removal) and waits for the
      // user to close it, asking again every 10 s. Park it, then let it go.
      Log(LogLevel::kWarning, name + ": VFIO request interrupt: the kernel wants the device back",
          {{"DEVICE", name}});
      RemoveGone(i, "VFIO request interrupt: the kernel wants the device back");
      return true;
    }
    return false;
  }
  return false;
}

void DeviceManager::RemoveGone(size_t i, const std::string& cause) {
  Device* d = devices_[i].get();
  std::string name = d->name();
  // The read must be stopped first (a write may be in flight; the loop writes the answers
  // already resolved while it waits, before the park, while the function still holds their
  // tags); the park then drops whatever iopfd still holds for the attachments (a device that
  // is gone fails the park: drop it all anyway, the kernel answered its groups when their
  // attachments went with it).
  const bool quiet = host_->Quiesce(*d);
  drains_[d]->Detach(cause);
  if (quiet) {
    d->responses().DropAttachment(std::nullopt);
    d->processor().DismissDeferred(std::nullopt, /*fd_dead=*/false);
  }
  recovering_.erase(name);
  (void)RemoveAt(i, /*keep_fds=*/false);
  Emit("device_removed", name, cause);
}

DrainController* DeviceManager::DrainOf(const std::string& name) {
  Device* d = Find(name);
  if (d == nullptr) return nullptr;
  auto it = drains_.find(d);
  return it == drains_.end() ? nullptr : it->second.get();
}

const DrainController* DeviceManager::DrainOf(const Device& device) const {
  auto it = drains_.find(&device);
  return it == drains_.end() ? nullptr : it->second.get();
}

std::optional<uint64_t> DeviceManager::NextDeadline() const {
  std::optional<uint64_t> next;
  for (const auto& [d, drain] : drains_) {
    std::optional<uint64_t> at = drain->deadline();
    if (at && (!next || *at < *next)) next = at;
  }
  return next;
}

void DeviceManager::Tick(uint64_t now_ns) {
  for (auto& [d, drain] : drains_) drain->Tick(now_ns);
}

DeviceStats DeviceManager::RemoveAt(size_t i, bool keep_fds) {
  Device* d = devices_[i].get();
  // A reset running on the worker uses the device: wait for it (or run it now, if it has not
  // started) before anything of the device goes. Its result is then handled as usual: a device
  // going away (DETACHED) stays as it is; one being detached or restarted by a reload finishes
  // its drain first (flush, unpark, running) and then goes.
  if (auto it = drains_.find(d); it != drains_.end() && it->second->blocking()) {
    host_->FinishBlocking(*d);
  }
  // Its drain goes first: nothing else of a drain is in progress between two calls (an owner's
  // HALTING waits with the device served as usual), and the device closing detaches its
  // attachments, which answers what is queued like a park would.
  drains_.erase(d);
  recovering_.erase(d->name());
  if (auto it = irq_fds_.find(d); it != irq_fds_.end()) {
    for (int fd : it->second) irqs_->Unwatch(fd);
    irq_fds_.erase(it);
  }
  std::optional<uint64_t> unanswered = host_->RemoveDevice(d);
  DeviceStats final_stats = d->stats();
  if (!unanswered) {
    // The host still refers to it: keep it alive, out of service, until exit.
    Log(LogLevel::kError, d->name() + ": could not be released; kept out of service until exit",
        {{"DEVICE", d->name()}});
    unreleased_.push_back(std::move(devices_[i]));
    devices_.erase(devices_.begin() + static_cast<std::ptrdiff_t>(i));
    return final_stats;
  }
  if (*unanswered != 0) {
    Log(LogLevel::kError,
        absl::StrCat(d->name(), ": ", *unanswered,
                     " page request group(s) read and never answered"),
        {{"DEVICE", d->name()}});
  }
  // Its counters leave with it: say what they were, for whoever accounts for every fault.
  Log(LogLevel::kInfo,
      absl::StrCat(d->name(), ": final counters ", FormatStatsJson(d->name(), final_stats)),
      {{"DEVICE", d->name()}});
  // A failed fault fd is not worth keeping: closing it lets the kernel clean up.
  if (keep_fds && !d->write_failed()) d->ReleaseFds(&pool_);
  const std::string name = d->name();
  const bool adopt = d->config().mode == AttachMode::kAdopt;
  devices_.erase(devices_.begin() + static_cast<std::ptrdiff_t>(i));
  if (runtime_.erase(name) != 0) {
    if (on_adopted_gone) on_adopted_gone(name);
  } else if (adopt && on_configured_gone) {
    on_configured_gone(name);
  }
  return final_stats;
}

ReloadReport DeviceManager::Apply(const std::vector<DeviceConfig>& devices) {
  ReloadReport report;
  std::map<std::string, const DeviceConfig*> wanted;
  for (const DeviceConfig& c : devices) wanted[c.name] = &c;

  // Removals first: they free names and return fds to the pool for what is attached next.
  std::vector<const DeviceConfig*> to_attach = RemoveChanged(wanted, &report);
  for (const DeviceConfig& c : devices) {
    if (runtime_.count(c.name) != 0) {
      std::string why = c.name + ": the name is taken by a device adopted at run time";
      Log(LogLevel::kError, why, {{"DEVICE", c.name}});
      report.failed.push_back({c.name, why});
      continue;
    }
    if (Find(c.name) != nullptr) continue;  // kept
    if (std::find(report.restarted.begin(), report.restarted.end(), c.name) !=
        report.restarted.end()) {
      continue;  // already queued
    }
    auto det = detached_.find(c.name);
    if (det != detached_.end()) {
      if (SameDeviceSettings(det->second, c)) {
        report.detached.push_back(c.name);
        continue;
      }
      detached_.erase(det);  // changed since it was detached: serve it again
    }
    to_attach.push_back(&c);
  }
  AttachAll(to_attach, &report);
  carried_maps_.clear();  // a successor that failed to attach: the owner's mappings now
  configured_.clear();
  for (const DeviceConfig& c : devices) configured_.emplace(c.name, c);
  // A detached device no longer configured is forgotten.
  for (auto it = detached_.begin(); it != detached_.end();) {
    it = wanted.count(it->first) != 0 ? std::next(it) : detached_.erase(it);
  }
  return report;
}

std::vector<const DeviceConfig*> DeviceManager::RemoveChanged(
    const std::map<std::string, const DeviceConfig*>& wanted, ReloadReport* report) {
  std::vector<const DeviceConfig*> to_attach;
  for (size_t i = 0; i < devices_.size();) {
    const std::string name = devices_[i]->name();
    if (runtime_.count(name) != 0) {
      ++i;
      continue;
    }
    auto it = wanted.find(name);
    if (it == wanted.end()) {
      // Handed back: its fds are closed (see the class comment).
      const DeviceStats st = RemoveAt(i, /*keep_fds=*/false);
      report->unanswered += st.outstanding() + st.responses_abandoned;
      report->removed.push_back(name);
      Log(LogLevel::kInfo, name + ": removed (no longer configured)", {{"DEVICE", name}});
      Emit("device_removed", name, "no longer configured");
      continue;
    }
    // Only budgets changed: taken in place, the device is not disturbed.
    if (!SameDeviceSettings(devices_[i]->config(), *it->second) &&
        SameDeviceSettingsBesidesBudgets(devices_[i]->config(), *it->second) &&
        devices_[i]->ApplyBudgets(*it->second).ok()) {
      Log(LogLevel::kInfo, name + ": budgets changed (max_resident); applied in place",
          {{"DEVICE", name}});
      report->kept.push_back(name);
      ++i;
      continue;
    }
    if (!SameDeviceSettings(devices_[i]->config(), *it->second)) {
      // What it mapped stays mapped in the owner's IOAS: its successor takes it back.
      if (auto record = devices_[i]->ReleaseMapRecord(); record != nullptr) {
        carried_maps_[name] = std::move(record);
      }
      const DeviceStats st = RemoveAt(i, /*keep_fds=*/true);
      report->unanswered += st.outstanding() + st.responses_abandoned;
      report->restarted.push_back(name);
      to_attach.push_back(it->second);
      continue;
    }
    report->kept.push_back(name);
    ++i;
  }
  return to_attach;
}

void DeviceManager::AttachAll(const std::vector<const DeviceConfig*>& to_attach,
                              ReloadReport* report) {
  for (const DeviceConfig* c : to_attach) {
    bool restart = std::find(report->restarted.begin(), report->restarted.end(), c->name) !=
                   report->restarted.end();
    absl::Status st = AttachAndServe(*c, &pool_, nullptr, nullptr, /*configured=*/true);
    if (!st.ok()) {
      Log(LogLevel::kError, std::string(st.message()), {{"DEVICE", c->name}});
      report->failed.push_back({c->name, std::string(st.message())});
      Emit("device_attach_failed", c->name, std::string(st.message()));
      if (restart) {
        report->restarted.erase(
            std::find(report->restarted.begin(), report->restarted.end(), c->name));
        report->removed.push_back(c->name);
        Emit("device_removed", c->name, "configuration changed; attaching it again failed");
      }
      continue;
    }
    if (restart) {
      Log(LogLevel::kInfo, c->name + ": restarted (configuration changed)", {{"DEVICE", c->name}});
      Emit("device_restarted", c->name, "configuration changed");
    } else {
      report->added.push_back(c->name);
      Emit("device_added", c->name, c->file);
    }
  }
}

absl::Status DeviceManager::Adopt(const DeviceConfig& config, ListenFds fds,
                                  std::unique_ptr<InflightLedger> ledger,
                                  std::unique_ptr<MapRecord> maps) {
  if (config.mode != AttachMode::kAdopt) {
    return absl::InvalidArgumentError(
        absl::StrCat(config.name,
                     ": Adopt takes attach = \"adopt\" devices; a vfio device is "
                     "configured in devices.d and attached by Reload"));
  }
  if (Find(config.name) != nullptr || configured_.count(config.name) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat(config.name, ": a device of this name is ",
                     Find(config.name) != nullptr ? "already served" : "in the configuration"));
  }
  std::vector<std::string> referenced = FdNamesOf(config);
  for (const std::string& passed : fds.Untaken()) {
    if (std::find(referenced.begin(), referenced.end(), passed) == referenced.end()) {
      return absl::InvalidArgumentError(absl::StrCat(config.name, ": a passed fd is named '",
                                                     passed,
                                                     "' but the configuration never uses it"));
    }
  }
  absl::Status st = AttachAndServe(config, &fds, std::move(ledger), std::move(maps),
                                   /*configured=*/false);
  if (!st.ok()) return st;
  runtime_.insert(config.name);
  Emit("device_adopted", config.name, "handed over at run time");
  return absl::OkStatus();
}

absl::StatusOr<DeviceStats> DeviceManager::Detach(const std::string& name) {
  for (size_t i = 0; i < devices_.size(); ++i) {
    if (devices_[i]->name() != name) continue;
    if (runtime_.count(name) == 0) detached_[name] = devices_[i]->config();
    DeviceStats final_stats = RemoveAt(i, /*keep_fds=*/false);
    uint64_t owed = final_stats.outstanding();
    Log(LogLevel::kInfo, name + ": detached", {{"DEVICE", name}});
    Emit("device_detached", name, owed == 0 ? "" : absl::StrCat(owed, " group(s) unanswered"));
    return final_stats;
  }
  return absl::NotFoundError(absl::StrCat("no device named '", name, "' is served"));
}

std::string DeviceManager::OnUevent(const Uevent& event) {
  // `echo remove > /sys/.../uevent` (udevadm trigger) makes the kernel send a synthetic uevent,
  // marked SYNTH_UUID (lib/kobject_uevent.c kobject_synth_uevent): nothing happened to the
  // device, so nothing is done to it.
  if (event.env.count("SYNTH_UUID") != 0) return "";
  for (size_t i = 0; i < devices_.size(); ++i) {
    Device* d = devices_[i].get();
    if (d->devpath().empty() || d->devpath() != event.devpath) continue;
    std::string name = d->name();
    DrainController* drain = drains_[d].get();
    const std::string what =
        absl::StrCat(event.action, " ", event.devpath, " (uevent ", event.seqnum, ")");
    if (event.action == "remove" || event.action == "unbind") {
      // Its attachments went with it and the kernel answered every group of them: a held answer
      // could only meet an unknown cookie, or one reused by another group of this fault queue.
      Log(LogLevel::kInfo, absl::StrCat(name, ": ", what, ": the device is gone"),
          {{"DEVICE", name}});
      RemoveGone(i, "device gone: " + what);
      return name;
    }
    if (event.action != "change") return "";
    const std::string ers = event.Get("ERROR_EVENT");
    if (ers == "BEGIN_RECOVERY") {
      // The PCI core stopped the device (error_detected); its DMA is halted. Park it.
      if (drain->state() != DrainState::kRunning) return "";
      (void)drain->Halt("PCI error recovery began: " + what, MonotonicNs());
      if (drain->state() == DrainState::kHalted) recovering_.insert(name);
      return name;
    }
    if (ers == "SUCCESSFUL_RECOVERY") {
      if (recovering_.erase(name) == 0 || drain->state() != DrainState::kHalted) return "";
      (void)drain->Resume("PCI error recovery succeeded: " + what, MonotonicNs());
      return name;
    }
    if (ers == "FAILED_RECOVERY") {
      recovering_.erase(name);
      drain->Fail("PCI error recovery failed: " + what);
      return name;
    }
    return "";
  }
  return "";
}

ReloadOutcome ReloadFromFiles(const LoadOptions& options, GlobalConfig* global,
                              DeviceManager* manager) {
  ReloadOutcome out;
  LoadResult loaded = LoadConfig(options);
  if (!loaded.ok()) {
    out.errors = std::move(loaded.errors);
    return out;
  }
  const GlobalConfig& next = loaded.config.global;
  auto changed = [&](bool differs, const char* key) {
    if (differs) out.restart_required.emplace_back(key);
  };
  changed(next.ring_entries != global->ring_entries, "daemon.ring_entries");
  changed(next.read_records != global->read_records, "daemon.read_records");
  changed(next.max_read_records != global->max_read_records, "daemon.max_read_records");
  changed(next.control.socket != global->control.socket, "control.socket");
  changed(next.control.max_connections != global->control.max_connections,
          "control.max_connections");
  changed(next.control.max_connections_per_uid != global->control.max_connections_per_uid,
          "control.max_connections_per_uid");
  changed(next.control.max_message_bytes != global->control.max_message_bytes,
          "control.max_message_bytes");
  global->log_level = next.log_level;
  global->devices_dir = next.devices_dir;
  global->control.group = next.control.group;
  global->control.group_gid = next.control.group_gid;
  global->control.admin_group = next.control.admin_group;
  global->control.admin_group_gid = next.control.admin_group_gid;
  SetLogLevel(next.log_level);
  out.report = manager->Apply(loaded.config.devices);
  return out;
}

}  // namespace iopfd
