#include "iopfd/device/device.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/uapi.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

// io_uring serves the fault fd through its ->read/->write fallback, which refuses IOCB_NOWAIT
// on a file without O_NONBLOCK (io_uring/rw.c loop_rw_iter) and would then bounce between poll
// and retry. The fault fd's read and write never block, so the flag changes nothing else; in
// adopt mode the open file is shared with the owner, who is affected by that only.
absl::Status MakeNonBlocking(int fd, const std::string& name) {
  int flags = fcntl(fd, F_GETFL);  // NOLINT(cppcoreguidelines-pro-type-vararg)
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {  // NOLINT
    return ErrnoStatus(errno, name, "fcntl(fault fd, O_NONBLOCK)");
  }
  return absl::OkStatus();
}

absl::StatusOr<Backing> OpenBacking(const DeviceConfig& dev, const RegionConfig& r, size_t index,
                                    ListenFds* fds, Syscalls* sys) {
  const bool writable = (r.access & uapi::kPermWrite) != 0;
  UniqueFd fd;
  switch (r.backing) {
    case BackingKind::kFile: {
      int rc = sys->Open(r.path.c_str(), writable ? O_RDWR : O_RDONLY);
      if (rc < 0) return ErrnoStatus(-rc, dev.name, "open backing " + r.path);
      fd.Reset(rc);
      break;
    }
    case BackingKind::kAnonymous: {
      std::string memfd_name = absl::StrCat("iopfd:", dev.name, ":", index);
      int rc = sys->MemfdCreate(memfd_name.c_str(), r.size);
      if (rc < 0) return ErrnoStatus(-rc, dev.name, "memfd_create for an anonymous region");
      fd.Reset(rc);
      break;
    }
    case BackingKind::kInheritedFd: {
      auto taken = fds->Take(r.fd_name);
      if (!taken.ok()) {
        return absl::NotFoundError(absl::StrCat(dev.name, ": backing fd:", r.fd_name, ": ",
                                                std::string(taken.status().message())));
      }
      fd = *std::move(taken);
      break;
    }
  }
  // The shared view is only used by IOMMU_IOAS_MAP on kernels without IOMMU_IOAS_MAP_FILE;
  // mmap reserves address space and touches no page.
  void* va = sys->MapShared(fd.get(), r.offset, r.size, writable);
  if (va == nullptr) {
    int err = errno;
    if (r.backing == BackingKind::kInheritedFd) fds->Add(r.fd_name, std::move(fd));
    return ErrnoStatus(err, dev.name,
                       absl::StrCat("mmap backing of region at 0x", absl::Hex(r.iova)));
  }
  return Backing(std::move(fd), va, r.size, sys);
}

}  // namespace

namespace {
// Returns the uevent DEVPATH of a sysfs path: its real path without the leading "/sys" (a
// path that does not resolve is taken as written), or "" when it is not below /sys.
std::string DevpathOf(const std::string& sysfs) {
  std::error_code ec;
  std::filesystem::path real = std::filesystem::canonical(sysfs, ec);
  std::string p = ec ? sysfs : real.string();
  return p.rfind("/sys/", 0) == 0 ? p.substr(4) : std::string();
}
}  // namespace

absl::StatusOr<std::unique_ptr<Device>> Device::Attach(const DeviceConfig& config, ListenFds* fds,
                                                       Syscalls* sys, ReadLimits limits) {
  std::unique_ptr<Device> d(new Device(config));
  absl::Status st = d->Setup(fds, sys, limits);
  if (!st.ok()) {
    // Inherited fds taken so far go back, so that a corrected configuration can use them.
    d->ReleaseFds(fds);
    return st;
  }
  return d;
}

// include/uapi/linux/iommufd.h: once any PASID is attached, every domain of the device, the
// non-PASID one included, must have been allocated with IOMMU_HWPT_ALLOC_PASID.
bool Device::UsesPasid(const DeviceConfig& config) {
  return std::any_of(config.spaces.begin(), config.spaces.end(),
                     [](const SpaceConfig& s) { return s.pasid.has_value(); });
}

