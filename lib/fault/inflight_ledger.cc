#include "iopfd/fault/inflight_ledger.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"

namespace iopfd {
namespace {

constexpr char kMagic[8] = {'I', 'O', 'P', 'F', 'L', 'D', 'G', 'R'};
constexpr uint32_t kVersion = 1;
constexpr size_t kPage = 4096;

size_t PageAlign(size_t n) { return (n + kPage - 1) / kPage * kPage; }
size_t SlotsOffset() { return kPage; }
size_t RecordsOffset() {
  return SlotsOffset() + PageAlign(2 * sizeof(uint32_t) * InflightLedger::kCookieSlots);
}
size_t FileSize(uint32_t records) {
  return RecordsOffset() + PageAlign(sizeof(uapi::PageFault) * records);
}

// Keeps the compiler from moving ledger stores across this point: a crash must find them in
// program order (the CPU keeps stores in order on x86, and a process's death does not undo
// stores it executed; the memfd's pages outlive it).
void StoreOrder() { std::atomic_signal_fence(std::memory_order_seq_cst); }

bool IsZero(const uapi::PageFault& r) {
  static const uapi::PageFault kZero{};
  return std::memcmp(&r, &kZero, sizeof(r)) == 0;
}

}  // namespace

// Page 0 of the file. buffer_in_use is the largest buffer size a read was given: records past
// it were never written by the kernel. read_seq numbers the reads; buffer_live is 1 from a
// read's start until its records are consumed.
struct InflightLedger::Header {
  char magic[8];
  uint32_t version;
  uint32_t record_size;
  uint32_t capacity;
  uint32_t cookie_slots;
  uint32_t buffer_in_use;
  uint32_t read_seq;
  uint32_t buffer_live;
  uint32_t reserved;
};

// One cookie's owed answer: code + 1 (0: nothing owed), and the read that delivered its group.
struct InflightLedger::Slot {
  uint32_t code_plus_one;
  uint32_t read_seq;
};

InflightLedger::InflightLedger(UniqueFd fd, void* map, size_t size)
    : fd_(std::move(fd)), map_(map), size_(size), capacity_(header()->capacity) {}

InflightLedger::~InflightLedger() {
  if (map_ != nullptr) munmap(map_, size_);
}

InflightLedger::Header* InflightLedger::header() const { return static_cast<Header*>(map_); }
InflightLedger::Slot* InflightLedger::slots() const {
  return reinterpret_cast<Slot*>(static_cast<char*>(map_) + SlotsOffset());
}
uapi::PageFault* InflightLedger::records() const {
  return reinterpret_cast<uapi::PageFault*>(static_cast<char*>(map_) + RecordsOffset());
}

absl::StatusOr<std::unique_ptr<InflightLedger>> InflightLedger::Create(const std::string& device,
                                                                       uint32_t max_records) {
  if (max_records == 0) max_records = 1;
  const std::string name = device + ": in-flight ledger";
  UniqueFd fd(memfd_create(("iopfd-ledger-" + device).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus(errno, name, "memfd_create");
  const size_t size = FileSize(max_records);
  // A hole until written: the buffer costs memory only as far as reads fill it.
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, name, "ftruncate");
  }
  // Its size is fixed for good: the next process maps exactly this much.
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus(errno, name, "fcntl(F_ADD_SEALS)");
  }
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return ErrnoStatus(errno, name, "mmap");
  auto* h = static_cast<Header*>(map);
  std::memcpy(h->magic, kMagic, sizeof(kMagic));
  h->version = kVersion;
  h->record_size = sizeof(uapi::PageFault);
  h->capacity = max_records;
  h->cookie_slots = kCookieSlots;
  h->buffer_in_use = 0;
  h->read_seq = 0;
  h->buffer_live = 0;
  return std::unique_ptr<InflightLedger>(new InflightLedger(std::move(fd), map, size));
}

