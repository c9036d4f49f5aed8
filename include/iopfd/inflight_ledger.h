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
//  - the read buffer itself: the kernel copies records straight into it, and iopfd zeroes the
//    records once they are processed. Records found there by the next process were read from
//    the kernel (their groups hold cookies) but never turned into answers.
//  - one slot per cookie: the answer owed for each group processed but not yet accepted by the
//    kernel, set when the answer is queued, cleared when the write is settled.
// The next process takes both before it reads anything: owed answers are written again (the
// kernel rejects with EINVAL those it already accepted; it cannot have handed such a cookie out
// again, since it reuses a cookie only after a read, and nothing read since), unprocessed
// records are resolved like fresh ones. Order: the owed slot of a group is set before its
// records are zeroed, so a crash between the two leaves the group in both places; the owed
// answer wins.
#ifndef IOPFD_INFLIGHT_LEDGER_H_
#define IOPFD_INFLIGHT_LEDGER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/fd.h"
#include "iopfd/uapi.h"

namespace iopfd {

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
  // The first `records` records of the buffer (at most capacity()), to read into. Records the
  // read leaves untouched stay zero. Records past the largest size asked for so far are never
  // looked at after a crash.
  std::span<uapi::PageFault> Buffer(uint32_t records);
  // Records that `records` records at the start of the buffer were processed: zeroes them.
  // Call after every answer of those records was queued (Owe).
  void Consumed(size_t records);
  // An answer is owed for cookie (code is what will be written).
  void Owe(uint32_t cookie, uint32_t code);
  // The answer for cookie is settled (accepted, rejected, dropped or abandoned).
  void Settled(uint32_t cookie);
  // Every answer is settled (the fault fd failed: nothing can be written any more).
  void SettleAll();

  struct Leftovers {
    std::vector<uapi::PageResponse> owed;      // answers to write again
    std::vector<uapi::PageFault> unprocessed;  // records to resolve, whole groups
    size_t buffered = 0;                       // records found in the buffer (Consumed() them)
  };
  // Returns what a previous process left (see above), records whose cookie has an owed answer
  // left out of `unprocessed`. Changes nothing: the caller settles each owed answer once
  // written and consumes the buffered records once their answers are queued, so a crash in
  // the middle of a recovery leaves the rest for the next one.
  Leftovers FindLeftovers() const;

  // Groups not recorded because their cookie was too large.
  uint64_t untracked() const { return untracked_; }

 private:
  InflightLedger(UniqueFd fd, void* map, size_t size);
  struct Header;
  Header* header() const;
  uint32_t* slots() const;
  uapi::PageFault* records() const;

  UniqueFd fd_;
  void* map_ = nullptr;
  size_t size_ = 0;
  uint32_t capacity_ = 0;
  uint64_t untracked_ = 0;
};

}  // namespace iopfd

#endif  // IOPFD_INFLIGHT_LEDGER_H_
