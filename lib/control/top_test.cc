#include "iopfd/control/top.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

// One device's GetStats entry.
Json Dev(const std::string& name, uint64_t records, uint64_t evicted, uint64_t drains, Json buckets,
         uint64_t resident = 0, uint64_t budget = 0) {
  uint64_t count = 0;
  for (const Json& b : buckets) count += b["count"].get<uint64_t>();
  return {{"name", name},
          {"records", records},
          {"responses_invalid", 0},
          {"latency_ns", {{"count", count}, {"buckets", buckets}}},
          {"paging",
           {{"resident_bytes", resident}, {"budget_bytes", budget}, {"evicted_units", evicted}}},
          {"drain", {{"drains", drains}, {"epoch", drains}}}};
}

TopSample Sample(uint64_t at_s, Json devs, const Json& states = Json::array()) {
  TopSample s;
  s.at_ns = at_s * 1000000000ull;
  s.status = {{"version", "0.1.0"},
              {"health", "ok"},
              {"uptime_usec", 3723000000ull},
              {"devices_running", devs.size()},
              {"devices_configured", devs.size()}};
  Json listed = Json::array();
  for (const Json& d : devs) {
    std::string state = "running";
    for (const Json& st : states) {
      if (st[0] == d["name"]) state = st[1];
    }
    listed.push_back({{"name", d["name"]}, {"state", state}, {"epoch", d["drain"]["epoch"]}});
  }
  s.devices = {{"devices", listed}};
  s.stats = {{"devices", devs},
             {"paging", {{"daemon", {{"resident_bytes", 1 << 20}, {"budget_bytes", 0}}}}}};
  return s;
}

TEST(BucketPercentileTest, TakesTheBoundAtTheRank) {
  EXPECT_EQ(BucketPercentile({}, 0.5), std::nullopt);
  std::map<uint64_t, uint64_t> b = {{10, 50}, {1000, 49}, {90000, 1}};
  EXPECT_EQ(BucketPercentile(b, 0.5), 10u);
  EXPECT_EQ(BucketPercentile(b, 0.51), 1000u);
  EXPECT_EQ(BucketPercentile(b, 0.99), 1000u);
  EXPECT_EQ(BucketPercentile(b, 1.0), 90000u);
}

TEST(TopModelTest, RatesAndPercentilesAreOverTheIntervalOnly) {
  TopModel m;
  // Before the interval: a thousand slow answers (1 ms); during it, 100 fast ones (5 us).
  m.Update(Sample(10, Json::array({Dev("gpu0", 1000, 0, 0,
                                       Json::array({{{"le", 1000000}, {"count", 1000}}}))})));
  ASSERT_EQ(m.rows().size(), 1u);
  EXPECT_FALSE(m.rows()[0].faults_per_s.has_value());  // one reading: no rate yet
  EXPECT_FALSE(m.totals().faults_per_s.has_value());
  m.Update(Sample(12, Json::array({Dev("gpu0", 1200, 30, 1,
                                       Json::array({{{"le", 5000}, {"count", 100}},
                                                    {{"le", 1000000}, {"count", 1000}}}))})));
  const TopRow& r = m.rows()[0];
  EXPECT_DOUBLE_EQ(*r.faults_per_s, 100.0);  // 200 records in 2 s
  EXPECT_DOUBLE_EQ(*r.evictions_per_s, 15.0);
  EXPECT_EQ(r.p50_ns, 5000u);  // the cumulative p50 would be 1 ms
  EXPECT_EQ(r.p99_ns, 5000u);
  EXPECT_TRUE(r.drained_now);
  EXPECT_DOUBLE_EQ(m.interval_s(), 2.0);
  EXPECT_DOUBLE_EQ(*m.totals().faults_per_s, 100.0);
  // A quiet interval: no answers written, no percentile.
  m.Update(Sample(13, Json::array({Dev("gpu0", 1200, 30, 1,
                                       Json::array({{{"le", 5000}, {"count", 100}},
                                                    {{"le", 1000000}, {"count", 1000}}}))})));
  EXPECT_DOUBLE_EQ(*m.rows()[0].faults_per_s, 0.0);
  EXPECT_FALSE(m.rows()[0].p50_ns.has_value());
  EXPECT_FALSE(m.rows()[0].drained_now);
}

TEST(TopModelTest, FollowsDevicesComingGoingAndReplaced) {
  TopModel m;
  m.Update(Sample(
      1, Json::array({Dev("a", 100, 0, 0, Json::array()), Dev("b", 100, 0, 0, Json::array())})));
  // b detached, c new, a detached and attached again (its counters start over).
  m.Update(Sample(
      2, Json::array({Dev("a", 5, 0, 0, Json::array()), Dev("c", 50, 0, 0, Json::array())})));
  ASSERT_EQ(m.rows().size(), 2u);
  EXPECT_EQ(m.rows()[0].name, "a");
  EXPECT_FALSE(m.rows()[0].faults_per_s.has_value());
  EXPECT_EQ(m.rows()[1].name, "c");
  EXPECT_FALSE(m.rows()[1].faults_per_s.has_value());
  m.Update(Sample(
      3, Json::array({Dev("a", 15, 0, 0, Json::array()), Dev("c", 50, 0, 0, Json::array())})));
  EXPECT_DOUBLE_EQ(*m.rows()[0].faults_per_s, 10.0);
}

TEST(TopModelTest, RepliesOfAnotherShapeGiveEmptyFieldsNotAnException) {
  TopModel m;
  TopSample s;
  s.status = Json::array();
  s.devices = {{"devices", "no"}};
  s.stats = {{"devices", Json::array({Json::object(), 5, {{"name", 7}, {"records", -1}}})}};
  EXPECT_NO_THROW(m.Update(s));
  EXPECT_EQ(m.rows().size(), 3u);
  TopView v;
  v.color = false;
  EXPECT_NO_THROW(RenderTop(m, v, "12:00:00"));
}

