#include "iopfd/fault/map_record.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <functional>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;

std::vector<RecordedRegion> TwoRegions() {
  // The second region's last unit is short: 200 KiB in 64 KiB units.
  return {{IoasId(2), 0x100000, 1024 * kKiB, 4 * kKiB},
          {IoasId(7), 0x40000000, 200 * kKiB, 64 * kKiB}};
}

// What the next process finds: the same file, mapped again.
std::unique_ptr<MapRecord> Reopen(const MapRecord& r) {
  auto again = MapRecord::Open("dev0", UniqueFd(fcntl(r.fd(), F_DUPFD_CLOEXEC, 0)));
  EXPECT_TRUE(again.ok()) << again.status();
  return again.ok() ? *std::move(again) : nullptr;
}

MATCHER_P5(IsUnit, region, unit, ioas, iova, length, "") {
  return arg.region == static_cast<uint32_t>(region) && arg.unit == static_cast<uint32_t>(unit) &&
         arg.ioas == IoasId(ioas) && arg.iova == static_cast<uint64_t>(iova) &&
         arg.length == static_cast<uint64_t>(length);
}

TEST(MapRecordTest, HeldUnitsSurviveIntoTheNextProcess) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->held_count(), 0u);
  (*r)->Set(0, 0, true);
  (*r)->Set(0, 63, true);
  (*r)->Set(0, 64, true);
  (*r)->Set(0, 255, true);
  (*r)->Set(1, 3, true);  // the short last unit
  (*r)->Set(0, 64, false);
  auto again = Reopen(**r);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->layout(), TwoRegions());
  EXPECT_TRUE(again->Held(0, 63));
  EXPECT_FALSE(again->Held(0, 64));
  EXPECT_EQ(again->held_count(), 4u);
  EXPECT_THAT(again->HeldUnits(),
              ElementsAre(IsUnit(0, 0, 2, 0x100000, 4 * kKiB),
                          IsUnit(0, 63, 2, 0x100000 + 63 * 4 * kKiB, 4 * kKiB),
                          IsUnit(0, 255, 2, 0x100000 + 255 * 4 * kKiB, 4 * kKiB),
                          IsUnit(1, 3, 7, 0x40000000 + 192 * kKiB, 8 * kKiB)));
  // Changes made through either mapping are the same file.
  again->Set(0, 0, false);
  EXPECT_FALSE((*r)->Held(0, 0));
}

// A layout with as many regions and bitmap words fits the same file: its bits are cleared and
// its regions rewritten, and the next process finds the new layout.
TEST(MapRecordTest, ALayoutThatFitsIsRecordedInTheSameFile) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok());
  (*r)->Set(0, 5, true);
  std::vector<RecordedRegion> other = TwoRegions();
  other[0].backing_ino = 77;   // another file
  other[1].size = 256 * kKiB;  // 4 units still: one word
  EXPECT_TRUE((*r)->Fits(other));
  (*r)->Relayout(other);
  EXPECT_EQ((*r)->held_count(), 0u);
  (*r)->Set(1, 3, true);
  auto again = Reopen(**r);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->layout(), other);
  EXPECT_THAT(again->HeldUnits(), ElementsAre(IsUnit(1, 3, 7, 0x40000000 + 192 * kKiB, 64 * kKiB)));
  std::vector<RecordedRegion> bigger = TwoRegions();
  bigger[0].size = 2048 * kKiB;  // 512 units: 8 words, not 4
  EXPECT_FALSE((*r)->Fits(bigger));
  EXPECT_FALSE((*r)->Fits({TwoRegions()[0]}));
}

TEST(MapRecordTest, IndicesOutOfRangeAreIgnored) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok());
  (*r)->Set(0, 256, true);  // one past region 0's last unit: would be region 1's first word
  (*r)->Set(1, 4, true);
  (*r)->Set(2, 0, true);
  EXPECT_EQ((*r)->held_count(), 0u);
  EXPECT_FALSE((*r)->Held(1, 4));
  EXPECT_FALSE((*r)->Held(9, 0));
}

