#include "iopfd/fault/response_queue.h"

#include <algorithm>
#include <cerrno>

namespace iopfd {

void ResponseQueue::Add(uint32_t cookie, uint32_t code, uint64_t read_ns, AttachmentKey attachment,
                        std::optional<uint64_t> epoch) {
  if (!outstanding_.insert(cookie).second) {
    // The kernel hands a cookie out again only once its group was answered. iopfd has not
    // written its answer, so the kernel answered that group itself: the owner detached or
    // replaced the attachment behind iopfd's back (eventq.c iommufd_auto_response_faults). The
    // cookie names the new group now, so the old answer is stale: drop it if it is not yet on
    // its way. One already being written races the new group's answer; both are accounted.
    ++stats_->duplicate_cookies;
    if (DropUnsent(cookie)) {
      ++stats_->responses_stale_dropped;
    } else {
      ++untracked_;  // being written right now: it races the new group's answer
    }
  }
  if (code == uapi::kRespSuccess) {
    ++stats_->responses_success;
  } else {
    ++stats_->responses_invalid;
  }
  if (ledger_ != nullptr) ledger_->Owe(cookie, code);
  if (pending_.empty() && on_first_pending_) on_first_pending_();
  pending_.push_back({cookie, code});
  pending_ts_.push_back(read_ns);
  pending_att_.push_back(attachment);
  pending_epoch_.push_back(epoch.value_or(epoch_));
}

bool ResponseQueue::DropUnsent(uint32_t cookie) {
  for (size_t i = 0; i < pending_.size(); ++i) {
    if (pending_[i].cookie != cookie) continue;
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
    pending_ts_.erase(pending_ts_.begin() + static_cast<std::ptrdiff_t>(i));
    pending_att_.erase(pending_att_.begin() + static_cast<std::ptrdiff_t>(i));
    pending_epoch_.erase(pending_epoch_.begin() + static_cast<std::ptrdiff_t>(i));
    return true;
  }
  // The unsettled rest of the last write (after a short write or EINVAL) is re-sent before
  // anything newer: the old answer there would meet the new group first.
  for (size_t i = inflight_pos_; !writing_ && i < inflight_.size(); ++i) {
    if (inflight_[i].cookie != cookie) continue;
    inflight_.erase(inflight_.begin() + static_cast<std::ptrdiff_t>(i));
    inflight_ts_.erase(inflight_ts_.begin() + static_cast<std::ptrdiff_t>(i));
    inflight_att_.erase(inflight_att_.begin() + static_cast<std::ptrdiff_t>(i));
    return true;
  }
  return false;
}

void ResponseQueue::ReadAgain(uint32_t cookie) {
  if (!outstanding_.contains(cookie)) return;
  // Being written right now: the race Add accounts for when the new group is answered.
  if (!DropUnsent(cookie)) return;
  ++stats_->duplicate_cookies;
  ++stats_->responses_stale_dropped;
  outstanding_.erase(cookie);
  if (ledger_ != nullptr) ledger_->Settled(cookie);
}

void ResponseQueue::Fence(std::optional<AttachmentKey> attachment) {
  ++epoch_;
  if (!attachment) {
    fence_all_ = epoch_;
    fences_.clear();
    return;
  }
  for (auto& [key, at] : fences_) {
    if (key == *attachment) {
      at = epoch_;
      return;
    }
  }
  fences_.emplace_back(*attachment, epoch_);
}

bool ResponseQueue::Fenced(AttachmentKey attachment, uint64_t epoch) const {
  if (epoch < fence_all_) return true;
  for (const auto& [key, at] : fences_) {
    if (key == attachment) return epoch < at;
  }
  return false;
}

size_t ResponseQueue::DropAttachment(std::optional<AttachmentKey> attachment) {
  if (writing_) return 0;
  size_t dropped = 0;
  auto drop = [&](std::vector<uapi::PageResponse>& resp, std::vector<uint64_t>& ts,
                  std::vector<AttachmentKey>& att, std::vector<uint64_t>* epochs, size_t from) {
    size_t out = from;
    for (size_t i = from; i < resp.size(); ++i) {
      if (!attachment || att[i] == *attachment) {
        Forget(resp[i].cookie);
        ++stats_->responses_stale_dropped;
        ++dropped;
        continue;
      }
      resp[out] = resp[i];
      ts[out] = ts[i];
      att[out] = att[i];
      if (epochs != nullptr) (*epochs)[out] = (*epochs)[i];
      ++out;
    }
    resp.resize(out);
    ts.resize(out);
    att.resize(out);
    if (epochs != nullptr) epochs->resize(out);
  };
  // Only the unsettled part of the last write: what is before inflight_pos_ is accounted for.
  // (What is in flight passed the fence check when its write began.)
  drop(inflight_, inflight_ts_, inflight_att_, nullptr, inflight_pos_);
  drop(pending_, pending_ts_, pending_att_, &pending_epoch_, 0);
  return dropped;
}

std::span<const uapi::PageResponse> ResponseQueue::BeginWrite() {
  if (inflight_pos_ >= inflight_.size()) {
    // Everything written before is settled: the pending batch becomes the next write.
    inflight_.clear();
    inflight_ts_.clear();
    inflight_att_.clear();
    inflight_pos_ = 0;
    write_batch_ = resolving_ ? batch_ - 1 : batch_;
    // The epoch fence: a response to a group read before its attachment was parked must never
    // be written (its cookie may name a newer group). DropAttachment at the park removes them
    // all, so finding one here is a bug: it is dropped and counted, never written.
    if (fence_all_ == 0 && fences_.empty()) {
      inflight_.swap(pending_);
      inflight_ts_.swap(pending_ts_);
      inflight_att_.swap(pending_att_);
    }
    for (size_t i = 0; i < pending_.size(); ++i) {
      if (Fenced(pending_att_[i], pending_epoch_[i])) {
        Forget(pending_[i].cookie);
        ++stats_->stale_epoch_blocked;
        ++stats_->responses_stale_dropped;
        continue;
      }
      inflight_.push_back(pending_[i]);
      inflight_ts_.push_back(pending_ts_[i]);
      inflight_att_.push_back(pending_att_[i]);
    }
    pending_.clear();
    pending_ts_.clear();
    pending_att_.clear();
    pending_epoch_.clear();
  }
  writing_ = inflight_pos_ < inflight_.size();
  return std::span<const uapi::PageResponse>(inflight_).subspan(inflight_pos_);
}

void ResponseQueue::Forget(uint32_t cookie) {
  if (outstanding_.erase(cookie) == 0 && untracked_ > 0) --untracked_;
  if (ledger_ != nullptr) ledger_->Settled(cookie);
}

void ResponseQueue::Settle(size_t index, bool accepted, uint64_t now_ns, bool record) {
  Forget(inflight_[index].cookie);
  if (accepted) {
    ++stats_->responses_written;
    uint64_t t = inflight_ts_[index];
    if (record) stats_->latency_ns.Record(now_ns > t ? now_ns - t : 0);
  } else {
    ++stats_->responses_rejected;
  }
}

bool ResponseQueue::CompleteWrite(ssize_t result, uint64_t now_ns) {
  writing_ = false;
  ++stats_->writes;
  const size_t unsent = inflight_.size() - inflight_pos_;
  if (result >= 0) {
    size_t done = static_cast<size_t>(result) / sizeof(uapi::PageResponse);
    if (done > unsent) done = unsent;
    // Responses read together share their read's time: one histogram update per run of equal
    // times, not one per response.
    uint64_t run_ts = 0, run = 0;
    for (size_t i = 0; i < done; ++i) {
      Settle(inflight_pos_ + i, true, now_ns, /*record=*/false);
      const uint64_t t = inflight_ts_[inflight_pos_ + i];
      if (run != 0 && t != run_ts) {
        stats_->latency_ns.Record(now_ns > run_ts ? now_ns - run_ts : 0, run);
        run = 0;
      }
      run_ts = t;
      ++run;
    }
    stats_->latency_ns.Record(now_ns > run_ts ? now_ns - run_ts : 0, run);
    inflight_pos_ += done;
    if (inflight_pos_ < inflight_.size()) {
      // A short write: the kernel stopped at an unknown cookie. That one is rejected for good;
      // the ones behind it stay in flight and are written again next.
      Settle(inflight_pos_, false, now_ns);
      ++inflight_pos_;
    }
    if (inflight_pos_ >= inflight_.size()) settled_batch_ = std::max(settled_batch_, write_batch_);
    return true;
  }
  const int err = static_cast<int>(-result);
  if (err == EINVAL) {
    // The first response's cookie is unknown to the kernel (already answered, or answered by
    // the kernel itself on detach). Drop it; the rest are re-sent.
    Settle(inflight_pos_, false, now_ns);
    ++inflight_pos_;
    if (inflight_pos_ >= inflight_.size()) settled_batch_ = std::max(settled_batch_, write_batch_);
    return true;
  }
  // Nothing consumed; write the same again. ENOMEM included: the fault fd's write allocates
  // nothing (eventq.c), so it comes from the way there (io_uring's request or async data) and
  // the next try may well succeed; abandoning would leave every one of these groups pending.
  if (err == EINTR || err == EAGAIN || err == ENOMEM) return true;
  AbandonAll();
  return false;
}

void ResponseQueue::AbandonAll() {
  stats_->responses_abandoned += (inflight_.size() - inflight_pos_) + pending_.size();
  inflight_.clear();
  inflight_ts_.clear();
  inflight_att_.clear();
  inflight_pos_ = 0;
  pending_.clear();
  pending_ts_.clear();
  pending_att_.clear();
  pending_epoch_.clear();
  outstanding_.clear();
  untracked_ = 0;
  writing_ = false;
  if (ledger_ != nullptr) ledger_->SettleAll();
}

ResponseObligation& ResponseObligation::operator=(ResponseObligation&& o) noexcept {
  if (this != &o) {
    GuardAnswer();
    queue_ = std::exchange(o.queue_, nullptr);
    stats_ = o.stats_;
    cookie_ = o.cookie_;
    read_ns_ = o.read_ns_;
    attachment_ = o.attachment_;
    epoch_ = o.epoch_;
  }
  return *this;
}

ResponseObligation::~ResponseObligation() { GuardAnswer(); }

void ResponseObligation::GuardAnswer() {
  if (queue_ == nullptr) return;
  ++stats_->guard_answered;
  ++stats_->invalid_by_reason[static_cast<int>(InvalidReason::kUnresolved)];
  queue_->Add(cookie_, uapi::kRespInvalid, read_ns_, attachment_, epoch_);
  queue_ = nullptr;
}

void ResponseObligation::Dismiss(bool fd_dead) {
  if (queue_ == nullptr) return;
  if (fd_dead) {
    ++stats_->responses_abandoned;
  } else {
    ++stats_->responses_stale_dropped;
  }
  queue_->SettleInLedger(cookie_);
  queue_ = nullptr;
}

void ResponseObligation::OweIfLost() {
  if (queue_ != nullptr) queue_->OweInLedger(cookie_);
}

bool ResponseObligation::Answer(uint32_t code) {
  if (queue_ == nullptr) return false;
  queue_->Add(cookie_, code, read_ns_, attachment_, epoch_);
  queue_ = nullptr;
  return true;
}

}  // namespace iopfd
