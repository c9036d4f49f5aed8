// Adopt mode across a restart of iopfd, on the real Device over the simulated kernel: the IOAS
// is the owner's and keeps what the previous process mapped. With the map record that process
// kept (map_record.h), the next one takes those units back as resident and within its budgets,
// unmaps exactly the recorded units a changed layout no longer has, and never believes a unit
// mapped that is not (the simulated kernel checks every SUCCESS answer against its mappings).
#include <fcntl.h>
#include <sys/mman.h>

#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/fault/pager.h"
#include "iopfd/iommu/iommufd.h"
#include "iopfd/iommu/vfio_device.h"
#include "sim_kernel.h"

namespace iopfd::sim {
namespace {

using ::testing::IsEmpty;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kUnit = 4 * kPage;
constexpr uint64_t kBase = 0x100000;

class AdoptRestartTest : public ::testing::Test {
 protected:
  // The owner (a VMM): binds the function, allocates an IOAS, a fault queue and an IOPF-capable
  // HWPT, attaches it, and hands the iommufd and the fault queue to iopfd.
  void SetUp() override {
    auto iommufd = Iommufd::Open(&kernel_, "owner");
    ASSERT_TRUE(iommufd.ok()) << iommufd.status();
    owner_.emplace(*std::move(iommufd));
    auto vfio = VfioDevice::Bind(&kernel_, "owner", SimKernel::kCdev, *owner_);
    ASSERT_TRUE(vfio.ok()) << vfio.status();
    vfio_.emplace(*std::move(vfio));
    auto fault = owner_->FaultQueueAlloc();
    ASSERT_TRUE(fault.ok());
    auto ioas = owner_->IoasAlloc();
    ASSERT_TRUE(ioas.ok());
    ioas_ = *ioas;
    auto hwpt = owner_->HwptAlloc(vfio_->id(), ioas_, fault->first, false);
    ASSERT_TRUE(hwpt.ok());
    ASSERT_TRUE(vfio_->Attach(*hwpt, std::nullopt).ok());
    config_.name = "sim0";
    config_.mode = AttachMode::kAdopt;
    config_.adopt.iommufd_fd = "iommufd";
    config_.adopt.fault_fd = "fault";
    config_.adopt.device_id = vfio_->id().value();
    SpaceConfig s;
    s.ioas_id = ioas_.value();
    s.hwpt_id = hwpt->value();
    RegionConfig r;
    r.iova = kBase;
    r.size = 1 << 20;
    // A file that outlives each process, as a VMM's guest memory does (an anonymous backing is
    // a new memfd in every process: AnAnonymousBackingIsNotTakenBack).
    r.backing = BackingKind::kInheritedFd;
    r.fd_name = "ram0";
    r.access = uapi::kPermRead | uapi::kPermWrite;
    r.page_size = kPage;
    r.map_unit = kUnit;
    s.regions.push_back(r);
    config_.spaces.push_back(s);
    pool_.Add("iommufd", owner_->ReleaseFd());
    pool_.Add("fault", std::move(fault->second));
    pool_.Add("ram0", UniqueFd(memfd_create("ram0", MFD_CLOEXEC)));
  }

  // Starts an iopfd (a Device with its pager) on the handed-over descriptors, with a space
  // budget of `budget_units` units, taking back what `record` says a previous one held.
  void Start(std::optional<uint64_t> budget_units, std::unique_ptr<MapRecord> record = nullptr,
             uint64_t unit = kUnit) {
    DeviceConfig c = config_;
    c.spaces[0].regions[0].map_unit = unit;
    // Whole units unless a test maps partial ones: these tests count units.
    c.spaces[0].regions[0].first_touch_page = first_touch_page_;
    if (anonymous_) c.spaces[0].regions[0].backing = BackingKind::kAnonymous;
    if (budget_units) c.spaces[0].max_resident = *budget_units * kUnit;
    auto d = Device::Attach(c, &pool_, &kernel_, ReadLimits{64});
    ASSERT_TRUE(d.ok()) << d.status();
    device_ = *std::move(d);
    pager_.emplace(PagerOptions{});
    device_->UsePager(&*pager_);
    ASSERT_NE(device_->map_record(), nullptr);
    taken_ = device_->TakeBackMappings(std::move(record));
  }
  // The process goes away without unmapping anything (a crash, or a clean stop: either leaves
  // the owner's IOAS as it is); the descriptors go back to the store. Returns the map record
  // as the store would hand it back.
  std::unique_ptr<MapRecord> Stop() {
    auto record =
        MapRecord::Open("sim0", UniqueFd(fcntl(device_->map_record()->fd(), F_DUPFD_CLOEXEC, 0)));
    EXPECT_TRUE(record.ok()) << record.status();
    device_->ReleaseFds(&pool_);
    device_.reset();
    pager_.reset();
    return record.ok() ? *std::move(record) : nullptr;
  }
  void Fault(uint64_t unit) {
    kernel_.DeliverRequests(
        function_.IssueGroup(std::nullopt, kBase + unit * kUnit + kPage, uapi::kPermRead, 1));
  }
  void Turn() {
    ASSERT_TRUE(device_->ReadAvailable(~0ull).ok());
    ASSERT_TRUE(device_->WriteQueued().ok());
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
    EXPECT_EQ(device_->stats().outstanding(), 0u);
  }

