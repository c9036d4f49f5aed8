// A simulated kernel behind iopfd's syscall seam: /dev/iommu with IOAS, HWPT and fault-queue
// objects, one VFIO device cdev bound to it, and the simulated PRI function (PriDevice) behind
// that device. It follows the Linux 7.3 rules iopfd depends on (drivers/iommu/iommufd/eventq.c,
// drivers/iommu/io-pgfault.c, shared/BRIEF.md):
//   - page requests assemble per PRG index until the last one, then the group is queued to the
//     fault queue of the HWPT attached to the device (and PASID); with no IOPF-capable HWPT
//     there, the group is answered INVALID at once;
//   - read() returns whole groups (EINVAL when the first does not fit), giving each a cookie;
//   - write() takes {cookie, code} responses and stops at the first unknown cookie (bytes done,
//     or EINVAL when it was the first);
//   - cookies are allocated lowest-free-first (xa_alloc), so a freed cookie names the next
//     group read;
//   - replacing or detaching an IOPF-capable HWPT answers INVALID to every group of that
//     attachment, queued or read; partial groups are kept (per device, matched by PRG index);
//   - PRI Enable follows the platform: on Intel it is set when the device is probed and stays
//     set; on AMD it follows whether the RID's domain takes page requests;
//   - VFIO_DEVICE_RESET resets the function (it forgets its tags), answers nothing, and restores
//     PRI Enable as the kernel had it.
// See docs/KERNEL_FACTS.md for where each rule is in the 7.3 source. The simulation also checks
// what the kernel cannot: a SUCCESS answer for a page that is not mapped (a misdirected answer,
// for example a stale cookie that now names another group).
// Descriptors are real (pipes), so the code under test can own and close them; reads and writes
// of the fault fd go through Read and Write.
#ifndef IOPFD_TESTS_SIM_SIM_KERNEL_H_
#define IOPFD_TESTS_SIM_SIM_KERNEL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "iopfd/base/syscalls.h"
#include "iopfd/base/uapi.h"
#include "iopfd/config/config.h"
#include "iopfd/device/device.h"
#include "pri_device.h"

namespace iopfd::sim {

class SimKernel : public Syscalls {
 public:
  // The VFIO cdev of the simulated function.
  static constexpr const char* kCdev = "/dev/vfio/devices/vfio0";

  // How the IOMMU driver handles PRI Enable (docs/KERNEL_FACTS.md section 3).
  enum class PriPolicy { kIntel, kAmd };

  explicit SimKernel(PriDevice* device, PriPolicy policy = PriPolicy::kIntel);
  ~SimKernel() override;
  SimKernel(const SimKernel&) = delete;
  SimKernel& operator=(const SimKernel&) = delete;

  // Syscalls.
  int Ioctl(int fd, unsigned long request, void* arg) override;
  int Open(const char* path, int flags) override;
  int MemfdCreate(const char* name, uint64_t size) override;
  void* MapShared(int fd, uint64_t offset, uint64_t length, bool writable) override;
  void Unmap(void* addr, uint64_t length) override;
  ssize_t Read(int fd, void* buf, size_t len) override;
  ssize_t Write(int fd, const void* buf, size_t len) override;
  // kSwitchModule is a module that switches attachments (and resets the function) the way an
  // owner without a VFIO fd would (here: through the simulated device); kSwitchModuleNoReset
  // switches only; any other path fails as dlopen would.
  SwitchModule LoadSwitchModule(const std::string& path, std::string* error) override;
  // The VFIO device's config region: only the command register is modelled. Clearing Bus
  // Master Enable halts the function's DMA (PriDevice::HaltDma); setting it resumes it.
  ssize_t Pread(int fd, void* buf, size_t len, uint64_t offset) override;
  ssize_t Pwrite(int fd, const void* buf, size_t len, uint64_t offset) override;
  static constexpr uint64_t kConfigRegionOffset = 7ull << 40;
  // Runs before Bus Master Enable is cleared: lets a test post the requests the function
  // issued before its DMA stopped (as before_ioctl does for a reset).
  std::function<void()> before_bus_master_clear;
  uint16_t pci_command() const { return pci_command_; }
  // A write of the command register by someone else (the owner, a guest): DMA follows BME.
  void WriteCommandAsOwner(uint16_t value);
  // Non-zero: reads and writes of the config region fail with this errno.
  int fail_config_access = 0;
  static constexpr const char* kSwitchModule = "/usr/lib/sim/switch.so";
  static constexpr const char* kSwitchModuleNoReset = "/usr/lib/sim/switch-noreset.so";
  // Calls of the switch module so far.
  int switch_calls() const { return switch_calls_; }
  // Function level resets so far (VFIO_DEVICE_RESET that reached the function).
  int resets() const { return resets_; }

