// Fault records as a device and the kernel hand them over, through the fault processor. Every
// field a device controls is arbitrary (PASID and its valid flag, address, permissions, PRG
// index, last-page flag, length hint), and so, here, are the cookies and device ids the kernel
// would set; the mapper fails where the input says.
//
// Input: an options byte (bits 0-3: max_group_records - 1; bit 4: a device id is required;
// bit 5: the mapper fails every map of an odd page; bits 6-7: a hugepage region), then batches:
// a count byte (records in this read, 1..64) followed by that many 40-byte records.
// Invariant, per batch: every distinct cookie in it gets exactly one response, SUCCESS only when
// every page its records asked for was mapped (or lay in a successful map call), and nothing
// else is answered.
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/base/errors.h"
#include "iopfd/fault/fault_processor.h"

namespace iopfd::fuzz {
namespace {

constexpr uint64_t kPage = 4096;

// Records map calls; fails those touching an odd page when told to.
class FakeMapper : public Mapper {
 public:
  absl::Status Map(const MapRequest& req) override {
    if (req.length == 0 || req.iova % kPage != 0) Fail("a map call not page aligned");
    if (fail_odd) {
      for (uint64_t iova = req.iova; iova < req.iova + req.length; iova += kPage) {
        if ((iova / kPage) % 2 == 1) return ErrnoStatus(ENOMEM, "fake", "IOMMU_IOAS_MAP");
      }
    }
    mapped.emplace_back(req.iova, req.length);
    return absl::OkStatus();
  }
  // The kernel's rule (io_pagetable.c): only whole mappings, ENOENT for a cut or for nothing.
  absl::Status Unmap(IoasId /*ioas*/, uint64_t iova, uint64_t length) override {
    size_t found = 0;
    for (const auto& [at, len] : mapped) {
      if (at >= iova + length || at + len <= iova) continue;
      if (at < iova || at + len > iova + length) Fail("an unmap that cuts a mapping");
      ++found;
    }
    if (found == 0) return ErrnoStatus(ENOENT, "fake", "IOMMU_IOAS_UNMAP");
    std::erase_if(mapped,
                  [&](const auto& m) { return m.first >= iova && m.first < iova + length; });
    return absl::OkStatus();
  }
  bool Covers(uint64_t addr) const {
    for (const auto& [iova, len] : mapped) {
      if (addr >= iova && addr - iova < len) return true;
    }
    return false;
  }
  std::vector<std::pair<uint64_t, uint64_t>> mapped;
  bool fail_odd = false;
};

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

  // Space without PASID: rw at 1 MiB (64 KiB), read-only with prefetch at 2 MiB; PASID 5: rw at
  // 1 MiB; a hugepage-sized region at 64 MiB when asked.
  std::vector<Region> none;
  none.emplace_back(1 << 20, 16 * kPage, kPage, uapi::kPermRead | uapi::kPermWrite, 0, 100, 0,
                    nullptr);
  none.emplace_back(2 << 20, 16 * kPage, kPage, uapi::kPermRead, 4 * kPage, 101, 8192, nullptr);
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
  mapper.fail_odd = (opts & 0x20) != 0;
  FaultProcessor proc(options, &table, &mapper, &queue, &stats);

  uint64_t now = 1000;
  while (!in.empty()) {
    const size_t count = 1 + in.Byte() % 64;
    std::vector<uapi::PageFault> records;
    for (size_t i = 0; i < count && !in.empty(); ++i) {
      uapi::PageFault r{};
      std::string_view bytes = in.Take(sizeof(r));
      std::memcpy(&r, bytes.data(), bytes.size());
      records.push_back(r);
    }
    if (records.empty()) break;
    proc.Process(records, now);
    now += 1000;

    auto span = queue.BeginWrite();
    std::vector<uapi::PageResponse> answers(span.begin(), span.end());
    queue.CompleteWrite(static_cast<ssize_t>(span.size_bytes()), 0);

    std::map<uint32_t, std::vector<const uapi::PageFault*>> groups;
    for (const auto& r : records) groups[r.cookie].push_back(&r);
    std::set<uint32_t> answered;
    for (const auto& a : answers) {
      FUZZ_CHECK(groups.count(a.cookie) != 0, "an answer for a cookie that was not read");
      FUZZ_CHECK(answered.insert(a.cookie).second, "a cookie answered twice");
      FUZZ_CHECK(a.code == uapi::kRespSuccess || a.code == uapi::kRespInvalid);
      if (a.code == uapi::kRespSuccess) {
        for (const uapi::PageFault* r : groups[a.cookie]) {
          FUZZ_CHECK(mapper.Covers(r->addr), "SUCCESS for a page that was never mapped");
        }
      }
    }
    FUZZ_CHECK(answered.size() == groups.size(), "a cookie was never answered");
    FUZZ_CHECK(stats.outstanding() == 0, "the stats count a group outstanding");
  }
  return 0;
}
