// Demand paging: what iopfd holds mapped, within budgets, and what it evicts.
//
// The point of serving page faults is not having to pin all of a device's memory. iopfd maps a
// unit when a page request needs it (fault_processor.h) and, where a budget (max_resident)
// bounds an address space, a device or the whole daemon, unmaps cold units to stay within it.
// Every mapped byte is pinned by iommufd (charged to the owner's locked memory), so resident
// bytes are pinned bytes.
//
// Scopes nest: a space's units count against the space, its device and the daemon. Before a
// unit is mapped, every scope on that chain with a budget must have room for it; where one does
// not, eviction runs in that scope from its high watermark (the budget) down to its low one
// (1/32 below), so that it runs once per burst rather than once per fault, and its unmaps
// are batched: adjacent units go in one IOMMU_IOAS_UNMAP (each is a whole mapping, so the range
// cuts none), since each unmap costs an IOTLB and ATC invalidation.
//
// Which units go (the policy): no IOMMU gives an accessed bit and a resident unit never faults
// again, so recency cannot be observed; what can is when a unit was mapped and how soon it came
// back after an eviction.
//  - kFifo: the unit mapped longest ago goes first. The baseline.
//  - kWorkingset: new units go on a probation list, evicted first-in first-out. A unit that
//    faults again after its eviction is measured by its refault distance, the evictions its
//    space made in between: a hot unit comes back within a few, a cold one after about as
//    many as the space holds. Two re-faults in a row within a quarter of what the space holds
//    resident mark it as part of the working set: it goes on the protected list (the idea of
//    Linux's workingset shadow entries, mm/workingset.c). The protected list holds at most 7/8
//    of what is resident; beyond that its oldest unit goes back on probation unless it still
//    holds a second chance. Eviction takes from probation first.
//    A loop over more than the budget brings every unit back at the same distance, past the
//    working-set bound: while the space's recent distances say so (many, nearly equal), a unit
//    that comes back joins the protected list where it has room without displacing anyone, so
//    that a fixed part of the loop stays resident (instead of every access faulting).
//    Where the space's HWPT has dirty bits (space.dirty_tracking), a unit the device wrote since
//    it was last looked at is not taken when it comes up for eviction, nor sent back to
//    probation from the protected list: it goes round to its list's tail (a second chance,
//    counted), its bits cleared by the reading, once per eviction run.
// Thrashing: a unit that faults again within thrash_window of its eviction, thrash_events times
// in a row, is protected from eviction for thrash_protect (the reference point is NVIDIA UVM's
// published defaults: 3 events within 500 us, pinned for 150 ms); counted.
//
// Invariants (each tested in pager_test.cc and fault_processor_test.cc):
//  - a unit a group's SUCCESS answer relies on is pinned until the device's answers of that
//    batch are settled (written, rejected, dropped or abandoned): never evicted before;
//  - what cannot fit because pinned units hold the room is deferred (the group waits for the
//    answers to be written and is resolved again then), what cannot fit at all (a scope's budget
//    is smaller than the units one group needs, or thrash-protected units hold it) is answered
//    INVALID (reason over_budget); both are counted, neither loops;
//  - resident bytes never exceed a budget after a map: room is made before the call.
//
// Not thread-safe: the fault loop's thread only.
#ifndef IOPFD_FAULT_PAGER_H_
#define IOPFD_FAULT_PAGER_H_

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/config/config.h"
#include "iopfd/fault/address_space.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/fault/stats.h"

namespace iopfd {

struct PagerOptions {
  EvictionPolicy policy = EvictionPolicy::kWorkingset;
  std::optional<uint64_t> max_resident = std::nullopt;  // the daemon's budget; nullopt: unbounded
  uint64_t thrash_window_ns = 500'000;
  uint32_t thrash_events = 3;
  uint64_t thrash_protect_ns = 150'000'000;
};

// One budget scope: a space, a device, or the daemon.
struct ResidencyScope {
  std::string name;                // "dev", "dev pasid 5", "dev no-PASID space", "daemon"
  std::string device;              // the device's name ("" for the daemon's scope)
  std::optional<uint64_t> budget;  // max_resident; nullopt: unbounded
  PagingCounters* counters = nullptr;
  ResidencyScope* parent = nullptr;
  bool at_budget_reported = false;  // for the first-time-at-budget event
};

// What the pager holds for one device: its scope, and the answers its pins wait for.
class PagedDevice {
 public:
  PagedDevice(std::string name, std::optional<uint64_t> budget, PagingCounters* counters,
              const ResponseQueue* answers, ResidencyScope* daemon)
      : name_(std::move(name)), answers_(answers) {
    scope_.name = name_;
    scope_.device = name_;
    scope_.budget = budget;
    scope_.counters = counters;
    scope_.parent = daemon;
    counters->budget_bytes = budget.value_or(0);
  }
  const std::string& name() const { return name_; }
  ResidencyScope& scope() { return scope_; }

