// The density curve, computed: page requests per 1000 accesses against the budget, for four
// access patterns, through iopfd's own fault processor and pager (FIFO and workingset) on a
// mapper that keeps the kernel's rules, side by side with two references on the same trace:
//  - A0, an online policy told each unit's access probability (in the current phase): it keeps
//    the most probable units. On traces whose accesses are drawn independently (uniform,
//    hot/cold, phase) no online policy can expect fewer faults (Aho, Denning and Ullman,
//    "Principles of optimal page replacement", JACM 1971); iopfd knows far less (it never sees
//    an access to a resident unit).
//  - Belady's MIN, which sees the future: the optimum no policy reaches online.
// It measures the policies, not the kernel: the VM benchmark (bench/run-bench.sh) measures fault
// latency on the real kernel.
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
#include <string>
#include <vector>

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

constexpr uint64_t kPage = 4096;
constexpr uint64_t kUnitPages = 4;
constexpr uint64_t kUnit = kUnitPages * kPage;
constexpr uint32_t kUnits = 256;  // W, the working set, in units
constexpr uint64_t kBase = 1 << 20;

// Maps and unmaps nothing real: it keeps the kernel's rule that only whole mappings unmap.
class CountingMapper : public iopfd::Mapper {
 public:
  absl::Status Map(const MapRequest& req) override {
    mapped_[req.iova] = req.length;
    return absl::OkStatus();
  }
  absl::Status Unmap(IoasId /*ioas*/, uint64_t iova, uint64_t length) override {
    auto it = mapped_.lower_bound(iova);
    if (it == mapped_.end() || it->first != iova) std::abort();  // not a whole mapping
    while (it != mapped_.end() && it->first < iova + length) it = mapped_.erase(it);
    return absl::OkStatus();
  }

 private:
  std::map<uint64_t, uint64_t> mapped_;
};

std::vector<uint32_t> Trace(const std::string& pattern, size_t n) {
  std::mt19937_64 rng(7);
  std::vector<uint32_t> t(n);
  std::uniform_int_distribution<uint32_t> any(0, kUnits - 1);
  std::uniform_real_distribution<double> coin(0, 1);
  const uint32_t hot = kUnits / 5;
  for (size_t i = 0; i < n; ++i) {
    if (pattern == "uniform") {
      t[i] = any(rng);
    } else if (pattern == "scan") {
      t[i] = static_cast<uint32_t>(i % kUnits);
    } else {
      // hot/cold: 80% of accesses to a fifth of W; "phase" moves the hot fifth halfway through.
      const uint32_t shift = pattern == "phase" && i >= n / 2 ? kUnits / 2 : 0;
      const uint32_t u = coin(rng) < 0.8
                             ? std::uniform_int_distribution<uint32_t>(0, hot - 1)(rng)
                             : std::uniform_int_distribution<uint32_t>(hot, kUnits - 1)(rng);
      t[i] = (u + shift) % kUnits;
    }
  }
  return t;
}

struct Result {
  uint64_t faults = 0, evictions = 0, thrash = 0, unmaps = 0;
  double seconds = 0;
};

Result Run(const std::vector<uint32_t>& trace, uint64_t budget_units, EvictionPolicy policy) {
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
  pager.AddSpace(dev, &table.spaces()[0], &mapper, budget_units * kUnit);
  proc.set_pager(&pager);
  Region& region = table.spaces()[0].regions()[0];

  Result r;
  uint32_t cookie = 0;
  uint64_t now = 1'000'000'000;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t u : trace) {
    now += 100'000;                                 // 100 us between accesses
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

// The probability that access i of `pattern` goes to `unit` (Trace's distributions).
double Probability(const std::string& pattern, size_t i, size_t n, uint32_t unit) {
  if (pattern != "hotcold" && pattern != "phase") return 1.0 / kUnits;  // uniform; scan: each once
  const uint32_t hot = kUnits / 5;
  const uint32_t shift = pattern == "phase" && i >= n / 2 ? kUnits / 2 : 0;
  const uint32_t u = (unit + kUnits - shift) % kUnits;
  return u < hot ? 0.8 / hot : 0.2 / (kUnits - hot);
}

// A0 with `capacity` units: on a fault with no room, the least probable resident unit goes; among
// equals, the one mapped last (so a loop over more than fits keeps a fixed part resident).
uint64_t A0Faults(const std::string& pattern, const std::vector<uint32_t>& trace,
                  uint64_t capacity) {
  std::vector<std::pair<uint32_t, size_t>> resident;  // unit, when mapped
  uint64_t faults = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    if (std::any_of(resident.begin(), resident.end(),
                    [&](const auto& r) { return r.first == trace[i]; })) {
      continue;
    }
    ++faults;
    if (resident.size() >= capacity) {
      auto worst =
          std::min_element(resident.begin(), resident.end(), [&](const auto& a, const auto& b) {
            const double pa = Probability(pattern, i, trace.size(), a.first);
            const double pb = Probability(pattern, i, trace.size(), b.first);
            return pa != pb ? pa < pb : a.second > b.second;
          });
      resident.erase(worst);
    }
    resident.emplace_back(trace[i], i);
  }
  return faults;
}

