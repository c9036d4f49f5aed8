// The blocking worker on a real fault loop's ring: a job that blocks does not hold up the
// loop (an eventfd signalled meanwhile is served while the job waits), its result comes back
// on the loop's thread, jobs run in order, Finish waits for them, and Stop joins the thread.
#include "iopfd/device/blocking_worker.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "iopfd/device/eventfd_watcher.h"

namespace iopfd {
namespace {

// Waits (up to 10 s) for cond: a test that waits fails with a message instead of hanging.
bool SpinUntil(const std::function<bool()>& cond) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

void Signal(int fd) {
  uint64_t one = 1;
  ASSERT_EQ(write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
}

TEST(BlockingWorkerTest, ABlockedJobDoesNotHoldUpTheLoop) {
  auto loop = Ring::Create(64);
  ASSERT_TRUE(loop.ok()) << loop.status();
  BlockingWorker worker;
  ASSERT_TRUE(worker.Init().ok());
  EventfdWatcher other;  // stands for another device's work
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  const std::thread::id loop_thread = std::this_thread::get_id();
  std::vector<std::string> order;
  int other_calls = 0;
  auto fd = other.Watch([&] {
    ++other_calls;
    order.push_back("other served");
    release.set_value();  // only now may the job finish: the loop ran while it blocked
  });
  ASSERT_TRUE(fd.ok());
  // The first job blocks until the loop has served the other fd; the second runs after it.
  const int dev_a = 0, dev_b = 0;  // the keys: what each job works on
  worker.Post(
      &dev_a,
      [&] {
        Signal(*fd);
        released.wait();
        return absl::OkStatus();
      },
      [&](const absl::Status& st) {
        EXPECT_TRUE(st.ok());
        EXPECT_EQ(std::this_thread::get_id(), loop_thread);
        order.push_back("first done");
      });
  worker.Post(
      &dev_b, [] { return absl::UnavailableError("second failed"); },
      [&](const absl::Status& st) {
        EXPECT_EQ(st.message(), "second failed");
        EXPECT_EQ(std::this_thread::get_id(), loop_thread);
        order.push_back("second done");
        (*loop)->RequestStop();
      });
  EXPECT_EQ(worker.pending(), 2u);
  (*loop)->AddClient(&other);
  (*loop)->AddClient(&worker);
  EXPECT_TRUE((*loop)->Run());
  EXPECT_EQ(order, (std::vector<std::string>{"other served", "first done", "second done"}));
  EXPECT_EQ(worker.pending(), 0u);
  EXPECT_FALSE(worker.Busy());
}

TEST(BlockingWorkerTest, FinishTakesCareOfOneKeyAndLeavesTheOthers) {
  BlockingWorker worker;
  ASSERT_TRUE(worker.Init().ok());
  const int a = 0, b = 0;
  std::promise<void> release_a;
  std::shared_future<void> a_released = release_a.get_future().share();
  std::atomic<bool> a_started{false};
  std::vector<std::string> done;
  worker.Post(
      &a,
      [&] {
        a_started = true;
        a_released.wait();
        return absl::OkStatus();
      },
      [&done](const absl::Status&) { done.push_back("a"); });
  worker.Post(
      &b, [] { return absl::OkStatus(); }, [&done](const absl::Status&) { done.push_back("b"); });
  ASSERT_TRUE(SpinUntil([&] { return a_started.load(); })) << "job a never started";
  // b has not started (a runs, one at a time): it runs now, here; a is left running.
  worker.Finish(&b);
  EXPECT_EQ(done, std::vector<std::string>{"b"});
  EXPECT_EQ(worker.pending(), 1u);
  release_a.set_value();
  worker.Finish(&a);  // waits for a, then its done
  EXPECT_EQ(done, (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(worker.pending(), 0u);
  worker.Finish(&a);  // nothing pending: returns at once
}

TEST(BlockingWorkerTest, WithoutInitJobsRunNow) {
  BlockingWorker worker;
  bool done = false;
  worker.Post(
      nullptr, [] { return absl::OkStatus(); },
      [&done](const absl::Status& st) { done = st.ok(); });
  EXPECT_TRUE(done);
  EXPECT_EQ(worker.pending(), 0u);
}

TEST(BlockingWorkerTest, DestroyingItWaitsForTheRunningJob) {
  std::atomic<bool> finished{false};
  {
    BlockingWorker worker;
    ASSERT_TRUE(worker.Init().ok());
    std::atomic<bool> started{false};
    worker.Post(
        nullptr,
        [&] {
          started = true;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          finished = true;
          return absl::OkStatus();
        },
        [](const absl::Status&) { ADD_FAILURE() << "done after the worker went away"; });
    ASSERT_TRUE(SpinUntil([&] { return started.load(); })) << "the job never started";
  }
  EXPECT_TRUE(finished.load());
}

}  // namespace
}  // namespace iopfd
