#include "iopfd/fault/fault_processor.h"

#include <cerrno>
#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/errors.h"
#include "testing/fake_mapper.h"

namespace iopfd {
namespace {

using iopfd_testing::FakeMapper;
using ::testing::ElementsAre;

constexpr uint64_t kPage = 4096;
constexpr uint32_t kDev = 7;
constexpr uint32_t kRW = uapi::kPermRead | uapi::kPermWrite;

uapi::PageFault Rec(uint32_t cookie, uint64_t addr, uint32_t perm = uapi::kPermRead,
                    std::optional<uint32_t> pasid = std::nullopt, uint32_t length = 0) {
  uapi::PageFault r{};
  r.flags = uapi::kPgfaultLastPage | (pasid ? uint32_t{uapi::kPgfaultPasidValid} : 0u);
  r.dev_id = kDev;
  r.pasid = pasid.value_or(0);
  r.grpid = cookie & 0x1ff;
  r.perm = perm;
  r.addr = addr;
  r.length = length;
  r.cookie = cookie;
  return r;
}

class FaultProcessorTest : public ::testing::Test {
 protected:
  // Space without PASID: [1 MiB, 1 MiB + 64 KiB) rw, [2 MiB, 2 MiB + 64 KiB) read-only with a
  // 16 KiB prefetch window. Space of PASID 5: [1 MiB, 1 MiB + 64 KiB) rw, IOAS 9.
  void SetUp() override { Build(); }

  void Build(FaultProcessorOptions opts = {.device_id = kDev}, uint64_t unit_bytes = 0) {
    std::vector<Region> none;
    none.emplace_back(1 << 20, 16 * kPage, kPage, kRW, 0, 100, 0, nullptr, unit_bytes);
    none.emplace_back(2 << 20, 16 * kPage, kPage, uapi::kPermRead, 4 * kPage, 101, 8192, nullptr,
                      unit_bytes);
    std::vector<Region> p5;
    p5.emplace_back(1 << 20, 16 * kPage, kPage, kRW, 0, 102, 0, nullptr);
    std::vector<AddressSpace> spaces;
    spaces.emplace_back(std::nullopt, IoasId(3), std::move(none));
    spaces.emplace_back(5u, IoasId(9), std::move(p5));
    table_.emplace(std::move(spaces));
    queue_.emplace(&stats_);
    proc_.emplace(opts, &*table_, &mapper_, &*queue_, &stats_);
  }

  // Returns the responses the processor queued, settling them as accepted.
  std::vector<uapi::PageResponse> Flush() {
    auto span = queue_->BeginWrite();
    std::vector<uapi::PageResponse> out(span.begin(), span.end());
    queue_->CompleteWrite(static_cast<ssize_t>(span.size_bytes()), 0);
    return out;
  }

  DeviceStats stats_;
  FakeMapper mapper_;
  std::optional<SpaceTable> table_;
  std::optional<ResponseQueue> queue_;
  std::optional<FaultProcessor> proc_;
};

MATCHER_P2(Resp, cookie, code, "") { return arg.cookie == cookie && arg.code == code; }

TEST_F(FaultProcessorTest, ReadAndWriteFaultsInRangeAreMappedAndSucceed) {
  std::vector<uapi::PageFault> recs = {Rec(1, (1 << 20) + 10, uapi::kPermRead),
                                       Rec(2, (1 << 20) + 5 * kPage, uapi::kPermWrite)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess), Resp(2u, uapi::kRespSuccess)));
  ASSERT_EQ(mapper_.calls.size(), 2u);
  EXPECT_EQ(mapper_.calls[0].iova, 1u << 20);
  EXPECT_EQ(mapper_.calls[0].length, kPage);
  EXPECT_EQ(mapper_.calls[0].ioas, IoasId(3));
  EXPECT_EQ(mapper_.calls[0].fd, 100);
  EXPECT_EQ(mapper_.calls[0].flags, uapi::kIoasMapReadable | uapi::kIoasMapWriteable);
  EXPECT_EQ(mapper_.calls[1].iova, (1u << 20) + 5 * kPage);
  EXPECT_EQ(mapper_.calls[1].file_offset, 5 * kPage);
  EXPECT_EQ(stats_.responses_success, 2u);
  EXPECT_EQ(stats_.outstanding(), 0u);
}

