// The density curve, computed: page requests per 1000 accesses against the budget, for four
// access patterns, through iopfd's own fault processor and pager (FIFO and workingset) on a
// mapper that keeps the kernel's rules, side by side with A0 (the online bound) and Belady's MIN
// on the same trace (density_model.h). It measures the policies, not the kernel: the same
// traces on the mock device in the test VM are bench/run-density.sh's.
//
// Usage: iopfd-density [ACCESSES] [CSV]. Prints a table; writes the points to CSV when given
// (bench/plot-density.py turns that into docs/density.svg).
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "density_model.h"
#include "iopfd/fault/fault_processor.h"
#include "iopfd/fault/pager.h"

namespace {

using iopfd::AddressSpace;
using iopfd::DeviceStats;
using iopfd::EvictionPolicy;
using iopfd::FaultProcessor;
using iopfd::FaultProcessorOptions;
using iopfd::IoasId;
using iopfd::MapRequest;
using iopfd::Pager;
using iopfd::PagerOptions;
using iopfd::Region;
using iopfd::ResponseQueue;
using iopfd::SpaceTable;
using iopfd::density::A0Faults;
using iopfd::density::kUnits;
using iopfd::density::MinFaults;
using iopfd::density::Trace;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kUnitPages = 4;
constexpr uint64_t kUnit = kUnitPages * kPage;
constexpr uint64_t kBase = 1 << 20;

// Maps and unmaps nothing real: it keeps the kernel's rule that only whole mappings unmap.
class CountingMapper : public iopfd::Mapper {
 public:
  absl::Status Map(const MapRequest& req) override {
    mapped_[req.iova] = req.length;
    return absl::OkStatus();
  }
  absl::Status Unmap(IoasId /*ioas*/, uint64_t iova, uint64_t length, uint64_t /*held*/) override {
    auto it = mapped_.lower_bound(iova);
    if (it == mapped_.end() || it->first != iova) std::abort();  // not a whole mapping
    while (it != mapped_.end() && it->first < iova + length) it = mapped_.erase(it);
    return absl::OkStatus();
  }
  // Dirty bits: a unit is dirty when the device wrote it since the last read (Write).
  absl::StatusOr<bool> TakeDirty(iopfd::HwptId /*hwpt*/, uint64_t iova, uint64_t /*length*/,
                                 uint64_t /*page_size*/) override {
    return dirty_.erase(iova) != 0;
  }
  void Write(uint64_t unit_iova) { dirty_.insert(unit_iova); }

