#include "iopfd/fault/inflight_ledger.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/fault/response_queue.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;

uapi::PageFault Rec(uint32_t cookie, uint64_t addr, bool last) {
  uapi::PageFault r{};
  r.flags = last ? uint32_t{uapi::kPgfaultLastPage} : 0u;
  r.dev_id = 3;
  r.perm = 1;
  r.addr = addr;
  r.length = 4096;
  r.cookie = cookie;
  return r;
}

// What the next process finds: the same file, mapped again.
std::unique_ptr<InflightLedger> Reopen(const InflightLedger& l) {
  auto again = InflightLedger::Open("dev0", UniqueFd(fcntl(l.fd(), F_DUPFD_CLOEXEC, 0)));
  EXPECT_TRUE(again.ok()) << again.status();
  return again.ok() ? *std::move(again) : nullptr;
}

TEST(InflightLedgerTest, EmptyLedgerLeavesNothing) {
  auto l = InflightLedger::Create("dev0", 64);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ((*l)->capacity(), 64u);
  auto left = Reopen(**l)->FindLeftovers();
  EXPECT_TRUE(left.owed.empty());
  EXPECT_TRUE(left.unprocessed.empty());
  EXPECT_EQ(left.buffered, 0u);
}

TEST(InflightLedgerTest, OwedAnswersSurviveUntilSettled) {
  auto l = *InflightLedger::Create("dev0", 16);
  l->Owe(0, uapi::kRespSuccess);
  l->Owe(5, uapi::kRespInvalid);
  l->Owe(9, uapi::kRespSuccess);
  l->Settled(9);
  auto left = Reopen(*l)->FindLeftovers();
  EXPECT_THAT(left.owed, ElementsAre(Field(&uapi::PageResponse::cookie, 0u),
                                     Field(&uapi::PageResponse::cookie, 5u)));
  EXPECT_EQ(left.owed[0].code, uapi::kRespSuccess);
  EXPECT_EQ(left.owed[1].code, uapi::kRespInvalid);
  l->SettleAll();
  EXPECT_TRUE(Reopen(*l)->FindLeftovers().owed.empty());
}

TEST(InflightLedgerTest, ProcessedRecordsAreGoneUnprocessedOnesAreFound) {
  auto l = *InflightLedger::Create("dev0", 16);
  // A read of three records: group 1 (two records) and group 2.
  auto buf = l->BeginRead(8);
  ASSERT_EQ(buf.size(), 8u);
  buf[0] = Rec(1, 0x1000, false);
  buf[1] = Rec(1, 0x2000, true);
  buf[2] = Rec(2, 0x3000, true);
  // A crash here: both groups read, neither answered.
  auto left = Reopen(*l)->FindLeftovers();
  EXPECT_TRUE(left.owed.empty());
  ASSERT_EQ(left.unprocessed.size(), 3u);
  EXPECT_EQ(left.unprocessed[1].addr, 0x2000u);
  EXPECT_EQ(left.buffered, 3u);
  // Processing answered group 1, then crashed before the records were consumed: the owed answer
  // covers group 1; only group 2 is left to resolve.
  l->Owe(1, uapi::kRespSuccess);
  left = Reopen(*l)->FindLeftovers();
  EXPECT_THAT(left.owed, ElementsAre(Field(&uapi::PageResponse::cookie, 1u)));
  EXPECT_THAT(left.unprocessed, ElementsAre(Field(&uapi::PageFault::cookie, 2u)));
  // Both answered and the records consumed: only the owed answers until they are settled.
  l->Owe(2, uapi::kRespInvalid);
  l->Consumed(3);
  left = Reopen(*l)->FindLeftovers();
  EXPECT_EQ(left.owed.size(), 2u);
  EXPECT_TRUE(left.unprocessed.empty());
  EXPECT_EQ(left.buffered, 0u);
}

TEST(InflightLedgerTest, LargerBufferIsScannedOnlyAsFarAsUsed) {
  auto l = *InflightLedger::Create("dev0", 1024);
  auto small = l->BeginRead(4);
  small[0] = Rec(7, 0x1000, true);
  auto big = l->BeginRead(4096);  // more than the capacity: clamped
  EXPECT_EQ(big.size(), 1024u);
  big[900] = Rec(8, 0x2000, true);  // as if a grown read had filled this far
  auto left = Reopen(*l)->FindLeftovers();
  EXPECT_EQ(left.buffered, 901u);
  // The zero records between are not groups: a group's last record has a flag set.
  std::vector<uint32_t> cookies;
  for (const auto& r : left.unprocessed) {
    if (r.flags & uapi::kPgfaultLastPage) cookies.push_back(r.cookie);
  }
  EXPECT_THAT(cookies, ElementsAre(7u, 8u));
}