// A unit held in part (a partial unit) is recorded so: the next process checks its pages one by
// one. Held whole again, or no longer held, it is not partial.
TEST(MapRecordTest, PartialUnitsAreRecordedAsSuch) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->version(), 3u);
  (*r)->Set(0, 5, true, /*partial=*/true);
  (*r)->Set(0, 6, true, /*partial=*/true);
  (*r)->Set(0, 7, true, /*partial=*/true);
  (*r)->Set(1, 1, true);
  (*r)->Set(0, 6, true);  // filled up: whole
  (*r)->Set(0, 7, false);
  auto again = Reopen(**r);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->Partial(0, 5));
  EXPECT_FALSE(again->Partial(0, 6));
  EXPECT_FALSE(again->Partial(0, 7));
  EXPECT_FALSE(again->Held(0, 7));
  EXPECT_FALSE(again->Partial(1, 1));
  const std::vector<RecordedUnit> held = again->HeldUnits();
  ASSERT_EQ(held.size(), 3u);
  EXPECT_TRUE(held[0].partial);
  EXPECT_FALSE(held[1].partial);
  EXPECT_FALSE(held[2].partial);
  // Held again whole after it was unrecorded: not partial (the stale bit was cleared).
  again->Set(0, 7, true);
  EXPECT_FALSE(again->Partial(0, 7));
}

// A record a version 2 iopfd left (no partial bits) is still read, its units whole; it does not
// fit a layout for this version, so the device records in a file of its own from then on.
TEST(MapRecordTest, AVersion2RecordIsReadWithoutPartialUnits) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok());
  (*r)->Set(0, 3, true, /*partial=*/true);
  (*r)->Set(1, 2, true);
  // The same file as version 2 wrote it: its header, regions and held bits; no partial bits.
  const off_t size = lseek((*r)->fd(), 0, SEEK_END);
  std::vector<char> bytes(static_cast<size_t>(size));
  ASSERT_EQ(pread((*r)->fd(), bytes.data(), bytes.size(), 0), size);
  uint64_t words = 0;
  std::memcpy(&words, bytes.data() + 16, sizeof(words));
  const uint32_t v2 = 2;
  std::memcpy(bytes.data() + 8, &v2, sizeof(v2));
  bytes.resize(bytes.size() - words * sizeof(uint64_t));
  const int fd = memfd_create("v2", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  auto old = MapRecord::Open("dev0", UniqueFd(fd));
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ((*old)->version(), 2u);
  EXPECT_THAT((*old)->HeldUnits(),
              ElementsAre(IsUnit(0, 3, 2, 0x100000 + 3 * 4 * kKiB, 4 * kKiB),
                          IsUnit(1, 2, 7, 0x40000000 + 128 * kKiB, 64 * kKiB)));
  EXPECT_FALSE((*old)->Partial(0, 3));
  EXPECT_FALSE((*old)->Fits(TwoRegions()));
  // Set on it still records held bits (and cannot record partial ones).
  (*old)->Set(0, 4, true, /*partial=*/true);
  EXPECT_TRUE((*old)->Held(0, 4));
  EXPECT_FALSE((*old)->Partial(0, 4));
}

TEST(MapRecordTest, CreateRejectsLayoutsOutsideTheBounds) {
  EXPECT_THAT(std::string(MapRecord::Create("dev0", {{IoasId(1), 0, 0, 4096}}).status().message()),
              HasSubstr("dev0: map record: region 0: size 0"));
  EXPECT_THAT(
      std::string(MapRecord::Create("dev0", {{IoasId(1), 0, 8192, 12288}}).status().message()),
      HasSubstr("map unit 12288 is not a power of two"));
  EXPECT_THAT(std::string(MapRecord::Create("dev0", {{IoasId(1), ~uint64_t{0} - 4095, 8192, 4096}})
                              .status()
                              .message()),
              HasSubstr("wraps"));
}

TEST(MapRecordTest, SizeIsSealed) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok());
  EXPECT_NE(ftruncate((*r)->fd(), 1 << 20), 0);
  EXPECT_NE(ftruncate((*r)->fd(), 8), 0);
}

