// Test helper: a Mapper that records every call and keeps the kernel's rules for what is mapped
// (EEXIST for a map over a mapping, ENOENT for an unmap that cuts one or finds none), with
// failures injected on demand.
#ifndef IOPFD_LIB_TESTING_FAKE_MAPPER_H_
#define IOPFD_LIB_TESTING_FAKE_MAPPER_H_

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "iopfd/base/errors.h"
#include "iopfd/fault/address_space.h"

namespace iopfd_testing {

using iopfd::ErrnoStatus;
using iopfd::IoasId;
using iopfd::MapRequest;

// Records every call; fails map calls that touch an address in fail_iovas with fail_errno
// (fail_times of them; -1: all), and, with fail_odd_pages, every map touching an odd page with
// ENOMEM (the fuzz target's way to fail some maps).
class FakeMapper : public iopfd::Mapper {
 public:
  struct Mapping {
    uint32_t ioas;
    uint64_t iova;
    uint64_t length;
  };
  absl::Status Map(const MapRequest& req) override {
    calls.push_back(req);
    if (fail_odd_pages) {
      for (uint64_t iova = req.iova; iova < req.iova + req.length; iova += 4096) {
        if ((iova / 4096) % 2 == 1) return ErrnoStatus(ENOMEM, "fake", "IOMMU_IOAS_MAP");
      }
    }
    for (uint64_t iova : fail_iovas) {
      if (iova >= req.iova && iova < req.iova + req.length && fail_times != 0) {
        if (fail_times > 0) --fail_times;
        return ErrnoStatus(fail_errno, "fake", "IOMMU_IOAS_MAP");
      }
    }
    for (const Mapping& m : mapped) {
      if (m.ioas == req.ioas.value() && m.iova < req.iova + req.length &&
          req.iova < m.iova + m.length) {
        return ErrnoStatus(EEXIST, "fake", "IOMMU_IOAS_MAP");
      }
    }
    mapped.push_back({req.ioas.value(), req.iova, req.length});
    return absl::OkStatus();
  }
  // The kernel's rule (io_pagetable.c): only whole mappings; ENOENT for a cut, or for nothing.
  // `held` is checked as Iommufd::Unmap checks it (0: not checked): an unmap of other than what
  // the caller holds fails EIO, after the kernel unmapped it.
  absl::Status Unmap(IoasId ioas, uint64_t iova, uint64_t length, uint64_t held) override {
    unmaps.push_back({ioas.value(), iova, length});
    size_t found = 0;
    uint64_t bytes = 0;
    for (const Mapping& m : mapped) {
      if (m.ioas != ioas.value() || m.iova >= iova + length || m.iova + m.length <= iova) continue;
      if (m.iova < iova || m.iova + m.length > iova + length) {
        ++splits;
        return ErrnoStatus(ENOENT, "fake", "IOMMU_IOAS_UNMAP");
      }
      ++found;
      bytes += m.length;
    }
    if (found == 0 || fail_unmaps) return ErrnoStatus(ENOENT, "fake", "IOMMU_IOAS_UNMAP");

    if (stop_after_first_area && found > 1) {
      // The kernel unmaps a range's areas in order and stops at one it cannot take
      // (io_pagetable.c iopt_unmap_iova_range): the first goes, the call fails.
      stop_after_first_area = false;
      auto first =
          std::min_element(mapped.begin(), mapped.end(), [&](const auto& a, const auto& b) {
            const bool ina = a.ioas == ioas.value() && a.iova >= iova && a.iova < iova + length;
            const bool inb = b.ioas == ioas.value() && b.iova >= iova && b.iova < iova + length;
            return ina != inb ? ina : a.iova < b.iova;
          });
      mapped.erase(first);
      return ErrnoStatus(ENOENT, "fake", "IOMMU_IOAS_UNMAP");
    }
    std::erase_if(mapped, [&](const Mapping& m) {
      return m.ioas == ioas.value() && m.iova >= iova && m.iova < iova + length;
    });
    // A page mapped again starts clean.
    std::erase_if(dirty_pages, [&](uint64_t p) { return p >= iova && p < iova + length; });
    if (held != 0 && bytes != held) {
      ++held_mismatches;
      return ErrnoStatus(EIO, "fake", "IOMMU_IOAS_UNMAP");
    }
    return absl::OkStatus();
  }
  // The kernel's rules for dirty bits (io_pagetable.c, Linux 7.3): bits are read and cleared
  // from `iova` up to the first page no mapping covers, where the walk stops without an error.
  // Pages the "device" wrote are in dirty_pages; the mappings of every IOAS are searched (a
  // test uses one HWPT per IOAS).
  absl::StatusOr<bool> TakeDirty(iopfd::HwptId /*hwpt*/, uint64_t iova, uint64_t length,
                                 uint64_t page_size) override {
    ++dirty_reads;
    if (fail_dirty_reads != 0) return ErrnoStatus(fail_dirty_reads, "fake", "GET_DIRTY_BITMAP");
    bool dirty = false;
    for (uint64_t at = iova; at < iova + length; at += page_size) {
      bool covered = false;
      for (const Mapping& m : mapped) covered = covered || (at >= m.iova && at - m.iova < m.length);
      if (!covered) break;
      dirty = std::erase_if(dirty_pages,
                            [&](uint64_t p) { return p >= at && p < at + page_size; }) != 0 ||
              dirty;
    }
    return dirty;
  }
  // Bytes mapped now in `ioas`.
  uint64_t MappedBytes(uint32_t ioas) const {
    uint64_t total = 0;
    for (const Mapping& m : mapped) total += m.ioas == ioas ? m.length : 0;
    return total;
  }
  // Returns true when addr is mapped in `ioas`.
  bool Covers(uint32_t ioas, uint64_t addr) const {
    for (const Mapping& m : mapped) {
      if (m.ioas == ioas && addr >= m.iova && addr - m.iova < m.length) return true;
    }
    return false;
  }
  std::vector<Mapping> mapped;
  std::vector<Mapping> unmaps;
  int splits = 0;            // unmaps refused for cutting a mapping (a bug in the caller)
  int held_mismatches = 0;   // unmaps of other than what the caller said it held
  bool fail_unmaps = false;  // every unmap fails ENOENT
  // The next unmap over several mappings removes the first and fails ENOENT (a kernel that
  // stopped partway), once.
  bool stop_after_first_area = false;
  bool fail_odd_pages = false;
  std::vector<MapRequest> calls;
  std::vector<uint64_t> fail_iovas;
  int fail_errno = ENOMEM;
  int fail_times = -1;             // how many calls fail (-1: all)
  std::set<uint64_t> dirty_pages;  // page IOVAs written since their bits were last read
  int dirty_reads = 0;
  int fail_dirty_reads = 0;  // an errno every dirty-bit read fails with (0: none)
};

}  // namespace iopfd_testing

#endif  // IOPFD_LIB_TESTING_FAKE_MAPPER_H_
