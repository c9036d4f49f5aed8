// Turns the records of a fault fd read into map calls and one response per group.
#ifndef IOPFD_FAULT_FAULT_PROCESSOR_H_
#define IOPFD_FAULT_FAULT_PROCESSOR_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/address_space.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/fault/stats.h"

namespace iopfd {

struct FaultProcessorOptions {
  // The iommufd device id the records must carry; 0 accepts any (a queue serving one device).
  uint32_t device_id = 0;
  uint32_t max_group_records = 512;
  uint64_t max_fault_map_bytes = 2ull << 20;
};

// Resolves batches of page requests for one device. Not thread-safe; one per fault fd.
//
// For each batch: records are grouped by cookie; each record is routed to the address space of
// its PASID and the region holding its address, and checked against the region's access; the
// pages the batch needs are deduplicated, pages iopfd already mapped are skipped, adjacent pages
// are coalesced into one map call, and each region's prefetch window (and the record's length
// hint) maps ahead. Then every group gets exactly one response: SUCCESS when every one of its
// records' pages is mapped, otherwise INVALID with the first reason found, counted in stats.
class FaultProcessor {
 public:
  // All pointers must outlive the processor.
  FaultProcessor(FaultProcessorOptions options, SpaceTable* spaces, Mapper* mapper,
                 ResponseQueue* queue, DeviceStats* stats);

  // Processes whole groups (the kernel's read() never splits one) and queues their responses.
  // read_ns is when the read completed, for the latency histogram.
  void Process(std::span<const uapi::PageFault> records, uint64_t read_ns);

 private:
  struct Group {
    ResponseObligation obligation;
    uint32_t records = 0;
    uint32_t dev_id = 0;
    uint32_t pasid = 0;
    bool pasid_valid = false;
    bool failed = false;
    InvalidReason reason = InvalidReason::kCount;
  };
  // The pages one record needs: page `page` of `region` must be mapped; pages up to `end`
  // (exclusive) are mapped too if possible.
  struct Need {
    Region* region;
    AddressSpace* space;
    uint64_t page;
    uint64_t end;
    uint32_t group;
  };

  void Fail(Group& g, InvalidReason reason);
  void Resolve(const uapi::PageFault& rec, uint32_t group_index);
  void MapNeeds();
  void MapRun(AddressSpace* space, Region* region, uint64_t first, uint64_t end);
  bool MapPages(AddressSpace* space, Region* region, uint64_t first, uint64_t count);

  // Map calls that fail ENOMEM are made again this many times before the group fails.
  static constexpr int kMapRetries = 2;

  FaultProcessorOptions options_;
  SpaceTable* spaces_;
  Mapper* mapper_;
  ResponseQueue* queue_;
  DeviceStats* stats_;
  // Scratch reused across batches so a steady state allocates nothing.
  std::vector<Group> groups_;
  std::vector<uint32_t> record_group_;
  absl::flat_hash_map<uint32_t, uint32_t> group_of_cookie_;
  std::vector<Need> needs_;
  std::vector<Need> order_;
  uint64_t batch_mapped_pages_ = 0;
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_FAULT_PROCESSOR_H_