absl::Status Device::Setup(ListenFds* fds, Syscalls* sys, ReadLimits limits) {
  sys_ = sys;
  DeviceId dev_id;
  std::vector<IoasId> ioas(config_.spaces.size());
  absl::Status st = config_.mode == AttachMode::kAdopt ? SetUpAdopt(fds, &dev_id, &ioas)
                                                       : SetUpVfio(&dev_id, &ioas);
  if (!st.ok()) return st;
  FindDevpath();
  st = MakeNonBlocking(fault_fd_.get(), config_.name);
  if (!st.ok()) return st;
  return SetUpFaultPath(fds, dev_id, ioas, limits);
}

void Device::FindDevpath() {
  if (!config_.sysfs.empty()) {
    devpath_ = DevpathOf(config_.sysfs);
  } else if (config_.mode == AttachMode::kVfio) {
    // /sys/class/vfio-dev/vfioN/device is the PCI function (drivers/vfio/vfio_main.c).
    std::string sysfs = !config_.vfio.pci.empty()
                            ? "/sys/bus/pci/devices/" + config_.vfio.pci
                            : "/sys/class/vfio-dev/" +
                                  std::filesystem::path(config_.vfio.cdev).filename().string() +
                                  "/device";
    std::error_code ec;
    if (std::filesystem::exists(sysfs, ec)) devpath_ = DevpathOf(sysfs);
  }
}

absl::Status Device::SetUpFaultPath(ListenFds* fds, DeviceId dev_id,
                                    const std::vector<IoasId>& ioas, ReadLimits limits) {
  std::vector<AddressSpace> spaces;
  size_t region_index = 0;
  for (size_t i = 0; i < config_.spaces.size(); ++i) {
    const SpaceConfig& s = config_.spaces[i];
    std::vector<Region> regions;
    for (const RegionConfig& r : s.regions) {
      auto backing = OpenBacking(config_, r, region_index++, fds, sys_);
      if (!backing.ok()) return backing.status();
      backings_.push_back(*std::move(backing));
      const Backing& b = backings_.back();
      const uint64_t page = r.page_size ? r.page_size : 4096;
      regions.emplace_back(r.iova, r.size, page, r.access, r.prefetch, b.fd(), r.offset, b.va(),
                           r.map_unit != 0 ? r.map_unit : DefaultMapUnit(page), r.first_touch_page);
    }
    spaces.emplace_back(s.pasid, ioas[i], std::move(regions));
  }
  spaces_ = std::make_unique<SpaceTable>(std::move(spaces));
  if (mode_ == AttachMode::kAdopt) SetUpMapRecord();
  stats_ = std::make_unique<DeviceStats>();
  responses_ = std::make_unique<ResponseQueue>(stats_.get());
  mapper_ = std::make_unique<IommufdMapper>(&*iommufd_);
  FaultProcessorOptions opts;
  opts.device_id = dev_id.value();
  opts.max_group_records = config_.limits.max_group_records;
  opts.max_fault_map_bytes = config_.limits.max_fault_map_bytes;
  processor_ = std::make_unique<FaultProcessor>(opts, spaces_.get(), mapper_.get(),
                                                responses_.get(), stats_.get());
  queue_ = std::make_unique<FaultQueue>(name_, fault_fd_.get(), sys_, limits, stats_.get(),
                                        responses_.get(), processor_.get());
  return absl::OkStatus();
}

absl::Status Device::UseLedger(std::unique_ptr<InflightLedger> ledger) {
  ledger_ = std::move(ledger);
  queue_->set_ledger(ledger_.get());
  InflightLedger::Leftovers left = ledger_->FindLeftovers();
  absl::Status result;
  InflightLedger::Answered owed = ledger_->WriteOwed(left, name_, fault_fd(), *sys_, &result);
  stats_->recovered_answers += owed.accepted;
  stats_->recovered_already_answered += owed.rejected;
  if (!left.unprocessed.empty()) {
    const uint64_t before = stats_->groups;
    processor_->Process(left.unprocessed, MonotonicNs());
    stats_->recovered_groups += stats_->groups - before;
    // Now, before the first read: a group the kernel answered itself meanwhile (its owner
    // detached) costs a harmless EINVAL here, where after a read its cookie could name a new
    // group.
    absl::Status st = WriteQueued();
    if (!st.ok() && result.ok()) result = st;
  }
  ledger_->Consumed(left.buffered);
  if (!left.owed.empty() || !left.unprocessed.empty()) {
    Log(LogLevel::kWarning,
        absl::StrCat(name_, ": the previous iopfd died owing ", left.owed.size(),
                     " answer(s) and with ", stats_->recovered_groups,
                     " group(s) read but not resolved: answered now (",
                     stats_->recovered_already_answered, " had reached the kernel already)"),
        {{"DEVICE", name_}});
  }
  return result;
}