  // The batch being resolved (ResponseQueue::BeginBatch): a unit its answers rely on is pinned
  // with its number until the device's answers up to that batch are settled.
  uint64_t batch() const { return answers_->batch(); }
  bool Pinned(const Unit& u) const { return u.pin_batch > answers_->settled_batch(); }

 private:
  std::string name_;
  const ResponseQueue* answers_;
  ResidencyScope scope_;
};

// What the pager holds for one address space: its scope, its lists, its mapper.
class PagedSpace {
 public:
  PagedSpace(AddressSpace* space, PagedDevice* device, Mapper* mapper,
             std::optional<uint64_t> budget);
  AddressSpace& space() { return *space_; }
  const AddressSpace& space() const { return *space_; }
  PagedDevice& device() { return *device_; }
  const PagedDevice& device() const { return *device_; }
  const PagingCounters& counters() const { return counters_; }
  Mapper& mapper() { return *mapper_; }
  ResidencyScope& scope() { return scope_; }
  PagingCounters& counters() { return counters_; }
  // Units on probation and protected, oldest first.
  struct List {
    UnitRef head, tail;
    uint64_t units = 0;
  };
  List& probation() { return probation_; }
  List& protected_list() { return protected_; }
  uint64_t evictions() const { return evictions_; }
  // Refault distances seen lately (loop detection, pager.cc): exponentially weighted average
  // and mean deviation, both in sixteenths of an eviction, and how many were seen.
  struct Distances {
    uint64_t mean16 = 0;
    uint64_t spread16 = 0;
    uint64_t samples = 0;
  };
  Distances& distances() { return distances_; }
  void CountEviction() { ++evictions_; }
  uint64_t resident_units() const { return probation_.units + protected_.units + stuck_units_; }
  void CountStuck() { ++stuck_units_; }
  // The HWPT whose dirty bits tell which units the device wrote (nullopt: none are read).
  const std::optional<HwptId>& dirty_hwpt() const { return dirty_hwpt_; }
  void set_dirty_hwpt(std::optional<HwptId> hwpt) { dirty_hwpt_ = hwpt; }

 private:
  AddressSpace* space_;
  PagedDevice* device_;
  Mapper* mapper_;
  PagingCounters counters_;
  ResidencyScope scope_;
  List probation_, protected_;
  uint64_t evictions_ = 0;
  Distances distances_;
  uint64_t stuck_units_ = 0;
  std::optional<HwptId> dirty_hwpt_;
};

// Returns iopfd's RLIMIT_MEMLOCK (soft) in bytes, or nullopt when it is unlimited. iommufd
// charges the pages a process maps to that process's locked memory (its default accounting
// mode), so a budget, or unbounded regions, above it fail maps with ENOMEM before they evict.
std::optional<uint64_t> MemlockLimit();

// Returns the most iopfd could hold mapped for `devices` under their budgets and `daemon`'s:
// per space the smaller of its budget and its regions' size, per device the smaller of its
// budget and its spaces' sum, then the smaller of the daemon's budget and the devices' sum.
uint64_t MostResident(const std::optional<uint64_t>& daemon,
                      const std::vector<DeviceConfig>& devices);

class Pager {
 public:
  explicit Pager(PagerOptions options);
  ~Pager();
  Pager(const Pager&) = delete;
  Pager& operator=(const Pager&) = delete;

