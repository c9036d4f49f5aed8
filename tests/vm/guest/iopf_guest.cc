// iopf-guest: the VM tier's driver, run inside the test kernel as part of the initramfs.
//
// It plays the VMM that owns a device: it builds a mock device (CONFIG_IOMMUFD_TEST) on an IOAS
// with an IOPF-capable paging HWPT and a fault queue, hands the iommufd, the fault queue and a
// memfd to iopfd in adopt mode (LISTEN_FDS), injects page requests with
// IOMMU_TEST_OP_TRIGGER_IOPF and checks with IOMMU_TEST_OP_MD_CHECK_MAP that exactly the
// backing pages were mapped. Results are printed one per line:
//   IOPF-RESULT <case> PASS|FAIL <detail>
// This file is compiled at test time against the test-command header of the kernel the VM
// boots (drivers/iommu/iommufd/iommufd_test.h), which is kernel-internal and changes between
// versions; it is never copied into the repository.

#include <dirent.h>
#include <sys/mount.h>

#include <atomic>
#include <regex>
#include <set>

#include "iopfd-client.h"
#include "mock_env.h"
#include "soak.h"

namespace {

using namespace mockenv;  // NOLINT(google-build-using-namespace): the guest driver's own helpers

// Every case ends with the same accounting: iopfd exited 0, every group it read was answered
// and accepted by the kernel, none rejected, none left owed, no invariant counter moved.
void ExpectClean(Verdict& v, int exit_code, const std::map<std::string, uint64_t>& s,
                 uint64_t groups) {
  v.Expect(exit_code == 0, Format("iopfd exit %d", exit_code));
  v.ExpectEq(s, "groups", groups);
  v.ExpectEq(s, "responses_written", groups);
  v.ExpectEq(s, "responses_rejected", 0);
  v.ExpectEq(s, "responses_abandoned", 0);
  v.ExpectEq(s, "outstanding", 0);
  v.ExpectEq(s, "guard_answered", 0);
  v.ExpectEq(s, "duplicate_cookies", 0);
}

bool CaseReadWriteInRange() {
  Verdict v("read_write_in_range");
  Env e;
  Setup(e, v.name);
  // Whole units from the first touch: what is mapped does not depend on whether the two
  // requests share a read.
  WriteFile(e.dir + "/devices.d/mock0.toml", WholeUnits(DeviceFile(e)));
  Daemon d = Start(e);
  v.Expect(Trigger(e, kR0 + 3 * kPage + 5, IOMMU_PGFAULT_PERM_READ) == 0, "trigger read");
  v.Expect(Trigger(e, kR0 + 8 * kPage, IOMMU_PGFAULT_PERM_WRITE | IOMMU_PGFAULT_PERM_READ) == 0,
           "trigger write");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + 3 * kPage, kPage, e.va0 + 3 * kPage); }),
           "read page mapped to its backing page");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + 8 * kPage, kPage, e.va0 + 8 * kPage); }),
           "write page mapped to its backing page");
  // Both pages lie in the region's first 64 KiB map unit (the default): one call maps it whole,
  // and the next unit stays unmapped.
  v.Expect(CheckMap(e, e.hwpt, kR0, 16 * kPage, e.va0), "their whole unit mapped to its backing");
  v.Expect(!CheckMap(e, e.hwpt, kR0 + 16 * kPage, kPage, e.va0 + 16 * kPage),
           "the next unit left unmapped");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 2);
  v.ExpectEq(s, "responses_success", 2);
  v.ExpectEq(s, "map_calls", 1);
  v.ExpectEq(s, "bytes_mapped", 16 * kPage);
  v.ExpectEq(s, "paging.resident_bytes", 16 * kPage);
  return v.Report();
}

bool CaseOutOfRegion() {
  Verdict v("out_of_every_region");
  Env e;
  Setup(e, v.name);
  Daemon d = Start(e);
  v.Expect(Trigger(e, kHole, IOMMU_PGFAULT_PERM_READ) == 0, "trigger hole");
  v.Expect(Trigger(e, kR0 + kR0Size, IOMMU_PGFAULT_PERM_READ) == 0, "trigger past R0");
  v.Expect(WaitFor([&] { return QueueEmpty(e); }), "iopfd read the queue");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  v.Expect(!CheckMap(e, e.hwpt, kHole, kPage, e.va0), "nothing mapped at the hole");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 2);
  v.ExpectEq(s, "responses_invalid", 2);
  v.ExpectEq(s, "invalid_by_reason.no_region", 2);
  v.ExpectEq(s, "map_calls", 0);
  return v.Report();
}

bool CaseWriteToReadOnly() {
  Verdict v("write_to_read_only");
  Env e;
  Setup(e, v.name);
  Daemon d = Start(e);
  v.Expect(Trigger(e, kR1 + 2 * kPage, IOMMU_PGFAULT_PERM_WRITE) == 0, "trigger write");
  v.Expect(WaitFor([&] { return QueueEmpty(e); }), "iopfd read the queue");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  v.Expect(!CheckMap(e, e.hwpt, kR1 + 2 * kPage, kPage, e.va1 + 2 * kPage),
           "read-only page not mapped for a write");
  // A read of the same page is fine and maps the inherited memfd's page.
  v.Expect(Trigger(e, kR1 + 2 * kPage, IOMMU_PGFAULT_PERM_READ) == 0, "trigger read");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR1 + 2 * kPage, kPage, e.va1 + 2 * kPage); }),
           "read maps the memfd page");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 2);
  v.ExpectEq(s, "invalid_by_reason.permission", 1);
  v.ExpectEq(s, "responses_success", 1);
  v.ExpectEq(s, "map_calls", 1);
  return v.Report();
}

bool CasePasidRouting() {
  Verdict v("pasid_routing");
  Env e;
  Setup(e, v.name);
  Daemon d = Start(e);
  v.Expect(Trigger(e, kR2 + 2 * kPage, IOMMU_PGFAULT_PERM_WRITE, true) == 0, "trigger pasid 5");
  v.Expect(
      WaitFor([&] { return CheckMap(e, e.hwpt_pasid, kR2 + 2 * kPage, kPage, e.va2 + 2 * kPage); }),
      "PASID 5 page mapped in PASID 5's space to its backing");
  v.Expect(!CheckMap(e, e.hwpt, kR0 + 2 * kPage, kPage, e.va0 + 2 * kPage),
           "same IOVA of the no-PASID space left unmapped");
  v.Expect(WaitFor([&] { return QueueEmpty(e); }), "iopfd read the queue");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int rc = Stop(d);
  auto s = ReadStats(d);
  // (A PASID without an attachment never reaches iopfd: the kernel has no handler for it and
  // refuses it itself. iopfd's answer for a PASID it has no space for is unit-tested.)
  ExpectClean(v, rc, s, 1);
  v.ExpectEq(s, "responses_success", 1);
  v.ExpectEq(s, "map_calls", 1);
  return v.Report();
}

bool CaseOnePageManyFaults() {
  Verdict v("one_page_many_faults");
  Env e;
  Setup(e, v.name);
  // Queue the requests before iopfd starts, so its first read sees them all in one batch.
  constexpr int kN = 200;
  for (int i = 0; i < kN; ++i) {
    if (Trigger(e, kR0 + 16 * kPage + (i % 64) * 8, IOMMU_PGFAULT_PERM_READ, false, i % 512)) {
      v.Expect(false, "trigger");
      break;
    }
  }
  Daemon d = Start(e);
  v.Expect(
      WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + 16 * kPage, kPage, e.va0 + 16 * kPage); }),
      "page mapped");
  // More requests for the same page after it is mapped are answered without a map.
  for (int i = 0; i < kN; ++i) Trigger(e, kR0 + 16 * kPage, IOMMU_PGFAULT_PERM_READ, false, i);
  v.Expect(WaitFor([&] { return QueueEmpty(e); }), "iopfd read the queue");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 2 * kN);
  v.ExpectEq(s, "responses_success", 2 * kN);
  v.ExpectEq(s, "map_calls", 1);
  v.Expect(s["pages_deduped"] + s["pages_already_mapped"] == 2 * kN - 1,
           Format("deduped+already_mapped=%llu want %d",
                  static_cast<unsigned long long>(s["pages_deduped"] + s["pages_already_mapped"]),
                  2 * kN - 1));
  return v.Report();
}

