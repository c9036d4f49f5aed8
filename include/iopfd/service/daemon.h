// The daemon as a whole: every part of iopfd, wired together in start-up order, run, and taken
// down. main() parses the command line, loads the configuration and runs a Daemon.
#ifndef IOPFD_SERVICE_DAEMON_H_
#define IOPFD_SERVICE_DAEMON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/config/config.h"
#include "iopfd/control/control_methods.h"
#include "iopfd/control/control_server.h"
#include "iopfd/control/varlink.h"
#include "iopfd/device/blocking_worker.h"
#include "iopfd/device/device_manager.h"
#include "iopfd/device/eventfd_watcher.h"
#include "iopfd/device/loop_host.h"
#include "iopfd/device/uevent.h"
#include "iopfd/fault/fault_loop.h"
#include "iopfd/loop/ring.h"
#include "iopfd/service/crash_recovery.h"
#include "iopfd/service/fd_store.h"
#include "iopfd/service/service_notify.h"

namespace iopfd {

// What the command line decides.
struct DaemonOptions {
  LoadOptions load;            // where the configuration comes from (Reload reads it again)
  std::string stats_json;      // --stats-json: each device's stats written there at exit
  std::string control_socket;  // --control-socket: overrides [control] socket
  std::string version;         // reported by GetStatus and the Varlink service info
};

// The STATUS= line systemctl status shows: what is served, and how fast faults come.
class StatusLine {
 public:
  explicit StatusLine(const DeviceManager* manager) : manager_(manager) {}
  // Returns the line at now_ns; the rate is over the time since the previous call.
  std::string operator()(uint64_t now_ns);

 private:
  const DeviceManager* manager_;
  uint64_t last_ns_ = 0;
  uint64_t last_groups_ = 0;
};

// Owns every part of a running iopfd. Members are declared in start-up order, so they are torn
// down in the reverse: the control socket and uevents before the state they read, the device
// manager (which answers what is outstanding) before the fault loop, the fault loop before the
// ring.
class Daemon {
 public:
  // Starts everything but the loop: signals blocked (they are read on the ring), inherited
  // descriptors taken (the control socket, systemd's fd store, the devices' pool), the devices
  // configured attached (one failing does not stop the others), the adoptions the fd store kept
  // taken back, the control socket and the uevent listener set up. Errors (each logged by the
  // caller): InvalidArgument for malformed LISTEN_* variables; the ring's or the control
  // socket's setup failure as the system call gave it.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(DaemonOptions options, const Config& config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Serves until SIGTERM/SIGINT (or a fatal loop error), then answers what is outstanding,
  // logs each device's final counters and writes --stats-json. Returns the exit code: 0, or 1
  // when groups were left unanswered, the loop failed, or --stats-json could not be written.
  int Run();

 private:
  Daemon(DaemonOptions options, const Config& config);
  // Takes the control socket, the fd store's entries and the configured ledgers out of the
  // inherited descriptors; the rest are the devices' pool.
  absl::Status TakeInherited();
  // The device manager, its worker thread and interrupt watcher, and its event hooks.
  void CreateManager();
  // Attaches the configured devices, then the adoptions the fd store kept.
  void AttachAll(const std::vector<DeviceConfig>& devices);
  // The Varlink service, its methods and the control socket.
  absl::Status StartControl();
  void FollowUevents();
  // The loop's hooks: stats on SIGUSR1, reload on SIGHUP, deadlines, failures, the stop.
  void HookLoop();
  // Reload (SIGHUP, io.iopfd.Reload): re-reads the files and applies them.
  ReloadOutcome Reload();
  // After the loop: stored ledgers with nothing owed forgotten, the socket removed, the final
  // counters logged and written. Returns rc, or 1 when --stats-json could not be written.
  int Finish(int rc);

  DaemonOptions options_;
  GlobalConfig global_;  // the settings in force: Reload updates those that apply at run time
  std::vector<DeviceConfig> initial_devices_;
  std::unique_ptr<Ring> ring_;
  std::unique_ptr<FaultLoop> loop_;
  std::unique_ptr<LoopHost> host_;
  ListenFds inherited_;
  absl::StatusOr<UniqueFd> listener_ = absl::NotFoundError("not taken yet");
  FdStore fd_store_;
  std::unique_ptr<CrashRecovery> recovery_;
  // Before the manager: the devices leave it when they go.
  std::unique_ptr<Pager> pager_;
  std::unique_ptr<DeviceManager> manager_;
  BlockingWorker blocking_;
  EventfdWatcher irq_watcher_;
  EventBus events_;
  std::unique_ptr<VarlinkService> service_;
  ServiceNotifier notifier_;
  std::unique_ptr<StatusLine> status_line_;
  DaemonState state_;
  std::string socket_path_;
  bool own_socket_ = false;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<UeventListener> uevents_;
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_DAEMON_H_
