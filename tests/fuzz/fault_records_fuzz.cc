// Fault records as a device and the kernel hand them over, through the fault processor. Every
// field a device controls is arbitrary (PASID and its valid flag, address, permissions, PRG
// index, last-page flag, length hint), and so, here, are the cookies and device ids the kernel
// would set; the mapper fails where the input says.
//
// Input: an options byte (bits 0-3: max_group_records - 1; bit 4: a device id is required;
// bit 5: the mapper fails every map of an odd page; bits 6-7: a hugepage region), then batches:
// a count byte (records in this read, 1..64; bit 6: the device wrote the pages the batch before
// asked for; bit 7: hold the answers over the next batch) followed by that many 40-byte records.
// Invariant, per batch: every distinct cookie in it gets exactly one response, SUCCESS only when
// every page its records asked for was mapped (or lay in a successful map call), and nothing
// else is answered.
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/base/errors.h"
#include "iopfd/fault/fault_processor.h"
#include "iopfd/fault/pager.h"
#include "testing/fake_mapper.h"

namespace iopfd::fuzz {
namespace {

constexpr uint64_t kPage = 4096;

// The test tier's fake mapper (lib/testing/fake_mapper.h): the kernel's rules for maps and
// unmaps; a cut unmap is counted in `splits`, checked after every batch.
using iopfd_testing::FakeMapper;

}  // namespace
}  // namespace iopfd::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  Input in(data, size);
  const uint8_t opts = in.Byte();
  FaultProcessorOptions options;
  options.max_group_records = 1 + (opts & 0xF);
  options.device_id = (opts & 0x10) != 0 ? 7 : 0;
  const uint64_t huge = (opts >> 6) != 0 ? 2 << 20 : kPage;
  // Paging (pager.h): a budget of 1..8 units on the no-PASID space or on the device.
  const uint8_t paging = in.Byte();
  const bool paged = (paging & 1) != 0;
  const uint64_t unit = kPage << std::array<int, 4>{0, 1, 2, 4}[(paging >> 5) & 3];
  const uint64_t budget = (1 + ((paging >> 2) & 7)) * unit;

  // Space without PASID: rw at 1 MiB (64 KiB) mapping first touches by the page (partial
  // units), read-only with prefetch at 2 MiB; PASID 5: rw at 1 MiB; a hugepage-sized region at
  // 64 MiB when asked.
  std::vector<Region> none;
  none.emplace_back(1 << 20, 16 * kPage, kPage, uapi::kPermRead | uapi::kPermWrite, 0, 100, 0,
                    nullptr, unit, /*first_touch_page=*/true);
  none.emplace_back(2 << 20, 16 * kPage, kPage, uapi::kPermRead, 4 * kPage, 101, 8192, nullptr,
                    unit);
  none.emplace_back(64 << 20, 4 * huge, huge, uapi::kPermRead | uapi::kPermWrite, huge, 103, 0,
                    nullptr);
  std::vector<Region> p5;
  p5.emplace_back(1 << 20, 16 * kPage, kPage, uapi::kPermRead | uapi::kPermWrite, 0, 102, 0,
                  nullptr);
  std::vector<AddressSpace> spaces;
  spaces.emplace_back(std::nullopt, IoasId(3), std::move(none));
  spaces.emplace_back(5u, IoasId(9), std::move(p5));
  SpaceTable table(std::move(spaces));
  DeviceStats stats;
  ResponseQueue queue(&stats);
  FakeMapper mapper;
  mapper.fail_odd_pages = (opts & 0x20) != 0;
  FaultProcessor proc(options, &table, &mapper, &queue, &stats);
  std::optional<Pager> pager;
  if (paged) {
    pager.emplace(PagerOptions{.policy = (paging & 2) != 0 ? EvictionPolicy::kFifo
                                                           : EvictionPolicy::kWorkingset});
    const bool on_device = (paging & 0x80) != 0;
    PagedDevice* dev = pager->AddDevice("fuzz", on_device ? std::optional(budget) : std::nullopt,
                                        &stats.paging, &queue);
    pager->AddSpace(dev, &table.spaces()[0], &mapper,
                    on_device ? std::nullopt : std::optional(budget));
    pager->AddSpace(dev, &table.spaces()[1], &mapper, std::nullopt);
    // The no-PASID space reads dirty bits (the workingset policy's second chance).
    table.spaces()[0].paging()->set_dirty_hwpt(HwptId(11));
    proc.set_pager(&*pager);
  }

  uint64_t now = 1000;
  // Groups read and not yet written: a batch byte with its top bit set holds its answers back
  // over the next batch (as the ring does when a read completes before the write), so that a
  // unit an unwritten answer relies on is exposed to the next batch's evictions.
  std::vector<std::vector<uapi::PageFault>> unwritten;  // batch by batch
  std::vector<uapi::PageFault> previous;                // the batch before, for bit 6
  while (!in.empty()) {
    const uint8_t batch = in.Byte();
    const size_t count = 1 + batch % 64;
    const bool hold = (batch & 0x80) != 0 && !in.empty();
    std::vector<uapi::PageFault> records;
    for (size_t i = 0; i < count && !in.empty(); ++i) {
      uapi::PageFault r{};
      std::string_view bytes = in.Take(sizeof(r));
      std::memcpy(&r, bytes.data(), bytes.size());
      records.push_back(r);
    }
    if (records.empty()) break;
    // Bit 6: the device wrote every page the previous batch asked for (dirty bits), so its units
    // get a second chance at the next eviction.
    if ((batch & 0x40) != 0) {
      // Only what is mapped can be written: the no-PASID space's pages (IOAS 3).
      for (const auto& r : previous) {
        const uint64_t page = r.addr & ~(kPage - 1);
        if ((r.flags & uapi::kPgfaultPasidValid) == 0 && mapper.Covers(3, page)) {
          mapper.dirty_pages.insert(page);
        }
      }
    }
    previous = records;
    proc.Process(records, now);
    now += 1000;
    unwritten.push_back(std::move(records));
    if (hold) continue;

    // A cookie read again in a later held batch is the kernel handing it out again (as it does
    // after answering the first group itself): the older group's answer is dropped as stale,
    // and the one answer written is the newer group's.
    std::map<uint32_t, std::vector<const uapi::PageFault*>> groups;
    for (const auto& batch_records : unwritten) {
      std::map<uint32_t, std::vector<const uapi::PageFault*>> in_batch;
      for (const auto& r : batch_records) in_batch[r.cookie].push_back(&r);
      for (auto& [cookie, recs] : in_batch) groups[cookie] = std::move(recs);
    }
    std::map<uint32_t, int> answers_of;
    // Write until nothing is left: groups that waited for room are answered after the writes
    // that settle the answers holding it. Each SUCCESS must find its pages mapped when written.
    for (int round = 0; queue.HasUnwritten(); ++round) {
      FUZZ_CHECK(round < 1000, "answers keep coming: a deferral loop");
      auto span = queue.BeginWrite();
      std::vector<uapi::PageResponse> answers(span.begin(), span.end());
      for (const auto& a : answers) {
        FUZZ_CHECK(groups.count(a.cookie) != 0, "an answer for a cookie that was not read");
        FUZZ_CHECK(++answers_of[a.cookie] == 1, "a cookie answered twice");
        FUZZ_CHECK(a.code == uapi::kRespSuccess || a.code == uapi::kRespInvalid);
        if (a.code == uapi::kRespSuccess) {
          for (const uapi::PageFault* r : groups[a.cookie]) {
            const uint32_t ioas = (r->flags & uapi::kPgfaultPasidValid) != 0 ? 9 : 3;
            FUZZ_CHECK(mapper.Covers(ioas, r->addr), "SUCCESS for a page that is not mapped");
          }
        }
      }
      queue.CompleteWrite(static_cast<ssize_t>(span.size_bytes()), 0);
      proc.RetryDeferred(now);
    }
    FUZZ_CHECK(proc.deferred() == 0, "a group still waits with nothing left to wait for");
    FUZZ_CHECK(mapper.splits == 0, "an unmap that cuts a mapping");
    for (const MapRequest& req : mapper.calls) {
      FUZZ_CHECK(req.length != 0 && req.iova % kPage == 0, "a map call not page aligned");
    }
    mapper.calls.clear();
    if (paged) {
      // Checked against the mapper's own count, not the pager's: the space's (IOAS 3) or the
      // whole device's budget.
      const uint64_t held = (paging & 0x80) != 0 ? mapper.MappedBytes(3) + mapper.MappedBytes(9)
                                                 : mapper.MappedBytes(3);
      FUZZ_CHECK(held <= budget, "a budget was exceeded");
      // What the pager counts resident is what is mapped (nothing here is someone else's).
      FUZZ_CHECK(pager->totals().resident_bytes == mapper.MappedBytes(3) + mapper.MappedBytes(9),
                 "the pager's resident bytes are not what is mapped");
      // The unit gauges: what the regions' units say, counted the long way (no unit is stuck
      // here: nothing but iopfd maps, and the fake kernel's unmaps never fail).
      uint64_t units = 0, partial = 0;
      for (AddressSpace& s : table.spaces()) {
        for (Region& r : s.regions()) {
          for (uint32_t u = 0; u < r.unit_count(); ++u) {
            const Unit& x = r.unit(u);
            if (!x.mapped()) continue;
            ++units;
            if (x.partial_pages != 0) ++partial;
          }
        }
      }
      FUZZ_CHECK(pager->totals().resident_units == units, "resident_units is not the mapped units");
      FUZZ_CHECK(pager->totals().partial_units == partial,
                 "partial_units is not the partial units");
    }
    FUZZ_CHECK(answers_of.size() == groups.size(), "a cookie was never answered");
    FUZZ_CHECK(stats.outstanding() == 0, "the stats count a group outstanding");
    unwritten.clear();
  }
  return 0;
}