// Demand paging on the real kernel (docs/PAGING.md): R0 (1 MiB, sixteen 64 KiB units) under a
// budget of four units, faulted over three times: the kernel never holds more than the budget
// mapped (MD_CHECK_MAP on every unit), every request is answered, and a unit faulted again after
// its eviction translates to its own backing pages again. Then the budget lowered at run time
// (iopfctl budget) holds at once, an eviction (iopfctl evict) unmaps its unit, and a Reload with
// a budget in the file applies it without restarting the device.
bool CasePagingWithinABudget() {
  Verdict v("paging_within_a_budget");
  Env e;
  Setup(e, v.name);
  const std::string file = e.dir + "/devices.d/mock0.toml";
  std::string text = WholeUnits(DeviceFile(e));  // it counts units
  text.insert(text.find("[[space]]"), "[limits]\nmax_resident = \"256KiB\"\n\n");
  WriteFile(file, text);
  Daemon d = Start(e);
  constexpr uint64_t kUnit = 16 * kPage;
  auto mapped_units = [&] {
    int n = 0;
    for (uint64_t u = 0; u < 16; ++u) {
      n += CheckMap(e, e.hwpt, kR0 + u * kUnit, kUnit, e.va0 + u * kUnit) ? 1 : 0;
    }
    return n;
  };
  int most = 0, sent = 0;
  for (int round = 0; round < 3; ++round) {
    for (uint64_t u = 0; u < 16; ++u) {
      const uint64_t page = u * 16 + 3;
      if (Trigger(e, kR0 + page * kPage, IOMMU_PGFAULT_PERM_READ, false, (sent % 500) + 1) == 0) {
        ++sent;
      }
      v.Expect(
          WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + u * kUnit, kUnit, e.va0 + u * kUnit); }),
          Format("round %d unit %llu mapped to its backing", round,
                 static_cast<unsigned long long>(u)));
      most = std::max(most, mapped_units());
    }
  }
  v.Expect(most <= 4, Format("at most 4 units mapped at once (saw %d)", most));
  const std::string sock = e.dir + "/ctl.sock";
  auto ctl = [&](const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"/bin/iopfctl", "--control-socket", sock};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCapture(argv);
  };
  auto [rc1, out1] = ctl({"budget", "mock0", "128KiB"});
  v.Expect(rc1 == 0 && out1.find("max_resident 131072 bytes") != std::string::npos,
           "iopfctl budget: " + out1);
  v.Expect(mapped_units() <= 2, Format("lowered at once: %d units mapped", mapped_units()));
  // Unit 15 was faulted last: it is mapped; evict it.
  v.Expect(CheckMap(e, e.hwpt, kR0 + 15 * kUnit, kUnit, e.va0 + 15 * kUnit), "unit 15 mapped");
  auto [rc2, out2] =
      ctl({"evict", "mock0",
           Format("0x%llx", static_cast<unsigned long long>(kR0 + 15 * kUnit + kPage)), "4096"});
  v.Expect(rc2 == 0 && out2.find("evicted 65536 bytes") != std::string::npos,
           "iopfctl evict: " + out2);
  v.Expect(!CheckMap(e, e.hwpt, kR0 + 15 * kUnit, kPage, e.va0 + 15 * kUnit), "unit 15 unmapped");
  // And unpinned: its backing pages carry no pin any more, while a resident unit's carry one.
  v.Expect(CheckPins(e, e.va0 + 15 * kUnit, kUnit, 0), "unit 15's pages unpinned");
  int pinned_units = 0, unpinned_units = 0;
  for (uint64_t u = 0; u < 16; ++u) {
    const bool mapped = CheckMap(e, e.hwpt, kR0 + u * kUnit, kUnit, e.va0 + u * kUnit);
    if (mapped && CheckPins(e, e.va0 + u * kUnit, kUnit, 1)) ++pinned_units;
    if (!mapped && CheckPins(e, e.va0 + u * kUnit, kUnit, 0)) ++unpinned_units;
  }
  v.Expect(pinned_units + unpinned_units == 16,
           Format("every mapped unit pinned once, every evicted one not at all (%d + %d of 16)",
                  pinned_units, unpinned_units));
  auto [rc3, out3] = ctl({"evict", "mock0", "0x10", "4096"});
  v.Expect(rc3 == 1, Format("an eviction outside every region fails (exit %d)", rc3));
  // A Reload with another budget in the file: kept, and the budget applied.
  text.replace(text.find("256KiB"), 6, "64KiB");
  WriteFile(file, text);
  std::string reply;
  {
    ControlClient c(sock);
    reply = c.Call(R"({"method":"io.iopfd.Reload"})");
  }
  v.Expect(reply.find(R"("kept":["mock0"])") != std::string::npos, "Reload reply: " + reply);
  v.Expect(mapped_units() <= 1,
           Format("the file's budget applied: %d units mapped", mapped_units()));
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, static_cast<uint64_t>(sent));
  v.ExpectEq(s, "responses_success", static_cast<uint64_t>(sent));
  v.Expect(s["paging.evicted_units"] >= 40,
           Format("evictions: %llu", static_cast<unsigned long long>(s["paging.evicted_units"])));
  v.ExpectEq(s, "paging.budget_bytes", 65536);
  return v.Report();
}

// IOMMU_TEST_OP_DIRTY: marks the pages of [iova, iova + len) of `hwpt` dirty, as the device's
// writes would. Returns 0 or the negative errno (EINVAL when tracking is off).
int MarkDirty(const Env& e, uint32_t hwpt, uint64_t iova, uint64_t len) {
  std::vector<uint64_t> bitmap((len / kPage + 63) / 64, ~uint64_t{0});
  iommu_test_cmd cmd = {};
  cmd.op = IOMMU_TEST_OP_DIRTY;
  cmd.id = hwpt;
  cmd.dirty.iova = iova;
  cmd.dirty.length = len;
  cmd.dirty.page_size = kPage;
  cmd.dirty.uptr = reinterpret_cast<uintptr_t>(bitmap.data());
  return TestCmd(e.iommufd, &cmd);
}

// Dirty bits as the pager's second chance, on the real kernel (docs/PAGING.md, KERNEL_FACTS
// section 13): the owner's IOPF HWPT allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING and named
// with dirty_tracking = true. Four 64 KiB units fill a 256 KiB budget; the device writes unit 0;
// the fifth unit's eviction takes units 1 and 2 (the oldest after 0) and leaves 0, the written
// one, mapped. Marking pages dirty works only while tracking is on: iopfd turned it on, and
// turns it off when it gives the device back.
bool CasePagingDirtySecondChance() {
  Verdict v("paging_dirty_second_chance");
  Env e;
  Setup(e, v.name);
  iommu_hwpt_alloc alloc = {};
  alloc.size = sizeof(alloc);
  alloc.flags =
      IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
  alloc.dev_id = e.idev;
  alloc.pt_id = e.ioas;
  alloc.fault_id = e.fault_id;
  if (ioctl(e.iommufd, IOMMU_HWPT_ALLOC, &alloc)) Die("dirty HWPT: %s", strerror(errno));
  iommu_test_cmd replace = {};
  replace.op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE;
  replace.id = e.stdev;
  replace.mock_domain_replace.pt_id = alloc.out_hwpt_id;
  if (int rc = TestCmd(e.iommufd, &replace)) Die("MOCK_DOMAIN_REPLACE: %s", strerror(-rc));
  e.hwpt = alloc.out_hwpt_id;
  v.Expect(MarkDirty(e, e.hwpt, kR0, kPage) != 0, "no dirty bits before iopfd turns tracking on");
  std::string text = WholeUnits(DeviceFile(e));  // it counts units
  text.insert(text.find("[[space]]"), "[limits]\nmax_resident = \"256KiB\"\n\n");
  const size_t ioas_line = text.find("ioas_id = ");
  text.insert(text.find('\n', ioas_line) + 1,
              Format("hwpt_id = %u\ndirty_tracking = true\n", e.hwpt));
  WriteFile(e.dir + "/devices.d/mock0.toml", text);
  Daemon d = Start(e);
  constexpr uint64_t kUnit = 16 * kPage;
  auto fault = [&](uint64_t unit, uint32_t grpid) {
    Trigger(e, kR0 + unit * kUnit + 5 * kPage, IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE,
            false, grpid);
    return WaitFor(
        [&] { return CheckMap(e, e.hwpt, kR0 + unit * kUnit, kUnit, e.va0 + unit * kUnit); });
  };
  for (uint64_t u = 0; u < 4; ++u) {
    v.Expect(fault(u, static_cast<uint32_t>(u + 1)),
             Format("unit %llu mapped", static_cast<unsigned long long>(u)));
  }
  v.Expect(MarkDirty(e, e.hwpt, kR0 + 3 * kPage, kPage) == 0,
           "the device's write to unit 0 marked (iopfd turned tracking on)");
  v.Expect(fault(4, 5), "unit 4 mapped");
  auto mapped = [&](uint64_t u) {
    return CheckMap(e, e.hwpt, kR0 + u * kUnit, kUnit, e.va0 + u * kUnit);
  };
  v.Expect(mapped(0), "unit 0, written, stays mapped");
  v.Expect(!mapped(1) && !mapped(2), "units 1 and 2, the oldest clean ones, were evicted");
  v.Expect(mapped(3) && mapped(4), "units 3 and 4 stay mapped");
  v.Expect(CheckPins(e, e.va0 + kUnit, 2 * kUnit, 0), "units 1 and 2 unpinned");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 5);
  v.ExpectEq(s, "paging.dirty_second_chances", 1);
  v.ExpectEq(s, "paging.evicted_units", 2);
  v.Expect(MarkDirty(e, e.hwpt, kR0 + 3 * kUnit, kPage) != 0,
           "tracking turned off when iopfd gave the device back");
  return v.Report();
}

bool CaseCoalesceAdjacent() {
  Verdict v("coalesce_adjacent_pages");
  Env e;
  Setup(e, v.name);
  // Eight adjacent pages, queued before iopfd starts: one read, one map call of just them (half
  // of their 64 KiB unit, pages 32..47, the region's third: pages of a unit asked for together
  // within half of it map their span, first_touch = "page").
  for (int p = 7; p >= 0; --p)
    Trigger(e, kR0 + (32 + p) * kPage, IOMMU_PGFAULT_PERM_READ, false, p);
  Daemon d = Start(e);
  v.Expect(
      WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + 32 * kPage, 8 * kPage, e.va0 + 32 * kPage); }),
      "eight pages mapped to their backing");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 8);
  v.ExpectEq(s, "map_calls", 1);
  v.ExpectEq(s, "bytes_mapped", 8 * kPage);
  v.ExpectEq(s, "paging.partial_units", 1);
  return v.Report();
}

bool CaseBurst(int n) {
  Verdict v("burst_100k");
  Env e;
  Setup(e, v.name);
  Daemon d = Start(e);
  int failed = 0;
  uint64_t next_r0 = 0, next_r2 = 0;  // one counter per space, so every page of each is hit
  for (int i = 0; i < n; ++i) {
    bool pasid = (i % 4) == 3;
    uint64_t addr = pasid ? kR2 + (next_r2++ % 64) * kPage : kR0 + (next_r0++ % 256) * kPage;
    if (Trigger(e, addr, IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE, pasid, i % 512))
      ++failed;
  }
  v.Expect(failed == 0, Format("%d triggers failed", failed));
  v.Expect(WaitFor([&] { return QueueEmpty(e); }, 60000), "iopfd read the queue");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  v.Expect(CheckMap(e, e.hwpt, kR0, kR0Size, e.va0), "all of R0 mapped to its backing");
  v.Expect(CheckMap(e, e.hwpt_pasid, kR2, 64 * kPage, e.va2), "PASID pages mapped");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, static_cast<uint64_t>(n));
  v.ExpectEq(s, "responses_success", static_cast<uint64_t>(n));
  std::printf(
      "IOPF-INFO burst: %d faults, %llu reads, batch p50 %llu max %llu, latency p50 %lluns p99 "
      "%lluns\n",
      n, static_cast<unsigned long long>(s["reads"]),
      static_cast<unsigned long long>(s["batch.p50"]),
      static_cast<unsigned long long>(s["batch.max"]),
      static_cast<unsigned long long>(s["latency_ns.p50"]),
      static_cast<unsigned long long>(s["latency_ns.p99"]));
  return v.Report();
}

