#include "iopfd/fault/stats.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "iopfd/fault/stat_table.h"

namespace iopfd {

int Histogram::BucketOf(uint64_t value) {
  if (value < 16) return static_cast<int>(value);
  // Highest set bit h >= 4; the next kSubBits bits pick the linear sub-bucket.
  int h = 63 - std::countl_zero(value);
  int sub = static_cast<int>((value >> (h - kSubBits)) & ((1 << kSubBits) - 1));
  return 16 + (h - 4) * (1 << kSubBits) + sub;
}

uint64_t Histogram::BucketUpper(int bucket) {
  if (bucket < 16) return static_cast<uint64_t>(bucket);
  int h = (bucket - 16) / (1 << kSubBits) + 4;
  int sub = (bucket - 16) % (1 << kSubBits);
  uint64_t base = uint64_t{1} << h;
  uint64_t step = uint64_t{1} << (h - kSubBits);
  return base + step * static_cast<uint64_t>(sub + 1) - 1;
}

void Histogram::Record(uint64_t value, uint64_t count) {
  if (count == 0) return;
  buckets_[BucketOf(value)] += count;
  count_ += count;
  sum_ += value * count;
  max_ = std::max(max_, value);
  min_ = std::min(min_, value);
}

uint64_t Histogram::Percentile(double q) const {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::max<uint64_t>(rank, 1);
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b];
    if (seen >= rank) return std::min(BucketUpper(b), max_);
  }
  return max_;
}

std::vector<std::pair<uint64_t, uint64_t>> Histogram::Buckets() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (int b = 0; b < kBuckets; ++b) {
    if (buckets_[b] != 0) out.emplace_back(BucketUpper(b), buckets_[b]);
  }
  return out;
}

void Histogram::Merge(const Histogram& other) {
  for (int b = 0; b < kBuckets; ++b) buckets_[b] += other.buckets_[b];
  count_ += other.count_;
  sum_ += other.sum_;
  max_ = std::max(max_, other.max_);
  min_ = std::min(min_, other.min_);
}

namespace {

// One row per reason, in the enum's order (checked at compile time below): its name in every
// output, and the help text of its counter (Prometheus HELP, the IDL, docs/CONTROL.md).
struct ReasonRow {
  InvalidReason reason;
  std::string_view name;
  std::string_view help;
};

constexpr std::array<ReasonRow, static_cast<size_t>(InvalidReason::kCount)> kReasons = {{
    {InvalidReason::kNoSpace, "no_space",
     "No address space for the request's PASID (or for requests without one)."},
    {InvalidReason::kNoRegion, "no_region", "The address is outside every region of the space."},
    {InvalidReason::kPermission, "permission",
     "The request asks for access its region does not grant."},
    {InvalidReason::kMapFailed, "map_failed", "The IOMMU map call failed."},
    {InvalidReason::kForeignDevice, "foreign_device",
     "The record names a device this fault queue does not serve."},
    {InvalidReason::kOversizedGroup, "oversized_group",
     "The group has more records than limits.max_group_records."},
    {InvalidReason::kMalformed, "malformed",
     "Inconsistent records (mixed PASIDs or devices in one group)."},
    {InvalidReason::kUnresolved, "unresolved",
     "Answered by the exactly-once guard: resolution never finished (a bug)."},
    {InvalidReason::kRefused, "refused",
     "The space was parked by a drain, or the device is quarantined."},
    {InvalidReason::kOverBudget, "over_budget",
     "The units it needs cannot fit in a max_resident budget, even after eviction."},
}};

constexpr bool RowsInEnumOrder() {
  for (size_t i = 0; i < kReasons.size(); ++i) {
    if (static_cast<size_t>(kReasons[i].reason) != i || kReasons[i].name.empty() ||
        kReasons[i].help.empty()) {
      return false;
    }
  }
  return true;
}
static_assert(RowsInEnumOrder(), "kReasons needs one row per InvalidReason, in the enum's order");

const ReasonRow* RowOf(InvalidReason reason) {
  auto i = static_cast<size_t>(reason);
  return i < kReasons.size() ? &kReasons[i] : nullptr;
}

}  // namespace

