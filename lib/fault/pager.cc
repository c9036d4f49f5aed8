#include "iopfd/fault/pager.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

// A re-fault within this many evictions marks a unit as part of the working set: a quarter of
// what the space holds resident. A unit accessed often comes back within a few evictions, a
// cold one after about as many as the space holds. mm/workingset.c compares with the active
// list's size instead, but there a resident page's accesses are seen (the accessed bit) and
// demote it; here a protected unit is never seen again, so a bound that grows with the
// protected list admitted ever more cold units (bench/density.cc: 157.6 faults per 1000 on
// hot/cold at 0.5 W with it, 133.7 with this bound and the list and watermark below).
uint64_t WorkingSetDistance(PagedSpace& space) { return space.resident_units() / 4; }

// The protected list holds at most this share of what is resident: 7/8. The rest is probation,
// where new units prove themselves; a protected list capped at half could not hold a hot set
// larger than half the budget (hot/cold at 0.25 W: 319.8 faults per 1000 at half, 210.1 at 7/8).
constexpr uint64_t kProtectedNum = 7;
constexpr uint64_t kProtectedDen = 8;

// Folds a refault distance into the space's recent ones (weights of 1/16: about the last few
// dozen re-faults count).
void NoteDistance(PagedSpace& space, uint64_t distance) {
  PagedSpace::Distances& d = space.distances();
  const uint64_t x16 = distance * 16;
  const uint64_t dev16 = x16 > d.mean16 ? x16 - d.mean16 : d.mean16 - x16;
  if (d.samples == 0) {
    d.mean16 = x16;
  } else {
    d.mean16 = d.mean16 - d.mean16 / 16 + x16 / 16;
    d.spread16 = d.spread16 - d.spread16 / 16 + dev16 / 16;
  }
  ++d.samples;
}

// Whether the space is looping over more than it holds: its recent refault distances are many,
// nearly equal (mean deviation under an eighth of the mean) and past the working-set bound.
// Independent accesses (uniform, hot/cold) spread their distances about as wide as their mean,
// so this holds only for a loop.
bool Looping(PagedSpace& space, uint64_t working_set_distance) {
  const PagedSpace::Distances& d = space.distances();
  return d.samples >= 32 && d.spread16 * 8 < d.mean16 && d.mean16 > working_set_distance * 16;
}

// Second chances a unit can hold on the protected list (working-set re-faults, pager.h).
constexpr uint8_t kMaxHeat = 3;
// Working-set re-faults in a row that put a unit on the protected list.
constexpr uint8_t kActivateHeat = 2;

// Calls fn(counters) for the space's scope and every scope above it.
template <typename Fn>
void ForChain(ResidencyScope& scope, Fn fn) {
  for (ResidencyScope* s = &scope; s != nullptr; s = s->parent) fn(*s->counters);
}

std::string SpaceName(const std::string& device, const AddressSpace& space) {
  return space.pasid().has_value() ? absl::StrCat(device, " pasid ", *space.pasid())
                                   : absl::StrCat(device, " no-PASID space");
}

}  // namespace

std::optional<uint64_t> MemlockLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return std::nullopt;
  }
  return static_cast<uint64_t>(limit.rlim_cur);
}

uint64_t MostResident(const std::optional<uint64_t>& daemon,
                      const std::vector<DeviceConfig>& devices) {
  uint64_t total = 0;
  for (const DeviceConfig& d : devices) {
    uint64_t device = 0;
    for (const SpaceConfig& s : d.spaces) {
      uint64_t space = 0;
      for (const RegionConfig& r : s.regions) space += r.size;
      device += s.max_resident ? std::min(*s.max_resident, space) : space;
    }
    total += d.limits.max_resident ? std::min(*d.limits.max_resident, device) : device;
  }
  return daemon ? std::min(*daemon, total) : total;
}