  const PagerOptions& options() const { return options_; }
  // The daemon's scope and counters (all devices).
  ResidencyScope& daemon_scope() { return daemon_; }
  const PagingCounters& totals() const { return totals_; }
  // Every registered space, in registration order (GetStats lists them).
  std::vector<const PagedSpace*> spaces() const {
    std::vector<const PagedSpace*> out;
    for (const auto& s : spaces_) out.push_back(s.get());
    return out;
  }

  // Registers a device (its counters live in its DeviceStats; `answers` is its response queue,
  // whose settled batches release pins) and returns its handle, valid until RemoveDevice.
  PagedDevice* AddDevice(const std::string& name, std::optional<uint64_t> budget,
                         PagingCounters* counters, const ResponseQueue* answers);
  // Registers one of the device's spaces, mapped through `mapper`; sets space->paging(). What
  // the space already holds mapped is not known (a new space holds nothing).
  PagedSpace* AddSpace(PagedDevice* device, AddressSpace* space, Mapper* mapper,
                       std::optional<uint64_t> budget);
  // Forgets a device and its spaces: their resident bytes leave the daemon's count. Nothing is
  // unmapped (the device's IOAS goes with it, or goes back to its owner with its mappings).
  void RemoveDevice(PagedDevice* device);

  // What MakeRoom found.
  enum class Room {
    kOk,      // the unit fits in every scope (after evicting what had to go)
    kPinned,  // it would fit once answers not yet written are settled: wait
    kNoRoom,  // it cannot fit: the budget is smaller, or protected units hold it
  };
  // Makes room for `bytes` more in `space` and every scope above it, evicting (unless
  // `may_evict` is false: prefetch only takes free room) what the policy picks, in batched
  // unmaps. Returns kOk when the map may be made.
  Room MakeRoom(PagedSpace& space, uint64_t bytes, uint64_t now_ns, bool may_evict = true);
  // A unit of `space` was mapped (by a map call that succeeded, or found mapped by one made
  // before a restart), whole or in part (its partial_pages and present pages set first): counts
  // what it holds resident, detects a re-fault, and puts it on its list.
  void Mapped(PagedSpace& space, UnitRef ref, uint64_t now_ns);
  // A partial unit got `pages` more pages mapped (marked present by the caller): counts them
  // resident (Region::NotePagesMapped: once all are, the unit is whole).
  void Grew(PagedSpace& space, UnitRef ref, uint64_t pages);
  // A mapped unit turned out not to be iopfd's alone (a map of one of its holes said EEXIST):
  // it leaves its list, stays counted, and is never evicted (its pages mapped one by one from
  // now on, like a unit stuck when first mapped).
  void Stuck(PagedSpace& space, UnitRef ref);
  // Pins a mapped unit to the device's current batch (its answers rely on it).
  static void Pin(PagedSpace& space, UnitRef ref) {
    space.space().unit(ref).pin_batch = space.device().batch();
  }

  // Sets a scope's budget (nullopt: unbounded) and, when it now holds more, evicts down to the
  // new budget's low watermark at once (units pinned by unwritten answers stay; the next map
  // finishes the job).
  void SetBudget(ResidencyScope& scope, std::optional<uint64_t> budget, uint64_t now_ns);

  // What an explicit eviction did.
  struct EvictReport {
    uint64_t units = 0;   // units unmapped
    uint64_t bytes = 0;   // what they held (a unit the range cuts goes whole)
    uint64_t pinned = 0;  // units left mapped: an answer not yet written relies on them
    uint64_t stuck = 0;   // units left mapped: not iopfd's to unmap, or their unmap failed
  };
  // Unmaps what iopfd holds mapped in units [first, last] of region `region` of `space`
  // (explicit eviction: a VMM ballooning or unplugging memory), in batched unmaps.
  EvictReport EvictUnits(PagedSpace& space, uint32_t region, uint32_t first, uint32_t last,
                         uint64_t now_ns);

  // Returns the bytes resident in `scope`.
  static uint64_t Resident(const ResidencyScope& scope) { return scope.counters->resident_bytes; }

  // Called the first time a scope reaches its budget, and the first time a unit in a space
  // is thrash-protected (the device's name, which scope, a description): Monitor events.
  std::function<void(const std::string& device, const std::string& what)> on_event;