// Belady's MIN with `capacity` units.
uint64_t MinFaults(const std::vector<uint32_t>& trace, uint64_t capacity) {
  std::vector<size_t> next(trace.size());
  std::vector<size_t> seen(kUnits, SIZE_MAX);
  for (size_t i = trace.size(); i-- > 0;) {
    next[i] = seen[trace[i]];
    seen[trace[i]] = i;
  }
  std::map<uint32_t, size_t> resident;
  uint64_t faults = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    auto it = resident.find(trace[i]);
    if (it != resident.end()) {
      it->second = next[i];
      continue;
    }
    ++faults;
    if (resident.size() >= capacity) {
      resident.erase(
          std::max_element(resident.begin(), resident.end(),
                           [](const auto& a, const auto& b) { return a.second < b.second; }));
    }
    resident[trace[i]] = next[i];
  }
  return faults;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 50000;
  FILE* csv = argc > 2 ? std::fopen(argv[2], "w") : nullptr;
  if (csv != nullptr)
    std::fprintf(csv, "pattern,budget_w,policy,faults_per_1000,evictions,unmap_calls,thrash\n");
  std::printf("W = %u units of %" PRIu64 " KiB, %zu accesses per point; faults per 1000 accesses\n",
              kUnits, kUnit >> 10, n);
  std::printf("%-8s %6s %8s %10s %8s %8s %7s %7s %9s %8s %11s %6s\n", "pattern", "budget", "fifo",
              "workingset", "A0", "MIN", "ws/A0", "ws/MIN", "ws evicts", "ws unmap", "ws faults/s",
              "thrash");
  for (const char* pattern : {"uniform", "scan", "hotcold", "phase"}) {
    const std::vector<uint32_t> trace = Trace(pattern, n);
    for (double frac : {1.25, 1.0, 0.75, 0.5, 0.25, 0.1}) {
      const auto units = std::max<uint64_t>(1, static_cast<uint64_t>(frac * kUnits));
      const Result fifo = Run(trace, units, EvictionPolicy::kFifo);
      const Result ws = Run(trace, units, EvictionPolicy::kWorkingset);
      const uint64_t min = MinFaults(trace, units);
      const uint64_t a0 = A0Faults(pattern, trace, units);
      auto per1000 = [n](uint64_t f) { return 1000.0 * static_cast<double>(f) / n; };
      auto ratio = [](uint64_t a, uint64_t b) {
        return b == 0 ? 1.0 : static_cast<double>(a) / static_cast<double>(b);
      };
      std::printf("%-8s %5.2fW %8.1f %10.1f %8.1f %8.1f %6.2fx %6.2fx %9" PRIu64 " %8" PRIu64
                  " %11.0f %6" PRIu64 "\n",
                  pattern, frac, per1000(fifo.faults), per1000(ws.faults), per1000(a0),
                  per1000(min), ratio(ws.faults, a0), ratio(ws.faults, min), ws.evictions,
                  ws.unmaps, static_cast<double>(ws.faults) / std::max(ws.seconds, 1e-9),
                  ws.thrash);
      if (csv != nullptr) {
        for (const auto& [name, f, e, u, t] :
             {std::tuple{"fifo", fifo.faults, fifo.evictions, fifo.unmaps, fifo.thrash},
              std::tuple{"workingset", ws.faults, ws.evictions, ws.unmaps, ws.thrash},
              std::tuple{"a0", a0, uint64_t{0}, uint64_t{0}, uint64_t{0}},
              std::tuple{"min", min, uint64_t{0}, uint64_t{0}, uint64_t{0}}}) {
          std::fprintf(csv, "%s,%.2f,%s,%.2f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n", pattern, frac,
                       name, per1000(f), e, u, t);
        }
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  return 0;
}
