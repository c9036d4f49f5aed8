// The drain state machine as an operator drives it: io.iopfd.Drain, Reset, Halt and Resume on
// the control service, over a DeviceManager serving a vfio-mode device on the simulated kernel
// and PRI function. Checks the replies and errors, ListDevices, GetStatus, GetStats (JSON and
// Prometheus), Monitor's state_changed events, the owner's halt deadline, and that the function
// never sees a stale or lost answer along the way.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/clock.h"
#include "iopfd/control/control_methods.h"
#include "iopfd/control/varlink.h"
#include "iopfd/device/device_manager.h"
#include "iopfd/device/eventfd_watcher.h"
#include "iopfd/device/uevent.h"
#include "iopfd/fault/pager.h"
#include "iopfd/service/log.h"
#include "sim_kernel.h"
#include "sim_ring.h"

namespace iopfd::sim {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using Json = nlohmann::json;

constexpr uint32_t kPasid = 5;

// A kernel uevent about the simulated device (its sysfs path, as Start configures it).
Uevent KernelEventFor(const std::string& action, const std::string& error_event = "") {
  Uevent ev;
  ev.action = action;
  ev.devpath = "/devices/pci0000:00/0000:00:04.0";
  ev.subsystem = "pci";
  ev.seqnum = 78;
  if (!error_event.empty()) ev.env["ERROR_EVENT"] = error_event;
  return ev;
}

// The daemon's fault loop on the simulated kernel, with a Turn that fails the test on an error.
class TestHost : public SimHost {
 public:
  using SimHost::SimHost;
  void Turn() { ASSERT_TRUE(TurnStatus().ok()); }
};

// Collects what Monitor streams.
class Recorder : public ReplyChannel {
 public:
  void Send(const VarlinkReply& reply, bool /*continues*/) override {
    replies.push_back(reply.parameters);
  }
  bool open() const override { return true; }
  std::vector<Json> replies;
};

class DrainControlTest : public ::testing::Test {
 protected:
  void Start(DrainConfig drain) {
    DeviceConfig config = SimVfioDevice("sim0", {std::nullopt, kPasid}, 1 << 20);
    for (SpaceConfig& s : config.spaces) s.regions[0].first_touch_page = !whole_units_;
    config.drain = drain;
    config.sysfs = "/sys/devices/pci0000:00/0000:00:04.0";
    manager_.set_irq_watcher(&irqs_);
    manager_.set_pager(&pager_);
    ReloadReport r = manager_.Apply({config});
    ASSERT_THAT(r.failed, IsEmpty());
    StartService();
  }
  void StartService() {
    manager_.on_event = [this](const std::string& event, const std::string& device,
                               const std::string& detail) {
      events_.Publish(event, device, detail);
    };
    manager_.on_transition = [this](const Device& d, const DrainTransition& t) {
      events_.Publish("state_changed", d.name(), t.cause,
                      {{"state", DrainStateName(t.to)},
                       {"previous_state", DrainStateName(t.from)},
                       {"epoch", t.epoch}});
    };
    state_.manager = &manager_;
    state_.events = &events_;
    state_.pager = &pager_;
    state_.reload = [] { return ReloadOutcome{}; };
    state_.stopping = [this] { return stopping_; };
    RegisterIopfdMethods(&service_, &state_);
    monitor_ = std::make_shared<Recorder>();
    Json subscribed = Call("io.iopfd.Monitor", Json::object(), /*more=*/true);
    ASSERT_EQ(subscribed["parameters"]["event"], "subscribed");
  }
  // Returns the reply message ({"parameters": ...} or {"error": ..., "parameters": ...}).
  Json Call(const std::string& method, Json params, bool more = false) {
    return CallAs({.pid = 1, .uid = 0, .gid = 0, .groups = {}}, method, std::move(params), more);
  }
  Json CallAs(const Peer& peer, const std::string& method, Json params, bool more = false) {
    Json call = {{"method", method}, {"parameters", std::move(params)}};
    if (more) call["more"] = true;
    bool close = false;
    std::string out = service_.Handle(call.dump(), peer, &close, monitor_);
    EXPECT_FALSE(close);
    EXPECT_FALSE(out.empty());
    if (out.empty()) return Json::object();
    out.pop_back();  // the NUL
    return Json::parse(out);
  }
  Json DeviceEntry() {
    Json list = Call("io.iopfd.ListDevices", Json::object())["parameters"]["devices"];
    EXPECT_EQ(list.size(), 1u);
    return list.empty() ? Json::object() : list[0];
  }
  // The state changes Monitor streamed, as "from->to".
  std::vector<std::string> Path() {
    std::vector<std::string> path;
    for (const Json& e : monitor_->replies) {
      if (e.value("event", "") == "state_changed") {
        path.push_back(e["previous_state"].get<std::string>() + "->" +
                       e["state"].get<std::string>());
      }
    }
    return path;
  }
  void Fault(std::optional<uint32_t> pasid, uint64_t page) {
    kernel_.DeliverRequests(
        function_.IssueGroup(pasid, 0x100000 + page * 4096, uapi::kPermRead, 1));
  }
  void ExpectClean() {
    host_.Turn();
    function_.CheckNothingLost();
    EXPECT_THAT(function_.violations(), IsEmpty()) << function_.violations()[0].detail;
    EXPECT_THAT(kernel_.violations(), IsEmpty());
    for (Device* d : host_.served()) EXPECT_EQ(d->stats().outstanding(), 0u);
  }
  const DeviceStats& Stats() { return manager_.Find("sim0")->stats(); }

