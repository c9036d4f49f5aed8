// The drain state machine driving iopfd's real Device and fault processor on the simulated
// kernel and PRI function: every sequence ends with the function having seen no stale or
// unexpected answer and no group lost.
#include "iopfd/device/drain.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sim_kernel.h"

namespace iopfd::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr uint32_t kPasid = 5;

// Stands in for the fault loop: no ring, so stopping and restarting the reader is bookkeeping.
class FakeIo : public DrainIo {
 public:
  bool Quiesce(Device&) override {
    ++quiesces;
    reading = false;
    return true;
  }
  void Rearm(Device&) override { reading = true; }
  bool reading = true;
  int quiesces = 0;
};

class DrainTest : public ::testing::Test {
 protected:
  void Build(DrainOptions options) {
    ListenFds none;
    auto d = Device::Attach(SimVfioDevice("sim0", {std::nullopt, kPasid}, 1 << 20), &none, &kernel_,
                            ReadLimits{64});
    ASSERT_TRUE(d.ok()) << d.status();
    device_ = *std::move(d);
    drain_.emplace(device_.get(), &io_, options);
    drain_->on_transition = [this](const DrainTransition& t) {
      path_.push_back(DrainStateName(t.to));
    };
  }
  PageRequest Fault(std::optional<uint32_t> pasid, uint64_t page) {
    auto g = function_.IssueGroup(pasid, 0x100000 + page * 4096, uapi::kPermRead, 1);
    kernel_.DeliverRequests(g);
    return g[0];
  }
  // One turn of the loop, through the seam: read what is queued, resolve, but keep the answers.
  void ReadOnly() { ASSERT_TRUE(device_->ReadAvailable(~0ull).ok()); }
  void Turn() {
    ReadOnly();
    ASSERT_TRUE(device_->WriteQueued().ok());
  }
  void ExpectClean() {
    Turn();
    function_.CheckNothingLost();
    EXPECT_THAT(function_.violations(), IsEmpty()) << function_.violations()[0].detail;
    EXPECT_THAT(kernel_.violations(), IsEmpty());
    EXPECT_EQ(device_->stats().outstanding(), 0u);
  }

  PriDevice function_;
  SimKernel kernel_{&function_};
  std::unique_ptr<Device> device_;
  FakeIo io_;
  std::optional<DrainController> drain_;
  std::vector<std::string> path_;
};

TEST_F(DrainTest, OwnerDrainWaitsForHaltThenFlushesAndResumes) {
  Build({HaltMethod::kOwner, 1000});
  Fault(std::nullopt, 0);
  Fault(kPasid, 1);
  ReadOnly();              // both read, answers held
  Fault(std::nullopt, 2);  // queued
  ASSERT_TRUE(drain_->Drain(std::nullopt, "operator", 0).ok());
  EXPECT_EQ(drain_->state(), DrainState::kHalting);
  drain_->Tick(999);
  EXPECT_EQ(drain_->state(), DrainState::kHalting);
  function_.HaltDma();  // the owner stops its DMA, then confirms
  ASSERT_TRUE(drain_->Halt("owner confirmed", 500).ok());
  EXPECT_THAT(path_, ElementsAre("halting", "flushing", "resuming", "running"));
  EXPECT_EQ(drain_->epoch(), 1u);
  EXPECT_TRUE(io_.reading);
  // The held answers were written before the park; the queued group was answered by the
  // kernel. Nothing stale, nothing lost.
  EXPECT_EQ(kernel_.auto_responses(), 1u);
  EXPECT_EQ(device_->stats().responses_stale_dropped, 0u);
  function_.ResumeDma();
  Fault(std::nullopt, 3);
  ExpectClean();
}

