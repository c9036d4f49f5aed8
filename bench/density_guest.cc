// iopf-density: runs inside the test VM (bench/run-density.sh). Not a test: it prints numbers.
//
// 1. The density curve on the real kernel: the traces of density_model.h played against the
//    mock device, whose page requests iopfd (adopt mode) serves under a budget. An access to a
//    unit first asks the IO page table (IOMMU_TEST_OP_MD_CHECK_MAP on one of its pages, which
//    must translate to that page of the backing): present, it costs nothing; absent, the
//    program raises a page request for it (IOMMU_TEST_OP_TRIGGER_IOPF) and waits until the
//    translation is there. For every (pattern, budget, policy): page requests per 1000
//    accesses, and iopfd's own counters (units evicted, unmap calls, thrash protections).
// 2. Map units: what a map call costs against its size (IOMMU_IOAS_MAP_FILE and
//    IOMMU_IOAS_UNMAP on the mock domain, no iopfd), and what iopfd's unit size does to a
//    device that streams through a region and to one that touches isolated pages.
//
// Output lines start with IOPF-DENSITY; run-density.sh turns them into a table, a CSV and a
// plot. Under TCG every kernel entry is slow: the fault counts are exact, the times are TCG's.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <random>
#include <string>
#include <vector>

#include "density_model.h"
#include "mock_env.h"

