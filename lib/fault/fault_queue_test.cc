#include "iopfd/fault/fault_queue.h"

#include <cerrno>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/fault/fault_loop.h"
#include "iopfd/loop/ring.h"

namespace iopfd {
namespace {

using ::testing::HasSubstr;
using R = FaultQueue::ReadResult;
using M = FaultQueue::ReadMode;

// The fault fd as the synchronous paths see it: each Read and Write returns the next scripted
// result (bytes, or -errno); Write also keeps what was written.
class ScriptedFd : public Syscalls {
 public:
  int Ioctl(int, unsigned long, void*) override { return -ENOSYS; }
  int Open(const char*, int) override { return -ENOSYS; }
  int MemfdCreate(const char*, uint64_t) override { return -ENOSYS; }
  void* MapShared(int, uint64_t, uint64_t, bool) override { return nullptr; }
  void Unmap(void*, uint64_t) override {}
  ssize_t Read(int, void*, size_t) override {
    ++reads_issued;
    if (reads.empty()) return -EAGAIN;
    ssize_t r = reads.front();
    reads.pop_front();
    return r;
  }
  ssize_t Write(int, const void*, size_t len) override {
    ++writes_issued;
    if (writes.empty()) return static_cast<ssize_t>(len);
    ssize_t r = writes.front();
    writes.pop_front();
    return r;
  }
  ssize_t Pread(int, void*, size_t, uint64_t) override { return -ENOSYS; }
  ssize_t Pwrite(int, const void*, size_t, uint64_t) override { return -ENOSYS; }
  SwitchModule LoadSwitchModule(const std::string&, std::string*) override { return {}; }

