#include "iopfd/fault/map_record.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"

namespace iopfd {
namespace {

constexpr char kMagic[8] = {'I', 'O', 'P', 'F', 'M', 'A', 'P', 'S'};
// 2: access and the backing's identity per region; 3: a second bitmap, the partial units.
// A version 2 file is still read (it names no partial unit: that process mapped none).
constexpr uint32_t kVersion = 3;
constexpr uint32_t kOldestVersion = 2;
constexpr uint64_t kMinUnit = 4096;

// The file: a header, one entry per region, then the bitmap (a bit per unit, each region's
// bits starting at a word of its own: `words` of them), then (version 3) as many words of
// partial bits (a unit iopfd holds mapped in part, address_space.h).
struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t regions;
  uint64_t words;
  uint64_t reserved;
};
struct FileRegion {
  uint32_t ioas;
  uint32_t access;
  uint64_t iova;
  uint64_t size;
  uint64_t unit_bytes;
  uint64_t first_word;
  uint64_t backing_dev;
  uint64_t backing_ino;
  uint64_t backing_offset;
};
static_assert(sizeof(FileHeader) == 32 && sizeof(FileRegion) == 64);

size_t FileSize(uint32_t version, uint64_t regions, uint64_t words) {
  const uint64_t bitmaps = version >= 3 ? 2 : 1;
  return sizeof(FileHeader) + regions * sizeof(FileRegion) + bitmaps * words * sizeof(uint64_t);
}

// What is wrong with a region's bounds, or "".
std::string CheckRegion(const RecordedRegion& r) {
  if (r.size == 0) return "size 0";
  if (r.unit_bytes < kMinUnit || (r.unit_bytes & (r.unit_bytes - 1)) != 0) {
    return absl::StrCat("map unit ", r.unit_bytes, " is not a power of two of at least 4096");
  }
  if (r.iova + r.size < r.iova) return absl::StrCat("iova ", r.iova, " + size ", r.size, " wraps");
  if ((r.size + r.unit_bytes - 1) / r.unit_bytes > UINT32_MAX) return "more than 2^32 units";
  return "";
}

// Keeps the compiler from moving a bit's store across the map or unmap call it brackets: a
// crash must find the record in program order (a dead process's stores stay in the memfd).
void StoreOrder() { std::atomic_signal_fence(std::memory_order_seq_cst); }

}  // namespace

MapRecord::MapRecord(UniqueFd fd, void* map, size_t size, uint32_t version,
                     std::vector<RecordedRegion> layout, std::vector<uint64_t> first_word)
    : fd_(std::move(fd)),
      map_(map),
      size_(size),
      version_(version),
      layout_(std::move(layout)),
      first_word_(std::move(first_word)) {}

MapRecord::~MapRecord() {
  if (map_ != nullptr) munmap(map_, size_);
}

uint64_t* MapRecord::words() const {
  return reinterpret_cast<uint64_t*>(static_cast<char*>(map_) + sizeof(FileHeader) +
                                     layout_.size() * sizeof(FileRegion));
}

uint64_t* MapRecord::partial_words() const {
  if (version_ < 3) return nullptr;
  return words() + static_cast<const FileHeader*>(map_)->words;
}

absl::StatusOr<std::unique_ptr<MapRecord>> MapRecord::Create(
    const std::string& device, const std::vector<RecordedRegion>& layout) {
  const std::string name = device + ": map record";
  if (layout.size() > kMaxRegions) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", layout.size(), " regions"));
  }
  std::vector<uint64_t> first_word;
  uint64_t words = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    if (std::string bad = CheckRegion(layout[i]); !bad.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": region ", i, ": ", bad));
    }
    first_word.push_back(words);
    words += (UnitCount(layout[i]) + 63) / 64;
  }
  UniqueFd fd(memfd_create(("iopfd-maps-" + device).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus(errno, name, "memfd_create");
  const size_t size = FileSize(kVersion, layout.size(), words);
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, name, "ftruncate");
  }
  // Its size is fixed for good: the next process maps exactly this much.
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus(errno, name, "fcntl(F_ADD_SEALS)");
  }
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return ErrnoStatus(errno, name, "mmap");
  auto* h = static_cast<FileHeader*>(map);
  std::memcpy(h->magic, kMagic, sizeof(kMagic));
  h->version = kVersion;
  h->regions = static_cast<uint32_t>(layout.size());
  h->words = words;
  auto* entries = reinterpret_cast<FileRegion*>(h + 1);
  for (size_t i = 0; i < layout.size(); ++i) {
    const RecordedRegion& r = layout[i];
    entries[i] =
        FileRegion{r.ioas.value(), r.access,      r.iova,        r.size,          r.unit_bytes,
                   first_word[i],  r.backing_dev, r.backing_ino, r.backing_offset};
  }
  return std::unique_ptr<MapRecord>(
      new MapRecord(std::move(fd), map, size, kVersion, layout, std::move(first_word)));
}

