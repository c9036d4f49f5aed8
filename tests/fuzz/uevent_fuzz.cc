// Kernel uevents (NETLINK_KOBJECT_UEVENT messages, as the listener receives them) through the
// strict parser, and the valid ones to the device manager, with a live simulated device whose
// sysfs path the messages may name.
//
// Input: messages separated by 0xFF bytes (the kernel never sends that byte in a uevent).
// Invariants: the parser returns an event or an error naming the byte, never crashes; an event
// has its four fields; acting on events never answers a group wrongly, and once the device runs
// again nothing it asked for is lost (sim_world.h).
#include <cstdint>
#include <string>

#include "fuzz_input.h"
#include "iopfd/device/uevent.h"
#include "sim_world.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  Input in(data, size);
  SimWorld world;
  int n = 0;
  while (!in.empty() && n < 32) {
    std::string_view msg = in.Until('\xff');
    absl::StatusOr<Uevent> ev = ParseUevent(std::span<const char>(msg.data(), msg.size()));
    ++n;
    world.Fault(n % 2 == 0, static_cast<uint32_t>(n * 13), static_cast<uint32_t>(n),
                uapi::kPermRead | uapi::kPermWrite);
    if (ev.ok()) {
      FUZZ_CHECK(!ev->action.empty() && !ev->devpath.empty() && !ev->subsystem.empty());
      (void)world.manager.OnUevent(*ev);
    } else {
      FUZZ_CHECK(ev.status().code() == absl::StatusCode::kInvalidArgument);
    }
    world.host.Turn();
    world.CheckSafe();
  }
  world.CheckSafe();
  world.CheckNothingLost();
  return 0;
}
