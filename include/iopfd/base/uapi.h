// The subset of the Linux iommufd and VFIO cdev user ABI that iopfd uses.
//
// Debian 12's linux-libc-dev (6.1) predates the iommufd fault queue, so iopfd defines the
// structures itself from the ABI documented in include/uapi/linux/iommufd.h and
// include/uapi/linux/vfio.h of Linux 7.3. The layouts are frozen ABI: every struct has its size
// and field offsets pinned by static_assert here, and lib/base/uapi_abi_test.cc compares them,
// and the ioctl numbers, against the newer kernel's own header at test time.
#ifndef IOPFD_BASE_UAPI_H_
#define IOPFD_BASE_UAPI_H_

#include <linux/ioctl.h>

#include <cstddef>
#include <cstdint>

namespace iopfd::uapi {

// Both iommufd and VFIO use ';' as their ioctl type.
inline constexpr unsigned kIommufdType = ';';
inline constexpr unsigned kIommufdCmdBase = 0x80;
inline constexpr unsigned kVfioBase = 100;

// PASID 0 is reserved by the kernel for DMA without a PASID (IOMMU_NO_PASID).
inline constexpr uint32_t kNoPasid = 0;

struct IommuDestroy {
  uint32_t size;
  uint32_t id;
};

struct IommuIoasAlloc {
  uint32_t size;
  uint32_t flags;
  uint32_t out_ioas_id;
};

enum IoasMapFlags : uint32_t {
  kIoasMapFixedIova = 1u << 0,
  kIoasMapWriteable = 1u << 1,
  kIoasMapReadable = 1u << 2,
};

struct IommuIoasMap {
  uint32_t size;
  uint32_t flags;
  uint32_t ioas_id;
  uint32_t reserved;
  alignas(8) uint64_t user_va;
  alignas(8) uint64_t length;
  alignas(8) uint64_t iova;
};

struct IommuIoasMapFile {
  uint32_t size;
  uint32_t flags;
  uint32_t ioas_id;
  int32_t fd;
  alignas(8) uint64_t start;
  alignas(8) uint64_t length;
  alignas(8) uint64_t iova;
};

struct IommuIoasUnmap {
  uint32_t size;
  uint32_t ioas_id;
  alignas(8) uint64_t iova;
  alignas(8) uint64_t length;
};

// IOMMU_IOAS_COPY: maps into dst what src has mapped over [src_iova, src_iova + length), which
// must be mapped without a hole (ENOENT otherwise). flags as IOMMU_IOAS_MAP's.
struct IommuIoasCopy {
  uint32_t size;
  uint32_t flags;
  uint32_t dst_ioas_id;
  uint32_t src_ioas_id;
  alignas(8) uint64_t length;
  alignas(8) uint64_t dst_iova;
  alignas(8) uint64_t src_iova;
};

enum HwptAllocFlags : uint32_t {
  kHwptAllocNestParent = 1u << 0,
  kHwptAllocDirtyTracking = 1u << 1,
  kHwptFaultIdValid = 1u << 2,
  kHwptAllocPasid = 1u << 3,
};

struct IommuHwptAlloc {
  uint32_t size;
  uint32_t flags;
  uint32_t dev_id;
  uint32_t pt_id;
  uint32_t out_hwpt_id;
  uint32_t reserved;
  uint32_t data_type;
  uint32_t data_len;
  alignas(8) uint64_t data_uptr;
  uint32_t fault_id;
  uint32_t reserved2;
};

// IOMMU_GET_HW_INFO: what the IOMMU behind a bound device can do. iopfd reads only
// out_capabilities (data_len 0: no driver-specific data is copied); kHwCapDirtyTracking says a
// HWPT may be allocated with kHwptAllocDirtyTracking
// (device_iommu_capable(IOMMU_CAP_DIRTY_TRACKING)).
inline constexpr uint64_t kHwCapDirtyTracking = 1ull << 0;
struct IommuHwInfo {
  uint32_t size;
  uint32_t flags;
  uint32_t dev_id;
  uint32_t data_len;
  alignas(8) uint64_t data_uptr;
  uint32_t out_data_type;
  uint8_t out_max_pasid_log2;
  uint8_t reserved[3];
  alignas(8) uint64_t out_capabilities;
};

// IOMMU_HWPT_SET_DIRTY_TRACKING: starts (flags = kDirtyTrackingEnable) or stops the IOMMU's
// dirty bits on a paging HWPT allocated with kHwptAllocDirtyTracking (EOPNOTSUPP otherwise).
inline constexpr uint32_t kDirtyTrackingEnable = 1;
struct IommuHwptSetDirtyTracking {
  uint32_t size;
  uint32_t flags;
  uint32_t hwpt_id;
  uint32_t reserved;
};

// IOMMU_HWPT_GET_DIRTY_BITMAP: sets bit i of `data` (64-bit words, bit i % 64 of word i / 64)
// when the page_size page at iova + i * page_size was written, and clears the IOPTEs' dirty
// bits unless kGetDirtyNoClear. The walk stops at the first hole in the mappings of
// [iova, iova + length) and the call still returns 0 (Linux 7.3 drops iova_bitmap_for_each's
// result): bits past a hole are neither reported nor cleared.
inline constexpr uint32_t kGetDirtyNoClear = 1;
struct IommuHwptGetDirtyBitmap {
  uint32_t size;
  uint32_t hwpt_id;
  uint32_t flags;
  uint32_t reserved;
  alignas(8) uint64_t iova;
  alignas(8) uint64_t length;
  alignas(8) uint64_t page_size;
  alignas(8) uint64_t data;
};

struct IommuFaultAlloc {
  uint32_t size;
  uint32_t flags;
  uint32_t out_fault_id;
  uint32_t out_fault_fd;
};

enum PgfaultFlags : uint32_t {
  kPgfaultPasidValid = 1u << 0,
  kPgfaultLastPage = 1u << 1,
};

enum PgfaultPerm : uint32_t {
  kPermRead = 1u << 0,
  kPermWrite = 1u << 1,
  kPermExec = 1u << 2,
  kPermPriv = 1u << 3,
};

// One page request as read from a fault fd (struct iommu_hwpt_pgfault). read() returns whole
// groups of these; every record of a group carries the group's cookie.
struct PageFault {
  uint32_t flags;
  uint32_t dev_id;
  uint32_t pasid;
  uint32_t grpid;
  uint32_t perm;
  uint32_t reserved;
  alignas(8) uint64_t addr;
  uint32_t length;
  uint32_t cookie;
};

enum PageResponseCode : uint32_t {
  kRespSuccess = 0,
  kRespInvalid = 1,
};

// One response as written to a fault fd (struct iommu_hwpt_page_response).
struct PageResponse {
  uint32_t cookie;
  uint32_t code;
};

// VFIO cdev binding (struct vfio_device_bind_iommufd).
struct VfioDeviceBindIommufd {
  uint32_t argsz;
  uint32_t flags;
  int32_t iommufd;
  uint32_t out_devid;
  alignas(8) uint64_t token_uuid_ptr;
};

inline constexpr uint32_t kVfioDeviceAttachPasid = 1u << 0;

// struct vfio_device_attach_iommufd_pt
struct VfioDeviceAttachIommufdPt {
  uint32_t argsz;
  uint32_t flags;
  uint32_t pt_id;
  uint32_t pasid;
};

// struct vfio_region_info (without capabilities).
struct VfioRegionInfo {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t cap_offset;
  uint64_t size;
  uint64_t offset;  // of the region within the device fd (pread/pwrite)
};
inline constexpr uint32_t kVfioPciConfigRegionIndex = 7;
// PCI config space: the command register and its Bus Master Enable bit (pci_regs.h).
inline constexpr uint64_t kPciCommand = 0x04;
inline constexpr uint16_t kPciCommandMaster = 0x4;

// struct vfio_irq_set with one eventfd as its data (VFIO_IRQ_SET_DATA_EVENTFD, count 1).
struct VfioIrqSetEventfd {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t start;
  uint32_t count;
  int32_t eventfd;  // data[]: -1 tears the trigger down
};
inline constexpr uint32_t kVfioIrqSetDataEventfd = 1u << 2;
inline constexpr uint32_t kVfioIrqSetActionTrigger = 1u << 5;
// enum { VFIO_PCI_INTX_IRQ_INDEX, MSI, MSIX, ERR, REQ, ... }
inline constexpr uint32_t kVfioPciErrIrqIndex = 3;  // AER: error_detected signals it
inline constexpr uint32_t kVfioPciReqIrqIndex = 4;  // the kernel asks for the device back

// struct vfio_device_detach_iommufd_pt
struct VfioDeviceDetachIommufdPt {
  uint32_t argsz;
  uint32_t flags;
  uint32_t pasid;
};

// The ioctl numbers carry no size (the kernel's _IO form): iommufd and VFIO cdev ioctls pass
// the structure size in its first field instead.
inline constexpr unsigned long kIommuDestroy = _IO(kIommufdType, kIommufdCmdBase + 0x00);
inline constexpr unsigned long kIommuIoasAlloc = _IO(kIommufdType, kIommufdCmdBase + 0x01);
inline constexpr unsigned long kIommuIoasCopy = _IO(kIommufdType, kIommufdCmdBase + 0x03);
inline constexpr unsigned long kIommuIoasMap = _IO(kIommufdType, kIommufdCmdBase + 0x05);
inline constexpr unsigned long kIommuIoasUnmap = _IO(kIommufdType, kIommufdCmdBase + 0x06);
inline constexpr unsigned long kIommuHwptAlloc = _IO(kIommufdType, kIommufdCmdBase + 0x09);
inline constexpr unsigned long kIommuFaultQueueAlloc = _IO(kIommufdType, kIommufdCmdBase + 0x0e);
inline constexpr unsigned long kIommuIoasMapFile = _IO(kIommufdType, kIommufdCmdBase + 0x0f);
inline constexpr unsigned long kIommuGetHwInfo = _IO(kIommufdType, kIommufdCmdBase + 0x0a);
inline constexpr unsigned long kIommuHwptSetDirtyTracking =
    _IO(kIommufdType, kIommufdCmdBase + 0x0b);
inline constexpr unsigned long kIommuHwptGetDirtyBitmap = _IO(kIommufdType, kIommufdCmdBase + 0x0c);
inline constexpr unsigned long kVfioDeviceBindIommufd = _IO(kIommufdType, kVfioBase + 18);
inline constexpr unsigned long kVfioDeviceAttachIommufdPt = _IO(kIommufdType, kVfioBase + 19);
inline constexpr unsigned long kVfioDeviceDetachIommufdPt = _IO(kIommufdType, kVfioBase + 20);
inline constexpr unsigned long kVfioDeviceGetRegionInfo = _IO(kIommufdType, kVfioBase + 8);
inline constexpr unsigned long kVfioDeviceSetIrqs = _IO(kIommufdType, kVfioBase + 10);
// VFIO_DEVICE_RESET: a function level (or other device-specific) reset; no argument.
inline constexpr unsigned long kVfioDeviceReset = _IO(kIommufdType, kVfioBase + 11);

static_assert(sizeof(IommuDestroy) == 8);
static_assert(sizeof(IommuIoasAlloc) == 12);
static_assert(sizeof(IommuIoasMap) == 40 && offsetof(IommuIoasMap, user_va) == 16 &&
              offsetof(IommuIoasMap, length) == 24 && offsetof(IommuIoasMap, iova) == 32);
static_assert(sizeof(IommuIoasMapFile) == 40 && offsetof(IommuIoasMapFile, fd) == 12 &&
              offsetof(IommuIoasMapFile, start) == 16 && offsetof(IommuIoasMapFile, iova) == 32);
static_assert(sizeof(IommuIoasUnmap) == 24 && offsetof(IommuIoasUnmap, iova) == 8);
static_assert(sizeof(IommuIoasCopy) == 40 && offsetof(IommuIoasCopy, length) == 16 &&
              offsetof(IommuIoasCopy, src_iova) == 32);
static_assert(sizeof(IommuHwptAlloc) == 48 && offsetof(IommuHwptAlloc, out_hwpt_id) == 16 &&
              offsetof(IommuHwptAlloc, data_uptr) == 32 &&
              offsetof(IommuHwptAlloc, fault_id) == 40);
static_assert(sizeof(IommuHwInfo) == 40 && offsetof(IommuHwInfo, out_data_type) == 24 &&
              offsetof(IommuHwInfo, out_capabilities) == 32);
static_assert(sizeof(IommuHwptSetDirtyTracking) == 16);
static_assert(sizeof(IommuHwptGetDirtyBitmap) == 48 &&
              offsetof(IommuHwptGetDirtyBitmap, iova) == 16 &&
              offsetof(IommuHwptGetDirtyBitmap, data) == 40);
static_assert(sizeof(IommuFaultAlloc) == 16 && offsetof(IommuFaultAlloc, out_fault_fd) == 12);
// 40 bytes: shared/BRIEF.md says 48, but Linux 7.3 has six u32, one u64 and two u32.
static_assert(sizeof(PageFault) == 40 && offsetof(PageFault, addr) == 24 &&
              offsetof(PageFault, length) == 32 && offsetof(PageFault, cookie) == 36);
static_assert(sizeof(PageResponse) == 8);
static_assert(sizeof(VfioDeviceBindIommufd) == 24 &&
              offsetof(VfioDeviceBindIommufd, out_devid) == 12);
static_assert(sizeof(VfioDeviceAttachIommufdPt) == 16);
static_assert(sizeof(VfioDeviceDetachIommufdPt) == 12);
static_assert(sizeof(VfioRegionInfo) == 32 && offsetof(VfioRegionInfo, offset) == 24);
static_assert(sizeof(VfioIrqSetEventfd) == 24 && offsetof(VfioIrqSetEventfd, eventfd) == 20);

}  // namespace iopfd::uapi

#endif  // IOPFD_BASE_UAPI_H_