  PriDevice function_;
  SimKernel kernel_{&function_};
  Pager pager_{PagerOptions{}};
  TestHost host_{&kernel_};
  EventfdWatcher irqs_;
  DeviceManager manager_{&host_, &kernel_, ListenFds(), ReadLimits{64}};
  EventBus events_;
  DaemonState state_;
  VarlinkService service_{"iopfd", "iopfd", "test", "man:iopfd(8)"};
  std::shared_ptr<Recorder> monitor_;
  bool stopping_ = false;
  bool whole_units_ = false;  // regions map whole units from the first touch
};

TEST_F(DrainControlTest, ListDevicesShowsStateEpochAndHaltMethod) {
  Start({});
  Json d = DeviceEntry();
  EXPECT_EQ(d["state"], "running");
  EXPECT_EQ(d["epoch"], 0);
  EXPECT_EQ(d["halt"], "owner");
}

TEST_F(DrainControlTest, OwnerDrainWaitsInHaltingForHaltThenResumesWithANewEpoch) {
  Start({HaltMethod::kOwner, 5000});
  Fault(std::nullopt, 0);
  Fault(kPasid, 1);
  host_.Turn();
  Json r = Call("io.iopfd.Drain", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "halting"}, {"epoch", 0}}));
  EXPECT_EQ(DeviceEntry()["state"], "halting");
  // While the owner stops its DMA, faults are served as usual.
  Fault(kPasid, 2);
  host_.Turn();
  EXPECT_EQ(Stats().responses_success, 3u);
  ASSERT_TRUE(manager_.NextDeadline().has_value());

  Fault(std::nullopt, 3);  // still queued when the owner confirms
  r = Call("io.iopfd.Halt", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "running"}, {"epoch", 1}}));
  EXPECT_FALSE(manager_.NextDeadline().has_value());
  EXPECT_EQ(host_.quiesces, 1);
  EXPECT_EQ(host_.rearms, 1);
  EXPECT_THAT(Path(), ElementsAre("running->halting", "halting->flushing", "flushing->resuming",
                                  "resuming->running"));
  // The cause names the call.
  EXPECT_THAT(monitor_->replies[0]["detail"].get<std::string>(), HasSubstr("Drain by uid 0"));
  Json d = DeviceEntry();
  EXPECT_EQ(d["state"], "running");
  EXPECT_EQ(d["epoch"], 1);

  Fault(kPasid, 4);  // after the resume: resolved
  ExpectClean();
  EXPECT_EQ(Stats().drains, 1u);
  EXPECT_EQ(Stats().drain_unaccounted, 0u);
  EXPECT_EQ(Stats().stale_epoch_blocked, 0u);
  Json stats = Call("io.iopfd.GetStats", {{"device", "sim0"}})["parameters"]["devices"][0];
  EXPECT_EQ(stats["drain"]["drains"], 1);
  EXPECT_EQ(stats["drain"]["epoch"], 1);
  EXPECT_EQ(stats["drain"]["transitions"], 4);
}

TEST_F(DrainControlTest, DrainOfOnePasidParksOnlyThatAttachment) {
  Start({HaltMethod::kOwner, 5000});
  const uint32_t rid_hwpt = kernel_.AttachedHwpt(std::nullopt);
  const uint32_t pasid_hwpt = kernel_.AttachedHwpt(kPasid);
  bool pasid_parked = false, rid_touched = false;
  kernel_.before_ioctl = [&](unsigned long) {
    pasid_parked |= kernel_.AttachedHwpt(kPasid) != pasid_hwpt;
    rid_touched |= kernel_.AttachedHwpt(std::nullopt) != rid_hwpt;
  };
  ASSERT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}, {"pasid", kPasid}})["parameters"]["state"],
            "halting");
  ASSERT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_TRUE(pasid_parked);
  EXPECT_FALSE(rid_touched);
  EXPECT_EQ(kernel_.AttachedHwpt(kPasid), pasid_hwpt);  // back on its IOPF-capable HWPT
  ExpectClean();
}

TEST_F(DrainControlTest, ResetMethodRunsToRunningInOneCall) {
  Start({HaltMethod::kReset, 5000});
  EXPECT_EQ(DeviceEntry()["halt"], "reset");
  Fault(kPasid, 0);
  host_.Turn();
  Fault(kPasid, 1);  // queued at the reset: the park answers it, the FLR forgets it
  Json r = Call("io.iopfd.Reset", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "running"}, {"epoch", 1}}));
  EXPECT_THAT(Path(),
              ElementsAre("running->halting", "halting->flushing", "flushing->resetting",
                          "resetting->flushing", "flushing->resuming", "resuming->running"));
  EXPECT_EQ(Stats().function_resets, 1u);
  // A Drain with the reset method is a reset too.
  r = Call("io.iopfd.Drain", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "running"}, {"epoch", 2}}));
  EXPECT_EQ(Stats().function_resets, 2u);
  function_.ResumeDma();  // its driver brings the reset function back up
  Fault(std::nullopt, 2);
  ExpectClean();
}

// The FLR runs away from the loop: Reset answers "resetting", the device stays parked and out
// of the ring's reading, nothing else may start on it, and the drain goes on when the reset's
// result comes back.
TEST_F(DrainControlTest, AResetRunsOffTheLoopAndTheDrainGoesOnWhenItReturns) {
  Start({HaltMethod::kReset, 5000});
  host_.defer_blocking = true;
  Fault(kPasid, 0);
  host_.Turn();
  Json r = Call("io.iopfd.Reset", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "resetting"}, {"epoch", 0}})) << r.dump();
  ASSERT_EQ(host_.blocking.size(), 1u);
  EXPECT_EQ(kernel_.resets(), 0);  // not yet: the worker has not run it
  EXPECT_EQ(DeviceEntry()["state"], "resetting");
  EXPECT_TRUE(kernel_.AttachedHwpt(std::nullopt) != 0 &&
              manager_.Find("sim0")->parked(std::nullopt));
  for (const char* method :
       {"io.iopfd.Drain", "io.iopfd.Reset", "io.iopfd.Halt", "io.iopfd.Resume"}) {
    EXPECT_EQ(Call(method, {{"device", "sim0"}})["error"], "io.iopfd.InvalidState") << method;
  }
  host_.RunPendingJobs();
  EXPECT_EQ(kernel_.resets(), 1);
  EXPECT_EQ(DeviceEntry()["state"], "running");
  EXPECT_EQ(DeviceEntry()["epoch"], 1);
  EXPECT_THAT(Path(),
              ElementsAre("running->halting", "halting->flushing", "flushing->resetting",
                          "resetting->flushing", "flushing->resuming", "resuming->running"));
  function_.ResumeDma();  // its driver brings the reset function back up
  Fault(std::nullopt, 1);
  ExpectClean();
}

// A reset whose result comes back failed quarantines the device, naming the step.
TEST_F(DrainControlTest, AResetThatFailsOffTheLoopQuarantines) {
  Start({HaltMethod::kReset, 5000});
  host_.defer_blocking = true;
  kernel_.fail_ioctl = [](unsigned long request) {
    return request == uapi::kVfioDeviceReset ? EIO : 0;
  };
  EXPECT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"]["state"], "resetting");
  host_.RunPendingJobs();
  kernel_.fail_ioctl = nullptr;
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  EXPECT_THAT(monitor_->replies.back().dump(), HasSubstr("VFIO_DEVICE_RESET"));
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  function_.ResumeDma();
  Fault(kPasid, 0);
  ExpectClean();
}

