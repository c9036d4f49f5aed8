// Crash recovery, one owner: everything iopfd keeps so that a process killed mid-flight (SIGKILL,
// the watchdog, a bug) leaves no page request it read unanswered, and everything the next
// process does with what a dead one kept.
//
// What a crash can lose is a group iopfd read from a fault queue and had not answered: the
// kernel keeps it pending for as long as the queue is open, and the queue outlives iopfd when
// someone else holds it (a VMM that handed it over, or systemd's fd store). So for every such
// queue an in-flight ledger (inflight_ledger.h) records reads and owed answers, and is stored
// in the fd store beside it:
//  - a device adopted at run time (Adopt): its descriptors, the Adopt call's text and its
//    ledger are stored; the next process adopts it again with that ledger (the device answers
//    what it holds before its first read, Device::UseLedger), or, when it cannot, answers what
//    the ledger holds on the stored queue and hands the device back;
//  - a configured adopt-mode device: its descriptors come with every start (LISTEN_FDS), so only
//    its ledger and a copy of its queue are stored (configured_ledgers.h).
// Beside the ledgers, each adopt-mode device's map record (map_record.h: which units it holds
// mapped in the owner's IOAS) is kept the same two ways (with a run-time adopted device's
// descriptors; for a configured one with a copy of its iommufd, configured_maps.h), so that the
// next process counts those units against its budgets instead of serving them as someone else's.
// Devices iopfd binds itself (vfio mode) need none: their queue closes with the process, and the
// kernel answers what is pending on it.
//
// Not thread-safe: used from the fault loop's thread.
#ifndef IOPFD_SERVICE_CRASH_RECOVERY_H_
#define IOPFD_SERVICE_CRASH_RECOVERY_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/device/device.h"
#include "iopfd/device/device_manager.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/service/configured_ledgers.h"
#include "iopfd/service/configured_maps.h"
#include "iopfd/service/fd_store.h"
#include "iopfd/service/listen_fds.h"

namespace iopfd {

class CrashRecovery {
 public:
  // `store` must outlive this object. `max_read_records` is the largest read the configuration
  // allows now; ledgers are made with room for more (a ledger outlives restarts that raise it).
  CrashRecovery(FdStore* store, uint32_t max_read_records);

  // At start, before the inherited descriptors go to the device manager: takes out of
  // `inherited` what the fd store kept (devices adopted at run time, configured devices'
  // ledgers). Entries that cannot be used are removed and described in *problems.
  void TakeStored(ListenFds* inherited, std::vector<std::string>* problems);

  // After the configured devices attached: adopts again every device the store kept, checked as
  // an Adopt call is, with its ledger; one that cannot be (its record is invalid, a device file
  // took its name, the adopt fails) gets what the dead process owed on its queue answered and is
  // handed back (its entries removed). Then answers what the configured devices' ledgers that no
  // device took hold. Each outcome is logged.
  void ReplayStored(DeviceManager* manager);

  // For a configured adopt-mode device, attached and not yet served: returns the ledger it is to
  // record its reads in (Device::UseLedger answers what a dead process left in it), or nullptr
  // when the store is disabled or cannot keep one (logged). What a ledger recorded on another
  // queue is answered there and counted in the device's recovered_* counters
  // (ConfiguredLedgers::For).
  std::unique_ptr<InflightLedger> LedgerForConfigured(Device& device);

  // For a configured adopt-mode device, attached and not yet served: returns the map record a
  // previous process kept for it on the same iommufd, for Device::TakeBackMappings, or nullptr
  // (ConfiguredMaps::For).
  std::unique_ptr<MapRecord> MapsForConfigured(const Device& device);
  // After it took back what it could: keeps its map record (ConfiguredMaps::Keep).
  void KeepConfiguredMaps(const Device& device) {
    configured_maps_.Keep(device.name(), device.map_record(), device.iommufd_fd());
  }

  // For a device about to be adopted at run time: returns a new ledger to store with it, or
  // nullptr when the store is disabled or the ledger cannot be made (logged: served without).
  std::unique_ptr<InflightLedger> LedgerForAdopted(const std::string& device);

  // A device adopted at run time is served: stores its descriptors, the Adopt call's text and
  // its ledger. A failure is logged (the device is served; a restart will not bring it back).
  void KeepAdopted(const Device& device, const std::string& config_text);

  // The device is no longer served (handed back, removed, failed): what is stored for it goes,
  // so that the store does not keep its owner's queue open.
  void Forget(const std::string& device, bool adopted_at_run_time);

  // At a clean stop, for each device still served: a configured device that owes nothing leaves
  // its ledger (and the store's copy of its queue); one that still owes keeps it for the next
  // start; its map record stays, alone (ConfiguredMaps::SettleAtStop). Adopted devices stay
  // stored, to be adopted again.
  void SettleAtStop(const std::vector<std::unique_ptr<Device>>& devices);

  // Returns the names of the configured devices whose ledger is kept now.
  const std::set<std::string>& configured_kept() const { return configured_.kept(); }

 private:
  // Adopts one stored device (see ReplayStored); returns why it was not adopted.
  absl::Status AdoptStored(DeviceManager* manager, FdStore::Stored* s);
  // Answers what a dead process's ledger holds on `fault_fd` before its device goes back.
  static void AnswerOrphans(const std::string& device, UniqueFd ledger_fd, int fault_fd);

  FdStore* store_;
  uint32_t ledger_capacity_;
  std::vector<FdStore::Stored> stored_;  // adopted devices that came back, not replayed yet
  ConfiguredLedgers configured_;
  ConfiguredMaps configured_maps_;
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_CRASH_RECOVERY_H_