absl::StatusOr<std::unique_ptr<InflightLedger>> InflightLedger::Open(const std::string& device,
                                                                     UniqueFd fd) {
  const std::string name = device + ": in-flight ledger";
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, name, "fstat");
  const auto size = static_cast<size_t>(st.st_size);
  if (size < FileSize(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", size, " bytes, too small to be one"));
  }
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return ErrnoStatus(errno, name, "mmap");
  const auto* h = static_cast<const Header*>(map);
  std::string bad;
  if (std::memcmp(h->magic, kMagic, sizeof(kMagic)) != 0) {
    bad = "not a ledger (magic)";
  } else if (h->version != kVersion) {
    bad = absl::StrCat("version ", h->version, ", expected ", kVersion);
  } else if (h->record_size != sizeof(uapi::PageFault) || h->cookie_slots != kCookieSlots) {
    bad = absl::StrCat("record size ", h->record_size, " and ", h->cookie_slots,
                       " cookie slots, expected ", sizeof(uapi::PageFault), " and ", kCookieSlots);
  } else if (h->capacity == 0 || FileSize(h->capacity) != size || h->buffer_in_use > h->capacity ||
             h->buffer_live > 1) {
    bad = absl::StrCat("capacity ", h->capacity, " (in use ", h->buffer_in_use,
                       ") does not match its size ", size);
  }
  if (!bad.empty()) {
    munmap(map, size);
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", bad));
  }
  return std::unique_ptr<InflightLedger>(new InflightLedger(std::move(fd), map, size));
}

std::span<uapi::PageFault> InflightLedger::BeginRead(uint32_t records) {
  if (records > capacity_) records = capacity_;
  Header* h = header();
  if (records > h->buffer_in_use) h->buffer_in_use = records;
  ++h->read_seq;
  StoreOrder();
  h->buffer_live = 1;  // before the read is issued: its records count from now on
  StoreOrder();
  return {this->records(), records};
}

std::span<uapi::PageFault> InflightLedger::Buffer(uint32_t records) {
  return {this->records(), records > capacity_ ? capacity_ : records};
}

void InflightLedger::Consumed(size_t n) {
  if (n > capacity_) n = capacity_;
  StoreOrder();  // the answers' Owe() before the buffer dies
  header()->buffer_live = 0;
  StoreOrder();  // a crash inside the memset finds a dead buffer, whatever is left in it
  std::memset(static_cast<void*>(records()), 0, n * sizeof(uapi::PageFault));
  StoreOrder();
}

void InflightLedger::Owe(uint32_t cookie, uint32_t code) {
  if (cookie >= kCookieSlots) {
    ++untracked_;
    return;
  }
  // read_seq first, then the code that makes the slot count.
  slots()[cookie].read_seq = header()->read_seq;
  StoreOrder();
  slots()[cookie].code_plus_one = code + 1;
}

void InflightLedger::Settled(uint32_t cookie) {
  if (cookie < kCookieSlots) slots()[cookie].code_plus_one = 0;
}

void InflightLedger::SettleAll() {
  std::memset(static_cast<void*>(slots()), 0, sizeof(Slot) * kCookieSlots);
}

size_t InflightLedger::WrittenRecords() const {
  // Reading a hole through the mapping would allocate it (shmem faults pages in even for reads),
  // so the holes are skipped: the end of the last data extent bounds what can hold a record.
  const auto begin = static_cast<off_t>(RecordsOffset());
  const auto end = static_cast<off_t>(size_);
  off_t last = begin;
  for (off_t pos = begin; pos < end;) {
    const off_t data = lseek(fd_.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data past pos
      return capacity_;           // no SEEK_DATA here: look at everything
    }
    if (data >= end) break;
    const off_t hole = lseek(fd_.get(), data, SEEK_HOLE);
    if (hole < 0) return capacity_;
    last = std::min(hole, end);
    pos = hole;
  }
  const auto n =
      static_cast<size_t>(last - begin + sizeof(uapi::PageFault) - 1) / sizeof(uapi::PageFault);
  return std::min<size_t>(n, capacity_);
}

