#include "iopfd/control/ctl_format.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;

TEST(FormatCountTest, ThousandsSeparators) {
  EXPECT_EQ(FormatCount(0), "0");
  EXPECT_EQ(FormatCount(999), "999");
  EXPECT_EQ(FormatCount(1000), "1,000");
  EXPECT_EQ(FormatCount(123456), "123,456");
  EXPECT_EQ(FormatCount(1234567), "1,234,567");
  EXPECT_EQ(FormatCount(std::numeric_limits<uint64_t>::max()), "18,446,744,073,709,551,615");
}

TEST(FormatBytesTest, Units) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1535), "1.5 KiB");  // 1.499 rounds to 1.5
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 20), "3.0 MiB");
  EXPECT_EQ(FormatBytes(3435973837), "3.2 GiB");
  EXPECT_EQ(FormatBytes(uint64_t{5} << 40), "5.0 TiB");
  EXPECT_EQ(FormatBytes(std::numeric_limits<uint64_t>::max()), "16.0 EiB");
}

TEST(FormatBytesTest, RoundingUpToTheNextUnit) {
  EXPECT_EQ(FormatBytes(1048524), "1023.9 KiB");  // 1023.949 KiB
  EXPECT_EQ(FormatBytes(1048525), "1.0 MiB");     // 1023.950 KiB would print as 1024.0
  EXPECT_EQ(FormatBytes((uint64_t{1} << 30) - 1), "1.0 GiB");
  EXPECT_EQ(FormatBytes(2047), "2.0 KiB");  // 1.999 KiB: the tenth carries into the whole
}

TEST(FormatNanosTest, Units) {
  EXPECT_EQ(FormatNanos(0), "0 ns");
  EXPECT_EQ(FormatNanos(999), "999 ns");
  EXPECT_EQ(FormatNanos(1000), "1.0 us");
  EXPECT_EQ(FormatNanos(1049), "1.0 us");
  EXPECT_EQ(FormatNanos(1050), "1.1 us");
  EXPECT_EQ(FormatNanos(12345), "12.3 us");
  EXPECT_EQ(FormatNanos(999949), "999.9 us");
  EXPECT_EQ(FormatNanos(999950), "1.0 ms");
  EXPECT_EQ(FormatNanos(1500000), "1.5 ms");
  EXPECT_EQ(FormatNanos(999999999), "1.0 s");
  EXPECT_EQ(FormatNanos(2500000000), "2.5 s");
  // Seconds are the largest unit, so long times keep growing there.
  EXPECT_EQ(FormatNanos(uint64_t{3600} * 1000000000), "3600.0 s");
}

TEST(FormatUptimeTest, LeadingZeroUnitsLeftOut) {
  EXPECT_EQ(FormatUptime(0), "0s");
  EXPECT_EQ(FormatUptime(999999), "0s");
  EXPECT_EQ(FormatUptime(42000000), "42s");
  EXPECT_EQ(FormatUptime(uint64_t{3661} * 1000000), "1h 1m 1s");
  EXPECT_EQ(FormatUptime(uint64_t{86405} * 1000000), "1d 0h 0m 5s");
}

TEST(ShortVarlinkNameTest, DropsInterface) {
  EXPECT_EQ(ShortVarlinkName("io.iopfd.NoSuchDevice"), "NoSuchDevice");
  EXPECT_EQ(ShortVarlinkName("org.varlink.service.MethodNotFound"), "MethodNotFound");
  EXPECT_EQ(ShortVarlinkName("Plain"), "Plain");
}