PagedSpace::PagedSpace(AddressSpace* space, PagedDevice* device, Mapper* mapper,
                       std::optional<uint64_t> budget)
    : space_(space), device_(device), mapper_(mapper) {
  scope_.name = SpaceName(device->name(), *space);
  scope_.device = device->name();
  scope_.budget = budget;
  scope_.counters = &counters_;
  scope_.parent = &device->scope();
  counters_.budget_bytes = budget.value_or(0);
}

Pager::Pager(PagerOptions options) : options_(options) {
  daemon_.name = "daemon";
  daemon_.budget = options_.max_resident;
  daemon_.counters = &totals_;
  totals_.budget_bytes = options_.max_resident.value_or(0);
}

Pager::~Pager() {
  for (auto& s : spaces_) s->space().set_paging(nullptr);
}

PagedDevice* Pager::AddDevice(const std::string& name, std::optional<uint64_t> budget,
                              PagingCounters* counters, const ResponseQueue* answers) {
  devices_.push_back(std::make_unique<PagedDevice>(name, budget, counters, answers, &daemon_));
  return devices_.back().get();
}

PagedSpace* Pager::AddSpace(PagedDevice* device, AddressSpace* space, Mapper* mapper,
                            std::optional<uint64_t> budget) {
  spaces_.push_back(std::make_unique<PagedSpace>(space, device, mapper, budget));
  space->set_paging(spaces_.back().get());
  return spaces_.back().get();
}

void Pager::RemoveDevice(PagedDevice* device) {
  for (auto it = spaces_.begin(); it != spaces_.end();) {
    if (&(*it)->device() != device) {
      ++it;
      continue;
    }
    totals_.resident_bytes -= (*it)->counters().resident_bytes;
    totals_.resident_units -= (*it)->counters().resident_units;
    totals_.partial_units -= (*it)->counters().partial_units;
    (*it)->space().set_paging(nullptr);
    it = spaces_.erase(it);
  }
  devices_.remove_if([device](const std::unique_ptr<PagedDevice>& d) { return d.get() == device; });
}

void Pager::Account(PagedSpace& space, int64_t bytes, int64_t units, int64_t partial) {
  auto add = [](uint64_t& v, int64_t d) { v = static_cast<uint64_t>(static_cast<int64_t>(v) + d); };
  ForChain(space.scope(), [&](PagingCounters& c) {
    add(c.resident_bytes, bytes);
    add(c.resident_units, units);
    add(c.partial_units, partial);
  });
}

bool Pager::InScope(PagedSpace& space, const ResidencyScope& scope) const {
  for (const ResidencyScope* s = &space.scope(); s != nullptr; s = s->parent) {
    if (s == &scope) return true;
  }
  return false;
}

bool Pager::Evictable(PagedSpace& space, const Unit& u, uint64_t now_ns) const {
  return (u.state == Unit::State::kInactive || u.state == Unit::State::kActive) &&
         !space.device().Pinned(u) && u.protected_until <= now_ns;
}

PagedSpace::List& Pager::ListOf(PagedSpace& space, const Unit& u) {
  return u.state == Unit::State::kActive ? space.protected_list() : space.probation();
}

void Pager::Link(PagedSpace& space, PagedSpace::List& list, UnitRef ref) {
  Unit& u = space.space().unit(ref);
  u.prev = list.tail;
  u.next = UnitRef{};
  if (list.tail.valid()) {
    space.space().unit(list.tail).next = ref;
  } else {
    list.head = ref;
  }
  list.tail = ref;
  ++list.units;
}

void Pager::Unlink(PagedSpace& space, PagedSpace::List& list, UnitRef ref) {
  Unit& u = space.space().unit(ref);
  if (u.prev.valid()) {
    space.space().unit(u.prev).next = u.next;
  } else {
    list.head = u.next;
  }
  if (u.next.valid()) {
    space.space().unit(u.next).prev = u.prev;
  } else {
    list.tail = u.prev;
  }
  u.prev = u.next = UnitRef{};
  --list.units;
}