TEST_F(FaultProcessorTest, OutOfEveryRegionIsInvalidAndMapsNothing) {
  std::vector<uapi::PageFault> recs = {Rec(1, 0x10), Rec(2, (1 << 20) + 16 * kPage)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespInvalid), Resp(2u, uapi::kRespInvalid)));
  EXPECT_TRUE(mapper_.calls.empty());
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kNoRegion)], 2u);
}

TEST_F(FaultProcessorTest, WriteToReadOnlyRegionIsInvalid) {
  std::vector<uapi::PageFault> recs = {Rec(1, 2 << 20, uapi::kPermWrite),
                                       Rec(2, 2 << 20, uapi::kPermRead | uapi::kPermExec),
                                       Rec(3, 1 << 20, uapi::kPermRead | uapi::kPermPriv)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespInvalid), Resp(2u, uapi::kRespInvalid),
                                   Resp(3u, uapi::kRespInvalid)));
  EXPECT_TRUE(mapper_.calls.empty());
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kPermission)], 3u);
}

TEST_F(FaultProcessorTest, PasidRoutesToItsSpaceAndUnknownPasidIsInvalid) {
  std::vector<uapi::PageFault> recs = {Rec(1, (1 << 20) + kPage, uapi::kPermRead, 5u),
                                       Rec(2, (1 << 20) + kPage, uapi::kPermRead, 6u)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess), Resp(2u, uapi::kRespInvalid)));
  ASSERT_EQ(mapper_.calls.size(), 1u);
  EXPECT_EQ(mapper_.calls[0].ioas, IoasId(9));
  EXPECT_EQ(mapper_.calls[0].fd, 102);
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kNoSpace)], 1u);
}

TEST_F(FaultProcessorTest, ManyFaultsToOnePageMapOnce) {
  std::vector<uapi::PageFault> recs;
  for (uint32_t c = 1; c <= 50; ++c) recs.push_back(Rec(c, (1 << 20) + 3 * kPage + c));
  proc_->Process(recs, 0);
  auto resp = Flush();
  ASSERT_EQ(resp.size(), 50u);
  for (const auto& r : resp) EXPECT_EQ(r.code, uapi::kRespSuccess);
  EXPECT_EQ(mapper_.calls.size(), 1u);
  EXPECT_EQ(stats_.pages_deduped, 49u);
  // A later batch for the same page is answered without a map.
  std::vector<uapi::PageFault> again = {Rec(60, (1 << 20) + 3 * kPage)};
  proc_->Process(again, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(60u, uapi::kRespSuccess)));
  EXPECT_EQ(mapper_.calls.size(), 1u);
  EXPECT_EQ(stats_.pages_already_mapped, 1u);
}

// A map call maps a whole unit, aligned to the region's start: pages of one unit share it, and
// each unit is its own call (so that it can be unmapped alone).
TEST_F(FaultProcessorTest, PagesOfOneUnitMapInOneCallAndEachUnitInItsOwn) {
  Build({.device_id = kDev}, /*unit_bytes=*/4 * kPage);
  std::vector<uapi::PageFault> recs = {Rec(1, (1 << 20) + 2 * kPage), Rec(2, (1 << 20) + 0),
                                       Rec(3, (1 << 20) + kPage), Rec(4, (1 << 20) + 8 * kPage),
                                       Rec(5, (1 << 20) + 4 * kPage)};
  proc_->Process(recs, 0);
  EXPECT_EQ(Flush().size(), 5u);
  ASSERT_EQ(mapper_.calls.size(), 3u);
  EXPECT_EQ(mapper_.calls[0].iova, (1u << 20));
  EXPECT_EQ(mapper_.calls[0].length, 4 * kPage);
  EXPECT_EQ(mapper_.calls[1].iova, (1u << 20) + 8 * kPage);
  EXPECT_EQ(mapper_.calls[1].length, 4 * kPage);
  EXPECT_EQ(mapper_.calls[2].iova, (1u << 20) + 4 * kPage);
  EXPECT_EQ(stats_.pages_prefetched, 12u - 5u) << "the unit's pages nobody asked for";
  EXPECT_EQ(table_->spaces()[0].regions()[0].mapped_pages(), 12u);
}