bool CaseStopWithOutstanding() {
  Verdict v("stop_with_faults_outstanding");
  Env e;
  Setup(e, v.name);
  Daemon d = Start(e);
  // Give iopfd a moment to attach, then queue a flood and stop it while the flood is pending.
  v.Expect(Trigger(e, kR0, IOMMU_PGFAULT_PERM_READ) == 0, "trigger");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0, kPage, e.va0); }), "iopfd running");
  constexpr int kN = 20000;
  for (int i = 0; i < kN; ++i)
    Trigger(e, kR0 + (i % 256) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512);
  int rc = Stop(d);
  auto s = ReadStats(d);
  // Everything queued before SIGTERM was read and answered by iopfd before it exited.
  ExpectClean(v, rc, s, kN + 1);
  char buf[4096];
  ssize_t left =
      read(e.fault_fd, buf, sizeof(buf) / sizeof(iommu_hwpt_pgfault) * sizeof(iommu_hwpt_pgfault));
  v.Expect(left == 0, Format("fault queue empty after exit (read returned %zd)", left));
  return v.Report();
}

bool CaseHugetlbfsBacking() {
  Verdict v("hugetlbfs_maps_huge_pages");
  Env e;
  Setup(e, v.name);
  // A region on hugetlbfs maps in units of the huge page: one fault maps its whole 2 MiB page.
  constexpr uint64_t kHuge = 2 << 20;
  constexpr uint64_t kR3 = 0x4000000;
  int fd = open("/dev/hugepages/iopf-huge", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, 2 * kHuge)) {
    v.Expect(false, Format("hugetlbfs file: %s", strerror(errno)));
    return v.Report();
  }
  char* va =
      static_cast<char*>(mmap(nullptr, 2 * kHuge, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  v.Expect(va != MAP_FAILED, "mmap hugetlbfs file");
  // Add the region to the no-PASID space, after R1 and before the PASID space.
  std::ifstream in(e.dir + "/devices.d/mock0.toml");
  std::stringstream text;
  text << in.rdbuf();
  std::string cfg = text.str();
  size_t pasid_space = cfg.find("[[space]]\npasid");
  cfg.insert(pasid_space, Format("  [[space.region]]\n  iova = 0x%llx\n  size = \"4MiB\"\n"
                                 "  backing = \"file:/dev/hugepages/iopf-huge\"\n"
                                 "  access = \"rw\"\n\n",
                                 static_cast<unsigned long long>(kR3)));
  WriteFile(e.dir + "/devices.d/mock0.toml", cfg);
  Daemon d = Start(e);
  v.Expect(Trigger(e, kR3 + 3 * kPage + 64, IOMMU_PGFAULT_PERM_WRITE) == 0, "trigger");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR3, kHuge, va); }),
           "the whole first huge page is mapped to its backing");
  v.Expect(!CheckMap(e, e.hwpt, kR3 + kHuge, kPage, va + kHuge), "the second huge page is not");
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 1);
  v.ExpectEq(s, "map_calls", 1);
  v.ExpectEq(s, "bytes_mapped", kHuge);
  if (va != MAP_FAILED) munmap(va, 2 * kHuge);
  close(fd);
  unlink("/dev/hugepages/iopf-huge");
  return v.Report();
}

bool CaseBadDeviceDoesNotStopOthers() {
  Verdict v("bad_device_does_not_stop_others");
  Env e;
  Setup(e, v.name);
  // A second device whose fault queue was never handed over: it fails to attach, loudly, and
  // mock0 is served all the same.
  WriteFile(e.dir + "/devices.d/broken.toml",
            "name = \"broken\"\nattach = \"adopt\"\n[adopt]\niommufd_fd = \"iommufd2\"\n"
            "fault_fd = \"nope\"\ndevice_id = 9\n[[space]]\nioas_id = 1\n"
            "  [[space.region]]\n  iova = 0x1000000\n  size = \"64KiB\"\n"
            "  backing = \"anonymous\"\n  access = \"r\"\n");
  Daemon d = Start(e);
  v.Expect(Trigger(e, kR0 + 5 * kPage, IOMMU_PGFAULT_PERM_READ) == 0, "trigger");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + 5 * kPage, kPage, e.va0 + 5 * kPage); }),
           "mock0 still resolves faults");
  // SIGUSR1 prints the per-device statistics without disturbing anything.
  kill(d.pid, SIGUSR1);
  v.Expect(
      WaitFor([&] { return ReadLog(d).find("mock0: 1 records in 1 groups") != std::string::npos; }),
      "SIGUSR1 printed mock0's statistics");
  int rc = Stop(d);
  std::string log = ReadLog(d);
  v.Expect(
      log.find("broken: iommufd_fd: no fd named 'iommufd2' was handed over") != std::string::npos,
      "the failed device is named with the key and fd at fault");
  v.Expect(log.find("serving 1 of 2 device(s)") != std::string::npos, "1 of 2 devices served");
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, 1);
  return v.Report();
}

bool CaseControlSocketUnderLoad() {
  Verdict v("control_socket_under_load");
  Env e;
  Setup(e, v.name);
  Daemon d = Start(e);
  v.Expect(Trigger(e, kR0, IOMMU_PGFAULT_PERM_READ) == 0, "trigger");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0, kPage, e.va0); }), "iopfd running");
  // 200 clients call GetStats as fast as they can while a stream of page requests flows.
  constexpr int kClients = 200;
  constexpr int kFaults = 20000;
  std::atomic<bool> stop{false};
  std::atomic<int> connected{0}, replies{0}, bad{0}, served{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      int mine = 0;
      ControlClient c(e.dir + "/ctl.sock");
      if (!c.ok()) {
        ++bad;
        return;
      }
      ++connected;
      do {
        std::string r = c.Call(R"({"method":"io.iopfd.GetStats","parameters":{"device":"mock0"}})");
        if (r.find("\"responses_written\"") == std::string::npos) {
          ++bad;
          return;
        }
        if (++mine == 1) ++served;
        ++replies;
      } while (!stop.load());
    });
  }
  for (int i = 0; i < kFaults; ++i) {
    Trigger(e, kR0 + (i % 256) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512);
  }
  v.Expect(WaitFor([&] { return QueueEmpty(e); }, 60000), "iopfd read the queue under load");
  // Faults come first, but the control plane is not starved: every client gets answered.
  const auto t_queue = std::chrono::steady_clock::now();
  const bool all_served = WaitFor([&] { return served.load() + bad.load() >= kClients; }, 60000);
  const double wait_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_queue).count();
  v.Expect(all_served, Format("only %d of %d clients got a reply %.1f s after the queue was read "
                              "(%d connected, %d replies in all)",
                              served.load(), kClients, wait_s, connected.load(), replies.load()));
  stop = true;
  for (auto& t : clients) t.join();
  v.Expect(connected == kClients, Format("%d of %d clients connected", connected.load(), kClients));
  v.Expect(bad == 0, Format("%d clients got a bad reply or lost the connection", bad.load()));
  int rc = Stop(d);
  auto s = ReadStats(d);
  ExpectClean(v, rc, s, kFaults + 1);
  std::printf(
      "IOPF-INFO control load: %d clients, %d GetStats replies during %d faults; fault "
      "latency p50 %lluns p99 %lluns\n",
      kClients, replies.load(), kFaults, static_cast<unsigned long long>(s["latency_ns.p50"]),
      static_cast<unsigned long long>(s["latency_ns.p99"]));
  return v.Report();
}

