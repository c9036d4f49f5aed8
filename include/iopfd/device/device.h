// A device iopfd serves: its fault queue, address spaces, backings and fault-path state.
#ifndef IOPFD_DEVICE_DEVICE_H_
#define IOPFD_DEVICE_DEVICE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/config/config.h"
#include "iopfd/device/attachments.h"
#include "iopfd/fault/address_space.h"
#include "iopfd/fault/fault_processor.h"
#include "iopfd/fault/fault_queue.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/fault/pager.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/fault/stats.h"
#include "iopfd/iommu/iommufd.h"
#include "iopfd/iommu/vfio_device.h"
#include "iopfd/service/listen_fds.h"

namespace iopfd {

// Memory behind one region: a shmem/hugetlbfs fd and a shared mapping of the region's part of
// it (for kernels without IOMMU_IOAS_MAP_FILE).
class Backing {
 public:
  Backing(UniqueFd fd, void* va, uint64_t length, Syscalls* sys)
      : fd_(std::move(fd)), va_(va), length_(length), sys_(sys) {}
  Backing(Backing&& o) noexcept
      : fd_(std::move(o.fd_)),
        va_(std::exchange(o.va_, nullptr)),
        length_(o.length_),
        sys_(o.sys_) {}
  Backing& operator=(Backing&&) = delete;
  Backing(const Backing&) = delete;
  ~Backing() {
    if (va_ != nullptr) sys_->Unmap(va_, length_);
  }
  int fd() const { return fd_.get(); }
  void* va() const { return va_; }
  // Gives up the fd (the mapping stays until destruction). Regions keep the number, so only
  // for a device that will process no more faults.
  UniqueFd ReleaseFd() { return std::move(fd_); }

 private:
  UniqueFd fd_;
  void* va_;
  uint64_t length_;
  Syscalls* sys_;
};

class Device {
 public:
  // Attaches a configured device. Adopt mode takes the iommufd and fault fd named in the config
  // from `fds`; vfio mode opens /dev/iommu, binds the cdev, allocates an IOAS, a fault queue and
  // an IOPF-capable HWPT per address space, and attaches them (per PASID where configured).
  // Errors name the device, the step and the errno. limits size the read buffer. On failure,
  // the fds taken from `fds` are put back.
  static absl::StatusOr<std::unique_ptr<Device>> Attach(const DeviceConfig& config, ListenFds* fds,
                                                        Syscalls* sys, ReadLimits limits);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device();

  const std::string& name() const { return name_; }
  AttachMode mode() const { return mode_; }
  // The configuration it was attached with.
  const DeviceConfig& config() const { return config_; }
  // Its DEVPATH as uevents name it ("/devices/pci0000:00/0000:00:04.0"), or "" when unknown:
  // from the configuration's sysfs key, else (vfio mode) the cdev's or PCI address's sysfs
  // device, resolved at attach.
  const std::string& devpath() const { return devpath_; }
  int fault_fd() const { return fault_fd_.get(); }
  FaultProcessor& processor() { return *processor_; }
  ResponseQueue& responses() { return *responses_; }
  // Keeps what the device maps within its budgets ([[space]] and [limits] max_resident) and
  // the daemon's, through `pager` (which must outlive the device), from now on: registers the
  // device and its spaces. Call once, before the first read.
  void UsePager(Pager* pager);

  // Changes a budget at run time: the device's (`space` nullopt) or one space's (its PASID, or
  // kNoPasidAttachment); `bytes` nullopt makes it unbounded. What is held beyond a lowered
  // budget is evicted at once. Returns NotFound (no such space), FailedPrecondition (the device
  // has no pager), InvalidArgument (smaller than the largest map unit the budget covers).
  absl::Status SetBudget(std::optional<AttachmentKey> space, std::optional<uint64_t> bytes);
  // Takes the budgets of `config` (which differs from config() at most in them): the device's
  // and each space's. Returns the first SetBudget error (the others are still applied).
  absl::Status ApplyBudgets(const DeviceConfig& config);
  // Unmaps what iopfd mapped in [iova, iova + length) of a space (a VMM ballooning or unplugging
  // guest memory) and forgets it; a unit the range cuts goes whole (an unmap cannot split one).
  // Units an unwritten answer relies on, and units not iopfd's to unmap, stay (reported).
  // Returns the report, or NotFound (no such space), InvalidArgument (an empty range, or one
  // not wholly inside the space's regions, named), FailedPrecondition (no pager).
  absl::StatusOr<Pager::EvictReport> Evict(std::optional<AttachmentKey> space, uint64_t iova,
                                           uint64_t length);

