// iopfd: user-space IOMMU page-fault service. main() only parses flags and wires the pieces.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "iopfd/blocking_worker.h"
#include "iopfd/clock.h"
#include "iopfd/config.h"
#include "iopfd/configured_ledgers.h"
#include "iopfd/control_methods.h"
#include "iopfd/control_server.h"
#include "iopfd/device.h"
#include "iopfd/device_manager.h"
#include "iopfd/eventfd_watcher.h"
#include "iopfd/fault_loop.h"
#include "iopfd/fd_store.h"
#include "iopfd/inflight_ledger.h"
#include "iopfd/log.h"
#include "iopfd/service_notify.h"
#include "iopfd/syscalls.h"
#include "iopfd/uevent.h"

namespace {

constexpr char kUsage[] =
    "usage: iopfd [--config FILE] [--devices-dir DIR] [--control-socket PATH]\n"
    "             [--check-config] [--stats-json FILE] [--version] [--help]\n"
    "\n"
    "Resolves IOMMU page requests (PCIe PRI) from iommufd fault queues.\n"
    "  --config FILE       global configuration (default /etc/iopfd/iopfd.toml)\n"
    "  --devices-dir DIR   per-device files (default from the global file, else\n"
    "                      /etc/iopfd/devices.d)\n"
    "  --control-socket PATH  the Varlink control socket (default from the global\n"
    "                      file, else /run/iopfd/io.iopfd); a socket passed by systemd\n"
    "                      as LISTEN_FDNAMES \"control\" is used instead when present\n"
    "  --check-config      validate the configuration, print each error as\n"
    "                      file:line:col: message, and exit (0 valid, 1 invalid)\n"
    "  --stats-json FILE   write per-device statistics as JSON lines at exit\n"
    "Signals: SIGTERM/SIGINT answer everything outstanding and exit; SIGUSR1 prints stats;\n"
    "SIGHUP reloads the configuration (as iopfctl reload does).\n";

// The STATUS= line systemctl status shows: what is served, and how fast faults come.
class StatusLine {
 public:
  explicit StatusLine(const iopfd::DeviceManager* manager) : manager_(manager) {}
  std::string operator()(uint64_t now_ns) {
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

 private:
  const iopfd::DeviceManager* manager_;
  uint64_t last_ns_ = 0;
  uint64_t last_groups_ = 0;
};

struct Flags {
  iopfd::LoadOptions load;
  bool check_config = false;
  std::string stats_json;
  std::string control_socket;
};

// Returns -1 to continue, or an exit code.
int ParseFlags(int argc, char** argv, Flags* flags) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* name) -> const std::string* {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "iopfd: %s needs a value\n%s", name, kUsage);
        return nullptr;
      }
      return &args[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--version") {
      std::printf("iopfd %s\n", IOPFD_VERSION);
      return 0;
    } else if (a == "--check-config") {
      flags->check_config = true;
    } else if (a == "--config") {
      const std::string* v = value("--config");
      if (v == nullptr) return 2;
      flags->load.global_path = *v;
      flags->load.global_optional = false;
    } else if (a == "--devices-dir") {
      const std::string* v = value("--devices-dir");
      if (v == nullptr) return 2;
      flags->load.devices_dir = *v;
    } else if (a == "--control-socket") {
      const std::string* v = value("--control-socket");
      if (v == nullptr) return 2;
      flags->control_socket = *v;
    } else if (a == "--stats-json") {
      const std::string* v = value("--stats-json");
      if (v == nullptr) return 2;
      flags->stats_json = *v;
    } else {
      std::fprintf(stderr, "iopfd: unknown argument '%s'\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  return -1;
}

// Each device's counters (on request and at exit): human-readable text on a terminal or in a
// file; under systemd one journal entry per device, IOPFD_DEVICE= and the counters as JSON, since
// the journal would split the text into unrelated lines and whoever accounts for every fault
// across restarts (the instance before a restart kept no other record) needs them whole.
void PrintStats(const std::vector<std::unique_ptr<iopfd::Device>>& devices, bool at_exit) {
  const bool journal = iopfd::DetectJournal();
  for (const auto& d : devices) {
    if (journal) {
      iopfd::Log(iopfd::LogLevel::kInfo,
                 absl::StrCat(d->name(), at_exit ? ": final counters " : ": counters ",
                              iopfd::FormatStatsJson(d->name(), d->stats())),
                 {{"DEVICE", d->name()}});
      continue;
    }
    std::string text = iopfd::FormatStatsText(d->name(), d->stats());
    (void)!::write(STDERR_FILENO, text.data(), text.size());
  }
}

// Adopts a device the fd store kept, checked as an Adopt call is, with its in-flight ledger
// (absent when an iopfd without one stored it). When it cannot be served again, what a crashed
// process read from its queue and did not answer is answered first (owed answers as they were,
// unresolved groups INVALID), so the owner gets its device back with nothing pending that
// iopfd read. Returns why it was not adopted.
absl::Status ReplayStored(iopfd::DeviceManager* manager, iopfd::FdStore::Stored* s) {
  iopfd::AdoptRequest parsed = iopfd::ParseAdoptConfig(s->config_text);
  if (!parsed.config.has_value()) {
    return absl::InvalidArgumentError(absl::StrJoin(parsed.errors, "; "));
  }
  if (parsed.config->name != s->device) {
    return absl::InvalidArgumentError("the record's config names device " + parsed.config->name);
  }
  auto dup = [](int fd) { return iopfd::UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 3)); };
  iopfd::UniqueFd ledger_copy;
  std::unique_ptr<iopfd::InflightLedger> ledger;
  if (auto fd = s->fds.Take(iopfd::kLedgerFdName); fd.ok()) {
    ledger_copy = dup(fd->get());
    auto opened = iopfd::InflightLedger::Open(s->device, *std::move(fd));
    if (opened.ok()) {
      ledger = *std::move(opened);
    } else {
      iopfd::Log(iopfd::LogLevel::kError,
                 absl::StrCat(opened.status().message(),
                              "; what a crash left unanswered stays unanswered"),
                 {{"DEVICE", s->device}});
      ledger_copy = iopfd::UniqueFd();
    }
  }
  // Adopt closes every fd it was given when it fails: keep the fault queue for the answers.
  iopfd::UniqueFd fault_copy;
  const std::string& fault_name = parsed.config->adopt.fault_fd;
  if (auto fd = s->fds.Take(fault_name); fd.ok()) {
    fault_copy = dup(fd->get());
    s->fds.Add(fault_name, *std::move(fd));
  }
  absl::Status st = manager->Adopt(*parsed.config, std::move(s->fds), std::move(ledger));
  if (st.ok() || !ledger_copy.valid() || !fault_copy.valid()) return st;
  auto orphan = iopfd::InflightLedger::Open(s->device, std::move(ledger_copy));
  if (!orphan.ok()) return st;
  auto answered = (*orphan)->AnswerAllLeftovers(s->device, fault_copy.get());
  if (!answered.ok()) {
    iopfd::Log(iopfd::LogLevel::kError, std::string(answered.status().message()),
               {{"DEVICE", s->device}});
  } else if (answered->accepted + answered->rejected != 0) {
    iopfd::Log(iopfd::LogLevel::kWarning,
               absl::StrCat(s->device, ": answered ", answered->accepted,
                            " group(s) the previous iopfd read and did not answer (",
                            answered->rejected, " had been answered) before handing it back"),
               {{"DEVICE", s->device}});
  }
  return st;
}

}  // namespace