namespace {

// The largest map unit among `spaces`' regions.
uint64_t LargestUnit(const std::vector<const AddressSpace*>& spaces) {
  uint64_t largest = 0;
  for (const AddressSpace* s : spaces) {
    for (const Region& r : s->regions()) largest = std::max(largest, r.unit_bytes());
  }
  return largest;
}

}  // namespace

absl::Status Device::SetBudget(std::optional<AttachmentKey> space, std::optional<uint64_t> bytes) {
  if (pager_ == nullptr) return absl::FailedPreconditionError(name_ + ": not paged");
  std::vector<const AddressSpace*> covered;
  AddressSpace* one = nullptr;
  for (AddressSpace& s : spaces_->spaces()) {
    const AttachmentKey key = AttachmentOf(s.pasid().has_value(), s.pasid().value_or(0));
    if (!space || key == *space) covered.push_back(&s);
    if (space && key == *space) one = &s;
  }
  if (space && one == nullptr) {
    return absl::NotFoundError(absl::StrCat(name_, ": no address space for PASID ", *space));
  }
  if (bytes && *bytes < LargestUnit(covered)) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": a budget of ", *bytes,
                                                   " bytes cannot hold one map unit (",
                                                   LargestUnit(covered), " bytes)"));
  }
  const uint64_t now = MonotonicNs();
  if (one == nullptr) {
    config_.limits.max_resident = bytes;
    pager_->SetBudget(paged_->scope(), bytes, now);
    return absl::OkStatus();
  }
  config_.spaces[static_cast<size_t>(one - spaces_->spaces().data())].max_resident = bytes;
  pager_->SetBudget(one->paging()->scope(), bytes, now);
  return absl::OkStatus();
}

absl::Status Device::ApplyBudgets(const DeviceConfig& config) {
  absl::Status result = SetBudget(std::nullopt, config.limits.max_resident);
  for (const SpaceConfig& s : config.spaces) {
    absl::Status st =
        SetBudget(AttachmentOf(s.pasid.has_value(), s.pasid.value_or(0)), s.max_resident);
    if (result.ok()) result = st;
  }
  return result;
}

absl::StatusOr<Pager::EvictReport> Device::Evict(std::optional<AttachmentKey> space, uint64_t iova,
                                                 uint64_t length) {
  if (pager_ == nullptr) return absl::FailedPreconditionError(name_ + ": not paged");
  AddressSpace* as =
      spaces_->Find(space.has_value() && *space != kNoPasidAttachment, space.value_or(0));
  if (as == nullptr) {
    return absl::NotFoundError(absl::StrCat(name_, ": no address space for ",
                                            space ? absl::StrCat("PASID ", *space) : "no PASID"));
  }
  if (length == 0 || iova + length < iova) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": evict: an empty or wrapping range"));
  }
  // Every byte of the range must lie in one of the space's regions.
  for (uint64_t at = iova; at < iova + length;) {
    Region* r = as->Find(at);
    if (r == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": evict: 0x", absl::Hex(at), " is outside every region of the ",
                       space ? absl::StrCat("PASID ", *space) : "no-PASID", " space"));
    }
    at = std::min(r->end(), iova + length);
  }
  Pager::EvictReport total;
  for (uint64_t at = iova; at < iova + length;) {
    Region* r = as->Find(at);
    const uint64_t end = std::min(r->end(), iova + length);
    Pager::EvictReport part =
        pager_->EvictUnits(*as->paging(), as->IndexOf(r), r->UnitOf(r->PageIndex(at)),
                           r->UnitOf(r->PageIndex(end - 1)), MonotonicNs());
    total.units += part.units;
    total.bytes += part.bytes;
    total.pinned += part.pinned;
    total.stuck += part.stuck;
    at = end;
  }
  return total;
}