  PriDevice function_;
  SimKernel kernel_{&function_};
  std::optional<Iommufd> owner_;
  std::optional<VfioDevice> vfio_;
  IoasId ioas_;
  DeviceConfig config_;
  ListenFds pool_;
  std::optional<Pager> pager_;
  std::unique_ptr<Device> device_;
  Device::TakenBack taken_;
  bool anonymous_ = false;
  bool first_touch_page_ = false;
};

// The owner replaces a mapping: it unmaps what iopfd mapped for `unit` and maps one page of its
// own there, through its own iommufd (the pool holds the one iopfd uses). Returns false on
// failure.
bool OwnerRemaps(SimKernel& kernel, ListenFds& pool, IoasId ioas, uint64_t unit_iova,
                 bool map_a_page) {
  auto fd = pool.Take("iommufd");
  if (!fd.ok()) return false;
  bool ok = true;
  {
    Iommufd own(UniqueFd(fd->get()), &kernel, "owner");
    ok = own.Unmap(ioas, unit_iova, kUnit).ok();
    if (ok && map_a_page) {
      MapRequest page;
      page.ioas = ioas;
      page.iova = unit_iova + 3 * kPage;
      page.length = kPage;
      page.fd = 99;  // the owner's memory: whatever it is, not iopfd's
      page.flags = uapi::kIoasMapReadable;
      ok = own.Map(page).ok();
    }
    (void)own.ReleaseFd().Release();
  }
  pool.Add("iommufd", *std::move(fd));
  return ok;
}

// Eight units resident under an unbounded space; the next process, with a budget of four, takes
// them back and evicts down to it at once: what the kernel has mapped is what iopfd counts.
TEST_F(AdoptRestartTest, WhatThePreviousProcessMappedCountsAgainstTheBudget) {
  Start(std::nullopt);
  for (uint64_t u = 0; u < 8; ++u) Fault(u);
  Turn();
  ASSERT_EQ(Mapped(), 8 * kUnit);
  EXPECT_EQ(device_->map_record()->held_count(), 8u);
  Start(4, Stop());
  EXPECT_EQ(taken_.units, 8u);
  EXPECT_EQ(taken_.remapped, 0u);
  EXPECT_EQ(taken_.failed, 0u);
  EXPECT_GE(taken_.evicted, 4u);
  EXPECT_LE(Mapped(), 4 * kUnit);
  EXPECT_EQ(device_->stats().paging.resident_bytes, Mapped());
  EXPECT_EQ(device_->map_record()->held_count() * kUnit, Mapped());
  // Served on: units still resident answer without a map, the others are mapped again, and
  // nothing is ever stuck (no unit is someone else's).
  const uint64_t maps_before = device_->stats().map_calls;
  for (uint64_t u = 0; u < 8; ++u) Fault(u);
  Turn();
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 8u);
  EXPECT_EQ(device_->stats().paging.unmap_failures, 0u);
  EXPECT_GT(device_->stats().map_calls, maps_before);
  EXPECT_LE(Mapped(), 4 * kUnit);
}

// Without the record the same restart leaves every unit the previous process mapped outside
// the budget (EEXIST, served as someone else's): the gap the record closes.
TEST_F(AdoptRestartTest, WithoutTheRecordThePreviousMappingsAreOutsideTheBudget) {
  Start(std::nullopt);
  for (uint64_t u = 0; u < 8; ++u) Fault(u);
  Turn();
  (void)Stop();
  Start(4);
  for (uint64_t u = 0; u < 8; ++u) Fault(u);
  Turn();
  ExpectClean();
  EXPECT_EQ(Mapped(), 8 * kUnit);
  EXPECT_EQ(device_->stats().paging.resident_bytes, 0u);
}

// The process after the next one finds the record where the next one went on writing it.
TEST_F(AdoptRestartTest, TheRecordIsCarriedThroughSeveralRestarts) {
  Start(std::nullopt);
  for (uint64_t u = 0; u < 6; ++u) Fault(u);
  Turn();
  Start(std::nullopt, Stop());
  EXPECT_EQ(taken_.units, 6u);
  for (uint64_t u = 6; u < 10; ++u) Fault(u);
  Turn();
  Start(3, Stop());
  EXPECT_EQ(taken_.units, 10u);
  EXPECT_LE(Mapped(), 3 * kUnit);
  EXPECT_EQ(device_->stats().paging.resident_bytes, Mapped());
  ExpectClean();
}

// A recorded unit that is gone (the previous process died between its unmap and the record's
// update, or the owner unmapped it) is mapped again, never believed mapped.
TEST_F(AdoptRestartTest, ARecordedUnitThatIsGoneIsMappedAgain) {
  Start(std::nullopt);
  for (uint64_t u = 0; u < 4; ++u) Fault(u);
  Turn();
  std::unique_ptr<MapRecord> record = Stop();
  ASSERT_TRUE(OwnerRemaps(kernel_, pool_, ioas_, kBase + 2 * kUnit, /*map_a_page=*/false));
  ASSERT_EQ(Mapped(), 3 * kUnit);
  Start(std::nullopt, std::move(record));
  EXPECT_EQ(taken_.units, 4u);
  EXPECT_EQ(taken_.remapped, 1u);
  EXPECT_EQ(Mapped(), 4 * kUnit);
  Fault(2);
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 1u);
}