InflightLedger::Leftovers InflightLedger::FindLeftovers() const {
  Leftovers out;
  const Header* h = header();
  const Slot* s = slots();
  // The live buffer: the kernel fills it from the start and never splits a group, and a
  // group's last record carries IOMMU_PGFAULT_FLAGS_LAST_PAGE, so what the read returned is
  // everything up to the last record that is not all zero.
  // A dead buffer's records were all answered, but they may not all be zero: a crash inside
  // Consumed()'s zeroing leaves some behind. They must be cleared before the next read, which
  // overwrites only as many records as it returns: were they left, a later crash would count
  // them as part of that read. The whole buffer is looked at, not only as far as reads went:
  // the file outlived its writer and is not trusted to be zero past buffer_in_use.
  const uapi::PageFault* r = records();
  size_t dirty = 0;
  for (size_t i = WrittenRecords(); i > 0; --i) {
    if (!IsZero(r[i - 1])) {
      dirty = i;
      break;
    }
  }
  const size_t used = h->buffer_live == 1 ? std::min<size_t>(dirty, h->buffer_in_use) : 0;
  absl::flat_hash_set<uint32_t> buffered;
  for (size_t i = 0; i < used; ++i) buffered.insert(r[i].cookie);
  // An owed cookie also in the buffer: the same group when the slot is of this read (the
  // answer stands, the records are skipped); else the kernel accepted the old answer and gave
  // the cookie to the buffered group (the old answer is stale).
  absl::flat_hash_set<uint32_t> answered_here;
  for (uint32_t c = 0; c < kCookieSlots; ++c) {
    if (s[c].code_plus_one == 0) continue;
    if (buffered.count(c) != 0 && s[c].read_seq != h->read_seq) {
      out.stale.push_back(c);
      continue;
    }
    // The file outlived the process that wrote it and is read as hostile: a code the kernel
    // does not know would be refused and leave the group pending, so it becomes INVALID.
    uint32_t code = s[c].code_plus_one - 1;
    if (code != uapi::kRespSuccess && code != uapi::kRespInvalid) code = uapi::kRespInvalid;
    out.owed.push_back({c, code});
    answered_here.insert(c);
  }
  for (size_t i = 0; i < used; ++i) {
    if (!IsZero(r[i]) && answered_here.count(r[i].cookie) == 0) out.unprocessed.push_back(r[i]);
  }
  out.buffered = dirty;
  return out;
}

absl::StatusOr<InflightLedger::Answered> InflightLedger::AnswerAllLeftovers(
    const std::string& device, int fault_fd, Syscalls& sys) {
  Leftovers left = FindLeftovers();
  std::vector<uapi::PageResponse> answers = left.owed;
  absl::flat_hash_set<uint32_t> seen;
  for (const uapi::PageFault& r : left.unprocessed) {
    if (seen.insert(r.cookie).second) answers.push_back({r.cookie, uapi::kRespInvalid});
  }
  Answered out;
  out.groups = answers.size() - left.owed.size();
  for (const uapi::PageResponse& a : answers) {
    ssize_t n = WriteWaiting(sys, fault_fd, a);
    if (n == static_cast<ssize_t>(sizeof(a))) {
      ++out.accepted;
    } else if (n == -EINVAL) {
      ++out.rejected;
    } else {
      return ErrnoStatus(n < 0 ? static_cast<int>(-n) : EIO, device,
                         "write an answer a previous iopfd owed");
    }
  }
  for (uint32_t c : left.stale) Settled(c);
  SettleAll();
  Consumed(left.buffered);
  return out;
}

InflightLedger::Answered InflightLedger::WriteOwed(const Leftovers& left, const std::string& device,
                                                   int fault_fd, Syscalls& sys,
                                                   absl::Status* error) {
  Answered out;
  for (const uapi::PageResponse& r : left.owed) {
    ssize_t n = WriteWaiting(sys, fault_fd, r);
    if (n == static_cast<ssize_t>(sizeof(r))) {
      ++out.accepted;
    } else if (n == -EINVAL) {
      // The dead process's write had reached the kernel; its completion had not reached it.
      ++out.rejected;
    } else if (error->ok()) {
      *error = ErrnoStatus(n < 0 ? static_cast<int>(-n) : EIO, device,
                           "write an answer a previous iopfd owed");
    }
    Settled(r.cookie);
  }
  // Answers the kernel had accepted before their cookies went to the buffered groups.
  for (uint32_t c : left.stale) Settled(c);
  return out;
}

ssize_t WriteWaiting(Syscalls& sys, int fd, const uapi::PageResponse& answer) {
  // A fault fd's write never waits, but the fd is whatever the owner handed over: one that is
  // not ready gets a few seconds, not an answer lost.
  ssize_t n = 0;
  for (int tries = 0; tries < 50; ++tries) {
    n = sys.Write(fd, &answer, sizeof(answer));
    if (n >= 0 || (n != -EAGAIN && n != -EINTR)) return n;
    if (n == -EAGAIN) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return n;
}

}  // namespace iopfd