void Pager::Mapped(PagedSpace& space, UnitRef ref, uint64_t now_ns) {
  Unit& u = space.space().unit(ref);
  if (u.mapped()) return;
  Region& region = space.space().regions()[ref.region];
  bool working_set = false;
  if (u.evicted_ns != 0) {
    ForChain(space.scope(), [](PagingCounters& c) { ++c.refaults; });
    NoteQuickRefault(space, ref, u, now_ns);
    // Its refault distance: the evictions since its own. Within what the space holds, a budget
    // that size would have kept it: it is part of the working set.
    const uint64_t distance = space.evictions() - u.evicted_seq;
    const uint64_t bound = WorkingSetDistance(space);
    NoteDistance(space, distance);
    if (distance <= bound) {
      if (u.heat < kMaxHeat) ++u.heat;
    } else {
      u.heat = 0;
    }
    working_set = u.heat >= kActivateHeat;
    // A loop: keep a fixed part of it, taking room the protected list has, displacing no one.
    if (!working_set && Looping(space, bound) &&
        (space.protected_list().units + 1) * kProtectedDen <=
            (space.resident_units() + 1) * kProtectedNum) {
      working_set = true;
    }
  }
  u.mapped_ns = now_ns;
  region.NoteUnitMapped(ref.unit);
  Account(space, static_cast<int64_t>(region.ResidentBytes(ref.unit)), 1,
          u.partial_pages != 0 ? 1 : 0);
  if (options_.policy == EvictionPolicy::kWorkingset && working_set) {
    u.state = Unit::State::kActive;
    Link(space, space.protected_list(), ref);
    BoundProtected(space, now_ns);
  } else {
    u.state = Unit::State::kInactive;
    Link(space, space.probation(), ref);
  }
}

void Pager::Grew(PagedSpace& space, UnitRef ref, uint64_t pages) {
  Region& region = space.space().regions()[ref.region];
  const bool was_partial = space.space().unit(ref).partial_pages != 0;
  region.NotePagesMapped(ref.unit, pages);
  // Filled: whole now.
  const bool whole = was_partial && space.space().unit(ref).partial_pages == 0;
  Account(space, static_cast<int64_t>(pages * region.page_size()), 0, whole ? -1 : 0);
}

void Pager::Stuck(PagedSpace& space, UnitRef ref) {
  Unit& u = space.space().unit(ref);
  Unlink(space, ListOf(space, u), ref);
  u.state = Unit::State::kStuck;
  // Unrecorded, as a unit whose unmap failed (MarkStuck): it may not be iopfd's alone.
  space.space().regions()[ref.region].RecordHeld(ref.unit, false);
  space.CountStuck();
}

void Pager::NoteQuickRefault(PagedSpace& space, UnitRef ref, Unit& u, uint64_t now_ns) {
  if (now_ns - u.evicted_ns > options_.thrash_window_ns) {
    u.quick_refaults = 0;
    return;
  }
  if (++u.quick_refaults < options_.thrash_events) return;
  u.quick_refaults = 0;
  u.protected_until = now_ns + options_.thrash_protect_ns;
  ForChain(space.scope(), [](PagingCounters& c) { ++c.thrash_protections; });
  if (on_event) {
    const Region& region = space.space().regions()[ref.region];
    on_event(space.device().name(),
             absl::StrCat(space.scope().name, ": thrashing; a unit at 0x",
                          absl::Hex(region.UnitIova(ref.unit)), " protected for ",
                          options_.thrash_protect_ns / 1000000, " ms"));
  }
}

