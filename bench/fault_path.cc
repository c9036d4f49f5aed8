// The daemon's own CPU per fault (issue 15, part 1): iopfd's real fault queue, response queue,
// fault processor, pager and in-flight ledger, driven through the syscall seam by a kernel that
// costs nothing: a read hands over records prepared in memory, a write is accepted whole, and
// map and unmap calls return at once. What is timed is therefore iopfd's own work per fault:
// classifying the read, grouping by cookie, routing to a space and region, deduplicating against
// what is mapped, the pager's bookkeeping, queuing and writing the answers, the counters.
//
// One iteration is one read of `batch` records on one device (the next of `devices`, in turn)
// and the write of its answers. Reported per case: time per fault ("time/fault", with an SI
// prefix: 152n is 152 ns), map calls per fault, and heap allocations per fault in the steady
// state (counted by this binary's operator new; must be 0).
//
// usage: iopfd-fault-path [--benchmark_filter=REGEX] [--benchmark_repetitions=N] ...
// (Google Benchmark's flags; docs/PERFORMANCE.md has the table and the command.)
#include <benchmark/benchmark.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "iopfd/base/syscalls.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/address_space.h"
#include "iopfd/fault/fault_processor.h"
#include "iopfd/fault/fault_queue.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/fault/pager.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/fault/stats.h"

// Every heap allocation of the process, counted: the steady state must make none.
namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

