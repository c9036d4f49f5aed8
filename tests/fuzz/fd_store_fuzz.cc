// systemd's fd store as a restarted iopfd finds it: entries under any names holding any bytes
// (a record that a crashed or older iopfd wrote, or that is not one at all), taken apart by
// FdStore::TakeStored and replayed through the Adopt checks as iopfd does at start; configured
// devices' ledgers taken by ConfiguredLedgers, claimed by a device or settled as unclaimed.
//
// Input: entries separated by 0xFF bytes, each a name, a NUL, and the descriptor's content (the
// content "LEDGER" stands for an empty ledger as iopfd makes one).
// Invariants: nothing throws or crashes; removals are bounded by the entries (one message per
// name held, never a count the store made up); every adoption returned names a device and its
// descriptors; the store's count is what it was given.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/control/control_methods.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/service/configured_ledgers.h"
#include "iopfd/service/fd_store.h"
#include "iopfd/service/log.h"

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
    if (content == "LEDGER") {
      auto ledger = InflightLedger::Create("fuzz", 16);
      if (!ledger.ok()) Fail("ledger");
      fd = UniqueFd(dup((*ledger)->fd()));
    } else if (!content.empty() && write(fd.get(), content.data(), content.size()) < 0) {
      Fail("write");
    }
    if (name.rfind(kFdStorePrefix, 0) == 0 || name.rfind(kLedgerStorePrefix, 0) == 0) ++ours;
    inherited.Add(name, std::move(fd));
    ++entries;
  }
  size_t messages = 0;
  bool attaching = false;  // only a device attaching stores anything
  FdStore store(
      [&messages, &attaching](const std::string& m, std::span<const int> fds) {
        if (attaching && m.rfind("FDSTORE=1\n", 0) == 0) {
          FUZZ_CHECK(fds.size() == 1, m);
          return 1;
        }
        ++messages;
        FUZZ_CHECK(fds.empty(), "a removal carries descriptors");
        FUZZ_CHECK(m.rfind("FDSTOREREMOVE=1\nFDNAME=", 0) == 0, m);
        return 1;
      },
      256);
  std::vector<std::string> problems;
  std::vector<FdStore::Stored> back = store.TakeStored(&inherited, &problems);
  ConfiguredLedgers ledgers(&store, 16);
  ledgers.TakeStored(&inherited, &problems);
  const size_t taken_messages = messages;
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
  // A configured device "a" attaches on a queue of its own (a memfd takes the answers), the
  // others are settled unclaimed: neither may write into what is not a queue it recorded, and
  // each removes at most what it holds.
  for (const std::string& p : inherited.Untaken())
    FUZZ_CHECK(p.rfind(kLedgerStorePrefix, 0) != 0, p);
  UniqueFd queue(memfd_create("fuzz-queue", MFD_CLOEXEC));
  InflightLedger::Answered stats;
  attaching = true;
  std::unique_ptr<InflightLedger> ledger = ledgers.For("a", queue.get(), &stats);
  attaching = false;
  FUZZ_CHECK(lseek(queue.get(), 0, SEEK_END) == 0, "answers on a queue that recorded nothing");
  (void)ledgers.SettleUnclaimed();
  ledgers.ForgetAll();
  FUZZ_CHECK(messages - taken_messages <= ours + 2, "more removals than entries");
  return 0;
}