void Pager::BoundProtected(PagedSpace& space, uint64_t now_ns) {
  // The protected list holds at most 7/8 of what is resident. A resident unit never faults,
  // so its oldest member is not the coldest: each working-set re-fault earned a unit a
  // second chance (heat), spent by going round to the list's tail again; a unit with none
  // left goes back on probation (as if just mapped: the newest there).
  // A unit the device wrote since its bits were last read goes round without spending one
  // (each at most once per call: the reading cleared its bits).
  uint64_t dirty_left = space.dirty_hwpt() ? space.protected_list().units : 0;
  while (space.protected_list().units * kProtectedDen > space.resident_units() * kProtectedNum) {
    UnitRef oldest = space.protected_list().head;
    Unlink(space, space.protected_list(), oldest);
    Unit& o = space.space().unit(oldest);
    if (dirty_left > 0 && space.dirty_hwpt()) {  // a failed read stops the reading
      --dirty_left;
      if (TakeDirty(space, oldest)) {
        ForChain(space.scope(), [](PagingCounters& c) { ++c.dirty_second_chances; });
        Link(space, space.protected_list(), oldest);
        continue;
      }
    }
    if (o.heat > kActivateHeat - 1) {
      --o.heat;
      Link(space, space.protected_list(), oldest);
      continue;
    }
    o.state = Unit::State::kInactive;
    o.mapped_ns = now_ns;
    Link(space, space.probation(), oldest);
  }
}

bool Pager::PickVictim(uint64_t now_ns, size_t* which, int* list, UnitRef* ref) {
  // Probation first, then the protected list; among the spaces, the unit that entered its list
  // longest ago.
  for (int l = 0; l < 2; ++l) {
    bool found = false;
    uint64_t best_ns = 0;
    for (size_t i = 0; i < cursors_.size(); ++i) {
      Cursor& c = cursors_[i];
      // The list is in order: its first evictable unit is its oldest.
      UnitRef& r = c.next[l];
      while (r.valid() && !Evictable(*c.space, c.space->space().unit(r), now_ns)) {
        r = c.space->space().unit(r).next;
      }
      if (!r.valid()) continue;
      const uint64_t mapped_ns = c.space->space().unit(r).mapped_ns;
      if (!found || mapped_ns < best_ns) {
        found = true;
        best_ns = mapped_ns;
        *which = i;
        *ref = r;
      }
    }
    if (found) {
      *list = l;
      return true;
    }
  }
  return false;
}

void Pager::EvictIn(ResidencyScope& scope, uint64_t bytes, uint64_t now_ns) {
  const uint64_t budget = *scope.budget;
  if (!scope.at_budget_reported) {
    scope.at_budget_reported = true;
    if (on_event) {
      on_event(scope.device, absl::StrCat(scope.name, ": reached its budget (max_resident ", budget,
                                          " bytes); evicting"));
    }
  }
  // Down to the low watermark, 1/32 below the budget, with room for what is to be mapped; when
  // the low watermark has no room for it, to the budget. Every byte between the marks is
  // density given up (an eighth cost 6% of the budget on average: uniform at 0.75 W, 296.1
  // faults per 1000 against 263.3 at 1/32), while a deeper run saves unmap calls only when the
  // device streams, since only then are the victims at a list's head adjacent (PAGING.md).
  const uint64_t low = budget - budget / 32;
  const uint64_t target = low >= bytes ? low - bytes : (budget >= bytes ? budget - bytes : 0);
  cursors_.clear();
  for (auto& s : spaces_) {
    if (InScope(*s, scope)) {
      cursors_.push_back({s.get(), {s->probation().head, s->protected_list().head}});
    }
  }
  if (victims_.size() < cursors_.size()) victims_.resize(cursors_.size());
  for (size_t i = 0; i < cursors_.size(); ++i) victims_[i].clear();
  uint64_t resident = Resident(scope);
  size_t i = 0;
  int l = 0;
  UnitRef r;
  while (resident > target && PickVictim(now_ns, &i, &l, &r)) {
    PagedSpace& s = *cursors_[i].space;
    Unit& u = s.space().unit(r);
    // The search resumes after the victim (it leaves its list now, or moves to the tail).
    cursors_[i].next[l] = u.next;
    // Written since it was last looked at: not now. It goes to its list's tail as if just
    // mapped; once per run, so a run over units all being written still ends.
    if (options_.policy == EvictionPolicy::kWorkingset && s.dirty_hwpt() &&
        u.dirty_run != evict_run_) {
      u.dirty_run = evict_run_;
      if (TakeDirty(s, r)) {
        ForChain(s.scope(), [](PagingCounters& c) { ++c.dirty_second_chances; });
        PagedSpace::List& list = ListOf(s, u);
        Unlink(s, list, r);
        u.mapped_ns = now_ns;
        Link(s, list, r);
        // It was the last: the search meets it again at the tail.
        if (!cursors_[i].next[l].valid()) cursors_[i].next[l] = r;
        continue;
      }
    }
    Unlink(s, ListOf(s, u), r);
    u.state = Unit::State::kUnmapped;  // off every list; Unmap decides what it becomes
    victims_[i].push_back(r);
    resident -= s.space().regions()[r.region].ResidentBytes(r.unit);
  }
  for (size_t k = 0; k < cursors_.size(); ++k) {
    if (!victims_[k].empty()) Unmap(*cursors_[k].space, victims_[k], now_ns);
  }
}

