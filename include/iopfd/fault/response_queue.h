// Responses owed to one fault fd, batched into writes, with the kernel's partial-write rules.
#ifndef IOPFD_FAULT_RESPONSE_QUEUE_H_
#define IOPFD_FAULT_RESPONSE_QUEUE_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/fault/stats.h"

namespace iopfd {

// Which attachment of a device a group came from: its PASID, or kNoPasidAttachment for requests
// without one. A drain parks attachments one by one (or all of a device).
using AttachmentKey = uint32_t;
inline constexpr AttachmentKey kNoPasidAttachment = 0xffffffffu;  // PASIDs are 20 bits
// Returns the attachment of a record with the given PASID_VALID flag and PASID.
inline AttachmentKey AttachmentOf(bool pasid_valid, uint32_t pasid) {
  return pasid_valid ? pasid : kNoPasidAttachment;
}

// Collects the responses of one loop turn so they go out in one write() per fault fd, and
// accounts for every response exactly once: accepted, rejected by the kernel, or abandoned
// because the fd failed.
//
// The kernel's write (drivers/iommu/iommufd/eventq.c) consumes responses in order and stops at
// the first cookie it does not know: it returns the bytes consumed so far, or EINVAL when the
// very first one was unknown. The responses after the rejected one were not looked at and must be
// written again; this class re-sends them before anything newer.
class ResponseQueue {
 public:
  // stats must outlive the queue.
  explicit ResponseQueue(DeviceStats* stats) : stats_(stats) {}

  // Queues a response for cookie, read at read_ns (for the latency histogram). A cookie that is
  // already outstanding is counted in stats.duplicate_cookies (the kernel reuses a cookie only
  // after its group was answered, so this means a bookkeeping bug) and queued all the same, so
  // that each read group still gets its one answer. `attachment` is where the group came from.
  // `epoch` is the queue's epoch() when the group was read (the current one by default).
  void Add(uint32_t cookie, uint32_t code, uint64_t read_ns,
           AttachmentKey attachment = kNoPasidAttachment,
           std::optional<uint64_t> epoch = std::nullopt);

  // A group with `cookie` was read and will be answered later (it waits for room, pager.h): an
  // answer still queued for that cookie is stale (the kernel hands a cookie out again only once
  // it was answered, so it answered the old group itself) and is dropped now, as Add does, so
  // that it cannot reach the new group first. Counted in stats.duplicate_cookies and
  // responses_stale_dropped.
  void ReadAgain(uint32_t cookie);

  // The epoch fence of a drain. Returns the current epoch: groups read now carry it.
  uint64_t epoch() const { return epoch_; }
  // Starts a new epoch and fences `attachment` (every attachment when nullopt): from now on a
  // response to a group of it read in an older epoch is never written. The drain calls it when
  // it parks the attachment, after DropAttachment, so nothing should be left to stop; one that
  // still reaches BeginWrite is dropped there and counted in stats.stale_epoch_blocked (an
  // invariant violation: a bug, reported, never written).
  void Fence(std::optional<AttachmentKey> attachment);

  // Returns true when responses wait to be written (new ones or ones to re-send).
  bool HasUnwritten() const { return inflight_pos_ < inflight_.size() || !pending_.empty(); }
  // Called by Add when the first response is queued behind an empty queue, whoever adds it
  // (the fault loop learns which queues have answers to write without looking at every queue
  // each turn). Empty: none.
  void set_on_first_pending(std::function<void()> f) { on_first_pending_ = std::move(f); }
  bool write_in_flight() const { return writing_; }

  // Starts a write and returns the responses to pass to write(2). The span stays valid and
  // unchanged until CompleteWrite. Must not be called while a write is in flight; returns an
  // empty span when nothing is unwritten.
  std::span<const uapi::PageResponse> BeginWrite();

  // Finishes the write begun last with write(2)'s result: bytes written, or -errno. Returns
  // true when the fd is still usable; false when the error means the fd is dead (the responses
  // of that write and all queued ones are then abandoned and counted).
  bool CompleteWrite(ssize_t result, uint64_t now_ns);

  // Abandons every unwritten response (the fault fd is gone; the kernel answers its groups
  // itself when the fault object or the HWPT attachment goes away).
  void AbandonAll();

  // Drops, unwritten, every response not yet accepted that belongs to `attachment` (all of
  // them when nullopt), counting each in stats.responses_stale_dropped, and returns how many.
  // For a parked attachment: the kernel answered its groups itself, and a cookie written now
  // could name a newer group (cookies are reused lowest-first). Must not be called while a
  // write is in flight (returns 0 and drops nothing then).
  size_t DropAttachment(std::optional<AttachmentKey> attachment);

  // Batches (pager.h): the fault processor brackets the resolution of each batch of groups with
  // BeginBatch (which returns the batch's number) and EndBatch. A map unit a batch's answers rely
  // on is pinned until settled_batch() reaches that number.
  uint64_t BeginBatch() {
    resolving_ = true;
    return ++batch_;
  }
  void EndBatch() { resolving_ = false; }
  uint64_t batch() const { return batch_; }
  // Returns the newest batch whose every answer is settled (accepted, rejected, dropped or
  // abandoned): all of them when nothing is queued or being written (but not the batch being
  // resolved), else the batch of the last write that settled completely.
  uint64_t settled_batch() const {
    if (!writing_ && inflight_pos_ >= inflight_.size() && pending_.empty()) {
      return resolving_ ? batch_ - 1 : batch_;
    }
    return settled_batch_;
  }