// The owner replaced iopfd's mapping of unit 2 with one page of its own: the map call says
// EEXIST, but not all of the unit is mapped (the copy into a scratch IOAS fails), so it is left
// to its owner; the device's requests for its other pages are served page by page. (Taken back
// as resident, the other pages would be answered as mapped, and the simulated function would
// see a SUCCESS for a page with no translation.)
TEST_F(AdoptRestartTest, AUnitOnlyPartlyMappedIsLeftToItsOwner) {
  Start(std::nullopt);
  for (uint64_t u = 0; u < 4; ++u) Fault(u);
  Turn();
  std::unique_ptr<MapRecord> record = Stop();
  ASSERT_TRUE(OwnerRemaps(kernel_, pool_, ioas_, kBase + 2 * kUnit, /*map_a_page=*/true));
  Start(std::nullopt, std::move(record));
  EXPECT_EQ(taken_.units, 3u);
  EXPECT_EQ(taken_.partial, 1u);
  EXPECT_EQ(kernel_.copies(), 3u) << "each EEXIST checked: three units whole, one not";
  EXPECT_EQ(Mapped(), 3 * kUnit + kPage) << "the scratch IOAS and its copies are gone";
  Fault(2);  // page 1 of unit 2: not mapped, the owner's page is page 3
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 1u);
}