 private:
  // Sends the protected list's oldest units back on probation until it holds at most 7/8 of
  // what `space` holds resident (second chances and dirty bits permitting).
  void BoundProtected(PagedSpace& space, uint64_t now_ns);
  // A unit back within the thrash window of its eviction, again and again: protected for a
  // while (counted, with an event).
  void NoteQuickRefault(PagedSpace& space, UnitRef ref, Unit& u, uint64_t now_ns);
  // Evicts in `scope` until `bytes` more fit under its low watermark (or nothing more can go).
  void EvictIn(ResidencyScope& scope, uint64_t bytes, uint64_t now_ns);
  // Where one eviction run has got to in a space's two lists (probation, protected): every unit
  // before `next` is gone or not evictable. Evictability cannot change during a run (pins are
  // released only when answers are settled, protection only by time, and the run's time is
  // fixed), so each victim search resumes where the last stopped instead of walking again past
  // the same pinned or protected units from the head (a run that skips P units to take V
  // victims costs P + V steps, not V * P).
  struct Cursor {
    PagedSpace* space = nullptr;
    UnitRef next[2];
  };
  // Picks the next victim among `cursors` (the spaces under the scope): sets *which to its
  // cursor's index and *list to 0 (probation) or 1 (protected). Returns false when none is
  // evictable.
  bool PickVictim(uint64_t now_ns, size_t* which, int* list, UnitRef* ref);
  // Whether the device wrote unit `ref` since its dirty bits were last read (false where the
  // space reads none; a failed read stops the space's reading, with a warning). A partial
  // unit's bits are read run by run of present pages: the kernel's walk stops at a hole.
  bool TakeDirty(PagedSpace& space, UnitRef ref);
  // Unmaps the victims (batched by adjacency) and accounts for them.
  void Unmap(PagedSpace& space, std::vector<UnitRef>& victims, uint64_t now_ns);
  // One dirty-bit read over [iova, iova + length) of `space`: whether any page was written; an
  // error stops the space's reading.
  bool TakeDirtyRange(PagedSpace& space, uint64_t iova, uint64_t length, uint64_t page_size);
  // One unmap call over `count` adjacent units from `first`, timed and counted.
  absl::Status UnmapRun(PagedSpace& space, UnitRef first, uint32_t count);
  // Accounts for a unit unmapped, and remembers when (re-fault detection).
  void Evicted(PagedSpace& space, UnitRef ref, uint64_t now_ns);
  // A unit whose unmap failed: it stays mapped and counted, and is never evicted again.
  void MarkStuck(PagedSpace& space, UnitRef ref, const absl::Status& why);
  // A unit whose own unmap said ENOENT after its run's unmap failed: maps it again. Returns
  // true when that succeeded (it had gone with the run's first areas: it is resident again, on
  // probation, counted as an unmap failure); false when something is there (EEXIST: not
  // iopfd's alone) or the map failed.
  bool MappedAgain(PagedSpace& space, UnitRef ref, uint64_t now_ns);
  // Adds to the resident bytes, units and partial units of the space's scope and of every scope
  // above it (its device's, the daemon's).
  void Account(PagedSpace& space, int64_t bytes, int64_t units, int64_t partial);
  bool InScope(PagedSpace& space, const ResidencyScope& scope) const;
  bool Evictable(PagedSpace& space, const Unit& u, uint64_t now_ns) const;
  void Link(PagedSpace& space, PagedSpace::List& list, UnitRef ref);
  void Unlink(PagedSpace& space, PagedSpace::List& list, UnitRef ref);
  PagedSpace::List& ListOf(PagedSpace& space, const Unit& u);

  PagerOptions options_;
  // Eviction runs so far (one per MakeRoom or SetBudget, whatever scopes it evicts in): a unit
  // gets one dirty second chance per run.
  uint32_t evict_run_ = 0;
  PagingCounters totals_;
  ResidencyScope daemon_;
  // EvictIn's scratch, reused so that eviction allocates nothing in the steady state: the
  // spaces' cursors and, per space, the victims taken (victims_[i] belongs to cursors_[i]).
  std::vector<Cursor> cursors_;
  std::vector<std::vector<UnitRef>> victims_;
  std::list<std::unique_ptr<PagedDevice>> devices_;
  std::list<std::unique_ptr<PagedSpace>> spaces_;
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_PAGER_H_
