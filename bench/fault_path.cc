// The daemon's own CPU per fault (issue 15, part 1): iopfd's real fault loop, fault queues,
// response queues, fault processor, pager and in-flight ledger, driven as the daemon's ring
// drives them (a read completion, the answers submitted, the write's completion) by a ring and a
// kernel that cost nothing: a read completes with records prepared in memory, a write is
// accepted whole, and map and unmap calls return at once. What is timed is therefore iopfd's own
// work per fault: classifying the read, grouping by cookie, routing to a space and region,
// deduplicating against what is mapped, the pager's bookkeeping, queuing and writing the
// answers, the counters, arming the next read. Not timed: io_uring and the kernel's side.
//
// One iteration is one read of `batch` records on one device (the next of `devices`, in turn)
// and the write of its answers. Reported per case: time per fault ("time/fault", with an SI
// prefix: 152n is 152 ns), map calls per fault, and heap allocations per fault in the steady
// state (counted by this binary's operator new; must be 0).
//
// usage: iopfd-fault-path [--benchmark_filter=REGEX] [--benchmark_repetitions=N] ...
// (Google Benchmark's flags; docs/PERFORMANCE.md has the table and the command.)
#include <benchmark/benchmark.h>
#include <execinfo.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/address_space.h"
#include "iopfd/fault/fault_loop.h"
#include "iopfd/fault/fault_processor.h"
#include "iopfd/fault/fault_queue.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/fault/pager.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/fault/stats.h"
#include "iopfd/loop/ring.h"

// Every heap allocation made while g_counting is on (the timed part of a case), counted: the
// steady state must make none. IOPFD_BENCH_ALLOC_TRACE=N prints the call stacks of the first N
// (to find them).
namespace {
std::atomic<uint64_t> g_allocations{0};
bool g_counting = false;
// --check_allocations: a case that allocates in its steady state fails the run (the test tier
// runs every case briefly this way; bench/CMakeLists.txt).
bool g_check_allocations = false;
bool g_allocation_failures = false;
int g_traces_left = 0;
bool g_tracing = false;

void CountAllocation() {
  if (!g_counting) return;
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (g_traces_left > 0 && !g_tracing) {
    g_tracing = true;  // backtrace may allocate on its first call
    --g_traces_left;
    void* frames[24];
    const int n = backtrace(frames, 24);
    std::fputs("--- allocation in the steady state:\n", stderr);
    backtrace_symbols_fd(frames, n, 2);
    g_tracing = false;
  }
}
}  // namespace

// g++ 12 sees free() called on what operator new returned and warns of a mismatched pair; here
// the pair is deliberately malloc/free underneath both.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t size) {
  CountAllocation();
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

// The syscall seam: the ring path reads and writes through the ring, so only a synchronous read
// (none in the steady state) would come here, and finds nothing queued.
class NullKernel : public Syscalls {
 public:
  int Ioctl(int, unsigned long, void*) override { return -ENOSYS; }
  int Open(const char*, int) override { return -ENOSYS; }
  int MemfdCreate(const char*, uint64_t) override { return -ENOSYS; }
  void* MapShared(int, uint64_t, uint64_t, bool) override { return nullptr; }
  void Unmap(void*, uint64_t) override {}
  ssize_t Read(int, void*, size_t) override { return -EAGAIN; }
  ssize_t Write(int, const void*, size_t len) override { return static_cast<ssize_t>(len); }
  ssize_t Pread(int, void*, size_t, uint64_t) override { return -ENOSYS; }
  ssize_t Pwrite(int, const void*, size_t, uint64_t) override { return -ENOSYS; }
  SwitchModule LoadSwitchModule(const std::string&, std::string* error) override {
    *error = "none";
    return {};
  }
};

// The ring as the fault loop sees it, doing nothing itself: a read armed on a queue waits until
// the benchmark completes it with records (as if the poll fired and the read ran inline), and a
// write is completed whole at once. One armed read and one write per queue at most, as the loop
// issues them.
class BenchRing : public RingIo {
 public:
  static constexpr int kFirstFd = 1000;
  explicit BenchRing(int queues) : reads_(static_cast<size_t>(queues)) {}
  void set_loop(FaultLoop* loop) { loop_ = loop; }