// Partial units (first_touch = "page"): recorded as held in part, and taken back with exactly
// the pages still mapped, each found by a copy of its own; a unit filled since is whole. The
// next process's budget counts the pages, and its evictions unmap each unit by its range.
TEST_F(AdoptRestartTest, PartialUnitsAreTakenBackWithTheirPages) {
  first_touch_page_ = true;
  Start(std::nullopt);
  for (uint64_t u = 0; u < 8; u += 2) Fault(u);  // page 1 of units 0, 2, 4 and 6, each alone
  Turn();
  ASSERT_EQ(Mapped(), 4 * kPage);
  ASSERT_EQ(device_->map_record()->held_count(), 4u);
  EXPECT_TRUE(device_->map_record()->Partial(0, 2));
  Start(std::nullopt, Stop());
  EXPECT_EQ(taken_.units, 4u);
  EXPECT_EQ(taken_.bytes, 4 * kPage);
  EXPECT_EQ(taken_.partial, 0u);
  EXPECT_EQ(kernel_.copies(), 4u) << "a copy succeeds for each page still mapped";
  EXPECT_EQ(Mapped(), 4 * kPage) << "the scratch IOAS and its copies are gone";
  EXPECT_EQ(device_->stats().paging.resident_bytes, 4 * kPage);
  // Page 2 of unit 0, beside page 1, fills it (its holes mapped); page 1 of unit 2 is resident
  // already.
  kernel_.DeliverRequests(
      function_.IssueGroup(std::nullopt, kBase + 2 * kPage, uapi::kPermRead, 1));
  Fault(2);
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 2u);
  EXPECT_EQ(Mapped(), kUnit + 3 * kPage);
  EXPECT_FALSE(device_->map_record()->Partial(0, 0));
  EXPECT_TRUE(device_->map_record()->Partial(0, 2));
  // Once more, under a budget of one unit: taken back (unit 0 whole: its map says EEXIST, one
  // copy of the unit; a copy per page of the other three), then evicted to the budget by whole
  // ranges.
  const uint64_t copies_before = kernel_.copies();
  Start(1, Stop());
  EXPECT_EQ(taken_.units, 4u);
  EXPECT_EQ(kernel_.copies() - copies_before, 1u + 3u);
  EXPECT_GT(taken_.evicted, 0u);
  EXPECT_LE(Mapped(), kUnit);
  EXPECT_EQ(device_->stats().paging.resident_bytes, Mapped());
  EXPECT_EQ(kernel_.unmap_splits_refused(), 0u);
  for (uint64_t u = 0; u < 8; u += 2) Fault(u);
  ExpectClean();
  EXPECT_EQ(device_->stats().responses_success, 4u);
  EXPECT_EQ(device_->stats().paging.resident_bytes, Mapped());
  // More pages alone than the budget holds: partial units are evicted, each by its unit's
  // range, and the kernel's count of what it unmapped is what iopfd held (no unmap failure).
  const uint64_t evicted_before = device_->stats().paging.evicted_units;
  for (uint64_t u = 8; u < 48; u += 2) Fault(u);
  ExpectClean();
  EXPECT_GE(device_->stats().paging.evicted_units - evicted_before, 4u);
  EXPECT_EQ(device_->stats().paging.unmap_failures, 0u);
  EXPECT_LE(Mapped(), kUnit);
  EXPECT_EQ(device_->stats().paging.resident_bytes, Mapped());
  EXPECT_EQ(kernel_.unmap_splits_refused(), 0u);
}

// An anonymous backing is a new memfd in every process: what the previous one mapped is its
// memory, not this one's, so each recorded unit is unmapped rather than taken back.
TEST_F(AdoptRestartTest, AnAnonymousBackingIsNotTakenBack) {
  anonymous_ = true;
  Start(std::nullopt);
  for (uint64_t u = 0; u < 4; ++u) Fault(u);
  Turn();
  Start(std::nullopt, Stop());
  EXPECT_EQ(taken_.units, 0u);
  EXPECT_EQ(taken_.unmapped, 4u);
  EXPECT_EQ(Mapped(), 0u);
  Fault(1);
  ExpectClean();
  EXPECT_EQ(Mapped(), kUnit);
}

// A changed map unit: the recorded units are not units of the new layout, so each is unmapped,
// exactly its range (no unmap cuts a mapping), and the new process maps its own.
TEST_F(AdoptRestartTest, UnitsOfAnotherLayoutAreUnmappedExactly) {
  Start(std::nullopt);
  for (uint64_t u = 0; u < 4; ++u) Fault(u);
  Turn();
  Start(std::nullopt, Stop(), 2 * kUnit);
  EXPECT_EQ(taken_.unmapped, 4u);
  EXPECT_EQ(taken_.units, 0u);
  EXPECT_EQ(Mapped(), 0u);
  EXPECT_EQ(kernel_.unmap_splits_refused(), 0u);
  EXPECT_EQ(device_->map_record()->held_count(), 0u);
  Fault(1);
  ExpectClean();
  EXPECT_EQ(Mapped(), 2 * kUnit);
  EXPECT_EQ(device_->stats().paging.resident_bytes, 2 * kUnit);
}

// Every eviction unrecords its units before the unmap call is made: at the moment of the call
// the record no longer holds them (a crash in the call leaves nothing recorded that may be
// gone).
TEST_F(AdoptRestartTest, EvictionUnrecordsBeforeItUnmaps) {
  Start(2);
  const MapRecord* record = device_->map_record();
  int checked = 0;
  kernel_.on_unmap = [&](uint32_t, uint64_t iova, uint64_t length) {
    for (uint64_t at = iova; at < iova + length; at += kUnit) {
      EXPECT_FALSE(record->Held(0, static_cast<uint32_t>((at - kBase) / kUnit))) << at;
      ++checked;
    }
  };
  for (uint64_t u = 0; u < 6; ++u) {
    Fault(u);
    Turn();
  }
  kernel_.on_unmap = nullptr;
  EXPECT_GT(checked, 0);
  EXPECT_EQ(record->held_count() * kUnit, Mapped());
  ExpectClean();
}

}  // namespace
}  // namespace iopfd::sim