// Longer than 60 lines: the wiring of every part in start-up order; issue 13 moves it into a
// Daemon class with one method per stage.
int main(int argc, char** argv) {
  Flags flags;
  if (int rc = ParseFlags(argc, argv, &flags); rc >= 0) return rc;

  iopfd::LoadResult loaded = iopfd::LoadConfig(flags.load);
  if (flags.check_config) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.ToString().c_str());
    if (!loaded.ok()) return 1;
    std::printf("configuration OK: %zu device(s)\n", loaded.config.devices.size());
    return 0;
  }
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.ToString().c_str());
    std::fprintf(stderr, "iopfd: invalid configuration, not starting\n");
    return 1;
  }
  const iopfd::Config& config = loaded.config;
  iopfd::SetLogLevel(config.global.log_level);

  // Signals are consumed through a signalfd on the ring; block them before anything else runs.
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGHUP}) sigaddset(&set, sig);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto fds = iopfd::ListenFds::FromEnvironment();
  if (!fds.ok()) {
    iopfd::Log(iopfd::LogLevel::kError, std::string(fds.status().message()));
    return 1;
  }
  auto loop = iopfd::FaultLoop::Create(config.global);
  if (!loop.ok()) {
    iopfd::Log(iopfd::LogLevel::kError, std::string(loop.status().message()));
    return 1;
  }
  // The settings in force: Reload updates those that apply at run time.
  iopfd::GlobalConfig global = config.global;

  // The control socket: systemd's (socket activation) when it passed one, else our own. Taken
  // out of the inherited fds first: the rest are the devices' pool.
  const iopfd::ControlConfig& cc = config.global.control;
  std::string socket_path = flags.control_socket.empty() ? cc.socket : flags.control_socket;
  bool own_socket = false;
  auto listener = fds->Take("control");
  // Devices adopted before a restart come back from systemd's fd store: take their entries out
  // of the inherited fds now; they are adopted again after the configured devices attached.
  iopfd::FdStore fd_store = iopfd::FdStore::FromEnvironment();
  std::vector<std::string> store_problems;
  std::vector<iopfd::FdStore::Stored> stored = fd_store.TakeStored(&*fds, &store_problems);
  // Room for the largest read a drain's flush makes, whatever max_read_records says now: a
  // ledger outlives restarts that may raise it (the file is sparse; untouched pages cost
  // nothing).
  const uint32_t ledger_capacity = std::max<uint32_t>(config.global.max_read_records, 65536);
  // And the ledgers of configured adopt-mode devices: what a crash left on their queues is
  // answered as each attaches, before its first read.
  iopfd::ConfiguredLedgers ledgers(&fd_store, ledger_capacity);
  ledgers.TakeStored(&*fds, &store_problems);
  for (const std::string& p : store_problems) iopfd::Log(iopfd::LogLevel::kError, p);

  iopfd::DeviceManager manager(loop->get(), &iopfd::RealSyscalls(), *std::move(fds),
                               config.global.read_records);
  // Function resets run on a worker thread: the loop serves the other devices meanwhile.
  iopfd::BlockingWorker blocking;
  if (absl::Status st = blocking.Init(); st.ok()) {
    (*loop)->AddClient(&blocking);
    (*loop)->set_blocking_worker(&blocking);
  } else {
    iopfd::Log(iopfd::LogLevel::kWarning,
               absl::StrCat(st.message(), "; function resets run on the fault loop's thread"));
  }
  // VFIO's error and request interrupts of vfio-mode devices (read on the loop's ring).
  iopfd::EventfdWatcher irq_watcher;
  manager.set_irq_watcher(&irq_watcher);
  (*loop)->AddClient(&irq_watcher);
  iopfd::EventBus events;
  manager.on_event = [&events](const std::string& event, const std::string& device,
                               const std::string& detail) {
    events.Publish(event, device, detail);
  };
  manager.on_transition = [&events](const iopfd::Device& d, const iopfd::DrainTransition& t) {
    events.Publish("state_changed", d.name(),
                   absl::StrCat(iopfd::DrainStateName(t.from), " -> ", iopfd::DrainStateName(t.to),
                                ": ", t.cause),
                   {{"state", iopfd::DrainStateName(t.to)},
                    {"previous_state", iopfd::DrainStateName(t.from)},
                    {"cause", t.cause},
                    {"epoch", t.epoch}});
  };
  manager.configured_ledger = [&ledgers](iopfd::Device& d) {
    return ledgers.For(d.name(), d.fault_fd(), &d.stats());
  };
  manager.on_configured_gone = [&ledgers](const std::string& name) { ledgers.Forget(name); };
  // One device failing to attach does not stop the others.
  iopfd::ReloadReport started = manager.Apply(config.devices);
  iopfd::Log(iopfd::LogLevel::kInfo, absl::StrCat("serving ", started.added.size(), " of ",
                                                  config.devices.size(), " device(s)"));
  // Then the adoptions the fd store kept, checked as an Adopt call would be. A name a device
  // file took meanwhile wins: the stored one is handed back.
  for (iopfd::FdStore::Stored& s : stored) {
    absl::Status st = ReplayStored(&manager, &s);
    if (st.ok()) {
      iopfd::Log(iopfd::LogLevel::kInfo,
                 s.device + ": adopted again from the fd store (handed over before the restart)",
                 {{"DEVICE", s.device}});
    } else {
      iopfd::Log(iopfd::LogLevel::kError,
                 absl::StrCat(s.device, ": not adopted again from the fd store: ", st.message(),
                              "; its descriptors are closed (handed back)"),
                 {{"DEVICE", s.device}});
      fd_store.Forget(s.device);
    }
  }
  (void)ledgers.SettleUnclaimed();
  iopfd::Log(iopfd::LogLevel::kInfo, fd_store.Describe());
  // Adoptions at run time are kept in the store; a device handed back leaves it.
  manager.on_adopted_gone = [&fd_store](const std::string& name) { fd_store.Forget(name); };

  iopfd::VarlinkService service("iopfd", "iopfd", IOPFD_VERSION, "man:iopfd(8)");
  service.set_policy({cc.group_gid, cc.admin_group_gid});
  // systemd: READY=1 once every configured device is attached or failed (below), reloads and
  // the stop announced, the watchdog pinged from the loop itself, STATUS= kept current.
  iopfd::ServiceNotifier notifier = iopfd::ServiceNotifier::FromEnvironment();
  StatusLine status_line(&manager);
  auto reload = [&]() {
    notifier.Reloading(iopfd::MonotonicNs());
    // READY=1 ends the reload whatever came of it: the daemon serves on either way.
    struct ReadyAfter {
      iopfd::ServiceNotifier* n;
      StatusLine* line;
      ~ReadyAfter() { n->Ready((*line)(iopfd::MonotonicNs())); }
    } ready_after{&notifier, &status_line};
    iopfd::ReloadOutcome out = iopfd::ReloadFromFiles(flags.load, &global, &manager);
    if (!out.errors.empty()) {
      for (const auto& e : out.errors) {
        iopfd::Log(iopfd::LogLevel::kError, "reload: " + e.ToString());
      }
      iopfd::Log(iopfd::LogLevel::kError, "reload: invalid configuration; nothing changed");
      events.Publish("reload_failed", {},
                     absl::StrCat(out.errors.size(), " configuration error(s)"));
      return out;
    }
    service.set_policy({global.control.group_gid, global.control.admin_group_gid});
    const iopfd::ReloadReport& r = out.report;
    std::string summary =
        absl::StrCat(r.added.size(), " added, ", r.removed.size(), " removed, ", r.restarted.size(),
                     " restarted, ", r.kept.size(), " kept, ", r.failed.size(), " failed");
    for (const std::string& key : out.restart_required) {
      iopfd::Log(iopfd::LogLevel::kWarning,
                 "reload: " + key + " changed; it takes effect at the next start");
    }
    iopfd::Log(iopfd::LogLevel::kInfo, "reload: " + summary);
    events.Publish("reload", {}, summary);
    return out;
  };
  iopfd::DaemonState state{IOPFD_VERSION, iopfd::MonotonicNs(),
                           &manager,      &events,
                           reload,        [&loop] { return (*loop)->stopping(); }};
  state.fd_store = &fd_store;
  if (fd_store.enabled()) {
    // A device the store keeps across restarts also keeps what a crash would lose.
    state.make_ledger = [capacity = ledger_capacity](const std::string& device) {
      auto ledger = iopfd::InflightLedger::Create(device, capacity);
      if (ledger.ok()) return *std::move(ledger);
      iopfd::Log(
          iopfd::LogLevel::kWarning,
          absl::StrCat(ledger.status().message(), "; a crash would leave what it read unanswered"),
          {{"DEVICE", device}});
      return std::unique_ptr<iopfd::InflightLedger>();
    };
  }
  state.on_adopted = [&fd_store](const iopfd::Device& d, const std::string& text) {
    std::vector<std::pair<std::string, int>> held = d.HeldFds();
    if (d.ledger() != nullptr) held.emplace_back(iopfd::kLedgerFdName, d.ledger()->fd());
    absl::Status st = fd_store.Keep(d.name(), text, held);
    if (!st.ok()) {
      iopfd::Log(iopfd::LogLevel::kWarning, std::string(st.message()), {{"DEVICE", d.name()}});
    }
  };
  iopfd::RegisterIopfdMethods(&service, &state);
  if (!listener.ok()) {
    listener = iopfd::ListenControlSocket(socket_path, cc.group_gid);
    if (!listener.ok()) {
      iopfd::Log(iopfd::LogLevel::kError, std::string(listener.status().message()));
      return 1;
    }
    own_socket = true;
  }
  iopfd::ControlServer control(*std::move(listener), &service,
                               {.max_message = cc.max_message_bytes,
                                .max_connections = cc.max_connections,
                                .max_connections_per_uid = cc.max_connections_per_uid,
                                .message_timeout_ns = uint64_t{cc.message_timeout_ms} * 1000000,
                                .idle_timeout_ns = uint64_t{cc.idle_timeout_ms} * 1000000});
  (*loop)->AddClient(&control);
  // Uevents: devices going away, PCI error recovery. Without them (a sandbox that refuses the
  // socket) iopfd still serves; it says so.
  auto uevents = iopfd::UeventListener::Open();
  if (uevents.ok()) {
    (*uevents)->on_uevent = [&manager, &events](const iopfd::Uevent& ev) {
      std::string device = manager.OnUevent(ev);
      if (!device.empty()) {
        events.Publish("uevent", device, absl::StrCat(ev.action, " ", ev.devpath),
                       {{"action", ev.action}, {"devpath", ev.devpath}});
      }
    };
    (*loop)->AddClient(uevents->get());
    state.uevents = uevents->get();
  } else {
    iopfd::Log(iopfd::LogLevel::kWarning,
               absl::StrCat(uevents.status().message(),
                            "; device removal and PCI error recovery are not followed"));
  }
  std::vector<std::string> unclaimed = manager.UnclaimedFds();
  if (!unclaimed.empty()) {
    // Kept, not closed: a device added by a later Reload may name them.
    iopfd::Log(iopfd::LogLevel::kInfo,
               absl::StrCat("inherited fd(s) not used by any device, held for a later reload: ",
                            absl::StrJoin(unclaimed, ", ")));
  }
  iopfd::Log(iopfd::LogLevel::kInfo,
             "control socket " + (own_socket ? socket_path : std::string("from systemd")));

  (*loop)->on_stats = [&manager] { PrintStats(manager.devices(), /*at_exit=*/false); };
  (*loop)->on_stopping = [&events, &notifier] {
    notifier.Stopping();
    events.Close("stopping");
  };
  (*loop)->on_reload = [&reload] { reload(); };
  // Drain deadlines (an owner that never confirms its halt) and the service manager's watchdog
  // and status wake the loop.
  // Control connections that time out (half a message, replies not read, idle) too.
  (*loop)->next_deadline = [&manager, &notifier, &control]() -> std::optional<uint64_t> {
    std::optional<uint64_t> next;
    for (std::optional<uint64_t> d :
         {manager.NextDeadline(), notifier.NextTick(), control.NextDeadline()}) {
      if (d.has_value() && (!next.has_value() || *d < *next)) next = d;
    }
    return next;
  };
  iopfd::FaultLoop* loop_ptr = loop->get();
  (*loop)->on_deadline = [&manager, &notifier, &control, loop_ptr](uint64_t now) {
    manager.Tick(now);
    notifier.Tick(now);
    control.Tick(*loop_ptr, now);
  };
  (*loop)->on_device_failed = [&events, &manager, &fd_store, &ledgers](const iopfd::Device& d,
                                                                       const std::string& why) {
    events.Publish("device_failed", d.name(), why);
    // A failed fault queue is not taken back after a restart: its owner has to hand it over.
    // Nor is it kept open by the store for a ledger's sake.
    if (manager.IsAdoptedAtRunTime(d.name())) {
      fd_store.Forget(d.name());
    } else {
      ledgers.Forget(d.name());
    }
  };
  notifier.status_text = [&status_line](uint64_t now) { return status_line(now); };
  notifier.Ready(status_line(iopfd::MonotonicNs()));
  if (notifier.watchdog_ns()) {
    iopfd::Log(iopfd::LogLevel::kInfo,
               absl::StrCat("watchdog: pinging every ", *notifier.watchdog_ns() / 2 / 1000000,
                            " ms from the fault loop"));
  }
  int rc = (*loop)->Run();
  (*loop)->set_blocking_worker(nullptr);  // joined by Run's stop; destroyed before the loop
  // A configured device whose every read was answered leaves nothing for a ledger to recover:
  // the store stops holding its owner's queue. One that still owes keeps it, for the next start.
  for (const auto& d : manager.devices()) {
    if (d->stats().outstanding() == 0) ledgers.Forget(d->name());
  }
  if (own_socket) unlink(socket_path.c_str());
  PrintStats(manager.devices(), /*at_exit=*/true);
  if (!flags.stats_json.empty()) {
    std::ofstream out(flags.stats_json, std::ios::trunc);
    for (const auto& d : manager.devices())
      out << iopfd::FormatStatsJson(d->name(), d->stats()) << "\n";
    if (!out) {
      iopfd::Log(iopfd::LogLevel::kError, "cannot write --stats-json " + flags.stats_json);
      rc = 1;
    }
  }
  return rc;
}