  // Returns the number of responses queued or in flight that are not yet accounted for.
  size_t outstanding() const { return outstanding_.size() + untracked_; }
  // Records every answer owed, and its settling, in `ledger` (nullptr: none), so that a process
  // after a crash can write them (inflight_ledger.h). The ledger must outlive the queue.
  void set_ledger(InflightLedger* ledger) { ledger_ = ledger; }
  // For ResponseObligation: records INVALID as owed in the ledger for a group not yet answered
  // (OweIfLost), and clears that record (Dismiss).
  void OweInLedger(uint32_t cookie) {
    if (ledger_ != nullptr) ledger_->Owe(cookie, uapi::kRespInvalid);
  }
  void SettleInLedger(uint32_t cookie) {
    if (ledger_ != nullptr) ledger_->Settled(cookie);
  }

 private:
  // Removes the queued (or unsent, after a short write) answer for cookie; false when there is
  // none or it is being written.
  bool DropUnsent(uint32_t cookie);
  // Ends an in-flight answer: accepted (counted written; its latency recorded unless `record` is
  // false, for a caller that records a run of them at once) or rejected.
  void Settle(size_t index, bool accepted, uint64_t now_ns, bool record = true);
  // Removes cookie from the outstanding set (or one untracked duplicate) and from the ledger.
  void Forget(uint32_t cookie);
  // Returns true when a response read in `epoch` for `attachment` is behind a fence.
  bool Fenced(AttachmentKey attachment, uint64_t epoch) const;

  DeviceStats* stats_;
  std::vector<uapi::PageResponse> pending_;
  std::vector<uint64_t> pending_ts_;
  std::vector<AttachmentKey> pending_att_;
  std::vector<uint64_t> pending_epoch_;
  std::vector<uapi::PageResponse> inflight_;
  std::vector<uint64_t> inflight_ts_;
  std::vector<AttachmentKey> inflight_att_;
  size_t inflight_pos_ = 0;  // first response of inflight_ not yet settled
  bool writing_ = false;
  absl::flat_hash_set<uint32_t> outstanding_;
  size_t untracked_ = 0;  // duplicates queued while their cookie was outstanding
  uint64_t epoch_ = 0;
  uint64_t batch_ = 0;          // the last batch begun
  uint64_t write_batch_ = 0;    // the newest batch whose answers are all in the current write
  uint64_t settled_batch_ = 0;  // see settled_batch()
  std::function<void()> on_first_pending_;
  bool resolving_ = false;
  InflightLedger* ledger_ = nullptr;
  uint64_t fence_all_ = 0;                                  // epoch of the last whole fence
  std::vector<std::pair<AttachmentKey, uint64_t>> fences_;  // per attachment; few of them
};

// The promise to answer one group exactly once. Created when a group is read; Answer() queues
// its response. If an obligation is destroyed unanswered (an early return, a bug), it answers
// INVALID itself and counts stats.guard_answered, so a read group can never be left hanging.
// Move-only.
class ResponseObligation {
 public:
  ResponseObligation() = default;
  ResponseObligation(ResponseQueue* queue, DeviceStats* stats, uint32_t cookie, uint64_t read_ns,
                     AttachmentKey attachment = kNoPasidAttachment)
      : queue_(queue),
        stats_(stats),
        cookie_(cookie),
        read_ns_(read_ns),
        attachment_(attachment),
        epoch_(queue->epoch()) {}
  ResponseObligation(ResponseObligation&& o) noexcept
      : queue_(std::exchange(o.queue_, nullptr)),
        stats_(o.stats_),
        cookie_(o.cookie_),
        read_ns_(o.read_ns_),
        attachment_(o.attachment_),
        epoch_(o.epoch_) {}
  ResponseObligation& operator=(ResponseObligation&& o) noexcept;
  ResponseObligation(const ResponseObligation&) = delete;
  ResponseObligation& operator=(const ResponseObligation&) = delete;
  ~ResponseObligation();

  uint32_t cookie() const { return cookie_; }
  AttachmentKey attachment() const { return attachment_; }
  bool pending() const { return queue_ != nullptr; }
  // Ends the obligation without an answer: the group is gone (its attachment was parked and the
  // kernel answered it, counted in stats.responses_stale_dropped; or its fault fd died, counted
  // in stats.responses_abandoned). A second call does nothing.
  void Dismiss(bool fd_dead);
  // While the group waits to be resolved (pager.h: deferred for room), a crash must not leave
  // it pending: the in-flight ledger owes INVALID for it until it is answered.
  void OweIfLost();
  // Queues the response; a second call does nothing (and returns false).
  bool Answer(uint32_t code);

 private:
  void GuardAnswer();

  ResponseQueue* queue_ = nullptr;
  DeviceStats* stats_ = nullptr;
  uint32_t cookie_ = 0;
  uint64_t read_ns_ = 0;
  AttachmentKey attachment_ = kNoPasidAttachment;
  uint64_t epoch_ = 0;  // the queue's epoch when the group was read
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_RESPONSE_QUEUE_H_
