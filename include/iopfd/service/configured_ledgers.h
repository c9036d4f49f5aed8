// In-flight ledgers for devices attached from a device file in adopt mode.
//
// Such a device's fault queue is shared with the owner that handed it over (a VMM, through
// LISTEN_FDS), which keeps it open while iopfd is down. A clean stop answers everything iopfd
// read; a crash (SIGKILL, the watchdog, a bug) does not, and the kernel then keeps those groups
// pending until the owner closes the queue: the device's page requests hang. A device adopted at
// run time has its ledger stored with its descriptors (fd_store.h); a configured one gets its
// descriptors from whoever launches iopfd, so only its ledger is stored, together with a copy of
// the fault queue it recorded reads of. The next process answers what the ledger holds before
// the device's first read: through the device itself when it came back on that same queue (the
// kernel's kcmp(2) says so), else on the stored copy, which is the queue the groups came from.
//
// Not thread-safe: used from the fault loop's thread.
#ifndef IOPFD_SERVICE_CONFIGURED_LEDGERS_H_
#define IOPFD_SERVICE_CONFIGURED_LEDGERS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/device/device.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/service/fd_store.h"

namespace iopfd {

// Returns true when a and b are the same open file (one open(2) or one kernel object's file,
// however often duplicated or passed between processes), false when they are not. Unimplemented
// when the kernel cannot say (kcmp(2) needs CONFIG_KCMP; a seccomp filter may refuse it), or
// the errno error kcmp gave.
absl::StatusOr<bool> SameOpenFile(int a, int b);

class ConfiguredLedgers {
 public:
  // `store` must outlive this object. `capacity` is each new ledger's read buffer in records.
  ConfiguredLedgers(FdStore* store, uint32_t capacity) : store_(store), capacity_(capacity) {}

  // At start, before the inherited descriptors go to the device manager: takes the stored
  // ledgers out of `inherited`. Entries that cannot be used are removed and described in
  // *problems (FdStore::TakeLedgers).
  void TakeStored(ListenFds* inherited, std::vector<std::string>* problems);

  // For the configured adopt-mode device `device`, attached and not yet served (nothing read
  // from its fault queue `fault_fd`). Returns the ledger the device is to
  // record its reads in (Device::UseLedger), or nullptr when the store is disabled or cannot keep
  // one (logged: the device is served without). When a ledger for the device came back from the
  // store:
  //  - recorded on this same fault queue: it is returned as it is, and UseLedger answers what
  //    it holds (owed answers as they were, unresolved groups resolved);
  //  - recorded on another queue, or the kernel cannot tell: what it holds is answered on the
  //    stored copy of that queue (owed answers as they were, unresolved groups INVALID), added to
  //    *answered_elsewhere (the device's recovered_* counters), and a new ledger is made and kept.
  std::unique_ptr<InflightLedger> For(const std::string& device, int fault_fd,
                                      InflightLedger::Answered* answered_elsewhere);

  // The device is no longer served from the configuration (removed, restarted by a reload,
  // detached, its fault queue failed): what is stored for it goes, so that the store does not
  // keep the owner's queue open.
  void Forget(const std::string& device);

  // After the configured devices attached: answers what the stored ledgers no device took hold,
  // on the queues they recorded, and removes them (each logged). Returns their device names.
  std::vector<std::string> SettleUnclaimed();

  // At a clean stop, after everything read was answered: removes every ledger from the store,
  // which then holds none of the owners' queues.
  void ForgetAll();

  // Returns the names of the devices whose ledger is kept now.
  const std::set<std::string>& kept() const { return kept_; }

 private:
  // A ledger that came back for a device about to be served on fault_fd: returns it when it
  // recorded that same queue; otherwise answers what it holds on its stored queue (added to
  // *answered_elsewhere, logged), removes it from the store and returns nullptr.
  std::unique_ptr<InflightLedger> TakeBack(FdStore::StoredLedger stored, int fault_fd,
                                           InflightLedger::Answered* answered_elsewhere);
  // Answers what `stored` holds on its own fault queue; returns the summary, or an error naming
  // the device and errno.
  static absl::StatusOr<InflightLedger::Answered> AnswerOnStoredQueue(
      FdStore::StoredLedger& stored);

  FdStore* store_;
  uint32_t capacity_;
  std::map<std::string, FdStore::StoredLedger> stored_;  // came back, not taken yet
  std::set<std::string> kept_;
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_CONFIGURED_LEDGERS_H_
