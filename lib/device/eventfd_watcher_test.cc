// The eventfd watcher on a real fault loop's ring: signals reach their callback (several
// between two reads as one call), an unwatched fd is never called back, and the loop stops
// with nothing of the watcher's in flight.
#include "iopfd/device/eventfd_watcher.h"

#include <unistd.h>

#include "gtest/gtest.h"

namespace iopfd {
namespace {

void Signal(int fd) {
  uint64_t one = 1;
  ASSERT_EQ(write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
}

TEST(EventfdWatcherTest, SignalsReachTheirCallbackUntilUnwatched) {
  auto loop = Ring::Create(64);
  ASSERT_TRUE(loop.ok()) << loop.status();
  EventfdWatcher w;
  int calls_a = 0, calls_b = 0;
  int fd_a = -1, fd_b = -1;
  auto b = w.Watch([&] { ++calls_b; });
  ASSERT_TRUE(b.ok()) << b.status();
  fd_b = *b;
  auto a = w.Watch([&] {
    ++calls_a;
    if (calls_a == 1) {
      // From inside a callback: stop watching b, then signal both; only a may answer.
      w.Unwatch(fd_b);
      Signal(fd_b);
      Signal(fd_a);
    } else {
      (*loop)->RequestStop();
    }
  });
  ASSERT_TRUE(a.ok()) << a.status();
  fd_a = *a;
  EXPECT_EQ(w.watched(), 2u);
  // Three signals before the loop reads: one call.
  Signal(fd_a);
  Signal(fd_a);
  Signal(fd_a);
  (*loop)->AddClient(&w);
  EXPECT_TRUE((*loop)->Run());
  EXPECT_EQ(calls_a, 2);
  EXPECT_EQ(calls_b, 0);
  EXPECT_EQ(w.watched(), 1u);
  EXPECT_FALSE(w.Busy());
}

TEST(EventfdWatcherTest, ACallbackMayUnwatchItsOwnFd) {
  // As a VFIO request interrupt does: its handler releases the device, and with it the
  // eventfd whose callback is running (ASan checks nothing is touched after).
  auto loop = Ring::Create(64);
  ASSERT_TRUE(loop.ok()) << loop.status();
  EventfdWatcher w;
  int calls = 0, fd = -1;
  auto a = w.Watch([&] {
    ++calls;
    w.Unwatch(fd);
    (*loop)->RequestStop();
  });
  ASSERT_TRUE(a.ok());
  fd = *a;
  Signal(fd);
  (*loop)->AddClient(&w);
  EXPECT_TRUE((*loop)->Run());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(w.watched(), 0u);
  EXPECT_FALSE(w.Busy());
}

}  // namespace
}  // namespace iopfd