// Longer than 60 lines: every field of a file a crashed run left is checked, each with its own
// message.
absl::StatusOr<std::unique_ptr<MapRecord>> MapRecord::Open(const std::string& device, UniqueFd fd) {
  const std::string name = device + ": map record";
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, name, "fstat");
  const auto size = static_cast<size_t>(st.st_size);
  if (size < sizeof(FileHeader)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", size, " bytes, too small to be one"));
  }
  // A file that could shrink under the mapping would fault (SIGBUS) on the next access.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): fcntl's interface
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": not sealed against shrinking, so not one iopfd made"));
  }
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return ErrnoStatus(errno, name, "mmap");
  const auto* h = static_cast<const FileHeader*>(map);
  std::string bad;
  std::vector<RecordedRegion> layout;
  std::vector<uint64_t> first_word;
  if (std::memcmp(h->magic, kMagic, sizeof(kMagic)) != 0) {
    bad = "not a map record (magic)";
  } else if (h->version < kOldestVersion || h->version > kVersion) {
    bad = absl::StrCat("version ", h->version, ", expected ", kOldestVersion, " to ", kVersion);
  } else if (h->regions > kMaxRegions || h->words > size / sizeof(uint64_t) ||
             FileSize(h->version, h->regions, h->words) != size) {
    bad = absl::StrCat(h->regions, " regions and ", h->words,
                       " bitmap words do not match its size ", size);
  } else {
    // Each region's bits where Create put them, one after the other: two regions sharing a
    // word would make a unit of one recorded as held by the other.
    const auto* entries = reinterpret_cast<const FileRegion*>(h + 1);
    uint64_t next_word = 0;
    for (uint32_t i = 0; i < h->regions && bad.empty(); ++i) {
      const FileRegion& e = entries[i];
      RecordedRegion r{IoasId(e.ioas), e.iova,        e.size,        e.unit_bytes,
                       e.access,       e.backing_dev, e.backing_ino, e.backing_offset};
      if (std::string why = CheckRegion(r); !why.empty()) {
        bad = absl::StrCat("region ", i, ": ", why);
      } else if (e.first_word != next_word) {
        bad = absl::StrCat("region ", i, ": its bits start at word ", e.first_word, ", expected ",
                           next_word);
      } else if ((UnitCount(r) + 63) / 64 > h->words - e.first_word) {
        bad = absl::StrCat("region ", i, ": its bits (from word ", e.first_word,
                           ") run past the bitmap's ", h->words, " words");
      }
      if (!bad.empty()) break;  // r's unit may be 0: nothing more is computed from it
      next_word += (UnitCount(r) + 63) / 64;
      layout.push_back(r);
      first_word.push_back(e.first_word);
    }
    if (bad.empty() && next_word != h->words) {
      bad = absl::StrCat("its regions use ", next_word, " bitmap words of ", h->words);
    }
  }
  if (!bad.empty()) {
    munmap(map, size);
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", bad));
  }
  const uint32_t version = h->version;
  return std::unique_ptr<MapRecord>(
      new MapRecord(std::move(fd), map, size, version, std::move(layout), std::move(first_word)));
}

bool MapRecord::Fits(const std::vector<RecordedRegion>& layout) const {
  // An older file cannot record what this process maps (partial units).
  if (version_ != kVersion || layout.size() != layout_.size()) return false;
  for (size_t i = 0; i < layout.size(); ++i) {
    if (!CheckRegion(layout[i]).empty() ||
        (UnitCount(layout[i]) + 63) / 64 != (UnitCount(layout_[i]) + 63) / 64) {
      return false;
    }
  }
  return true;
}