  // Its counters, read-only: the fault path (processor, response queue, fault queue) writes
  // them through the pointer it was built with, the drain controller through RecordDrain.
  const DeviceStats& stats() const { return *stats_; }
  // What the drain controller records. Counts the event in the drain counters; kCompleted also
  // sets drain_epoch to `epoch` (and counts a drain only when `mid_drain`).
  enum class DrainEvent { kTransition, kFunctionReset, kUnaccounted, kQuarantine, kCompleted };
  void RecordDrain(DrainEvent event, uint64_t epoch = 0, bool mid_drain = false);
  // What crash recovery answered for this device on a queue it no longer reads (a dead
  // process's, CrashRecovery::LedgerForConfigured): added to its recovered_* counters.
  void RecordRecovered(const InflightLedger::Answered& answered);
  SpaceTable& spaces() { return *spaces_; }

  // Its fault queue: reading, the read buffer, answering, and when the queue is given up.
  FaultQueue& queue() { return *queue_; }
  // The buffer reads land in (FaultQueue::read_buffer).
  std::span<uapi::PageFault> read_buffer() { return queue_->read_buffer(); }

  // Keeps what a crash would lose in `ledger` from now on (inflight_ledger.h): reads go to its
  // buffer and every owed answer is recorded. First answers what a previous process left in it:
  // its owed answers are written (synchronously; a rejection means the kernel had accepted it
  // already), groups it read and never resolved are resolved and queued. Call before the loop
  // reads the device. Returns an error naming the device when a recovered answer cannot be
  // written for another reason than EINVAL (that answer is given up; the error is logged).
  absl::Status UseLedger(std::unique_ptr<InflightLedger> ledger);
  // The ledger, or nullptr.
  const InflightLedger* ledger() const { return ledger_.get(); }

  // Adopt mode: the record of which units iopfd holds mapped in the owner's IOAS (map_record.h),
  // kept in the fd store with the device; nullptr in vfio mode (iopfd's own IOAS goes with the
  // device) or when it could not be made (logged).
  const MapRecord* map_record() const { return map_record_.get(); }
  // Takes the map record away from the device (its regions stop recording), for the device
  // that replaces it when a reload restarts it: the mappings stay, and so does the record of
  // them. nullptr when it has none.
  std::unique_ptr<MapRecord> ReleaseMapRecord();
  // The iommufd it was attached with (adopt mode: the owner's), or -1.
  int iommufd_fd() const { return iommufd_ ? iommufd_->fd() : -1; }
  // What TakeBackMappings did.
  struct TakenBack {
    uint64_t units = 0;     // recorded units resident again, counted against the budgets
    uint64_t bytes = 0;     // their bytes
    uint64_t remapped = 0;  // of those, found unmapped and mapped again (a stale record bit)
    uint64_t unmapped = 0;  // recorded units this layout has not (other bounds): unmapped
    // recorded units only partly mapped now: left (someone else's); also a recorded partial
    // unit when no IOAS could be allocated to check its pages with
    uint64_t partial = 0;
    uint64_t evicted = 0;  // units evicted at once to bring the budgets back
    uint64_t failed = 0;   // recorded units neither taken back nor unmapped (logged)
  };
  // Takes over what a previous process recorded in `previous` (its map record, from the fd
  // store): each unit it held that this layout has too (same place, unit, access and backing
  // file) is made resident again, after a map call that puts it back, or says something is
  // there (EEXIST) and an IOMMU_IOAS_COPY of it into a scratch IOAS that all of it is mapped;
  // one only partly mapped is left alone, unless it was recorded as held in part (a partial
  // unit: its pages still mapped, each found by a copy of its own, are taken back); each other
  // recorded unit is unmapped, exactly its range. Mappings nobody recorded are not touched. Then
  // evicts what the budgets no longer leave room for. With the same layout the device goes on
  // recording in `previous` (the file the store already keeps); otherwise in its own (the caller
  // stores that one instead). Call after UsePager and before the first read. Returns what it did
  // (logged when anything).
  TakenBack TakeBackMappings(std::unique_ptr<MapRecord> previous);