// The kernel accepted the answer for cookie 4 (read 1), then handed cookie 4 to a new group in
// read 2, and the process died before it saw either completion: the owed answer is stale and
// must not be written (it would answer the new group); the new group is resolved instead.
TEST(InflightLedgerTest, AnOwedAnswerWhoseCookieANewerReadReusedIsStale) {
  auto l = *InflightLedger::Create("dev0", 16);
  auto first = l->BeginRead(4);
  first[0] = Rec(4, 0x1000, true);
  first[1] = Rec(5, 0x2000, true);
  l->Owe(4, uapi::kRespSuccess);
  l->Owe(5, uapi::kRespSuccess);
  l->Consumed(2);
  auto second = l->BeginRead(4);
  second[0] = Rec(4, 0x9000, true);
  auto left = Reopen(*l)->FindLeftovers();
  EXPECT_THAT(left.stale, ElementsAre(4u));
  EXPECT_THAT(left.owed, ElementsAre(Field(&uapi::PageResponse::cookie, 5u)));
  ASSERT_EQ(left.unprocessed.size(), 1u);
  EXPECT_EQ(left.unprocessed[0].addr, 0x9000u);
}

// Dying in the middle of Consumed's memset leaves part of the records: the buffer is already
// dead, so none of them is taken for a group.
TEST(InflightLedgerTest, ADeadBufferIsIgnoredWhateverIsLeftInIt) {
  auto l = *InflightLedger::Create("dev0", 16);
  auto buf = l->BeginRead(4);
  buf[0] = Rec(1, 0x1000, true);
  buf[1] = Rec(2, 0x2000, true);
  l->Owe(1, uapi::kRespSuccess);
  l->Owe(2, uapi::kRespSuccess);
  l->Consumed(2);
  buf[1] = Rec(2, 0x2000, true);  // as if the memset had not reached it
  buf[1].cookie = 0;
  auto left = Reopen(*l)->FindLeftovers();
  EXPECT_TRUE(left.unprocessed.empty());
  EXPECT_EQ(left.buffered, 2u) << "what the memset did not reach is to be cleared";
  EXPECT_EQ(left.owed.size(), 2u);
}

// Two crashes: the first inside Consumed()'s zeroing, the second after the next process's
// first read. The records the first crash left must not be taken for part of that read (they
// would be answered under cookies that name other groups by then).
TEST(InflightLedgerTest, RecordsACrashLeftInADeadBufferAreClearedBeforeTheNextRead) {
  auto a = *InflightLedger::Create("dev0", 16);
  auto buf = a->BeginRead(4);
  for (uint32_t i = 0; i < 4; ++i) {
    buf[i] = Rec(i + 1, 0x1000 * (i + 1), true);
    a->Owe(i + 1, uapi::kRespSuccess);
  }
  a->Consumed(4);
  buf[2] = Rec(3, 0x3000, true);  // the crash: the memset reached only the first two
  buf[3] = Rec(4, 0x4000, true);

  // The next process recovers: writes the owed answers, clears the buffer.
  auto b = Reopen(*a);
  auto left = b->FindLeftovers();
  EXPECT_EQ(left.owed.size(), 4u);
  EXPECT_TRUE(left.unprocessed.empty());
  for (const auto& r : left.owed) b->Settled(r.cookie);
  b->Consumed(left.buffered);
  // Its first read returns one group, cookie 4 reused for a new request; it crashes before
  // processing it.
  auto next = b->BeginRead(4);
  for (const auto& r : next) ASSERT_TRUE(r.cookie == 0 && r.addr == 0) << "buffer not cleared";
  next[0] = Rec(4, 0x9000, true);

  auto c = Reopen(*b)->FindLeftovers();
  EXPECT_TRUE(c.owed.empty());
  ASSERT_EQ(c.unprocessed.size(), 1u);
  EXPECT_EQ(c.unprocessed[0].addr, 0x9000u);
  EXPECT_EQ(c.buffered, 1u);
}

// The ledger is read as hostile: an owed code the kernel does not know becomes INVALID (the
// kernel would refuse it and leave the group pending).
TEST(InflightLedgerTest, AnUnknownOwedCodeIsAnsweredInvalid) {
  auto l = *InflightLedger::Create("dev0", 4);
  l->Owe(2, 77);
  auto left = Reopen(*l)->FindLeftovers();
  ASSERT_EQ(left.owed.size(), 1u);
  EXPECT_EQ(left.owed[0].code, uapi::kRespInvalid);
}

// A device handed back: everything iopfd read is answered on the fault fd itself.
TEST(InflightLedgerTest, AnswerAllLeftoversAnswersOwedAndUnresolvedGroups) {
  auto l = *InflightLedger::Create("dev0", 16);
  auto buf = l->BeginRead(4);
  buf[0] = Rec(1, 0x1000, false);
  buf[1] = Rec(1, 0x2000, true);
  buf[2] = Rec(3, 0x3000, true);
  l->Owe(6, uapi::kRespSuccess);  // an earlier read's group, answer not yet written
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  auto answered = l->AnswerAllLeftovers("dev0", sv[1], RealSyscalls());
  ASSERT_TRUE(answered.ok()) << answered.status();
  EXPECT_EQ(answered->accepted, 3u);
  std::vector<std::pair<uint32_t, uint32_t>> got;
  uapi::PageResponse r{};
  while (recv(sv[0], &r, sizeof(r), MSG_DONTWAIT) == static_cast<ssize_t>(sizeof(r))) {
    got.emplace_back(r.cookie, r.code);
  }
  EXPECT_THAT(got, ElementsAre(std::pair<uint32_t, uint32_t>{6, uapi::kRespSuccess},
                               std::pair<uint32_t, uint32_t>{1, uapi::kRespInvalid},
                               std::pair<uint32_t, uint32_t>{3, uapi::kRespInvalid}));
  auto left = Reopen(*l)->FindLeftovers();
  EXPECT_TRUE(left.owed.empty());
  EXPECT_TRUE(left.unprocessed.empty());
  close(sv[0]);
  close(sv[1]);
}

