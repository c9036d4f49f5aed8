// Turns the records of a fault fd read into map calls and one response per group.
#ifndef IOPFD_FAULT_FAULT_PROCESSOR_H_
#define IOPFD_FAULT_FAULT_PROCESSOR_H_

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "iopfd/base/batch_map.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/address_space.h"
#include "iopfd/fault/pager.h"
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
// its PASID and the region holding its address, and checked against the region's access. Then,
// group by group, the map units its pages lie in are mapped (one call per unit, address_space.h;
// a unit already mapped is not mapped again), and the units the region's prefetch window and the
// record's length hint reach are mapped ahead where they fit without evicting. Where the region
// maps first touches by the page (first_touch = "page"), a unit that only one page of the batch
// asks for, with nothing mapped ahead and no whole unit mapped beside it, gets only that page
// mapped (a partial unit); so does a later stray page of it, while a page beside one it holds,
// or a unit half held, has the rest mapped, hole by hole. A random access pattern then costs a
// page per request, not a unit, while a sequential one (whose next unit lies beside a whole one)
// maps whole units from its second unit on. Every group gets
// exactly one response: SUCCESS when every one of its records' pages is mapped, otherwise
// INVALID with the first reason found, counted in stats.
//
// With a pager (pager.h), a unit is mapped only where its space, device and the daemon have room
// within their budgets, evicting cold units first. The units a SUCCESS answer relies on are
// pinned until the answer is written. A group whose units cannot fit because pinned units hold
// the room waits (deferred, OweIfLost in the ledger) and is resolved again when answers are
// settled (RetryDeferred); one that cannot fit at all is answered INVALID (over_budget).
class FaultProcessor {
 public:
  // All pointers must outlive the processor.
  FaultProcessor(FaultProcessorOptions options, SpaceTable* spaces, Mapper* mapper,
                 ResponseQueue* queue, DeviceStats* stats);

  // Processes whole groups (the kernel's read() never splits one) and queues their responses.
  // read_ns is when the read completed, for the latency histogram.
  void Process(std::span<const uapi::PageFault> records, uint64_t read_ns);

  // Uses `pager` to keep what is mapped within budgets (its spaces must be registered with it).
  // Without one, units are mapped and never evicted.
  void set_pager(Pager* pager) { pager_ = pager; }

  // Takes unit `unit` of `region` (in `space`) as resident: mapped by iopfd before a restart
  // and still mapped (Device::TakeBackMappings), whole, or in part: only the pages `present`
  // names (pages of the region, in the unit; empty: whole). It is counted and listed by the
  // pager like a unit this process mapped. Returns false, doing nothing, when it is mapped or
  // stuck already.
  bool TakeBack(AddressSpace* space, Region* region, uint32_t unit, uint64_t now_ns,
                std::span<const uint64_t> present = {});

  // Groups waiting for room (see above).
  size_t deferred() const { return deferred_.size(); }
  // Resolves the waiting groups again; the response queue's settled answers have released pins.
  // Called after a write completed. Groups that still cannot fit wait on, unless nothing is
  // left for them to wait for (no answer outstanding): those are answered INVALID.
  void RetryDeferred(uint64_t now_ns);
  // Ends the waiting groups of `attachment` (all when nullopt) without an answer: a drain parked
  // it and the kernel answered them (counted stale-dropped), or the fault fd died (abandoned).
  void DismissDeferred(std::optional<AttachmentKey> attachment, bool fd_dead);

 private:
  struct Group {
    ResponseObligation obligation;
    uint32_t records = 0;
    uint32_t dev_id = 0;
    uint32_t pasid = 0;
    bool pasid_valid = false;
    bool failed = false;
    bool waiting = false;  // deferred for room
    InvalidReason reason = InvalidReason::kCount;
  };
  // The pages one record needs: page `page` of `region` must be mapped; pages up to `end`
  // (exclusive) are mapped too where they fit.
  struct Need {
    Region* region;
    AddressSpace* space;
    uint64_t page;
    uint64_t end;
    uint32_t group;
  };
  // A group waiting for room, with a copy of its records (the read buffer is reused).
  struct Deferred {
    Group group;
    std::vector<uapi::PageFault> records;
  };
  // What mapping one unit came to.
  enum class UnitResult { kMapped, kFailed, kWait, kNoRoom };