TEST_F(FaultProcessorTest, CoalescingSkipsPagesAlreadyMapped) {
  std::vector<uapi::PageFault> first = {Rec(1, (1 << 20) + kPage)};
  proc_->Process(first, 0);
  Flush();
  std::vector<uapi::PageFault> recs = {Rec(2, 1 << 20), Rec(3, (1 << 20) + kPage),
                                       Rec(4, (1 << 20) + 2 * kPage)};
  proc_->Process(recs, 0);
  EXPECT_EQ(Flush().size(), 3u);
  ASSERT_EQ(mapper_.calls.size(), 3u);
  EXPECT_EQ(mapper_.calls[1].iova, 1u << 20);
  EXPECT_EQ(mapper_.calls[1].length, kPage);
  EXPECT_EQ(mapper_.calls[2].iova, (1u << 20) + 2 * kPage);
}

TEST_F(FaultProcessorTest, PrefetchWindowMapsAheadClippedAtRegionEnd) {
  // Read-only region at 2 MiB has a 4-page prefetch window and file offset 8192.
  std::vector<uapi::PageFault> recs = {Rec(1, (2 << 20) + kPage)};
  proc_->Process(recs, 0);
  Flush();
  // The faulting page's unit, then one call per unit ahead (units of one page here).
  ASSERT_EQ(mapper_.calls.size(), 5u);
  EXPECT_EQ(mapper_.calls[0].iova, (2u << 20) + kPage);
  EXPECT_EQ(mapper_.calls[0].length, kPage);
  EXPECT_EQ(mapper_.calls[0].file_offset, 8192 + kPage);
  EXPECT_EQ(mapper_.calls[0].flags, uapi::kIoasMapReadable);
  EXPECT_EQ(mapper_.calls[4].iova, (2u << 20) + 5 * kPage);
  EXPECT_EQ(stats_.pages_prefetched, 4u);
  std::vector<uapi::PageFault> tail = {Rec(2, (2 << 20) + 14 * kPage)};
  proc_->Process(tail, 0);
  Flush();
  ASSERT_EQ(mapper_.calls.size(), 7u);  // clipped at the region's 16th page
  EXPECT_EQ(mapper_.calls[6].iova, (2u << 20) + 15 * kPage);
}

TEST_F(FaultProcessorTest, LengthHintMapsAheadCappedPerFault) {
  Build({.device_id = kDev, .max_fault_map_bytes = 4 * kPage});
  std::vector<uapi::PageFault> recs = {
      Rec(1, 1 << 20, uapi::kPermRead, std::nullopt, static_cast<uint32_t>(10 * kPage))};
  proc_->Process(recs, 0);
  Flush();
  ASSERT_EQ(mapper_.calls.size(), 4u);
  EXPECT_EQ(mapper_.calls[3].iova, (1u << 20) + 3 * kPage);
}

TEST_F(FaultProcessorTest, MultiRecordGroupGetsOneResponseAndFailsAsAWhole) {
  uapi::PageFault a = Rec(1, 1 << 20);
  a.flags &= ~uapi::kPgfaultLastPage;
  uapi::PageFault b = Rec(1, (1 << 20) + kPage);
  uapi::PageFault c = Rec(2, (1 << 20) + 2 * kPage);
  c.flags &= ~uapi::kPgfaultLastPage;
  uapi::PageFault d = Rec(2, 0x42);  // outside every region: sinks group 2
  std::vector<uapi::PageFault> recs = {a, b, c, d};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess), Resp(2u, uapi::kRespInvalid)));
  EXPECT_EQ(stats_.groups, 2u);
  EXPECT_EQ(stats_.records, 4u);
}

TEST_F(FaultProcessorTest, CookieReappearingLaterStaysOneGroup) {
  std::vector<uapi::PageFault> recs = {Rec(1, 1 << 20), Rec(2, (1 << 20) + kPage),
                                       Rec(1, (1 << 20) + 2 * kPage)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess), Resp(2u, uapi::kRespSuccess)));
}

TEST_F(FaultProcessorTest, OversizedGroupIsInvalid) {
  Build({.device_id = kDev, .max_group_records = 2});
  std::vector<uapi::PageFault> recs = {Rec(1, 1 << 20), Rec(1, 1 << 20), Rec(1, 1 << 20)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespInvalid)));
  EXPECT_TRUE(mapper_.calls.empty());
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kOversizedGroup)], 1u);
}