  // Sets the device up as its owner (a VMM) would for adopt mode: opens /dev/iommu, binds the
  // VFIO device, allocates an IOAS, a fault queue and an IOPF-capable HWPT per entry of
  // `pasids` and attaches them. Returns the device configuration (adopt mode, the same regions
  // as SimVfioDevice) and puts the iommufd, fault fd and, when `with_device_fd`, the VFIO fd
  // into *fds under the names it uses; otherwise it names kSwitchModule.
  DeviceConfig SetUpAsOwner(const std::string& name,
                            const std::vector<std::optional<uint32_t>>& pasids, uint64_t size,
                            bool with_device_fd, ListenFds* fds);

  // Runs before every ioctl with its request number: lets a test make the function act between
  // the steps of the code under test (a device whose DMA is still running, say).
  std::function<void(unsigned long request)> before_ioctl;
  // Runs next: a non-zero errno fails the ioctl with it (a kernel refusing a step).
  std::function<int(unsigned long request)> fail_ioctl;
  // Runs after every ioctl with its request number and result: lets a test act right after a
  // step (a late page request right after a replace, say).
  std::function<void(unsigned long request, int rc)> after_ioctl;

  // Queues one complete group on the fault queue of `hwpt`, whatever is attached now: a page
  // request the IOMMU driver's PRQ handler matched to that HWPT's attach handle before a
  // replace and hands over after the replace's auto-response. The window is real in 7.3: the
  // handle is looked up in find_fault_handler (io-pgfault.c) and the group added to the fault's
  // deliver list later, by iommufd_fault_iopf_handler, while iommufd_auto_response_faults
  // answers only what is on the list when it runs (docs/KERNEL_FACTS.md section 2). Such a group
  // is read from the fault queue like any other. Without a fault queue on hwpt the requests are
  // delivered as DeliverRequests does.
  void DeliverLate(const std::vector<PageRequest>& requests, uint32_t hwpt);

  // The function sends its requests (from PriDevice::IssueGroup) to the IOMMU.
  void DeliverRequests(const std::vector<PageRequest>& requests);

  // Returns the number of groups queued (not yet read) on the fault queue of fault_fd.
  size_t Queued(int fault_fd) const;
  // Returns the number of groups read and not yet answered, over all fault queues.
  size_t ReadAndUnanswered() const;
  // Counters: responses the kernel itself gave (no handler, replace, detach), and responses
  // written by user space that it refused (unknown cookie).
  uint64_t auto_responses() const { return auto_responses_; }
  uint64_t refused_responses() const { return refused_responses_; }
  // SUCCESS answers for a request whose page was not mapped in its attachment's IOAS.
  const std::vector<std::string>& violations() const { return violations_; }
  // The handles and ids a test needs to act as the daemon would.
  int iommufd() const { return iommufd_; }
  int vfio_fd() const { return vfio_fd_; }
  uint32_t dev_id() const { return dev_id_; }
  // The IOAS of a HWPT, 0 when there is no such HWPT.
  uint32_t IoasOf(uint32_t hwpt) const {
    auto it = hwpts_.find(hwpt);
    return it == hwpts_.end() ? 0 : it->second.ioas;
  }
  // The HWPT attached for pasid (nullopt: the no-PASID attachment), 0 when none.
  uint32_t AttachedHwpt(std::optional<uint32_t> pasid) const;
  // The eventfd VFIO_DEVICE_SET_IRQS set for an interrupt index, or -1.
  int IrqEventfd(uint32_t index) const {
    auto it = irq_eventfds_.find(index);
    return it == irq_eventfds_.end() ? -1 : it->second;
  }
  // The number of HWPTs that exist.
  size_t hwpt_count() const { return hwpts_.size(); }
  // Mappings made through IOMMU_IOAS_MAP(_FILE), as (ioas, iova) -> length.
  const std::map<std::pair<uint32_t, uint64_t>, uint64_t>& mappings() const { return mappings_; }
  // Bytes mapped (and so pinned) in `ioas` now.
  uint64_t MappedBytes(uint32_t ioas) const {
    uint64_t total = 0;
    for (const auto& [key, len] : mappings_) total += key.first == ioas ? len : 0;
    return total;
  }
  // The IOMMU's capabilities IOMMU_GET_HW_INFO reports (uapi::kHwCapDirtyTracking: HWPTs may
  // have dirty bits). None by default.
  uint64_t hw_capabilities = 0;
  // The function writes the page at `iova` of `ioas`: every HWPT over that IOAS tracking dirty
  // bits marks it (when it is mapped).
  void DeviceWrites(uint32_t ioas, uint64_t iova);
  // IOMMU_HWPT_GET_DIRTY_BITMAP calls that read bits.
  uint64_t dirty_reads() const { return dirty_reads_; }
  // IOMMU_IOAS_UNMAP calls that succeeded, and those refused because they cut a mapping.
  uint64_t unmap_calls() const { return unmap_calls_; }
  // IOMMU_IOAS_COPY calls that succeeded.
  uint64_t copies() const { return copies_; }
  // Called with every IOMMU_IOAS_UNMAP's IOAS, IOVA and length before it is carried out.
  std::function<void(uint32_t ioas, uint64_t iova, uint64_t length)> on_unmap;
  uint64_t unmap_splits_refused() const { return unmap_splits_refused_; }