  void Fail(Group& g, InvalidReason reason);
  // Drops waiting groups whose cookie this batch read again (see the definition).
  void DropReusedCookies();
  void Resolve(const uapi::PageFault& rec, uint32_t group_index);
  // Resolves groups_ (records[i] belongs to record_group_[i]) and answers or defers each. In a
  // final round nothing is deferred.
  void ResolveBatch(std::span<const uapi::PageFault> records, uint64_t now_ns, bool final_round);
  void CountPages();
  void MapGroups(uint64_t now_ns, bool final_round);
  void MapGroup(size_t first, size_t end, uint64_t now_ns, bool final_round);
  // What a batch asks for of one unit (unit_wants_).
  struct UnitWants {
    uint32_t pages = 0;
    uint64_t lowest = 0, highest = 0;
  };
  // Pages [first, first + count) of a unit, mapped instead of all of it.
  struct PageSpan {
    uint64_t first = 0;
    uint64_t count = 0;  // 0: the whole unit (or, partial, its holes)
  };
  // Maps unit `unit` (for page `page` of it when `needed`, else ahead of one): whole, or only the
  // span `part` (Part: the unit is partial from then on), or, when it is partial, its holes (only
  // page `page` when `part` is not empty).
  UnitResult MapUnit(AddressSpace* space, Region* region, uint32_t unit, uint64_t page, bool needed,
                     PageSpan part, uint64_t now_ns, bool final_round);
  // Maps the holes of partial unit `unit`, for page `page` of it: all of them, or the span
  // `part` (which lies in one hole).
  UnitResult MapHoles(AddressSpace* space, Region* region, uint32_t unit, uint64_t page,
                      PageSpan part, uint64_t now_ns, bool final_round);
  // Maps page `page` of stuck unit `unit` alone (EEXIST: someone else's mapping is there).
  UnitResult MapStuckPage(AddressSpace* space, Region* region, uint64_t page);
  // Makes room for `bytes` more in the space's budgets (pager.h). Returns nullopt when the map
  // may be made, else what the unit comes to.
  std::optional<UnitResult> Room(AddressSpace* space, uint64_t bytes, bool needed, uint64_t now_ns,
                                 bool final_round);
  // What need `n` maps of its unit when its region maps first touches by the page and nothing is
  // to be mapped ahead of it (else the whole unit: count 0). An unmapped unit with neither unit
  // beside it mapped whole: the span from the lowest to the highest page of it the batch asks
  // for, when that is at most half the unit (a page alone is a span of one). A partial unit: Grow.
  PageSpan Part(const Need& n) const;
  // Part for a partial unit, of which `wants` pages are asked for and `page` is one: the holes
  // (count 0) when the unit is half held or several of its pages are asked for; the page alone
  // when neither page beside it is held (or both are); beside a held page, the hole run onwards
  // from the page, up to twice the pages held, unless that leaves the unit more than half held
  // (then the holes).
  static PageSpan Grow(const Region& r, uint32_t unit, uint64_t page, const UnitWants& wants);
  bool CallMap(const MapRequest& req);
  void MarkMapped(AddressSpace* space, Region* region, uint32_t unit, uint64_t now_ns);
  void Pin(AddressSpace* space, Region* region, uint64_t page);
  void AnswerGroups(std::span<const uapi::PageFault> records);

  // Map calls that fail ENOMEM are made again this many times before the group fails.
  static constexpr int kMapRetries = 2;

  FaultProcessorOptions options_;
  SpaceTable* spaces_;
  Mapper* mapper_;
  ResponseQueue* queue_;
  DeviceStats* stats_;
  Pager* pager_ = nullptr;
  std::vector<Deferred> deferred_;
  // Scratch reused across batches so a steady state allocates nothing.
  std::vector<Group> groups_;
  std::vector<uint32_t> record_group_;
  BatchMap<uint32_t, uint32_t> group_of_cookie_;
  std::vector<Need> needs_;
  BatchMap<std::pair<const Region*, uint64_t>, bool> seen_pages_;
  // Per unit of a first-touch-by-page region: the distinct pages the batch asks for in it that
  // are not mapped, how many and the lowest and highest (Part).
  BatchMap<std::pair<const Region*, uint64_t>, UnitWants> unit_wants_;
  std::vector<uapi::PageFault> retry_records_;
  uint64_t batch_mapped_pages_ = 0;
  uint64_t wanted_unmapped_ = 0;
  absl::Status last_map_status_;  // of the last CallMap
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_FAULT_PROCESSOR_H_