// The limit is inclusive: a group of exactly max_group_records records is resolved (issue 12:
// `>` turned into `>=` broke no test).
TEST_F(FaultProcessorTest, AGroupOfExactlyTheLimitIsResolved) {
  Build({.device_id = kDev, .max_group_records = 3});
  std::vector<uapi::PageFault> recs = {Rec(1, 1 << 20), Rec(1, (1 << 20) + kPage),
                                       Rec(1, (1 << 20) + 2 * kPage)};
  recs[0].flags &= ~uint32_t{uapi::kPgfaultLastPage};
  recs[1].flags &= ~uint32_t{uapi::kPgfaultLastPage};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess)));
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kOversizedGroup)], 0u);
}

// A map that fails for want of memory is made again before its group fails: one failed
// kernel allocation must not become a failed translation on the device.
TEST_F(FaultProcessorTest, AMapThatRanOutOfMemoryOnceIsRetried) {
  mapper_.fail_iovas = {1 << 20};
  mapper_.fail_times = 1;
  std::vector<uapi::PageFault> recs = {Rec(1, 1 << 20)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess)));
  EXPECT_EQ(mapper_.calls.size(), 2u);
  EXPECT_EQ(stats_.map_calls, 2u);
  // Another errno is not retried, and a shortage that lasts fails the group after the retries.
  mapper_.fail_iovas = {(1 << 20) + kPage, (1 << 20) + 2 * kPage};
  mapper_.fail_times = -1;
  mapper_.calls.clear();
  std::vector<uapi::PageFault> more = {Rec(2, (1 << 20) + kPage)};
  proc_->Process(more, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(2u, uapi::kRespInvalid)));
  EXPECT_EQ(mapper_.calls.size(), 3u);  // the call and two retries
  mapper_.fail_errno = EFAULT;
  mapper_.calls.clear();
  std::vector<uapi::PageFault> other = {Rec(3, (1 << 20) + 2 * kPage)};
  proc_->Process(other, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(3u, uapi::kRespInvalid)));
  EXPECT_EQ(mapper_.calls.size(), 1u);  // no retries
}

TEST_F(FaultProcessorTest, ForeignDeviceAndMixedGroupsAreInvalid) {
  uapi::PageFault foreign = Rec(1, 1 << 20);
  foreign.dev_id = kDev + 1;
  uapi::PageFault m1 = Rec(2, 1 << 20, uapi::kPermRead, 5u);
  uapi::PageFault m2 = Rec(2, 1 << 20);  // same cookie, no PASID
  std::vector<uapi::PageFault> recs = {foreign, m1, m2};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespInvalid), Resp(2u, uapi::kRespInvalid)));
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kForeignDevice)], 1u);
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kMalformed)], 1u);
}

TEST_F(FaultProcessorTest, MapFailureFailsOnlyTheGroupsThatNeedTheBadPage) {
  mapper_.fail_iovas = {(1 << 20) + 2 * kPage};
  mapper_.fail_errno = EFAULT;  // not retried (ENOMEM is: AMapThatRanOutOfMemoryOnceIsRetried)
  std::vector<uapi::PageFault> recs = {Rec(1, 1 << 20), Rec(2, (1 << 20) + kPage),
                                       Rec(3, (1 << 20) + 2 * kPage)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess), Resp(2u, uapi::kRespSuccess),
                                   Resp(3u, uapi::kRespInvalid)));
  // One call per unit (a page here); only the bad one failed.
  EXPECT_EQ(mapper_.calls.size(), 3u);
  EXPECT_EQ(stats_.invalid_by_reason[static_cast<int>(InvalidReason::kMapFailed)], 1u);
  EXPECT_EQ(stats_.map_failures, 1u);
}

TEST_F(FaultProcessorTest, PrefetchFailureDoesNotFailTheFaultingPage) {
  mapper_.fail_iovas = {(2 << 20) + 3 * kPage};
  std::vector<uapi::PageFault> recs = {Rec(1, 2 << 20)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess)));
}

TEST_F(FaultProcessorTest, PageMappedBySomeoneElseCountsAsPresent) {
  mapper_.fail_iovas = {1 << 20};
  mapper_.fail_errno = EEXIST;
  std::vector<uapi::PageFault> recs = {Rec(1, 1 << 20)};
  proc_->Process(recs, 0);
  EXPECT_THAT(Flush(), ElementsAre(Resp(1u, uapi::kRespSuccess)));
}

