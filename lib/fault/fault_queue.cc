#include "iopfd/fault/fault_queue.h"

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"

namespace iopfd {

FaultQueue::FaultQueue(std::string name, int fd, Syscalls* sys, ReadLimits limits,
                       DeviceStats* stats, ResponseQueue* responses, FaultProcessor* processor)
    : name_(std::move(name)),
      fd_(fd),
      sys_(sys),
      limits_(limits),
      stats_(stats),
      responses_(responses),
      processor_(processor),
      read_records_(std::clamp<uint32_t>(limits.initial, 1, std::max<uint32_t>(limits.max, 1))) {
  buffer_.resize(read_records_);
}

void FaultQueue::set_ledger(InflightLedger* ledger) {
  ledger_ = ledger;
  std::vector<uapi::PageFault>().swap(buffer_);
  read_records_ = std::min(read_records_, ledger_->capacity());
  responses_->set_ledger(ledger_);
}

std::span<uapi::PageFault> FaultQueue::BeginRead() {
  return ledger_ != nullptr ? ledger_->BeginRead(read_records_)
                            : std::span<uapi::PageFault>(buffer_);
}

std::span<uapi::PageFault> FaultQueue::read_buffer() {
  return ledger_ != nullptr ? ledger_->Buffer(read_records_) : std::span<uapi::PageFault>(buffer_);
}

void FaultQueue::ProcessRead(size_t records, uint64_t read_ns) {
  processor_->Process(read_buffer().first(records), read_ns);
  if (ledger_ != nullptr) ledger_->Consumed(records);
}

bool FaultQueue::GrowReadBuffer() {
  // A ledger's buffer has the size max_read_records had when it was made.
  uint32_t max = limits_.max;
  if (ledger_ != nullptr) max = std::min(max, ledger_->capacity());
  if (read_records_ >= max) return false;
  read_records_ = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{read_records_} * 2, max));
  if (ledger_ == nullptr) buffer_.resize(read_records_);
  ++stats_->read_grows;
  return true;
}

FaultQueue::ReadResult FaultQueue::OnRead(ssize_t res, ReadMode mode, uint64_t now_ns) {
  error_ = absl::OkStatus();
  if (res > 0) {
    read_errors_ = 0;
    empty_in_a_row_ = 0;
    ++stats_->reads;
    ProcessRead(static_cast<size_t>(res) / sizeof(uapi::PageFault), now_ns);
    return ReadResult::kProcessed;
  }
  if (res == 0 || res == -EAGAIN) {
    if (mode == ReadMode::kUntilEmpty) return ReadResult::kEmpty;
    // Another reader emptied the queue between poll and read (adopt mode shares the file). A
    // fault fd does that rarely; one that polls readable and reads nothing every time is not a
    // fault queue (a wrong descriptor handed over, a peer gone) and would spin the loop.
    ++stats_->empty_reads;
    if (++empty_in_a_row_ >= kMaxEmptyReads) {
      MarkReadFailed(absl::StrCat(kMaxEmptyReads,
                                  " reads in a row found nothing although the fd polled "
                                  "readable: not a working fault queue; no longer reading"));
      return ReadResult::kFailed;
    }
    return ReadResult::kEmpty;
  }
  if (res == -EINVAL) {
    // The first queued group has more records than the buffer holds (eventq.c returns EINVAL
    // only then, when nothing was copied).
    if (GrowReadBuffer()) return ReadResult::kGrown;
    MarkReadFailed(absl::StrCat("a page request group exceeds ", limits_.max,
                                " records (max_read_records); no longer reading"));
    return ReadResult::kFailed;
  }
  if (res == -ECANCELED) return ReadResult::kCanceled;
  if (res == -EINTR) return ReadResult::kRetry;
  // EFAULT, ENOMEM (the cookie allocation) and the like: the group stays queued in the kernel,
  // so retry; give up reading after a run of failures. Responses owed still go out.
  error_ = ErrnoStatus(static_cast<int>(-res), name_,
                       mode == ReadMode::kPolled ? "read fault fd" : "read fault fd (synchronous)");
  if (++read_errors_ >= kMaxReadErrors) {
    MarkReadFailed(absl::StrCat(kMaxReadErrors, " read errors in a row (the last: ",
                                error_.message(), "); no longer reading"));
    return ReadResult::kFailed;
  }
  return ReadResult::kRetry;
}

absl::Status FaultQueue::ReadAvailable(uint64_t deadline_ns) {
  while (!read_failed_ && MonotonicNs() < deadline_ns) {
    auto buf = BeginRead();
    ssize_t n = sys_->Read(fd_, buf.data(), buf.size_bytes());
    switch (OnRead(n, ReadMode::kUntilEmpty, MonotonicNs())) {
      case ReadResult::kProcessed:
      case ReadResult::kGrown:
        continue;
      case ReadResult::kRetry:
        if (!error_.ok()) return error_;  // the caller decides when to try again
        continue;                         // EINTR
      case ReadResult::kEmpty:
      case ReadResult::kCanceled:
      case ReadResult::kFailed:
        return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

bool FaultQueue::OnWrite(ssize_t res, uint64_t now_ns) {
  if (responses_->CompleteWrite(res, now_ns)) {
    // Answers settled release the units they pinned: groups waiting for room try again (their
    // answers go out with the next write).
    if (processor_ != nullptr && processor_->deferred() != 0 && !responses_->write_in_flight()) {
      processor_->RetryDeferred(now_ns);
    }
    return true;
  }
  MarkWriteFailed(
      std::string(ErrnoStatus(static_cast<int>(-res), "", "write fault responses").message()));
  return false;
}

absl::Status FaultQueue::WriteQueued() {
  // The ring is writing this queue's answers: never begin a second write of the same batch (it
  // would answer those cookies twice); the ring's completion goes on with the rest.
  if (responses_->write_in_flight()) return absl::OkStatus();
  // Groups waiting for room with nothing else to write: their last round (the synchronous
  // paths are a drain's flush, a removal, the exit: everything read is answered before).
  if (processor_ != nullptr && processor_->deferred() != 0 && !responses_->HasUnwritten()) {
    processor_->RetryDeferred(MonotonicNs());
  }
  while (responses_->HasUnwritten()) {
    if (write_failed_) {
      responses_->AbandonAll();
      return absl::OkStatus();
    }
    auto span = responses_->BeginWrite();
    ssize_t w = sys_->Write(fd_, span.data(), span.size_bytes());
    if (!OnWrite(w, MonotonicNs())) {
      return ErrnoStatus(static_cast<int>(-w), name_, "write fault responses (synchronous)");
    }
  }
  return absl::OkStatus();
}

void FaultQueue::MarkReadFailed(const std::string& why) {
  if (read_failed_) return;
  read_failed_ = true;
  if (on_failed) on_failed(why);
}

void FaultQueue::MarkWriteFailed(const std::string& why) {
  if (write_failed_) return;
  // Reported even when reading was given up before (a group too large, say): a dead fd is
  // news, and from now on what is owed is abandoned.
  write_failed_ = read_failed_ = true;
  // Nothing read can be answered any more, the groups waiting for room included.
  if (processor_ != nullptr) processor_->DismissDeferred(std::nullopt, /*fd_dead=*/true);
  if (on_failed) on_failed(why);
}

}  // namespace iopfd