// g++ 12 sees free() called on what operator new returned and warns of a mismatched pair; here
// the pair is deliberately malloc/free underneath both.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t /*size*/) noexcept { std::free(p); }
void operator delete[](void* p, size_t /*size*/) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace iopfd {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kRegionIova = 1ull << 32;
constexpr uint64_t kRegionBytes = 1ull << 30;  // 1 GiB: 262,144 pages, 16,384 units of 64 KiB
constexpr uint64_t kPages = kRegionBytes / kPage;
// With "90% mapped", nine of every ten requests go to this many pages at the region's start,
// mapped before timing begins; the rest sweep the remainder, which is unmapped again (outside
// the timing) each time the sweep wraps.
constexpr uint64_t kHotPages = 4096;

// The kernel side of one fault queue: the next read returns `pending` (set before each read),
// then EAGAIN; every write is accepted whole.
class NullKernel : public Syscalls {
 public:
  int Ioctl(int, unsigned long, void*) override { return -ENOSYS; }
  int Open(const char*, int) override { return -ENOSYS; }
  int MemfdCreate(const char*, uint64_t) override { return -ENOSYS; }
  void* MapShared(int, uint64_t, uint64_t, bool) override { return nullptr; }
  void Unmap(void*, uint64_t) override {}
  ssize_t Read(int /*fd*/, void* buf, size_t len) override {
    if (pending == nullptr) return -EAGAIN;
    const size_t bytes = pending_records * sizeof(uapi::PageFault);
    if (bytes > len) return -EINVAL;
    std::memcpy(buf, pending, bytes);
    pending = nullptr;
    return static_cast<ssize_t>(bytes);
  }
  ssize_t Write(int /*fd*/, const void* /*buf*/, size_t len) override {
    return static_cast<ssize_t>(len);
  }
  ssize_t Pread(int, void*, size_t, uint64_t) override { return -ENOSYS; }
  ssize_t Pwrite(int, const void*, size_t, uint64_t) override { return -ENOSYS; }
  SwitchModule LoadSwitchModule(const std::string&, std::string* error) override {
    *error = "none";
    return {};
  }
  const uapi::PageFault* pending = nullptr;
  size_t pending_records = 0;
};

// Map and unmap calls that succeed at once, counted.
class NullMapper : public Mapper {
 public:
  absl::Status Map(const MapRequest&) override {
    ++maps;
    return absl::OkStatus();
  }
  absl::Status Unmap(IoasId, uint64_t, uint64_t) override {
    ++unmaps;
    return absl::OkStatus();
  }
  uint64_t maps = 0, unmaps = 0;
};

struct Case {
  int batch = 64;              // records per read
  int group = 1;               // records per group (consecutive pages)
  bool random = false;         // random pages instead of a sequential sweep
  bool mostly_mapped = false;  // 90% of requests to pages mapped already
  int devices = 1;             // devices served in turn, one read each
  bool ledger = false;         // the in-flight ledger recording reads and owed answers
  bool budget = false;         // a space budget of 1/16 of the region: eviction all along
};

// One device: its spaces, counters, answers, processor and queue, as Device::SetUpFaultPath
// builds them, with the daemon's pager.
class Rig {
 public:
  Rig(const Case& c, Pager* pager, int index)
      : spaces_(MakeSpaces()),
        responses_(&stats_),
        processor_(FaultProcessorOptions{}, &spaces_, &mapper_, &responses_, &stats_),
        queue_("bench" + std::to_string(index), 1000 + index, &kernel_, ReadLimits{512, 512},
               &stats_, &responses_, &processor_) {
    if (c.ledger) {
      ledger_ = *InflightLedger::Create("bench", 512);
      queue_.set_ledger(ledger_.get());
    }
    PagedDevice* paged = pager->AddDevice("bench" + std::to_string(index), std::nullopt,
                                          &stats_.paging, &responses_);
    paged_ = pager->AddSpace(paged, &spaces_.spaces()[0], &mapper_,
                             c.budget ? std::optional<uint64_t>(kRegionBytes / 16) : std::nullopt);
    processor_.set_pager(pager);
  }
  // One read of `records` and the write of its answers.
  void Serve(const uapi::PageFault* records, size_t count) {
    kernel_.pending = records;
    kernel_.pending_records = count;
    (void)queue_.ReadAvailable(~uint64_t{0});
    (void)queue_.WriteQueued();
  }
  // Unmaps every unit of the region outside [0, keep_pages) (explicit eviction, as Evict does).
  void UnmapAllBut(Pager* pager, uint64_t keep_pages) {
    Region& r = spaces_.spaces()[0].regions()[0];
    (void)pager->EvictUnits(*paged_, 0, r.UnitOf(keep_pages), r.unit_count() - 1, 0);
  }
  const DeviceStats& stats() const { return stats_; }
  const NullMapper& mapper() const { return mapper_; }

 private:
  static SpaceTable MakeSpaces() {
    std::vector<Region> regions;
    regions.emplace_back(kRegionIova, kRegionBytes, kPage, uapi::kPermRead | uapi::kPermWrite,
                         /*prefetch=*/0, /*backing_fd=*/-1, /*backing_offset=*/0,
                         /*backing_va=*/nullptr, DefaultMapUnit(kPage));
    std::vector<AddressSpace> spaces;
    spaces.emplace_back(std::nullopt, IoasId(1), std::move(regions));
    return SpaceTable(std::move(spaces));
  }

  NullKernel kernel_;
  NullMapper mapper_;
  SpaceTable spaces_;
  DeviceStats stats_;
  ResponseQueue responses_;
  FaultProcessor processor_;
  std::unique_ptr<InflightLedger> ledger_;
  FaultQueue queue_;
  PagedSpace* paged_ = nullptr;
};

// The page of request i: hot pages for nine in ten with mostly_mapped, else the sweep (or a
// random page) over the region past the hot pages.
class Pages {
 public:
  explicit Pages(const Case& c) : c_(c) {}
  uint64_t Next() {
    ++n_;
    if (c_.mostly_mapped && n_ % 10 != 0) return (n_ * 7919) % kHotPages;
    if (c_.random) {
      rng_ ^= rng_ << 13;
      rng_ ^= rng_ >> 7;
      rng_ ^= rng_ << 17;
      // Unmapped again after a number of requests that maps at most an eighth of the units.
      if (++cold_ % (kPages / 16 / 8) == 0) wrapped_ = true;
      return kHotPages + rng_ % (kPages - kHotPages);
    }
    const uint64_t page = kHotPages + sweep_;
    sweep_ = (sweep_ + 1) % (kPages - kHotPages);
    if (sweep_ == 0) wrapped_ = true;
    return page;
  }
  // True once each time the cold pages are to be made unmapped again (the sweep started over,
  // or enough random ones were asked for).
  bool TakeWrapped() { return std::exchange(wrapped_, false); }

 private:
  Case c_;
  uint64_t n_ = 0, sweep_ = 0, cold_ = 0, rng_ = 0x9e3779b97f4a7c15ull;
  bool wrapped_ = false;
};

// Fills `out` with the next read: `batch` records in groups of `group` (consecutive pages, the
// last record of each flagged), cookies 1.. (the kernel hands the lowest free ones out, and
// every earlier group was answered).
void NextRead(const Case& c, Pages& pages, std::vector<uapi::PageFault>& out) {
  for (int i = 0; i < c.batch; i += c.group) {
    const uint64_t first = pages.Next();
    for (int k = 0; k < c.group && i + k < c.batch; ++k) {
      uapi::PageFault& r = out[static_cast<size_t>(i + k)];
      r = {};
      r.perm = uapi::kPermRead;
      r.addr = kRegionIova + ((first + static_cast<uint64_t>(k)) % kPages) * kPage;
      r.length = kPage;
      r.grpid = static_cast<uint32_t>(i / c.group);
      r.cookie = static_cast<uint32_t>(1 + i / c.group);
      if (k == c.group - 1 || i + k == c.batch - 1) r.flags = uapi::kPgfaultLastPage;
    }
  }
}

void FaultPath(benchmark::State& state, Case c) {
  Pager pager{PagerOptions{}};
  std::vector<std::unique_ptr<Rig>> rigs;
  for (int d = 0; d < c.devices; ++d) rigs.push_back(std::make_unique<Rig>(c, &pager, d));
  std::vector<Pages> pages(static_cast<size_t>(c.devices), Pages(c));
  std::vector<uapi::PageFault> records(static_cast<size_t>(c.batch));
  // Warm up: the hot pages mapped, the buffers grown, every lazily built structure built.
  for (auto& rig : rigs) {
    for (uint64_t p = 0; p < kHotPages; p += 16) {
      uapi::PageFault r{};
      r.perm = uapi::kPermRead;
      r.addr = kRegionIova + p * kPage;
      r.flags = uapi::kPgfaultLastPage;
      r.cookie = 1;
      rig->Serve(&r, 1);
    }
  }
  for (int i = 0; i < 4 * c.devices; ++i) {
    const size_t d = static_cast<size_t>(i % c.devices);
    NextRead(c, pages[d], records);
    rigs[d]->Serve(records.data(), records.size());
  }
  uint64_t maps_before = 0;
  for (const auto& rig : rigs) maps_before += rig->mapper().maps;
  const uint64_t allocations_before = g_allocations.load(std::memory_order_relaxed);
  uint64_t faults = 0;
  size_t d = 0;
  for (auto _ : state) {
    NextRead(c, pages[d], records);
    rigs[d]->Serve(records.data(), records.size());
    faults += records.size();
    if (pages[d].TakeWrapped() && !c.budget) {
      // The sweep starts again at the region's start: make it unmapped again, untimed.
      state.PauseTiming();
      rigs[d]->UnmapAllBut(&pager, kHotPages);
      state.ResumeTiming();
    }
    d = (d + 1) % rigs.size();
  }
  uint64_t maps = 0;
  for (const auto& rig : rigs) maps += rig->mapper().maps;
  const double n = static_cast<double>(faults);
  state.SetItemsProcessed(static_cast<int64_t>(faults));
  // Seconds per fault, printed with an SI prefix ("152n" is 152 ns).
  state.counters["time/fault"] =
      benchmark::Counter(n, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["maps/fault"] = static_cast<double>(maps - maps_before) / n;
  state.counters["allocs/fault"] =
      static_cast<double>(g_allocations.load(std::memory_order_relaxed) - allocations_before) / n;
}

void Register() {
  auto add = [](const std::string& name, Case c) {
    benchmark::RegisterBenchmark(("fault_path/" + name).c_str(), FaultPath, c)
        ->Unit(benchmark::kMicrosecond);
  };
  for (int batch : {1, 8, 64, 256}) {
    for (bool random : {false, true}) {
      for (bool mostly_mapped : {false, true}) {
        Case c;
        c.batch = batch;
        c.random = random;
        c.mostly_mapped = mostly_mapped;
        add(std::string("batch:") + std::to_string(batch) + (random ? "/random" : "/seq") +
                (mostly_mapped ? "/mapped:90" : "/mapped:0"),
            c);
      }
    }
  }
  Case base;  // batch 64, sequential, nothing mapped, groups of 1, one device
  Case groups = base;
  groups.group = 8;
  add("batch:64/seq/mapped:0/group:8", groups);
  Case many = base;
  many.devices = 64;
  add("batch:64/seq/mapped:0/devices:64", many);
  Case many_random = base;
  many_random.devices = 64;
  many_random.random = true;
  add("batch:64/random/mapped:0/devices:64", many_random);
  Case ledger = base;
  ledger.ledger = true;
  add("batch:64/seq/mapped:0/ledger", ledger);
  Case budget = base;
  budget.budget = true;
  add("batch:64/seq/mapped:0/budget", budget);
  Case budget_random = base;
  budget_random.budget = true;
  budget_random.random = true;
  add("batch:64/random/mapped:0/budget", budget_random);
}

}  // namespace
}  // namespace iopfd

int main(int argc, char** argv) {
  iopfd::Register();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