// Quarantined while its reset runs (a failed recovery): Resume waits for the reset to come
// back, whose result then changes nothing.
TEST_F(DrainControlTest, AQuarantineDuringAResetHoldsResumeUntilTheResetReturns) {
  Start({HaltMethod::kReset, 5000});
  host_.defer_blocking = true;
  EXPECT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"]["state"], "resetting");
  manager_.Find("sim0");
  EXPECT_EQ(manager_.OnUevent(KernelEventFor("change", "FAILED_RECOVERY")), "sim0");
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  Json r = Call("io.iopfd.Resume", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.InvalidState");
  EXPECT_THAT(r.dump(), HasSubstr("function reset is still running"));
  host_.RunPendingJobs();
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  function_.ResumeDma();
  Fault(kPasid, 0);
  ExpectClean();
}

// The device goes away while its reset runs: the manager waits for the reset before the device
// is freed, and everything read from it is accounted for.
TEST_F(DrainControlTest, ARemovalDuringAResetWaitsForIt) {
  Start({HaltMethod::kReset, 5000});
  host_.defer_blocking = true;
  EXPECT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"]["state"], "resetting");
  EXPECT_EQ(manager_.OnUevent(KernelEventFor("remove")), "sim0");
  EXPECT_EQ(host_.finishes, 1);
  EXPECT_TRUE(host_.blocking.empty());
  EXPECT_EQ(kernel_.resets(), 1);
  EXPECT_EQ(manager_.Find("sim0"), nullptr);
}

TEST_F(DrainControlTest, BusMasterHaltClearsItBeforeTheParkAndSetsItAfterTheUnpark) {
  Start({HaltMethod::kBusMaster, 5000});
  EXPECT_EQ(DeviceEntry()["halt"], "bus-master");
  Fault(kPasid, 0);
  host_.Turn();
  Fault(std::nullopt, 1);  // queued at the drain
  // Every replace of the attachments must happen with Bus Master Enable clear.
  int replaces = 0, replaces_with_dma_on = 0;
  kernel_.before_ioctl = [&](unsigned long request) {
    if (request != uapi::kVfioDeviceAttachIommufdPt) return;
    ++replaces;
    if ((kernel_.pci_command() & uapi::kPciCommandMaster) != 0) ++replaces_with_dma_on;
  };
  Json r = Call("io.iopfd.Drain", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "running"}, {"epoch", 1}}));  // no owner to wait for
  EXPECT_EQ(replaces, 4);  // park and unpark of both attachments
  EXPECT_EQ(replaces_with_dma_on, 0);
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  EXPECT_FALSE(function_.halted());                                     // its DMA runs again
  EXPECT_EQ(kernel_.pci_command() & ~uapi::kPciCommandMaster, 0x0002);  // other bits kept
  // A reset with the bus-master halt: clear, park, FLR, flush, unpark, set. The FLR and every
  // replace happen with Bus Master Enable clear.
  replaces = replaces_with_dma_on = 0;
  int resets_with_dma_on = -1;
  kernel_.before_ioctl = [&](unsigned long request) {
    const bool dma_on = (kernel_.pci_command() & uapi::kPciCommandMaster) != 0;
    if (request == uapi::kVfioDeviceReset) resets_with_dma_on = dma_on ? 1 : 0;
    if (request != uapi::kVfioDeviceAttachIommufdPt) return;
    ++replaces;
    if (dma_on) ++replaces_with_dma_on;
  };
  EXPECT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_EQ(Stats().function_resets, 1u);
  EXPECT_EQ(resets_with_dma_on, 0);
  EXPECT_EQ(replaces, 4);
  EXPECT_EQ(replaces_with_dma_on, 0);
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  kernel_.before_ioctl = nullptr;
  Fault(kPasid, 2);
  ExpectClean();
}

// vfio-pci clears Bus Master Enable when it opens a device (vfio_pci_core_enable): a function
// nobody has enabled must not get bus mastering from a drain's resume.
TEST_F(DrainControlTest, BusMasterHaltRestoresOnlyWhatItCleared) {
  Start({HaltMethod::kBusMaster, 5000});
  kernel_.WriteCommandAsOwner(0x0002);  // memory space on, bus mastering off
  function_.ResumeDma();                // (the simulated function faults all the same)
  EXPECT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_EQ(kernel_.pci_command(), 0x0002);
  EXPECT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_EQ(kernel_.pci_command(), 0x0002);
  function_.ResumeDma();  // its driver brings the reset function back up
  Fault(kPasid, 0);
  ExpectClean();
}

// The drain contract: the owner leaves the command register alone. If it sets Bus Master
// Enable again mid-drain, the reset would meet a function doing DMA: iopfd quarantines instead.
TEST_F(DrainControlTest, BusMasterSetAgainBeforeTheResetQuarantines) {
  Start({HaltMethod::kBusMaster, 5000});
  bool reset_ran = false;
  kernel_.before_ioctl = [&](unsigned long request) {
    if (request == uapi::kVfioDeviceAttachIommufdPt) kernel_.WriteCommandAsOwner(0x0006);
    if (request == uapi::kVfioDeviceReset) reset_ran = true;
  };
  Json r = Call("io.iopfd.Reset", {{"device", "sim0"}});
  kernel_.before_ioctl = nullptr;
  EXPECT_EQ(r["error"], "io.iopfd.DrainFailed") << r.dump();
  EXPECT_THAT(r["parameters"]["error"].get<std::string>(),
              HasSubstr("Bus Master Enable was set again during the drain"));
  EXPECT_FALSE(reset_ran);
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  EXPECT_EQ(kernel_.pci_command() & uapi::kPciCommandMaster, 0);  // the quarantine cleared it
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  Fault(kPasid, 0);
  ExpectClean();
}

// A config region that cannot be read: the drain fails naming the step, the device is
// quarantined (parked), and bus mastering is not claimed as iopfd's to restore.
TEST_F(DrainControlTest, AConfigRegionThatFailsQuarantinesNamingTheStep) {
  Start({HaltMethod::kBusMaster, 5000});
  kernel_.fail_config_access = EIO;
  Json r = Call("io.iopfd.Drain", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.DrainFailed") << r.dump();
  EXPECT_THAT(r["parameters"]["error"].get<std::string>(),
              AllOf(HasSubstr("clear Bus Master Enable"), HasSubstr("read PCI command register")));
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  kernel_.fail_config_access = 0;
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);  // never written
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  Fault(kPasid, 0);
  ExpectClean();
}

