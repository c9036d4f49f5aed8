// Demand paging on iopfd's real Device and fault processor over the simulated kernel, which
// refuses an unmap that cuts a mapping (io_pagetable.c) and checks that every SUCCESS answer
// finds its pages mapped: budgets hold, nothing is evicted under a queued answer, every group is
// answered once, and drains compose with eviction.
#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/device/drain.h"
#include "iopfd/fault/pager.h"
#include "sim_kernel.h"

namespace iopfd::sim {
namespace {

using ::testing::IsEmpty;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kUnit = 4 * kPage;
constexpr uint64_t kBase = 0x100000;

class NoIo : public DrainIo {
 public:
  bool Quiesce(Device&) override { return true; }
  void Rearm(Device&) override {}
};

class PagingSimTest : public ::testing::Test {
 protected:
  void Build(std::optional<uint64_t> space_budget, std::optional<uint64_t> device_budget,
             std::optional<bool> dirty_tracking = std::nullopt) {
    DeviceConfig c = SimVfioDevice("sim0", {std::nullopt}, 1 << 20);
    c.spaces[0].regions[0].map_unit = kUnit;
    // Whole units from the first touch: these tests count units (first touches by the page:
    // PartialUnitsSimTest).
    c.spaces[0].regions[0].first_touch_page = first_touch_page_;
    c.spaces[0].max_resident = space_budget;
    c.spaces[0].dirty_tracking = dirty_tracking;
    c.limits.max_resident = device_budget;
    ListenFds none;
    auto d = Device::Attach(c, &none, &kernel_, ReadLimits{64});
    ASSERT_TRUE(d.ok()) << d.status();
    device_ = *std::move(d);
    pager_.emplace(PagerOptions{});
    device_->UsePager(&*pager_);
  }
  void Fault(uint64_t unit) {
    kernel_.DeliverRequests(
        function_.IssueGroup(std::nullopt, kBase + unit * kUnit + kPage, uapi::kPermRead, 1));
  }
  // One turn through the synchronous seam: read and resolve what is queued, write the answers
  // (and what waited for room once they were written).
  void Turn() {
    ASSERT_TRUE(device_->ReadAvailable(~0ull).ok());
    ASSERT_TRUE(device_->WriteQueued().ok());
  }
  // Whether `unit` is mapped in the no-PASID attachment's IOAS.
  bool UnitMapped(uint64_t unit) const {
    const uint32_t ioas = kernel_.IoasOf(kernel_.AttachedHwpt(std::nullopt));
    return kernel_.mappings().count({ioas, kBase + unit * kUnit}) != 0;
  }
  // The function writes a page of `unit`.
  void Write(uint64_t unit) {
    kernel_.DeviceWrites(kernel_.IoasOf(kernel_.AttachedHwpt(std::nullopt)),
                         kBase + unit * kUnit + kPage);
  }
  // Fills a four-unit budget with units 0..3, has the function write unit 0, and faults unit 4.
  void FillWriteAndFaultOneMore() {
    for (uint64_t u = 0; u < 4; ++u) {
      Fault(u);
      Turn();
    }
    Write(0);
    Fault(4);
    Turn();
  }
  uint64_t Mapped() const {
    uint64_t total = 0;
    for (const auto& [key, len] : kernel_.mappings()) total += len;
    return total;
  }
  void ExpectClean() {
    Turn();
    function_.CheckNothingLost();
    EXPECT_THAT(function_.violations(), IsEmpty()) << ViolationName(function_.violations()[0].kind)
                                                   << ": " << function_.violations()[0].detail;
    EXPECT_THAT(kernel_.violations(), IsEmpty()) << kernel_.violations()[0];
    EXPECT_EQ(kernel_.unmap_splits_refused(), 0u);
    EXPECT_EQ(device_->stats().outstanding(), 0u);
  }

