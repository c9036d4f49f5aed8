// A hash map for per-batch scratch: emptied in O(1) between batches and never freeing its
// storage, so a fault path that groups each read's records by cookie, or deduplicates their
// pages, allocates nothing in the steady state.
//
// Why not absl::flat_hash_map: its clear() frees the table once it has grown past 127 slots, and
// it grows again from nothing during the next batch (nine allocations per table and batch at 256
// records; bench/fault_path.cc counts them). Here a slot belongs to the current batch only when
// its epoch is the map's, so Clear() is one increment; the table grows only when a batch holds
// more keys than any before.
//
// Open addressing with linear probing over a power-of-two table at most half full; the hash is
// the caller's 64-bit mix, spread by a Fibonacci multiply. Not thread-safe.
#ifndef IOPFD_BASE_BATCH_MAP_H_
#define IOPFD_BASE_BATCH_MAP_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace iopfd {

// Mixes for the keys the fault path uses.
struct BatchMapHash {
  uint64_t operator()(uint32_t key) const { return key; }
  uint64_t operator()(uint64_t key) const { return key; }
  template <typename P>
  uint64_t operator()(const std::pair<P*, uint64_t>& key) const {
    return reinterpret_cast<uintptr_t>(key.first) ^ (key.second * 0xff51afd7ed558ccdull);
  }
};

template <typename Key, typename Value, typename Hash = BatchMapHash>
class BatchMap {
 public:
  // Starts with room for `reserve` keys (more grow the table).
  explicit BatchMap(size_t reserve = 64) { Grow(reserve); }

  // Forgets every key. Makes room for `expected` keys first, so that the batch to come does not
  // grow the table (allocating only when `expected` exceeds every earlier batch).
  void Clear(size_t expected = 0) {
    size_ = 0;
    if (++epoch_ == 0) {
      // Wrapped after 2^32 batches: every slot's epoch could now look current.
      for (Slot& s : slots_) s.epoch = 0;
      epoch_ = 1;
    }
    if (expected * 2 > slots_.size()) Grow(expected);
  }

  // Returns the value stored for `key`, storing `value` first when the key is absent; second is
  // true when it was stored now. The pointer is valid until the next TryEmplace or Clear.
  std::pair<Value*, bool> TryEmplace(const Key& key, Value value) {
    if ((size_ + 1) * 2 > slots_.size()) Rehash(slots_.size() * 2);
    Slot* s = Find(key);
    if (s->epoch == epoch_) return {&s->value, false};
    *s = Slot{key, std::move(value), epoch_};
    ++size_;
    return {&s->value, true};
  }

  // Returns true when `key` was stored since the last Clear.
  bool Contains(const Key& key) const { return slots_[IndexOf(key)].epoch == epoch_; }
  // Returns the value stored for `key` since the last Clear, or nullptr. The pointer is valid
  // until the next TryEmplace or Clear.
  const Value* Get(const Key& key) const {
    const Slot& s = slots_[IndexOf(key)];
    return s.epoch == epoch_ ? &s.value : nullptr;
  }

  // Returns how many keys are stored; the table's capacity in slots.
  size_t size() const { return size_; }
  size_t capacity() const { return slots_.size(); }

 private:
  struct Slot {
    Key key{};
    Value value{};
    uint32_t epoch = 0;  // 0: never used; the map's epoch starts at 1
  };

  // Returns the index of key's slot, or of the free slot where it would go.
  size_t IndexOf(const Key& key) const {
    const size_t mask = slots_.size() - 1;
    // shift_ is 64 - log2(slots) and slots >= 16, so the mask never changes it.
    const uint64_t h = Hash{}(key)*0x9e3779b97f4a7c15ull;
    size_t i = static_cast<size_t>(h >> (shift_ & 63));
    while (slots_[i].epoch == epoch_ && !(slots_[i].key == key)) i = (i + 1) & mask;
    return i;
  }
  Slot* Find(const Key& key) { return &slots_[IndexOf(key)]; }
  void Grow(size_t keys) {
    size_t n = 16;
    while (n < keys * 2) n *= 2;
    if (n > slots_.size()) Rehash(n);
  }
  void Rehash(size_t n) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(n, Slot{});
    shift_ = 64;
    for (size_t m = n; m > 1; m /= 2) --shift_;
    const uint32_t old_epoch = epoch_;
    epoch_ = 1;
    size_ = 0;
    for (Slot& s : old) {
      if (s.epoch != old_epoch) continue;
      Slot* to = Find(s.key);  // before the key is moved from
      *to = Slot{std::move(s.key), std::move(s.value), epoch_};
      ++size_;
    }
  }

  std::vector<Slot> slots_;
  uint32_t epoch_ = 1;
  unsigned shift_ = 60;
  size_t size_ = 0;
};

}  // namespace iopfd

#endif  // IOPFD_BASE_BATCH_MAP_H_