TEST(FormatStatusTest, Table) {
  Json p = {{"version", "0.1.0"},
            {"uptime_usec", uint64_t{93784} * 1000000 + 5},
            {"devices_configured", 3},
            {"devices_running", 2},
            {"health", "degraded"}};
  EXPECT_EQ(FormatStatus(p),
            "version  0.1.0\n"
            "uptime   1d 2h 3m 4s\n"
            "devices  3 configured, 2 running\n"
            "health   degraded\n");
  p["devices_quarantined"] = 1;
  p["devices_adopted"] = 0;
  p["devices_detached"] = 2;
  EXPECT_THAT(FormatStatus(p),
              HasSubstr("devices  3 configured, 2 running, 2 detached, 1 quarantined\n"));
  p["uevents"] = {
      {"listening", true}, {"received", 1200}, {"malformed", 2}, {"foreign", 0}, {"overruns", 0}};
  EXPECT_THAT(FormatStatus(p),
              HasSubstr("uevents  1,200 received, 2 malformed, 0 foreign, 0 overruns\n"));
  p["uevents"] = {{"listening", false}};
  EXPECT_THAT(FormatStatus(p), HasSubstr("uevents  not followed (no netlink socket)\n"));
  p["fd_store"] = {{"enabled", true}, {"kept", 3}, {"room", 64}};
  EXPECT_THAT(FormatStatus(p),
              HasSubstr("fd store  3 of 64 entries (adopted devices survive a restart)\n"));
  p["fd_store"] = {{"enabled", false}, {"kept", 0}, {"room", 0}};
  EXPECT_THAT(FormatStatus(p),
              HasSubstr("fd store  not enabled (a restart hands adopted devices back)\n"));
}

TEST(FormatStatusTest, MissingAndMistypedFieldsShowDash) {
  EXPECT_EQ(FormatStatus(Json{{"version", 7}, {"uptime_usec", -5}}),
            "version  -\n"
            "uptime   -\n"
            "devices  - configured, - running\n"
            "health   -\n");
}

TEST(FormatDevicesTest, Table) {
  Json p = Json::parse(R"({"devices": [
    {"name": "gpu0", "attach": "vfio", "state": "quarantined", "epoch": 12, "pasids": [1, 2],
     "no_pasid_space": true,
     "counters": {"records": 2000000, "groups": 1234567, "success": 1234000, "invalid": 567,
                  "outstanding": 0}},
    {"name": "nic1", "attach": "vfio", "state": "failed", "pasids": [], "no_pasid_space": false,
     "counters": {"records": 12, "groups": 12, "success": 10, "invalid": 0, "outstanding": 2}},
    {"name": "acc2", "attach": "vfio", "state": "running", "pasids": [3, 4, 5, 6, 7, 8],
     "no_pasid_space": false}
  ]})");
  EXPECT_EQ(FormatDevices(p),
            "NAME  ATTACH  STATE        EPOCH  PASIDS           GROUPS    SUCCESS  INVALID  "
            "OUTSTANDING\n"
            "gpu0  vfio    quarantined     12  no-pasid,1,2  1,234,567  1,234,000      567  "
            "          0\n"
            "nic1  vfio    failed           -  -                    12         10        0  "
            "          2\n"
            "acc2  vfio    running          -  3,4,5,6 +2            -          -        -  "
            "          -\n");
}

TEST(FormatDevicesTest, NoDevices) {
  EXPECT_EQ(FormatDevices(Json{{"devices", Json::array()}}), "no devices\n");
  EXPECT_EQ(FormatDevices(Json::object()), "no devices\n");
}

TEST(FormatDevicesTest, MultibyteNamesAlignByCharacters) {
  Json p = {{"devices",
             {{{"name", "g\xc3\xa9"}, {"attach", "vfio"}, {"state", "running"}},
              {{"name", "abcd"}, {"attach", "vfio"}, {"state", "running"}}}}};
  std::string out = FormatDevices(p);
  EXPECT_THAT(out, HasSubstr("\ng\xc3\xa9    vfio"));
  EXPECT_THAT(out, HasSubstr("\nabcd  vfio"));
}