TEST_F(DrainControlTest, AQuarantineLeavesBusMasteringOff) {
  Start({HaltMethod::kBusMaster, 5000});
  kernel_.fail_ioctl = [](unsigned long request) {
    return request == uapi::kVfioDeviceAttachIommufdPt ? EIO : 0;
  };
  EXPECT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}})["error"], "io.iopfd.DrainFailed");
  EXPECT_EQ(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  EXPECT_TRUE(function_.halted());
  kernel_.fail_ioctl = nullptr;
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  Fault(kPasid, 0);
  ExpectClean();
}

TEST_F(DrainControlTest, AnOwnerThatNeverConfirmsGetsTheDeviceQuarantinedUntilResume) {
  Start({HaltMethod::kOwner, 50});
  const uint64_t before = MonotonicNs();
  ASSERT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}})["parameters"]["state"], "halting");
  std::optional<uint64_t> deadline = manager_.NextDeadline();
  ASSERT_TRUE(deadline.has_value());
  EXPECT_GE(*deadline, before + 50'000'000);
  manager_.Tick(*deadline - 1);
  EXPECT_EQ(DeviceEntry()["state"], "halting");
  manager_.Tick(*deadline);
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  EXPECT_EQ(Call("io.iopfd.GetStatus", Json::object())["parameters"]["health"], "degraded");
  EXPECT_FALSE(manager_.NextDeadline().has_value());

  // Quarantined: page requests are halted (parked); nothing is mapped for them.
  Fault(kPasid, 0);
  host_.Turn();
  EXPECT_EQ(Stats().responses_success, 0u);
  // A late Halt does not bring it back; Resume does.
  Json late = Call("io.iopfd.Halt", {{"device", "sim0"}});
  EXPECT_EQ(late["error"], "io.iopfd.InvalidState");
  EXPECT_EQ(late["parameters"]["state"], "quarantined");
  Json r = Call("io.iopfd.Resume", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "running"}, {"epoch", 1}}));
  EXPECT_EQ(Call("io.iopfd.GetStatus", Json::object())["parameters"]["health"], "ok");
  Fault(kPasid, 1);
  ExpectClean();
  EXPECT_EQ(Stats().responses_success, 1u);
  EXPECT_EQ(Stats().quarantines, 1u);
}

TEST_F(DrainControlTest, HaltOnARunningDeviceHoldsItUntilResume) {
  Start({});
  Json r = Call("io.iopfd.Halt", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "halted"}, {"epoch", 0}}));
  EXPECT_EQ(Call("io.iopfd.GetStatus", Json::object())["parameters"]["health"], "ok");
  Json again = Call("io.iopfd.Drain", {{"device", "sim0"}});
  EXPECT_EQ(again["error"], "io.iopfd.InvalidState");
  EXPECT_EQ(again["parameters"]["state"], "halted");
  r = Call("io.iopfd.Resume", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"], (Json{{"state", "running"}, {"epoch", 1}}));
  Fault(std::nullopt, 0);
  ExpectClean();
}