std::string_view InvalidReasonName(InvalidReason reason) {
  const ReasonRow* row = RowOf(reason);
  return row != nullptr ? row->name : "unknown";
}

std::string_view InvalidReasonHelp(InvalidReason reason) {
  const ReasonRow* row = RowOf(reason);
  return row != nullptr ? row->help : "";
}

namespace {

std::string Micros(uint64_t ns) { return absl::StrFormat("%.1fus", static_cast<double>(ns) / 1e3); }

}  // namespace

std::string FormatStatsText(std::string_view device, const DeviceStats& s) {
  std::string out = absl::StrCat(
      absl::string_view(device.data(), device.size()), ": ", s.records, " records in ", s.groups,
      " groups over ", s.reads, " reads; answered ", s.responses_success, " success, ",
      s.responses_invalid, " invalid; outstanding ", s.outstanding(), "\n");
  if (s.responses_invalid > 0) {
    absl::StrAppend(&out, "  invalid by reason:");
    for (int r = 0; r < static_cast<int>(InvalidReason::kCount); ++r) {
      if (s.invalid_by_reason[r] == 0) continue;
      absl::StrAppend(&out, " ", std::string(InvalidReasonName(static_cast<InvalidReason>(r))), "=",
                      s.invalid_by_reason[r]);
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "  maps: ", s.map_calls, " calls, ", s.bytes_mapped, " bytes, ",
                  s.map_failures, " failed; pages already mapped ", s.pages_already_mapped,
                  ", deduped ", s.pages_deduped, ", prefetched ", s.pages_prefetched, "\n");
  absl::StrAppend(&out, "  writes: ", s.writes, " (", s.responses_written, " accepted, ",
                  s.responses_rejected, " rejected, ", s.responses_abandoned, " abandoned, ",
                  s.responses_stale_dropped, " dropped as stale)", "; empty reads ", s.empty_reads,
                  ", buffer grows ", s.read_grows, "\n");
  absl::StrAppend(&out, "  batch records: p50 ", s.batch_records.Percentile(0.5), " p99 ",
                  s.batch_records.Percentile(0.99), " max ", s.batch_records.max(), "\n");
  absl::StrAppend(&out, "  latency: p50 ", Micros(s.latency_ns.Percentile(0.5)), " p99 ",
                  Micros(s.latency_ns.Percentile(0.99)), " max ", Micros(s.latency_ns.max()), "\n");
  if (s.drain_transitions != 0) {
    absl::StrAppend(&out, "  drains: ", s.drains, " completed, ", s.function_resets,
                    " function resets, ", s.quarantines, " quarantines, epoch ", s.drain_epoch,
                    "\n");
  }
  if (s.recovered_answers || s.recovered_already_answered || s.recovered_groups) {
    absl::StrAppend(&out, "  recovered after a crash: ", s.recovered_answers,
                    " owed answers written (", s.recovered_already_answered, " already answered), ",
                    s.recovered_groups, " unresolved groups resolved\n");
  }
  if (s.guard_answered || s.duplicate_cookies || s.stale_epoch_blocked || s.drain_unaccounted) {
    absl::StrAppend(&out, "  INVARIANT: guard answered ", s.guard_answered, ", duplicate cookies ",
                    s.duplicate_cookies, ", stale epoch blocked ", s.stale_epoch_blocked,
                    ", drain unaccounted ", s.drain_unaccounted, "\n");
  }
  return out;
}

std::string FormatStatsJson(std::string_view device, const DeviceStats& s) {
  // Device names are checked when configured; replace keeps a bad byte from throwing anyway.
  return StatsJson(device, s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace iopfd