void MapRecord::Relayout(const std::vector<RecordedRegion>& layout) {
  if (!Fits(layout)) return;
  const auto* h = static_cast<const FileHeader*>(map_);
  StoreOrder();
  std::memset(static_cast<void*>(words()), 0, 2 * h->words * sizeof(uint64_t));
  StoreOrder();  // no bit survives into the new layout
  auto* entries = reinterpret_cast<FileRegion*>(static_cast<char*>(map_) + sizeof(FileHeader));
  for (size_t i = 0; i < layout.size(); ++i) {
    const RecordedRegion& r = layout[i];
    entries[i] =
        FileRegion{r.ioas.value(), r.access,      r.iova,        r.size,          r.unit_bytes,
                   first_word_[i], r.backing_dev, r.backing_ino, r.backing_offset};
  }
  StoreOrder();
  layout_ = layout;
}

void MapRecord::Set(uint32_t region, uint32_t unit, bool held, bool partial) {
  if (region >= layout_.size() || unit >= UnitCount(layout_[region])) return;
  const uint64_t index = first_word_[region] + unit / 64;
  uint64_t& word = words()[index];
  const uint64_t bit = uint64_t{1} << (unit % 64);
  uint64_t* partial_words = this->partial_words();
  StoreOrder();
  // The partial bit is written first when a unit becomes held and last when it stops being
  // held; it means nothing without the held bit, so a crash between the stores is harmless.
  if (held && partial_words != nullptr) {
    partial_words[index] = partial ? (partial_words[index] | bit) : (partial_words[index] & ~bit);
    StoreOrder();
  }
  word = held ? (word | bit) : (word & ~bit);
  StoreOrder();
  if (!held && partial_words != nullptr) {
    partial_words[index] &= ~bit;
    StoreOrder();
  }
}

bool MapRecord::Partial(uint32_t region, uint32_t unit) const {
  if (!Held(region, unit) || partial_words() == nullptr) return false;
  return ((partial_words()[first_word_[region] + unit / 64] >> (unit % 64)) & 1) != 0;
}

bool MapRecord::Held(uint32_t region, uint32_t unit) const {
  if (region >= layout_.size() || unit >= UnitCount(layout_[region])) return false;
  return ((words()[first_word_[region] + unit / 64] >> (unit % 64)) & 1) != 0;
}

void MapRecord::ForEachHeld(const std::function<void(const RecordedUnit&)>& fn) const {
  for (uint32_t r = 0; r < layout_.size(); ++r) {
    const RecordedRegion& reg = layout_[r];
    const uint64_t units = UnitCount(reg);
    for (uint64_t w = 0; w < (units + 63) / 64; ++w) {
      // Bits past the region's last unit are ignored: nothing sets them.
      for (uint64_t bits = words()[first_word_[r] + w]; bits != 0; bits &= bits - 1) {
        const uint64_t u = w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits));
        if (u >= units) break;
        const uint64_t offset = u * reg.unit_bytes;
        const bool partial = partial_words() != nullptr &&
                             ((partial_words()[first_word_[r] + w] >> (u % 64)) & 1) != 0;
        fn(RecordedUnit{r, static_cast<uint32_t>(u), reg.ioas, reg.iova + offset,
                        std::min(reg.unit_bytes, reg.size - offset), partial});
      }
    }
  }
}

std::vector<RecordedUnit> MapRecord::HeldUnits() const {
  std::vector<RecordedUnit> out;
  ForEachHeld([&out](const RecordedUnit& u) { out.push_back(u); });
  return out;
}

uint64_t MapRecord::held_count() const {
  uint64_t n = 0;
  for (uint32_t r = 0; r < layout_.size(); ++r) {
    const uint64_t units = UnitCount(layout_[r]);
    for (uint64_t w = 0; w < (units + 63) / 64; ++w) {
      uint64_t bits = words()[first_word_[r] + w];
      if (w == units / 64) bits &= (uint64_t{1} << (units % 64)) - 1;
      n += static_cast<uint64_t>(__builtin_popcountll(bits));
    }
  }
  return n;
}

}  // namespace iopfd
