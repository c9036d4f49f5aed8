/* The interface of an attachment switch module (adopt mode, [adopt] switch_module).
 *
 * In adopt mode the device's owner attached it to its IOPF-capable HWPTs. To drain, iopfd must
 * replace such a HWPT by a fault-less "park" HWPT over the same IOAS and later put it back
 * (docs/DRAIN.md). With a VFIO device it does that itself through the device fd
 * ([adopt] device_fd). For a device that has no VFIO fd to hand over, the owner provides a
 * shared object exporting the function below; iopfd loads it (dlopen) once per device at
 * attach and calls it on its loop's thread, so it must return promptly (no waiting on the
 * owner's other work: a drain of one device must not hold up the others).
 *
 * This header is C as well as C++ so that a module can be written in either.
 */
#ifndef IOPFD_SWITCH_MODULE_H_
#define IOPFD_SWITCH_MODULE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The PASID value of the attachment without a PASID (the RID's). */
#define IOPFD_SWITCH_NO_PASID 0xffffffffu

struct iopfd_switch_request {
  uint32_t size;      /* sizeof(struct iopfd_switch_request): fields may be added at the end */
  int32_t iommufd;    /* the iommufd the device's objects live in (iopfd's copy) */
  const char* target; /* [adopt] switch_target, verbatim (identifies the device to the module) */
  uint32_t device_id; /* [adopt] device_id: the iommufd device object */
  uint32_t pasid;     /* the attachment: a PASID, or IOPFD_SWITCH_NO_PASID */
  uint32_t hwpt_id;   /* the HWPT to attach in place of the current one (a replace) */
};

/* Replaces the HWPT attached to request->pasid of the device by request->hwpt_id. Returns 0 on
 * success or a negative errno (iopfd quarantines the device and reports it). */
typedef int (*iopfd_switch_attachment_fn)(const struct iopfd_switch_request* request);
#define IOPFD_SWITCH_SYMBOL "iopfd_switch_attachment"

/* Optional. Resets the function (a function level reset or the device's own), so that it
 * forgets the page request tags it issued; called between the park and the resume of a Reset
 * (every attachment is parked by then). pasid and hwpt_id are unused. Returns 0 or a negative
 * errno. Without it, Reset (and halt = "reset") is refused for the device. It may take as long
 * as a reset takes: iopfd calls it on a worker thread (never at the same time as
 * iopfd_switch_attachment for the same device), and serves the other devices meanwhile. */
typedef int (*iopfd_reset_function_fn)(const struct iopfd_switch_request* request);
#define IOPFD_RESET_SYMBOL "iopfd_reset_function"

#ifdef __cplusplus
}
#endif

#endif /* IOPFD_SWITCH_MODULE_H_ */
