#include "iopfd/service/configured_ledgers.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fake_service_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/uapi.h"
#include "iopfd/fault/inflight_ledger.h"
#include "iopfd/service/fd_store.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// A stand-in fault queue: iopfd's end writes 8-byte answers, the kernel's end reads them.
struct Queue {
  UniqueFd kernel, iopfd;
  Queue() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    kernel.Reset(sv[0]);
    iopfd.Reset(sv[1]);
  }
  // Every answer written so far: cookie -> code.
  std::map<uint32_t, uint32_t> Answers() const {
    std::map<uint32_t, uint32_t> out;
    uapi::PageResponse r{};
    while (read(kernel.get(), &r, sizeof(r)) == static_cast<ssize_t>(sizeof(r))) {
      EXPECT_TRUE(out.emplace(r.cookie, r.code).second) << "cookie " << r.cookie << " twice";
    }
    return out;
  }
};

// What a process that dies now leaves in `ledger`: answers owed for cookies 1 and 2 (SUCCESS),
// and groups 3 and 4 read but not resolved.
void DieOwing(InflightLedger* ledger) {
  std::span<uapi::PageFault> buf = ledger->BeginRead(2);
  for (uint32_t i = 0; i < 2; ++i) {
    buf[i] = {};
    buf[i].flags = uapi::kPgfaultLastPage;
    buf[i].perm = uapi::kPermRead;
    buf[i].addr = 0x1000 * (i + 1);
    buf[i].cookie = 3 + i;
  }
  ledger->Owe(1, uapi::kRespSuccess);
  ledger->Owe(2, uapi::kRespSuccess);
}

// A process that attaches `device` on fault_fd with a store, and dies owing (DieOwing).
void CrashOwing(FakeServiceManager* systemd, const std::string& device, int fault_fd) {
  FdStore store(systemd->sender(), 16);
  ConfiguredLedgers ledgers(&store, 64);
  InflightLedger::Answered stats;
  std::unique_ptr<InflightLedger> ledger = ledgers.For(device, fault_fd, &stats);
  ASSERT_NE(ledger, nullptr);
  DieOwing(ledger.get());
}

// The next process: its store and ledgers, with what the store handed back taken.
struct NextProcess {
  FdStore store;
  ConfiguredLedgers ledgers;
  std::vector<std::string> problems;
  explicit NextProcess(FakeServiceManager* systemd)
      : store(systemd->sender(), 16), ledgers(&store, 64) {
    ListenFds inherited = systemd->Restart();
    ledgers.TakeStored(&inherited, &problems);
  }
};

TEST(SameOpenFileTest, TellsDuplicatesFromOtherFiles) {
  Queue a, b;
  UniqueFd copy(dup(a.iopfd.get()));
  EXPECT_EQ(SameOpenFile(a.iopfd.get(), copy.get()).value_or(false), true);
  EXPECT_EQ(SameOpenFile(a.iopfd.get(), a.iopfd.get()).value_or(false), true);
  EXPECT_EQ(SameOpenFile(a.iopfd.get(), b.iopfd.get()).value_or(true), false);
  // The two ends of one socketpair are two files.
  EXPECT_EQ(SameOpenFile(a.iopfd.get(), a.kernel.get()).value_or(true), false);
  EXPECT_FALSE(SameOpenFile(a.iopfd.get(), 1000000).ok());
}

TEST(ConfiguredLedgersTest, WithoutAStoreThereIsNoLedger) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 0);
  ConfiguredLedgers ledgers(&store, 64);
  Queue q;
  InflightLedger::Answered stats;
  EXPECT_EQ(ledgers.For("vm", q.iopfd.get(), &stats), nullptr);
  EXPECT_THAT(systemd.messages, IsEmpty());
}

TEST(ConfiguredLedgersTest, ANewLedgerIsStoredWithTheQueueBeforeItIsUsed) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  ConfiguredLedgers ledgers(&store, 64);
  Queue q;
  InflightLedger::Answered stats;
  std::unique_ptr<InflightLedger> ledger = ledgers.For("vm", q.iopfd.get(), &stats);
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->capacity(), 64u);
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-ledger/vm/fault", "iopfd-ledger/vm"));
  EXPECT_EQ(SameOpenFile(systemd.entries[0].second.get(), q.iopfd.get()).value_or(false), true);
  EXPECT_EQ(SameOpenFile(systemd.entries[1].second.get(), ledger->fd()).value_or(false), true);
  EXPECT_THAT(ledgers.kept(), ElementsAre("vm"));
  // Gone from the configuration: the store no longer holds the owner's queue.
  ledgers.Forget("vm");
  EXPECT_THAT(systemd.Names(), IsEmpty());
  EXPECT_THAT(ledgers.kept(), IsEmpty());
}