bool Pager::TakeDirty(PagedSpace& space, UnitRef ref) {
  if (!space.dirty_hwpt()) return false;
  const Region& region = space.space().regions()[ref.region];
  const uint64_t ps = region.page_size();
  if (space.space().unit(ref).partial_pages == 0) {
    return TakeDirtyRange(space, region.UnitIova(ref.unit), region.UnitLength(ref.unit), ps);
  }
  // Every run is read, even after one was found written: the reading clears the bits.
  bool written = false;
  const uint64_t first = region.UnitFirstPage(ref.unit);
  const uint64_t end = first + region.UnitPageCount(ref.unit);
  for (uint64_t p = first; p < end && space.dirty_hwpt();) {
    if (!region.PagePresent(p)) {
      ++p;
      continue;
    }
    uint64_t q = p + 1;
    while (q < end && region.PagePresent(q)) ++q;
    written = TakeDirtyRange(space, region.iova() + p * ps, (q - p) * ps, ps) || written;
    p = q;
  }
  return written;
}

bool Pager::TakeDirtyRange(PagedSpace& space, uint64_t iova, uint64_t length, uint64_t page_size) {
  absl::StatusOr<bool> dirty =
      space.mapper().TakeDirty(*space.dirty_hwpt(), iova, length, page_size);
  if (dirty.ok()) return *dirty;
  // The signal is advice: without it eviction goes on by the lists alone.
  space.set_dirty_hwpt(std::nullopt);
  Log(LogLevel::kWarning,
      absl::StrCat(space.scope().name, ": ", dirty.status().message(),
                   "; evicting without dirty bits from now on"),
      {{"DEVICE", space.device().name()}});
  return false;
}

absl::Status Pager::UnmapRun(PagedSpace& space, UnitRef first, uint32_t count) {
  AddressSpace& as = space.space();
  Region& region = as.regions()[first.region];
  const uint32_t last = first.unit + count - 1;
  const uint64_t iova = region.UnitIova(first.unit);
  const uint64_t length = region.UnitIova(last) + region.UnitLength(last) - iova;
  // What the kernel must say it unmapped: the units' pages (a partial unit's holes hold none).
  uint64_t held = 0;
  for (uint32_t u = first.unit; u <= last; ++u) held += region.ResidentBytes(u);
  const uint64_t start = MonotonicNs();
  absl::Status st = space.mapper().Unmap(as.ioas(), iova, length, held);
  const uint64_t took = MonotonicNs() - start;
  ForChain(space.scope(), [took](PagingCounters& c) {
    ++c.unmap_calls;
    c.unmap_ns.Record(took);
  });
  return st;
}

void Pager::Evicted(PagedSpace& space, UnitRef ref, uint64_t now_ns) {
  Region& region = space.space().regions()[ref.region];
  Unit& u = space.space().unit(ref);
  space.CountEviction();
  u.state = Unit::State::kUnmapped;
  u.evicted_ns = std::max<uint64_t>(now_ns, 1);
  u.evicted_seq = space.evictions();
  region.NoteUnitUnmapped(ref.unit);
  const uint64_t len = region.ResidentBytes(ref.unit);
  const bool partial = u.partial_pages != 0;
  if (partial) {
    u.partial_pages = 0;
    region.ClearPresent(ref.unit);
  }
  Account(space, -static_cast<int64_t>(len), -1, partial ? -1 : 0);
  ForChain(space.scope(), [len](PagingCounters& c) {
    ++c.evicted_units;
    c.evicted_bytes += len;
  });
}