 private:
  std::set<uint64_t> dirty_;
  std::map<uint64_t, uint64_t> mapped_;
};

struct Result {
  uint64_t faults = 0, evictions = 0, thrash = 0, unmaps = 0;
  double seconds = 0;
};

// With `writes`, the space reads dirty bits and every access writes its unit (the dirty-bit
// second chance at its best: docs/PAGING.md).
Result Run(const std::vector<uint32_t>& trace, uint64_t budget_units, EvictionPolicy policy,
           bool writes = false) {
  std::vector<Region> regions;
  regions.emplace_back(kBase, kUnits * kUnit, kPage, iopfd::uapi::kPermRead, 0, 100, 0, nullptr,
                       kUnit);
  std::vector<AddressSpace> spaces;
  spaces.emplace_back(std::nullopt, IoasId(3), std::move(regions));
  SpaceTable table(std::move(spaces));
  DeviceStats stats;
  ResponseQueue queue(&stats);
  CountingMapper mapper;
  FaultProcessor proc(FaultProcessorOptions{}, &table, &mapper, &queue, &stats);
  Pager pager(PagerOptions{.policy = policy});
  iopfd::PagedDevice* dev = pager.AddDevice("density", std::nullopt, &stats.paging, &queue);
  iopfd::PagedSpace* paged = pager.AddSpace(dev, &table.spaces()[0], &mapper, budget_units * kUnit);
  if (writes) paged->set_dirty_hwpt(iopfd::HwptId(1));
  proc.set_pager(&pager);
  Region& region = table.spaces()[0].regions()[0];

  Result r;
  uint32_t cookie = 0;
  uint64_t now = 1'000'000'000;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t u : trace) {
    now += 100'000;  // 100 us between accesses
    if (writes) mapper.Write(kBase + u * kUnit);
    if (region.IsMapped(u * kUnitPages)) continue;  // resident: no page request
    ++r.faults;
    iopfd::uapi::PageFault rec{};
    rec.flags = iopfd::uapi::kPgfaultLastPage;
    rec.perm = iopfd::uapi::kPermRead;
    rec.addr = kBase + u * kUnit;
    rec.cookie = ++cookie;
    proc.Process({&rec, 1}, now);
    while (queue.HasUnwritten()) {
      auto span = queue.BeginWrite();
      queue.CompleteWrite(static_cast<ssize_t>(span.size_bytes()), now);
      proc.RetryDeferred(now);
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.evictions = stats.paging.evicted_units;
  r.thrash = stats.paging.thrash_protections;
  r.unmaps = stats.paging.unmap_calls;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 50000;
  FILE* csv = argc > 2 ? std::fopen(argv[2], "w") : nullptr;
  if (csv != nullptr)
    std::fprintf(csv, "pattern,budget_w,policy,faults_per_1000,evictions,unmap_calls,thrash\n");
  std::printf("W = %u units of %" PRIu64 " KiB, %zu accesses per point; faults per 1000 accesses\n",
              kUnits, kUnit >> 10, n);
  std::printf("%-8s %6s %8s %10s %8s %8s %8s %7s %7s %9s %8s %11s %6s\n", "pattern", "budget",
              "fifo", "workingset", "ws+dirty", "A0", "MIN", "ws/A0", "ws/MIN", "ws evicts",
              "ws unmap", "ws faults/s", "thrash");
  for (const std::string& pattern : iopfd::density::Patterns()) {
    const std::vector<uint32_t> trace = Trace(pattern, n);
    for (double frac : iopfd::density::BudgetFractions()) {
      const uint64_t units = iopfd::density::BudgetUnits(frac);
      const Result fifo = Run(trace, units, EvictionPolicy::kFifo);
      const Result ws = Run(trace, units, EvictionPolicy::kWorkingset);
      const Result dirty = Run(trace, units, EvictionPolicy::kWorkingset, /*writes=*/true);
      const uint64_t min = MinFaults(trace, units);
      const uint64_t a0 = A0Faults(pattern, trace, units);
      auto per1000 = [n](uint64_t f) { return 1000.0 * static_cast<double>(f) / n; };
      auto ratio = [](uint64_t a, uint64_t b) {
        return b == 0 ? 1.0 : static_cast<double>(a) / static_cast<double>(b);
      };
      std::printf("%-8s %5.2fW %8.1f %10.1f %8.1f %8.1f %8.1f %6.2fx %6.2fx %9" PRIu64 " %8" PRIu64
                  " %11.0f %6" PRIu64 "\n",
                  pattern.c_str(), frac, per1000(fifo.faults), per1000(ws.faults),
                  per1000(dirty.faults), per1000(a0), per1000(min), ratio(ws.faults, a0),
                  ratio(ws.faults, min), ws.evictions, ws.unmaps,
                  static_cast<double>(ws.faults) / std::max(ws.seconds, 1e-9), ws.thrash);
      if (csv != nullptr) {
        for (const auto& [name, f, e, u, t] :
             {std::tuple{"fifo", fifo.faults, fifo.evictions, fifo.unmaps, fifo.thrash},
              std::tuple{"workingset", ws.faults, ws.evictions, ws.unmaps, ws.thrash},
              std::tuple{"workingset_dirty", dirty.faults, dirty.evictions, dirty.unmaps,
                         dirty.thrash},
              std::tuple{"a0", a0, uint64_t{0}, uint64_t{0}, uint64_t{0}},
              std::tuple{"min", min, uint64_t{0}, uint64_t{0}, uint64_t{0}}}) {
          std::fprintf(csv, "%s,%.2f,%s,%.2f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n",
                       pattern.c_str(), frac, name, per1000(f), e, u, t);
        }
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  return 0;
}
