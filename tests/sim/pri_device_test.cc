#include "pri_device.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<ViolationKind> Kinds(const PriDevice& d) {
  std::vector<ViolationKind> out;
  for (const Violation& v : d.violations()) out.push_back(v.kind);
  return out;
}

TEST(PriDeviceTest, AGroupCarriesOneIndexAndEndsWithLast) {
  PriDevice d;
  auto g = d.IssueGroup(5u, 0x10000, 1, 3);
  ASSERT_EQ(g.size(), 3u);
  for (const PageRequest& r : g) {
    EXPECT_EQ(r.prg_index, g[0].prg_index);
    EXPECT_EQ(r.pasid, 5u);
  }
  EXPECT_EQ(g[1].addr, 0x11000u);
  EXPECT_FALSE(g[1].last);
  EXPECT_TRUE(g[2].last);
  EXPECT_EQ(d.outstanding_requests(), 3u);
  d.Respond(g[0].prg_index, g[0].generation, ResponseCode::kSuccess);
  EXPECT_EQ(d.outstanding_requests(), 0u);
  EXPECT_EQ(d.completed(), 1u);
  EXPECT_THAT(d.violations(), IsEmpty());
}

TEST(PriDeviceTest, AllocationLimitsRequestsNotGroups) {
  PriDevice d({.allocation = 4, .prg_indices = 512});
  EXPECT_TRUE(d.CanIssue(4));
  d.IssueGroup(std::nullopt, 0, 1, 3);
  EXPECT_TRUE(d.CanIssue(1));
  EXPECT_FALSE(d.CanIssue(2));
  d.IssueGroup(std::nullopt, 0, 1, 2);  // issued regardless: a broken function
  EXPECT_THAT(Kinds(d), ElementsAre(ViolationKind::kOverAllocation));
}

TEST(PriDeviceTest, ARepeatedOrUnknownAnswerIsAnUnexpectedIndex) {
  PriDevice d;
  auto g = d.IssueGroup(std::nullopt, 0, 1, 1);
  d.Respond(g[0].prg_index, g[0].generation, ResponseCode::kInvalid);
  d.Respond(g[0].prg_index, g[0].generation, ResponseCode::kInvalid);
  d.Respond(77, 1, ResponseCode::kSuccess);
  EXPECT_THAT(Kinds(d),
              ElementsAre(ViolationKind::kUnexpectedPrgIndex, ViolationKind::kUnexpectedPrgIndex));
}

TEST(PriDeviceTest, FlrForgetsTagsSoAStaleAnswerMeetsAReusedIndex) {
  PriDevice d;
  auto before = d.IssueGroup(std::nullopt, 0, 1, 1);
  d.Flr();
  EXPECT_EQ(d.forgotten(), 1u);
  EXPECT_EQ(d.outstanding_groups(), 0u);
  EXPECT_FALSE(d.enabled());
  EXPECT_TRUE(d.halted());
  EXPECT_FALSE(d.CanIssue(1));
  d.SetEnabled(true);
  d.ResumeDma();
  auto after = d.IssueGroup(std::nullopt, 0, 1, 1);
  ASSERT_EQ(after[0].prg_index, before[0].prg_index);  // indices start over after a reset
  // The answer to the forgotten group arrives late: the function takes it for its new group.
  d.Respond(before[0].prg_index, before[0].generation, ResponseCode::kSuccess);
  EXPECT_THAT(Kinds(d), ElementsAre(ViolationKind::kStaleResponse));
}

TEST(PriDeviceTest, StoppedOnceDisabledAndEverythingAnswered) {
  PriDevice d;
  auto g = d.IssueGroup(std::nullopt, 0, 1, 2);
  d.SetEnabled(false);
  EXPECT_FALSE(d.stopped());
  EXPECT_FALSE(d.CanIssue(1));
  d.Respond(g[0].prg_index, g[0].generation, ResponseCode::kInvalid);
  EXPECT_TRUE(d.stopped());
  d.IssueGroup(std::nullopt, 0, 1, 1);
  EXPECT_THAT(Kinds(d), ElementsAre(ViolationKind::kRequestWhileDisabled));
}

TEST(PriDeviceTest, RequestsWhileHaltedAreFlagged) {
  PriDevice d;
  d.HaltDma();
  EXPECT_FALSE(d.CanIssue(1));
  d.IssueGroup(std::nullopt, 0, 1, 1);
  d.ResumeDma();
  EXPECT_TRUE(d.CanIssue(1));
  EXPECT_THAT(Kinds(d), ElementsAre(ViolationKind::kRequestWhileHalted));
}

TEST(PriDeviceTest, GroupsLeftOutstandingWhenQuietAreLost) {
  PriDevice d;
  auto a = d.IssueGroup(std::nullopt, 0, 1, 1);
  d.IssueGroup(std::nullopt, 0, 1, 1);
  d.Respond(a[0].prg_index, a[0].generation, ResponseCode::kSuccess);
  d.CheckNothingLost();
  EXPECT_THAT(Kinds(d), ElementsAre(ViolationKind::kLostGroup));
  EXPECT_STREQ(ViolationName(d.violations()[0].kind), "lost_group");
}

TEST(PriDeviceTest, IndicesAreReusedAsSoonAsFreeButNeverWhileOutstanding) {
  PriDevice d({.allocation = 64, .prg_indices = 4});
  std::vector<uint32_t> seen;
  seen.reserve(4);
  for (int i = 0; i < 4; ++i) seen.push_back(d.IssueGroup(std::nullopt, 0, 1, 1)[0].prg_index);
  EXPECT_THAT(seen, ElementsAre(0u, 1u, 2u, 3u));
  EXPECT_FALSE(d.CanIssue(1));          // every index is outstanding
  d.IssueGroup(std::nullopt, 0, 1, 1);  // forced: the function must reuse one
  EXPECT_EQ(d.issued(), 5u);
  EXPECT_EQ(d.outstanding_groups(), 4u);
  EXPECT_THAT(Kinds(d), ElementsAre(ViolationKind::kIndexInUse));
}

}  // namespace
}  // namespace iopfd::sim