TEST_F(DrainControlTest, ErrorsNameWhatIsWrong) {
  Start({});
  Json r = Call("io.iopfd.Drain", {{"device", "nope"}});
  EXPECT_EQ(r["error"], "io.iopfd.NoSuchDevice");
  EXPECT_EQ(r["parameters"]["device"], "nope");
  r = Call("io.iopfd.Drain", {{"device", "sim0"}, {"pasid", 7}});
  EXPECT_EQ(r["error"], "io.iopfd.NoSuchPasid");
  EXPECT_EQ(r["parameters"], (Json{{"device", "sim0"}, {"pasid", 7}}));
  for (Json bad : {Json(0), Json(1 << 20), Json(-1), Json("5"), Json(1.5)}) {
    r = Call("io.iopfd.Drain", {{"device", "sim0"}, {"pasid", bad}});
    EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter") << bad;
    EXPECT_EQ(r["parameters"]["parameter"], "pasid");
  }
  r = Call("io.iopfd.Reset", {{"device", "sim0"}, {"pasid", 5}});
  EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
  r = Call("io.iopfd.Resume", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.InvalidState");
  EXPECT_EQ(r["parameters"]["state"], "running");
  EXPECT_THAT(r["parameters"]["reason"].get<std::string>(), HasSubstr("cannot resume"));
  r = Call("io.iopfd.Drain", {});
  EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
  stopping_ = true;
  r = Call("io.iopfd.Drain", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.Busy");
  EXPECT_THAT(Path(), IsEmpty());  // nothing changed state
}

TEST_F(DrainControlTest, AFailedParkQuarantinesAndSaysWhichStep) {
  Start({HaltMethod::kReset, 5000});
  // Refuse VFIO's attach (the park's replace) from here on.
  kernel_.fail_ioctl = [](unsigned long request) {
    return request == uapi::kVfioDeviceAttachIommufdPt ? EBUSY : 0;
  };
  Json r = Call("io.iopfd.Reset", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.DrainFailed");
  EXPECT_EQ(r["parameters"]["state"], "quarantined");
  EXPECT_THAT(r["parameters"]["error"].get<std::string>(), HasSubstr("park"));
  EXPECT_EQ(Stats().quarantines, 1u);
  kernel_.fail_ioctl = nullptr;
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  Fault(kPasid, 0);
  ExpectClean();
}

TEST_F(DrainControlTest, AFailedUnparkIsDrainFailedAndQuarantines) {
  Start({});
  ASSERT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"]["state"], "halted");
  // ENOENT maps to NotFound: it must not come back as NoSuchPasid.
  kernel_.fail_ioctl = [](unsigned long request) {
    return request == uapi::kVfioDeviceAttachIommufdPt ? ENOENT : 0;
  };
  Json r = Call("io.iopfd.Resume", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.DrainFailed") << r.dump();
  EXPECT_EQ(r["parameters"]["state"], "quarantined");
  EXPECT_THAT(r["parameters"]["error"].get<std::string>(), HasSubstr("unpark"));
  EXPECT_THAT(r["parameters"]["error"].get<std::string>(), HasSubstr("ENOENT"));
  kernel_.fail_ioctl = nullptr;
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
}

TEST_F(DrainControlTest, PrometheusShowsStateAndDrainCounters) {
  Start({HaltMethod::kReset, 5000});
  ASSERT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"]["state"], "running");
  std::string text = Call("io.iopfd.GetStats", {{"format", "prometheus"}})["parameters"]["text"]
                         .get<std::string>();
  EXPECT_THAT(text, HasSubstr("iopfd_device_state{device=\"sim0\",state=\"running\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("iopfd_drains_total{device=\"sim0\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("iopfd_function_resets_total{device=\"sim0\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("iopfd_drain_epoch{device=\"sim0\"} 1\n"));
  EXPECT_THAT(
      text,
      HasSubstr(
          "iopfd_invariant_violations_total{device=\"sim0\",kind=\"stale_epoch_blocked\"} 0\n"));
}

// iopfctl top takes percentiles over its own refresh interval from the histogram's buckets.
TEST_F(DrainControlTest, GetStatsGivesHistogramBucketsOnlyWhenAsked) {
  Start({});
  for (uint64_t p = 0; p < 5; ++p) Fault(std::nullopt, p);
  host_.Turn();
  ASSERT_EQ(Stats().latency_ns.count(), 5u);
  Json plain = Call("io.iopfd.GetStats", {{"device", "sim0"}})["parameters"]["devices"][0];
  EXPECT_FALSE(plain["latency_ns"].contains("buckets")) << plain["latency_ns"].dump();
  Json with = Call("io.iopfd.GetStats", {{"device", "sim0"}, {"buckets", true}})["parameters"];
  const Json& buckets = with["devices"][0]["latency_ns"]["buckets"];
  ASSERT_TRUE(buckets.is_array()) << with.dump();
  uint64_t total = 0, last = 0;
  for (const Json& b : buckets) {
    EXPECT_GT(b["count"].get<uint64_t>(), 0u);
    EXPECT_TRUE(total == 0 || b["le"].get<uint64_t>() > last) << "not ascending";
    last = b["le"].get<uint64_t>();
    total += b["count"].get<uint64_t>();
  }
  EXPECT_EQ(total, 5u);
  EXPECT_GE(last, with["devices"][0]["latency_ns"]["max"].get<uint64_t>());
  EXPECT_EQ(Call("io.iopfd.GetStats", {{"buckets", "yes"}})["error"],
            "org.varlink.service.InvalidParameter");
}

// Adopt mode: the owner (a VMM) set the device up and hands iopfd its fds. With the VFIO
// device fd, iopfd parks through it and can reset; with a switch module it parks through the
// module and cannot reset.
class AdoptDrainTest : public DrainControlTest {
 protected:
  void Adopt(bool with_device_fd, DrainConfig drain) {
    ListenFds fds;
    DeviceConfig c =
        kernel_.SetUpAsOwner("sim0", {std::nullopt, kPasid}, 1 << 20, with_device_fd, &fds);
    c.drain = drain;
    if (no_reset_) c.adopt.switch_module = SimKernel::kSwitchModuleNoReset;
    hwpts_before_ = kernel_.hwpt_count();
    ASSERT_TRUE(manager_.Adopt(c, std::move(fds)).ok());
    StartService();
  }
  size_t hwpts_before_ = 0;
  bool no_reset_ = false;
};

TEST_F(AdoptDrainTest, WithTheDeviceFdItDrainsAndResets) {
  Adopt(/*with_device_fd=*/true, {HaltMethod::kOwner, 5000});
  EXPECT_EQ(kernel_.hwpt_count(), hwpts_before_ + 2);  // a park HWPT per attachment
  Fault(std::nullopt, 0);
  Fault(kPasid, 1);
  host_.Turn();
  Fault(kPasid, 2);  // queued when the drain parks
  ASSERT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}})["parameters"]["state"], "halting");
  EXPECT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"],
            (Json{{"state", "running"}, {"epoch", 1}}));
  Fault(kPasid, 3);
  host_.Turn();
  Json r = Call("io.iopfd.Reset", {{"device", "sim0"}});
  EXPECT_EQ(r["parameters"]["state"], "halting");  // the owner still stops it first
  EXPECT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"],
            (Json{{"state", "running"}, {"epoch", 2}}));
  EXPECT_EQ(Stats().function_resets, 1u);
  function_.ResumeDma();
  Fault(std::nullopt, 4);
  ExpectClean();
  // Detach hands the fds back and destroys what iopfd allocated in the owner's iommufd.
  ASSERT_TRUE(manager_.Detach("sim0").ok());
  EXPECT_EQ(kernel_.hwpt_count(), hwpts_before_);
}

TEST_F(AdoptDrainTest, WithASwitchModuleThatResetsItResets) {
  Adopt(/*with_device_fd=*/false, {HaltMethod::kReset, 5000});
  Fault(kPasid, 0);
  host_.Turn();
  Fault(kPasid, 1);  // queued at the reset
  EXPECT_EQ(Call("io.iopfd.Reset", {{"device", "sim0"}})["parameters"],
            (Json{{"state", "running"}, {"epoch", 1}}));
  EXPECT_EQ(kernel_.switch_calls(), 5);  // park x2, reset, unpark x2
  EXPECT_EQ(Stats().function_resets, 1u);
  function_.ResumeDma();
  Fault(std::nullopt, 2);
  ExpectClean();
}

TEST_F(AdoptDrainTest, WithASwitchModuleWithoutResetItDrainsButCannotReset) {
  no_reset_ = true;
  Adopt(/*with_device_fd=*/false, {HaltMethod::kOwner, 5000});
  Fault(kPasid, 0);
  host_.Turn();
  ASSERT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}})["parameters"]["state"], "halting");
  ASSERT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_EQ(kernel_.switch_calls(), 4);  // park and unpark, of each attachment
  Json r = Call("io.iopfd.Reset", {{"device", "sim0"}});
  EXPECT_EQ(r["error"], "io.iopfd.NotSupported");
  EXPECT_THAT(r["parameters"]["reason"].get<std::string>(),
              HasSubstr("a switch module that exports iopfd_reset_function"));
  EXPECT_EQ(DeviceEntry()["state"], "running");
  Fault(std::nullopt, 1);
  ExpectClean();
}

TEST_F(AdoptDrainTest, AResetHaltWithAModuleThatCannotResetFailsTheAttach) {
  ListenFds fds;
  DeviceConfig c = kernel_.SetUpAsOwner("sim0", {std::nullopt}, 1 << 20, false, &fds);
  c.adopt.switch_module = SimKernel::kSwitchModuleNoReset;
  c.drain.halt = HaltMethod::kReset;
  absl::Status st = manager_.Adopt(c, std::move(fds));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("does not export iopfd_reset_function"));
}

TEST_F(AdoptDrainTest, AMissingModuleFailsTheAttachNamingIt) {
  ListenFds fds;
  DeviceConfig c = kernel_.SetUpAsOwner("sim0", {std::nullopt}, 1 << 20, false, &fds);
  c.adopt.switch_module = "/nonexistent/switch.so";
  absl::Status st = manager_.Adopt(c, std::move(fds));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("sim0: switch module /nonexistent/switch.so: "));
}

