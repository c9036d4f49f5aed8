#include "iopfd/fault/fault_processor.h"

#include <algorithm>
#include <cerrno>
#include <functional>

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
  group_of_cookie_.clear();
  needs_.clear();
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
      auto [it, inserted] =
          group_of_cookie_.try_emplace(rec.cookie, static_cast<uint32_t>(groups_.size()));
      index = it->second;
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

  // Pass 2: route and check each record; collect the pages to map.
  for (size_t i = 0; i < records.size(); ++i) Resolve(records[i], record_group_[i]);

  MapNeeds();

  // A group succeeds only if the page of every one of its records is now mapped.
  for (const Need& n : needs_) {
    if (!n.region->IsMapped(n.page)) Fail(groups_[n.group], InvalidReason::kMapFailed);
  }
  for (Group& g : groups_) {
    if (g.failed) {
      ++stats_->invalid_by_reason[static_cast<int>(g.reason)];
      g.obligation.Answer(uapi::kRespInvalid);
    } else {
      g.obligation.Answer(uapi::kRespSuccess);
    }
  }
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

void FaultProcessor::MapNeeds() {
  if (needs_.empty()) return;
  order_.assign(needs_.begin(), needs_.end());
  std::less<const Region*> before;
  std::sort(order_.begin(), order_.end(), [&before](const Need& a, const Need& b) {
    if (a.region != b.region) return before(a.region, b.region);
    return a.page < b.page;
  });

  // Count what the batch asks for: each distinct page once, repeats as deduplicated, pages
  // already mapped as answered without a map.
  uint64_t wanted_unmapped = 0;
  for (size_t i = 0; i < order_.size(); ++i) {
    const Need& n = order_[i];
    if (i > 0 && order_[i - 1].region == n.region && order_[i - 1].page == n.page) {
      ++stats_->pages_deduped;
    } else if (n.region->IsMapped(n.page)) {
      ++stats_->pages_already_mapped;
    } else {
      ++wanted_unmapped;
    }
  }
  batch_mapped_pages_ = 0;

  // Merge overlapping and adjacent page ranges of one region into runs; each run is then mapped
  // in as few calls as its already-mapped holes allow.
  size_t i = 0;
  while (i < order_.size()) {
    Region* region = order_[i].region;
    AddressSpace* space = order_[i].space;
    uint64_t first = order_[i].page;
    uint64_t end = order_[i].end;
    size_t j = i + 1;
    while (j < order_.size() && order_[j].region == region && order_[j].page <= end) {
      end = std::max(end, order_[j].end);
      ++j;
    }
    MapRun(space, region, first, end);
    // If a multi-page call failed, the pages the requests need are retried one by one so that a
    // bad prefetch page (or a page someone else mapped) cannot fail its neighbours' requests.
    for (size_t k = i; k < j; ++k) {
      const Need& n = order_[k];
      if (!n.region->IsMapped(n.page)) MapPages(space, region, n.page, 1);
    }
    i = j;
  }
  // Whatever was mapped beyond the pages asked for was mapped ahead.
  if (batch_mapped_pages_ > wanted_unmapped) {
    stats_->pages_prefetched += batch_mapped_pages_ - wanted_unmapped;
  }
}

void FaultProcessor::MapRun(AddressSpace* space, Region* region, uint64_t first, uint64_t end) {
  uint64_t p = first;
  while (p < end) {
    while (p < end && region->IsMapped(p)) ++p;
    uint64_t start = p;
    while (p < end && !region->IsMapped(p)) ++p;
    if (p > start) MapPages(space, region, start, p - start);
  }
}

bool FaultProcessor::MapPages(AddressSpace* space, Region* region, uint64_t first, uint64_t count) {
  MapRequest req = region->MakeRequest(space->ioas(), first, count);
  ++stats_->map_calls;
  absl::Status st = mapper_->Map(req);
  // ENOMEM is the kernel failing one allocation on the way (the area, the page array, a page
  // table): no state changed, and the same call a moment later usually succeeds. Answering
  // INVALID at once would turn a transient shortage into a failed translation on the device.
  for (int retry = 0; retry < kMapRetries && !st.ok() && ErrnoOf(st) == ENOMEM; ++retry) {
    ++stats_->map_calls;
    st = mapper_->Map(req);
  }
  if (st.ok()) {
    region->MarkMapped(first, count);
    stats_->bytes_mapped += req.length;
    batch_mapped_pages_ += count;
    return true;
  }
  ++stats_->map_failures;
  // A single page that is already mapped (by the device's owner, or by a mapping iopfd made
  // before a restart) is present: the device's retry will translate, so it counts as mapped.
  if (count == 1 && ErrnoOf(st) == EEXIST) {
    region->MarkMapped(first, 1);
    return true;
  }
  return false;
}

}  // namespace iopfd
