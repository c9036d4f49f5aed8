// Map records (map_record.h) for devices attached from a device file in adopt mode.
//
// A device adopted at run time stores its map record with its descriptors (fd_store.h); a
// configured one gets its descriptors from whoever launches iopfd at every start, so only its
// record is stored, with a copy of the iommufd whose IOAS the recorded mappings are in. Unlike
// the in-flight ledger, the record outlives a clean stop too: a clean stop leaves what iopfd
// mapped where it is, so that the device keeps working while iopfd is away. At the next start
// the record goes to the device when it came back on that same iommufd (kcmp(2) says so);
// otherwise the mappings belong to an IOAS this device no longer uses, and are left to their
// owner with the rest of it, as a hand-back leaves them. A clean stop keeps the record alone:
// a copy of the iommufd in the store would keep the owner's whole context, and every page it
// pins, alive for as long as iopfd stays stopped, even after the owner is gone. A record that
// comes back alone, or whose iommufd the kernel cannot compare (no kcmp), is taken back with
// each unit checked (Device::TakeBackMappings: a map call, and where something is there a copy
// that says all of the unit is mapped), which never leaves a unit believed mapped that is not.
//
// Not thread-safe: used from the fault loop's thread.
#ifndef IOPFD_SERVICE_CONFIGURED_MAPS_H_
#define IOPFD_SERVICE_CONFIGURED_MAPS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "iopfd/device/device.h"
#include "iopfd/fault/map_record.h"
#include "iopfd/service/fd_store.h"

namespace iopfd {

class ConfiguredMaps {
 public:
  // `store` must outlive this object.
  explicit ConfiguredMaps(FdStore* store) : store_(store) {}

  // At start, before the inherited descriptors go to the device manager: takes the stored map
  // records out of `inherited`. Entries that cannot be used are removed and described in
  // *problems (FdStore::TakeMapRecords).
  void TakeStored(ListenFds* inherited, std::vector<std::string>* problems);

  // For the configured adopt-mode device `name`, attached on `iommufd` and not yet served.
  // Returns the record a previous process kept for it, for Device::TakeBackMappings, unless it
  // was kept with another iommufd (kcmp says so: its entries are removed, logged); nullptr too
  // when none came back or the file is not a record (logged).
  std::unique_ptr<MapRecord> For(const std::string& name, int iommufd);

  // After the device `name` took back what it could: keeps its record (nullptr: none) with the
  // iommufd it is served on, unless the store holds that very file already. A failure is logged
  // (the device is served either way).
  void Keep(const std::string& name, const MapRecord* record, int iommufd);

  // At a clean stop, for each device still served: its record stays in the store, alone (see
  // above). Failures are logged.
  void SettleAtStop(const std::vector<std::unique_ptr<Device>>& devices);

  // The device is no longer served from the configuration (removed, restarted by a reload,
  // detached, its fault queue failed): what is stored for it goes.
  void Forget(const std::string& name);

  // After the configured devices attached: removes the records no device took (each logged),
  // and returns their device names. What they recorded stays mapped: the owner's now.
  std::vector<std::string> SettleUnclaimed();

 private:
  FdStore* store_;
  std::map<std::string, FdStore::StoredPair> stored_;  // came back, not taken yet
  std::map<std::string, int> kept_fd_;                 // per device: the record file kept
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_CONFIGURED_MAPS_H_