  std::deque<ssize_t> reads;
  std::deque<ssize_t> writes;
  int reads_issued = 0;
  int writes_issued = 0;
};

// A queue without records to process: these tests are about what results mean.
struct Fixture {
  ScriptedFd fd;
  DeviceStats stats;
  ResponseQueue responses{&stats};
  FaultQueue q{"dev0", 99, &fd, ReadLimits{.initial = 4, .max = 16}, &stats, &responses, nullptr};
  std::vector<std::string> failures;
  Fixture() {
    q.on_failed = [this](const std::string& why) { failures.push_back(why); };
  }
};

TEST(FaultQueueTest, AnEmptyPolledReadCountsAndARunOfThemGivesUp) {
  Fixture f;
  for (int i = 1; i < FaultQueue::kMaxEmptyReads; ++i) {
    ASSERT_EQ(f.q.OnRead(0, M::kPolled, 0), R::kEmpty);
  }
  EXPECT_EQ(f.stats.empty_reads, static_cast<uint64_t>(FaultQueue::kMaxEmptyReads - 1));
  EXPECT_TRUE(f.failures.empty());
  EXPECT_EQ(f.q.OnRead(-EAGAIN, M::kPolled, 0), R::kFailed);
  EXPECT_TRUE(f.q.read_failed());
  EXPECT_FALSE(f.q.write_failed()) << "owed answers still go out";
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_THAT(f.failures[0], HasSubstr("not a working fault queue"));
}

TEST(FaultQueueTest, AnEmptyReadUntilEmptyIsTheEndNotASuspiciousRead) {
  Fixture f;
  for (int i = 0; i < 2 * FaultQueue::kMaxEmptyReads; ++i) {
    ASSERT_EQ(f.q.OnRead(-EAGAIN, M::kUntilEmpty, 0), R::kEmpty);
  }
  EXPECT_EQ(f.stats.empty_reads, 0u);
  EXPECT_FALSE(f.q.read_failed());
  // A drain's flush reads until empty: the synchronous path stops at the first empty read.
  EXPECT_TRUE(f.q.ReadAvailable(~0ull).ok());
  EXPECT_EQ(f.fd.reads_issued, 1);
}

TEST(FaultQueueTest, TransientErrorsAreRetriedAndARunOfThemGivesUp) {
  Fixture f;
  EXPECT_EQ(f.q.OnRead(-EINTR, M::kPolled, 0), R::kRetry);
  EXPECT_TRUE(f.q.error().ok()) << "EINTR is not an error";
  EXPECT_EQ(f.q.OnRead(-ECANCELED, M::kPolled, 0), R::kCanceled);
  for (int i = 1; i < FaultQueue::kMaxReadErrors; ++i) {
    ASSERT_EQ(f.q.OnRead(-ENOMEM, M::kPolled, 0), R::kRetry);
    EXPECT_THAT(std::string(f.q.error().message()), HasSubstr("dev0: read fault fd: ENOMEM"));
  }
  EXPECT_FALSE(f.q.read_failed());
  EXPECT_EQ(f.q.OnRead(-EFAULT, M::kPolled, 0), R::kFailed);
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_THAT(f.failures[0],
              HasSubstr("read errors in a row (the last: dev0: read fault fd: EFAULT"));
}

// The synchronous path means the same by a result as the ring: its transient error is returned
// (the group stays queued) and counts toward the same limit; EINVAL grows the buffer there too.
TEST(FaultQueueTest, TheSynchronousPathClassifiesResultsTheSameWay) {
  Fixture f;
  f.fd.reads = {-EINVAL, -EINVAL, -EIO};
  absl::Status st = f.q.ReadAvailable(~0ull);
  EXPECT_THAT(std::string(st.message()), HasSubstr("dev0: read fault fd (synchronous): EIO"));
  EXPECT_EQ(f.q.read_records(), 16u);
  EXPECT_EQ(f.stats.read_grows, 2u);
  f.fd.reads = {-EINVAL};
  EXPECT_TRUE(f.q.ReadAvailable(~0ull).ok()) << "given up at the limit: said through on_failed";
  EXPECT_TRUE(f.q.read_failed());
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_THAT(f.failures[0], HasSubstr("exceeds 16 records"));
  const int issued = f.fd.reads_issued;
  EXPECT_TRUE(f.q.ReadAvailable(~0ull).ok());
  EXPECT_EQ(f.fd.reads_issued, issued) << "a queue given up is not read";
}

TEST(FaultQueueTest, ADeadFdAbandonsWhatIsOwedAndIsReportedOnce) {
  Fixture f;
  f.responses.Add(7, 0, 0);
  f.responses.Add(8, 0, 0);
  f.fd.writes = {-EBADF};
  absl::Status st = f.q.WriteQueued();
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("dev0: write fault responses (synchronous): EBADF"));
  EXPECT_TRUE(f.q.write_failed());
  EXPECT_TRUE(f.q.read_failed()) << "nothing read could be answered";
  EXPECT_EQ(f.stats.responses_abandoned, 2u);
  ASSERT_EQ(f.failures.size(), 1u);
  EXPECT_THAT(f.failures[0], HasSubstr("write fault responses: EBADF"));
  // What is queued later is abandoned without a write, and without a second report.
  f.responses.Add(9, 0, 0);
  EXPECT_TRUE(f.q.WriteQueued().ok());
  EXPECT_EQ(f.fd.writes_issued, 1);
  EXPECT_EQ(f.stats.responses_abandoned, 3u);
  EXPECT_EQ(f.failures.size(), 1u);
}

// The fault loop's part: which queues it writes for. A ring that only records: reads wait, and
// each write waits for the test to complete it with a result of its choosing.
class RecordingRing : public RingIo {
 public:
  void ReadWhenReadable(int, void*, size_t, RingOp*, RingOp* read) override {
    read->in_flight = true;
  }
  void Write(int, const void* buf, size_t len, RingOp* op) override {
    op->in_flight = true;
    const auto* r = static_cast<const uapi::PageResponse*>(buf);
    writes.push_back({op, std::vector<uapi::PageResponse>(r, r + len / sizeof(*r))});
  }
  void CancelPoll(RingOp*) override {}
  bool WaitUntil(const std::function<bool()>&, const char*) override { return false; }
  bool Run() override { return true; }
  bool running() const override { return true; }
  bool stopping() const override { return false; }
  uint64_t reaps() const override { return 0; }
  struct Pending {
    RingOp* op;
    std::vector<uapi::PageResponse> responses;
  };
  std::vector<Pending> writes;
};

// A write the kernel took only part of (it stopped at a cookie it no longer knew) leaves the
// rest to send again: the loop must write them at its next flush, with nothing else happening
// on that queue meanwhile.
TEST(FaultLoopTest, WhatAShortWriteLeftIsWrittenAtTheNextFlush) {
  Fixture f;
  RecordingRing ring;
  FaultLoop loop(&ring);
  loop.Add(&f.q);
  f.responses.BeginBatch();
  f.responses.Add(1, uapi::kRespSuccess, 0);
  f.responses.Add(2, uapi::kRespSuccess, 0);
  f.responses.Add(3, uapi::kRespSuccess, 0);
  f.responses.EndBatch();
  loop.SubmitAnswers();
  ASSERT_EQ(ring.writes.size(), 1u);
  ASSERT_EQ(ring.writes[0].responses.size(), 3u);
  // The kernel consumed the first; the second's cookie was unknown (a short write of 16 bytes).
  RingOp* op = ring.writes[0].op;
  op->in_flight = false;
  loop.Complete(*op, static_cast<int>(sizeof(uapi::PageResponse)));
  loop.SubmitAnswers();
  ASSERT_EQ(ring.writes.size(), 2u) << "the responses after the rejected one were never re-sent";
  ASSERT_EQ(ring.writes[1].responses.size(), 1u);
  EXPECT_EQ(ring.writes[1].responses[0].cookie, 3u);
}

// Answers queued while the queue's write is in flight go out once that write completes.
TEST(FaultLoopTest, AnswersQueuedDuringAWriteGoOutAfterIt) {
  Fixture f;
  RecordingRing ring;
  FaultLoop loop(&ring);
  loop.Add(&f.q);
  f.responses.BeginBatch();
  f.responses.Add(1, uapi::kRespSuccess, 0);
  f.responses.EndBatch();
  loop.SubmitAnswers();
  ASSERT_EQ(ring.writes.size(), 1u);
  f.responses.BeginBatch();
  f.responses.Add(2, uapi::kRespSuccess, 0);
  f.responses.EndBatch();
  loop.SubmitAnswers();  // the write is in flight: nothing now
  ASSERT_EQ(ring.writes.size(), 1u);
  RingOp* op = ring.writes[0].op;
  op->in_flight = false;
  loop.Complete(*op, static_cast<int>(sizeof(uapi::PageResponse)));
  loop.SubmitAnswers();
  ASSERT_EQ(ring.writes.size(), 2u);
  EXPECT_EQ(ring.writes[1].responses[0].cookie, 2u);
}

// Lifetimes at shutdown, either way round (the ASan tier sees a use after free): the device
// layer's queues destroyed before the loop (the daemon's order), and a queue answering after the
// loop that served it is gone (an obligation's destructor answers).
TEST(FaultLoopTest, QueuesAndTheLoopMayEndInEitherOrder) {
  {
    RecordingRing ring;
    FaultLoop loop(&ring);
    auto f = std::make_unique<Fixture>();
    loop.Add(&f->q);
    f.reset();
  }
  Fixture f;
  {
    RecordingRing ring;
    FaultLoop loop(&ring);
    loop.Add(&f.q);
  }
  f.responses.BeginBatch();
  f.responses.Add(1, uapi::kRespInvalid, 0);
  f.responses.EndBatch();
  EXPECT_TRUE(f.responses.HasUnwritten());
}

}  // namespace
}  // namespace iopfd