TEST(ResponseQueueTest, PartialWriteRejectsOneAndResendsTheRest) {
  DeviceStats stats;
  ResponseQueue q(&stats);
  for (uint32_t c = 1; c <= 4; ++c) q.Add(c, uapi::kRespSuccess, 100);
  auto first = q.BeginWrite();
  ASSERT_EQ(first.size(), 4u);
  // The kernel took cookie 1, stopped at cookie 2 (unknown).
  EXPECT_TRUE(q.CompleteWrite(8, 150));
  EXPECT_TRUE(q.HasUnwritten());
  q.Add(5, uapi::kRespInvalid, 200);  // arrives while re-sends are owed
  auto second = q.BeginWrite();
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0].cookie, 3u);
  EXPECT_EQ(second[1].cookie, 4u);
  EXPECT_TRUE(q.CompleteWrite(-EINVAL, 160));  // cookie 3 unknown as well
  auto third = q.BeginWrite();
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(third[0].cookie, 4u);
  EXPECT_TRUE(q.CompleteWrite(8, 170));
  auto fourth = q.BeginWrite();
  ASSERT_EQ(fourth.size(), 1u);
  EXPECT_EQ(fourth[0].cookie, 5u);
  EXPECT_TRUE(q.CompleteWrite(8, 300));
  EXPECT_FALSE(q.HasUnwritten());
  EXPECT_EQ(stats.responses_written, 3u);
  EXPECT_EQ(stats.responses_rejected, 2u);
  EXPECT_EQ(q.outstanding(), 0u);
  EXPECT_EQ(stats.latency_ns.count(), 3u);
  EXPECT_EQ(stats.latency_ns.max(), 100u);
}

// Answers written together are recorded by the time they were read: those read together share
// one histogram update, each keeps its own latency.
TEST(ResponseQueueTest, EachAnswerKeepsItsOwnLatency) {
  DeviceStats stats;
  ResponseQueue q(&stats);
  q.Add(1, uapi::kRespSuccess, 100);
  q.Add(2, uapi::kRespSuccess, 100);
  q.Add(3, uapi::kRespSuccess, 130);
  q.Add(4, uapi::kRespSuccess, 100);
  ASSERT_EQ(q.BeginWrite().size(), 4u);
  EXPECT_TRUE(q.CompleteWrite(32, 200));
  EXPECT_EQ(stats.latency_ns.count(), 4u);
  EXPECT_EQ(stats.latency_ns.sum(), 100u + 100u + 70u + 100u);
  EXPECT_EQ(stats.latency_ns.min(), 70u);
  EXPECT_EQ(stats.latency_ns.max(), 100u);
}

TEST(ResponseQueueTest, InterruptedWriteIsRetriedWhole) {
  DeviceStats stats;
  ResponseQueue q(&stats);
  q.Add(1, uapi::kRespSuccess, 0);
  q.BeginWrite();
  EXPECT_TRUE(q.CompleteWrite(-EINTR, 0));
  EXPECT_EQ(q.BeginWrite().size(), 1u);
  EXPECT_TRUE(q.CompleteWrite(8, 0));
  EXPECT_EQ(stats.responses_written, 1u);
}

// ENOMEM consumed nothing (the fault fd's write allocates nothing; it comes from io_uring's
// way there): the same answers are written again, never abandoned.
TEST(ResponseQueueTest, AWriteThatRanOutOfMemoryIsRetriedWhole) {
  DeviceStats stats;
  ResponseQueue q(&stats);
  q.Add(1, uapi::kRespSuccess, 0);
  q.Add(2, uapi::kRespInvalid, 0);
  q.BeginWrite();
  EXPECT_TRUE(q.CompleteWrite(-ENOMEM, 0));
  EXPECT_EQ(stats.responses_abandoned, 0u);
  EXPECT_EQ(q.BeginWrite().size(), 2u);
  EXPECT_TRUE(q.CompleteWrite(16, 0));
  EXPECT_EQ(stats.responses_written, 2u);
  EXPECT_EQ(q.outstanding(), 0u);
}