// Reload while page requests flow: mockA stays (faults flow on it throughout), mockB is removed
// (what it had queued is read and answered by its removal), mockC is added (its descriptors
// were handed over at start and held until a device file named them).
bool CaseReloadWhileFaultsFlow() {
  Verdict v("reload_adds_and_removes_while_faults_flow");
  Env a, b, c;
  Setup(a, v.name, "info", "mockA");
  Setup(b, v.name + "-b", "info", "mockB");
  Setup(c, v.name + "-c", "info", "mockC");
  WriteFile(a.dir + "/devices.d/mockB.toml", DeviceFile(b));
  auto fds = a.Fds();
  for (const Env* x : {&b, &c}) {
    for (const auto& f : x->Fds()) fds.push_back(f);
  }
  Daemon d = StartWith(a.dir, fds);
  v.Expect(Trigger(a, kR0, IOMMU_PGFAULT_PERM_READ) == 0 &&
               Trigger(b, kR0, IOMMU_PGFAULT_PERM_READ) == 0,
           "trigger");
  v.Expect(WaitFor([&] { return CheckMap(a, a.hwpt, kR0, kPage, a.va0); }), "mockA served");
  v.Expect(WaitFor([&] { return CheckMap(b, b.hwpt, kR0, kPage, b.va0); }), "mockB served");

  // mockB: a burst queued right before the reload.
  constexpr int kB = 2000;
  for (int i = 0; i < kB; ++i) {
    Trigger(b, kR0 + (i % 256) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512);
  }
  // mockA: faults flow before, during and after the reload.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> a_sent{1};
  std::thread flow([&] {
    for (int i = 0; !stop.load(); ++i) {
      if (Trigger(a, kR0 + (i % 256) * kPage, IOMMU_PGFAULT_PERM_READ, (i % 4) == 3, i % 512) ==
          0) {
        ++a_sent;
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  unlink((a.dir + "/devices.d/mockB.toml").c_str());
  WriteFile(a.dir + "/devices.d/mockC.toml", DeviceFile(c));
  std::string reply;
  {
    ControlClient ctl(a.dir + "/ctl.sock");
    reply = ctl.Call(R"({"method":"io.iopfd.Reload"})");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  flow.join();
  v.Expect(reply.find(R"("added":["mockC"])") != std::string::npos &&
               reply.find(R"("removed":["mockB"])") != std::string::npos &&
               reply.find(R"("kept":["mockA"])") != std::string::npos,
           "Reload reply: " + reply);
  // Nothing of mockB's was left behind in its queue.
  v.Expect(QueueEmpty(b), "mockB's queue emptied by its removal");
  // mockC is served; mockB no longer is.
  v.Expect(Trigger(c, kR0 + 5 * kPage, IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE) == 0,
           "trigger mockC");
  v.Expect(WaitFor([&] { return CheckMap(c, c.hwpt, kR0 + 5 * kPage, kPage, c.va0 + 5 * kPage); }),
           "mockC mapped after the reload");
  v.Expect(Trigger(b, kR0 + kPage, IOMMU_PGFAULT_PERM_READ) == 0, "trigger mockB");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  v.Expect(!QueueEmpty(b), "mockB no longer read after its removal");
  v.Expect(WaitFor([&] { return QueueEmpty(a); }, 60000), "mockA's queue read");
  int rc = Stop(d);
  ExpectClean(v, rc, ReadStats(d, "mockA"), a_sent.load());
  ExpectClean(v, rc, ReadStats(d, "mockC"), 1);
  // mockB's counters left with it; iopfd logged them at its removal.
  auto sb = FinalCounters(d, "mockB");
  ExpectClean(v, rc, sb, kB + 1);
  std::printf(
      "IOPF-INFO reload: mockA %llu faults during the reload, mockB %d answered at or "
      "before removal\n",
      static_cast<unsigned long long>(a_sent.load()), kB + 1);
  return v.Report();
}

// A VMM hands a device over at run time (io.iopfd.Adopt with the iommufd, the fault queue and
// the guest memory as SCM_RIGHTS), then takes it back (Detach) and answers its page requests
// itself.
bool CaseAdoptAndDetach() {
  Verdict v("adopt_and_detach_at_run_time");
  Env e;
  Setup(e, v.name, "info", "mockD");
  unlink((e.dir + "/devices.d/mockD.toml").c_str());
  Daemon d = StartWith(e.dir, {});
  const std::string sock = e.dir + "/ctl.sock";
  v.Expect(WaitFor([&] { return ControlClient(sock).ok(); }), "control socket up");
  ControlClient ctl(sock);
  std::string reply =
      ctl.Call(R"({"method":"io.iopfd.Adopt","parameters":{"config":)" +
                   JsonString(DeviceFile(e, /*fd_backings=*/true)) +
                   R"(,"fds":["mockD.iommufd","mockD.fault","mockD.ram0","mockD.ram1",)"
                   R"("mockD.ram2"]}})",
               {e.iommufd, e.fault_fd, e.ram0, e.ram1, e.ram2});
  v.Expect(reply.find(R"("name":"mockD")") != std::string::npos, "Adopt reply: " + reply);
  constexpr int kN = 100;
  for (int i = 0; i < kN; ++i) {
    bool pasid = (i % 2) == 1;
    Trigger(e, (pasid ? kR2 : kR0) + ((i / 2) % 32) * kPage, IOMMU_PGFAULT_PERM_READ, pasid,
            i % 512);
  }
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0, 32 * kPage, e.va0); }),
           "no-PASID pages mapped after Adopt");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt_pasid, kR2, 32 * kPage, e.va2); }),
           "PASID pages mapped after Adopt");
  std::string list = ctl.Call(R"({"method":"io.iopfd.ListDevices"})");
  v.Expect(list.find(R"("origin":"adopted")") != std::string::npos, "ListDevices: " + list);
  // Requests queued right before Detach are answered by it.
  for (int i = 0; i < kN; ++i) {
    Trigger(e, kR0 + (i % 64) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512);
  }
  reply = ctl.Call(R"({"method":"io.iopfd.Detach","parameters":{"device":"mockD"}})");
  // The stats object of the reply: {"parameters":{"stats":{...}}}.
  auto s = ParseCounters(After(reply, "\"stats\":"));
  v.ExpectEq(s, "groups", 2 * kN);
  v.ExpectEq(s, "responses_written", 2 * kN);
  v.ExpectEq(s, "responses_rejected", 0);
  v.ExpectEq(s, "outstanding", 0);
  v.Expect(QueueEmpty(e), "queue empty after Detach");
  // The owner answers from now on: iopfd leaves the next request to it.
  v.Expect(Trigger(e, kR0, IOMMU_PGFAULT_PERM_READ, false, 7) == 0, "trigger after Detach");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  iommu_hwpt_pgfault rec[4];
  ssize_t n = read(e.fault_fd, rec, sizeof(rec));
  v.Expect(n == static_cast<ssize_t>(sizeof(rec[0])),
           Format("the owner read the request after Detach (read returned %zd)", n));
  if (n == static_cast<ssize_t>(sizeof(rec[0]))) {
    iommu_hwpt_page_response resp = {};
    resp.cookie = rec[0].cookie;
    resp.code = IOMMUFD_PAGE_RESP_SUCCESS;
    v.Expect(write(e.fault_fd, &resp, sizeof(resp)) == static_cast<ssize_t>(sizeof(resp)),
             "the owner's response accepted");
  }
  int rc = Stop(d);
  v.Expect(rc == 0, Format("iopfd exit %d", rc));
  v.Expect(ReadStats(d, "mockD").empty(), "mockD not served at exit");
  return v.Report();
}

// libiopfd-client (client/, linked into this program) as a VMM uses it, on the real kernel: the
// drains of a configured device whose attachments go through the switch module (a drain with
// the owner's halt, a reset and its end), and a device handed over at run time with its real
// iommufd, fault queue and guest memory, its faults resolved, then taken back.
bool CaseClientLibrary() {
  Verdict v("client_library_as_a_vmm");
  Env e, m;
  Setup(e, v.name);
  WriteFile(e.dir + "/devices.d/mock0.toml",
            SwitchableDeviceFile(e, "halt = \"owner\"\nhalt_timeout_ms = 60000\n"));
  Setup(m, v.name + "-d", "info", "mockD");
  Daemon d = StartWith(e.dir, e.Fds());
  const std::string sock = e.dir + "/ctl.sock";
  v.Expect(WaitFor([&] { return ControlClient(sock).ok(); }), "control socket up");
  iopfd_client* c = nullptr;
  if (iopfd_client_connect(sock.c_str(), &c) != IOPFD_OK) {
    v.Expect(false, std::string("connect: ") + iopfd_client_connect_error());
    Stop(d);
    return v.Report();
  }
  auto ok = [&](int rc, const char* what) {
    v.Expect(rc == IOPFD_OK, Format("%s: %s %s: %s", what, iopfd_client_result_name(rc),
                                    iopfd_client_error_name(c), iopfd_client_error(c)));
    return rc == IOPFD_OK;
  };
  iopfd_status status{};
  if (ok(iopfd_client_get_status(c, &status), "get_status")) {
    v.Expect(std::string(status.health) == "ok" && status.devices_running == 1,
             Format("status: %s, %u running", status.health, status.devices_running));
  }
  v.Expect(Trigger(e, kR0, IOMMU_PGFAULT_PERM_READ) == 0, "trigger");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0, kPage, e.va0); }), "served before");

  // A drain: halting until the owner says its DMA is stopped, then running with a new epoch.
  iopfd_device_state st{};
  auto expect_state = [&](const char* want, uint64_t epoch, const char* what) {
    v.Expect(std::string(st.state) == want && st.epoch == epoch,
             Format("%s: %s epoch %llu (want %s epoch %llu)", what, st.state,
                    static_cast<unsigned long long>(st.epoch), want,
                    static_cast<unsigned long long>(epoch)));
  };
  if (ok(iopfd_client_drain(c, "mock0", 0, &st), "drain")) expect_state("halting", 0, "drain");
  if (ok(iopfd_client_halt(c, "mock0", &st), "halt")) expect_state("running", 1, "halt");
  // A reset: the owner's halt, then the FLR through the module on iopfd's worker.
  if (ok(iopfd_client_reset(c, "mock0", &st), "reset")) expect_state("halting", 1, "reset");
  ok(iopfd_client_halt(c, "mock0", &st), "halt after reset");
  if (ok(iopfd_client_wait_settled(c, "mock0", 60000, &st), "wait_settled")) {
    expect_state("running", 2, "after the reset");
  }
  v.Expect(Trigger(e, kR0 + kPage * 40, IOMMU_PGFAULT_PERM_READ) == 0, "trigger after");
  v.Expect(
      WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + kPage * 40, kPage, e.va0 + kPage * 40); }),
      "served after the reset");
  v.Expect(iopfd_client_drain(c, "nope", 0, &st) == IOPFD_E_DAEMON &&
               std::string(iopfd_client_error_name(c)) == "io.iopfd.NoSuchDevice",
           "a drain of a device not served: NoSuchDevice");

  // Hand-over at run time, with the memory as fd: backings.
  const iopfd_fd fds[] = {{"mockD.iommufd", m.iommufd},
                          {"mockD.fault", m.fault_fd},
                          {"mockD.ram0", m.ram0},
                          {"mockD.ram1", m.ram1},
                          {"mockD.ram2", m.ram2}};
  char name[64] = "";
  const std::string config = DeviceFile(m, /*fd_backings=*/true);
  if (ok(iopfd_client_adopt(c, config.c_str(), fds, 5, name, sizeof(name)), "adopt")) {
    v.Expect(std::string(name) == "mockD", std::string("adopted ") + name);
  }
  constexpr uint64_t kN = 64;
  for (uint64_t i = 0; i < kN; ++i) {
    Trigger(m, kR0 + (i % 32) * kPage, IOMMU_PGFAULT_PERM_READ, false, static_cast<uint32_t>(i));
  }
  v.Expect(WaitFor([&] { return CheckMap(m, m.hwpt, kR0, 32 * kPage, m.va0); }),
           "mockD's pages mapped after the hand-over");
  iopfd_device_info info{};
  v.Expect(WaitFor([&] {
             return iopfd_client_get_device(c, "mockD", &info) == IOPFD_OK && info.groups == kN;
           }),
           Format("mockD: %llu groups read", static_cast<unsigned long long>(info.groups)));
  v.Expect(std::string(info.origin) == "adopted", std::string("origin ") + info.origin);
  uint64_t answered = 0, outstanding = 1;
  if (ok(iopfd_client_detach(c, "mockD", &answered, &outstanding), "detach")) {
    v.Expect(
        answered == kN && outstanding == 0,
        Format("detach: %llu answered, %llu outstanding", static_cast<unsigned long long>(answered),
               static_cast<unsigned long long>(outstanding)));
  }
  iopfd_client_close(c);
  int rc = Stop(d);
  v.Expect(rc == 0, Format("iopfd exit %d", rc));
  return v.Report();
}

// Starts iopfd on `dir` as systemd would: with the launcher's descriptors `launcher` (passed at
// every start) and what the fd store `store` holds; waits until it serves its control socket.
Daemon StartStored(Verdict& v, const std::string& dir, FdStoreKeeper& store,
                   std::vector<std::pair<std::string, int>> launcher) {
  store.Receive();
  for (const auto& entry : store.entries()) launcher.push_back(entry);
  Daemon d = StartWith(dir, launcher, store.Env());
  const std::string sock = dir + "/ctl.sock";
  v.Expect(WaitFor([&] {
             return !ControlClient(sock).Call(R"({"method":"io.iopfd.GetStatus"})").empty();
           }),
           "iopfd serving");
  return d;
}

