#include "iopfd/service/crash_recovery.h"

#include <fcntl.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/control/control_methods.h"
#include "iopfd/service/log.h"

namespace iopfd {

// Room for the largest read max_read_records may allow after a restart that raises it (up to
// 65536; a ledger outlives restarts): the file is sparse, untouched pages cost nothing.
CrashRecovery::CrashRecovery(FdStore* store, uint32_t max_read_records)
    : store_(store),
      ledger_capacity_(std::max<uint32_t>(max_read_records, 65536)),
      configured_(store, ledger_capacity_),
      configured_maps_(store) {}

void CrashRecovery::TakeStored(ListenFds* inherited, std::vector<std::string>* problems) {
  // Devices adopted before a restart: adopted again after the configured devices attached.
  stored_ = store_->TakeStored(inherited, problems);
  // The ledgers of configured adopt-mode devices: answered as each attaches, before its first
  // read.
  configured_.TakeStored(inherited, problems);
  configured_maps_.TakeStored(inherited, problems);
}

void CrashRecovery::AnswerOrphans(const std::string& device, UniqueFd ledger_fd, int fault_fd) {
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

namespace {

// What a stored device held mapped in the owner's IOAS (absent when an iopfd without a map
// record stored it): taken back, or left as someone else's when the file is not one (logged).
std::unique_ptr<MapRecord> TakeStoredMaps(FdStore::Stored* s) {
  auto fd = s->fds.Take(kMapRecordFdName);
  if (!fd.ok()) return nullptr;
  auto opened = MapRecord::Open(s->device, *std::move(fd));
  if (opened.ok()) return *std::move(opened);
  Log(LogLevel::kError,
      absl::StrCat(opened.status().message(),
                   "; what the previous iopfd mapped is served as someone else's"),
      {{"DEVICE", s->device}});
  return nullptr;
}

}  // namespace

absl::Status CrashRecovery::AdoptStored(DeviceManager* manager, FdStore::Stored* s) {
  AdoptRequest parsed = ParseAdoptConfig(s->config_text);
  if (!parsed.config.has_value()) {
    return absl::InvalidArgumentError(absl::StrJoin(parsed.errors, "; "));
  }
  if (parsed.config->name != s->device) {
    return absl::InvalidArgumentError("the record's config names device " + parsed.config->name);
  }
  auto dup = [](int fd) { return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 3)); };
  // The ledger is absent when an iopfd without one stored the device.
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
  std::unique_ptr<MapRecord> maps = TakeStoredMaps(s);
  // Adopt closes every fd it was given when it fails: keep the fault queue for the answers.
  UniqueFd fault_copy;
  const std::string& fault_name = parsed.config->adopt.fault_fd;
  if (auto fd = s->fds.Take(fault_name); fd.ok()) {
    fault_copy = dup(fd->get());
    s->fds.Add(fault_name, *std::move(fd));
  }
  const int stored_maps_fd = maps != nullptr ? maps->fd() : -1;
  absl::Status st =
      manager->Adopt(*parsed.config, std::move(s->fds), std::move(ledger), std::move(maps));
  if (const Device* d = st.ok() ? manager->Find(s->device) : nullptr;
      d != nullptr && stored_maps_fd >= 0 && d->map_record() != nullptr &&
      d->map_record()->fd() != stored_maps_fd) {
    // The device records in another file than the store keeps (its layout differs: a default
    // map unit changed with iopfd's version): keep that one instead, the entries anew (Keep
    // adds; two entries of one name would spoil the next start's). As many entries as before:
    // the room that held them holds these. (A device stored without a record goes on without
    // one in the store: one more entry might not fit, and the device would be lost.)
    store_->Forget(s->device);
    KeepAdopted(*d, s->config_text);
  }
  if (!st.ok() && ledger_copy.valid() && fault_copy.valid()) {
    AnswerOrphans(s->device, std::move(ledger_copy), fault_copy.get());
  }
  return st;
}

void CrashRecovery::ReplayStored(DeviceManager* manager) {
  // A name a device file took meanwhile wins: the stored one is handed back.
  for (FdStore::Stored& s : stored_) {
    absl::Status st = AdoptStored(manager, &s);
    if (st.ok()) {
      Log(LogLevel::kInfo,
          s.device + ": adopted again from the fd store (handed over before the restart)",
          {{"DEVICE", s.device}});
    } else {
      Log(LogLevel::kError,
          absl::StrCat(s.device, ": not adopted again from the fd store: ", st.message(),
                       "; its descriptors are closed (handed back)"),
          {{"DEVICE", s.device}});
      store_->Forget(s.device);
    }
  }
  stored_.clear();
  (void)configured_.SettleUnclaimed();
  (void)configured_maps_.SettleUnclaimed();
}

std::unique_ptr<MapRecord> CrashRecovery::MapsForConfigured(const Device& device) {
  return configured_maps_.For(device.name(), device.iommufd_fd());
}

std::unique_ptr<InflightLedger> CrashRecovery::LedgerForConfigured(Device& device) {
  InflightLedger::Answered elsewhere;
  std::unique_ptr<InflightLedger> ledger =
      configured_.For(device.name(), device.fault_fd(), &elsewhere);
  device.RecordRecovered(elsewhere);
  return ledger;
}

std::unique_ptr<InflightLedger> CrashRecovery::LedgerForAdopted(const std::string& device) {
  if (!store_->enabled()) return nullptr;
  auto ledger = InflightLedger::Create(device, ledger_capacity_);
  if (ledger.ok()) return *std::move(ledger);
  Log(LogLevel::kWarning,
      absl::StrCat(ledger.status().message(), "; a crash would leave what it read unanswered"),
      {{"DEVICE", device}});
  return nullptr;
}

void CrashRecovery::KeepAdopted(const Device& device, const std::string& config_text) {
  std::vector<std::pair<std::string, int>> held = device.HeldFds();
  if (device.ledger() != nullptr) held.emplace_back(kLedgerFdName, device.ledger()->fd());
  if (device.map_record() != nullptr) {
    held.emplace_back(kMapRecordFdName, device.map_record()->fd());
  }
  absl::Status st = store_->Keep(device.name(), config_text, held);
  if (!st.ok()) Log(LogLevel::kWarning, std::string(st.message()), {{"DEVICE", device.name()}});
}

void CrashRecovery::Forget(const std::string& device, bool adopted_at_run_time) {
  if (adopted_at_run_time) {
    store_->Forget(device);
  } else {
    configured_.Forget(device);
    configured_maps_.Forget(device);
  }
}

void CrashRecovery::SettleAtStop(const std::vector<std::unique_ptr<Device>>& devices) {
  for (const auto& d : devices) {
    if (d->stats().outstanding() == 0) configured_.Forget(d->name());
  }
  configured_maps_.SettleAtStop(devices);
}

}  // namespace iopfd