 private:
  // The ioctls themselves (Ioctl runs the hooks around them).
  int DoIoctl(int fd, unsigned long request, void* arg);
  struct Group {
    std::vector<PageRequest> requests;
    std::optional<uint32_t> pasid;  // the attachment it belongs to
    uint32_t hwpt = 0;
  };
  struct FaultQueue {
    int fd = -1;
    std::deque<Group> queued;
    std::map<uint32_t, Group> read;  // cookie -> group
  };
  struct Hwpt {
    uint32_t ioas = 0;
    uint32_t fault = 0;          // fault object id; 0: no page requests (a "park" HWPT)
    bool dirty_capable = false;  // allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING
    bool tracking = false;       // IOMMU_HWPT_SET_DIRTY_TRACKING on
    std::set<uint64_t> written;  // pages written since their bits were last read
  };
  // Whether a mapping of `ioas` covers `iova`.
  bool Covered(uint32_t ioas, uint64_t iova) const;

  int NewFd();
  FaultQueue* QueueByFd(int fd);
  FaultQueue* QueueById(uint32_t id);
  // Answers a group to the function.
  void Answer(const Group& g, ResponseCode code);
  // The attachment of pasid changes from its current HWPT to `hwpt` (0: detached).
  void Reattach(std::optional<uint32_t> pasid, uint32_t hwpt);
  void UpdatePriEnable();

  PriDevice* device_;
  PriPolicy policy_;
  std::vector<std::string> violations_;
  std::set<int> fds_;       // every fd handed out (the read ends of pipes)
  std::vector<int> spare_;  // the write ends, closed at destruction
  int iommufd_ = -1, vfio_fd_ = -1;
  bool bound_ = false;
  uint32_t next_id_ = 1;
  uint64_t dirty_reads_ = 0;
  uint32_t dev_id_ = 0;
  std::set<uint32_t> ioas_;
  std::map<uint32_t, Hwpt> hwpts_;
  std::map<uint32_t, FaultQueue> faults_;                 // fault object id -> queue
  std::map<std::optional<uint32_t>, uint32_t> attached_;  // pasid -> HWPT
  // Requests of unfinished groups, by PRG index (io-pgfault.c keeps a partial list).
  std::map<uint32_t, std::vector<PageRequest>> partial_;
  std::map<std::pair<uint32_t, uint64_t>, uint64_t> mappings_;
  uint64_t unmap_calls_ = 0;
  uint64_t copies_ = 0;
  uint64_t unmap_splits_refused_ = 0;
  uint64_t auto_responses_ = 0, refused_responses_ = 0;
  int switch_calls_ = 0;
  int resets_ = 0;
  std::map<uint32_t, int> irq_eventfds_;
  uint16_t pci_command_ = 0x0006;  // memory space and bus master enabled
  static int SwitchModuleEntry(const iopfd_switch_request* req);
  static int ResetModuleEntry(const iopfd_switch_request* req);
};

// Returns the configuration of a vfio-mode device on SimKernel's cdev: one rw anonymous region
// of `size` bytes at IOVA 1 MiB in each address space, one space per entry of `pasids`
// (nullopt: the space without a PASID).
DeviceConfig SimVfioDevice(const std::string& name,
                           const std::vector<std::optional<uint32_t>>& pasids, uint64_t size);

}  // namespace iopfd::sim

#endif  // IOPFD_TESTS_SIM_SIM_KERNEL_H_