  // Reads the fault queue until it is empty (or deadline_ns passes), synchronously
  // (FaultQueue::ReadAvailable). Returns a transient read error naming the device and errno.
  absl::Status ReadAvailable(uint64_t deadline_ns) { return queue_->ReadAvailable(deadline_ns); }
  // Writes every queued response synchronously (FaultQueue::WriteQueued). Returns the error of
  // a write that gave the queue up, naming device and errno.
  absl::Status WriteQueued() { return queue_->WriteQueued(); }
  // True once reading (or writing: then both) was given up (FaultQueue).
  bool read_failed() const { return queue_->read_failed(); }
  bool write_failed() const { return queue_->write_failed(); }
  // --- Draining.
  // Returns true when the device can be parked: each attachment has a fault-less "park" HWPT
  // over the same IOAS next to its IOPF-capable one, and iopfd can switch between them: vfio
  // mode, or adopt mode with adopt.device_fd or adopt.switch_module.
  bool can_park() const { return attachments_.can_switch(); }
  // Returns true when ResetFunction can work (iopfd holds the VFIO device fd, or the switch
  // module exports a reset).
  bool can_reset() const { return attachments_.can_reset(); }
  // Parks `which` attachment (every one when nullopt): replaces its IOPF-capable HWPT by its
  // park HWPT. The kernel then answers INVALID to every group of it, queued or read
  // (docs/KERNEL_FACTS.md section 2), so the answers iopfd still holds for it are dropped
  // unwritten (stats.responses_stale_dropped): their cookies may name new groups. Must not be
  // called with a response write in flight. Errors: FailedPrecondition (adopt mode, or a write
  // in flight), NotFound (no such attachment), the ioctl's error naming device, PASID and
  // errno; attachments parked before the error stay parked.
  absl::Status Park(std::optional<AttachmentKey> which);
  // Puts the IOPF-capable HWPT back on `which` (every parked one when nullopt).
  absl::Status Unpark(std::optional<AttachmentKey> which);
  // Returns true when the attachment (or, for nullopt, any) is parked.
  bool parked(std::optional<AttachmentKey> which) const;
  // Returns true when iopfd can clear the device's Bus Master Enable (it holds the VFIO fd).
  bool can_stop_bus_master() const { return attachments_.vfio() != nullptr; }
  // Clears Bus Master Enable through the VFIO config region, remembering that iopfd did (only
  // then does RestoreBusMaster set it again: a function whose owner left it clear, as vfio-pci
  // does at open, never gets bus mastering from iopfd). FailedPrecondition without the VFIO
  // fd, else the step's error.
  absl::Status StopBusMaster();
  // Sets Bus Master Enable again if StopBusMaster cleared it; OK and nothing done otherwise.
  // Errors as StopBusMaster's (iopfd still counts the bit as its own to restore).
  absl::Status RestoreBusMaster();
  // Returns true while Bus Master Enable is clear because iopfd cleared it.
  bool bus_master_stopped() const { return attachments_.bus_master_stopped(); }
  // OK when Bus Master Enable is still clear after StopBusMaster; FailedPrecondition naming
  // the device when something (the owner, a guest) set it again meanwhile; else the read's
  // error.
  absl::Status CheckBusMasterStillStopped();
  // vfio mode: has the device signal `eventfd` on its VFIO interrupt `index` (the ERR or REQ
  // index). FailedPrecondition in adopt mode (the owner holds the device's interrupts), else
  // the ioctl's error.
  absl::Status SetIrqEventfd(uint32_t index, int eventfd);
  // VFIO_DEVICE_RESET (or the switch module's reset). FailedPrecondition when !can_reset().
  absl::Status ResetFunction();
  // While quarantined, every request is answered INVALID (reason refused) and nothing is
  // mapped; parked spaces refuse requests too (InvalidReason::kRefused).
  void SetQuarantined(bool quarantined);
  bool quarantined() const { return quarantined_; }
  // The attachments' keys (when it can park), in configuration order.
  std::vector<AttachmentKey> attachment_keys() const { return attachments_.keys(); }