// A file a crashed or other run left: every field the next process relies on is checked, each
// with a message naming the device and what is wrong.
TEST(MapRecordTest, OpenRejectsWhatIsNotARecord) {
  auto r = MapRecord::Create("dev0", TwoRegions());
  ASSERT_TRUE(r.ok());
  const off_t size = lseek((*r)->fd(), 0, SEEK_END);
  auto variant = [&](const std::function<void(char*)>& corrupt) {
    const int fd = memfd_create("bad", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    std::vector<char> bytes(static_cast<size_t>(size));
    EXPECT_EQ(pread((*r)->fd(), bytes.data(), bytes.size(), 0), size);
    corrupt(bytes.data());
    EXPECT_EQ(write(fd, bytes.data(), bytes.size()), size);
    EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    return std::string(MapRecord::Open("devX", UniqueFd(fd)).status().message());
  };
  auto put32 = [](char* p, size_t at, uint32_t v) { std::memcpy(p + at, &v, sizeof(v)); };
  auto put64 = [](char* p, size_t at, uint64_t v) { std::memcpy(p + at, &v, sizeof(v)); };
  EXPECT_EQ(variant([](char*) {}), "");
  EXPECT_THAT(variant([](char* p) { p[0] = 'X'; }), HasSubstr("devX: map record: not a map"));
  EXPECT_THAT(variant([&](char* p) { put32(p, 8, 9); }), HasSubstr("version 9, expected 2 to 3"));
  EXPECT_THAT(variant([&](char* p) { put32(p, 12, 3); }), HasSubstr("do not match its size"));
  EXPECT_THAT(variant([&](char* p) { put32(p, 12, ~0u); }), HasSubstr("do not match its size"));
  EXPECT_THAT(variant([&](char* p) { put64(p, 16, ~uint64_t{0}); }),
              HasSubstr("do not match its size"));
  // Region 0's entry: iova at 40, size 48, unit 56, first word 64; region 1's at 96: iova 104,
  // size 112, unit 120, first word 128.
  EXPECT_THAT(variant([&](char* p) { put64(p, 120, 3000); }),
              HasSubstr("region 1: map unit 3000 is not a power of two"));
  EXPECT_THAT(variant([&](char* p) { put64(p, 112, 0); }), HasSubstr("region 1: size 0"));
  EXPECT_THAT(variant([&](char* p) { put64(p, 128, 5); }),
              HasSubstr("region 1: its bits start at word 5, expected 4"));
  // Found by the fuzzer: regions sharing bitmap words (unrecording a unit of one cleared a
  // unit of the other).
  EXPECT_THAT(variant([&](char* p) { put64(p, 128, 3); }),
              HasSubstr("region 1: its bits start at word 3, expected 4"));
  EXPECT_THAT(variant([&](char* p) { put64(p, 128, ~uint64_t{0}); }),
              HasSubstr("region 1: its bits start at word"));
  EXPECT_THAT(variant([&](char* p) { put64(p, 48, uint64_t{1} << 30); }),  // region 0: 2^18 units
              HasSubstr("region 0: its bits (from word 0) run past"));
  EXPECT_THAT(variant([&](char* p) {
                put64(p, 48, 512 * kKiB);  // region 0: 4 words -> 2
                put64(p, 128, 2);
              }),
              HasSubstr("its regions use 3 bitmap words of 5"));
  EXPECT_THAT(
      std::string(MapRecord::Open("devX", UniqueFd(memfd_create("e", 0))).status().message()),
      HasSubstr("0 bytes, too small"));
  // A copy that is not sealed could shrink under the mapping (SIGBUS): refused.
  const int unsealed = memfd_create("unsealed", MFD_CLOEXEC);
  std::vector<char> bytes(static_cast<size_t>(size));
  EXPECT_EQ(pread((*r)->fd(), bytes.data(), bytes.size(), 0), size);
  EXPECT_EQ(write(unsealed, bytes.data(), bytes.size()), size);
  EXPECT_THAT(std::string(MapRecord::Open("devX", UniqueFd(unsealed)).status().message()),
              HasSubstr("devX: map record: not sealed against shrinking"));
}

}  // namespace
}  // namespace iopfd