TEST(FormatStatsTest, Blocks) {
  Json p = Json::parse(R"({"devices": [
    {"name": "gpu0", "reads": 1204, "empty_reads": 12, "read_grows": 1, "records": 1234567,
     "groups": 123456, "responses_success": 123000, "responses_invalid": 456,
     "invalid_by_reason": {"no_space": 0, "no_region": 400, "permission": 56, "map_failed": 0,
                           "foreign_device": 0, "oversized_group": 0, "malformed": 0,
                           "unresolved": 0},
     "map_calls": 12345, "map_failures": 2, "bytes_mapped": 1610612736,
     "pages_already_mapped": 3000, "pages_deduped": 100, "pages_prefetched": 4096,
     "writes": 5000, "responses_written": 123450, "responses_rejected": 4,
     "responses_abandoned": 2, "responses_stale_dropped": 7, "stale_epoch_blocked": 0,
     "drain": {"epoch": 3, "transitions": 17, "drains": 3, "function_resets": 1,
               "quarantines": 1, "unaccounted": 0},
     "recovered_answers": 5, "recovered_already_answered": 1, "recovered_groups": 2,
     "guard_answered": 0, "duplicate_cookies": 0, "outstanding": 0,
     "batch": {"count": 1204, "p50": 16, "p99": 64, "max": 128},
     "latency_ns": {"count": 123456, "p50": 12345, "p99": 1234567, "max": 4500000}},
    {"name": "nic1", "reads": 0, "empty_reads": 7, "read_grows": 0, "records": 0, "groups": 0,
     "responses_success": 0, "responses_invalid": 3,
     "invalid_by_reason": {"future_reason": 2, "malformed": 1, "no_space": 0},
     "map_calls": 0, "map_failures": 0, "bytes_mapped": 0, "pages_already_mapped": 0,
     "pages_deduped": 0, "pages_prefetched": 0, "writes": 0, "responses_written": 0,
     "responses_rejected": 0, "responses_abandoned": 0, "guard_answered": 0,
     "duplicate_cookies": 0, "outstanding": 0,
     "batch": {"count": 0, "p50": 0, "p99": 0, "max": 0},
     "latency_ns": {"count": 0, "p50": 0, "p99": 0, "max": 0}}
  ]})");
  EXPECT_EQ(FormatStats(p),
            "gpu0\n"
            "  reads                           1,204\n"
            "  empty reads                        12\n"
            "  read grows                          1\n"
            "  records                     1,234,567\n"
            "  groups                        123,456\n"
            "  success                       123,000\n"
            "  invalid                           456\n"
            "  map calls                      12,345\n"
            "  map failures                        2\n"
            "  bytes mapped                  1.5 GiB\n"
            "  pages already mapped            3,000\n"
            "  pages deduped                     100\n"
            "  pages prefetched                4,096\n"
            "  writes                          5,000\n"
            "  responses written             123,450\n"
            "  responses rejected                  4\n"
            "  responses abandoned                 2\n"
            "  stale dropped                       7\n"
            "  stale epoch blocked                 0\n"
            "  recovered answers                   5\n"
            "  recovered already answered          1\n"
            "  recovered groups                    2\n"
            "  guard answered                      0\n"
            "  duplicate cookies                   0\n"
            "  outstanding                         0\n"
            "  invalid by reason\n"
            "    no_region                       400\n"
            "    permission                       56\n"
            "  drain epoch         3\n"
            "  drain transitions  17\n"
            "  drains completed    3\n"
            "  function resets     1\n"
            "  quarantines         1\n"
            "  drain unaccounted   0\n"
            "  percentiles      COUNT      P50     P99     MAX\n"
            "  batch            1,204       16      64     128\n"
            "  latency        123,456  12.3 us  1.2 ms  4.5 ms\n"
            "  unmap latency        -        -       -       -\n"
            "\n"
            "nic1\n"
            "  reads                         0\n"
            "  empty reads                   7\n"
            "  read grows                    0\n"
            "  records                       0\n"
            "  groups                        0\n"
            "  success                       0\n"
            "  invalid                       3\n"
            "  map calls                     0\n"
            "  map failures                  0\n"
            "  bytes mapped                0 B\n"
            "  pages already mapped          0\n"
            "  pages deduped                 0\n"
            "  pages prefetched              0\n"
            "  writes                        0\n"
            "  responses written             0\n"
            "  responses rejected            0\n"
            "  responses abandoned           0\n"
            "  stale dropped                 -\n"
            "  stale epoch blocked           -\n"
            "  recovered answers             -\n"
            "  recovered already answered    -\n"
            "  recovered groups              -\n"
            "  guard answered                0\n"
            "  duplicate cookies             0\n"
            "  outstanding                   0\n"
            "  invalid by reason\n"
            "    malformed                   1\n"
            "    future_reason               2\n"
            "  percentiles    COUNT  P50  P99  MAX\n"
            "  batch              0    -    -    -\n"
            "  latency            0    -    -    -\n"
            "  unmap latency      -    -    -    -\n");
}

