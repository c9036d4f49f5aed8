// The notifications iopfd sends systemd, through a fake sender: what each call says, when the
// watchdog is pinged, and that STATUS= is refreshed only when due and changed.
#include "iopfd/service/service_notify.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr uint64_t kMs = 1'000'000;

TEST(ServiceNotifierTest, ReadyReloadingAndStoppingSayWhatSystemdExpects) {
  std::vector<std::string> sent;
  ServiceNotifier n(
      [&sent](const std::string& m) {
        sent.push_back(m);
        return 1;
      },
      0);
  n.Ready("serving 2 device(s)");
  n.Reloading(5'000'000'123);
  n.Ready("serving 3 device(s)");
  n.Stopping();
  EXPECT_THAT(sent, ElementsAre("READY=1\nSTATUS=serving 2 device(s)",
                                "RELOADING=1\nMONOTONIC_USEC=5000000\nSTATUS=reloading the "
                                "configuration",
                                "READY=1\nSTATUS=serving 3 device(s)",
                                "STOPPING=1\nSTATUS=stopping: answering every outstanding page "
                                "request"));
  EXPECT_EQ(n.sent(), 4u);
  EXPECT_EQ(n.NextTick(), std::nullopt);  // no watchdog, no status function
}

TEST(ServiceNotifierTest, TheWatchdogIsPingedEveryHalfInterval) {
  std::vector<std::string> sent;
  ServiceNotifier n(
      [&sent](const std::string& m) {
        sent.push_back(m);
        return 1;
      },
      1000 * kMs);
  EXPECT_EQ(n.watchdog_ns(), 1000 * kMs);
  const uint64_t start = 10'000 * kMs;  // the loop's clock: time since boot
  EXPECT_EQ(n.NextTick(), 500 * kMs);   // nothing sent yet: due at once
  n.Tick(start);
  EXPECT_THAT(sent, ElementsAre("WATCHDOG=1"));
  EXPECT_EQ(n.NextTick(), start + 500 * kMs);
  n.Tick(start + 499 * kMs);  // not yet due
  EXPECT_EQ(sent.size(), 1u);
  n.Tick(start + 500 * kMs);
  EXPECT_EQ(sent.size(), 2u);
  EXPECT_EQ(n.watchdog_pings(), 2u);
  EXPECT_EQ(n.NextTick(), start + 1000 * kMs);
}

TEST(ServiceNotifierTest, StatusIsRefreshedWhenDueAndOnlyWhenChanged) {
  std::vector<std::string> sent;
  ServiceNotifier n(
      [&sent](const std::string& m) {
        sent.push_back(m);
        return 1;
      },
      0);
  std::string text = "serving 1 device(s)";
  n.status_text = [&text](uint64_t) { return text; };
  EXPECT_EQ(n.NextTick(), std::nullopt);  // nothing before READY=1
  n.Ready(text);
  sent.clear();
  const uint64_t due = *n.NextTick();
  n.Tick(due);  // the same text: nothing sent
  EXPECT_THAT(sent, IsEmpty());
  text = "serving 1 device(s); 1200 faults/s";
  n.Tick(due + 1);  // not due again yet
  EXPECT_THAT(sent, IsEmpty());
  n.Tick(*n.NextTick());
  EXPECT_THAT(sent, ElementsAre("STATUS=serving 1 device(s); 1200 faults/s"));
}

TEST(ServiceNotifierTest, WithoutAManagerNothingCountsAsSent) {
  ServiceNotifier n([](const std::string&) { return 0; }, 0);
  n.Ready("x");
  n.Stopping();
  EXPECT_EQ(n.sent(), 0u);
  ServiceNotifier failing([](const std::string&) { return -ECONNREFUSED; }, 0);
  failing.Ready("x");  // logged once, not fatal
  EXPECT_EQ(failing.sent(), 0u);
}

}  // namespace
}  // namespace iopfd