TEST(ResponseQueueTest, DeadFdAbandonsEverythingAndSaysSo) {
  DeviceStats stats;
  ResponseQueue q(&stats);
  q.Add(1, uapi::kRespSuccess, 0);
  q.Add(2, uapi::kRespSuccess, 0);
  q.BeginWrite();
  q.Add(3, uapi::kRespSuccess, 0);
  EXPECT_FALSE(q.CompleteWrite(-EBADF, 0));
  EXPECT_EQ(stats.responses_abandoned, 3u);
  EXPECT_EQ(q.outstanding(), 0u);
  EXPECT_FALSE(q.HasUnwritten());
}

TEST(ResponseQueueTest, ACookieReadAgainBeforeItsAnswerWasWrittenDropsTheStaleAnswer) {
  // Cookie 9 answered, but before the answer is written the kernel answers the group itself
  // (the owner detached the attachment) and hands 9 to a new group, which iopfd reads and
  // answers: only the new answer may be written.
  DeviceStats stats;
  stats.groups = 3;
  ResponseQueue q(&stats);
  q.Add(9, uapi::kRespInvalid, 0);
  q.Add(4, uapi::kRespSuccess, 0);
  q.Add(9, uapi::kRespSuccess, 0);
  EXPECT_EQ(stats.duplicate_cookies, 1u);
  EXPECT_EQ(stats.responses_stale_dropped, 1u);
  EXPECT_EQ(q.outstanding(), 2u);
  auto w = q.BeginWrite();
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].cookie, 4u);
  EXPECT_EQ(w[1].cookie, 9u);
  EXPECT_EQ(w[1].code, uapi::kRespSuccess);
  q.CompleteWrite(16, 0);
  EXPECT_EQ(q.outstanding(), 0u);
  EXPECT_EQ(stats.outstanding(), 0u);
}

TEST(ResponseQueueTest, ACookieReadAgainWhileItsAnswerWaitsToBeResentDropsThatAnswer) {
  // Answers 3, 7, 9 written; the owner replaced the attachment, so the kernel answered all
  // three and refuses 3 (EINVAL): 7 and 9 wait to be sent again. A new group then comes with
  // cookie 7: the old 7 must not be re-sent ahead of it.
  DeviceStats stats;
  stats.groups = 4;
  ResponseQueue q(&stats);
  q.Add(3, uapi::kRespSuccess, 0);
  q.Add(7, uapi::kRespInvalid, 0);
  q.Add(9, uapi::kRespSuccess, 0);
  ASSERT_EQ(q.BeginWrite().size(), 3u);
  ASSERT_TRUE(q.CompleteWrite(-EINVAL, 0));
  q.Add(7, uapi::kRespSuccess, 0);
  EXPECT_EQ(stats.duplicate_cookies, 1u);
  EXPECT_EQ(stats.responses_stale_dropped, 1u);
  auto w = q.BeginWrite();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].cookie, 9u);
  ASSERT_TRUE(q.CompleteWrite(8, 0));
  w = q.BeginWrite();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].cookie, 7u);
  EXPECT_EQ(w[0].code, uapi::kRespSuccess);
  ASSERT_TRUE(q.CompleteWrite(8, 0));
  EXPECT_EQ(q.outstanding(), 0u);
  EXPECT_EQ(stats.outstanding(), 0u);
}

TEST(ResponseQueueTest, ACookieReadAgainWhileItsAnswerIsBeingWrittenIsStillAnsweredOnce) {
  DeviceStats stats;
  stats.groups = 2;
  ResponseQueue q(&stats);
  q.Add(9, uapi::kRespSuccess, 0);
  auto first = q.BeginWrite();  // on its way: cannot be taken back
  ASSERT_EQ(first.size(), 1u);
  q.Add(9, uapi::kRespSuccess, 0);
  EXPECT_EQ(stats.duplicate_cookies, 1u);
  EXPECT_EQ(q.outstanding(), 2u);
  ASSERT_TRUE(q.CompleteWrite(8, 0));
  auto second = q.BeginWrite();
  ASSERT_EQ(second.size(), 1u);
  ASSERT_TRUE(q.CompleteWrite(8, 0));
  EXPECT_EQ(q.outstanding(), 0u);
  EXPECT_EQ(stats.outstanding(), 0u);
}