// The device comes back on the queue the dead process read: the ledger is handed to the device
// as it is (Device::UseLedger answers what it holds, resolving the unresolved groups), nothing is
// written here, and the store keeps its entries.
TEST(ConfiguredLedgersTest, AfterACrashOnTheSameQueueTheDeviceGetsTheLedgerAsItWas) {
  FakeServiceManager systemd;
  Queue q;
  ASSERT_NO_FATAL_FAILURE(CrashOwing(&systemd, "vm", q.iopfd.get()));
  systemd.messages.clear();
  NextProcess next(&systemd);
  FdStore& store = next.store;
  ConfiguredLedgers& ledgers = next.ledgers;
  EXPECT_THAT(next.problems, IsEmpty());
  InflightLedger::Answered stats;
  // LISTEN_FDS hands the same queue back (a copy of the same file).
  UniqueFd again(dup(q.iopfd.get()));
  std::unique_ptr<InflightLedger> ledger = ledgers.For("vm", again.get(), &stats);
  ASSERT_NE(ledger, nullptr);
  InflightLedger::Leftovers left = ledger->FindLeftovers();
  EXPECT_EQ(left.owed.size(), 2u);
  EXPECT_EQ(left.unprocessed.size(), 2u);
  EXPECT_THAT(q.Answers(), IsEmpty());
  EXPECT_THAT(systemd.messages, IsEmpty());
  EXPECT_EQ(store.kept(), 2u);
  EXPECT_THAT(ledgers.kept(), ElementsAre("vm"));
}

// The owner handed over another queue before the restart: what the dead process owed is
// answered on the queue its groups came from (the stored copy), the unresolved groups INVALID,
// and the device starts on a new ledger kept with its new queue.
TEST(ConfiguredLedgersTest, AfterACrashOnAnotherQueueTheOldQueueIsAnsweredAndANewLedgerKept) {
  FakeServiceManager systemd;
  Queue old_queue, new_queue;
  ASSERT_NO_FATAL_FAILURE(CrashOwing(&systemd, "vm", old_queue.iopfd.get()));
  NextProcess next(&systemd);
  FdStore& store = next.store;
  ConfiguredLedgers& ledgers = next.ledgers;
  InflightLedger::Answered stats;
  std::unique_ptr<InflightLedger> ledger = ledgers.For("vm", new_queue.iopfd.get(), &stats);
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(old_queue.Answers(), (std::map<uint32_t, uint32_t>{{1, uapi::kRespSuccess},
                                                               {2, uapi::kRespSuccess},
                                                               {3, uapi::kRespInvalid},
                                                               {4, uapi::kRespInvalid}}));
  EXPECT_THAT(new_queue.Answers(), IsEmpty());
  EXPECT_EQ(stats.accepted, 4u);
  EXPECT_EQ(stats.groups, 2u);
  EXPECT_EQ(stats.rejected, 0u);
  InflightLedger::Leftovers left = ledger->FindLeftovers();
  EXPECT_THAT(left.owed, IsEmpty());
  EXPECT_THAT(left.unprocessed, IsEmpty());
  ASSERT_THAT(systemd.Names(), ElementsAre("iopfd-ledger/vm/fault", "iopfd-ledger/vm"));
  EXPECT_EQ(SameOpenFile(systemd.entries[0].second.get(), new_queue.iopfd.get()).value_or(false),
            true);
  EXPECT_EQ(store.kept(), 2u);
}

// A ledger that came back for a device no longer served in adopt mode from the configuration:
// its queue is answered and its entries go.
TEST(ConfiguredLedgersTest, UnclaimedLedgersAreAnsweredOnTheirQueueAndRemoved) {
  FakeServiceManager systemd;
  Queue q;
  ASSERT_NO_FATAL_FAILURE(CrashOwing(&systemd, "gone", q.iopfd.get()));
  NextProcess next(&systemd);
  FdStore& store = next.store;
  ConfiguredLedgers& ledgers = next.ledgers;
  EXPECT_THAT(ledgers.SettleUnclaimed(), ElementsAre("gone"));
  EXPECT_EQ(q.Answers().size(), 4u);
  EXPECT_THAT(systemd.Names(), IsEmpty());
  EXPECT_EQ(store.kept(), 0u);
  EXPECT_THAT(ledgers.SettleUnclaimed(), IsEmpty());
}

// A file under the ledger's name that is not a ledger: nothing is answered from it, the device
// gets a new ledger.
TEST(ConfiguredLedgersTest, AStoredFileThatIsNoLedgerIsReplaced) {
  FakeServiceManager systemd;
  Queue q;
  {
    FdStore store(systemd.sender(), 16);
    UniqueFd junk(memfd_create("junk", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(junk.get(), 4096), 0);
    ASSERT_TRUE(store.KeepLedger("vm", junk.get(), q.iopfd.get()).ok());
  }
  NextProcess next(&systemd);
  FdStore& store = next.store;
  ConfiguredLedgers& ledgers = next.ledgers;
  InflightLedger::Answered stats;
  std::unique_ptr<InflightLedger> ledger = ledgers.For("vm", q.iopfd.get(), &stats);
  ASSERT_NE(ledger, nullptr);
  EXPECT_THAT(q.Answers(), IsEmpty());
  EXPECT_EQ(store.kept(), 2u);
  ASSERT_EQ(systemd.entries.size(), 2u);
  EXPECT_EQ(SameOpenFile(systemd.entries[1].second.get(), ledger->fd()).value_or(false), true);
}

TEST(ConfiguredLedgersTest, ForgetAllRemovesEveryLedger) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  ConfiguredLedgers ledgers(&store, 64);
  Queue a, b;
  InflightLedger::Answered stats;
  auto la = ledgers.For("a", a.iopfd.get(), &stats);
  auto lb = ledgers.For("b", b.iopfd.get(), &stats);
  EXPECT_EQ(store.kept(), 4u);
  ledgers.ForgetAll();
  EXPECT_THAT(systemd.Names(), IsEmpty());
  EXPECT_EQ(store.kept(), 0u);
}

}  // namespace
}  // namespace iopfd
