#include "iopfd/service/daemon.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/fault/stats.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

// Each device's counters (on request and at exit): human-readable text on a terminal or in a
// file; under systemd one journal entry per device, IOPFD_DEVICE= and the counters as JSON, since
// the journal would split the text into unrelated lines and whoever accounts for every fault
// across restarts (the instance before a restart kept no other record) needs them whole.
void PrintStats(const std::vector<std::unique_ptr<Device>>& devices, bool at_exit) {
  const bool journal = DetectJournal();
  for (const auto& d : devices) {
    if (journal) {
      Log(LogLevel::kInfo,
          absl::StrCat(d->name(), at_exit ? ": final counters " : ": counters ",
                       FormatStatsJson(d->name(), d->stats())),
          {{"DEVICE", d->name()}});
      continue;
    }
    std::string text = FormatStatsText(d->name(), d->stats());
    (void)!::write(STDERR_FILENO, text.data(), text.size());
  }
}

}  // namespace

std::string StatusLine::operator()(uint64_t now_ns) {
  uint64_t groups = 0;
  size_t quarantined = 0;
  for (const auto& d : manager_->devices()) {
    groups += d->stats().groups;
    quarantined += d->quarantined() ? 1 : 0;
  }
  std::string line = absl::StrCat("serving ", manager_->devices().size(), " device(s)");
  if (manager_->configured() > 0)
    absl::StrAppend(&line, ", ", manager_->configured(), " configured");
  if (quarantined > 0) absl::StrAppend(&line, ", ", quarantined, " quarantined");
  if (last_ns_ != 0 && now_ns > last_ns_ && groups >= last_groups_) {
    const double rate =
        static_cast<double>(groups - last_groups_) * 1e9 / static_cast<double>(now_ns - last_ns_);
    absl::StrAppend(&line, "; ", static_cast<uint64_t>(rate), " faults/s");
  }
  last_ns_ = now_ns;
  last_groups_ = groups;
  return line;
}

Daemon::Daemon(DaemonOptions options, const Config& config)
    : options_(std::move(options)),
      global_(config.global),
      initial_devices_(config.devices),
      fd_store_(FdStore::FromEnvironment()),
      notifier_(ServiceNotifier::FromEnvironment()) {}

Daemon::~Daemon() = default;

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(DaemonOptions options, const Config& config) {
  SetLogLevel(config.global.log_level);
  // Signals are consumed through a signalfd on the ring; block them before anything else runs.
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGHUP}) sigaddset(&set, sig);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<Daemon> d(new Daemon(std::move(options), config));
  if (absl::Status st = d->TakeInherited(); !st.ok()) return st;
  auto ring = Ring::Create(d->global_.ring_entries);
  if (!ring.ok()) return ring.status();
  d->ring_ = *std::move(ring);
  d->loop_ = std::make_unique<FaultLoop>(d->ring_.get());
  d->ring_->SetPriorityClient(d->loop_.get());
  d->host_ = std::make_unique<LoopHost>(d->loop_.get());
  d->CreateManager();
  d->AttachAll(d->initial_devices_);
  if (absl::Status st = d->StartControl(); !st.ok()) return st;
  d->FollowUevents();
  d->HookLoop();
  return d;
}

absl::Status Daemon::TakeInherited() {
  auto fds = ListenFds::FromEnvironment();
  if (!fds.ok()) return fds.status();
  inherited_ = *std::move(fds);
  // The control socket: systemd's (socket activation) when it passed one, else our own (made in
  // StartControl). Taken out of the inherited fds first: the rest are the devices' pool.
  listener_ = inherited_.Take("control");
  // What the fd store kept for devices a previous process served (crash_recovery.h): taken out
  // of the inherited fds now, used as the devices attach.
  std::vector<std::string> problems;
  recovery_ = std::make_unique<CrashRecovery>(&fd_store_, global_.max_read_records);
  recovery_->TakeStored(&inherited_, &problems);
  for (const std::string& p : problems) Log(LogLevel::kError, p);
  return absl::OkStatus();
}

