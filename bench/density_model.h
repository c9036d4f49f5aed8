// The density benchmark's model, shared by the host run (bench/density.cc, iopfd's pager on a
// counting mapper) and the guest run (bench/density_guest.cc, iopfd serving the mock device in
// the test VM): the access patterns, and the two references every policy is shown beside.
//  - A0, an online policy told each unit's access probability (in the current phase): it keeps
//    the most probable units. On traces whose accesses are drawn independently (uniform,
//    hot/cold, phase) no online policy can expect fewer faults (Aho, Denning and Ullman,
//    "Principles of optimal page replacement", JACM 1971).
//  - Belady's MIN, which sees the future: the optimum no policy reaches online.
// Header-only and free of iopfd's libraries: the guest program is built on its own.
#ifndef IOPFD_BENCH_DENSITY_MODEL_H_
#define IOPFD_BENCH_DENSITY_MODEL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace iopfd::density {

constexpr uint32_t kUnits = 256;  // W, the working set, in map units

// The patterns, in the order the tables list them.
inline const std::vector<std::string>& Patterns() {
  static const std::vector<std::string> p = {"uniform", "scan", "hotcold", "phase"};
  return p;
}
// The budgets, as fractions of W.
inline const std::vector<double>& BudgetFractions() {
  static const std::vector<double> b = {1.25, 1.0, 0.75, 0.5, 0.25, 0.1};
  return b;
}
// A budget of `fraction` W, in units (at least one).
inline uint64_t BudgetUnits(double fraction) {
  return std::max<uint64_t>(1, static_cast<uint64_t>(fraction * kUnits));
}

// n accesses of `pattern`, as unit numbers below kUnits (the same trace for a given n):
//  uniform  every unit alike;
//  scan     a loop over all W;
//  hotcold  80% of accesses to a fifth of W;
//  phase    hot/cold whose hot fifth moves by half of W halfway through.
inline std::vector<uint32_t> Trace(const std::string& pattern, size_t n) {
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

// The probability that access i of `pattern` goes to `unit` (Trace's distributions).
inline double Probability(const std::string& pattern, size_t i, size_t n, uint32_t unit) {
  if (pattern != "hotcold" && pattern != "phase") return 1.0 / kUnits;  // uniform; scan: each once
  const uint32_t hot = kUnits / 5;
  const uint32_t shift = pattern == "phase" && i >= n / 2 ? kUnits / 2 : 0;
  const uint32_t u = (unit + kUnits - shift) % kUnits;
  return u < hot ? 0.8 / hot : 0.2 / (kUnits - hot);
}

// A0 with `capacity` units: on a fault with no room, the least probable resident unit goes; among
// equals, the one mapped last (so a loop over more than fits keeps a fixed part resident).
inline uint64_t A0Faults(const std::string& pattern, const std::vector<uint32_t>& trace,
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
inline uint64_t MinFaults(const std::vector<uint32_t>& trace, uint64_t capacity) {
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

}  // namespace iopfd::density

#endif  // IOPFD_BENCH_DENSITY_MODEL_H_
