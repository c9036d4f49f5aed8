#include "iopfd/base/batch_map.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <utility>

namespace iopfd {
namespace {

TEST(BatchMapTest, StoresOnceAndFindsWhatWasStored) {
  BatchMap<uint32_t, uint32_t> m;
  auto [v, inserted] = m.TryEmplace(7, 1);
  EXPECT_TRUE(inserted);
  EXPECT_EQ(*v, 1u);
  auto [again, inserted_again] = m.TryEmplace(7, 2);
  EXPECT_FALSE(inserted_again);
  EXPECT_EQ(*again, 1u);  // the first value stays
  EXPECT_TRUE(m.Contains(7));
  EXPECT_FALSE(m.Contains(8));
  EXPECT_EQ(m.size(), 1u);
}

TEST(BatchMapTest, ClearForgetsEveryKeyWithoutShrinking) {
  BatchMap<uint32_t, uint32_t> m;
  for (uint32_t k = 0; k < 1000; ++k) m.TryEmplace(k, k);
  const size_t capacity = m.capacity();
  m.Clear();
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.capacity(), capacity);
  for (uint32_t k = 0; k < 1000; ++k) EXPECT_FALSE(m.Contains(k)) << k;
  auto [v, inserted] = m.TryEmplace(5, 99);
  EXPECT_TRUE(inserted);
  EXPECT_EQ(*v, 99u);  // not the value of the forgotten batch
}

TEST(BatchMapTest, ClearMakesRoomForTheBatchToCome) {
  BatchMap<uint32_t, uint32_t> m(16);
  m.Clear(1000);
  const size_t capacity = m.capacity();
  EXPECT_GE(capacity, 2000u);
  for (uint32_t k = 0; k < 1000; ++k) m.TryEmplace(k * 4096, k);
  EXPECT_EQ(m.capacity(), capacity);  // no growth during the batch
}

TEST(BatchMapTest, GrowsPastItsReserveKeepingTheBatch) {
  BatchMap<uint32_t, uint32_t> m(4);
  for (uint32_t k = 0; k < 5000; ++k) m.TryEmplace(k * 7919, k);
  EXPECT_EQ(m.size(), 5000u);
  for (uint32_t k = 0; k < 5000; ++k) {
    auto [v, inserted] = m.TryEmplace(k * 7919, 0);
    EXPECT_FALSE(inserted) << k;
    EXPECT_EQ(*v, k);
  }
}

TEST(BatchMapTest, AgreesWithAStdMapOverManyBatches) {
  // Colliding keys (multiples of a large power of two), repeats within a batch, and keys of an
  // earlier batch that must read as absent.
  std::mt19937_64 rng(1);
  BatchMap<std::pair<const int*, uint64_t>, int> m;
  int region[2];
  for (int batch = 0; batch < 200; ++batch) {
    std::map<std::pair<const int*, uint64_t>, int> want;
    const int n = static_cast<int>(rng() % 300);
    m.Clear(static_cast<size_t>(n / 2));
    for (int i = 0; i < n; ++i) {
      const std::pair<const int*, uint64_t> key{&region[rng() % 2], (rng() % 64) << 32};
      auto [v, inserted] = m.TryEmplace(key, i);
      auto [it, want_inserted] = want.try_emplace(key, i);
      ASSERT_EQ(inserted, want_inserted) << batch << " " << i;
      ASSERT_EQ(*v, it->second);
    }
    ASSERT_EQ(m.size(), want.size());
  }
}

}  // namespace
}  // namespace iopfd
