#include "pri_device.h"

#include <algorithm>
#include <utility>

namespace iopfd::sim {

const char* ViolationName(ViolationKind kind) {
  switch (kind) {
    case ViolationKind::kUnexpectedPrgIndex:
      return "unexpected_prg_index";
    case ViolationKind::kStaleResponse:
      return "stale_response";
    case ViolationKind::kRequestWhileHalted:
      return "request_while_halted";
    case ViolationKind::kRequestWhileDisabled:
      return "request_while_disabled";
    case ViolationKind::kOverAllocation:
      return "over_allocation";
    case ViolationKind::kIndexInUse:
      return "index_in_use";
    case ViolationKind::kLostGroup:
      return "lost_group";
  }
  return "unknown";
}

void PriDevice::Flag(ViolationKind kind, std::string detail) {
  violations_.push_back({kind, std::move(detail)});
}

bool PriDevice::CanIssue(uint32_t pages) const {
  return enabled_ && !halted_ && pages > 0 &&
         outstanding_requests_ + pages <= options_.allocation &&
         groups_.size() < options_.prg_indices;
}

std::vector<PageRequest> PriDevice::IssueGroup(std::optional<uint32_t> pasid, uint64_t addr,
                                               uint32_t perm, uint32_t pages) {
  if (halted_) Flag(ViolationKind::kRequestWhileHalted, "group issued while DMA is halted");
  if (!enabled_) Flag(ViolationKind::kRequestWhileDisabled, "group issued with PRI Enable clear");
  if (outstanding_requests_ + pages > options_.allocation) {
    Flag(ViolationKind::kOverAllocation, std::to_string(outstanding_requests_ + pages) +
                                             " requests outstanding, allocation " +
                                             std::to_string(options_.allocation));
  }
  // The lowest free index at or after next_index_, wrapping: indices are reused as soon as they
  // are free, which is what makes a stale answer dangerous.
  const uint32_t space = std::max<uint32_t>(options_.prg_indices, 1);
  uint32_t index = next_index_ % space;
  for (uint32_t tries = 0; tries < space && groups_.count(index) != 0; ++tries) {
    index = (index + 1) % space;
  }
  next_index_ = (index + 1) % space;
  if (auto old = groups_.find(index); old != groups_.end()) {
    Flag(ViolationKind::kIndexInUse,
         "no free PRG index: reused " + std::to_string(index) + " while outstanding");
    outstanding_requests_ -= old->second.requests;
    groups_.erase(old);
  }
  const uint64_t generation = next_generation_++;
  groups_[index] = {generation, pages};
  outstanding_requests_ += pages;
  ++issued_;
  std::vector<PageRequest> out;
  for (uint32_t i = 0; i < pages; ++i) {
    out.push_back({index, pasid, addr + uint64_t{i} * 4096, perm, i + 1 == pages, generation});
  }
  return out;
}

void PriDevice::Respond(uint32_t prg_index, uint64_t generation, ResponseCode code) {
  auto it = groups_.find(prg_index);
  if (it == groups_.end()) {
    Flag(ViolationKind::kUnexpectedPrgIndex, "response for PRG index " + std::to_string(prg_index) +
                                                 " (generation " + std::to_string(generation) +
                                                 "), which has no group outstanding");
    return;
  }
  if (it->second.generation != generation) {
    // The device cannot tell: it takes the answer for its current group. This is the
    // corruption the drain prevents.
    Flag(ViolationKind::kStaleResponse, "response meant for generation " +
                                            std::to_string(generation) + " of PRG index " +
                                            std::to_string(prg_index) + " met generation " +
                                            std::to_string(it->second.generation));
  }
  outstanding_requests_ -= it->second.requests;
  groups_.erase(it);
  ++completed_;
  (void)code;  // Success means retry the translation, Invalid do not: both complete the group.
}

void PriDevice::Flr() {
  forgotten_ += groups_.size();
  groups_.clear();
  outstanding_requests_ = 0;
  next_index_ = 0;  // a reset function starts its indices over: the worst case for reuse
  enabled_ = false;
  halted_ = true;
}

void PriDevice::CheckNothingLost() {
  for (const auto& [index, group] : groups_) {
    Flag(ViolationKind::kLostGroup, "PRG index " + std::to_string(index) + " (generation " +
                                        std::to_string(group.generation) + ") was never answered");
  }
}

}  // namespace iopfd::sim
