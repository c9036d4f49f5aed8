#include "iopfd/service/configured_maps.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/service/configured_ledgers.h"
#include "iopfd/service/log.h"

namespace iopfd {

void ConfiguredMaps::TakeStored(ListenFds* inherited, std::vector<std::string>* problems) {
  for (FdStore::StoredPair& p : store_->TakeMapRecords(inherited, problems)) {
    std::string name = p.device;
    stored_.insert_or_assign(std::move(name), std::move(p));
  }
}

std::unique_ptr<MapRecord> ConfiguredMaps::For(const std::string& name, int iommufd) {
  auto it = stored_.find(name);
  if (it == stored_.end()) return nullptr;
  FdStore::StoredPair stored = std::move(it->second);
  stored_.erase(it);
  if (stored.partner.valid()) {
    absl::StatusOr<bool> same = SameOpenFile(stored.partner.get(), iommufd);
    if (same.ok() && !*same) {
      // Its mappings are in an IOAS of another iommufd: not this device's to take back or unmap.
      Log(LogLevel::kInfo,
          name +
              ": the map record the previous iopfd kept is for another iommufd; what it "
              "mapped there is left to its owner",
          {{"DEVICE", name}});
      store_->ForgetMapRecord(name);
      return nullptr;
    }
    if (!same.ok()) {
      Log(LogLevel::kInfo,
          absl::StrCat(name,
                       ": whether its iommufd is the one its map record was kept with is "
                       "unknown (",
                       same.status().message(), "); each recorded unit is checked by a map call"),
          {{"DEVICE", name}});
    }
  }
  const int fd = stored.main.get();
  auto record = MapRecord::Open(name, std::move(stored.main));
  if (!record.ok()) {
    Log(LogLevel::kError,
        absl::StrCat(record.status().message(),
                     "; what the previous iopfd mapped is served as someone else's"),
        {{"DEVICE", name}});
    store_->ForgetMapRecord(name);
    return nullptr;
  }
  // With its iommufd the store's entries stay as they are (the same file, the same iommufd);
  // alone (a clean stop), Keep stores the pair again.
  if (stored.partner.valid()) kept_fd_[name] = fd;
  return *std::move(record);
}

void ConfiguredMaps::Keep(const std::string& name, const MapRecord* record, int iommufd) {
  if (record == nullptr || !store_->enabled()) return;
  auto it = kept_fd_.find(name);
  if (it != kept_fd_.end() && it->second == record->fd()) return;
  absl::Status st = store_->KeepMapRecord(name, record->fd(), iommufd);
  if (!st.ok()) {
    Log(LogLevel::kWarning, std::string(st.message()), {{"DEVICE", name}});
    kept_fd_.erase(name);
    return;
  }
  kept_fd_[name] = record->fd();
}

void ConfiguredMaps::SettleAtStop(const std::vector<std::unique_ptr<Device>>& devices) {
  for (const auto& d : devices) {
    if (kept_fd_.count(d->name()) == 0 || d->map_record() == nullptr) continue;
    // Replaces the pair with the record alone: the store stops holding the owner's iommufd.
    absl::Status st = store_->KeepMapRecord(d->name(), d->map_record()->fd(), -1);
    if (!st.ok()) Log(LogLevel::kWarning, std::string(st.message()), {{"DEVICE", d->name()}});
  }
}

void ConfiguredMaps::Forget(const std::string& name) {
  if (kept_fd_.erase(name) != 0) store_->ForgetMapRecord(name);
}

std::vector<std::string> ConfiguredMaps::SettleUnclaimed() {
  std::vector<std::string> names;
  for (auto& [name, s] : stored_) {
    Log(LogLevel::kInfo,
        absl::StrCat(name,
                     ": its map record came back from the fd store but the device is not "
                     "served; what it recorded stays mapped, its owner's; removed"),
        {{"DEVICE", name}});
    store_->ForgetMapRecord(name);
    names.push_back(name);
  }
  stored_.clear();
  return names;
}

}  // namespace iopfd