void Device::RecordRecovered(const InflightLedger::Answered& answered) {
  stats_->recovered_answers += answered.accepted;
  stats_->recovered_already_answered += answered.rejected;
  stats_->recovered_groups += answered.groups;
}

void Device::RecordDrain(DrainEvent event, uint64_t epoch, bool mid_drain) {
  DeviceStats& s = *stats_;
  switch (event) {
    case DrainEvent::kTransition:
      ++s.drain_transitions;
      return;
    case DrainEvent::kFunctionReset:
      ++s.function_resets;
      return;
    case DrainEvent::kUnaccounted:
      ++s.drain_unaccounted;
      return;
    case DrainEvent::kQuarantine:
      ++s.quarantines;
      return;
    case DrainEvent::kCompleted:
      s.drain_epoch = epoch;
      if (mid_drain) ++s.drains;
      return;
  }
}

Device::~Device() {
  // Its mappings go with its IOAS (vfio mode) or stay with the owner's (adopt mode): either way
  // they leave the daemon's count.
  if (pager_ != nullptr) pager_->RemoveDevice(paged_);
  if (mode_ == AttachMode::kAdopt) {
    DestroyParkHwpts();
    StopDirtyTracking();
  }
}

void Device::UsePager(Pager* pager) {
  pager_ = pager;
  paged_ = pager->AddDevice(name_, config_.limits.max_resident, &stats_->paging, responses_.get());
  for (size_t i = 0; i < config_.spaces.size(); ++i) {
    const SpaceConfig& space = config_.spaces[i];
    PagedSpace* paged =
        pager->AddSpace(paged_, &spaces_->spaces()[i], mapper_.get(), space.max_resident);
    // The HWPT whose bits to read: the owner's (adopt mode, configured), or iopfd's own when it
    // was allocated with dirty tracking (vfio mode, SetUpVfio).
    std::optional<HwptId> hwpt;
    if (mode_ == AttachMode::kAdopt && space.WantsDirtyBits(mode_)) hwpt = HwptId(space.hwpt_id);
    if (mode_ == AttachMode::kVfio && i < dirty_capable_.size()) hwpt = dirty_capable_[i];
    if (!hwpt || !iommufd_) continue;
    if (pager->options().policy != EvictionPolicy::kWorkingset) {
      // Only the workingset policy reads them; turning tracking on would only clear the bits.
      Log(LogLevel::kInfo,
          absl::StrCat(paged->scope().name,
                       ": dirty bits unused with [paging] policy = \"fifo\"; tracking left off"),
          {{"DEVICE", name_}});
      continue;
    }
    // The dirty bits are advice for eviction: without them the device is served all the same.
    if (absl::Status st = iommufd_->SetDirtyTracking(*hwpt, true); !st.ok()) {
      Log(LogLevel::kWarning,
          absl::StrCat(st.message(), "; space.dirty_tracking: evicting without dirty bits"),
          {{"DEVICE", name_}});
      continue;
    }
    paged->set_dirty_hwpt(*hwpt);
    // iopfd's own HWPTs go with the device; the owner's get tracking turned off again.
    if (mode_ == AttachMode::kAdopt) dirty_hwpts_.push_back(*hwpt);
  }
  processor_->set_pager(pager);
}

void Device::StopDirtyTracking() {
  // The owner gets its HWPT back as it gave it: tracking off (iopfd turned it on).
  for (HwptId hwpt : dirty_hwpts_) {
    if (!iommufd_ || iommufd_->fd() < 0) break;
    if (absl::Status st = iommufd_->SetDirtyTracking(hwpt, false); !st.ok()) {
      Log(LogLevel::kWarning, std::string(st.message()), {{"DEVICE", name_}});
    }
  }
  dirty_hwpts_.clear();
}