void Daemon::CreateManager() {
  manager_ = std::make_unique<DeviceManager>(
      host_.get(), &RealSyscalls(), std::move(inherited_),
      ReadLimits{.initial = global_.read_records, .max = global_.max_read_records});
  // Demand paging: what devices map stays within budgets ([paging], max_resident keys).
  const PagingConfig& pc = global_.paging;
  pager_ = std::make_unique<Pager>(
      PagerOptions{.policy = pc.policy,
                   .max_resident = pc.max_resident,
                   .thrash_window_ns = uint64_t{pc.thrash_window_us} * 1000,
                   .thrash_events = pc.thrash_events,
                   .thrash_protect_ns = uint64_t{pc.thrash_protect_ms} * 1000000});
  pager_->on_event = [this](const std::string& device, const std::string& what) {
    Log(LogLevel::kInfo, what, device.empty() ? LogFields{} : LogFields{{"DEVICE", device}});
    events_.Publish("paging", device, what);
  };
  manager_->set_pager(pager_.get());
  // Function resets run on a worker thread: the loop serves the other devices meanwhile.
  if (absl::Status st = blocking_.Init(); st.ok()) {
    ring_->AddClient(&blocking_);
    host_->set_blocking_worker(&blocking_);
  } else {
    Log(LogLevel::kWarning,
        absl::StrCat(st.message(), "; function resets run on the fault loop's thread"));
  }
  // VFIO's error and request interrupts of vfio-mode devices (read on the loop's ring).
  manager_->set_irq_watcher(&irq_watcher_);
  ring_->AddClient(&irq_watcher_);
  manager_->on_event = [this](const std::string& event, const std::string& device,
                              const std::string& detail) {
    events_.Publish(event, device, detail);
  };
  manager_->on_transition = [this](const Device& d, const DrainTransition& t) {
    events_.Publish(
        "state_changed", d.name(),
        absl::StrCat(DrainStateName(t.from), " -> ", DrainStateName(t.to), ": ", t.cause),
        {{"state", DrainStateName(t.to)},
         {"previous_state", DrainStateName(t.from)},
         {"cause", t.cause},
         {"epoch", t.epoch}});
  };
  manager_->configured_ledger = [this](Device& d) { return recovery_->LedgerForConfigured(d); };
  manager_->configured_maps = [this](Device& d) { return recovery_->MapsForConfigured(d); };
  manager_->keep_configured_maps = [this](const Device& d) { recovery_->KeepConfiguredMaps(d); };
  manager_->on_configured_gone = [this](const std::string& name) {
    recovery_->Forget(name, /*adopted_at_run_time=*/false);
  };
}

void Daemon::AttachAll(const std::vector<DeviceConfig>& devices) {
  // One device failing to attach does not stop the others.
  ReloadReport started = manager_->Apply(devices);
  Log(LogLevel::kInfo,
      absl::StrCat("serving ", started.added.size(), " of ", devices.size(), " device(s)"));
  // Pinned memory is charged to iopfd's locked-memory limit: say so when the budgets (or
  // unbounded regions) can go beyond it, before a map fails ENOMEM on a device.
  if (std::optional<uint64_t> limit = MemlockLimit()) {
    const uint64_t most = MostResident(global_.paging.max_resident, devices);
    if (most > *limit) {
      Log(LogLevel::kWarning,
          absl::StrCat("the configured devices may pin up to ", most,
                       " bytes (their regions within their max_resident budgets) but "
                       "RLIMIT_MEMLOCK is ",
                       *limit,
                       " bytes: maps will fail with ENOMEM first; raise the limit "
                       "(LimitMEMLOCK=) or set a max_resident at most that"));
    }
  }
  // Then the adoptions the fd store kept, checked as an Adopt call would be.
  recovery_->ReplayStored(manager_.get());
  Log(LogLevel::kInfo, fd_store_.Describe());
  // Adoptions at run time are kept in the store; a device handed back leaves it.
  manager_->on_adopted_gone = [this](const std::string& name) {
    recovery_->Forget(name, /*adopted_at_run_time=*/true);
  };
}