void Pager::MarkStuck(PagedSpace& space, UnitRef ref, const absl::Status& why) {
  ForChain(space.scope(), [](PagingCounters& c) { ++c.unmap_failures; });
  // Still mapped, all of it (a partial unit: the pages it had): its pages stay present, and it
  // is never evicted again.
  // Left unrecorded (Unmap unrecorded it): whether all of it is still iopfd's mapping is not
  // known, and a record must never name a unit that may be gone.
  Unit& u = space.space().unit(ref);
  u.state = Unit::State::kStuck;
  Region& region = space.space().regions()[ref.region];
  for (uint64_t p = 0; p < region.UnitPageCount(ref.unit) && u.partial_pages == 0; ++p) {
    region.MarkPagePresent(region.UnitFirstPage(ref.unit) + p);
  }
  space.CountStuck();
  Log(LogLevel::kWarning,
      absl::StrCat(space.scope().name, ": ", why.message(),
                   "; the unit stays mapped and is no longer evicted"),
      {{"DEVICE", space.device().name()}});
}

bool Pager::MappedAgain(PagedSpace& space, UnitRef ref, uint64_t now_ns) {
  AddressSpace& as = space.space();
  Region& region = as.regions()[ref.region];
  if (!space.mapper().Map(region.MakeUnitRequest(as.ioas(), ref.unit)).ok()) return false;
  // Still counted resident (it never left the accounts): back on probation, recorded. A partial
  // unit is whole now: its other pages count too.
  Unit& u = as.unit(ref);
  if (u.partial_pages != 0) {
    const uint64_t more = region.UnitPageCount(ref.unit) - u.partial_pages;
    region.NotePagesMapped(ref.unit, more);
    Account(space, static_cast<int64_t>(more * region.page_size()), 0, -1);
  }
  u.state = Unit::State::kInactive;
  u.mapped_ns = now_ns;
  Link(space, space.probation(), ref);
  region.RecordHeld(ref.unit, true);
  ForChain(space.scope(), [](PagingCounters& c) { ++c.unmap_failures; });
  Log(LogLevel::kWarning,
      absl::StrCat(space.scope().name, ": an unmap stopped partway; unit at 0x",
                   absl::Hex(region.UnitIova(ref.unit)), " was found gone and mapped again"),
      {{"DEVICE", space.device().name()}});
  return true;
}

void Pager::Unmap(PagedSpace& space, std::vector<UnitRef>& victims, uint64_t now_ns) {
  std::sort(victims.begin(), victims.end(), [](const UnitRef& a, const UnitRef& b) {
    return a.region != b.region ? a.region < b.region : a.unit < b.unit;
  });
  size_t i = 0;
  while (i < victims.size()) {
    // A run of adjacent units: each is a whole mapping, so one range covers them all.
    size_t j = i + 1;
    while (j < victims.size() && victims[j].region == victims[i].region &&
           victims[j].unit == victims[j - 1].unit + 1) {
      ++j;
    }
    const auto count = static_cast<uint32_t>(j - i);
    // Unrecorded before the call (map_record.h): a crash after it must not find them recorded.
    Region& region = space.space().regions()[victims[i].region];
    for (size_t k = i; k < j; ++k) region.RecordHeld(victims[k].unit, false);
    absl::Status st = UnmapRun(space, victims[i], count);
    if (st.ok()) {
      for (size_t k = i; k < j; ++k) Evicted(space, victims[k], now_ns);
    } else {
      // A run that failed as a whole is tried unit by unit: one unit whose mapping is not its
      // own (one made before a restart with other bounds) must not keep its neighbours. The
      // kernel unmaps the areas of a run in order and stops at the first it cannot
      // (io_pagetable.c iopt_unmap_iova_range), so the units before it may be gone already:
      // their own unmap says ENOENT, and a map call tells gone (it succeeds: the unit is
      // iopfd's again, resident) from someone else's (EEXIST: stuck).
      for (size_t k = i; k < j; ++k) {
        absl::Status one = count == 1 ? st : UnmapRun(space, victims[k], 1);
        if (one.ok()) {
          Evicted(space, victims[k], now_ns);
        } else if (ErrnoOf(one) == ENOENT && MappedAgain(space, victims[k], now_ns)) {
          continue;
        } else {
          MarkStuck(space, victims[k], one);
        }
      }
    }
    i = j;
  }
}

