// One iommufd fault queue as iopfd reads and answers it: the read buffer and its limits, what a
// read's result means, what a response write's result means, and when the queue is given up.
//
// Reads and writes are issued by two callers: the fault loop's ring (asynchronous, poll-driven)
// and the synchronous paths (a drain's flush, a removal, the exit, crash recovery), which go
// through the syscall seam. Both hand every result to OnRead / OnWrite, so a result means the
// same thing whoever issued the read, and the read buffer's limit is decided here only.
#ifndef IOPFD_FAULT_FAULT_QUEUE_H_
#define IOPFD_FAULT_FAULT_QUEUE_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/fault_processor.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/fault/response_queue.h"
#include "iopfd/fault/stats.h"

namespace iopfd {

// The read buffer's size in records: where it starts, and how far an EINVAL read (a group
// larger than the buffer) may grow it (daemon.read_records, daemon.max_read_records).
struct ReadLimits {
  uint32_t initial = 256;
  uint32_t max = 65536;
};

class FaultQueue {
 public:
  // How a read was issued, which decides what an empty result means.
  enum class ReadMode {
    kPolled,      // the ring's read, after a poll said the queue was readable
    kUntilEmpty,  // a synchronous read that goes on until the queue is empty
  };
  // What a read's result means to whoever issued it.
  enum class ReadResult {
    kProcessed,  // records were read and processed: read again
    kEmpty,      // nothing queued: a synchronous reader stops, the ring polls again
    kGrown,      // the buffer was too small and grew: read again at once
    kRetry,      // a transient error (error() says which) or EINTR: read again
    kCanceled,   // the ring cancelled the read: do not read again
    kFailed,     // reading is given up (read_failed(); on_failed was called)
  };

  // fd is the fault queue (not owned; non-blocking); stats, responses and processor belong to
  // the device and must outlive the queue. name names the device in errors and logs.
  FaultQueue(std::string name, int fd, Syscalls* sys, ReadLimits limits, DeviceStats* stats,
             ResponseQueue* responses, FaultProcessor* processor);

  int fd() const { return fd_; }
  // The device's name, its answers, its counters.
  const std::string& name() const { return name_; }
  ResponseQueue& responses() { return *responses_; }
  const DeviceStats& stats() const { return *stats_; }

  // Reads go to the ledger's buffer from now on (inflight_ledger.h), never larger than its
  // capacity.
  void set_ledger(InflightLedger* ledger);
  // Returns the buffer for the read about to be issued (with a ledger: numbered and marked
  // live there).
  std::span<uapi::PageFault> BeginRead();
  // Returns the buffer reads land in: a whole number of records.
  std::span<uapi::PageFault> read_buffer();
  // Returns the buffer's size in records.
  uint32_t read_records() const { return read_records_; }

  // Classifies and acts on a read's result (bytes read, or -errno): records are processed
  // (counted in stats.reads); EINVAL grows the buffer, or gives reading up at limits.max; an
  // empty polled read is counted, and a long run of them gives reading up (an fd that polls
  // readable and never has anything is not a working fault queue); other errors are retried,
  // and a long run of them gives reading up. Returns what the issuer does next.
  ReadResult OnRead(ssize_t res, ReadMode mode, uint64_t now_ns);
  // The error of the last kRetry result (OK after EINTR), naming the device and errno.
  const absl::Status& error() const { return error_; }
  // Processes the first `records` records of the read buffer and, with a ledger, marks them
  // consumed once their answers are queued.
  void ProcessRead(size_t records, uint64_t read_ns);

  // Reads the queue until it is empty (or deadline_ns passes) and processes what it reads,
  // synchronously through the syscall seam. Returns the first transient error (the group stays
  // queued; nothing is lost), else OK; reading given up is OK here (on_failed said why).
  absl::Status ReadAvailable(uint64_t deadline_ns);

  // Classifies and acts on a response write's result (bytes written, or -errno; the write
  // began with responses().BeginWrite()). Returns false when the fd is dead: what is owed is
  // abandoned (counted) and the queue is given up for writing and reading.
  bool OnWrite(ssize_t res, uint64_t now_ns);
  // Writes every queued response synchronously. Returns OK, or the error of a write that gave
  // the queue up (naming device and errno); a queue already given up abandons what is queued
  // and returns OK. Does nothing while the ring writes this queue (a second write of the same
  // batch would answer its cookies twice).
  absl::Status WriteQueued();

  // Reading stops when reads fail for good; responses already owed are still written.
  bool read_failed() const { return read_failed_; }
  // Writing stops when write() says the fd is dead; reading stops with it (nothing read could
  // be answered).
  bool write_failed() const { return write_failed_; }
  // Gives reading (and with MarkWriteFailed writing) up and calls on_failed(why), once.
  void MarkReadFailed(const std::string& why);
  void MarkWriteFailed(const std::string& why);

  // Called once when the queue is given up (reading or writing), with why in words (without
  // the device's name). Set by the loop that serves the device, which logs it and tells the
  // daemon (FaultLoop::on_device_failed); may be empty.
  std::function<void(const std::string& why)> on_failed;

  // Consecutive failed reads, and empty polled reads, before reading is given up.
  static constexpr int kMaxReadErrors = 100;
  static constexpr int kMaxEmptyReads = 1000;

 private:
  // Doubles the read buffer up to limits_.max (and the ledger's capacity). False at the limit.
  bool GrowReadBuffer();

  std::string name_;
  int fd_;
  Syscalls* sys_;
  ReadLimits limits_;
  DeviceStats* stats_;
  ResponseQueue* responses_;
  FaultProcessor* processor_;
  InflightLedger* ledger_ = nullptr;
  std::vector<uapi::PageFault> buffer_;  // without a ledger
  uint32_t read_records_;
  int read_errors_ = 0;
  int empty_in_a_row_ = 0;
  absl::Status error_;
  bool read_failed_ = false;
  bool write_failed_ = false;
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_FAULT_QUEUE_H_
