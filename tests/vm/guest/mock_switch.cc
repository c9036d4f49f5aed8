// The VM tier's attachment switch module (include/iopfd/switch_module.h) for the iommufd
// self-test device: iopfd loads it (adopt.switch_module) to park and unpark the mock device's
// attachments, as a VMM without a VFIO fd to hand over would provide. adopt.switch_target is
// the self-test device object (stdev) id.
//
// Compiled at test time against the booted kernel's drivers/iommu/iommufd/iommufd_test.h (a
// kernel-internal header, never copied into the repository), like the guest driver.
#include <errno.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "iommufd_test.h"
#include "iopfd/switch_module.h"

namespace {

int TestCmd(int iommufd, iommu_test_cmd* cmd) {
  cmd->size = sizeof(*cmd);
  return ioctl(iommufd, IOMMU_TEST_CMD, cmd) < 0 ? -errno : 0;
}

// The stdev id named by the target, or 0 when it is not a number.
unsigned StdevOf(const iopfd_switch_request* req) {
  if (req == nullptr || req->size < sizeof(iopfd_switch_request) || req->target == nullptr) {
    return 0;
  }
  char* end = nullptr;
  unsigned long id = std::strtoul(req->target, &end, 10);
  return end != req->target && *end == '\0' && id <= 0xffffffffu ? static_cast<unsigned>(id) : 0;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int iopfd_switch_attachment(
    const iopfd_switch_request* req) {
  unsigned stdev = StdevOf(req);
  if (stdev == 0) return -EINVAL;
  iommu_test_cmd cmd;
  std::memset(&cmd, 0, sizeof(cmd));
  cmd.id = stdev;
  if (req->pasid == IOPFD_SWITCH_NO_PASID) {
    // selftest.c iommufd_test_mock_domain_replace -> iommufd_device_replace: the same replace
    // path as VFIO_DEVICE_ATTACH_IOMMUFD_PT on an attached device.
    cmd.op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE;
    cmd.mock_domain_replace.pt_id = req->hwpt_id;
  } else {
    cmd.op = IOMMU_TEST_OP_PASID_REPLACE;
    cmd.pasid_replace.pasid = req->pasid;
    cmd.pasid_replace.pt_id = req->hwpt_id;
  }
  return TestCmd(req->iommufd, &cmd);
}

// The self-test device has no function to reset: TRIGGER_IOPF builds each group whole in the
// kernel (LAST_PAGE always set), so the device holds no page request tags of its own that a
// reset could make it forget. The kernel's side of a reset, for the fault path, is nothing at
// all (VFIO_DEVICE_RESET answers no group: docs/KERNEL_FACTS.md section 4), which is why
// iopfd parks and flushes around it. So this entry lets the VM tier run iopfd's whole Reset
// sequence against the real kernel (park, flush, reset, flush again, resume) with the one step
// the mock cannot have being a deliberate no-op; the forgetting function is modelled in
// tests/sim. It takes as long as a function level reset does, though (PCIe: software waits
// 100 ms after initiating an FLR before it may touch the function again), so the VM cases see
// whether a reset holds up the other devices' faults.
extern "C" __attribute__((visibility("default"))) int iopfd_reset_function(
    const iopfd_switch_request* req) {
  if (StdevOf(req) == 0) return -EINVAL;
  usleep(100 * 1000);
  return 0;
}
