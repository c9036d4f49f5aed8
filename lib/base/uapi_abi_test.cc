// Checks iopfd's own ABI definitions (include/iopfd/base/uapi.h) against the kernel's UAPI header
// of the newer kernel (Debian's linux-libc-dev from trixie-backports, fetched at build time by
// scripts/kernel-headers.sh; the build puts it first on the include path for this test only).
#include <linux/iommufd.h>
#include <linux/vfio.h>

#include <cstddef>

#include "gtest/gtest.h"
#include "iopfd/base/uapi.h"

namespace iopfd {
namespace {

#define EXPECT_SAME_LAYOUT(ours, theirs) EXPECT_EQ(sizeof(uapi::ours), sizeof(struct theirs))
#define EXPECT_SAME_FIELD(ours, of, theirs, tf) \
  EXPECT_EQ(offsetof(uapi::ours, of), offsetof(struct theirs, tf)) << #ours "." #of

TEST(UapiAbiTest, StructSizesMatchTheKernelHeader) {
  EXPECT_SAME_LAYOUT(IommuDestroy, iommu_destroy);
  EXPECT_SAME_LAYOUT(IommuIoasAlloc, iommu_ioas_alloc);
  EXPECT_SAME_LAYOUT(IommuIoasMap, iommu_ioas_map);
  EXPECT_SAME_LAYOUT(IommuIoasMapFile, iommu_ioas_map_file);
  EXPECT_SAME_LAYOUT(IommuIoasUnmap, iommu_ioas_unmap);
  EXPECT_SAME_LAYOUT(IommuIoasCopy, iommu_ioas_copy);
  EXPECT_SAME_FIELD(IommuIoasCopy, src_iova, iommu_ioas_copy, src_iova);
  EXPECT_SAME_LAYOUT(IommuHwptAlloc, iommu_hwpt_alloc);
  EXPECT_SAME_LAYOUT(IommuFaultAlloc, iommu_fault_alloc);
  EXPECT_SAME_LAYOUT(IommuHwInfo, iommu_hw_info);
  EXPECT_SAME_LAYOUT(IommuHwptSetDirtyTracking, iommu_hwpt_set_dirty_tracking);
  EXPECT_SAME_LAYOUT(IommuHwptGetDirtyBitmap, iommu_hwpt_get_dirty_bitmap);
  EXPECT_SAME_LAYOUT(PageFault, iommu_hwpt_pgfault);
  EXPECT_SAME_LAYOUT(PageResponse, iommu_hwpt_page_response);
  EXPECT_SAME_LAYOUT(VfioDeviceBindIommufd, vfio_device_bind_iommufd);
  EXPECT_SAME_LAYOUT(VfioDeviceAttachIommufdPt, vfio_device_attach_iommufd_pt);
  EXPECT_SAME_LAYOUT(VfioDeviceDetachIommufdPt, vfio_device_detach_iommufd_pt);
}

TEST(UapiAbiTest, FieldOffsetsMatchTheKernelHeader) {
  EXPECT_SAME_FIELD(IommuIoasMap, user_va, iommu_ioas_map, user_va);
  EXPECT_SAME_FIELD(IommuIoasMap, iova, iommu_ioas_map, iova);
  EXPECT_SAME_FIELD(IommuIoasMapFile, fd, iommu_ioas_map_file, fd);
  EXPECT_SAME_FIELD(IommuIoasMapFile, start, iommu_ioas_map_file, start);
  EXPECT_SAME_FIELD(IommuHwptAlloc, out_hwpt_id, iommu_hwpt_alloc, out_hwpt_id);
  EXPECT_SAME_FIELD(IommuHwptAlloc, fault_id, iommu_hwpt_alloc, fault_id);
  EXPECT_SAME_FIELD(IommuFaultAlloc, out_fault_fd, iommu_fault_alloc, out_fault_fd);
  EXPECT_SAME_FIELD(IommuHwInfo, dev_id, iommu_hw_info, dev_id);
  EXPECT_SAME_FIELD(IommuHwInfo, data_uptr, iommu_hw_info, data_uptr);
  EXPECT_SAME_FIELD(IommuHwInfo, out_data_type, iommu_hw_info, out_data_type);
  EXPECT_SAME_FIELD(IommuHwInfo, out_capabilities, iommu_hw_info, out_capabilities);
  EXPECT_SAME_FIELD(IommuHwptSetDirtyTracking, hwpt_id, iommu_hwpt_set_dirty_tracking, hwpt_id);
  EXPECT_SAME_FIELD(IommuHwptGetDirtyBitmap, hwpt_id, iommu_hwpt_get_dirty_bitmap, hwpt_id);
  EXPECT_SAME_FIELD(IommuHwptGetDirtyBitmap, iova, iommu_hwpt_get_dirty_bitmap, iova);
  EXPECT_SAME_FIELD(IommuHwptGetDirtyBitmap, length, iommu_hwpt_get_dirty_bitmap, length);
  EXPECT_SAME_FIELD(IommuHwptGetDirtyBitmap, page_size, iommu_hwpt_get_dirty_bitmap, page_size);
  EXPECT_SAME_FIELD(IommuHwptGetDirtyBitmap, data, iommu_hwpt_get_dirty_bitmap, data);
  EXPECT_SAME_FIELD(PageFault, pasid, iommu_hwpt_pgfault, pasid);
  EXPECT_SAME_FIELD(PageFault, perm, iommu_hwpt_pgfault, perm);
  EXPECT_SAME_FIELD(PageFault, addr, iommu_hwpt_pgfault, addr);
  EXPECT_SAME_FIELD(PageFault, length, iommu_hwpt_pgfault, length);
  EXPECT_SAME_FIELD(PageFault, cookie, iommu_hwpt_pgfault, cookie);
  EXPECT_SAME_FIELD(PageResponse, code, iommu_hwpt_page_response, code);
  EXPECT_SAME_FIELD(VfioDeviceBindIommufd, out_devid, vfio_device_bind_iommufd, out_devid);
  EXPECT_SAME_FIELD(VfioDeviceAttachIommufdPt, pasid, vfio_device_attach_iommufd_pt, pasid);
}

TEST(UapiAbiTest, IoctlNumbersAndFlagsMatchTheKernelHeader) {
  EXPECT_EQ(uapi::kIommuDestroy, IOMMU_DESTROY);
  EXPECT_EQ(uapi::kIommuIoasAlloc, IOMMU_IOAS_ALLOC);
  EXPECT_EQ(uapi::kIommuIoasMap, IOMMU_IOAS_MAP);
  EXPECT_EQ(uapi::kIommuIoasMapFile, IOMMU_IOAS_MAP_FILE);
  EXPECT_EQ(uapi::kIommuIoasUnmap, IOMMU_IOAS_UNMAP);
  EXPECT_EQ(uapi::kIommuIoasCopy, IOMMU_IOAS_COPY);
  EXPECT_EQ(uapi::kIommuHwptAlloc, IOMMU_HWPT_ALLOC);
  EXPECT_EQ(uapi::kIommuFaultQueueAlloc, IOMMU_FAULT_QUEUE_ALLOC);
  EXPECT_EQ(uapi::kVfioDeviceBindIommufd, VFIO_DEVICE_BIND_IOMMUFD);
  EXPECT_EQ(uapi::kVfioDeviceAttachIommufdPt, VFIO_DEVICE_ATTACH_IOMMUFD_PT);
  EXPECT_EQ(uapi::kVfioDeviceReset, VFIO_DEVICE_RESET);
  EXPECT_EQ(uapi::kVfioDeviceDetachIommufdPt, VFIO_DEVICE_DETACH_IOMMUFD_PT);
  EXPECT_EQ(uapi::kIoasMapFixedIova, IOMMU_IOAS_MAP_FIXED_IOVA);
  EXPECT_EQ(uapi::kIoasMapWriteable, IOMMU_IOAS_MAP_WRITEABLE);
  EXPECT_EQ(uapi::kIoasMapReadable, IOMMU_IOAS_MAP_READABLE);
  EXPECT_EQ(uapi::kHwptFaultIdValid, IOMMU_HWPT_FAULT_ID_VALID);
  EXPECT_EQ(uapi::kHwptAllocPasid, IOMMU_HWPT_ALLOC_PASID);
  EXPECT_EQ(uapi::kHwptAllocDirtyTracking, IOMMU_HWPT_ALLOC_DIRTY_TRACKING);
  EXPECT_EQ(uapi::kIommuGetHwInfo, IOMMU_GET_HW_INFO);
  EXPECT_EQ(uapi::kHwCapDirtyTracking, IOMMU_HW_CAP_DIRTY_TRACKING);
  EXPECT_EQ(uapi::kIommuHwptSetDirtyTracking, IOMMU_HWPT_SET_DIRTY_TRACKING);
  EXPECT_EQ(uapi::kIommuHwptGetDirtyBitmap, IOMMU_HWPT_GET_DIRTY_BITMAP);
  EXPECT_EQ(uapi::kDirtyTrackingEnable, IOMMU_HWPT_DIRTY_TRACKING_ENABLE);
  EXPECT_EQ(uapi::kGetDirtyNoClear, IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR);
  EXPECT_EQ(uapi::kPgfaultPasidValid, IOMMU_PGFAULT_FLAGS_PASID_VALID);
  EXPECT_EQ(uapi::kPgfaultLastPage, IOMMU_PGFAULT_FLAGS_LAST_PAGE);
  EXPECT_EQ(uapi::kPermRead, IOMMU_PGFAULT_PERM_READ);
  EXPECT_EQ(uapi::kPermWrite, IOMMU_PGFAULT_PERM_WRITE);
  EXPECT_EQ(uapi::kPermExec, IOMMU_PGFAULT_PERM_EXEC);
  EXPECT_EQ(uapi::kPermPriv, IOMMU_PGFAULT_PERM_PRIV);
  EXPECT_EQ(uapi::kRespSuccess, IOMMUFD_PAGE_RESP_SUCCESS);
  EXPECT_EQ(uapi::kRespInvalid, IOMMUFD_PAGE_RESP_INVALID);
  EXPECT_EQ(uapi::kVfioDeviceAttachPasid, VFIO_DEVICE_ATTACH_PASID);
}

}  // namespace
}  // namespace iopfd
