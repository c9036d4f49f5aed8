// The in-flight ledger as the next process finds it: a file a crashed iopfd wrote, read as
// hostile. A fresh ledger is edited by the input (anything in the header, the owed-answer slots
// or the read buffer), then opened, recovered and answered as a hand-back does.
//
// Input: a capacity byte (1..64 records), then patches: a 32-bit offset (modulo the file size),
// a length byte and that many bytes.
// Invariants: Open refuses or accepts without crashing; what FindLeftovers returns is within
// the file (cookies below kCookieSlots, codes the kernel knows, records not all zero);
// AnswerAllLeftovers writes each cookie at most once and answers every unprocessed group; and
// after it the ledger holds nothing: a crash right after finds nothing to answer again.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/fault/inflight_ledger.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  Input in(data, size);
  auto ledger = InflightLedger::Create("fuzz0", 1 + in.Byte() % 64);
  if (!ledger.ok()) Fail("Create", std::string(ledger.status().message()));
  const int fd = (*ledger)->fd();
  const off_t file_size = lseek(fd, 0, SEEK_END);
  void* map =
      mmap(nullptr, static_cast<size_t>(file_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) Fail("mmap");
  auto* bytes = static_cast<char*>(map);
  while (!in.empty()) {
    const uint64_t off = in.U32() % static_cast<uint64_t>(file_size);
    std::string_view patch = in.Take(in.Byte());
    const size_t n = std::min<size_t>(patch.size(), static_cast<size_t>(file_size) - off);
    std::memcpy(bytes + off, patch.data(), n);
  }
  munmap(map, static_cast<size_t>(file_size));

  auto found = InflightLedger::Open("fuzz0", UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)));
  if (!found.ok()) return 0;  // refused, with a reason: fine
  InflightLedger& l = **found;
  InflightLedger::Leftovers left = l.FindLeftovers();
  std::set<uint32_t> owed;
  for (const auto& a : left.owed) {
    FUZZ_CHECK(a.cookie < InflightLedger::kCookieSlots);
    FUZZ_CHECK(a.code == uapi::kRespSuccess || a.code == uapi::kRespInvalid);
    FUZZ_CHECK(owed.insert(a.cookie).second, "a cookie owed twice");
  }
  for (uint32_t c : left.stale) FUZZ_CHECK(owed.count(c) == 0, "a cookie both owed and stale");
  FUZZ_CHECK(left.buffered <= l.capacity());
  FUZZ_CHECK(left.unprocessed.size() <= left.buffered);
  std::set<uint32_t> groups;
  for (const auto& r : left.unprocessed) groups.insert(r.cookie);

  // A hand-back: the answers go to a pipe standing for the fault fd.
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) Fail("pipe2");
  fcntl(p[1], F_SETPIPE_SZ, 1 << 20);  // NOLINT(cppcoreguidelines-pro-type-vararg)
  auto answered = l.AnswerAllLeftovers("fuzz0", p[1], RealSyscalls());
  FUZZ_CHECK(answered.ok(), std::string(answered.status().message()));
  std::set<uint32_t> written;
  uapi::PageResponse r{};
  while (read(p[0], &r, sizeof(r)) == static_cast<ssize_t>(sizeof(r))) {
    FUZZ_CHECK(written.insert(r.cookie).second, "a cookie answered twice");
    FUZZ_CHECK(r.code == uapi::kRespSuccess || r.code == uapi::kRespInvalid);
  }
  close(p[0]);
  close(p[1]);
  FUZZ_CHECK(written.size() == answered->accepted);
  for (uint32_t c : groups) FUZZ_CHECK(written.count(c) != 0, "an unprocessed group unanswered");
  for (uint32_t c : owed) FUZZ_CHECK(written.count(c) != 0, "an owed answer not written");

  auto again = InflightLedger::Open("fuzz0", UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)));
  FUZZ_CHECK(again.ok(), "the ledger no longer opens after a recovery");
  InflightLedger::Leftovers after = (*again)->FindLeftovers();
  FUZZ_CHECK(after.owed.empty() && after.unprocessed.empty() && after.buffered == 0,
             "a recovery left something to answer again");
  // The next read starts on a clear buffer: a record left in it would be taken, after another
  // crash, for part of that read.
  for (const uapi::PageFault& rec : (*again)->BeginRead((*again)->capacity())) {
    static const uapi::PageFault kZero{};
    FUZZ_CHECK(std::memcmp(&rec, &kZero, sizeof(rec)) == 0, "a record left in the read buffer");
  }
  return 0;
}
