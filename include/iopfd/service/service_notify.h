// iopfd's side of systemd's notification protocol (sd_notify(3)): readiness, status, reload,
// stop and the watchdog. With Type=notify systemd starts the units ordered after iopfd only
// once it says READY=1, and with WatchdogSec= restarts it when the pings stop.
#ifndef IOPFD_SERVICE_SERVICE_NOTIFY_H_
#define IOPFD_SERVICE_SERVICE_NOTIFY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace iopfd {

// Not thread-safe: used from the fault loop's thread. Every call does nothing when iopfd was not
// started with a notification socket (NOTIFY_SOCKET unset: run by hand, or Type=simple).
class ServiceNotifier {
 public:
  // How a message reaches the service manager: returns > 0 when sent, 0 when there is no
  // manager to tell, or a negative errno.
  using Sender = std::function<int(const std::string& message)>;

  // Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (libsystemd's sd_notify and
  // sd_watchdog_enabled; the watchdog variables are unset so that nothing iopfd starts sees them).
  static ServiceNotifier FromEnvironment();
  // For tests: `send` instead of sd_notify, a watchdog of `watchdog_ns` (0: none).
  ServiceNotifier(Sender send, uint64_t watchdog_ns);

  // READY=1 with STATUS=status: every configured device is attached or failed with a reason.
  void Ready(const std::string& status);
  // RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, as systemd 253+ asks, so that it matches
  // the reload to the READY=1 that ends it). Ready ends it.
  void Reloading(uint64_t monotonic_ns);
  // STOPPING=1: the stop signal arrived; iopfd answers what is outstanding and exits.
  void Stopping();
  // STATUS=status, when it changed.
  void Status(const std::string& status);

  // Returns when Tick must run next: half a watchdog interval after the last ping, and every
  // status period (10 s) while a status function is set; nullopt when neither applies.
  std::optional<uint64_t> NextTick() const;
  // Pings the watchdog (WATCHDOG=1) and refreshes STATUS= from status_text when they are due.
  // The fault loop calls it at the start of a turn, so a loop stuck inside a turn stops the
  // pings and systemd restarts the service.
  void Tick(uint64_t now_ns);
  // The status line Tick refreshes (devices served, fault rate).
  std::function<std::string(uint64_t now_ns)> status_text;

  // Returns the watchdog interval systemd asked for (nullopt: no watchdog).
  std::optional<uint64_t> watchdog_ns() const {
    return watchdog_ns_ == 0 ? std::nullopt : std::optional(watchdog_ns_);
  }
  // Returns the messages sent so far (for GetStatus and tests).
  uint64_t sent() const { return sent_; }
  uint64_t watchdog_pings() const { return pings_; }

 private:
  void Send(const std::string& message);

  static constexpr uint64_t kStatusPeriodNs = 10'000'000'000;
  Sender send_;
  uint64_t watchdog_ns_ = 0;
  uint64_t last_ping_ns_ = 0;
  uint64_t last_status_ns_ = 0;
  std::string last_status_;
  bool ready_ = false;
  uint64_t sent_ = 0;
  uint64_t pings_ = 0;
  bool warned_ = false;
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_SERVICE_NOTIFY_H_