namespace {

using namespace mockenv;  // NOLINT(google-build-using-namespace): the guest's shared helpers

constexpr uint64_t kIova = 0x40000000;  // 1 GiB, inside the mock aperture
constexpr uint64_t kUnitPages = 4;      // 16 KiB units, as in the host run (density.cc)
constexpr uint64_t kUnitBytes = kUnitPages * kPage;

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Swaps the environment's memfd for one of `size` bytes (iopfd inherits it as "ram1").
void UseRegion(Env& e, uint64_t size) {
  munmap(e.va1, kR1Size);
  close(e.ram1);
  e.ram1 = memfd_create("iopf-density", MFD_CLOEXEC);
  if (e.ram1 < 0 || ftruncate(e.ram1, static_cast<off_t>(size))) Die("density memfd");
  e.va1 = MapFile(e.ram1, size);
}

// Gives back what UseRegion mapped (Env's destructor knows only the original size).
void DropRegion(Env& e, uint64_t size) {
  munmap(e.va1, size);
  e.va1 = nullptr;
}

// The device file: one rw region of `size` bytes at kIova backed by ram1, no prefetch, units of
// `unit` bytes, each mapped whole from its first touch (first_touch = "unit": the tables in
// docs/PAGING.md compare unit sizes and policies, not partial units), and `max_resident` bytes
// for the space (0: unbounded).
std::string DeviceText(const Env& e, uint64_t size, uint64_t unit, uint64_t max_resident) {
  std::string budget =
      max_resident == 0 ? "" : Format("max_resident = \"%lluKiB\"\n", max_resident >> 10);
  return Format(
      "name = \"mock0\"\nattach = \"adopt\"\n\n"
      "[adopt]\niommufd_fd = \"iommufd\"\nfault_fd = \"fault\"\ndevice_id = %u\n\n"
      "[[space]]\nioas_id = %u\n%s"
      "  [[space.region]]\n  iova = 0x%llx\n  size = \"%lluKiB\"\n  map_unit = \"%lluKiB\"\n"
      "  backing = \"fd:ram1\"\n  access = \"rw\"\n  first_touch = \"unit\"\n",
      e.idev, e.ioas, budget.c_str(), static_cast<unsigned long long>(kIova),
      static_cast<unsigned long long>(size >> 10), static_cast<unsigned long long>(unit >> 10));
}

// Starts iopfd with `policy` on e's configuration and waits until it serves its control socket.
Daemon StartServing(Env& e, const std::string& policy) {
  std::ifstream in(e.dir + "/iopfd.toml");
  std::stringstream text;
  text << in.rdbuf();
  WriteFile(e.dir + "/iopfd.toml", text.str() + "[paging]\npolicy = \"" + policy + "\"\n");
  Daemon d = StartWith(e.dir, e.Fds());
  if (!WaitFor([&] { return ControlClient(e.dir + "/ctl.sock").ok(); }, 30000)) {
    EchoLog(d);
    Die("iopfd never opened its control socket");
  }
  return d;
}

// One access to the page at `iova`: returns false when it was present, true when it took a
// page request (and waits until the translation is there; dies after 30 s).
bool Access(const Env& e, uint64_t iova, uint32_t grpid) {
  const char* page = e.va1 + (iova - kIova);
  if (CheckMap(e, e.hwpt, iova, kPage, page)) return false;
  if (Trigger(e, iova, IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE, false, grpid)) {
    Die("trigger at 0x%llx failed", static_cast<unsigned long long>(iova));
  }
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (!CheckMap(e, e.hwpt, iova, kPage, page)) {
    if (Clock::now() > deadline) Die("0x%llx never mapped", static_cast<unsigned long long>(iova));
  }
  return true;
}

struct Point {
  uint64_t faults = 0;
  double seconds = 0;
  std::map<std::string, uint64_t> stats;  // iopfd's counters for mock0
  bool ok = false;
};

// Plays `trace` (units of kUnitBytes) with a budget of `budget_units` under `policy`.
Point PlayTrace(const std::vector<uint32_t>& trace, uint64_t budget_units,
                const std::string& policy, const std::string& name) {
  using iopfd::density::kUnits;
  const uint64_t size = kUnits * kUnitBytes;
  Env e;
  Setup(e, name, "warning");
  UseRegion(e, size);
  WriteFile(e.dir + "/devices.d/mock0.toml",
            DeviceText(e, size, kUnitBytes, budget_units * kUnitBytes));
  Daemon d = StartServing(e, policy);
  Point p;
  const auto t0 = Clock::now();
  for (size_t i = 0; i < trace.size(); ++i) {
    // A different page of the unit each time: the unit is what is mapped and evicted.
    const uint64_t iova = kIova + trace[i] * kUnitBytes + (i % kUnitPages) * kPage;
    if (Access(e, iova, static_cast<uint32_t>(i % 512))) ++p.faults;
  }
  p.seconds = Seconds(t0);
  const int rc = Stop(d);
  p.stats = ReadStats(d);
  // Every page request answered, each once, and nothing left owed.
  p.ok = rc == 0 && p.stats["responses_written"] == p.faults && p.stats["outstanding"] == 0;
  DropRegion(e, size);
  return p;
}

void DensityCurve(size_t n) {
  using namespace iopfd::density;  // NOLINT(google-build-using-namespace)
  std::printf("IOPF-DENSITY W = %u units of %llu KiB, %zu accesses per point\n", kUnits,
              static_cast<unsigned long long>(kUnitBytes >> 10), n);
  std::printf(
      "IOPF-DENSITY csv pattern,budget_w,policy,faults_per_1000,evictions,unmap_calls,thrash,"
      "faults_per_s\n");
  for (const std::string& pattern : Patterns()) {
    const std::vector<uint32_t> trace = Trace(pattern, n);
    for (double frac : BudgetFractions()) {
      const uint64_t units = BudgetUnits(frac);
      for (const char* policy : {"fifo", "workingset"}) {
        const Point p = PlayTrace(trace, units, policy,
                                  Format("density-%s-%.2f-%s", pattern.c_str(), frac, policy));
        if (!p.ok) std::printf("IOPF-DENSITY FAILED %s %.2f %s\n", pattern.c_str(), frac, policy);
        auto stat = [&](const char* key) {
          auto it = p.stats.find(key);
          return it == p.stats.end() ? uint64_t{0} : it->second;
        };
        std::printf("IOPF-DENSITY csv %s,%.2f,%s,%.2f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%.0f\n",
                    pattern.c_str(), frac, policy, 1000.0 * static_cast<double>(p.faults) / n,
                    stat("paging.evicted_units"), stat("paging.unmap_calls"),
                    stat("paging.thrash_protections"),
                    static_cast<double>(p.faults) / std::max(p.seconds, 1e-9));
        std::fflush(stdout);
      }
      for (const auto& [name, faults] : {std::pair{"a0", A0Faults(pattern, trace, units)},
                                         std::pair{"min", MinFaults(trace, units)}}) {
        std::printf("IOPF-DENSITY csv %s,%.2f,%s,%.2f,0,0,0,0\n", pattern.c_str(), frac, name,
                    1000.0 * static_cast<double>(faults) / n);
      }
    }
  }
}

// The kernel's cost of one map call (and its unmap) against the size it maps: `iterations`
// pairs of IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_UNMAP of each size on the mock domain.
void MapCallCost(int iterations) {
  Env e;
  Setup(e, "density-mapcost", "warning");
  constexpr uint64_t kMax = 2 << 20;
  UseRegion(e, kMax);
  std::printf("IOPF-DENSITY map-cost size_kib,map_us,unmap_us,map_us_per_4k_page\n");
  for (uint64_t size :
       std::vector<uint64_t>{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, kMax}) {
    double map_s = 0, unmap_s = 0;
    // The first pairs of each size warm the caches and the page table's levels: not counted.
    for (int i = -iterations / 10; i < iterations; ++i) {
      if (i == 0) map_s = unmap_s = 0;
      iommu_ioas_map_file map = {};
      map.size = sizeof(map);
      map.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
      map.ioas_id = e.ioas;
      map.fd = e.ram1;
      map.start = 0;
      map.length = size;
      map.iova = kIova;
      auto t = Clock::now();
      if (ioctl(e.iommufd, IOMMU_IOAS_MAP_FILE, &map)) {
        Die("map %" PRIu64 ": %s", size, strerror(errno));
      }
      map_s += Seconds(t);
      iommu_ioas_unmap unmap = {};
      unmap.size = sizeof(unmap);
      unmap.ioas_id = e.ioas;
      unmap.iova = kIova;
      unmap.length = size;
      t = Clock::now();
      if (ioctl(e.iommufd, IOMMU_IOAS_UNMAP, &unmap)) Die("unmap: %s", strerror(errno));
      unmap_s += Seconds(t);
    }
    const double map_us = 1e6 * map_s / iterations;
    std::printf("IOPF-DENSITY map-cost %" PRIu64 ",%.1f,%.1f,%.2f\n", size >> 10, map_us,
                1e6 * unmap_s / iterations, map_us / static_cast<double>(size / kPage));
  }
  DropRegion(e, kMax);
}

// iopfd with units of `unit` bytes, unbounded, over a 16 MiB region: a device that streams
// through all of it page by page, and one that touches `sparse` pages at random.
void UnitChoice() {
  constexpr uint64_t kSize = 16 << 20;
  std::printf(
      "IOPF-DENSITY unit-choice unit_kib,stream_page_requests,stream_map_calls,stream_s,"
      "sparse_page_requests,sparse_resident_kib\n");
  for (uint64_t unit : std::vector<uint64_t>{4 << 10, 16 << 10, 64 << 10, 256 << 10}) {
    uint64_t stream_faults = 0, stream_maps = 0, sparse_faults = 0, sparse_resident = 0;
    double stream_s = 0;
    for (bool stream : {true, false}) {
      Env e;
      Setup(e, Format("density-unit-%" PRIu64 "-%d", unit >> 10, stream ? 1 : 0), "warning");
      UseRegion(e, kSize);
      WriteFile(e.dir + "/devices.d/mock0.toml", DeviceText(e, kSize, unit, 0));
      Daemon d = StartServing(e, "workingset");
      std::mt19937_64 rng(11);
      const auto t0 = Clock::now();
      uint64_t faults = 0;
      for (uint64_t i = 0; i < (stream ? kSize / kPage : 256); ++i) {
        const uint64_t page =
            stream ? i : std::uniform_int_distribution<uint64_t>(0, kSize / kPage - 1)(rng);
        if (Access(e, kIova + page * kPage, static_cast<uint32_t>(i % 512))) ++faults;
      }
      const double secs = Seconds(t0);
      if (Stop(d) != 0) std::printf("IOPF-DENSITY FAILED unit %" PRIu64 "\n", unit >> 10);
      auto s = ReadStats(d);
      if (stream) {
        stream_faults = faults;
        stream_maps = s["map_calls"];
        stream_s = secs;
      } else {
        sparse_faults = faults;
        sparse_resident = s["paging.resident_bytes"];
      }
      DropRegion(e, kSize);
    }
    std::printf("IOPF-DENSITY unit-choice %" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%.2f,%" PRIu64
                ",%" PRIu64 "\n",
                unit >> 10, stream_faults, stream_maps, stream_s, sparse_faults,
                sparse_resident >> 10);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20000;
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const auto t0 = Clock::now();
  MapCallCost(200);
  UnitChoice();
  DensityCurve(n);
  std::printf("IOPF-DENSITY done in %.0f s\n", Seconds(t0));
  return 0;
}
