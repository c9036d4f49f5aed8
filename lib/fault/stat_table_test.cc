#include "iopfd/fault/stat_table.h"

#include <cstdint>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "testing/member_count.h"

namespace iopfd {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// Every plain counter of DeviceStats, so that the test can give each a different value.
std::vector<uint64_t DeviceStats::*> PlainMembers() {
  return {&DeviceStats::reads,
          &DeviceStats::empty_reads,
          &DeviceStats::read_grows,
          &DeviceStats::records,
          &DeviceStats::groups,
          &DeviceStats::responses_success,
          &DeviceStats::responses_invalid,
          &DeviceStats::map_calls,
          &DeviceStats::map_failures,
          &DeviceStats::bytes_mapped,
          &DeviceStats::pages_already_mapped,
          &DeviceStats::pages_deduped,
          &DeviceStats::pages_prefetched,
          &DeviceStats::writes,
          &DeviceStats::responses_written,
          &DeviceStats::responses_rejected,
          &DeviceStats::responses_abandoned,
          &DeviceStats::responses_stale_dropped,
          &DeviceStats::stale_epoch_blocked,
          &DeviceStats::recovered_answers,
          &DeviceStats::recovered_already_answered,
          &DeviceStats::recovered_groups,
          &DeviceStats::guard_answered,
          &DeviceStats::duplicate_cookies,
          &DeviceStats::drain_epoch,
          &DeviceStats::drain_transitions,
          &DeviceStats::drains,
          &DeviceStats::function_resets,
          &DeviceStats::quarantines,
          &DeviceStats::drain_unaccounted};
}

// The plain members of DeviceStats::paging (all but the unmap histogram).
std::vector<uint64_t PagingCounters::*> PagingMembers() {
  return {&PagingCounters::resident_bytes,
          &PagingCounters::budget_bytes,
          &PagingCounters::resident_units,
          &PagingCounters::partial_units,
          &PagingCounters::evicted_units,
          &PagingCounters::evicted_bytes,
          &PagingCounters::unmap_calls,
          &PagingCounters::unmap_failures,
          &PagingCounters::refaults,
          &PagingCounters::thrash_protections,
          &PagingCounters::dirty_second_chances,
          &PagingCounters::over_budget,
          &PagingCounters::deferred_groups};
}

// Each plain member i holds 1000 + i, each reason r holds 5000 + r; groups is large enough that
// outstanding() stays positive.
DeviceStats Distinct() {
  DeviceStats s;
  uint64_t v = 1000;
  for (auto m : PlainMembers()) s.*m = v++;
  for (auto m : PagingMembers()) s.paging.*m = v++;
  s.groups = 1'000'000;
  for (size_t r = 0; r < s.invalid_by_reason.size(); ++r) s.invalid_by_reason[r] = 5000 + r;
  s.batch_records.Record(7);
  s.latency_ns.Record(2'000'000);
  s.paging.unmap_ns.Record(3'000);
  return s;
}

const Json* At(const Json& j, const StatField& f) {
  const Json* at = &j;
  if (!f.group().empty()) {
    auto g = j.find(std::string(f.group()));
    if (g == j.end()) return nullptr;
    at = &*g;
  }
  auto it = at->find(std::string(f.leaf()));
  return it == at->end() ? nullptr : &*it;
}

std::string ReadSource(const std::string& path) {
  std::ifstream in(std::string(IOPFD_SOURCE_DIR) + "/" + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A member added to DeviceStats fails here until it is listed in PlainMembers() (or is a
// histogram), and then in EveryCounterHasItsOwnRow until the table has a row for it.
TEST(StatTableTest, EveryMemberOfDeviceStatsIsListed) {
  static_assert(iopfd_testing::MemberCount<DeviceStats>() == 34,
                "a member was added to DeviceStats: list it in PlainMembers() and give it a row "
                "in StatFields()");
  EXPECT_EQ(PlainMembers().size() + 4, 34u)
      << "plain members + invalid_by_reason + paging + 2 histograms";
  static_assert(iopfd_testing::MemberCount<PagingCounters>() == 14,
                "a member was added to PagingCounters: list it in PagingMembers() and give it a "
                "row in StatFields()");
  EXPECT_EQ(PagingMembers().size() + 1, 14u) << "plain members + the unmap histogram";
}

TEST(StatTableTest, EveryCounterHasItsOwnRow) {
  const DeviceStats s = Distinct();
  std::set<uint64_t> wanted;
  for (auto m : PlainMembers()) wanted.insert(s.*m);
  for (auto m : PagingMembers()) wanted.insert(s.paging.*m);
  for (uint64_t r : s.invalid_by_reason) wanted.insert(r);
  std::set<uint64_t> shown;
  std::set<std::string> keys;
  for (const StatField& f : StatFields()) {
    EXPECT_TRUE(keys.insert(f.key).second) << "two rows named " << f.key;
    EXPECT_FALSE(f.label.empty()) << f.key;
    EXPECT_FALSE(f.help.empty()) << f.key;
    if (f.kind == StatField::Kind::kPercentiles) {
      EXPECT_NE(f.histogram, nullptr) << f.key;
      continue;
    }
    if (f.key == "outstanding") {
      EXPECT_EQ(f.Of(s), s.outstanding());
      continue;
    }
    EXPECT_TRUE(shown.insert(f.Of(s)).second) << f.key << " reads a member another row reads";
  }
  EXPECT_EQ(shown, wanted) << "a counter of DeviceStats has no row, or a row reads no counter";
}

TEST(StatTableTest, TheJsonHoldsEveryRowWhereItsKeySays) {
  const DeviceStats s = Distinct();
  Json j = StatsJson("gpu\"0", s);
  EXPECT_EQ(j["name"], "gpu\"0");
  for (const StatField& f : StatFields()) {
    const Json* v = At(j, f);
    ASSERT_NE(v, nullptr) << f.key;
    if (f.kind == StatField::Kind::kPercentiles) {
      const Histogram& h = f.histogram(s);
      EXPECT_EQ((*v)["count"], h.count()) << f.key;
      EXPECT_EQ((*v)["p50"], h.Percentile(0.5)) << f.key;
      EXPECT_EQ((*v)["p99"], h.Percentile(0.99)) << f.key;
      EXPECT_EQ((*v)["max"], h.max()) << f.key;
    } else {
      EXPECT_EQ(*v, f.Of(s)) << f.key;
    }
  }
  // The shape the IDL declares: the groups are objects, the reasons all there.
  EXPECT_EQ(j["drain"]["epoch"], s.drain_epoch);
  EXPECT_EQ(j["invalid_by_reason"].size(), static_cast<size_t>(InvalidReason::kCount));
  EXPECT_EQ(j["invalid_by_reason"]["no_region"],
            s.invalid_by_reason[static_cast<int>(InvalidReason::kNoRegion)]);
  EXPECT_EQ(j["latency_ns"]["max"], 2'000'000u);
}

// --stats-json and the final-counters entry are the same object, on one line, escaped.
TEST(StatTableTest, TheOneLineFormIsTheSameObject) {
  const DeviceStats s = Distinct();
  const std::string line = FormatStatsJson("a\"b\\c", s);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(Json::parse(line), StatsJson("a\"b\\c", s));
}

TEST(StatTableTest, PrometheusHasOneHelpAndTypePerFamilyAndEverySample) {
  const DeviceStats a = Distinct();
  DeviceStats b;
  const std::string text = StatsPrometheus({{"a", &a}, {"we\"ird\\", &b}});
  std::set<std::string> families;
  for (const StatField& f : StatFields()) {
    if (f.metric.empty()) continue;
    families.insert(f.metric);
    if (f.kind == StatField::Kind::kPercentiles) {
      EXPECT_THAT(text, HasSubstr(f.metric + "_count{device=\"a\"} 1\n"));
      continue;
    }
    std::string labels = "device=\"a\"" + (f.labels.empty() ? "" : "," + f.labels);
    EXPECT_THAT(text, HasSubstr(f.metric + "{" + labels + "} " + std::to_string(f.Of(a)) + "\n"));
  }
  for (const std::string& m : families) {
    size_t help = text.find("# HELP " + m + " ");
    EXPECT_NE(help, std::string::npos) << m;
    EXPECT_EQ(text.find("# HELP " + m + " ", help + 1), std::string::npos) << m << " twice";
    EXPECT_NE(text.find("# TYPE " + m + " "), std::string::npos) << m;
  }
  // Label values escaped; nanoseconds in seconds.
  EXPECT_THAT(text, HasSubstr("iopfd_groups_total{device=\"we\\\"ird\\\\\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("iopfd_response_latency_seconds_sum{device=\"a\"} 0.002\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE iopfd_response_latency_seconds summary\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE iopfd_outstanding_groups gauge\n"));
  // Names that existed before the table keep their meaning.
  EXPECT_THAT(text, HasSubstr("iopfd_responses_total{device=\"a\",code=\"success\"} "));
  EXPECT_THAT(text, HasSubstr("iopfd_invariant_violations_total{device=\"a\",kind="
                              "\"duplicate_cookie\"} "));
}

// A row in a group the table does not declare would be missing from the interface file.
TEST(StatTableTest, EveryGroupOfRowsIsDeclared) {
  for (const StatField& f : StatFields()) {
    if (f.group().empty()) continue;
    bool declared = false;
    for (const StatGroup& g : StatGroups()) declared |= g.key == f.group();
    EXPECT_TRUE(declared) << f.key << ": group " << f.group() << " is not in StatGroups()";
  }
}

// The IDL and the docs are made from the table: when a row changes, paste what this prints.
TEST(StatTableTest, TheIdlDeclaresWhatTheTableHolds) {
  const std::string idl = ReadSource("lib/control/io.iopfd.varlink");
  ASSERT_FALSE(idl.empty());
  EXPECT_NE(idl.find(StatsIdl()), std::string::npos)
      << "lib/control/io.iopfd.varlink must hold, verbatim:\n"
      << StatsIdl();
}

TEST(StatTableTest, TheDocsListWhatTheTableHolds) {
  const std::string doc = ReadSource("docs/CONTROL.md");
  ASSERT_FALSE(doc.empty());
  EXPECT_NE(doc.find(StatsMarkdown()), std::string::npos)
      << "docs/CONTROL.md must hold, verbatim:\n"
      << StatsMarkdown();
}

}  // namespace
}  // namespace iopfd