  void ReadWhenReadable(int fd, void* buf, size_t len, RingOp* /*poll*/, RingOp* read) override {
    read->in_flight = true;
    reads_[static_cast<size_t>(fd - kFirstFd)] = {buf, len, read};
  }
  void Write(int /*fd*/, const void* /*buf*/, size_t len, RingOp* op) override {
    op->in_flight = true;
    writes_.push_back({op, static_cast<int>(len)});
  }
  void CancelPoll(RingOp*) override {}
  bool WaitUntil(const std::function<bool()>&, const char*) override { return false; }
  bool Run() override { return true; }
  bool running() const override { return true; }
  bool stopping() const override { return false; }
  uint64_t reaps() const override { return turns_; }

  // One turn of the daemon's ring: the completions of the writes submitted at the end of the
  // last turn (io_uring runs a fault fd's write inline at submission; its completion is reaped
  // with the next wait), then the read armed on queue `fd` completes with `count` records
  // (false: none armed, or too many for its buffer), then the loop's flush ends the turn.
  bool Turn(int fd, const uapi::PageFault* records, size_t count) {
    ++turns_;  // the turn's completions are collected together
    for (size_t i = 0; i < writes_.size(); ++i) {
      writes_[i].op->in_flight = false;
      loop_->Complete(*writes_[i].op, writes_[i].res);
    }
    writes_.clear();
    PendingRead& r = reads_[static_cast<size_t>(fd - kFirstFd)];
    const size_t bytes = count * sizeof(uapi::PageFault);
    if (r.op == nullptr || bytes > r.len) return false;
    std::memcpy(r.buf, records, bytes);
    RingOp* op = std::exchange(r.op, nullptr);
    op->in_flight = false;
    loop_->Complete(*op, static_cast<int>(bytes));
    loop_->SubmitAnswers();
    return true;
  }

 private:
  struct PendingRead {
    void* buf = nullptr;
    size_t len = 0;
    RingOp* op = nullptr;
  };
  struct PendingWrite {
    RingOp* op;
    int res;
  };
  FaultLoop* loop_ = nullptr;
  uint64_t turns_ = 0;
  std::vector<PendingRead> reads_;
  std::vector<PendingWrite> writes_;
};

// Map and unmap calls that succeed at once, counted.
class NullMapper : public Mapper {
 public:
  absl::Status Map(const MapRequest&) override {
    ++maps;
    return absl::OkStatus();
  }
  absl::Status Unmap(IoasId, uint64_t, uint64_t, uint64_t) override {
    ++unmaps;
    return absl::OkStatus();
  }
  uint64_t maps = 0, unmaps = 0;
};

struct Case {
  int batch = 64;                 // records per read
  int group = 1;                  // records per group (consecutive pages)
  bool random = false;            // random pages instead of a sequential sweep
  bool mostly_mapped = false;     // 90% of requests to pages mapped already
  int devices = 1;                // devices served in turn, one read each
  bool ledger = false;            // the in-flight ledger recording reads and owed answers
  bool budget = false;            // a space budget of 1/16 of the region: eviction all along
  bool thrash_protection = true;  // the pager's default; off: eviction's cost alone
  // first_touch = "page" (the daemon's default): a request alone in its unit maps its page only.
  // Off in the rows without ":first_touch:page", which map whole units (first_touch = "unit"),
  // so that they compare with the rows measured before partial units existed.
  bool first_touch_page = false;
  // Each device's region: 1 GiB is 262,144 pages, 16,384 units of 64 KiB.
  uint64_t region_bytes = 1ull << 30;

  uint64_t pages() const { return region_bytes / kPage; }
  // With "90% mapped", nine of every ten requests go to this many pages at the region's start,
  // mapped before timing begins; the rest sweep the remainder, which is unmapped again (outside
  // the timing) each time the sweep wraps.
  uint64_t hot_pages() const { return pages() / 64; }
};