// Two devices under a budget of four units each keep their map records in the fd store
// (FdStoreKeeper plays systemd): mockD, adopted at run time (the record goes with its
// descriptors), and mockC, configured in devices.d (the record goes with a copy of its
// iommufd; its descriptors come with every start). After iopfd is killed (SIGKILL) and started
// again, the units the dead process mapped are taken back and counted, so that faults on new
// units evict them; then a reload restarts mockC (a changed setting) and its successor takes
// its record over; then a clean stop and a start. Never more than four units of either device
// are mapped. (Without the records the old units would stay mapped outside the budget, beside
// four new ones.)
// Longer than 60 lines: one story, told in order.
bool CasePagingBudgetAfterARestart() {
  Verdict v("paging_budget_after_a_restart");
  Env e, c;
  Setup(e, v.name, "info", "mockD");
  unlink((e.dir + "/devices.d/mockD.toml").c_str());
  Setup(c, v.name + "-c", "info", "mockC");
  const std::string c_file = e.dir + "/devices.d/mockC.toml";
  const std::string budget = "[limits]\nmax_resident = \"256KiB\"\n";
  std::string c_text = WholeUnits(DeviceFile(c));  // it counts units
  c_text.insert(c_text.find("[[space]]"), budget + "\n");
  WriteFile(c_file, c_text);
  const std::string sock = e.dir + "/ctl.sock";
  FdStoreKeeper store(e.dir + "/notify.sock");
  auto start = [&] { return StartStored(v, e.dir, store, c.Fds()); };
  Daemon d = start();
  std::string text = WholeUnits(DeviceFile(e, /*fd_backings=*/true));
  text.insert(text.find("[[space]]"), budget + "\n");
  std::string reply = ControlClient(sock).Call(
      R"({"method":"io.iopfd.Adopt","parameters":{"config":)" + JsonString(text) +
          R"(,"fds":["mockD.iommufd","mockD.fault","mockD.ram0",)"
          R"("mockD.ram1","mockD.ram2"]}})",
      {e.iommufd, e.fault_fd, e.ram0, e.ram1, e.ram2});
  v.Expect(reply.find(R"("name":"mockD")") != std::string::npos, "Adopt reply: " + reply);
  constexpr uint64_t kUnit = 16 * kPage;  // the default map unit, 64 KiB
  auto mapped = [&](const Env& x, uint64_t u) {
    return CheckMap(x, x.hwpt, kR0 + u * kUnit, kUnit, x.va0 + u * kUnit);
  };
  auto mapped_units = [&](const Env& x) {
    int n = 0;
    for (uint64_t u = 0; u < 16; ++u) n += mapped(x, u) ? 1 : 0;
    return n;
  };
  int most = 0;
  auto fault = [&](const Env& x, uint64_t u) {
    Trigger(x, kR0 + (u * 16 + 3) * kPage, IOMMU_PGFAULT_PERM_READ, false,
            static_cast<uint32_t>(u + 1));
    v.Expect(WaitFor([&] { return mapped(x, u); }),
             Format("%s unit %llu mapped", x.dev.c_str(), static_cast<unsigned long long>(u)));
    most = std::max({most, mapped_units(e), mapped_units(c)});
  };
  for (uint64_t u = 0; u < 4; ++u) {
    fault(e, u);
    fault(c, u);
  }
  v.Expect(mapped_units(e) == 4 && mapped_units(c) == 4, "4 units of each mapped before the kill");
  store.Receive();
  Crash(d);
  d = start();
  v.Expect(mapped_units(e) == 4 && mapped_units(c) == 4,
           "the dead process's units stay mapped meanwhile");
  for (uint64_t u = 4; u < 8; ++u) {
    fault(e, u);
    fault(c, u);
  }
  // A changed setting restarts mockC in place; its successor takes over what it mapped.
  c_text.insert(c_text.find("max_resident"), "max_group_records = 32\n");
  WriteFile(c_file, c_text);
  reply = ControlClient(sock).Call(R"({"method":"io.iopfd.Reload"})");
  v.Expect(reply.find(R"("restarted":["mockC"])") != std::string::npos, "Reload: " + reply);
  for (uint64_t u = 8; u < 12; ++u) fault(c, u);
  const std::string log = ReadLog(d);
  for (const char* dev : {"mockD", "mockC"}) {
    v.Expect(log.find(Format("%s: took back 4 unit(s)", dev)) != std::string::npos,
             Format("the restarted iopfd says it took back %s's 4 units", dev));
  }
  v.Expect(log.find("mockC: took back 4 unit(s)") != log.rfind("mockC: took back 4 unit(s)"),
           "mockC's successor after the reload took back its 4 units too");
  // A clean stop leaves the mappings (the devices keep working) and the records; the next
  // process takes them back too.
  int rc = Stop(d);
  v.Expect(rc == 0, Format("iopfd exit %d", rc));
  d = start();
  for (uint64_t u = 12; u < 16; ++u) {
    fault(e, u);
    fault(c, u);
  }
  v.Expect(most <= 4, Format("at most 4 units of a device mapped at once, across the kill, the "
                             "reload and the clean stop (saw %d)",
                             most));
  const std::string log2 = ReadLog(d);
  rc = Stop(d);
  v.Expect(rc == 0, Format("iopfd exit %d", rc));
  for (const char* dev : {"mockD", "mockC"}) {
    v.Expect(log2.find(Format("%s: took back 4 unit(s)", dev)) != std::string::npos,
             Format("after the clean stop iopfd says it took back %s's 4 units", dev));
    auto s = ReadStats(d, dev);
    v.Expect(s["paging.resident_bytes"] == 4 * kUnit,
             Format("%s: resident_bytes %llu at exit, the 4 units mapped", dev,
                    static_cast<unsigned long long>(s["paging.resident_bytes"])));
  }
  return v.Report();
}

// Partial units on the real kernel (first_touch = "page", the default; docs/PAGING.md): a
// request alone in its unit maps and pins only its page, a stray one later too; a request beside
// a page the unit holds maps its holes (the unit is then three areas); an eviction unmaps a
// partial unit, and one filled hole by hole, by the unit's range (the kernel takes every area
// inside it, KERNEL_FACTS.md 11) and unpins them; after iopfd is killed and started again, its
// partial units are taken back page by page (a copy each, KERNEL_FACTS.md 11) and counted.
//
// Longer than 60 lines: one story, told in order.
bool CasePagingPartialUnits() {
  Verdict v("paging_partial_units");
  Env e;
  Setup(e, v.name, "info");
  const std::string sock = e.dir + "/ctl.sock";
  FdStoreKeeper store(e.dir + "/notify.sock");
  auto start = [&] { return StartStored(v, e.dir, store, e.Fds()); };
  auto ctl = [&](const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"/bin/iopfctl", "--control-socket", sock};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCapture(argv);
  };
  constexpr uint64_t kUnit = 16 * kPage;
  auto page_mapped = [&](uint64_t page) {
    return CheckMap(e, e.hwpt, kR0 + page * kPage, kPage, e.va0 + page * kPage);
  };
  uint32_t group = 0;
  auto fault = [&](uint64_t page) {
    Trigger(e, kR0 + page * kPage, IOMMU_PGFAULT_PERM_READ, false, ++group);
    v.Expect(WaitFor([&] { return page_mapped(page); }),
             Format("page %llu mapped", static_cast<unsigned long long>(page)));
  };
  Daemon d = start();
  // Page 3 of units 0, 2, 4 and 6, one at a time: each alone in its unit.
  for (uint64_t u = 0; u < 8; u += 2) fault(u * 16 + 3);
  for (uint64_t u = 0; u < 8; u += 2) {
    v.Expect(!page_mapped(u * 16 + 2) && !page_mapped(u * 16 + 4),
             Format("unit %llu: only its page mapped", static_cast<unsigned long long>(u)));
    v.Expect(CheckPins(e, e.va0 + u * kUnit + 3 * kPage, kPage, 1) &&
                 CheckPins(e, e.va0 + u * kUnit, 3 * kPage, 0) &&
                 CheckPins(e, e.va0 + u * kUnit + 4 * kPage, 12 * kPage, 0),
             Format("unit %llu: only its page pinned", static_cast<unsigned long long>(u)));
  }
  // Page 9 of unit 4, a stray page: alone too (unit 4 holds two areas).
  fault(4 * 16 + 9);
  v.Expect(!page_mapped(4 * 16 + 8) && !page_mapped(4 * 16 + 10), "unit 4: a stray page alone");
  // Page 4 of unit 0, beside page 3: the run grows by two pages ([4, 6)); page 6, beside those,
  // would grow it past half the unit: its holes [0, 3) and [6, 16) are mapped; the unit is whole.
  fault(4);
  v.Expect(page_mapped(5) && !page_mapped(6) && !page_mapped(2),
           "unit 0: a neighbour grew the run");
  v.Expect(
      CheckPins(e, e.va0 + 3 * kPage, 3 * kPage, 1) && CheckPins(e, e.va0 + 6 * kPage, kPage, 0),
      "unit 0: only the run pinned");
  fault(6);
  v.Expect(CheckMap(e, e.hwpt, kR0, kUnit, e.va0), "unit 0 mapped whole past half");
  // Killed and started again: unit 0 is taken back whole, units 2, 4 and 6 page by page.
  store.Receive();
  Crash(d);
  d = start();
  const std::string log = ReadLog(d);
  v.Expect(
      log.find(Format("mock0: took back 4 unit(s) (%llu bytes)",
                      static_cast<unsigned long long>(kUnit + 4 * kPage))) != std::string::npos,
      "the restarted iopfd took back unit 0 whole and three partial units");
  // Evicted: unit 0 (four areas) and unit 2 (one), each by its unit's range.
  auto [rc1, out1] = ctl({"evict", "mock0", Format("0x%llx", static_cast<unsigned long long>(kR0)),
                          Format("%llu", static_cast<unsigned long long>(3 * kUnit))});
  v.Expect(rc1 == 0 && out1.find(Format("evicted %llu bytes",
                                        static_cast<unsigned long long>(kUnit + kPage))) !=
                           std::string::npos,
           "iopfctl evict: " + out1);
  v.Expect(!page_mapped(0) && !page_mapped(3) && !page_mapped(15) && !page_mapped(35),
           "units 0 and 2 unmapped");
  v.Expect(CheckPins(e, e.va0, 3 * kUnit, 0), "units 0 and 2 unpinned");
  v.Expect(page_mapped(4 * 16 + 3) && page_mapped(6 * 16 + 3), "units 4 and 6 still mapped");
  // Faulted again, unit 2 is partial again.
  fault(35);
  v.Expect(!page_mapped(34) && !page_mapped(36), "unit 2: only its page mapped again");
  const int rc = Stop(d);
  auto s = ReadStats(d);
  v.Expect(rc == 0, Format("iopfd exit %d", rc));
  v.ExpectEq(s, "paging.unmap_failures", 0);
  v.ExpectEq(s, "responses_invalid", 0);
  v.ExpectEq(s, "paging.resident_bytes", 4 * kPage);  // units 2 and 6: a page; unit 4: two
  // Units 4 and 6 taken back in part at the restart, unit 2 faulted in part again.
  v.ExpectEq(s, "paging.resident_units", 3);
  v.ExpectEq(s, "paging.partial_units", 3);
  v.ExpectEq(s, "paging.evicted_units", 2);
  return v.Report();
}

