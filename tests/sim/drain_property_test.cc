// Seeded randomized test of the drain: thousands of interleavings of page requests (delivered
// in pieces), reads, delayed writes, drains of the device or one PASID, resets, AER-triggered
// resets, holds, owner confirmations that come late or never, resumes and removals, against the
// real Device, fault processor and DrainController on the simulated kernel and PRI function.
// After each interleaving the system is brought to rest and the function must have seen no
// stale, repeated or unexpected answer, no request while halted, and no group lost; the kernel
// no SUCCESS for an unmapped page; iopfd no group left owed.
//
// Seeds: a fixed set, plus one fresh seed per run (printed). IOPFD_DRAIN_SEED=N replays one
// seed; IOPFD_DRAIN_RUNS=N sets how many interleavings each seed starts (default 2,000).
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "iopfd/device/drain.h"
#include "iopfd/service/log.h"
#include "sim_kernel.h"

namespace iopfd::sim {
namespace {

constexpr uint32_t kPasid = 5;

struct NoRing : DrainIo {
  bool Quiesce(Device&) override { return true; }
  void Rearm(Device&) override {}
  // With `defer`, a reset waits for a later step to run it (the worker thread), while faults,
  // recovery events and operator calls go on.
  void RunBlocking(const Device& /*d*/, std::function<absl::Status()> job,
                   std::function<void(absl::Status)> done) override {
    if (!defer) return done(job());
    jobs.emplace_back(std::move(job), std::move(done));
  }
  void FinishBlocking(const Device& /*d*/) override { RunJobs(); }
  void RunJobs() {
    auto now = std::move(jobs);
    jobs.clear();
    for (auto& [job, done] : now) done(job());
  }
  bool defer = false;
  std::vector<std::pair<std::function<absl::Status()>, std::function<void(absl::Status)>>> jobs;
};

// One interleaving. Returns an empty string when every property held, else what failed and the
// operations that led there.
std::string RunOne(uint64_t seed, HaltMethod method, SimKernel::PriPolicy policy) {
  std::mt19937_64 rng(seed);
  auto pick = [&rng](uint32_t n) { return static_cast<uint32_t>(rng() % n); };
  PriDevice function({.allocation = 16, .prg_indices = 8});
  SimKernel kernel(&function, policy);
  ListenFds none;
  auto attached = Device::Attach(SimVfioDevice("prop0", {std::nullopt, kPasid}, 256 * 4096), &none,
                                 &kernel, ReadLimits{4, 64});
  if (!attached.ok()) return "attach: " + std::string(attached.status().message());
  Device& device = **attached;
  NoRing io;
  io.defer = (seed & 1) != 0;
  DrainController drain(&device, &io, {method, 1000});
  std::vector<PageRequest> in_flight;  // issued by the function, not yet at the IOMMU
  std::ostringstream log;
  std::ostringstream daemon_log;  // iopfd's own log of this interleaving
  SetLogSink([&daemon_log](LogLevel, const std::string& m) { daemon_log << "\n    " << m; });
  uint64_t now = 0;
  bool detached = false;

  auto deliver_all = [&] {
    kernel.DeliverRequests(in_flight);
    in_flight.clear();
  };
  // The function's requests are posted before its DMA stops or it resets.
  kernel.before_ioctl = [&](unsigned long request) {
    if (request == uapi::kVfioDeviceReset) deliver_all();
  };
  kernel.before_bus_master_clear = deliver_all;
  auto halt_dma = [&] {
    deliver_all();
    function.HaltDma();
  };

  const int steps = 20 + static_cast<int>(pick(60));
  for (int step = 0; step < steps && !detached; ++step) {
    now += pick(400);
    switch (pick(13)) {
      case 0:
      case 1:
      case 2: {  // the function faults
        uint32_t pages = 1 + pick(3);
        if (!function.CanIssue(pages)) break;
        std::optional<uint32_t> pasid = pick(2) ? std::optional(kPasid) : std::nullopt;
        auto g = function.IssueGroup(pasid, 0x100000 + uint64_t{pick(250)} * 4096,
                                     uapi::kPermRead | (pick(2) ? uapi::kPermWrite : 0u), pages);
        in_flight.insert(in_flight.end(), g.begin(), g.end());
        log << "issue(" << pages << (pasid ? ",pasid" : "") << ") ";
        break;
      }
      case 3: {  // some requests reach the IOMMU
        size_t n = pick(static_cast<uint32_t>(in_flight.size()) + 1);
        kernel.DeliverRequests({in_flight.begin(), in_flight.begin() + static_cast<long>(n)});
        in_flight.erase(in_flight.begin(), in_flight.begin() + static_cast<long>(n));
        log << "deliver(" << n << ") ";
        break;
      }
      case 4:  // the loop reads and resolves, answers held for a later write
        (void)device.ReadAvailable(~0ull);
        log << "read ";
        break;
      case 5:
        (void)device.WriteQueued();
        log << "write ";
        break;
      case 6: {
        std::optional<AttachmentKey> scope;
        if (pick(3) == 0) scope = kPasid;
        (void)drain.Drain(scope, "operator", now);
        log << "drain" << (scope ? "(pasid) " : " ");
        break;
      }
      case 7:
        (void)drain.Reset(pick(2) ? "AER" : "operator", now);
        log << "reset ";
        break;
      case 8:  // the owner stops its DMA and confirms (or asks for a hold)
        if (drain.state() == DrainState::kHalting || drain.state() == DrainState::kRunning) {
          halt_dma();
          (void)drain.Halt("owner", now);
          log << "halt ";
        }
        break;
      case 9:
        (void)drain.Resume("operator", now);
        log << "resume ";
        break;
      case 10:
        now += pick(2) ? 1500 : 0;  // sometimes past the owner's deadline
        drain.Tick(now);
        log << "tick ";
        break;
      case 12:  // the worker's reset comes back
        if (!io.jobs.empty()) log << "reset-done ";
        io.RunJobs();
        break;
      case 11:
        if (pick(8) == 0) {
          halt_dma();
          io.FinishBlocking(device);  // as DeviceManager does before a device goes
          drain.Detach("removed");
          detached = true;
          log << "detach ";
        }
        break;
    }
    // The owner runs the function's DMA again once the device runs again, when it was the one
    // that stopped it; a stop by Bus Master Enable ends only by iopfd setting the bit again.
    if (drain.state() == DrainState::kRunning && function.halted() &&
        (kernel.pci_command() & uapi::kPciCommandMaster) != 0 && pick(2)) {
      function.ResumeDma();
    }
  }

  // Bring it to rest: every request delivered, the device running (or gone), everything read
  // and answered.
  io.defer = false;  // what comes now runs to its end
  io.RunJobs();
  deliver_all();
  if (!detached) {
    if (drain.state() == DrainState::kHalting) {
      halt_dma();
      (void)drain.Halt("owner at rest", now);
    }
    if (drain.state() == DrainState::kHalted || drain.state() == DrainState::kQuarantined) {
      (void)drain.Resume("at rest", now);
    }
  }
  for (int i = 0; i < 3; ++i) {
    (void)device.ReadAvailable(~0ull);
    (void)device.WriteQueued();
  }
  std::ostringstream failure;
  if (!detached && drain.state() != DrainState::kRunning) {
    failure << "state " << DrainStateName(drain.state()) << " at rest; ";
  }
  // Running again means bus mastering as it was: iopfd cleared it only for its own halts.
  if (!detached && (kernel.pci_command() & uapi::kPciCommandMaster) == 0) {
    failure << "Bus Master Enable left clear at rest; ";
  }
  if (detached) {
    // A removed device's groups are the kernel's to answer when the attachment goes away:
    // detaching parked everything, so nothing may be outstanding at the function.
  }
  function.CheckNothingLost();
  for (const Violation& v : function.violations()) {
    failure << ViolationName(v.kind) << ": " << v.detail << "; ";
  }
  for (const std::string& v : kernel.violations()) failure << v << "; ";
  if (device.stats().outstanding() != 0) {
    failure << device.stats().outstanding() << " group(s) owed by iopfd; ";
  }
  if (device.stats().guard_answered != 0) failure << "exactly-once guard fired; ";
  SetLogSink(nullptr);
  if (failure.str().empty()) return {};
  return failure.str() + "ops: " + log.str() + "\n  iopfd's log:" + daemon_log.str();
}

uint64_t RunsPerSeed() {
  const char* env = std::getenv("IOPFD_DRAIN_RUNS");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : 2000;
}

std::vector<uint64_t> Seeds() {
  if (const char* env = std::getenv("IOPFD_DRAIN_SEED")) return {std::strtoull(env, nullptr, 10)};
  std::vector<uint64_t> seeds = {1, 42, 20261124, 0xdeadbeef};
  uint64_t fresh = std::random_device{}();
  std::printf("drain property test: fresh seed %llu (IOPFD_DRAIN_SEED=%llu replays it)\n",
              static_cast<unsigned long long>(fresh), static_cast<unsigned long long>(fresh));
  seeds.push_back(fresh);
  return seeds;
}

TEST(DrainPropertyTest, NoInterleavingLeavesAStaleAnswerOrALostGroup) {
  const uint64_t runs = RunsPerSeed();
  uint64_t total = 0;
  for (uint64_t seed : Seeds()) {
    std::mt19937_64 pick(seed);
    for (uint64_t i = 0; i < runs; ++i) {
      const uint64_t one = pick();
      const HaltMethod method = one % 3 == 0   ? HaltMethod::kOwner
                                : one % 3 == 1 ? HaltMethod::kReset
                                               : HaltMethod::kBusMaster;
      const auto policy =
          (one >> 2) % 2 ? SimKernel::PriPolicy::kIntel : SimKernel::PriPolicy::kAmd;
      std::string failure = RunOne(one, method, policy);
      ++total;
      ASSERT_TRUE(failure.empty())
          << "seed " << seed << ", interleaving " << i << " (its seed " << one << ", "
          << (method == HaltMethod::kOwner   ? "owner"
              : method == HaltMethod::kReset ? "reset"
                                             : "bus-master")
          << " halt): " << failure;
    }
  }
  std::printf("drain property test: %llu interleavings\n", static_cast<unsigned long long>(total));
  EXPECT_GE(total, RunsPerSeed());
}

}  // namespace
}  // namespace iopfd::sim
