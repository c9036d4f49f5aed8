#include "iopfd/inflight_ledger.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "iopfd/errors.h"

namespace iopfd {
namespace {

constexpr char kMagic[8] = {'I', 'O', 'P', 'F', 'L', 'D', 'G', 'R'};
constexpr uint32_t kVersion = 1;
constexpr size_t kPage = 4096;

size_t PageAlign(size_t n) { return (n + kPage - 1) / kPage * kPage; }
size_t SlotsOffset() { return kPage; }
size_t RecordsOffset() {
  return SlotsOffset() + PageAlign(sizeof(uint32_t) * InflightLedger::kCookieSlots);
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
// it were never written by the kernel.
struct InflightLedger::Header {
  char magic[8];
  uint32_t version;
  uint32_t record_size;
  uint32_t capacity;
  uint32_t cookie_slots;
  uint32_t buffer_in_use;
  uint32_t reserved;
};

InflightLedger::InflightLedger(UniqueFd fd, void* map, size_t size)
    : fd_(std::move(fd)), map_(map), size_(size), capacity_(header()->capacity) {}

InflightLedger::~InflightLedger() {
  if (map_ != nullptr) munmap(map_, size_);
}

InflightLedger::Header* InflightLedger::header() const { return static_cast<Header*>(map_); }
uint32_t* InflightLedger::slots() const {
  return reinterpret_cast<uint32_t*>(static_cast<char*>(map_) + SlotsOffset());
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
  } else if (h->capacity == 0 || FileSize(h->capacity) != size || h->buffer_in_use > h->capacity) {
    bad = absl::StrCat("capacity ", h->capacity, " (in use ", h->buffer_in_use,
                       ") does not match its size ", size);
  }
  if (!bad.empty()) {
    munmap(map, size);
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", bad));
  }
  return std::unique_ptr<InflightLedger>(new InflightLedger(std::move(fd), map, size));
}

std::span<uapi::PageFault> InflightLedger::Buffer(uint32_t records) {
  if (records > capacity_) records = capacity_;
  if (records > header()->buffer_in_use) header()->buffer_in_use = records;
  return {this->records(), records};
}

void InflightLedger::Consumed(size_t n) {
  if (n > capacity_) n = capacity_;
  StoreOrder();  // the answers' Owe() before the records disappear
  std::memset(static_cast<void*>(records()), 0, n * sizeof(uapi::PageFault));
  StoreOrder();
}

void InflightLedger::Owe(uint32_t cookie, uint32_t code) {
  if (cookie >= kCookieSlots) {
    ++untracked_;
    return;
  }
  slots()[cookie] = code + 1;
}

void InflightLedger::Settled(uint32_t cookie) {
  if (cookie < kCookieSlots) slots()[cookie] = 0;
}

void InflightLedger::SettleAll() {
  std::memset(static_cast<void*>(slots()), 0, sizeof(uint32_t) * kCookieSlots);
}

InflightLedger::Leftovers InflightLedger::FindLeftovers() const {
  Leftovers out;
  absl::flat_hash_set<uint32_t> owed;
  uint32_t* s = slots();
  for (uint32_t c = 0; c < kCookieSlots; ++c) {
    if (s[c] == 0) continue;
    out.owed.push_back({c, s[c] - 1});
    owed.insert(c);
  }
  // The kernel fills the buffer from the start and never splits a group, and a group's last
  // record carries IOMMU_PGFAULT_FLAGS_LAST_PAGE: the records read but not processed are those
  // up to the last one that is not all zero.
  const uapi::PageFault* r = records();
  size_t used = 0;
  for (size_t i = header()->buffer_in_use; i > 0; --i) {
    if (!IsZero(r[i - 1])) {
      used = i;
      break;
    }
  }
  for (size_t i = 0; i < used; ++i) {
    if (owed.count(r[i].cookie) == 0) out.unprocessed.push_back(r[i]);
  }
  out.buffered = used;
  return out;
}

}  // namespace iopfd