TEST(FormatStatsTest, SparseDeviceShowsDashes) {
  Json p = {{"devices", {{{"latency_ns", {{"count", 5}}}}}}};
  EXPECT_EQ(FormatStats(p),
            "-\n"
            "  reads                       -\n"
            "  empty reads                 -\n"
            "  read grows                  -\n"
            "  records                     -\n"
            "  groups                      -\n"
            "  success                     -\n"
            "  invalid                     -\n"
            "  map calls                   -\n"
            "  map failures                -\n"
            "  bytes mapped                -\n"
            "  pages already mapped        -\n"
            "  pages deduped               -\n"
            "  pages prefetched            -\n"
            "  writes                      -\n"
            "  responses written           -\n"
            "  responses rejected          -\n"
            "  responses abandoned         -\n"
            "  stale dropped               -\n"
            "  stale epoch blocked         -\n"
            "  recovered answers           -\n"
            "  recovered already answered  -\n"
            "  recovered groups            -\n"
            "  guard answered              -\n"
            "  duplicate cookies           -\n"
            "  outstanding                 -\n"
            "  invalid by reason           -\n"
            "  percentiles    COUNT  P50  P99  MAX\n"
            "  batch              -    -    -    -\n"
            "  latency            5    -    -    -\n"
            "  unmap latency      -    -    -    -\n");
}

TEST(FormatStatsTest, AllZeroReasonsSayNone) {
  Json p = {{"devices",
             {{{"name", "gpu0"}, {"invalid_by_reason", {{"no_space", 0}, {"no_region", 0}}}}}}};
  std::string out = FormatStats(p);
  EXPECT_THAT(out, ContainsRegex("\n  invalid by reason +none\n"));
  EXPECT_THAT(out, Not(HasSubstr("no_space")));
}

TEST(FormatStatsTest, NoDevices) {
  EXPECT_EQ(FormatStats(Json{{"devices", Json::array()}}), "no devices\n");
}

TEST(FormatReloadTest, Lists) {
  Json p = {{"added", {"gpu1"}}, {"removed", Json::array()}, {"kept", {"gpu0", "nic1"}}};
  EXPECT_EQ(FormatReload(p),
            "added      gpu1\n"
            "removed    -\n"
            "restarted  -\n"
            "kept       gpu0, nic1\n");
}

TEST(FormatReloadTest, FailuresDetachedAndRestartNeeds) {
  Json p = {{"added", Json::array()},
            {"removed", {"b"}},
            {"restarted", {"a"}},
            {"kept", Json::array()},
            {"detached", {"d"}},
            {"failed", {{{"device", "c"}, {"error", "c: open /dev/iommu:\nENOENT"}}}},
            {"restart_required", {"daemon.ring_entries"}}};
  EXPECT_EQ(FormatReload(p),
            "added          -\n"
            "removed        b\n"
            "restarted      a\n"
            "kept           -\n"
            "detached       d\n"
            "failed         c: c: open /dev/iommu: ENOENT\n"
            "needs restart  daemon.ring_entries\n");
}

TEST(FormatMonitorEventTest, OneLine) {
  EXPECT_EQ(FormatMonitorEvent(
                Json{{"event", "state"}, {"device", "gpu0"}, {"detail", "running -> failed"}}),
            "state gpu0: running -> failed");
  EXPECT_EQ(FormatMonitorEvent(Json{{"event", "reload"}, {"detail", "added gpu1"}}),
            "reload: added gpu1");
  EXPECT_EQ(FormatMonitorEvent(Json{{"event", "drain"}, {"device", "gpu0"}}), "drain gpu0");
  EXPECT_EQ(FormatMonitorEvent(Json{{"event", "x"}, {"detail", "two\nlines\r"}}), "x: two lines ");
  EXPECT_EQ(FormatMonitorEvent(Json::object()), "-");
}