ReloadOutcome Daemon::Reload() {
  notifier_.Reloading(MonotonicNs());
  // READY=1 ends the reload whatever came of it: the daemon serves on either way.
  struct ReadyAfter {
    ServiceNotifier* n;
    StatusLine* line;
    ~ReadyAfter() { n->Ready((*line)(MonotonicNs())); }
  } ready_after{&notifier_, status_line_.get()};
  ReloadOutcome out = ReloadFromFiles(options_.load, &global_, manager_.get());
  if (!out.errors.empty()) {
    for (const auto& e : out.errors) Log(LogLevel::kError, "reload: " + e.ToString());
    Log(LogLevel::kError, "reload: invalid configuration; nothing changed");
    events_.Publish("reload_failed", {},
                    absl::StrCat(out.errors.size(), " configuration error(s)"));
    return out;
  }
  service_->set_policy({global_.control.group_gid, global_.control.admin_group_gid});
  const ReloadReport& r = out.report;
  std::string summary =
      absl::StrCat(r.added.size(), " added, ", r.removed.size(), " removed, ", r.restarted.size(),
                   " restarted, ", r.kept.size(), " kept, ", r.failed.size(), " failed");
  for (const std::string& key : out.restart_required) {
    Log(LogLevel::kWarning, "reload: " + key + " changed; it takes effect at the next start");
  }
  Log(LogLevel::kInfo, "reload: " + summary);
  events_.Publish("reload", {}, summary);
  return out;
}

absl::Status Daemon::StartControl() {
  const ControlConfig& cc = global_.control;
  service_ = std::make_unique<VarlinkService>("iopfd", "iopfd", options_.version, "man:iopfd(8)");
  service_->set_policy({cc.group_gid, cc.admin_group_gid});
  // systemd: READY=1 once every configured device is attached or failed, reloads and the stop
  // announced, the watchdog pinged from the loop itself, STATUS= kept current.
  status_line_ = std::make_unique<StatusLine>(manager_.get());
  state_.version = options_.version;
  state_.start_ns = MonotonicNs();
  state_.manager = manager_.get();
  state_.events = &events_;
  state_.reload = [this] { return Reload(); };
  state_.stopping = [this] { return ring_->stopping(); };
  state_.fd_store = &fd_store_;
  state_.pager = pager_.get();
  if (fd_store_.enabled()) {
    // A device the store keeps across restarts also keeps what a crash would lose.
    state_.make_ledger = [this](const std::string& device) {
      return recovery_->LedgerForAdopted(device);
    };
  }
  state_.on_adopted = [this](const Device& d, const std::string& text) {
    recovery_->KeepAdopted(d, text);
  };
  RegisterIopfdMethods(service_.get(), &state_);
  socket_path_ = options_.control_socket.empty() ? cc.socket : options_.control_socket;
  if (!listener_.ok()) {
    listener_ = ListenControlSocket(socket_path_, cc.group_gid);
    if (!listener_.ok()) return listener_.status();
    own_socket_ = true;
  }
  control_ = std::make_unique<ControlServer>(
      *std::move(listener_), service_.get(),
      ControlServerOptions{.max_message = cc.max_message_bytes,
                           .max_connections = cc.max_connections,
                           .max_connections_per_uid = cc.max_connections_per_uid,
                           .message_timeout_ns = uint64_t{cc.message_timeout_ms} * 1000000,
                           .idle_timeout_ns = uint64_t{cc.idle_timeout_ms} * 1000000});
  ring_->AddClient(control_.get());
  return absl::OkStatus();
}

