#include "iopfd/service/daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "iopfd/base/clock.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/fault/stats.h"
#include "iopfd/iommu/syscalls.h"
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

// When a device the fd store kept cannot be served again: what the crashed process read from
// its queue and did not answer is answered now (owed answers as they were, unresolved groups
// INVALID), so the owner gets its device back with nothing pending that iopfd read.
void AnswerOrphans(const std::string& device, UniqueFd ledger_fd, int fault_fd) {
  auto orphan = InflightLedger::Open(device, std::move(ledger_fd));
  if (!orphan.ok()) return;
  auto answered = (*orphan)->AnswerAllLeftovers(device, fault_fd, RealSyscalls());
  if (!answered.ok()) {
    Log(LogLevel::kError, std::string(answered.status().message()), {{"DEVICE", device}});
  } else if (answered->accepted + answered->rejected != 0) {
    Log(LogLevel::kWarning,
        absl::StrCat(device, ": answered ", answered->accepted,
                     " group(s) the previous iopfd read and did not answer (", answered->rejected,
                     " had been answered) before handing it back"),
        {{"DEVICE", device}});
  }
}

// Adopts a device the fd store kept, checked as an Adopt call is, with its in-flight ledger
// (absent when an iopfd without one stored it); when it cannot be, AnswerOrphans. Returns why
// it was not adopted.
absl::Status ReplayStored(DeviceManager* manager, FdStore::Stored* s) {
  AdoptRequest parsed = ParseAdoptConfig(s->config_text);
  if (!parsed.config.has_value()) {
    return absl::InvalidArgumentError(absl::StrJoin(parsed.errors, "; "));
  }
  if (parsed.config->name != s->device) {
    return absl::InvalidArgumentError("the record's config names device " + parsed.config->name);
  }
  auto dup = [](int fd) { return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 3)); };
  UniqueFd ledger_copy;
  std::unique_ptr<InflightLedger> ledger;
  if (auto fd = s->fds.Take(kLedgerFdName); fd.ok()) {
    ledger_copy = dup(fd->get());
    auto opened = InflightLedger::Open(s->device, *std::move(fd));
    if (opened.ok()) {
      ledger = *std::move(opened);
    } else {
      Log(LogLevel::kError,
          absl::StrCat(opened.status().message(),
                       "; what a crash left unanswered stays unanswered"),
          {{"DEVICE", s->device}});
      ledger_copy = UniqueFd();
    }
  }
  // Adopt closes every fd it was given when it fails: keep the fault queue for the answers.
  UniqueFd fault_copy;
  const std::string& fault_name = parsed.config->adopt.fault_fd;
  if (auto fd = s->fds.Take(fault_name); fd.ok()) {
    fault_copy = dup(fd->get());
    s->fds.Add(fault_name, *std::move(fd));
  }
  absl::Status st = manager->Adopt(*parsed.config, std::move(s->fds), std::move(ledger));
  if (!st.ok() && ledger_copy.valid() && fault_copy.valid()) {
    AnswerOrphans(s->device, std::move(ledger_copy), fault_copy.get());
  }
  return st;
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
  // Devices adopted before a restart come back from systemd's fd store: take their entries out
  // of the inherited fds now; they are adopted again after the configured devices attached.
  std::vector<std::string> problems;
  stored_ = fd_store_.TakeStored(&inherited_, &problems);
  // Room for the largest read max_read_records may allow after a restart that raises it (up
  // to 65536; a ledger outlives restarts): the file is sparse, untouched pages cost nothing.
  ledger_capacity_ = std::max<uint32_t>(global_.max_read_records, 65536);
  // And the ledgers of configured adopt-mode devices: what a crash left on their queues is
  // answered as each attaches, before its first read.
  ledgers_ = std::make_unique<ConfiguredLedgers>(&fd_store_, ledger_capacity_);
  ledgers_->TakeStored(&inherited_, &problems);
  for (const std::string& p : problems) Log(LogLevel::kError, p);
  return absl::OkStatus();
}

void Daemon::CreateManager() {
  manager_ = std::make_unique<DeviceManager>(
      host_.get(), &RealSyscalls(), std::move(inherited_),
      ReadLimits{.initial = global_.read_records, .max = global_.max_read_records});
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
  manager_->configured_ledger = [this](Device& d) {
    return ledgers_->For(d.name(), d.fault_fd(), &d.stats());
  };
  manager_->on_configured_gone = [this](const std::string& name) { ledgers_->Forget(name); };
}

void Daemon::AttachAll(const std::vector<DeviceConfig>& devices) {
  // One device failing to attach does not stop the others.
  ReloadReport started = manager_->Apply(devices);
  Log(LogLevel::kInfo,
      absl::StrCat("serving ", started.added.size(), " of ", devices.size(), " device(s)"));
  // Then the adoptions the fd store kept, checked as an Adopt call would be. A name a device
  // file took meanwhile wins: the stored one is handed back.
  for (FdStore::Stored& s : stored_) {
    absl::Status st = ReplayStored(manager_.get(), &s);
    if (st.ok()) {
      Log(LogLevel::kInfo,
          s.device + ": adopted again from the fd store (handed over before the restart)",
          {{"DEVICE", s.device}});
    } else {
      Log(LogLevel::kError,
          absl::StrCat(s.device, ": not adopted again from the fd store: ", st.message(),
                       "; its descriptors are closed (handed back)"),
          {{"DEVICE", s.device}});
      fd_store_.Forget(s.device);
    }
  }
  stored_.clear();
  (void)ledgers_->SettleUnclaimed();
  Log(LogLevel::kInfo, fd_store_.Describe());
  // Adoptions at run time are kept in the store; a device handed back leaves it.
  manager_->on_adopted_gone = [this](const std::string& name) { fd_store_.Forget(name); };
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
  if (fd_store_.enabled()) {
    // A device the store keeps across restarts also keeps what a crash would lose.
    state_.make_ledger = [capacity = ledger_capacity_](const std::string& device) {
      auto ledger = InflightLedger::Create(device, capacity);
      if (ledger.ok()) return *std::move(ledger);
      Log(LogLevel::kWarning,
          absl::StrCat(ledger.status().message(), "; a crash would leave what it read unanswered"),
          {{"DEVICE", device}});
      return std::unique_ptr<InflightLedger>();
    };
  }
  state_.on_adopted = [this](const Device& d, const std::string& text) {
    std::vector<std::pair<std::string, int>> held = d.HeldFds();
    if (d.ledger() != nullptr) held.emplace_back(kLedgerFdName, d.ledger()->fd());
    absl::Status st = fd_store_.Keep(d.name(), text, held);
    if (!st.ok()) Log(LogLevel::kWarning, std::string(st.message()), {{"DEVICE", d.name()}});
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
    if (manager_->IsAdoptedAtRunTime(d.name())) {
      fd_store_.Forget(d.name());
    } else {
      ledgers_->Forget(d.name());
    }
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
  for (const auto& d : manager_->devices()) {
    if (d->stats().outstanding() == 0) ledgers_->Forget(d->name());
  }
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