// A uevent as the kernel sends it for the simulated function.
Uevent KernelEvent(const std::string& action, const std::string& error_event = "") {
  Uevent ev;
  ev.action = action;
  ev.devpath = "/devices/pci0000:00/0000:00:04.0";
  ev.subsystem = "pci";
  ev.seqnum = 77;
  if (!error_event.empty()) ev.env["ERROR_EVENT"] = error_event;
  return ev;
}

TEST_F(DrainControlTest, PciErrorRecoveryHoldsTheDeviceAndItsSuccessResumesIt) {
  Start({});
  EXPECT_EQ(manager_.Find("sim0")->devpath(), "/devices/pci0000:00/0000:00:04.0");
  Fault(kPasid, 0);
  host_.Turn();
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "BEGIN_RECOVERY")), "sim0");
  EXPECT_EQ(DeviceEntry()["state"], "halted");
  EXPECT_THAT(monitor_->replies.back()["detail"].get<std::string>(),
              HasSubstr("PCI error recovery began: change /devices/pci0000:00/0000:00:04.0"));
  // Another device's events, and ones that say nothing to act on, change nothing.
  Uevent other = KernelEvent("remove");
  other.devpath = "/devices/pci0000:00/0000:00:05.0";
  EXPECT_EQ(manager_.OnUevent(other), "");
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change")), "");
  EXPECT_EQ(manager_.OnUevent(KernelEvent("add")), "");
  EXPECT_EQ(DeviceEntry()["state"], "halted");
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "SUCCESSFUL_RECOVERY")), "sim0");
  EXPECT_EQ(DeviceEntry()["state"], "running");
  EXPECT_EQ(DeviceEntry()["epoch"], 1);
  Fault(kPasid, 1);
  ExpectClean();
}

TEST_F(DrainControlTest, ARecoveryNeverResumesWhatAnOperatorHeld) {
  Start({});
  ASSERT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"]["state"], "halted");
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "BEGIN_RECOVERY")), "");
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "SUCCESSFUL_RECOVERY")), "");
  EXPECT_EQ(DeviceEntry()["state"], "halted");
}

TEST_F(DrainControlTest, ARecoveryEndsWhenTheDeviceLeavesItsHold) {
  Start({});
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "BEGIN_RECOVERY")), "sim0");
  // The operator resumes it early, then holds it for a reset of their own...
  ASSERT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  ASSERT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["parameters"]["state"], "halted");
  // ...which the recovery's late success must not undo.
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "SUCCESSFUL_RECOVERY")), "");
  EXPECT_EQ(DeviceEntry()["state"], "halted");
}

TEST_F(DrainControlTest, SyntheticUeventsAreNotActedUpon) {
  Start({});
  Uevent fake = KernelEvent("remove");
  fake.env["SYNTH_UUID"] = "0";  // echo remove > /sys/.../uevent
  EXPECT_EQ(manager_.OnUevent(fake), "");
  EXPECT_NE(manager_.Find("sim0"), nullptr);
  fake = KernelEvent("change", "FAILED_RECOVERY");
  fake.env["SYNTH_UUID"] = "0";
  EXPECT_EQ(manager_.OnUevent(fake), "");
  EXPECT_EQ(DeviceEntry()["state"], "running");
}

TEST_F(DrainControlTest, AFailedRecoveryQuarantines) {
  Start({});
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "BEGIN_RECOVERY")), "sim0");
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "FAILED_RECOVERY")), "sim0");
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  EXPECT_EQ(Stats().quarantines, 1u);
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
}

// A quarantine for any reason (here a recovery that failed) stops the function's DMA when the
// bus-master method can: it does not rely on a drain having cleared it before.
TEST_F(DrainControlTest, AnyQuarantineClearsBusMasterWithTheBusMasterHalt) {
  Start({HaltMethod::kBusMaster, 5000});
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "BEGIN_RECOVERY")), "sim0");
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);  // a hold: the owner's DMA stop
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "FAILED_RECOVERY")), "sim0");
  EXPECT_EQ(DeviceEntry()["state"], "quarantined");
  EXPECT_EQ(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  EXPECT_TRUE(function_.halted());
  EXPECT_EQ(Call("io.iopfd.Resume", {{"device", "sim0"}})["parameters"]["state"], "running");
  EXPECT_NE(kernel_.pci_command() & uapi::kPciCommandMaster, 0);
  Fault(kPasid, 0);
  ExpectClean();
}

TEST_F(DrainControlTest, ARemovedDeviceIsDetachedAndItsHeldAnswersDropped) {
  Start({});
  Fault(std::nullopt, 0);
  Fault(kPasid, 1);
  ASSERT_TRUE(manager_.Find("sim0")->ReadAvailable(~0ull).ok());  // answers held
  std::string log;
  SetLogSink([&log](LogLevel, const std::string& line) { log += line + "\n"; });
  EXPECT_EQ(manager_.OnUevent(KernelEvent("remove")), "sim0");
  SetLogSink(nullptr);
  // Its final counters: the two answers it held went out while its reader was being stopped
  // (the fault loop writes what is answered while it waits), before the park; nothing was
  // dropped, nothing is owed.
  EXPECT_THAT(log, HasSubstr("\"responses_written\":2,"));
  EXPECT_THAT(log, HasSubstr("\"responses_stale_dropped\":0,"));
  EXPECT_THAT(log, HasSubstr("\"outstanding\":0,"));
  EXPECT_EQ(manager_.Find("sim0"), nullptr);
  EXPECT_THAT(Path(), ElementsAre("running->detached"));
  bool removed = false;
  for (const Json& e : monitor_->replies) {
    removed |= e.value("event", "") == "device_removed" &&
               e.value("detail", "").find("device gone: remove") != std::string::npos;
  }
  EXPECT_TRUE(removed);
  // The two answers were dropped, not written: nothing stale reached the function.
  EXPECT_THAT(function_.violations(), IsEmpty());
  EXPECT_THAT(kernel_.violations(), IsEmpty());
  // A reload that still configures it attaches it again.
  EXPECT_EQ(Call("io.iopfd.ListDevices", Json::object())["parameters"]["devices"].size(), 0u);
}

TEST_F(DrainControlTest, VfioErrorAndRequestInterruptsAreWatched) {
  Start({});
  EXPECT_GE(kernel_.IrqEventfd(uapi::kVfioPciErrIrqIndex), 0);
  EXPECT_GE(kernel_.IrqEventfd(uapi::kVfioPciReqIrqIndex), 0);
  EXPECT_NE(kernel_.IrqEventfd(uapi::kVfioPciErrIrqIndex),
            kernel_.IrqEventfd(uapi::kVfioPciReqIrqIndex));
  EXPECT_EQ(irqs_.watched(), 2u);
}