void Pager::SetBudget(ResidencyScope& scope, std::optional<uint64_t> budget, uint64_t now_ns) {
  scope.budget = budget;
  scope.counters->budget_bytes = budget.value_or(0);
  scope.at_budget_reported = false;
  ++evict_run_;
  if (budget && Resident(scope) > *budget) EvictIn(scope, 0, now_ns);
}

Pager::EvictReport Pager::EvictUnits(PagedSpace& space, uint32_t region, uint32_t first,
                                     uint32_t last, uint64_t now_ns) {
  EvictReport report;
  std::vector<UnitRef> victims;
  Region& r = space.space().regions()[region];
  for (uint32_t u = first; u <= last && u < r.unit_count(); ++u) {
    Unit& unit = r.unit(u);
    if (!unit.mapped()) continue;
    if (unit.state == Unit::State::kStuck) {
      ++report.stuck;
    } else if (space.device().Pinned(unit)) {
      ++report.pinned;
    } else {
      Unlink(space, ListOf(space, unit), UnitRef{region, u});
      unit.state = Unit::State::kUnmapped;
      victims.push_back(UnitRef{region, u});
    }
  }
  const uint64_t evicted_before = space.counters().evicted_units;
  const uint64_t bytes_before = space.counters().evicted_bytes;
  const uint64_t stuck_before = space.counters().unmap_failures;
  Unmap(space, victims, now_ns);
  report.units = space.counters().evicted_units - evicted_before;
  report.bytes = space.counters().evicted_bytes - bytes_before;
  report.stuck += space.counters().unmap_failures - stuck_before;
  return report;
}

Pager::Room Pager::MakeRoom(PagedSpace& space, uint64_t bytes, uint64_t now_ns, bool may_evict) {
  // One eviction run for every scope this map needs room in: a unit's dirty bits are read once
  // (each read costs the kernel an IOTLB flush), not once per scope.
  ++evict_run_;
  for (ResidencyScope* scope = &space.scope(); scope != nullptr; scope = scope->parent) {
    if (!scope->budget.has_value() || Resident(*scope) + bytes <= *scope->budget) continue;
    if (!may_evict) return Room::kNoRoom;
    EvictIn(*scope, bytes, now_ns);
    if (Resident(*scope) + bytes <= *scope->budget) continue;
    if (bytes > *scope->budget) return Room::kNoRoom;
    // Would units pinned by answers not yet written make the room once they are settled?
    uint64_t pinned = 0;
    for (auto& s : spaces_) {
      if (!InScope(*s, *scope)) continue;
      for (PagedSpace::List* list : {&s->probation(), &s->protected_list()}) {
        for (UnitRef r = list->head; r.valid(); r = s->space().unit(r).next) {
          const Unit& u = s->space().unit(r);
          if (s->device().Pinned(u) && u.protected_until <= now_ns) {
            pinned += s->space().regions()[r.region].ResidentBytes(r.unit);
          }
        }
      }
    }
    return *scope->budget - std::min(*scope->budget, Resident(*scope)) + pinned >= bytes
               ? Room::kPinned
               : Room::kNoRoom;
  }
  return Room::kOk;
}

}  // namespace iopfd