// One device: its spaces, counters, answers, processor and queue, as Device::SetUpFaultPath
// builds them, with the daemon's pager.
class Rig {
 public:
  Rig(const Case& c, Pager* pager, BenchRing* ring, FaultLoop* loop, int index)
      : ring_(ring),
        pager_(pager),
        spaces_(MakeSpaces(c.region_bytes, c.first_touch_page)),
        responses_(&stats_),
        processor_(FaultProcessorOptions{}, &spaces_, &mapper_, &responses_, &stats_),
        queue_("bench" + std::to_string(index), BenchRing::kFirstFd + index, &kernel_,
               ReadLimits{512, 512}, &stats_, &responses_, &processor_) {
    if (c.ledger) {
      ledger_ = *InflightLedger::Create("bench", 512);
      queue_.set_ledger(ledger_.get());
    }
    paged_device_ = pager->AddDevice("bench" + std::to_string(index), std::nullopt, &stats_.paging,
                                     &responses_);
    paged_ =
        pager->AddSpace(paged_device_, &spaces_.spaces()[0], &mapper_,
                        c.budget ? std::optional<uint64_t>(c.region_bytes / 16) : std::nullopt);
    processor_.set_pager(pager);
    loop->Add(&queue_);  // arms the first read
  }
  // As a device leaving the daemon does: its spaces leave the pager before they are freed.
  ~Rig() { pager_->RemoveDevice(paged_device_); }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;
  // One read of `records` and the write of its answers. Returns false when the loop had no read
  // armed for them (it gave the queue up).
  bool Serve(const uapi::PageFault* records, size_t count) {
    return ring_->Turn(queue_.fd(), records, count);
  }
  // Unmaps every unit of the region outside [0, keep_pages) (explicit eviction, as Evict does).
  void UnmapAllBut(Pager* pager, uint64_t keep_pages) {
    Region& r = spaces_.spaces()[0].regions()[0];
    (void)pager->EvictUnits(*paged_, 0, r.UnitOf(keep_pages), r.unit_count() - 1, 0);
  }
  const DeviceStats& stats() const { return stats_; }
  const NullMapper& mapper() const { return mapper_; }

 private:
  static SpaceTable MakeSpaces(uint64_t bytes, bool first_touch_page) {
    std::vector<Region> regions;
    regions.emplace_back(kRegionIova, bytes, kPage, uapi::kPermRead | uapi::kPermWrite,
                         /*prefetch=*/0, /*backing_fd=*/-1, /*backing_offset=*/0,
                         /*backing_va=*/nullptr, DefaultMapUnit(kPage), first_touch_page);
    std::vector<AddressSpace> spaces;
    spaces.emplace_back(std::nullopt, IoasId(1), std::move(regions));
    return SpaceTable(std::move(spaces));
  }

  BenchRing* ring_;
  Pager* pager_;
  PagedDevice* paged_device_ = nullptr;
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
    const uint64_t pages = c_.pages(), hot = c_.hot_pages();
    if (c_.mostly_mapped && n_ % 10 != 0) return (n_ * 7919) % hot;
    if (c_.random) {
      rng_ ^= rng_ << 13;
      rng_ ^= rng_ >> 7;
      rng_ ^= rng_ << 17;
      // Unmapped again after a number of requests that maps at most an eighth of the units.
      if (++cold_ % (pages / 16 / 8) == 0) wrapped_ = true;
      return hot + rng_ % (pages - hot);
    }
    const uint64_t page = hot + sweep_;
    sweep_ = (sweep_ + 1) % (pages - hot);
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
      uapi::PageFault& r = out[static_cast<size_t>(i) + static_cast<size_t>(k)];
      r = {};
      r.perm = uapi::kPermRead;
      r.addr = kRegionIova + ((first + static_cast<uint64_t>(k)) % c.pages()) * kPage;
      r.length = kPage;
      r.grpid = static_cast<uint32_t>(i / c.group);
      r.cookie = static_cast<uint32_t>(1 + i / c.group);
      if (k == c.group - 1 || i + k == c.batch - 1) r.flags = uapi::kPgfaultLastPage;
    }
  }
}