TEST_F(DrainControlTest, AnErrorInterruptHoldsTheDeviceUntilTheRecoverySucceeds) {
  Start({});
  Fault(kPasid, 0);
  host_.Turn();
  EXPECT_TRUE(manager_.OnVfioIrq("sim0", uapi::kVfioPciErrIrqIndex));
  EXPECT_EQ(DeviceEntry()["state"], "halted");
  EXPECT_FALSE(manager_.OnVfioIrq("sim0", uapi::kVfioPciErrIrqIndex));  // already held
  EXPECT_EQ(manager_.OnUevent(KernelEvent("change", "SUCCESSFUL_RECOVERY")), "sim0");
  EXPECT_EQ(DeviceEntry()["state"], "running");
  Fault(kPasid, 1);
  ExpectClean();
}

TEST_F(DrainControlTest, ARequestInterruptParksAndReleasesTheDevice) {
  Start({});
  Fault(std::nullopt, 0);
  Fault(kPasid, 1);
  ASSERT_TRUE(manager_.Find("sim0")->ReadAvailable(~0ull).ok());  // answers held
  Fault(kPasid, 2);                                               // queued
  std::string log;
  SetLogSink([&log](LogLevel, const std::string& line) { log += line + "\n"; });
  EXPECT_TRUE(manager_.OnVfioIrq("sim0", uapi::kVfioPciReqIrqIndex));
  SetLogSink(nullptr);
  EXPECT_EQ(manager_.Find("sim0"), nullptr);
  EXPECT_EQ(irqs_.watched(), 0u);
  EXPECT_THAT(Path(), ElementsAre("running->detached"));
  // Let go after its reader stopped and it was parked: the two answers it held went out while
  // the reader stopped, before the park (the function still held their tags); the park's
  // auto-response answered the third, still queued. Nothing owed.
  EXPECT_THAT(log, HasSubstr("\"responses_written\":2,"));
  EXPECT_THAT(log, HasSubstr("\"responses_stale_dropped\":0,"));
  EXPECT_THAT(log, HasSubstr("\"outstanding\":0,"));
  EXPECT_EQ(kernel_.ReadAndUnanswered(), 0u);
  function_.CheckNothingLost();
  EXPECT_THAT(function_.violations(), IsEmpty());
  EXPECT_FALSE(manager_.OnVfioIrq("sim0", uapi::kVfioPciReqIrqIndex));
}

TEST_F(AdoptDrainTest, TheOwnersInterruptsAreLeftAlone) {
  manager_.set_irq_watcher(&irqs_);
  Adopt(/*with_device_fd=*/true, {});
  EXPECT_EQ(kernel_.IrqEventfd(uapi::kVfioPciErrIrqIndex), -1);
  EXPECT_EQ(irqs_.watched(), 0u);
}

TEST_F(DrainControlTest, RemovingADeviceMidDrainForgetsItsDrain) {
  Start({HaltMethod::kOwner, 50});
  ASSERT_EQ(Call("io.iopfd.Drain", {{"device", "sim0"}})["parameters"]["state"], "halting");
  ASSERT_TRUE(manager_.NextDeadline().has_value());
  ReloadReport r = manager_.Apply({});
  EXPECT_THAT(r.removed, ElementsAre("sim0"));
  EXPECT_FALSE(manager_.NextDeadline().has_value());
  EXPECT_EQ(manager_.DrainOf("sim0"), nullptr);
  EXPECT_EQ(Call("io.iopfd.Halt", {{"device", "sim0"}})["error"], "io.iopfd.NoSuchDevice");
}

// The whole method table (issue 12): every method that changes anything is refused to a peer
// that is only in control.group and allowed to the admin group and root; the read-only ones are
// open to all three. The lists here are the test's own: a method registered without being put
// in one of them fails, and so does one whose table entry is wrong.
TEST_F(DrainControlTest, EveryMethodIsAuthorizedAsItsTableSays) {
  Start({});
  service_.set_policy({.control_group = 100, .admin_group = 200});
  const std::vector<std::pair<std::string, Json>> read_only = {
      {"org.varlink.service.GetInfo", Json::object()},
      {"org.varlink.service.GetInterfaceDescription", {{"interface", "io.iopfd"}}},
      {"io.iopfd.GetStatus", Json::object()},
      {"io.iopfd.ListDevices", Json::object()},
      {"io.iopfd.GetStats", {{"device", "sim0"}}},
      {"io.iopfd.Monitor", Json::object()},
  };
  const std::vector<std::pair<std::string, Json>> admin_only = {
      {"io.iopfd.SetLogLevel", {{"level", "info"}}},
      {"io.iopfd.Halt", {{"device", "sim0"}}},
      {"io.iopfd.Resume", {{"device", "sim0"}}},
      {"io.iopfd.Drain", {{"device", "sim0"}}},
      {"io.iopfd.Reset", {{"device", "sim0"}}},
      {"io.iopfd.Reload", Json::object()},
      {"io.iopfd.Adopt", {{"config", "name = \"x\""}}},
      {"io.iopfd.Detach", {{"device", "nosuch"}}},
      {"io.iopfd.SetBudget", {{"device", "sim0"}, {"max_resident", nullptr}}},
      {"io.iopfd.Evict", {{"device", "sim0"}, {"iova", 0x100000}, {"length", 4096}}},
  };
  std::vector<std::string> listed;
  listed.reserve(read_only.size() + admin_only.size());
  for (const auto& [m, p] : read_only) listed.push_back(m);
  for (const auto& [m, p] : admin_only) listed.push_back(m);
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(service_.MethodNames(), listed) << "a method is missing from this test's lists";
  for (const std::string& m : service_.MethodNames()) {
    EXPECT_TRUE(service_.AccessOf(m).has_value()) << m << " has no access entry";
  }

  const Peer control{.pid = 2, .uid = 1000, .gid = 1000, .groups = {100}};
  const Peer admin{.pid = 2, .uid = 1001, .gid = 1001, .groups = {200}};
  const Peer root{.pid = 2, .uid = 0, .gid = 0, .groups = {}};
  auto denied = [](const Json& r) { return r.value("error", "") == "io.iopfd.PermissionDenied"; };
  for (const auto& [m, p] : admin_only) {
    Json r = CallAs(control, m, p);
    EXPECT_TRUE(denied(r)) << m << " as a control-group peer: " << r.dump();
  }
  EXPECT_EQ(DeviceEntry()["state"], "running") << "a refused call changed something";
  for (const Peer& peer : {control, admin, root}) {
    for (const auto& [m, p] : read_only) {
      Json r = CallAs(peer, m, p, /*more=*/m == "io.iopfd.Monitor");
      EXPECT_FALSE(r.contains("error")) << m << " as uid " << peer.uid << ": " << r.dump();
    }
  }
  for (const Peer& peer : {admin, root}) {
    for (const auto& [m, p] : admin_only) {
      Json r = CallAs(peer, m, p);
      EXPECT_FALSE(denied(r)) << m << " as uid " << peer.uid << ": " << r.dump();
    }
    host_.Turn();
  }
}

}  // namespace
}  // namespace iopfd::sim