TEST_F(DrainTest, OwnerThatNeverConfirmsGetsTheDeviceQuarantined) {
  Build({HaltMethod::kOwner, 1000});
  ASSERT_TRUE(drain_->Drain(std::nullopt, "operator", 0).ok());
  drain_->Tick(1000);
  EXPECT_EQ(drain_->state(), DrainState::kQuarantined);
  EXPECT_EQ(device_->stats().quarantines, 1u);
  // Quarantined: parked (the kernel answers) and whatever is read is refused.
  Fault(std::nullopt, 0);
  Turn();
  EXPECT_EQ(kernel_.auto_responses(), 1u);
  EXPECT_EQ(drain_->Drain(std::nullopt, "again", 0).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(drain_->Resume("operator", 0).ok());
  EXPECT_EQ(drain_->state(), DrainState::kRunning);
  EXPECT_FALSE(device_->quarantined());
  Fault(std::nullopt, 1);
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 1u);
}

TEST_F(DrainTest, ResetParksBeforeTheFlrSoNothingStaleReachesTheFunction) {
  Build({HaltMethod::kReset, 0});
  for (uint64_t p = 0; p < 4; ++p) Fault(std::nullopt, p);
  ReadOnly();                                         // four answers held
  for (uint64_t p = 4; p < 8; ++p) Fault(kPasid, p);  // four queued on the PASID
  ASSERT_TRUE(drain_->Reset("AER", 0).ok());
  EXPECT_THAT(path_,
              ElementsAre("halting", "flushing", "resetting", "flushing", "resuming", "running"));
  EXPECT_EQ(device_->stats().function_resets, 1u);
  // The function forgot nothing it was still waiting for: every tag was answered before FLR.
  EXPECT_EQ(function_.forgotten(), 0u);
  function_.ResumeDma();
  for (uint64_t p = 0; p < 8; ++p) Fault(p % 2 ? std::optional(kPasid) : std::nullopt, p);
  ExpectClean();
}

TEST_F(DrainTest, RequestsIssuedUpToTheFlrAreFlushedByThePark) {
  // The reset method: the function's DMA runs until the FLR stops it, so it keeps faulting
  // while the drain parks and flushes. Every request it sends before the reset must be answered
  // while it still holds the tag: parked attachments get the kernel's INVALID at once.
  Build({HaltMethod::kReset, 0});
  uint64_t page = 0;
  kernel_.before_ioctl = [&](unsigned long request) {
    if (request == uapi::kVfioDeviceReset && !function_.halted()) {
      Fault(std::nullopt, page++);
      Fault(kPasid, page++);
    }
  };
  ASSERT_TRUE(drain_->Reset("AER", 0).ok());
  EXPECT_EQ(page, 2u);
  EXPECT_EQ(function_.forgotten(), 0u);
  kernel_.before_ioctl = nullptr;
  function_.ResumeDma();
  Fault(std::nullopt, 10);
  ExpectClean();
}

// A group can reach the fault queue after the park: the IOMMU driver matched it to the IOPF
// HWPT before the replace and hands it over after the kernel's auto-response (SimKernel::
// DeliverLate). The flush after the park reads and answers it while the function still holds
// its tag; left for later, it would be answered after the FLR, to a function that forgot it.
TEST_F(DrainTest, AGroupThatRacedTheParkIsAnsweredBeforeTheReset) {
  Build({HaltMethod::kReset, 0});
  const uint32_t rid_hwpt = kernel_.AttachedHwpt(std::nullopt);
  std::vector<PageRequest> late = function_.IssueGroup(std::nullopt, 0x100000, uapi::kPermRead, 1);
  bool delivered = false;
  kernel_.after_ioctl = [&](unsigned long request, int rc) {
    if (request == uapi::kVfioDeviceAttachIommufdPt && rc == 0 && !delivered &&
        kernel_.AttachedHwpt(std::nullopt) != rid_hwpt) {
      kernel_.DeliverLate(late, rid_hwpt);
      delivered = true;
    }
  };
  ASSERT_TRUE(drain_->Reset("AER", 0).ok());
  kernel_.after_ioctl = nullptr;
  ASSERT_TRUE(delivered);
  EXPECT_EQ(function_.forgotten(), 0u) << "the late group was still outstanding at the FLR";
  EXPECT_THAT(function_.violations(), IsEmpty()) << function_.violations()[0].detail;
  function_.ResumeDma();
  Fault(std::nullopt, 1);
  ExpectClean();
}