// Drains and resets while a generator floods page requests, driven with iopfctl and the
// control socket; iopfd parks the mock device through the VM's switch module. The kernel must
// never reject one of iopfd's answers (a stale cookie), every cookie iopfd read must be
// accounted for (answered, or dropped because the kernel answered it at the park), and faults
// after each resume must be resolved.
bool CaseDrainAndResetDuringAFlood() {
  Verdict v("drain_and_reset_during_a_flood");
  Env e, b;
  Setup(e, v.name);
  WriteFile(e.dir + "/devices.d/mock0.toml",
            SwitchableDeviceFile(e, "halt = \"owner\"\nhalt_timeout_ms = 60000\n"));
  // A second device, flooded too: mock0's drains must not hold it up.
  Setup(b, v.name + "-b", "info", "mockB");
  WriteFile(e.dir + "/devices.d/mockB.toml", DeviceFile(b));
  auto fds = e.Fds();
  for (const auto& f : b.Fds()) fds.push_back(f);
  Daemon d = StartWith(e.dir, fds);
  v.Expect(Trigger(e, kR0, IOMMU_PGFAULT_PERM_READ) == 0, "trigger");
  v.Expect(WaitFor([&] { return CheckMap(e, e.hwpt, kR0, kPage, e.va0); }), "served before");

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> sent{1}, b_sent{0};
  std::thread other([&] {
    for (int i = 0; !stop.load(); ++i) {
      if (Trigger(b, kR0 + (i % 200) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512) == 0) {
        ++b_sent;
      }
    }
  });
  std::thread flood([&] {
    for (int i = 0; !stop.load(); ++i) {
      const bool pasid = (i % 3) == 2;
      // Pages the flood never asks for stay free for the checks after the last resume.
      const uint64_t addr = pasid ? kR2 + (i % 48) * kPage : kR0 + (i % 200) * kPage;
      if (Trigger(e, addr, IOMMU_PGFAULT_PERM_READ, pasid, i % 512) == 0) ++sent;
    }
  });
  const std::string sock = e.dir + "/ctl.sock";
  int steps = 0;
  auto ctl = [&](const std::vector<std::string>& args, const std::string& want) {
    std::vector<std::string> argv = {"/bin/iopfctl", "--control-socket", sock};
    argv.insert(argv.end(), args.begin(), args.end());
    auto [rc, out] = RunCapture(argv);
    ++steps;
    v.Expect(rc == 0 && out.find(want) != std::string::npos,
             Format("iopfctl %s: exit %d, '%s' (want '%s')", args[0].c_str(), rc, out.c_str(),
                    want.c_str()));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // faults flow in between
  };
  ctl({"drain", "mock0"}, "mock0: halting (epoch 0)");
  ctl({"halt", "mock0"}, "mock0: running (epoch 1)");
  ctl({"drain", "mock0", "5"}, "mock0: halting (epoch 1)");  // the PASID's attachment only
  ctl({"halt", "mock0"}, "mock0: running (epoch 2)");
  ctl({"reset", "mock0"}, "mock0: halting (epoch 2)");
  ctl({"halt", "mock0"}, "mock0: running (epoch 3)");
  ctl({"halt", "mock0"}, "mock0: halted (epoch 3)");  // held: page requests off
  ctl({"resume", "mock0"}, "mock0: running (epoch 4)");
  // And a run of drains straight over the socket, as a VMM would.
  constexpr int kMore = 10;
  {
    ControlClient c(sock);
    for (int i = 0; i < kMore; ++i) {
      std::string r1 = c.Call(R"({"method":"io.iopfd.Drain","parameters":{"device":"mock0"}})");
      std::string r2 = c.Call(R"({"method":"io.iopfd.Halt","parameters":{"device":"mock0"}})");
      v.Expect(r1.find(R"("state":"halting")") != std::string::npos &&
                   r2.find(R"("state":"running")") != std::string::npos,
               "Drain/Halt over the socket: " + r1 + " " + r2);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  stop = true;
  flood.join();
  other.join();
  // Faults after the last resume are resolved, on both attachments.
  v.Expect(Trigger(e, kR0 + 250 * kPage, IOMMU_PGFAULT_PERM_READ) == 0 &&
               Trigger(e, kR2 + 60 * kPage, IOMMU_PGFAULT_PERM_READ, true) == 0,
           "trigger after resume");
  sent += 2;
  v.Expect(
      WaitFor([&] { return CheckMap(e, e.hwpt, kR0 + 250 * kPage, kPage, e.va0 + 250 * kPage); }),
      "no-PASID fault after resume mapped");
  v.Expect(WaitFor([&] {
             return CheckMap(e, e.hwpt_pasid, kR2 + 60 * kPage, kPage, e.va2 + 60 * kPage);
           }),
           "PASID fault after resume mapped");
  v.Expect(WaitFor([&] { return QueueEmpty(e); }, 60000), "queue read");
  v.Expect(WaitFor([&] { return QueueEmpty(b); }, 60000), "mockB's queue read");
  int rc = Stop(d);
  auto s = ReadStats(d);
  // mockB was served all along: every request answered, nothing rejected or owed.
  auto sb = ReadStats(d, "mockB");
  ExpectClean(v, rc, sb, b_sent.load());
  v.Expect(rc == 0, Format("iopfd exit %d", rc));
  for (const char* key :
       {"responses_rejected", "responses_abandoned", "outstanding", "guard_answered",
        "duplicate_cookies", "stale_epoch_blocked", "drain.unaccounted", "drain.quarantines"}) {
    v.ExpectEq(s, key, 0);
  }
  // Drains and resets that ran to completion (the hold and its resume is not one), and the
  // epoch moved at every resume, the hold's included.
  v.ExpectEq(s, "drain.drains", 3 + kMore);
  v.ExpectEq(s, "drain.function_resets", 1);
  v.ExpectEq(s, "drain.epoch", 4 + kMore);
  // Every group read was either answered and accepted, or dropped because the park answered it.
  v.Expect(s["groups"] > 0 && s["groups"] == s["responses_written"] + s["responses_stale_dropped"],
           Format("groups %llu = written %llu + stale dropped %llu",
                  static_cast<unsigned long long>(s["groups"]),
                  static_cast<unsigned long long>(s["responses_written"]),
                  static_cast<unsigned long long>(s["responses_stale_dropped"])));
  // Nothing the kernel delivered can be more than what was sent.
  v.Expect(s["groups"] <= sent.load(), "groups read <= page requests sent");
  std::printf(
      "IOPF-INFO drain: mockB (never drained) %llu faults, latency p50 %.1f us p99 %.1f us\n",
      static_cast<unsigned long long>(b_sent.load()),
      static_cast<double>(sb["latency_ns.p50"]) / 1e3,
      static_cast<double>(sb["latency_ns.p99"]) / 1e3);
  std::printf(
      "IOPF-INFO drain: %llu page requests sent during %d iopfctl steps and %d drains; "
      "iopfd read %llu groups, %llu answers dropped as stale at a park\n",
      static_cast<unsigned long long>(sent.load()), steps, kMore,
      static_cast<unsigned long long>(s["groups"]),
      static_cast<unsigned long long>(s["responses_stale_dropped"]));
  return v.Report();
}

// ---- Kernel fault injection (issue 12).

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// failslab answers fail-nth for GFP_KERNEL allocations too (ignore-gfp-wait=N), silently
// (verbose=0: the kernel log is checked for warnings after the run), and only in the caches
// marked for it (cache-filter=Y): the kmalloc caches and io_uring's request cache, where the
// kernel allocates for what iopfd asks of it (ioctls, reads and writes, the ring, sockets).
// Not the caches behind mmap (VMAs, maple nodes): a failed mmap inside the C library's or the
// sanitizer's allocator is a different experiment (ASan's allocator aborts on one), and the VM
// boots with slab_nomerge so that no such cache hides behind a kmalloc one. The page
// allocator's injection (fail_page_alloc) is left off: every page allocation failure prints a
// stack trace (warn_alloc), which the clean-log check cannot tell from a real warning.
bool SetUpFailslab(Verdict& v) {
  mkdir("/sys/kernel/debug", 0755);
  if (mount("debugfs", "/sys/kernel/debug", "debugfs", 0, nullptr) != 0 && errno != EBUSY) {
    v.Expect(false, Format("mount debugfs: %s", strerror(errno)));
    return false;
  }
  for (const auto& [file, value] : std::vector<std::pair<const char*, const char*>>{
           {"/sys/kernel/debug/failslab/ignore-gfp-wait", "N"},
           {"/sys/kernel/debug/failslab/verbose", "0"},
           {"/sys/kernel/debug/failslab/cache-filter", "Y"}}) {
    std::ofstream f(file);
    f << value;
    f.close();
    if (!f) {
      v.Expect(false, Format("write %s: the test kernel lacks FAILSLAB/debugfs?", file));
      return false;
    }
  }
  int marked = 0;
  if (DIR* dir = opendir("/sys/kernel/slab")) {
    while (dirent* e = readdir(dir)) {
      const std::string name = e->d_name;
      if (name.rfind("kmalloc-", 0) != 0 && name != "io_kiocb") continue;
      std::ofstream f("/sys/kernel/slab/" + name + "/failslab");
      f << "1";
      f.close();
      marked += f ? 1 : 0;
    }
    closedir(dir);
  }
  v.Expect(marked > 0, "no slab cache could be marked for failslab (/sys/kernel/slab)");
  return marked > 0;
}

// Makes the Nth fault-injectable allocation of iopfd's loop thread fail
// (/proc/PID/task/TID/fail-nth, as the kernel's own iommufd selftests do), for N = 1, 2, ...,
// each across one pass: page requests on two devices, a drain of one (and every eighth pass a
// reset) over the control socket, until the queues are read. It ends when a pass completes
// without reaching its Nth allocation. After every step iopfd must be alive and either serve
// both devices or have failed only one, with an error naming the step and the errno (it is then
// restarted); after every exit no group it read may be left unanswered (the cookie probe), and
// for the device never drained every page request is accounted for: read by an iopfd or still
// queued.
bool CaseKernelAllocationFailures() {
  Verdict v("kernel_allocation_failures");
  if (!SetUpFailslab(v)) return v.Report();
  Env e, b;
  Setup(e, v.name, "warning");
  WriteFile(e.dir + "/devices.d/mock0.toml",
            SwitchableDeviceFile(e, "halt = \"owner\"\nhalt_timeout_ms = 60000\n"));
  Setup(b, v.name + "-b", "warning", "mockB");
  WriteFile(e.dir + "/devices.d/mockB.toml", DeviceFile(b));
  auto fds = e.Fds();
  for (const auto& f : b.Fds()) fds.push_back(f);
  const std::string sock = e.dir + "/ctl.sock";
  const auto start = std::chrono::steady_clock::now();
  // In the sanitizer build, UBSan's check of an object's dynamic type reads files of its own
  // (the kernel allocates for that too), and reports a type it could not verify when one of
  // those allocations is the one made to fail: not iopfd's doing. That check is suppressed
  // here, and only here; ASan and every other UBSan check stay on. (The plain build ignores
  // these variables.)
  WriteFile(e.dir + "/ubsan.supp", "vptr:*\n");
  const std::vector<std::pair<std::string, std::string>> sanitizer_env = {
      {"UBSAN_OPTIONS", "suppressions=" + e.dir + "/ubsan.supp:print_stacktrace=1"},
      {"ASAN_OPTIONS", "quarantine_size_mb=32:print_stacktrace=1"}};

  // Up means serving: a reply needs the loop running. (A connect alone succeeds as soon as the
  // socket listens, before the loop starts; an allocation failed at start-up, in the C library
  // or the sanitizer runtime, is not what this case is about.)
  auto serving = [&] {
    return !ControlClient(sock).Call(R"({"method":"io.iopfd.GetStatus"})").empty();
  };
  Daemon d = StartWith(e.dir, fds, sanitizer_env);
  v.Expect(WaitFor(serving), "iopfd up");
  uint64_t sent_b = 0, read_b = 0;
  int injected = 0, restarts = 0, n = 1;
  bool clean_pass = false;
  std::string first_failure;
  // Stops iopfd and checks what it leaves behind; counts mockB's groups it read.
  auto stop_and_probe = [&](const char* when) {
    const int rc = Stop(d);
    v.Expect(rc == 0, Format("iopfd exit %d %s (N=%d)", rc, when, n));
    auto sb = ReadStats(d, "mockB");
    read_b += sb["groups"];
    for (Env* env : {&e, &b}) {
      Probe p = ProbeFaultQueue(*env);
      v.Expect(p.unanswered == 0, Format("%s: %zu group(s) read and never answered %s (N=%d)",
                                         env->dev.c_str(), p.unanswered, when, n));
      if (env == &b) read_b += p.unread;  // waiting in the queue: not lost
    }
  };
  constexpr int kMaxN = 20000;
  for (; n <= kMaxN && v.failures.empty(); ++n) {
    const std::string nth = Format("/proc/%d/task/%d/fail-nth", d.pid, d.pid);
    WriteFile(nth, std::to_string(n));
    // One pass: fresh pages (map calls), repeated ones (answered from what is mapped), both
    // attachments of mock0, mockB, a drain, now and then a reset.
    for (int i = 0; i < 8; ++i) {
      const uint64_t page = static_cast<uint64_t>((n * 8 + i) % 200);
      Trigger(e, kR0 + page * kPage, IOMMU_PGFAULT_PERM_READ, false, static_cast<uint32_t>(i));
      Trigger(e, kR2 + (page % 48) * kPage, IOMMU_PGFAULT_PERM_READ, true,
              static_cast<uint32_t>(i + 8));
      if (Trigger(b, kR0 + page * kPage, IOMMU_PGFAULT_PERM_READ, false,
                  static_cast<uint32_t>(i)) == 0) {
        ++sent_b;
      }
    }
    // A call whose connection an injected failure broke gets no reply (iopfd closes it): the
    // client calls again, as any client would.
    auto call = [&](const std::string& json) {
      for (int t = 0; t < 3; ++t) {
        std::string r = ControlClient(sock).Call(json);
        if (!r.empty()) return r;
      }
      return std::string();
    };
    (void)call(n % 8 == 0 ? R"({"method":"io.iopfd.Reset","parameters":{"device":"mock0"}})"
                          : R"({"method":"io.iopfd.Drain","parameters":{"device":"mock0"}})");
    (void)call(R"({"method":"io.iopfd.Halt","parameters":{"device":"mock0"}})");
    WaitFor([&] { return QueueEmpty(e) && QueueEmpty(b); }, 5000);
    const std::string left = ReadText(nth);
    WriteFile(nth, "0");
    if (std::atoi(left.c_str()) > 0) {
      clean_pass = true;  // the pass made fewer than N allocations: every one was tried
      break;
    }
    ++injected;
    int status = 0;
    if (waitpid(d.pid, &status, WNOHANG) == d.pid) {
      d.pid = -1;
      EchoLog(d);
      v.Expect(false,
               Format("iopfd died when allocation %d of its loop failed (status 0x%x)", n, status));
      break;
    }
    // Both devices served (once a reset has run its course), or one given up with its reason
    // in the log.
    auto running = [](const std::string& l) {
      size_t count = 0;
      for (size_t at = l.find(R"("state":"running")"); at != std::string::npos;
           at = l.find(R"("state":"running")", at + 1)) {
        ++count;
      }
      return count;
    };
    std::string list;
    WaitFor(
        [&] {
          list = call(R"({"method":"io.iopfd.ListDevices"})");
          return running(list) >= 2;
        },
        3000);
    v.Expect(!list.empty(), Format("no ListDevices reply after allocation %d failed", n));
    if (running(list) < 2) {
      const std::string log = ReadLog(d);
      static const std::regex kErrno(" E[A-Z0-9]+ \\(");
      v.Expect(std::regex_search(log, kErrno),
               Format("a device stopped running after allocation %d failed, with no errno in "
                      "the log: %s",
                      n, list.c_str()));
      if (first_failure.empty()) first_failure = Format("N=%d: %s", n, list.c_str());
      stop_and_probe("after a device was given up");
      d = StartWith(e.dir, fds, sanitizer_env);
      v.Expect(WaitFor(serving), "iopfd up again");
      ++restarts;
    }
  }
  v.Expect(clean_pass, Format("no pass completed without an injected failure up to N=%d", n));
  if (d.pid > 0) stop_and_probe("at the end");
  v.Expect(
      read_b == sent_b,
      Format("mockB: %llu page requests sent, %llu read by iopfd or still queued",
             static_cast<unsigned long long>(sent_b), static_cast<unsigned long long>(read_b)));
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "IOPF-INFO fault injection: %d allocations of iopfd's loop failed in turn (a pass "
      "makes %d), %d restart(s) after a device was given up, %.0f s%s%s\n",
      injected, n - 1, restarts, secs,
      first_failure.empty() ? "" : "; first: ", first_failure.c_str());
  return v.Report();
}

// The self-test devices present now (their sysfs names).
std::set<std::string> MockDevices() {
  std::set<std::string> names;
  if (DIR* dir = opendir("/sys/bus/iommufd_mock/devices")) {
    while (dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') names.insert(e->d_name);
    }
    closedir(dir);
  }
  return names;
}

// A VMM destroys one of two devices while page requests flood both: iopfd hears the kernel's
// remove uevent, detaches that device (nothing it read left unaccounted), and the other device
// is served throughout.
bool CaseDestroyDeviceMidFlood() {
  Verdict v("destroy_device_mid_flood");
  Env a, b;
  std::set<std::string> before = MockDevices();
  Setup(a, v.name, "info", "mockA");
  std::set<std::string> after = MockDevices();
  std::string sysname;
  for (const std::string& n : after) {
    if (before.count(n) == 0) sysname = n;
  }
  v.Expect(!sysname.empty(), "mockA's sysfs device found");
  Setup(b, v.name + "-b", "info", "mockB");
  // mockA's file names its sysfs device, so that iopfd follows its uevents.
  std::string file = DeviceFile(a);
  file.insert(file.find('\n') + 1, "sysfs = \"/sys/bus/iommufd_mock/devices/" + sysname + "\"\n");
  WriteFile(a.dir + "/devices.d/mockA.toml", file);
  WriteFile(a.dir + "/devices.d/mockB.toml", DeviceFile(b));
  auto fds = a.Fds();
  for (const auto& f : b.Fds()) fds.push_back(f);
  Daemon d = StartWith(a.dir, fds);
  v.Expect(Trigger(a, kR0, IOMMU_PGFAULT_PERM_READ) == 0 &&
               Trigger(b, kR0, IOMMU_PGFAULT_PERM_READ) == 0,
           "trigger");
  v.Expect(WaitFor([&] { return CheckMap(a, a.hwpt, kR0, kPage, a.va0); }), "mockA served");
  v.Expect(WaitFor([&] { return CheckMap(b, b.hwpt, kR0, kPage, b.va0); }), "mockB served");

  std::atomic<bool> stop{false}, stop_a{false};
  std::atomic<uint64_t> a_sent{1}, b_sent{1};
  std::thread flood([&] {
    for (int i = 0; !stop.load(); ++i) {
      const bool pasid = (i % 4) == 3;
      const uint64_t addr = pasid ? kR2 + (i % 48) * kPage : kR0 + (i % 200) * kPage;
      if (!stop_a.load() && Trigger(a, addr, IOMMU_PGFAULT_PERM_READ, pasid, i % 512) == 0) {
        ++a_sent;
      }
      if (Trigger(b, addr, IOMMU_PGFAULT_PERM_READ, pasid, i % 512) == 0) ++b_sent;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // The VMM tears mockA down: its PASID first (destroying the self-test device with a PASID
  // still attached makes the kernel WARN), then the device itself.
  iommu_test_cmd detach = {};
  detach.op = IOMMU_TEST_OP_PASID_DETACH;
  detach.id = a.stdev;
  detach.pasid_detach.pasid = kPasid;
  v.Expect(TestCmd(a.iommufd, &detach) == 0, "PASID_DETACH");
  // Its requests without a PASID go on a little longer, reusing the cookies the detach freed
  // while iopfd may still hold answers for them; then the VMM stops the device (a destroy
  // waits for every trigger in progress to let go of it).
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop_a = true;
  iommu_destroy destroy = {};
  destroy.size = sizeof(destroy);
  destroy.id = a.stdev;
  v.Expect(ioctl(a.iommufd, IOMMU_DESTROY, &destroy) == 0,
           Format("IOMMU_DESTROY mockA: %s", strerror(errno)));
  const std::string sock = a.dir + "/ctl.sock";
  auto served = [&](const std::string& name) {
    ControlClient c(sock);
    return c.Call(R"({"method":"io.iopfd.ListDevices"})").find("\"name\":\"" + name + "\"") !=
           std::string::npos;
  };
  const auto destroyed_at = std::chrono::steady_clock::now();
  v.Expect(WaitFor([&] { return !served("mockA"); }, 30000), "mockA removed after its uevent");
  const double removal_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - destroyed_at)
          .count();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // mockB alone under the flood
  stop = true;
  flood.join();
  v.Expect(served("mockB"), "mockB still served");
  v.Expect(Trigger(b, kR0 + 250 * kPage, IOMMU_PGFAULT_PERM_READ) == 0, "trigger mockB after");
  ++b_sent;
  v.Expect(
      WaitFor([&] { return CheckMap(b, b.hwpt, kR0 + 250 * kPage, kPage, b.va0 + 250 * kPage); }),
      "mockB served after mockA went");
  v.Expect(WaitFor([&] { return QueueEmpty(b); }, 60000), "mockB's queue read");
  int rc = Stop(d);
  const std::string log = ReadLog(d);
  v.Expect(log.find("mockA: remove /devices/" + sysname + " (uevent") != std::string::npos,
           "iopfd logged mockA's remove uevent");
  ExpectClean(v, rc, ReadStats(d, "mockB"), b_sent.load());
  auto sa = FinalCounters(d, "mockA");
  for (const char* key :
       {"outstanding", "responses_abandoned", "guard_answered", "stale_epoch_blocked"}) {
    v.ExpectEq(sa, key, 0);
  }
  // duplicate_cookies may be above 0 for mockA: the PASID detach answered groups behind
  // iopfd's back and their cookies came back with new groups; iopfd dropped the stale answers
  // (counted in responses_stale_dropped) rather than answer a new group with an old answer.
  // Every group read from mockA was answered (some may have met a cookie the kernel had just
  // answered at the destroy: rejected) or dropped at the removal.
  v.Expect(sa["groups"] > 0 && sa["groups"] == sa["responses_written"] + sa["responses_rejected"] +
                                                   sa["responses_stale_dropped"],
           "mockA: every group read accounted for");
  v.Expect(sa["groups"] <= a_sent.load(), "mockA: groups read <= sent");
  std::printf(
      "IOPF-INFO destroy: removal seen %.1f ms after the destroy; mockA %llu sent, "
      "%llu read (%llu written, %llu rejected, %llu dropped as stale, %llu cookies reused "
      "under iopfd); mockB %llu served\n",
      removal_ms, static_cast<unsigned long long>(a_sent.load()),
      static_cast<unsigned long long>(sa["groups"]),
      static_cast<unsigned long long>(sa["responses_written"]),
      static_cast<unsigned long long>(sa["responses_rejected"]),
      static_cast<unsigned long long>(sa["responses_stale_dropped"]),
      static_cast<unsigned long long>(sa["duplicate_cookies"]),
      static_cast<unsigned long long>(b_sent.load()));
  return v.Report();
}

int RunTests(const std::vector<std::string>& only) {
  struct Case {
    const char* name;
    std::function<bool()> fn;
  };
  std::vector<Case> cases = {
      {"read_write_in_range", CaseReadWriteInRange},
      {"out_of_every_region", CaseOutOfRegion},
      {"write_to_read_only", CaseWriteToReadOnly},
      {"pasid_routing", CasePasidRouting},
      {"one_page_many_faults", CaseOnePageManyFaults},
      {"coalesce_adjacent_pages", CaseCoalesceAdjacent},
      {"paging_within_a_budget", CasePagingWithinABudget},
      {"paging_dirty_second_chance", CasePagingDirtySecondChance},
      {"burst_100k", [] { return CaseBurst(100000); }},
      {"stop_with_faults_outstanding", CaseStopWithOutstanding},
      {"hugetlbfs_maps_huge_pages", CaseHugetlbfsBacking},
      {"bad_device_does_not_stop_others", CaseBadDeviceDoesNotStopOthers},
      {"control_socket_under_load", CaseControlSocketUnderLoad},
      {"reload_adds_and_removes_while_faults_flow", CaseReloadWhileFaultsFlow},
      {"adopt_and_detach_at_run_time", CaseAdoptAndDetach},
      {"paging_budget_after_a_restart", CasePagingBudgetAfterARestart},
      {"paging_partial_units", CasePagingPartialUnits},
      {"drain_and_reset_during_a_flood", CaseDrainAndResetDuringAFlood},
      {"client_library_as_a_vmm", CaseClientLibrary},
      {"destroy_device_mid_flood", CaseDestroyDeviceMidFlood},
      {"kernel_allocation_failures", CaseKernelAllocationFailures},
  };
  int failed = 0, passed = 0;
  for (const Case& c : cases) {
    if (!only.empty() && std::find(only.begin(), only.end(), c.name) == only.end()) continue;
    (c.fn() ? passed : failed)++;
  }
  std::printf("IOPF-SUMMARY %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

// The main job's embedded default: a mixed stream of page requests, then iopfd's own report.
int RunDemo(int n, const std::string& log_level) {
  Env e;
  Setup(e, "demo", log_level);
  Daemon d = Start(e);
  auto t0 = std::chrono::steady_clock::now();
  int invalid = 0;
  for (int i = 0; i < n; ++i) {
    int kind = i % 10;
    if (kind < 6) {
      Trigger(e, kR0 + (i % 256) * kPage, IOMMU_PGFAULT_PERM_READ | IOMMU_PGFAULT_PERM_WRITE, false,
              i % 512);
    } else if (kind < 8) {
      Trigger(e, kR2 + (i % 64) * kPage, IOMMU_PGFAULT_PERM_READ, true, i % 512);
    } else if (kind == 8) {
      Trigger(e, kR1 + (i % 64) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512);
    } else {
      Trigger(e, kHole + (i % 64) * kPage, IOMMU_PGFAULT_PERM_READ, false, i % 512);  // no region
      ++invalid;
    }
  }
  WaitFor([&] { return QueueEmpty(e); }, 60000);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int rc = Stop(d);
  auto s = ReadStats(d);
  bool mapped =
      CheckMap(e, e.hwpt, kR0, kR0Size, e.va0) && CheckMap(e, e.hwpt_pasid, kR2, 64 * kPage, e.va2);
  std::printf("\n=== iopfd demo: %d page requests from a mock PRI device (Linux %s) ===\n", n,
              "iommufd selftest");
  std::printf("  injected in %.2f s; iopfd exit code %d\n", secs, rc);
  std::printf(
      "  groups read %llu, answered SUCCESS %llu, INVALID %llu (no_region %llu, expected %d)\n",
      static_cast<unsigned long long>(s["groups"]),
      static_cast<unsigned long long>(s["responses_success"]),
      static_cast<unsigned long long>(s["responses_invalid"]),
      static_cast<unsigned long long>(s["invalid_by_reason.no_region"]), invalid);
  std::printf("  responses accepted by the kernel %llu, rejected %llu, left unanswered %llu\n",
              static_cast<unsigned long long>(s["responses_written"]),
              static_cast<unsigned long long>(s["responses_rejected"]),
              static_cast<unsigned long long>(s["outstanding"]));
  std::printf("  map calls %llu (%llu KiB), pages deduplicated %llu, already mapped %llu\n",
              static_cast<unsigned long long>(s["map_calls"]),
              static_cast<unsigned long long>(s["bytes_mapped"] / 1024),
              static_cast<unsigned long long>(s["pages_deduped"]),
              static_cast<unsigned long long>(s["pages_already_mapped"]));
  std::printf("  reads %llu, records per read p50 %llu p99 %llu max %llu\n",
              static_cast<unsigned long long>(s["reads"]),
              static_cast<unsigned long long>(s["batch.p50"]),
              static_cast<unsigned long long>(s["batch.p99"]),
              static_cast<unsigned long long>(s["batch.max"]));
  std::printf("  latency read->response written: p50 %.1f us, p99 %.1f us, max %.1f us\n",
              s["latency_ns.p50"] / 1e3, s["latency_ns.p99"] / 1e3, s["latency_ns.max"] / 1e3);
  std::printf("  MD_CHECK_MAP: mapped IOVAs translate to their backing pages: %s\n",
              mapped ? "yes" : "NO");
  bool ok = rc == 0 && mapped && s["outstanding"] == 0 && s["responses_rejected"] == 0 &&
            s["groups"] == static_cast<uint64_t>(n);
  std::printf("IOPF-DEMO %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string mode = argc > 1 ? argv[1] : "test";
  if (mode == "test") return RunTests(std::vector<std::string>(argv + 2, argv + argc));
  if (mode == "soak") return RunSoak(argc > 2 ? std::atoi(argv[2]) : 1800);
  if (mode == "demo") {
    return RunDemo(argc > 2 ? std::atoi(argv[2]) : 20000, argc > 3 ? argv[3] : "info");
  }
  Die("unknown mode '%s' (test [CASE...] | demo [N] | soak [SECONDS])", mode.c_str());
}