TEST(ResponseQueueTest, DroppingAParkedAttachmentLeavesTheOthersAndAccountsForEachOnce) {
  DeviceStats stats;
  stats.groups = 6;
  ResponseQueue q(&stats);
  q.Add(1, uapi::kRespSuccess, 0, kNoPasidAttachment);
  q.Add(2, uapi::kRespSuccess, 0, 5);
  q.Add(3, uapi::kRespSuccess, 0, kNoPasidAttachment);
  auto w = q.BeginWrite();
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(q.DropAttachment(5), 0u);  // a write is in flight: nothing may change under it
  ASSERT_TRUE(q.CompleteWrite(8, 0));  // cookie 1 taken, 2 rejected; 3 owed again
  q.Add(4, uapi::kRespInvalid, 0, 5);
  q.Add(5, uapi::kRespSuccess, 0, 7);
  q.Add(6, uapi::kRespSuccess, 0, kNoPasidAttachment);
  // Parking the no-PASID attachment: 3 (to re-send) and 6 (new) are dropped, unwritten.
  EXPECT_EQ(q.DropAttachment(kNoPasidAttachment), 2u);
  auto rest = q.BeginWrite();
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].cookie, 4u);
  EXPECT_EQ(rest[1].cookie, 5u);
  ASSERT_TRUE(q.CompleteWrite(16, 0));
  EXPECT_EQ(stats.responses_stale_dropped, 2u);
  EXPECT_EQ(stats.responses_written, 3u);
  EXPECT_EQ(stats.responses_rejected, 1u);
  EXPECT_EQ(stats.outstanding(), 0u);  // every group accounted for exactly once
  EXPECT_EQ(q.outstanding(), 0u);
  // nullopt drops every attachment's.
  q.Add(7, uapi::kRespSuccess, 0, 9);
  q.Add(8, uapi::kRespSuccess, 0, kNoPasidAttachment);
  EXPECT_EQ(q.DropAttachment(std::nullopt), 2u);
  EXPECT_FALSE(q.HasUnwritten());
}

TEST(ResponseQueueTest, TheEpochFenceNeverWritesAnAnswerToAGroupReadBeforeThePark) {
  DeviceStats stats;
  stats.groups = 6;
  ResponseQueue q(&stats);
  EXPECT_EQ(q.epoch(), 0u);
  // Groups read before the park of PASID 5 (the obligations remember the epoch they were read
  // in), answered only after it: a bug the fence must contain.
  ResponseObligation old5(&q, &stats, 1, 0, 5);
  ResponseObligation old_rid(&q, &stats, 2, 0, kNoPasidAttachment);
  q.Fence(5);
  EXPECT_EQ(q.epoch(), 1u);
  ResponseObligation new5(&q, &stats, 3, 0, 5);  // read after the fence: fine
  EXPECT_TRUE(old5.Answer(uapi::kRespSuccess));
  EXPECT_TRUE(old_rid.Answer(uapi::kRespSuccess));
  EXPECT_TRUE(new5.Answer(uapi::kRespSuccess));
  auto w = q.BeginWrite();
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].cookie, 2u);
  EXPECT_EQ(w[1].cookie, 3u);
  ASSERT_TRUE(q.CompleteWrite(16, 0));
  EXPECT_EQ(stats.stale_epoch_blocked, 1u);
  EXPECT_EQ(stats.responses_stale_dropped, 1u);  // accounted for once, as dropped
  // A whole-device fence stops every attachment's older answers; a later fence of one
  // attachment does not lift it.
  q.Add(4, uapi::kRespSuccess, 0, 7);
  q.Add(5, uapi::kRespSuccess, 0, kNoPasidAttachment);
  q.Fence(std::nullopt);
  q.Fence(7);
  q.Add(6, uapi::kRespSuccess, 0, 9);  // read now
  w = q.BeginWrite();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].cookie, 6u);
  ASSERT_TRUE(q.CompleteWrite(8, 0));
  EXPECT_EQ(stats.stale_epoch_blocked, 3u);
  EXPECT_EQ(stats.outstanding(), 0u);
  EXPECT_EQ(q.outstanding(), 0u);
}

TEST_F(FaultProcessorTest, ResponsesCarryTheAttachmentTheirGroupCameFrom) {
  // One group without PASID, one with PASID 5: parking PASID 5 drops only its answer.
  std::vector<uapi::PageFault> recs = {Rec(1, (1 << 20) + kPage), Rec(2, (1 << 20), kRW, 5u)};
  proc_->Process(recs, 0);
  EXPECT_EQ(queue_->DropAttachment(5), 1u);
  auto w = queue_->BeginWrite();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].cookie, 1u);
}