void Device::ReleaseFds(ListenFds* pool) {
  // The iommufd and fault fd are inherited in adopt mode only; fd: backings in either mode.
  if (mode_ == AttachMode::kAdopt) {
    DestroyParkHwpts();  // while iopfd still holds the iommufd
    StopDirtyTracking();
    if (iommufd_ && iommufd_->fd() >= 0) pool->Add(config_.adopt.iommufd_fd, iommufd_->ReleaseFd());
    if (fault_fd_.valid()) pool->Add(config_.adopt.fault_fd, std::move(fault_fd_));
    if (attachments_.vfio() != nullptr && !config_.adopt.device_fd.empty()) {
      UniqueFd fd = attachments_.vfio()->ReleaseFd();
      if (fd.valid()) pool->Add(config_.adopt.device_fd, std::move(fd));
    }
  }
  // backings_ holds one entry per region, in configuration order.
  size_t i = 0;
  for (const SpaceConfig& s : config_.spaces) {
    for (const RegionConfig& r : s.regions) {
      if (i >= backings_.size()) return;
      Backing& b = backings_[i++];
      if (r.backing == BackingKind::kInheritedFd && b.fd() >= 0)
        pool->Add(r.fd_name, b.ReleaseFd());
    }
  }
}

std::vector<std::pair<std::string, int>> Device::HeldFds() const {
  std::vector<std::pair<std::string, int>> out;
  if (mode_ == AttachMode::kAdopt) {
    if (iommufd_ && iommufd_->fd() >= 0) out.emplace_back(config_.adopt.iommufd_fd, iommufd_->fd());
    if (fault_fd_.valid()) out.emplace_back(config_.adopt.fault_fd, fault_fd_.get());
    const VfioDevice* vfio = attachments_.vfio();
    if (vfio != nullptr && !config_.adopt.device_fd.empty() && vfio->fd() >= 0) {
      out.emplace_back(config_.adopt.device_fd, vfio->fd());
    }
  }
  size_t i = 0;
  for (const SpaceConfig& s : config_.spaces) {
    for (const RegionConfig& r : s.regions) {
      if (i >= backings_.size()) return out;
      const Backing& b = backings_[i++];
      if (r.backing == BackingKind::kInheritedFd && b.fd() >= 0)
        out.emplace_back(r.fd_name, b.fd());
    }
  }
  return out;
}

absl::Status Device::Park(std::optional<AttachmentKey> which) {
  if (can_park() && responses_->write_in_flight()) {
    return absl::FailedPreconditionError(name_ + ": cannot park with a response write in flight");
  }
  return attachments_.Park(which, [this](const Attachments::Attachment& a) {
    SetRefusing(a.pasid, true);
    // From here the kernel has answered this attachment's groups: what iopfd holds is stale.
    responses_->DropAttachment(a.key);
    // Groups of it waiting for room (pager.h) were answered by the kernel too.
    processor_->DismissDeferred(a.key, /*fd_dead=*/false);
    // And whatever is still being resolved for it (nothing, single-threaded as the loop is)
    // will never be written either: the epoch fence.
    responses_->Fence(a.key);
  });
}

absl::Status Device::Unpark(std::optional<AttachmentKey> which) {
  return attachments_.Unpark(which, [this](const Attachments::Attachment& a) {
    if (!quarantined_) SetRefusing(a.pasid, false);
  });
}

void Device::SetRefusing(std::optional<uint32_t> pasid, bool refusing) {
  for (AddressSpace& s : spaces_->spaces()) {
    if (s.pasid() == pasid) s.set_refusing(refusing);
  }
}

void Device::SetQuarantined(bool quarantined) {
  quarantined_ = quarantined;
  for (AddressSpace& s : spaces_->spaces()) {
    s.set_refusing(quarantined || attachments_.parked_pasid(s.pasid()));
  }
}

bool Device::parked(std::optional<AttachmentKey> which) const { return attachments_.parked(which); }

absl::Status Device::StopBusMaster() { return attachments_.StopBusMaster(); }

absl::Status Device::RestoreBusMaster() { return attachments_.RestoreBusMaster(); }

absl::Status Device::CheckBusMasterStillStopped() {
  return attachments_.CheckBusMasterStillStopped();
}

absl::Status Device::SetIrqEventfd(uint32_t index, int eventfd) {
  if (mode_ != AttachMode::kVfio || attachments_.vfio() == nullptr) {
    return absl::FailedPreconditionError(name_ +
                                         ": the device's interrupts are its owner's (adopt mode)");
  }
  return attachments_.vfio()->SetIrqEventfd(index, eventfd);
}

absl::Status Device::ResetFunction() { return attachments_.Reset(); }

}  // namespace iopfd
