// The map record as the next process finds it (map_record.h): a file a crashed iopfd wrote, read
// as hostile. A fresh record for a layout the input picks is edited by the input (anything in
// the header, the layout or the bitmap), then opened and read as a take-back does.
//
// Input: a byte choosing the layout (1..3 regions, their sizes and map units), then patches: a
// 16-bit offset (modulo the file size), a length byte and that many bytes.
// Invariants: Open refuses or accepts without crashing; every unit an accepted record holds
// lies inside its region (IOVA and length within it, no longer than the region's unit, never
// empty); held_count() agrees with HeldUnits(); a unit unrecorded is no longer held, and the
// file opens again with what is left.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/fault/map_record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  Input in(data, size);
  const uint8_t shape = in.Byte();
  std::vector<RecordedRegion> layout;
  for (uint32_t r = 0; r <= shape % 3u; ++r) {
    const uint64_t unit = uint64_t{4096} << ((shape >> (2 + r)) & 3u);
    layout.push_back(RecordedRegion{IoasId(1 + r), 0x100000 * (r + 1),
                                    unit * (1 + ((shape >> r) & 7u) * 37) + 4096 * r, unit});
  }
  auto record = MapRecord::Create("fuzz0", layout);
  if (!record.ok()) Fail("Create", std::string(record.status().message()));
  const int fd = (*record)->fd();
  const off_t file_size = lseek(fd, 0, SEEK_END);
  void* map =
      mmap(nullptr, static_cast<size_t>(file_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) Fail("mmap");
  auto* bytes = static_cast<char*>(map);
  while (!in.empty()) {
    const uint64_t off =
        (in.Byte() | (uint64_t{in.Byte()} << 8)) % static_cast<uint64_t>(file_size);
    std::string_view patch = in.Take(in.Byte());
    const size_t n = std::min<size_t>(patch.size(), static_cast<size_t>(file_size) - off);
    std::memcpy(bytes + off, patch.data(), n);
  }
  munmap(map, static_cast<size_t>(file_size));

  auto found = MapRecord::Open("fuzz0", UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)));
  if (!found.ok()) return 0;  // refused, with a reason: fine
  MapRecord& m = **found;
  const std::vector<RecordedUnit> held = m.HeldUnits();
  FUZZ_CHECK(held.size() == m.held_count(), "held_count disagrees with HeldUnits");
  for (const RecordedUnit& u : held) {
    FUZZ_CHECK(u.region < m.layout().size());
    const RecordedRegion& r = m.layout()[u.region];
    FUZZ_CHECK(u.ioas == r.ioas);
    FUZZ_CHECK(u.length > 0 && u.length <= r.unit_bytes, "a unit longer than its region's unit");
    FUZZ_CHECK(u.iova >= r.iova && u.iova - r.iova < r.size, "a unit outside its region");
    FUZZ_CHECK(u.length <= r.size - (u.iova - r.iova), "a unit past its region's end");
    FUZZ_CHECK(m.Held(u.region, u.unit));
    FUZZ_CHECK(m.Partial(u.region, u.unit) == u.partial, "Partial disagrees with HeldUnits");
    FUZZ_CHECK(!u.partial || m.version() >= 3, "a partial unit in a file that has no such bits");
  }
  if (!held.empty()) {
    m.Set(held.front().region, held.front().unit, false);
    FUZZ_CHECK(!m.Held(held.front().region, held.front().unit), "unrecorded but still held");
    FUZZ_CHECK(!m.Partial(held.front().region, held.front().unit), "unrecorded but partial");
    FUZZ_CHECK(m.held_count() + 1 == held.size());
  }
  auto again = MapRecord::Open("fuzz0", UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)));
  FUZZ_CHECK(again.ok(), "the record no longer opens after a unit was unrecorded");
  FUZZ_CHECK((*again)->held_count() == m.held_count());
  return 0;
}