TopModel TwoDevices() {
  TopModel m;
  auto devs = [](uint64_t a, uint64_t b) {
    return Json::array({Dev("gpu0", a, 0, 0, Json::array(), 64 << 20, 128 << 20),
                        Dev("nic1", b, 0, 0, Json::array(), 1 << 20, 0)});
  };
  m.Update(Sample(1, devs(0, 0)));
  m.Update(Sample(2, devs(10, 2000), Json::array({Json::array({"gpu0", "quarantined"})})));
  return m;
}

TEST(RenderTopTest, ShowsTotalsAndOneRowPerDeviceSortedByFaults) {
  TopView v;
  v.color = false;
  std::string frame = RenderTop(TwoDevices(), v, "12:00:00");
  EXPECT_THAT(frame, HasSubstr("iopfd 0.1.0  up 1h 2m 3s  health ok  devices 2/2 running"));
  EXPECT_THAT(frame, HasSubstr("12:00:00"));
  EXPECT_THAT(frame, HasSubstr("faults 2.0k/s"));
  EXPECT_THAT(frame, HasSubstr("FAULTS/Sv"));  // the sort column, descending
  const size_t gpu = frame.find("gpu0"), nic = frame.find("nic1");
  ASSERT_NE(gpu, std::string::npos);
  EXPECT_LT(nic, gpu);  // 2,000/s before 10/s
  EXPECT_THAT(frame, HasSubstr("quarantined"));
  EXPECT_THAT(frame, HasSubstr("64.0 MiB"));
  EXPECT_THAT(frame, HasSubstr("128.0 MiB"));
  EXPECT_THAT(frame, Not(HasSubstr("\x1b[")));  // no colour asked for
  EXPECT_THAT(frame, HasSubstr("q quit"));
  v.keys = false;  // plain frames: no key hint
  EXPECT_THAT(RenderTop(TwoDevices(), v, "12:00:00"), Not(HasSubstr("q quit")));
}

TEST(RenderTopTest, KeysSortReverseAndFilter) {
  TopModel m = TwoDevices();
  TopView v;
  v.color = false;
  ASSERT_TRUE(HandleTopKey(v, 's'));  // P99
  ASSERT_TRUE(HandleTopKey(v, 's'));  // RESIDENT
  EXPECT_EQ(v.sort, TopSort::kResident);
  std::string frame = RenderTop(m, v, "t");
  EXPECT_LT(frame.find("gpu0"), frame.find("nic1"));
  ASSERT_TRUE(HandleTopKey(v, 'r'));
  frame = RenderTop(m, v, "t");
  EXPECT_THAT(frame, HasSubstr("RESIDENT^"));
  EXPECT_LT(frame.find("nic1"), frame.find("gpu0"));
  // "/nic" Enter: only nic1.
  for (char c : std::string("/nic\r")) ASSERT_TRUE(HandleTopKey(v, c));
  frame = RenderTop(m, v, "t");
  EXPECT_THAT(frame, HasSubstr("filter: nic"));
  EXPECT_THAT(frame, Not(HasSubstr("gpu0")));
  // While typing, q is a letter of the filter, Escape cancels, Backspace edits.
  ASSERT_TRUE(HandleTopKey(v, '/'));
  ASSERT_TRUE(HandleTopKey(v, 'q'));
  EXPECT_EQ(v.typed, "nicq");
  ASSERT_TRUE(HandleTopKey(v, 127));
  EXPECT_EQ(v.typed, "nic");
  ASSERT_TRUE(HandleTopKey(v, 27));
  EXPECT_EQ(v.filter, "nic");
  // An empty filter shows all again; q quits.
  for (char c : std::string("/\x7f\x7f\x7f\r")) ASSERT_TRUE(HandleTopKey(v, c));
  EXPECT_EQ(v.filter, "");
  EXPECT_FALSE(HandleTopKey(v, 'q'));
  EXPECT_FALSE(HandleTopKey(v, 3));  // Ctrl-C
}

TEST(RenderTopTest, FitsTheTerminalAndSaysWhatDidNotFit) {
  TopModel m;
  Json devs = Json::array();
  for (int i = 0; i < 40; ++i)
    devs.push_back(Dev("dev" + std::to_string(i), 0, 0, 0, Json::array()));
  m.Update(Sample(1, devs));
  TopView v;
  v.color = false;
  v.width = 60;
  v.height = 20;
  std::string frame = RenderTop(m, v, "t");
  size_t lines = 0;
  for (size_t at = 0, nl; (nl = frame.find('\n', at)) != std::string::npos; at = nl + 1) {
    EXPECT_LE(nl - at, 60u) << frame.substr(at, nl - at);
    ++lines;
  }
  EXPECT_LE(lines, 20u);
  EXPECT_THAT(frame, HasSubstr(" more"));
  EXPECT_THAT(frame, HasSubstr("q quit"));
}

TEST(RenderTopTest, ColourMarksTheHeaderAndStatesNeedingAttention) {
  TopView v;
  std::string frame = RenderTop(TwoDevices(), v, "t");
  EXPECT_THAT(frame, HasSubstr("\x1b[7m"));       // the header row in reverse video
  EXPECT_THAT(frame, HasSubstr("\x1b[31mgpu0"));  // quarantined: red
  v.events = {"12:00:01  device_added nic1"};
  EXPECT_THAT(RenderTop(TwoDevices(), v, "t"), HasSubstr("device_added nic1"));
}

}  // namespace
}  // namespace iopfd
