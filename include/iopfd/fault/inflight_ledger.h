// What a crashed iopfd leaves behind on a fault queue that outlives it, recorded so that the next
// process can answer it.
//
// A device adopted at run time keeps its fault fd in systemd's fd store across restarts. A clean
// stop answers every group first; a crash (SIGKILL, a watchdog abort, a bug) does not, and the
// kernel keeps each group it handed out pending until it is answered or the fault fd closes
// (drivers/iommu/iommufd/eventq.c). The fd does not close (the store holds it), so without a
// record those groups would stay pending forever and the device's requests would hang.
//
// The ledger is a memfd, stored with the device's descriptors, holding two things:
//  - the read buffer itself: the kernel copies records straight into it. Each read is numbered
//    (BeginRead, before the read is issued) and marks the buffer live; once its records are
//    processed the buffer is marked dead (one aligned store) and then zeroed. Records found in
//    a live buffer by the next process were read from the kernel (their groups hold cookies)
//    and may not have been turned into answers.
//  - one slot per cookie: the answer owed for each group processed but not yet accepted by the
//    kernel, with the number of the read that delivered the group; set when the answer is
//    queued, cleared when the write is settled.
// The next process takes both before it reads anything. A cookie both owed and in the live
// buffer is either the same group (processed, its answer queued, the crash came before the
// buffer was consumed: same read number; the owed answer stands and its records are skipped) or
// a new group that reused a cookie whose old answer the kernel had accepted just before the
// crash (an older read number: the stale answer is dropped and the group resolved). Every other
// owed answer is written again: the kernel rejects with EINVAL those it had already accepted,
// and cannot have handed such a cookie out again, since it reuses a cookie only at a read and
// the only read after the slot was set is the one in the buffer. Answers to the unprocessed
// groups are written synchronously too, before the first read: a group the kernel answered
// itself meanwhile (the owner detached) then costs a harmless EINVAL, not a stale answer on a
// new group with its cookie. Nothing here holds if someone else reads the same fault file while
// iopfd is down (adopt mode shares it with the owner, who must not read it).
#ifndef IOPFD_FAULT_INFLIGHT_LEDGER_H_
#define IOPFD_FAULT_INFLIGHT_LEDGER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/base/uapi.h"

namespace iopfd {

// Writes one answer to a fault fd through the syscall seam, waiting (up to about 5 s) while the
// fd is not ready. Returns the write's result (bytes, or -errno).
ssize_t WriteWaiting(Syscalls& sys, int fd, const uapi::PageResponse& answer);

class InflightLedger {
 public:
  // Cookies the kernel hands out lowest-first (xa_alloc): a cookie at or above this needs as
  // many groups pending at once, which no device does; such a group is not recorded (counted in
  // untracked()).
  static constexpr uint32_t kCookieSlots = 65536;

  // Creates an empty ledger for a read buffer of up to max_records records, in a memfd whose
  // size is sealed. Returns it, or an error naming the device and the failing call (memfd_create,
  // ftruncate, fcntl seals, mmap) with its errno.
  static absl::StatusOr<std::unique_ptr<InflightLedger>> Create(const std::string& device,
                                                                uint32_t max_records);
  // Maps a ledger a previous process created (handed back by the fd store). Returns it, or
  // InvalidArgument naming the device when the file is not one (wrong size, magic, version or
  // record size), or an errno error for fstat/mmap.
  static absl::StatusOr<std::unique_ptr<InflightLedger>> Open(const std::string& device,
                                                              UniqueFd fd);
  ~InflightLedger();
  InflightLedger(const InflightLedger&) = delete;
  InflightLedger& operator=(const InflightLedger&) = delete;

  // The memfd, for the fd store.
  int fd() const { return fd_.get(); }
  // How many records the buffer can hold.
  uint32_t capacity() const { return capacity_; }
  // Starts a read: numbers it, marks the buffer live and returns its first `records` records
  // (at most capacity()) to read into. The buffer must be consumed (all zero). Records the read
  // leaves untouched stay zero; records past the largest size asked for are never looked at.
  std::span<uapi::PageFault> BeginRead(uint32_t records);
  // The first `records` records of the buffer, to process what the last read returned.
  std::span<uapi::PageFault> Buffer(uint32_t records);
  // Records that the first `records` records of the buffer were processed: marks the buffer
  // dead, then zeroes them. Call after every answer of those records was queued (Owe).
  void Consumed(size_t records);
  // An answer is owed for cookie (code is what will be written); its group came from the
  // current read.
  void Owe(uint32_t cookie, uint32_t code);
  // The answer for cookie is settled (accepted, rejected, dropped or abandoned).
  void Settled(uint32_t cookie);
  // Every answer is settled (the fault fd failed: nothing can be written any more).
  void SettleAll();

  struct Leftovers {
    std::vector<uapi::PageResponse> owed;      // answers to write again
    std::vector<uapi::PageFault> unprocessed;  // records to resolve, whole groups
    std::vector<uint32_t> stale;               // owed answers superseded by a reused cookie
    // Records to clear (Consumed()) once the answers are written: those of a live buffer, and
    // any a crash inside the zeroing left in a dead one.
    size_t buffered = 0;
  };
  // Returns what a previous process left (see above). Changes nothing: the caller settles each
  // owed answer once written (and each stale one), and consumes the buffered records once their
  // answers are written, so a crash in the middle of a recovery leaves the rest for the next.
  Leftovers FindLeftovers() const;

  // For a device handed back instead of served again (its stored adoption could not be
  // replayed): answers, synchronously on fault_fd, every owed answer and every unprocessed
  // group (INVALID: nothing can resolve it now), then clears the ledger, so the owner's queue
  // is left with nothing pending that iopfd read. Returns how many answers the kernel accepted
  // and how many it rejected (already answered), and how many of the answers were for
  // unprocessed groups; an error names the device and errno when a write fails otherwise (the
  // rest is not written).
  struct Answered {
    size_t accepted = 0;
    size_t rejected = 0;
    size_t groups = 0;
  };
  absl::StatusOr<Answered> AnswerAllLeftovers(const std::string& device, int fault_fd,
                                              Syscalls& sys);

  // For a device served again on the same queue: writes the owed answers of `left` on
  // fault_fd, settling each (Device::UseLedger resolves the unprocessed groups itself). Returns
  // how many the kernel accepted and how many it rejected (a dead process's write that had
  // reached the kernel; harmless); *error gets the first other failure, naming device and
  // errno (that answer is given up, the others are still written).
  Answered WriteOwed(const Leftovers& left, const std::string& device, int fault_fd, Syscalls& sys,
                     absl::Status* error);

  // Groups not recorded because their cookie was too large.
  uint64_t untracked() const { return untracked_; }

 private:
  InflightLedger(UniqueFd fd, void* map, size_t size);
  struct Header;
  Header* header() const;
  struct Slot;
  Slot* slots() const;
  uapi::PageFault* records() const;
  // How many records of the buffer were ever written (rounded up to whole pages of the file):
  // the rest are holes, zero.
  size_t WrittenRecords() const;

  UniqueFd fd_;
  void* map_ = nullptr;
  size_t size_ = 0;
  uint32_t capacity_ = 0;
  uint64_t untracked_ = 0;
};

}  // namespace iopfd

#endif  // IOPFD_FAULT_INFLIGHT_LEDGER_H_
