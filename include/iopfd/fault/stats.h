// Per-device counters and histograms of the fault path.
#ifndef IOPFD_FAULT_STATS_H_
#define IOPFD_FAULT_STATS_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iopfd {

// A log-linear histogram of non-negative integers: values below 16 have exact buckets, above
// that each power of two is split into 8 linear sub-buckets, so a percentile read back is within
// 12.5% of the true value. Fixed size, no allocation: recording is a few instructions.
class Histogram {
 public:
  static constexpr int kSubBits = 3;
  static constexpr int kBuckets = 16 + (64 - 4) * (1 << kSubBits);

  void Record(uint64_t value, uint64_t count = 1);
  uint64_t count() const { return count_; }
  uint64_t sum() const { return sum_; }
  uint64_t max() const { return max_; }
  uint64_t min() const { return count_ ? min_ : 0; }
  // Returns the smallest bucket upper bound at or above fraction q (0..1] of the recorded
  // values (clamped to the largest value recorded), or 0 when empty.
  uint64_t Percentile(double q) const;
  void Merge(const Histogram& other);
  // Returns the non-empty buckets in ascending order as (upper bound, count): enough for a
  // client to diff two readings and take percentiles of what was recorded between them.
  std::vector<std::pair<uint64_t, uint64_t>> Buckets() const;

 private:
  static int BucketOf(uint64_t value);
  static uint64_t BucketUpper(int bucket);
  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
  uint64_t min_ = ~uint64_t{0};
};

// Why a group was answered INVALID.
enum class InvalidReason : int {
  kNoSpace = 0,     // no address space for the request's PASID (or for no PASID)
  kNoRegion,        // the address is outside every region of the space
  kPermission,      // the request asks for access the region does not grant
  kMapFailed,       // the IOMMU map call failed
  kForeignDevice,   // the record names a device this fault queue does not serve here
  kOversizedGroup,  // more records than limits.max_group_records
  kMalformed,       // inconsistent records (mixed PASIDs or devices in one group)
  kUnresolved,      // answered by the exactly-once guard: resolution never finished
  kRefused,         // the space is parked or quarantined (a drain): nothing is mapped for it
  kOverBudget,      // the units it needs cannot fit in a budget (max_resident) at all
  kCount,
};

// Returns a snake_case name for a reason ("no_region"), or "unknown" for a value outside the
// enum (a ledger a crashed process left may hold anything).
std::string_view InvalidReasonName(InvalidReason reason);
// Returns one sentence saying when a group is answered INVALID for this reason (the help text of
// its counter), or "" for a value outside the enum. Names and help come from one table.
std::string_view InvalidReasonHelp(InvalidReason reason);

// Demand paging in one scope (an address space, a device, or the daemon; pager.h).
struct PagingCounters {
  uint64_t resident_bytes = 0;  // gauge: bytes iopfd holds mapped (and so pinned) now
  uint64_t budget_bytes = 0;    // gauge: max_resident (0: unbounded)
  uint64_t resident_units = 0;  // gauge: map units iopfd holds mapped, whole or in part
  // Gauge: of those, the units held in part (first_touch = "page": pages mapped alone, the rest
  // of the unit not; PAGING.md, "Partial units").
  uint64_t partial_units = 0;
  uint64_t evicted_units = 0;  // map units unmapped to stay within a budget
  uint64_t evicted_bytes = 0;
  uint64_t unmap_calls = 0;           // IOAS unmap ioctls issued (adjacent units share one)
  uint64_t unmap_failures = 0;        // unmap ioctls that failed (the units stay, counted stuck)
  uint64_t refaults = 0;              // units mapped again after an eviction
  uint64_t thrash_protections = 0;    // units protected after re-faulting quickly, again and again
  uint64_t dirty_second_chances = 0;  // units kept once more: the device wrote them (dirty bits)
  // Units that could not be mapped within the budget: the group waited for answers to be
  // written (deferred) or, when the budget cannot hold it at all, was answered INVALID.
  uint64_t over_budget = 0;
  uint64_t deferred_groups = 0;  // groups that waited for room (resolved again later)
  Histogram unmap_ns;            // duration of each unmap call
};

struct DeviceStats {
  uint64_t reads = 0;        // fault fd reads that returned records
  uint64_t empty_reads = 0;  // reads that returned 0 (nothing queued)
  uint64_t read_grows = 0;   // EINVAL reads that grew the buffer
  uint64_t records = 0;      // page request records read
  uint64_t groups = 0;       // groups (distinct cookies) read
  uint64_t responses_success = 0;
  uint64_t responses_invalid = 0;
  std::array<uint64_t, static_cast<int>(InvalidReason::kCount)> invalid_by_reason{};
  uint64_t map_calls = 0;     // IOAS map ioctls issued
  uint64_t map_failures = 0;  // map ioctls that failed
  uint64_t bytes_mapped = 0;
  uint64_t pages_already_mapped = 0;  // requested pages found mapped (answered without a map)
  uint64_t pages_deduped = 0;         // requests for a page another request of the batch asked for
  uint64_t pages_prefetched = 0;   // pages mapped ahead of a request (prefetch window, length hint)
  uint64_t writes = 0;             // response writes issued
  uint64_t responses_written = 0;  // responses the kernel accepted
  uint64_t responses_rejected = 0;   // responses the kernel refused (unknown cookie)
  uint64_t responses_abandoned = 0;  // responses dropped because the fault fd failed
  // Responses dropped unwritten because their attachment was parked (drained): the kernel
  // answered those groups itself, and their cookies may already name new groups.
  uint64_t responses_stale_dropped = 0;
  // Responses the epoch fence stopped: read before their attachment was parked, still queued
  // at the next write (an invariant violation, a bug; dropped, never written).
  uint64_t stale_epoch_blocked = 0;
  // What a previous iopfd left when it died with this device's fault queue in systemd's fd store
  // (inflight_ledger.h): its owed answers written now and accepted, those the kernel had already
  // accepted before it died (rejected now, harmlessly), and groups it read but never resolved,
  // resolved now (also counted in groups).
  uint64_t recovered_answers = 0;
  uint64_t recovered_already_answered = 0;
  uint64_t recovered_groups = 0;
  uint64_t guard_answered = 0;     // groups answered INVALID by the exactly-once guard (a bug)
  uint64_t duplicate_cookies = 0;  // a cookie read again while still outstanding (kernel bug)
  // The drain state machine (DrainController).
  uint64_t drain_epoch = 0;        // incremented at every resume
  uint64_t drain_transitions = 0;  // state changes
  uint64_t drains = 0;             // drains and resets that reached RUNNING again
  uint64_t function_resets = 0;    // function level resets issued
  uint64_t quarantines = 0;        // times the device was quarantined
  // Drains that found a group read and not accounted for after the flush (a bug; reported).
  uint64_t drain_unaccounted = 0;
  PagingCounters paging;    // this device's scope (pager.h)
  Histogram batch_records;  // records per read
  Histogram latency_ns;     // read completion -> response write completion

  // Returns groups read minus responses resolved: the groups still owed an answer.
  uint64_t outstanding() const {
    return groups -
           (responses_written + responses_rejected + responses_abandoned + responses_stale_dropped);
  }
};

// Returns a multi-line human summary of one device's stats.
std::string FormatStatsText(std::string_view device, const DeviceStats& stats);
// Returns StatsJson(device, stats) on one line (stat_table.h): --stats-json and the
// final-counters journal entry.
std::string FormatStatsJson(std::string_view device, const DeviceStats& stats);

}  // namespace iopfd

#endif  // IOPFD_FAULT_STATS_H_
