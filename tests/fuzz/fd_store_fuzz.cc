// systemd's fd store as a restarted iopfd finds it: entries under any names holding any bytes
// (a record that a crashed or older iopfd wrote, or that is not one at all), taken apart by
// FdStore::TakeStored and replayed through the Adopt checks as iopfd does at start.
//
// Input: entries separated by 0xFF bytes, each a name, a NUL, and the descriptor's content.
// Invariants: nothing throws or crashes; removals are bounded by the entries (one message per
// name held, never a count the store made up); every adoption returned names a device and its
// descriptors; the store's count is what it was given.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/control_methods.h"
#include "iopfd/fd_store.h"
#include "iopfd/log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  SetLogLevel(LogLevel::kError);
  Input in(data, size);
  ListenFds inherited;
  size_t entries = 0;
  size_t ours = 0;
  while (!in.empty() && entries < 64) {
    std::string_view entry = in.Until('\xff');
    const size_t nul = entry.find('\0');
    const std::string name(entry.substr(0, nul));
    const std::string_view content = nul == std::string_view::npos ? "" : entry.substr(nul + 1);
    UniqueFd fd(memfd_create("fuzz-entry", MFD_CLOEXEC));
    if (!content.empty() && write(fd.get(), content.data(), content.size()) < 0) Fail("write");
    if (name.rfind(kFdStorePrefix, 0) == 0) ++ours;
    inherited.Add(name, std::move(fd));
    ++entries;
  }
  size_t messages = 0;
  FdStore store(
      [&messages](const std::string& m, std::span<const int> fds) {
        ++messages;
        FUZZ_CHECK(fds.empty(), "a removal carries descriptors");
        FUZZ_CHECK(m.rfind("FDSTOREREMOVE=1\nFDNAME=", 0) == 0, m);
        return 1;
      },
      256);
  std::vector<std::string> problems;
  std::vector<FdStore::Stored> back = store.TakeStored(&inherited, &problems);
  FUZZ_CHECK(messages <= ours, "more removals than entries");
  size_t kept_fds = 0;
  for (FdStore::Stored& s : back) {
    FUZZ_CHECK(!s.device.empty());
    kept_fds += s.fds.Untaken().size() + 1;
    // What main does with each: the Adopt checks on the stored text.
    AdoptRequest req = ParseAdoptConfig(s.config_text);
    FUZZ_CHECK(req.config.has_value() != !req.errors.empty());
  }
  FUZZ_CHECK(store.kept() >= kept_fds, "the store counts fewer entries than it returned");
  FUZZ_CHECK(store.kept() <= ours);
  for (const std::string& p : problems) FUZZ_CHECK(p.rfind("fd store: ", 0) == 0, p);
  return 0;
}