TEST(FormatErrorTest, KeyValues) {
  EXPECT_EQ(FormatError("io.iopfd.Drain", "io.iopfd.NoSuchDevice", Json{{"device", "gpu9"}}),
            "iopfctl: Drain: NoSuchDevice: device=gpu9");
  EXPECT_EQ(FormatError("Halt", "io.iopfd.Busy", Json{{"reason", "draining"}, {"device", "gpu0"}}),
            "iopfctl: Halt: Busy: device=gpu0 reason=draining");
  EXPECT_EQ(FormatError("Drain", "io.iopfd.NotSupported",
                        Json{{"method", "io.iopfd.Drain"}, {"reason", "not implemented yet"}}),
            R"(iopfctl: Drain: NotSupported: method=io.iopfd.Drain reason="not implemented yet")");
  EXPECT_EQ(FormatError("Reload", "io.iopfd.InvalidConfig",
                        Json{{"errors", {"a.toml:3:1: unknown key \"x\"", "b"}}}),
            R"(iopfctl: Reload: InvalidConfig: errors=["a.toml:3:1: unknown key \"x\"","b"])");
  EXPECT_EQ(FormatError("Drain", "io.iopfd.Busy", Json{{"pasid", 5}, {"why", ""}}),
            R"(iopfctl: Drain: Busy: pasid=5 why="")");
}

TEST(FormatErrorTest, NoParameters) {
  EXPECT_EQ(FormatError("GetStatus", "org.varlink.service.MethodNotFound", Json::object()),
            "iopfctl: GetStatus: MethodNotFound");
  EXPECT_EQ(FormatError("GetStatus", "io.iopfd.Busy", nullptr), "iopfctl: GetStatus: Busy");
}

TEST(FormatErrorTest, AlwaysOneLine) {
  std::string line =
      FormatError("Reload", "io.iopfd.InvalidConfig", Json{{"errors", "line one\nline two"}});
  EXPECT_EQ(line, R"(iopfctl: Reload: InvalidConfig: errors="line one\nline two")");
}

TEST(FormatTest, NonObjectRepliesDoNotThrow) {
  for (const Json& p : {Json(), Json::array({1}), Json("text"), Json(3)}) {
    EXPECT_EQ(FormatDevices(p), "no devices\n");
    EXPECT_EQ(FormatStats(p), "no devices\n");
    EXPECT_THAT(FormatStatus(p), HasSubstr("version  -\n"));
    EXPECT_THAT(FormatReload(p), HasSubstr("added      -\n"));
    EXPECT_EQ(FormatMonitorEvent(p), "-");
  }
  // A devices array holding non-objects renders dashes rather than throwing.
  EXPECT_THAT(FormatDevices(Json{{"devices", {1, "x"}}}),
              HasSubstr("\n-     -       -          -  -"));
}

}  // namespace
}  // namespace iopfd

namespace iopfd {
namespace {

// GetStats' paging view follows the devices: the daemon's scope, then each address space's.
TEST(FormatStatsTest, PagingViewAfterTheDevices) {
  const auto p = nlohmann::json::parse(R"({
    "devices": [{"name": "gpu0"}],
    "paging": {
      "daemon": {"resident_bytes": 1048576, "budget_bytes": 0, "evicted_units": 0},
      "spaces": [
        {"device": "gpu0", "counters": {"resident_bytes": 262144, "budget_bytes": 524288,
                                        "resident_units": 7, "partial_units": 3,
                                        "evicted_units": 1234}},
        {"device": "gpu0", "pasid": 5, "counters": {"resident_bytes": 65536}}
      ]
    }
  })");
  const std::string out = FormatStats(p);
  EXPECT_THAT(out, ::testing::HasSubstr(
                       "\npaging\n"
                       "  all devices    1.0 MiB resident of unbounded, 0 units evicted\n"
                       "  gpu0 no pasid  256.0 KiB in 7 units (3 partial) resident of 512.0 KiB, "
                       "1,234 units evicted\n"
                       "  gpu0 pasid 5   64.0 KiB resident of -, - units evicted\n"))
      << out;
}

}  // namespace
}  // namespace iopfd