// A group that reaches the fault queue during the reset was issued before the FLR: the function
// forgot it. The flush after the reset answers it before the device runs again, while no new
// group can hold its PRG index (the function sees an unexpected index, which it discards);
// left for the first read after the resume, the answer would complete the new group that
// reuses the index (a reset function starts its indices over).
TEST_F(DrainTest, AGroupThatArrivesDuringTheResetIsAnsweredBeforeTheDeviceRunsAgain) {
  Build({HaltMethod::kReset, 0});
  const uint32_t rid_hwpt = kernel_.AttachedHwpt(std::nullopt);
  std::vector<PageRequest> late = function_.IssueGroup(std::nullopt, 0x100000, uapi::kPermRead, 1);
  kernel_.after_ioctl = [&](unsigned long request, int rc) {
    if (request == uapi::kVfioDeviceReset && rc == 0) kernel_.DeliverLate(late, rid_hwpt);
  };
  ASSERT_TRUE(drain_->Reset("AER", 0).ok());
  kernel_.after_ioctl = nullptr;
  EXPECT_EQ(function_.forgotten(), 1u);
  EXPECT_EQ(kernel_.ReadAndUnanswered(), 0u);
  function_.ResumeDma();
  const PageRequest next = Fault(std::nullopt, 1);
  ASSERT_EQ(next.prg_index, late[0].prg_index) << "the test needs the index reused";
  Turn();
  function_.CheckNothingLost();
  ASSERT_EQ(function_.violations().size(), 1u);
  EXPECT_EQ(function_.violations()[0].kind, ViolationKind::kUnexpectedPrgIndex)
      << function_.violations()[0].detail;
  EXPECT_THAT(kernel_.violations(), IsEmpty());
}

TEST_F(DrainTest, APasidDrainParksOnlyItsAttachment) {
  Build({HaltMethod::kOwner, 1000});
  ASSERT_TRUE(drain_->Drain(kPasid, "operator", 0).ok());
  // While the owner has not confirmed, the other attachment keeps being served.
  Fault(std::nullopt, 0);
  Turn();
  EXPECT_EQ(device_->stats().responses_success, 1u);
  ASSERT_TRUE(drain_->Halt("owner", 0).ok());
  EXPECT_EQ(drain_->state(), DrainState::kRunning);
  EXPECT_FALSE(device_->parked(std::nullopt));
  EXPECT_EQ(drain_->Drain(9u, "no such PASID", 0).code(), absl::StatusCode::kNotFound);
  ExpectClean();
}

TEST_F(DrainTest, HaltHoldsUntilResume) {
  Build({HaltMethod::kOwner, 1000});
  Fault(std::nullopt, 0);
  ReadOnly();
  function_.HaltDma();
  ASSERT_TRUE(drain_->Halt("owner", 0).ok());
  EXPECT_EQ(drain_->state(), DrainState::kHalted);
  EXPECT_TRUE(device_->parked(std::nullopt));
  EXPECT_TRUE(io_.reading);
  EXPECT_EQ(drain_->Halt("twice", 0).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(drain_->Resume("owner", 0).ok());
  EXPECT_THAT(path_, ElementsAre("halting", "flushing", "halted", "resuming", "running"));
  function_.ResumeDma();
  Fault(std::nullopt, 1);
  ExpectClean();
}

TEST_F(DrainTest, AReaderThatCannotStopGetsTheDeviceQuarantined) {
  Build({HaltMethod::kReset, 0});
  // The fault loop could not stop its read (its ring failed): nothing may touch the queue.
  struct Busy : DrainIo {
    bool Quiesce(Device&) override { return false; }
    void Rearm(Device&) override {}
  } busy;
  DrainController c(device_.get(), &busy, {HaltMethod::kReset, 0});
  std::string cause;
  c.on_transition = [&cause](const DrainTransition& t) { cause = t.cause; };
  absl::Status st = c.Reset("AER", 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(c.state(), DrainState::kQuarantined);
  EXPECT_THAT(cause, HasSubstr("reader could not be stopped"));
}

}  // namespace
}  // namespace iopfd::sim