void Daemon::FollowUevents() {
  // Uevents: devices going away, PCI error recovery. Without them (a sandbox that refuses the
  // socket) iopfd still serves; it says so.
  auto uevents = UeventListener::Open();
  if (uevents.ok()) {
    uevents_ = *std::move(uevents);
    uevents_->on_uevent = [this](const Uevent& ev) {
      std::string device = manager_->OnUevent(ev);
      if (!device.empty()) {
        events_.Publish("uevent", device, absl::StrCat(ev.action, " ", ev.devpath),
                        {{"action", ev.action}, {"devpath", ev.devpath}});
      }
    };
    ring_->AddClient(uevents_.get());
    state_.uevents = uevents_.get();
  } else {
    Log(LogLevel::kWarning,
        absl::StrCat(uevents.status().message(),
                     "; device removal and PCI error recovery are not followed"));
  }
  std::vector<std::string> unclaimed = manager_->UnclaimedFds();
  if (!unclaimed.empty()) {
    // Kept, not closed: a device added by a later Reload may name them.
    Log(LogLevel::kInfo,
        absl::StrCat("inherited fd(s) not used by any device, held for a later reload: ",
                     absl::StrJoin(unclaimed, ", ")));
  }
  Log(LogLevel::kInfo, "control socket " + (own_socket_ ? socket_path_ : "from systemd"));
}

void Daemon::HookLoop() {
  ring_->on_stats = [this] { PrintStats(manager_->devices(), /*at_exit=*/false); };
  ring_->on_stopping = [this] {
    notifier_.Stopping();
    events_.Close("stopping");
  };
  ring_->on_reload = [this] { Reload(); };
  // Drain deadlines (an owner that never confirms its halt), the service manager's watchdog and
  // status, and control connections that time out (half a message, replies not read, idle)
  // wake the loop.
  ring_->next_deadline = [this]() -> std::optional<uint64_t> {
    std::optional<uint64_t> next;
    for (std::optional<uint64_t> d :
         {manager_->NextDeadline(), notifier_.NextTick(), control_->NextDeadline()}) {
      if (d.has_value() && (!next.has_value() || *d < *next)) next = d;
    }
    return next;
  };
  ring_->on_deadline = [this](uint64_t now) {
    manager_->Tick(now);
    notifier_.Tick(now);
    control_->Tick(*ring_, now);
  };
  host_->on_device_failed = [this](const Device& d, const std::string& why) {
    events_.Publish("device_failed", d.name(), why);
    // A failed fault queue is not taken back after a restart: its owner has to hand it over.
    // Nor is it kept open by the store for a ledger's sake.
    recovery_->Forget(d.name(), manager_->IsAdoptedAtRunTime(d.name()));
  };
  notifier_.status_text = [this](uint64_t now) { return (*status_line_)(now); };
}

int Daemon::Run() {
  notifier_.Ready((*status_line_)(MonotonicNs()));
  if (notifier_.watchdog_ns()) {
    Log(LogLevel::kInfo,
        absl::StrCat("watchdog: pinging every ", *notifier_.watchdog_ns() / 2 / 1000000,
                     " ms from the fault loop"));
  }
  int rc = loop_->Run();
  host_->set_blocking_worker(nullptr);  // joined by Run's stop; destroyed before the host
  return Finish(rc);
}

int Daemon::Finish(int rc) {
  // A configured device whose every read was answered leaves nothing for a ledger to recover:
  // the store stops holding its owner's queue. One that still owes keeps it, for the next start.
  recovery_->SettleAtStop(manager_->devices());
  if (own_socket_) unlink(socket_path_.c_str());
  PrintStats(manager_->devices(), /*at_exit=*/true);
  if (!options_.stats_json.empty()) {
    std::ofstream out(options_.stats_json, std::ios::trunc);
    for (const auto& d : manager_->devices()) out << FormatStatsJson(d->name(), d->stats()) << "\n";
    if (!out) {
      Log(LogLevel::kError, "cannot write --stats-json " + options_.stats_json);
      rc = 1;
    }
  }
  return rc;
}

}  // namespace iopfd