void FaultPath(benchmark::State& state, Case c) {
  PagerOptions options;
  if (!c.thrash_protection) options.thrash_events = UINT32_MAX;
  Pager pager{options};
  BenchRing ring(c.devices);
  FaultLoop loop(&ring);
  ring.set_loop(&loop);
  std::vector<std::unique_ptr<Rig>> rigs;
  for (int d = 0; d < c.devices; ++d) {
    rigs.push_back(std::make_unique<Rig>(c, &pager, &ring, &loop, d));
  }
  std::vector<Pages> pages(static_cast<size_t>(c.devices), Pages(c));
  std::vector<uapi::PageFault> records(static_cast<size_t>(c.batch));
  // Warm up: the hot pages mapped, the buffers grown, every lazily built structure built.
  for (auto& rig : rigs) {
    for (uint64_t p = 0; p < c.hot_pages(); p += 16) {
      uapi::PageFault r{};
      r.perm = uapi::kPermRead;
      r.addr = kRegionIova + p * kPage;
      r.flags = uapi::kPgfaultLastPage;
      r.cookie = 1;
      if (!rig->Serve(&r, 1)) {
        state.SkipWithError("the loop gave a queue up while warming up");
        return;
      }
    }
  }
  // With a budget, on until every device has evicted two budgets' worth: eviction's scratch
  // has grown to what a run needs.
  const uint64_t budget_units = c.region_bytes / 16 / DefaultMapUnit(kPage);
  auto warm = [&](int i) {
    if (i < 4 * c.devices) return false;
    if (!c.budget) return true;
    for (const auto& rig : rigs) {
      if (rig->stats().paging.evicted_units < 2 * budget_units) return false;
    }
    return true;
  };
  for (int i = 0; !warm(i); ++i) {
    const size_t d = static_cast<size_t>(i % c.devices);
    NextRead(c, pages[d], records);
    if (!rigs[d]->Serve(records.data(), records.size())) {
      state.SkipWithError("the loop gave a queue up while warming up");
      return;
    }
  }
  uint64_t maps_before = 0;
  for (const auto& rig : rigs) maps_before += rig->mapper().maps;
  const uint64_t allocations_before = g_allocations.load(std::memory_order_relaxed);
  g_counting = true;
  uint64_t faults = 0;
  size_t d = 0;
  for (auto _ : state) {
    NextRead(c, pages[d], records);
    if (!rigs[d]->Serve(records.data(), records.size())) {
      state.SkipWithError("the loop gave a queue up");
      break;
    }
    faults += records.size();
    if (pages[d].TakeWrapped() && !c.budget) {
      // The sweep starts again at the region's start: make it unmapped again, untimed.
      state.PauseTiming();
      g_counting = false;
      rigs[d]->UnmapAllBut(&pager, c.hot_pages());
      g_counting = true;
      state.ResumeTiming();
    }
    d = (d + 1) % rigs.size();
  }
  g_counting = false;
  uint64_t maps = 0;
  for (const auto& rig : rigs) maps += rig->mapper().maps;
  const double n = static_cast<double>(faults);
  state.SetItemsProcessed(static_cast<int64_t>(faults));
  // Seconds per fault, printed with an SI prefix ("152n" is 152 ns).
  state.counters["time/fault"] =
      benchmark::Counter(n, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["maps/fault"] = static_cast<double>(maps - maps_before) / n;
  const uint64_t allocations = g_allocations.load(std::memory_order_relaxed) - allocations_before;
  state.counters["allocs/fault"] = static_cast<double>(allocations) / n;
  if (g_check_allocations && allocations != 0) {
    g_allocation_failures = true;
    state.SkipWithError(
        absl::StrCat(allocations, " heap allocations in the steady state (", faults, " faults)")
            .c_str());
  }
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
  // One device with the 64 devices' footprint (a 64 GiB region): random pages over 64 times
  // more memory miss the caches more, whoever owns them; this row tells that cost from what
  // serving many devices costs.
  Case one_large = base;
  one_large.random = true;
  one_large.region_bytes = 64ull << 30;
  add("batch:64/random/mapped:0/region:64GiB", one_large);
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
  // At this benchmark's rate (millions of faults a second, a hundred times a device's), a unit
  // evicted comes back within the 500 us thrash window far more often than on a real device, and
  // most of the budget ends up thrash-protected for 150 ms; without protection, the cost of
  // eviction itself.
  Case budget_unprotected = budget_random;
  budget_unprotected.thrash_protection = false;
  add("batch:64/random/mapped:0/budget/thrash_protection:off", budget_unprotected);
  // Partial units: the rows above again where first touches alone map their page.
  for (auto [name, c] : std::vector<std::pair<std::string, Case>>{
           {"batch:64/seq/mapped:0", base},
           {"batch:64/random/mapped:0", many_random},
           {"batch:256/random/mapped:0", many_random},
           {"batch:64/random/mapped:0/budget", budget_random}}) {
    c.devices = 1;
    if (name.find("256") != std::string::npos) c.batch = 256;
    c.first_touch_page = true;
    add(name + "/first_touch:page", c);
  }
}

}  // namespace
}  // namespace iopfd

int main(int argc, char** argv) {
  if (const char* n = std::getenv("IOPFD_BENCH_ALLOC_TRACE")) g_traces_left = std::atoi(n);
  iopfd::Register();
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--check_allocations") != 0) continue;
    g_check_allocations = true;
    for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
    --argc;
    break;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (g_allocation_failures) {
    std::fputs("iopfd-fault-path: a case allocated in its steady state (see above)\n", stderr);
    return 1;
  }
  return 0;
}