  // Hands the inherited fds back into `pool` under the names the configuration gave them, so
  // that a later attach can take them again: the iommufd and fault queue in adopt mode, fd:
  // backings in either mode (vfio mode's own fds close with the device). Only for a device no
  // loop serves any more: it cannot process faults afterwards.
  void ReleaseFds(ListenFds* pool);
  // Returns the inherited fds the device holds, under the names its configuration gives them
  // (the ones ReleaseFds would hand back), in the order ReleaseFds hands them back. The device
  // keeps them.
  std::vector<std::pair<std::string, int>> HeldFds() const;

 private:
  absl::Status Setup(ListenFds* fds, Syscalls* sys, ReadLimits limits);
  // Setup's steps. Adopt mode: the owner's iommufd and fault queue from fds, and what parks
  // its attachments (the VFIO device fd, or a switch module). Vfio mode: iommufd opened, the
  // device bound, an IOAS and a faulting HWPT per space attached. Each sets *dev_id and the
  // spaces' IOAS ids.
  absl::Status SetUpAdopt(ListenFds* fds, DeviceId* dev_id, std::vector<IoasId>* ioas);
  // True when a space has a PASID: every HWPT of the device must then be PASID-capable.
  static bool UsesPasid(const DeviceConfig& config);
  absl::Status SetUpVfio(DeviceId* dev_id, std::vector<IoasId>* ioas);
  // The uevent DEVPATH that names this device (removal, error recovery), when it has one.
  void FindDevpath();
  // The backings mapped, the address spaces, the counters, the response queue, the mapper and
  // the fault processor.
  absl::Status SetUpFaultPath(ListenFds* fds, DeviceId dev_id, const std::vector<IoasId>& ioas,
                              ReadLimits limits);
  // Adopt mode: makes the map record for the spaces' layout and has every region record in it
  // (a failure is logged: the device is served without one).
  void SetUpMapRecord();
  // Has every region record in `record`, by its index in the layout.
  void AttachMapRecord(MapRecord* record);
  // After a take-back: evicts what each budget (the spaces', the device's, the daemon's) no
  // longer has room for. Returns the units evicted.
  uint64_t BackUnderBudgets(uint64_t now);
  // The layout of the spaces' regions, in the order the map record indexes them.
  std::vector<RecordedRegion> Layout() const;
  explicit Device(const DeviceConfig& config)
      : name_(config.name), mode_(config.mode), config_(config) {}

  std::string name_;
  AttachMode mode_;
  DeviceConfig config_;
  std::string devpath_;
  Syscalls* sys_ = nullptr;
  // Declaration order is teardown order reversed: the processor goes first, the iommufd last,
  // so nothing refers to an fd or mapping that is already gone.
  std::optional<Iommufd> iommufd_;
  std::vector<HwptId> dirty_hwpts_;  // the owner's HWPTs whose dirty tracking iopfd turned on
  // Vfio mode, per space: iopfd's HWPT when it was allocated with dirty tracking.
  std::vector<std::optional<HwptId>> dirty_capable_;
  // The VFIO device (vfio mode, or adopt mode with adopt.device_fd) or switch module, and the
  // attachments with their park HWPTs.
  Attachments attachments_{name_};
  UniqueFd fault_fd_;
  std::vector<Backing> backings_;
  // Before the queue and the processor, which record in it: it goes after them.
  std::unique_ptr<InflightLedger> ledger_;
  // Before the spaces, whose regions record in it: it goes after them.
  std::unique_ptr<MapRecord> map_record_;
  std::unique_ptr<SpaceTable> spaces_;
  std::unique_ptr<DeviceStats> stats_;
  Pager* pager_ = nullptr;        // UsePager
  PagedDevice* paged_ = nullptr;  // its registration there
  std::unique_ptr<ResponseQueue> responses_;
  std::unique_ptr<IommufdMapper> mapper_;
  std::unique_ptr<FaultProcessor> processor_;
  std::unique_ptr<FaultQueue> queue_;  // refers to the four above: goes first
  // Adopt mode: gives the attachments back as the owner handed them over and destroys the
  // park HWPTs iopfd allocated in the owner's iommufd (its own objects would otherwise outlive
  // the device there). One still attached is left, logged.
  void DestroyParkHwpts();
  // Turns off the dirty tracking UsePager turned on (space.dirty_tracking), while iopfd still
  // holds the iommufd; failures are logged.
  void StopDirtyTracking();
  void SetRefusing(std::optional<uint32_t> pasid, bool refusing);
  bool quarantined_ = false;
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_DEVICE_H_