TEST(InflightLedgerTest, CookiesBeyondTheTableAreCounted) {
  auto l = *InflightLedger::Create("dev0", 4);
  l->Owe(InflightLedger::kCookieSlots, uapi::kRespSuccess);
  l->Owe(InflightLedger::kCookieSlots - 1, uapi::kRespSuccess);
  EXPECT_EQ(l->untracked(), 1u);
  EXPECT_EQ(Reopen(*l)->FindLeftovers().owed.size(), 1u);
}

TEST(InflightLedgerTest, SizeIsSealed) {
  auto l = *InflightLedger::Create("dev0", 4);
  EXPECT_NE(ftruncate(l->fd(), 1 << 20), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(ftruncate(l->fd(), 0), 0);
}

TEST(InflightLedgerTest, OpenRejectsWhatIsNotALedger) {
  auto open_bytes = [](size_t size, const std::function<void(char*)>& edit) {
    int fd = memfd_create("not-a-ledger", MFD_CLOEXEC);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    if (edit) {
      void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      edit(static_cast<char*>(m));
      munmap(m, size);
    }
    return InflightLedger::Open("dev0", UniqueFd(fd));
  };
  auto tiny = open_bytes(100, nullptr);
  ASSERT_FALSE(tiny.ok());
  EXPECT_THAT(tiny.status().message(), HasSubstr("dev0: in-flight ledger: 100 bytes"));
  auto zeros = open_bytes(1 << 20, nullptr);
  ASSERT_FALSE(zeros.ok());
  EXPECT_THAT(zeros.status().message(), HasSubstr("not a ledger"));
  // A real ledger's header on a file of another size.
  auto real = *InflightLedger::Create("dev0", 4);
  std::vector<char> head(64);
  ASSERT_EQ(pread(real->fd(), head.data(), head.size(), 0), 64);
  auto resized = open_bytes(2 << 20, [&](char* m) { std::memcpy(m, head.data(), head.size()); });
  ASSERT_FALSE(resized.ok());
  EXPECT_THAT(resized.status().message(), HasSubstr("does not match its size"));
  auto newer = open_bytes(2 << 20, [&](char* m) {
    std::memcpy(m, head.data(), head.size());
    m[8] = 2;  // version
  });
  ASSERT_FALSE(newer.ok());
  EXPECT_THAT(newer.status().message(), HasSubstr("version 2, expected 1"));
}

// The queue keeps the ledger in step with every way an answer is settled.
TEST(InflightLedgerTest, ResponseQueueOwesAndSettles) {
  auto l = *InflightLedger::Create("dev0", 16);
  DeviceStats stats;
  ResponseQueue q(&stats);
  q.set_ledger(l.get());
  auto owed = [&] {
    std::vector<uint32_t> c;
    for (const auto& r : Reopen(*l)->FindLeftovers().owed) c.push_back(r.cookie);
    return c;
  };
  q.Add(1, uapi::kRespSuccess, 0);
  q.Add(2, uapi::kRespSuccess, 0);
  q.Add(3, uapi::kRespSuccess, 0, /*attachment=*/5);
  EXPECT_THAT(owed(), ElementsAre(1u, 2u, 3u));
  // Dropped (its attachment parked): settled.
  EXPECT_EQ(q.DropAttachment(5), 1u);
  EXPECT_THAT(owed(), ElementsAre(1u, 2u));
  // A write in flight is still owed: the process may die before it completes.
  auto span = q.BeginWrite();
  ASSERT_EQ(span.size(), 2u);
  EXPECT_THAT(owed(), ElementsAre(1u, 2u));
  // The kernel took the first and stopped at the second: both settled.
  q.CompleteWrite(sizeof(uapi::PageResponse), 10);
  EXPECT_THAT(owed(), ElementsAre());
  q.Add(4, uapi::kRespInvalid, 0);
  q.Add(5, uapi::kRespInvalid, 0);
  q.BeginWrite();
  q.CompleteWrite(-EINVAL, 10);  // the first was unknown: settled; the second is re-sent
  EXPECT_THAT(owed(), ElementsAre(5u));
  q.AbandonAll();
  EXPECT_THAT(owed(), ElementsAre());
}

}  // namespace
}  // namespace iopfd