namespace iopfd::sim {
namespace {

// Bytes the simulated kernel holds mapped, all IOAS together.
uint64_t KernelMapped(const SimKernel& kernel) {
  uint64_t total = 0;
  for (const auto& [key, len] : kernel.mappings()) total += len;
  return total;
}

// Budgets and eviction as an operator or a VMM drives them: SetBudget lowers what the device
// holds at once, Evict unmaps a range and a later fault maps it again; errors name what is wrong.
TEST_F(DrainControlTest, SetBudgetAndEvictOverTheControlSocket) {
  whole_units_ = true;  // the test counts 64 KiB units
  Start({});
  for (uint64_t page = 0; page < 128; page += 16) Fault(std::nullopt, page);  // 8 units of 64 KiB
  host_.Turn();
  ASSERT_EQ(KernelMapped(kernel_), 8u * 65536);
  Json r = Call("io.iopfd.SetBudget", {{"device", "sim0"}, {"max_resident", 4 * 65536}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_LE(r["parameters"]["resident_bytes"].get<uint64_t>(), 4u * 65536);
  EXPECT_LE(KernelMapped(kernel_), 4u * 65536) << "lowered at once, not at the next fault";
  EXPECT_EQ(Stats().paging.budget_bytes, 4u * 65536);
  // GetStats shows the daemon's scope and each space's, in JSON and in Prometheus.
  Json stats = Call("io.iopfd.GetStats", {{"format", "prometheus"}})["parameters"];
  EXPECT_EQ(stats["paging"]["daemon"]["resident_bytes"], KernelMapped(kernel_));
  ASSERT_EQ(stats["paging"]["spaces"].size(), 2u);
  EXPECT_EQ(stats["paging"]["spaces"][0]["device"], "sim0");
  EXPECT_FALSE(stats["paging"]["spaces"][0].contains("pasid"));
  EXPECT_EQ(stats["paging"]["spaces"][1]["pasid"], kPasid);
  EXPECT_EQ(stats["paging"]["spaces"][0]["counters"]["resident_bytes"], KernelMapped(kernel_));
  EXPECT_THAT(
      stats["text"].get<std::string>(),
      AllOf(HasSubstr(absl::StrCat("\niopfd_daemon_resident_bytes ", KernelMapped(kernel_), "\n")),
            HasSubstr("iopfd_space_resident_bytes{device=\"sim0\",pasid=\"none\"} "),
            HasSubstr("iopfd_space_resident_budget_bytes{device=\"sim0\",pasid=\"5\"} 0\n")));
  // Faults beyond it are served within it.
  for (uint64_t page = 128; page < 256; page += 16) Fault(std::nullopt, page);
  host_.Turn();
  EXPECT_LE(KernelMapped(kernel_), 4u * 65536);
  // Evict the unit at 0x100000 + 240 pages: gone from the kernel, and mapped again on a fault.
  const uint64_t unit = 0x100000 + 240 * 4096;
  ASSERT_TRUE(kernel_.mappings().count({kernel_.mappings().begin()->first.first, unit}) != 0);
  r = Call("io.iopfd.Evict", {{"device", "sim0"}, {"iova", unit + 4096}, {"length", 4096}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_EQ(r["parameters"]["evicted_bytes"], 65536) << "the unit the range cuts goes whole";
  EXPECT_EQ(kernel_.mappings().count({kernel_.mappings().begin()->first.first, unit}), 0u);
  Fault(std::nullopt, 241);
  host_.Turn();
  EXPECT_EQ(Stats().responses_invalid, 0u);
  // Unbounded again.
  r = Call("io.iopfd.SetBudget", {{"device", "sim0"}, {"max_resident", nullptr}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_EQ(Stats().paging.budget_bytes, 0u);
  // Errors.
  r = Call("io.iopfd.SetBudget", {{"device", "sim0"}, {"max_resident", 4096}});
  EXPECT_EQ(r["error"], "io.iopfd.InvalidRange");
  EXPECT_THAT(r["parameters"]["reason"].get<std::string>(), HasSubstr("cannot hold one map unit"));
  r = Call("io.iopfd.SetBudget", {{"device", "sim0"}, {"pasid", 77}, {"max_resident", 1 << 20}});
  EXPECT_EQ(r["error"], "io.iopfd.NoSuchPasid");
  r = Call("io.iopfd.SetBudget", {{"device", "nope"}, {"max_resident", 1 << 20}});
  EXPECT_EQ(r["error"], "io.iopfd.NoSuchDevice");
  r = Call("io.iopfd.Evict", {{"device", "sim0"}, {"iova", 0x10}, {"length", 4096}});
  EXPECT_EQ(r["error"], "io.iopfd.InvalidRange");
  EXPECT_THAT(r["parameters"]["reason"].get<std::string>(),
              HasSubstr("0x10 is outside every region"));
  r = Call("io.iopfd.Evict", {{"device", "sim0"}, {"iova", 0x100000}});
  EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
  ExpectClean();
}

// A Reload whose only change is a budget applies it to the running device: not restarted.
TEST_F(DrainControlTest, AReloadThatChangesOnlyABudgetKeepsTheDevice) {
  Start({});
  for (uint64_t page = 0; page < 128; page += 16) Fault(std::nullopt, page);
  host_.Turn();
  const Device* before = manager_.Find("sim0");
  DeviceConfig config = before->config();
  config.limits.max_resident = 2 * 65536;
  config.spaces[0].max_resident = 65536;
  ReloadReport r = manager_.Apply({config});
  EXPECT_THAT(r.kept, ElementsAre("sim0"));
  EXPECT_THAT(r.restarted, IsEmpty());
  EXPECT_EQ(manager_.Find("sim0"), before);
  EXPECT_EQ(Stats().paging.budget_bytes, 2u * 65536);
  EXPECT_LE(KernelMapped(kernel_), 65536u) << "the space's budget, applied at once";
  ExpectClean();
}

}  // namespace
}  // namespace iopfd::sim