  PriDevice function_;
  SimKernel kernel_{&function_};
  std::optional<Pager> pager_;
  std::unique_ptr<Device> device_;
  bool first_touch_page_ = false;
};

// A working set four times the budget, in batches of eight groups (twice what the budget
// holds): what the kernel has mapped never exceeds the budget, every group is answered SUCCESS
// with its page mapped when the answer reached the kernel, and units come back after eviction.
TEST_F(PagingSimTest, AWorkingSetFourTimesTheBudgetIsServedWithinIt) {
  Build(4 * kUnit, std::nullopt);
  for (int round = 0; round < 2; ++round) {
    for (uint64_t first = 0; first < 16; first += 8) {
      for (uint64_t u = first; u < first + 8; ++u) Fault(u);
      Turn();
      EXPECT_LE(Mapped(), 4 * kUnit);
    }
  }
  ExpectClean();
  const DeviceStats& s = device_->stats();
  EXPECT_EQ(s.responses_success, 32u);
  EXPECT_EQ(s.responses_invalid, 0u);
  EXPECT_GT(s.paging.deferred_groups, 0u) << "batches larger than the budget waited";
  EXPECT_GT(s.paging.evicted_units, 0u);
  EXPECT_GT(kernel_.unmap_calls(), 0u);
  EXPECT_EQ(s.paging.resident_bytes, Mapped());
  EXPECT_GT(s.paging.refaults, 0u);
}

// A drained (parked) device's units can be evicted, and the groups the kernel answered at the
// park are not answered again; after the resume, faults are served within the budget.
TEST_F(PagingSimTest, EvictionComposesWithADrain) {
  Build(std::nullopt, 4 * kUnit);
  NoIo io;
  DrainController drain(device_.get(), &io, {HaltMethod::kReset, 0});
  for (uint64_t u = 0; u < 4; ++u) Fault(u);
  Turn();
  EXPECT_EQ(Mapped(), 4 * kUnit);
  Fault(9);  // queued when the drain parks: the kernel answers it
  ASSERT_TRUE(drain.Reset("test", 0).ok());
  EXPECT_EQ(drain.state(), DrainState::kRunning);
  EXPECT_EQ(function_.forgotten(), 0u);
  EXPECT_EQ(kernel_.auto_responses(), 1u) << "the queued group, answered by the kernel at the park";
  function_.ResumeDma();
  for (uint64_t u = 20; u < 28; ++u) Fault(u);
  Turn();
  EXPECT_LE(Mapped(), 4 * kUnit);
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 12u);
}

// Vfio mode: where the IOMMU has dirty bits (IOMMU_GET_HW_INFO), iopfd allocates its HWPT with
// them and turns tracking on; a unit the function wrote is spared by the next eviction, which
// takes the two oldest clean units (low watermark: 4 units less 1/32, one more to map).
TEST_F(PagingSimTest, VfioModeUsesTheIommusDirtyBitsWhereItHasThem) {
  kernel_.hw_capabilities = uapi::kHwCapDirtyTracking;
  Build(4 * kUnit, std::nullopt);
  FillWriteAndFaultOneMore();
  EXPECT_TRUE(UnitMapped(0)) << "the written unit was evicted";
  EXPECT_FALSE(UnitMapped(1));
  EXPECT_FALSE(UnitMapped(2));
  EXPECT_TRUE(UnitMapped(3) && UnitMapped(4));
  EXPECT_EQ(device_->stats().paging.dirty_second_chances, 1u);
  EXPECT_GT(kernel_.dirty_reads(), 0u);
  ExpectClean();
}

// Without the capability nothing asks for dirty bits (a HWPT asking would be refused), and the
// oldest unit goes.
TEST_F(PagingSimTest, NoDirtyBitsWithoutTheCapabilityOrWhenTurnedOff) {
  Build(4 * kUnit, std::nullopt);
  FillWriteAndFaultOneMore();
  EXPECT_FALSE(UnitMapped(0));
  EXPECT_EQ(kernel_.dirty_reads(), 0u);
  EXPECT_EQ(device_->stats().paging.dirty_second_chances, 0u);
  ExpectClean();
}

// With the capability, dirty_tracking = false leaves it unused.
TEST_F(PagingSimTest, DirtyTrackingFalseLeavesTheCapabilityUnused) {
  kernel_.hw_capabilities = uapi::kHwCapDirtyTracking;
  Build(4 * kUnit, std::nullopt, /*dirty_tracking=*/false);
  FillWriteAndFaultOneMore();
  EXPECT_FALSE(UnitMapped(0));
  EXPECT_EQ(kernel_.dirty_reads(), 0u);
  ExpectClean();
}

}  // namespace
}  // namespace iopfd::sim
