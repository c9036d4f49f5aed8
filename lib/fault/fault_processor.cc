#include "iopfd/fault/fault_processor.h"

#include <algorithm>
#include <cerrno>

#include "iopfd/base/errors.h"

namespace iopfd {

FaultProcessor::FaultProcessor(FaultProcessorOptions options, SpaceTable* spaces, Mapper* mapper,
                               ResponseQueue* queue, DeviceStats* stats)
    : options_(options), spaces_(spaces), mapper_(mapper), queue_(queue), stats_(stats) {}

void FaultProcessor::Fail(Group& g, InvalidReason reason) {
  if (g.failed) return;  // the first reason found is the one reported
  g.failed = true;
  g.reason = reason;
}

void FaultProcessor::Process(std::span<const uapi::PageFault> records, uint64_t read_ns) {
  groups_.clear();
  record_group_.clear();
  group_of_cookie_.Clear(records.size());
  stats_->records += records.size();
  stats_->batch_records.Record(records.size());

  // Pass 1: group by cookie. The kernel copies each group's records contiguously, but the map
  // keeps a group whole even if a cookie reappeared later in the buffer. Each group's
  // obligation is created here, so from this point every group is answered exactly once.
  for (const uapi::PageFault& rec : records) {
    uint32_t index;
    if (!groups_.empty() && groups_.back().obligation.cookie() == rec.cookie) {
      index = static_cast<uint32_t>(groups_.size() - 1);
    } else {
      auto [found, inserted] =
          group_of_cookie_.TryEmplace(rec.cookie, static_cast<uint32_t>(groups_.size()));
      index = *found;
      if (inserted) {
        Group& g = groups_.emplace_back();
        g.obligation = ResponseObligation(
            queue_, stats_, rec.cookie, read_ns,
            AttachmentOf((rec.flags & uapi::kPgfaultPasidValid) != 0, rec.pasid));
        g.dev_id = rec.dev_id;
        g.pasid = rec.pasid;
        g.pasid_valid = (rec.flags & uapi::kPgfaultPasidValid) != 0;
      }
    }
    ++groups_[index].records;
    record_group_.push_back(index);
  }
  stats_->groups += groups_.size();
  if (!deferred_.empty()) DropReusedCookies();
  ResolveBatch(records, read_ns, /*final_round=*/false);
}

void FaultProcessor::ResolveBatch(std::span<const uapi::PageFault> records, uint64_t now_ns,
                                  bool final_round) {
  needs_.clear();
  queue_->BeginBatch();
  // Route and check each record; collect the pages to map.
  for (size_t i = 0; i < records.size(); ++i) Resolve(records[i], record_group_[i]);
  CountPages();
  MapGroups(now_ns, final_round);
  // A group succeeds only if the page of every one of its records is now mapped.
  for (const Need& n : needs_) {
    Group& g = groups_[n.group];
    if (!g.waiting && !n.region->IsMapped(n.page)) Fail(g, InvalidReason::kMapFailed);
  }
  AnswerGroups(records);
  queue_->EndBatch();
  // Groups left waiting with no answer outstanding would wait for a write that never comes:
  // they get a last round now, with every pin released.
  if (!deferred_.empty() && !final_round && queue_->outstanding() == 0 &&
      !queue_->write_in_flight()) {
    RetryDeferred(now_ns);
  }
}

void FaultProcessor::AnswerGroups(std::span<const uapi::PageFault> records) {
  for (uint32_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    if (g.failed) {
      ++stats_->invalid_by_reason[static_cast<int>(g.reason)];
      g.obligation.Answer(uapi::kRespInvalid);
    } else if (g.waiting) {
      // An older answer still queued for its cookie is stale: it must not reach this group.
      queue_->ReadAgain(g.obligation.cookie());
      // Until it is answered, a crash must not leave it pending in the kernel.
      g.obligation.OweIfLost();
      ++stats_->paging.deferred_groups;
      Deferred& d = deferred_.emplace_back();
      for (size_t i = 0; i < records.size(); ++i) {
        if (record_group_[i] == gi) d.records.push_back(records[i]);
      }
      g.waiting = false;
      d.group = std::move(g);
    } else {
      g.obligation.Answer(uapi::kRespSuccess);
    }
  }
}

void FaultProcessor::RetryDeferred(uint64_t now_ns) {
  if (deferred_.empty()) return;
  const bool final_round = queue_->outstanding() == 0 && !queue_->write_in_flight();
  std::vector<Deferred> waiting;
  waiting.swap(deferred_);
  groups_.clear();
  record_group_.clear();
  retry_records_.clear();
  for (Deferred& d : waiting) {
    const auto index = static_cast<uint32_t>(groups_.size());
    groups_.push_back(std::move(d.group));
    for (const uapi::PageFault& r : d.records) {
      retry_records_.push_back(r);
      record_group_.push_back(index);
    }
  }
  ResolveBatch(retry_records_, now_ns, final_round);
}

void FaultProcessor::DropReusedCookies() {
  // The kernel hands a cookie out again only once its group was answered. A waiting group's
  // cookie read again means the kernel answered that group itself (the owner replaced or
  // detached the attachment behind iopfd's back, eventq.c iommufd_auto_response_faults): its
  // answer would now reach the new group. It goes unanswered, like a stale queued answer
  // (ResponseQueue::Add).
  std::erase_if(deferred_, [&](Deferred& d) {
    if (!group_of_cookie_.Contains(d.group.obligation.cookie())) return false;
    ++stats_->duplicate_cookies;
    d.group.obligation.Dismiss(/*fd_dead=*/false);
    return true;
  });
}

void FaultProcessor::DismissDeferred(std::optional<AttachmentKey> attachment, bool fd_dead) {
  std::erase_if(deferred_, [&](Deferred& d) {
    if (attachment && d.group.obligation.attachment() != *attachment) return false;
    d.group.obligation.Dismiss(fd_dead);
    return true;
  });
}

void FaultProcessor::Resolve(const uapi::PageFault& rec, uint32_t group_index) {
  Group& g = groups_[group_index];
  if (g.failed) return;
  if (g.records > options_.max_group_records) return Fail(g, InvalidReason::kOversizedGroup);
  const bool pasid_valid = (rec.flags & uapi::kPgfaultPasidValid) != 0;
  // All records of a PRG come from one requester and PASID (PCIe PRI); anything else is either a
  // kernel bug or a hostile device and the whole group is refused.
  if (rec.dev_id != g.dev_id || pasid_valid != g.pasid_valid ||
      (pasid_valid && rec.pasid != g.pasid)) {
    return Fail(g, InvalidReason::kMalformed);
  }
  if (options_.device_id != 0 && rec.dev_id != options_.device_id) {
    return Fail(g, InvalidReason::kForeignDevice);
  }
  AddressSpace* space = spaces_->Find(pasid_valid, rec.pasid);
  if (space == nullptr) return Fail(g, InvalidReason::kNoSpace);
  // A drain parked this space (or the device is quarantined): its tags are being flushed and
  // nothing may be mapped for it until it resumes.
  if (space->refusing()) return Fail(g, InvalidReason::kRefused);
  Region* region = space->Find(rec.addr);
  if (region == nullptr) return Fail(g, InvalidReason::kNoRegion);
  constexpr uint32_t kPermMask =
      uapi::kPermRead | uapi::kPermWrite | uapi::kPermExec | uapi::kPermPriv;
  if ((rec.perm & kPermMask & ~region->access()) != 0) {
    return Fail(g, InvalidReason::kPermission);
  }

  // Map ahead: what the length hint says the requester will touch, plus the region's prefetch
  // window, capped per fault and at the region's end. The faulting page itself is always mapped.
  const uint64_t ps = region->page_size();
  const uint64_t page = region->PageIndex(rec.addr);
  const uint64_t in_page = rec.addr - (region->iova() + page * ps);
  uint64_t want = std::max<uint64_t>(in_page + rec.length, ps) + region->prefetch();
  want = std::min(want, std::max(options_.max_fault_map_bytes, ps));
  const uint64_t end = std::min(region->pages(), page + (want + ps - 1) / ps);
  needs_.push_back({region, space, page, end, group_index});
}

void FaultProcessor::CountPages() {
  // What the batch asks for: each distinct page once, repeats as deduplicated, pages already
  // mapped as answered without a map.
  seen_pages_.Clear(needs_.size());
  unit_wants_.Clear(needs_.size());
  wanted_unmapped_ = 0;
  batch_mapped_pages_ = 0;
  for (const Need& n : needs_) {
    if (!seen_pages_.TryEmplace({n.region, n.page}, true).second) {
      ++stats_->pages_deduped;
    } else if (n.region->IsMapped(n.page)) {
      ++stats_->pages_already_mapped;
    } else {
      ++wanted_unmapped_;
      // Which pages of its unit the batch asks for: a few close together may map just their
      // span (Part).
      if (n.region->first_touch_page()) {
        auto [w, fresh] =
            unit_wants_.TryEmplace({n.region, n.region->UnitOf(n.page)}, {0, n.page, n.page});
        ++w->pages;
        if (!fresh) {
          w->lowest = std::min(w->lowest, n.page);
          w->highest = std::max(w->highest, n.page);
        }
      }
    }
  }
}

void FaultProcessor::MapGroups(uint64_t now_ns, bool final_round) {
  if (needs_.empty()) return;
  // Group by group, in the order they were read: a group's own units are pinned before room is
  // made for the rest of them, so making room never takes what the group already has. (Needs
  // are in record order; a cookie seen again later in the buffer is the only reordering.)
  // stable_sort allocates a buffer: only when a cookie seen again made the order need it.
  auto by_group = [](const Need& a, const Need& b) { return a.group < b.group; };
  if (!std::is_sorted(needs_.begin(), needs_.end(), by_group)) {
    std::stable_sort(needs_.begin(), needs_.end(), by_group);
  }
  size_t i = 0;
  while (i < needs_.size()) {
    size_t j = i + 1;
    while (j < needs_.size() && needs_[j].group == needs_[i].group) ++j;
    MapGroup(i, j, now_ns, final_round);
    i = j;
  }
  // Whatever was mapped beyond the pages asked for was mapped ahead.
  if (batch_mapped_pages_ > wanted_unmapped_) {
    stats_->pages_prefetched += batch_mapped_pages_ - wanted_unmapped_;
  }
}

void FaultProcessor::MapGroup(size_t first, size_t end, uint64_t now_ns, bool final_round) {
  Group& g = groups_[needs_[first].group];
  if (g.failed) return;
  for (size_t k = first; k < end; ++k) {
    const Need& n = needs_[k];
    if (n.region->IsMapped(n.page)) Pin(n.space, n.region, n.page);
  }
  for (size_t k = first; k < end && !g.failed && !g.waiting; ++k) {
    const Need& n = needs_[k];
    if (n.region->IsMapped(n.page)) continue;
    switch (MapUnit(n.space, n.region, n.region->UnitOf(n.page), n.page, /*needed=*/true, Part(n),
                    now_ns, final_round)) {
      case UnitResult::kMapped:
        Pin(n.space, n.region, n.page);
        break;
      case UnitResult::kWait:
        g.waiting = true;
        break;
      case UnitResult::kNoRoom:
        Fail(g, InvalidReason::kOverBudget);
        break;
      case UnitResult::kFailed:
        break;  // the group fails as map_failed once every need was tried
    }
  }
  if (g.failed || g.waiting) return;
  // Map ahead: the units after the faulting page's, up to what the length hint and the
  // prefetch window reach, where they fit without evicting anything.
  for (size_t k = first; k < end; ++k) {
    const Need& n = needs_[k];
    if (n.end <= n.page + 1) continue;
    const uint32_t last = n.region->UnitOf(n.end - 1);
    for (uint32_t u = n.region->UnitOf(n.page) + 1; u <= last; ++u) {
      if (n.region->unit(u).mapped()) continue;
      if (MapUnit(n.space, n.region, u, n.region->UnitFirstPage(u), /*needed=*/false, PageSpan{},
                  now_ns, final_round) == UnitResult::kNoRoom) {
        break;
      }
    }
  }
}

FaultProcessor::PageSpan FaultProcessor::Part(const Need& n) const {
  const Region& r = *n.region;
  if (!r.first_touch_page() || n.end != n.page + 1) return {};
  const uint32_t unit = r.UnitOf(n.page);
  const Unit& mine = r.unit(unit);
  if (mine.state == Unit::State::kStuck) return {};
  const UnitWants* wants = unit_wants_.Get({n.region, unit});
  if (wants == nullptr) return {};
  const uint64_t unit_pages = r.UnitPageCount(unit);
  if (mine.partial_pages != 0) return Grow(r, unit, n.page, *wants);
  if (mine.mapped()) return {};
  // Beside a whole unit, a request is the next step of a stream more likely than a stray one.
  auto whole = [&r](uint32_t u) {
    const Unit& x = r.unit(u);
    return x.mapped() && x.state != Unit::State::kStuck && x.partial_pages == 0;
  };
  if ((unit > 0 && whole(unit - 1)) || (unit + 1 < r.unit_count() && whole(unit + 1))) return {};
  // A few pages of the unit asked for together: what lies between them is mapped with them, one
  // call (random pages of a burst that share a unit: mapping the whole unit for two of them
  // allocated, zeroed and pinned 16 pages where 2 were asked for, and made a random burst 0.78x
  // as fast as 4 KiB units in the VM bench). More than half the unit: all of it.
  const uint64_t span = wants->highest - wants->lowest + 1;
  if (span * 2 > unit_pages) return {};
  return {wants->lowest, span};
}

FaultProcessor::PageSpan FaultProcessor::Grow(const Region& r, uint32_t unit, uint64_t page,
                                              const UnitWants& wants) {
  const uint64_t held = r.unit(unit).partial_pages;
  const uint64_t unit_pages = r.UnitPageCount(unit);
  // Half held already, or several of its pages asked for at once: the rest, every hole.
  if (held * 2 >= unit_pages || wants.pages != 1) return {};
  const uint64_t first = r.UnitFirstPage(unit);
  const uint64_t end = first + unit_pages;
  const bool below = page > first && r.PagePresent(page - 1);
  const bool above = page + 1 < end && r.PagePresent(page + 1);
  // A stray page: alone.
  if (below == above) return {page, 1};
  // Beside a page it holds: a stream through the unit, or two random requests that met by
  // chance. Mapping every hole at once (16 pages for the second page of a random pair: a
  // random burst mapped 1.56 pages per request) bets on the stream; the run grows instead by
  // twice what the unit holds, onwards from the page, so a stream fills the unit in a few calls
  // and a chance neighbour costs a page more than itself. Once that would leave the unit more
  // than half held, the rest is mapped.
  const uint64_t grow = 2 * held;
  PageSpan span;
  if (below) {
    uint64_t stop = page + 1;
    while (stop < end && stop < page + grow && !r.PagePresent(stop)) ++stop;
    span = {page, stop - page};
  } else {
    uint64_t start = page;
    while (start > first && page - start + 1 < grow && !r.PagePresent(start - 1)) --start;
    span = {start, page - start + 1};
  }
  if ((held + span.count) * 2 > unit_pages) return {};
  return span;
}

std::optional<FaultProcessor::UnitResult> FaultProcessor::Room(AddressSpace* space, uint64_t bytes,
                                                               bool needed, uint64_t now_ns,
                                                               bool final_round) {
  PagedSpace* paging = pager_ != nullptr ? space->paging() : nullptr;
  if (paging == nullptr) return std::nullopt;
  switch (pager_->MakeRoom(*paging, bytes, now_ns, /*may_evict=*/needed)) {
    case Pager::Room::kOk:
      return std::nullopt;
    case Pager::Room::kPinned:
      if (!needed) return UnitResult::kNoRoom;
      ++stats_->paging.over_budget;
      return final_round ? UnitResult::kNoRoom : UnitResult::kWait;
    case Pager::Room::kNoRoom:
      if (needed) ++stats_->paging.over_budget;
      return UnitResult::kNoRoom;
  }
  return UnitResult::kNoRoom;
}

FaultProcessor::UnitResult FaultProcessor::MapStuckPage(AddressSpace* space, Region* region,
                                                        uint64_t page) {
  MapRequest req = region->MakePageRequest(space->ioas(), page);
  if (CallMap(req) || ErrnoOf(last_map_status_) == EEXIST) {
    region->MarkPagePresent(page);
    if (last_map_status_.ok()) batch_mapped_pages_ += 1;
    return UnitResult::kMapped;
  }
  return UnitResult::kFailed;
}

FaultProcessor::UnitResult FaultProcessor::MapUnit(AddressSpace* space, Region* region,
                                                   uint32_t unit, uint64_t page, bool needed,
                                                   PageSpan part, uint64_t now_ns,
                                                   bool final_round) {
  Unit& u = region->unit(unit);
  if (u.state == Unit::State::kStuck) {
    // Part of it is someone else's: pages are mapped one by one.
    return needed ? MapStuckPage(space, region, page) : UnitResult::kFailed;
  }
  if (u.partial_pages != 0) {
    return needed ? MapHoles(space, region, unit, page, part, now_ns, final_round)
                  : UnitResult::kFailed;
  }
  // A span as long as the unit is the unit.
  if (part.count >= region->UnitPageCount(unit)) part = {};
  const uint64_t first = part.count != 0 ? part.first : region->UnitFirstPage(unit);
  const uint64_t count = part.count != 0 ? part.count : region->UnitPageCount(unit);
  if (auto no = Room(space, count * region->page_size(), needed, now_ns, final_round)) return *no;
  MapRequest req = region->MakeRange(space->ioas(), first, count);
  if (CallMap(req)) {
    stats_->bytes_mapped += req.length;
    batch_mapped_pages_ += count;
    if (part.count != 0) {
      for (uint64_t p = first; p < first + count; ++p) region->MarkPagePresent(p);
      u.partial_pages = static_cast<uint32_t>(count);
    }
    MarkMapped(space, region, unit, now_ns);
    return UnitResult::kMapped;
  }
  if (ErrnoOf(last_map_status_) != EEXIST || !needed) return UnitResult::kFailed;
  // Part of the unit is mapped already: by the device's owner, or by an iopfd before a restart
  // (with these or other bounds). Not iopfd's to unmap: the unit is stuck, its pages mapped one
  // by one from now on; a page found mapped is present (the device's retry will translate).
  u.state = Unit::State::kStuck;
  return MapStuckPage(space, region, page);
}

FaultProcessor::UnitResult FaultProcessor::MapHoles(AddressSpace* space, Region* region,
                                                    uint32_t unit, uint64_t page, PageSpan part,
                                                    uint64_t now_ns, bool final_round) {
  PagedSpace* paging = pager_ != nullptr ? space->paging() : nullptr;
  const UnitRef ref{space->IndexOf(region), unit};
  Unit& u = region->unit(unit);
  // The unit is on its list: making room must not evict it from under the pages about to fill
  // it. (A pin lasts until this batch's answers are settled, as for a unit an answer needs.)
  if (paging != nullptr) Pager::Pin(*paging, ref);
  // A span (Part) lies in one hole: all of it is missing.
  const uint64_t missing =
      part.count != 0 ? part.count : region->UnitPageCount(unit) - u.partial_pages;
  if (auto no = Room(space, missing * region->page_size(), true, now_ns, final_round)) return *no;
  // One call per hole in the range (a span: its own): each is its own area, and the unit stays
  // unmappable by one call over its range (areas with holes between them, none cut).
  const uint64_t first = part.count != 0 ? part.first : region->UnitFirstPage(unit);
  const uint64_t end = part.count != 0 ? part.first + part.count
                                       : region->UnitFirstPage(unit) + region->UnitPageCount(unit);
  for (uint64_t p = first; p < end && u.partial_pages != 0;) {
    if (region->PagePresent(p)) {
      ++p;
      continue;
    }
    uint64_t q = p + 1;
    while (q < end && !region->PagePresent(q)) ++q;
    MapRequest req = region->MakeRange(space->ioas(), p, q - p);
    if (!CallMap(req)) {
      if (ErrnoOf(last_map_status_) != EEXIST) return UnitResult::kFailed;
      // Someone else mapped into a hole: the unit is not iopfd's alone any more.
      if (paging != nullptr) {
        pager_->Stuck(*paging, ref);
      } else {
        u.state = Unit::State::kStuck;
        region->RecordHeld(unit, false);
      }
      return region->PagePresent(page) ? UnitResult::kMapped : MapStuckPage(space, region, page);
    }
    stats_->bytes_mapped += req.length;
    batch_mapped_pages_ += q - p;
    for (uint64_t k = p; k < q; ++k) region->MarkPagePresent(k);
    // Once the last hole is filled the unit is whole (its present marks cleared): the loop ends.
    if (paging != nullptr) {
      pager_->Grew(*paging, ref, q - p);
    } else {
      region->NotePagesMapped(unit, q - p);
    }
    p = q;
  }
  return UnitResult::kMapped;
}

bool FaultProcessor::CallMap(const MapRequest& req) {
  ++stats_->map_calls;
  last_map_status_ = mapper_->Map(req);
  // ENOMEM is the kernel failing one allocation on the way (the area, the page array, a page
  // table): no state changed, and the same call a moment later usually succeeds. Answering
  // INVALID at once would turn a transient shortage into a failed translation on the device.
  for (int retry = 0;
       retry < kMapRetries && !last_map_status_.ok() && ErrnoOf(last_map_status_) == ENOMEM;
       ++retry) {
    ++stats_->map_calls;
    last_map_status_ = mapper_->Map(req);
  }
  if (!last_map_status_.ok() && ErrnoOf(last_map_status_) != EEXIST) ++stats_->map_failures;
  return last_map_status_.ok();
}

void FaultProcessor::MarkMapped(AddressSpace* space, Region* region, uint32_t unit,
                                uint64_t now_ns) {
  PagedSpace* paging = pager_ != nullptr ? space->paging() : nullptr;
  if (paging != nullptr) {
    pager_->Mapped(*paging, UnitRef{space->IndexOf(region), unit}, now_ns);
    return;
  }
  region->unit(unit).state = Unit::State::kInactive;
  region->NoteUnitMapped(unit);
}

bool FaultProcessor::TakeBack(AddressSpace* space, Region* region, uint32_t unit, uint64_t now_ns,
                              std::span<const uint64_t> present) {
  Unit& u = region->unit(unit);
  if (u.mapped()) return false;
  if (!present.empty() && present.size() < region->UnitPageCount(unit)) {
    for (uint64_t page : present) region->MarkPagePresent(page);
    u.partial_pages = static_cast<uint32_t>(present.size());
  }
  MarkMapped(space, region, unit, now_ns);
  return true;
}

void FaultProcessor::Pin(AddressSpace* space, Region* region, uint64_t page) {
  PagedSpace* paging = pager_ != nullptr ? space->paging() : nullptr;
  if (paging != nullptr) Pager::Pin(*paging, UnitRef{space->IndexOf(region), region->UnitOf(page)});
}

}  // namespace iopfd
