// The table of a device's counters: every output of DeviceStats is made from it.
//
// GetStats and Detach replies, --stats-json, the final-counters journal entry, the Prometheus
// exposition, iopfctl's stats tables, and the DeviceStats type of the Varlink IDL and the
// counter table of docs/CONTROL.md (which tests compare with StatsIdl() and StatsMarkdown()).
// Adding a counter is one member in DeviceStats and one row here.
#ifndef IOPFD_FAULT_STAT_TABLE_H_
#define IOPFD_FAULT_STAT_TABLE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iopfd/fault/stats.h"
#include "nlohmann/json.hpp"

namespace iopfd {

// One exported value of DeviceStats.
struct StatField {
  enum class Kind {
    kCounter,      // only grows while the device is attached
    kGauge,        // goes up and down
    kPercentiles,  // a Histogram: {count, p50, p99, max} in JSON, a summary in Prometheus
  };
  // Where the value sits in the JSON object: "reads", or "group.key" inside a StatGroup
  // ("drain.epoch", "invalid_by_reason.no_region").
  std::string key;
  Kind kind = Kind::kCounter;
  // "" for a count of events or things; "bytes", "ns" (exported to Prometheus in seconds),
  // "records".
  std::string unit;
  std::string label;  // iopfctl's row label
  std::string help;   // what it counts, for the IDL, the docs and Prometheus
  // The Prometheus family it is a sample of, and the sample's labels in it besides `device`
  // (`code="invalid",reason="no_region"`). Empty: not exported, because another family holds
  // it (help says which).
  std::string metric;
  std::string labels;
  uint64_t (*value)(const DeviceStats&) = nullptr;              // kCounter, kGauge
  const Histogram& (*histogram)(const DeviceStats&) = nullptr;  // kPercentiles
  // For invalid_by_reason: which reason (value reads invalid_by_reason[index]).
  int index = -1;

  // Returns the value (kCounter, kGauge); 0 for kPercentiles.
  uint64_t Of(const DeviceStats& s) const;
  // Returns the group part of key ("drain" for "drain.epoch"), or "" at the top level.
  std::string_view group() const;
  // Returns the key within its group ("epoch" for "drain.epoch").
  std::string_view leaf() const;
};

// A JSON object inside the stats object: its rows are the StatFields whose key starts with
// "<key>.".
struct StatGroup {
  std::string key;       // "drain", "invalid_by_reason"
  std::string idl_type;  // its type in the IDL: "DrainCounters", "[string]int"
  std::string help;
};

// A Prometheus family with several samples (rows); a family of one row takes the row's help.
struct StatMetric {
  std::string name;
  std::string help;
};

// Returns every exported value, in the order outputs list them.
const std::vector<StatField>& StatFields();
// Returns the groups, in the order their first row appears in StatFields().
const std::vector<StatGroup>& StatGroups();
// Returns the help of the families with several samples.
const std::vector<StatMetric>& StatMetrics();

// Returns one device's stats as the JSON object of the IDL's DeviceStats: {"name": name, ...}
// with every row of StatFields(). With `buckets`, each Percentiles object also carries its
// histogram's non-empty buckets, "buckets": [{"le": upper bound, "count": n}, ...] ascending.
nlohmann::json StatsJson(std::string_view name, const DeviceStats& stats, bool buckets = false);

// Returns the Prometheus text exposition (format 0.0.4) of every row of StatFields() for the
// devices given as (name, stats), one HELP/TYPE block per family. Names are escaped as label
// values.
std::string StatsPrometheus(const std::vector<std::pair<std::string, const DeviceStats*>>& devices);

// Returns a Prometheus label value escaped for the text format (\\, \", \n).
std::string PrometheusLabelValue(std::string_view value);

// Returns the IDL text of the stats types made from the table: "type DrainCounters (...)" and
// "type DeviceStats (...)", each field with its help as a comment, wrapped at 100 columns.
// lib/control/io.iopfd.varlink must contain it verbatim (stat_table_test).
std::string StatsIdl();

// Returns the Markdown table of the counters (JSON key, Prometheus sample, unit, meaning) that
// docs/CONTROL.md must contain verbatim (stat_table_test).
std::string StatsMarkdown();

}  // namespace iopfd

#endif  // IOPFD_FAULT_STAT_TABLE_H_
