// A whole iopfd control plane on the simulated kernel, for the fuzz targets that reach it
// (Varlink calls, kernel uevents): one vfio-mode device "sim0" with a space without PASID and
// one with PASID 5, its DeviceManager served synchronously, and the io.iopfd methods. The
// simulation flags what the real kernel cannot see: a SUCCESS answer for an unmapped page, a
// stale or repeated answer to the function, a group never answered.
#ifndef IOPFD_TESTS_FUZZ_SIM_WORLD_H_
#define IOPFD_TESTS_FUZZ_SIM_WORLD_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/control/control_methods.h"
#include "iopfd/device/device_manager.h"
#include "iopfd/device/eventfd_watcher.h"
#include "iopfd/service/log.h"
#include "sim_kernel.h"
#include "sim_ring.h"

namespace iopfd::fuzz {

inline constexpr const char* kSimSysfs = "/sys/devices/pci0000:00/0000:00:04.0";
inline constexpr uint32_t kSimPasid = 5;

// The daemon's fault loop on the simulated kernel (tests/sim/sim_ring.h); a failing read or
// write is the device's business (a failed queue), not the harness's.
class SimHost : public sim::SimHost {
 public:
  using sim::SimHost::SimHost;
  void Turn() { (void)TurnStatus(); }
};

// Where streaming replies go: kept, checked by the caller.
class Sink : public ReplyChannel {
 public:
  void Send(const VarlinkReply& reply, bool /*continues*/) override { replies.push_back(reply); }
  bool open() const override { return true; }
  std::vector<VarlinkReply> replies;
};

class SimWorld {
 public:
  SimWorld() {
    SetLogLevel(LogLevel::kError);  // the daemon's own log would drown the fuzzer's
    DeviceConfig config = sim::SimVfioDevice("sim0", {std::nullopt, kSimPasid}, 1 << 20);
    config.sysfs = kSimSysfs;
    manager.set_irq_watcher(&irqs);
    ReloadReport r = manager.Apply({config});
    if (!r.failed.empty()) Fail("the simulated device does not attach", r.failed[0].error);
    state.version = "fuzz";
    state.manager = &manager;
    state.events = &events;
    state.reload = [] { return ReloadOutcome{}; };
    state.stopping = [] { return false; };
    RegisterIopfdMethods(&service, &state);
    service.set_policy({.control_group = 100, .admin_group = 200});
  }

  // The function asks for `pages` pages from page `page` of the 1 MiB region (IOVA 1 MiB),
  // when it may (an obedient function).
  void Fault(bool pasid, uint32_t page, uint32_t pages, uint32_t perm) {
    pages = 1 + pages % 4;
    if (!function.CanIssue(pages)) return;
    const uint64_t addr = (1u << 20) + uint64_t{page % 250} * 4096;
    kernel.DeliverRequests(function.IssueGroup(
        pasid ? std::optional<uint32_t>(kSimPasid) : std::nullopt, addr, perm, pages));
  }

  // What must hold whatever happened: no SUCCESS for an unmapped page, no answer the function
  // did not expect. Then, once the device (if it is still served) runs again and was served,
  // no group is left unanswered.
  void CheckSafe() const {
    FUZZ_CHECK(kernel.violations().empty(), kernel.violations()[0]);
    for (const auto& v : function.violations()) {
      FUZZ_CHECK(v.kind == sim::ViolationKind::kLostGroup, v.detail);
    }
  }
  void CheckNothingLost() {
    host.Turn();
    Device* d = manager.Find("sim0");
    if (d == nullptr) return;  // handed back: the kernel answers what it held
    const Peer root{.pid = 1, .uid = 0, .gid = 0, .groups = {}};
    bool close = false;
    for (int i = 0; i < 3; ++i) {
      (void)service.Handle(R"({"method":"io.iopfd.Resume","parameters":{"device":"sim0"}})", root,
                           &close);
      host.Turn();
    }
    const DrainController* drain = manager.DrainOf(*d);
    if (drain == nullptr || drain->state() != DrainState::kRunning) return;
    host.Turn();
    function.CheckNothingLost();
    for (const auto& v : function.violations()) Fail("a group was lost", v.detail);
  }

  sim::PriDevice function;
  sim::SimKernel kernel{&function};
  SimHost host{&kernel};
  EventfdWatcher irqs;
  DeviceManager manager{&host, &kernel, ListenFds(), ReadLimits{64}};
  EventBus events;
  DaemonState state;
  VarlinkService service{"iopfd", "iopfd", "fuzz", "man:iopfd(8)"};
};

}  // namespace iopfd::fuzz

#endif  // IOPFD_TESTS_FUZZ_SIM_WORLD_H_
