#include "iopfd/service/service_notify.h"

#include <systemd/sd-daemon.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {

ServiceNotifier ServiceNotifier::FromEnvironment() {
  uint64_t usec = 0;
  // unset_environment = 1: the watchdog is this process's, not a child's.
  int wd = sd_watchdog_enabled(1, &usec);
  if (wd < 0) {
    Log(LogLevel::kWarning, absl::StrCat("WATCHDOG_USEC/WATCHDOG_PID: ",
                                         std::string(ErrnoName(-wd)), "; no watchdog pings"));
  }
  return ServiceNotifier([](const std::string& m) { return sd_notify(0, m.c_str()); },
                         wd > 0 ? usec * 1000 : 0);
}

ServiceNotifier::ServiceNotifier(Sender send, uint64_t watchdog_ns)
    : send_(std::move(send)), watchdog_ns_(watchdog_ns) {}

void ServiceNotifier::Send(const std::string& message) {
  int rc = send_(message);
  if (rc > 0) {
    ++sent_;
    return;
  }
  // 0: no manager listens (NOTIFY_SOCKET unset): nothing to say. An error is worth one line:
  // a manager waiting for READY=1 that never comes fails the start after its timeout.
  if (rc < 0 && !warned_) {
    warned_ = true;
    Log(LogLevel::kWarning, absl::StrCat("sd_notify: ", std::string(ErrnoName(-rc)),
                                         " (the service manager may not hear iopfd)"));
  }
}

void ServiceNotifier::Ready(const std::string& status) {
  last_status_ = status;
  last_status_ns_ = MonotonicNs();
  Send(absl::StrCat("READY=1\nSTATUS=", status));
  ready_ = true;
}

void ServiceNotifier::Reloading(uint64_t monotonic_ns) {
  Send(absl::StrCat("RELOADING=1\nMONOTONIC_USEC=", monotonic_ns / 1000,
                    "\nSTATUS=reloading the configuration"));
}

void ServiceNotifier::Stopping() {
  Send("STOPPING=1\nSTATUS=stopping: answering every outstanding page request");
}

void ServiceNotifier::Status(const std::string& status) {
  if (status == last_status_) return;
  last_status_ = status;
  Send("STATUS=" + status);
}

std::optional<uint64_t> ServiceNotifier::NextTick() const {
  std::optional<uint64_t> next;
  // Half the interval, as sd_watchdog_enabled(3) advises: a ping late by a loop turn is still
  // in time.
  if (watchdog_ns_ != 0) next = last_ping_ns_ + watchdog_ns_ / 2;
  if (status_text && ready_) {
    uint64_t status = last_status_ns_ + kStatusPeriodNs;
    next = next ? std::min(*next, status) : status;
  }
  return next;
}

void ServiceNotifier::Tick(uint64_t now_ns) {
  if (watchdog_ns_ != 0 && now_ns >= last_ping_ns_ + watchdog_ns_ / 2) {
    Send("WATCHDOG=1");
    ++pings_;
    last_ping_ns_ = now_ns;
  }
  if (status_text && ready_ && now_ns >= last_status_ns_ + kStatusPeriodNs) {
    last_status_ns_ = now_ns;
    Status(status_text(now_ns));
  }
}

}  // namespace iopfd