TEST(ResponseObligationTest, UnansweredObligationAnswersInvalidOnce) {
  DeviceStats stats;
  ResponseQueue q(&stats);
  {
    ResponseObligation a(&q, &stats, 11, 0);
    ResponseObligation b(&q, &stats, 12, 0);
    EXPECT_TRUE(b.Answer(uapi::kRespSuccess));
    EXPECT_FALSE(b.Answer(uapi::kRespSuccess));
    ResponseObligation moved(std::move(a));
    EXPECT_FALSE(a.pending());  // NOLINT(bugprone-use-after-move,clang-analyzer-cplusplus.Move):
                                // checks moved-from state
  }
  auto w = q.BeginWrite();
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].cookie, 12u);
  EXPECT_EQ(w[1].cookie, 11u);
  EXPECT_EQ(w[1].code, uapi::kRespInvalid);
  EXPECT_EQ(stats.guard_answered, 1u);
}

TEST(HistogramTest, PercentilesWithinBucketPrecision) {
  Histogram h;
  for (uint64_t v = 1; v <= 1000; ++v) h.Record(v * 1000);
  EXPECT_EQ(h.count(), 1000u);
  EXPECT_EQ(h.max(), 1000000u);
  uint64_t p50 = h.Percentile(0.5);
  EXPECT_GE(p50, 500000u);
  EXPECT_LE(p50, 500000u * 1125 / 1000);
  EXPECT_EQ(h.Percentile(1.0), 1000000u);
  Histogram small;
  for (uint64_t v = 0; v < 16; ++v) small.Record(v);
  EXPECT_EQ(small.Percentile(0.5), 7u);
  EXPECT_EQ(Histogram().Percentile(0.5), 0u);
}

}  // namespace
}  // namespace iopfd

namespace iopfd {
namespace {

TEST(AddressSpaceTest, FindsRegionsAtTheirEdgesAndNothingInGaps) {
  std::vector<Region> regions;
  // Given out of order: 64 regions of 8 KiB with 8 KiB gaps, starting at 1 MiB.
  for (int i = 63; i >= 0; --i) {
    regions.emplace_back((1 << 20) + i * 16384ull, 8192, 4096, uapi::kPermRead, 0, -1, 0, nullptr);
  }
  AddressSpace space(std::nullopt, IoasId(1), std::move(regions));
  for (int i = 0; i < 64; ++i) {
    uint64_t start = (1 << 20) + i * 16384ull;
    ASSERT_NE(space.Find(start), nullptr) << i;
    EXPECT_EQ(space.Find(start)->iova(), start);
    EXPECT_EQ(space.Find(start + 8191)->iova(), start);
    EXPECT_EQ(space.Find(start + 8192), nullptr) << "gap after region " << i;
    EXPECT_EQ(space.Find(start + 16383), nullptr);
  }
  EXPECT_EQ(space.Find(0), nullptr);
  EXPECT_EQ(space.Find((1 << 20) - 1), nullptr);
  EXPECT_EQ(space.Find(~uint64_t{0}), nullptr);
}

TEST(AddressSpaceTest, RegionReachingTheTopOfTheAddressSpace) {
  std::vector<Region> regions;
  const uint64_t top = ~uint64_t{0} - 4095;  // last page
  regions.emplace_back(top, 4096, 4096, uapi::kPermRead, 0, -1, 0, nullptr);
  AddressSpace space(5u, IoasId(1), std::move(regions));
  EXPECT_NE(space.Find(~uint64_t{0}), nullptr);
  EXPECT_EQ(space.Find(top - 1), nullptr);
}

TEST(SpaceTableTest, RoutesByPasidAndWithoutOne) {
  std::vector<AddressSpace> spaces;
  spaces.emplace_back(7u, IoasId(70), std::vector<Region>{});
  spaces.emplace_back(std::nullopt, IoasId(10), std::vector<Region>{});
  SpaceTable table(std::move(spaces));
  EXPECT_EQ(table.Find(false, 7)->ioas(), IoasId(10));  // PASID field ignored without the flag
  EXPECT_EQ(table.Find(true, 7)->ioas(), IoasId(70));
  EXPECT_EQ(table.Find(true, 8), nullptr);
  SpaceTable pasid_only(std::vector<AddressSpace>{});
  EXPECT_EQ(pasid_only.Find(false, 0), nullptr);
}

}  // namespace
}  // namespace iopfd
