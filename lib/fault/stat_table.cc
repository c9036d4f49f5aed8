#include "iopfd/fault/stat_table.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"

namespace iopfd {
namespace {

using Kind = StatField::Kind;

// Shorthands for the rows below. A captureless lambda converts to the function pointer.
StatField Counter(std::string key, std::string label, std::string help, std::string metric,
                  uint64_t (*value)(const DeviceStats&), std::string unit = "") {
  StatField f;
  f.key = std::move(key);
  f.kind = Kind::kCounter;
  f.unit = std::move(unit);
  f.label = std::move(label);
  f.help = std::move(help);
  f.metric = std::move(metric);
  f.value = value;
  return f;
}

StatField Gauge(std::string key, std::string label, std::string help, std::string metric,
                uint64_t (*value)(const DeviceStats&)) {
  StatField f =
      Counter(std::move(key), std::move(label), std::move(help), std::move(metric), value);
  f.kind = Kind::kGauge;
  return f;
}

StatField Labelled(StatField f, std::string labels) {
  f.labels = std::move(labels);
  return f;
}

StatField Percentiles(std::string key, std::string label, std::string help, std::string metric,
                      std::string unit, const Histogram& (*histogram)(const DeviceStats&)) {
  StatField f;
  f.key = std::move(key);
  f.kind = Kind::kPercentiles;
  f.unit = std::move(unit);
  f.label = std::move(label);
  f.help = std::move(help);
  f.metric = std::move(metric);
  f.histogram = histogram;
  return f;
}

constexpr const char* kResponses = "iopfd_responses_total";
constexpr const char* kInvariants = "iopfd_invariant_violations_total";

// Longer than 60 lines: it is the table, one row per counter, in the order outputs list them.
std::vector<StatField> MakeFields() {
  std::vector<StatField> t;
  // The fault queue's reads.
  t.push_back(Counter("reads", "reads", "Fault queue reads that returned records.",
                      "iopfd_fault_reads_total", [](const DeviceStats& s) { return s.reads; }));
  t.push_back(Counter("empty_reads", "empty reads",
                      "Fault queue reads that returned nothing (the queue was empty).",
                      "iopfd_empty_reads_total",
                      [](const DeviceStats& s) { return s.empty_reads; }));
  t.push_back(Counter("read_grows", "read grows",
                      "Reads refused with EINVAL (a record larger than the buffer) that grew the "
                      "read buffer.",
                      "iopfd_read_buffer_grows_total",
                      [](const DeviceStats& s) { return s.read_grows; }));
  t.push_back(Counter("records", "records", "Page request records read from the fault queue.",
                      "iopfd_page_requests_total", [](const DeviceStats& s) { return s.records; }));
  t.push_back(Counter("groups", "groups", "Page request groups (distinct cookies) read.",
                      "iopfd_groups_total", [](const DeviceStats& s) { return s.groups; }));
  // How they were answered.
  t.push_back(
      Labelled(Counter("responses_success", "success", "Groups answered SUCCESS.", kResponses,
                       [](const DeviceStats& s) { return s.responses_success; }),
               "code=\"success\""));
  t.push_back(Counter("responses_invalid", "invalid",
                      "Groups answered INVALID: the sum of invalid_by_reason (Prometheus: "
                      "iopfd_responses_total{code=\"invalid\"}).",
                      "", [](const DeviceStats& s) { return s.responses_invalid; }));
  for (int r = 0; r < static_cast<int>(InvalidReason::kCount); ++r) {
    const std::string name(InvalidReasonName(static_cast<InvalidReason>(r)));
    StatField f = Labelled(
        Counter("invalid_by_reason." + name, name,
                std::string(InvalidReasonHelp(static_cast<InvalidReason>(r))), kResponses, nullptr),
        absl::StrCat("code=\"invalid\",reason=\"", name, "\""));
    f.index = r;
    t.push_back(std::move(f));
  }
  // Mapping.
  t.push_back(Counter("map_calls", "map calls", "IOMMU map calls issued.", "iopfd_map_calls_total",
                      [](const DeviceStats& s) { return s.map_calls; }));
  t.push_back(Counter("map_failures", "map failures", "IOMMU map calls that failed.",
                      "iopfd_map_failures_total",
                      [](const DeviceStats& s) { return s.map_failures; }));
  t.push_back(Counter(
      "bytes_mapped", "bytes mapped", "Bytes mapped into IO page tables.",
      "iopfd_mapped_bytes_total", [](const DeviceStats& s) { return s.bytes_mapped; }, "bytes"));
  t.push_back(Counter("pages_already_mapped", "pages already mapped",
                      "Requested pages found mapped (answered without a map call).",
                      "iopfd_pages_already_mapped_total",
                      [](const DeviceStats& s) { return s.pages_already_mapped; }));
  t.push_back(Counter("pages_deduped", "pages deduped",
                      "Requests for a page another request of the same batch asked for.",
                      "iopfd_pages_deduped_total",
                      [](const DeviceStats& s) { return s.pages_deduped; }));
  t.push_back(Counter("pages_prefetched", "pages prefetched",
                      "Pages mapped ahead of a request (prefetch window, length hint).",
                      "iopfd_pages_prefetched_total",
                      [](const DeviceStats& s) { return s.pages_prefetched; }));
  // The responses' writes.
  t.push_back(Counter("writes", "writes", "Response writes issued to the fault queue.",
                      "iopfd_response_writes_total",
                      [](const DeviceStats& s) { return s.writes; }));
  t.push_back(Counter("responses_written", "responses written", "Responses the kernel accepted.",
                      "iopfd_responses_written_total",
                      [](const DeviceStats& s) { return s.responses_written; }));
  t.push_back(Counter(
      "responses_rejected", "responses rejected", "Responses the kernel refused (unknown cookie).",
      "iopfd_responses_rejected_total", [](const DeviceStats& s) { return s.responses_rejected; }));
  t.push_back(Counter("responses_abandoned", "responses abandoned",
                      "Responses dropped because the fault queue failed.",
                      "iopfd_responses_abandoned_total",
                      [](const DeviceStats& s) { return s.responses_abandoned; }));
  t.push_back(Counter("responses_stale_dropped", "stale dropped",
                      "Responses dropped unwritten because their attachment was drained (parked): "
                      "the kernel answered those groups itself.",
                      "iopfd_responses_stale_dropped_total",
                      [](const DeviceStats& s) { return s.responses_stale_dropped; }));
  t.push_back(
      Labelled(Counter("stale_epoch_blocked", "stale epoch blocked",
                       "Responses the epoch fence stopped (read before a park, still "
                       "queued after it): a bug, dropped, never written.",
                       kInvariants, [](const DeviceStats& s) { return s.stale_epoch_blocked; }),
               "kind=\"stale_epoch_blocked\""));
  // Demand paging (docs/PAGING.md): this device's scope.
  t.push_back(Gauge("paging.resident_bytes", "resident bytes",
                    "Bytes iopfd holds mapped (and so pinned) for the device now.",
                    "iopfd_resident_bytes",
                    [](const DeviceStats& s) { return s.paging.resident_bytes; }));
  t.push_back(Gauge("paging.budget_bytes", "budget bytes",
                    "The device's max_resident budget ([limits]); 0 when unbounded.",
                    "iopfd_resident_budget_bytes",
                    [](const DeviceStats& s) { return s.paging.budget_bytes; }));
  t.push_back(Gauge("paging.resident_units", "resident units",
                    "Map units iopfd holds mapped for the device now, whole or in part.",
                    "iopfd_resident_units",
                    [](const DeviceStats& s) { return s.paging.resident_units; }));
  t.push_back(Gauge("paging.partial_units", "partial units",
                    "Of the resident map units, those holding only some of their pages (a page "
                    "first touched alone is mapped alone: first_touch = \"page\").",
                    "iopfd_partial_units",
                    [](const DeviceStats& s) { return s.paging.partial_units; }));
  t.push_back(Counter("paging.evicted_units", "evicted units",
                      "Map units unmapped to stay within a budget.", "iopfd_evicted_units_total",
                      [](const DeviceStats& s) { return s.paging.evicted_units; }));
  t.push_back(Counter(
      "paging.evicted_bytes", "evicted bytes", "Bytes unmapped to stay within a budget.",
      "iopfd_evicted_bytes_total", [](const DeviceStats& s) { return s.paging.evicted_bytes; },
      "bytes"));
  t.push_back(Counter("paging.unmap_calls", "unmap calls",
                      "IOMMU unmap calls issued (adjacent evicted units share one).",
                      "iopfd_unmap_calls_total",
                      [](const DeviceStats& s) { return s.paging.unmap_calls; }));
  t.push_back(Counter("paging.unmap_failures", "unmap failures",
                      "IOMMU unmap calls that failed (the unit stays mapped, never evicted).",
                      "iopfd_unmap_failures_total",
                      [](const DeviceStats& s) { return s.paging.unmap_failures; }));
  t.push_back(Counter("paging.refaults", "refaults", "Map units mapped again after an eviction.",
                      "iopfd_refaults_total",
                      [](const DeviceStats& s) { return s.paging.refaults; }));
  t.push_back(Counter("paging.thrash_protections", "thrash protections",
                      "Map units protected from eviction after re-faulting quickly, repeatedly.",
                      "iopfd_thrash_protections_total",
                      [](const DeviceStats& s) { return s.paging.thrash_protections; }));
  t.push_back(Counter("paging.dirty_second_chances", "dirty second chances",
                      "Map units kept once more because the device wrote them since they were "
                      "last looked at (IOMMU dirty bits, space.dirty_tracking).",
                      "iopfd_dirty_second_chances_total",
                      [](const DeviceStats& s) { return s.paging.dirty_second_chances; }));
  t.push_back(Counter("paging.over_budget", "over budget",
                      "Map units that could not be mapped within a budget (the group waited, or "
                      "was answered INVALID when it could never fit).",
                      "iopfd_over_budget_total",
                      [](const DeviceStats& s) { return s.paging.over_budget; }));
  t.push_back(Counter("paging.deferred_groups", "deferred groups",
                      "Groups that waited for room until answers were written.",
                      "iopfd_deferred_groups_total",
                      [](const DeviceStats& s) { return s.paging.deferred_groups; }));
  // The drain state machine.
  t.push_back(Gauge("drain.epoch", "drain epoch",
                    "Incremented at every resume: answers to page requests read in an older "
                    "epoch are never written.",
                    "iopfd_drain_epoch", [](const DeviceStats& s) { return s.drain_epoch; }));
  t.push_back(Counter("drain.transitions", "drain transitions", "Drain state machine transitions.",
                      "iopfd_drain_transitions_total",
                      [](const DeviceStats& s) { return s.drain_transitions; }));
  t.push_back(Counter("drain.drains", "drains completed",
                      "Drains and resets that reached running again.", "iopfd_drains_total",
                      [](const DeviceStats& s) { return s.drains; }));
  t.push_back(Counter("drain.function_resets", "function resets",
                      "Function level resets issued by drains.", "iopfd_function_resets_total",
                      [](const DeviceStats& s) { return s.function_resets; }));
  t.push_back(Counter("drain.quarantines", "quarantines", "Times the device was quarantined.",
                      "iopfd_quarantines_total",
                      [](const DeviceStats& s) { return s.quarantines; }));
  t.push_back(
      Labelled(Counter("drain.unaccounted", "drain unaccounted",
                       "Drains that found a group read and not accounted for after the "
                       "flush (a bug).",
                       kInvariants, [](const DeviceStats& s) { return s.drain_unaccounted; }),
               "kind=\"drain_unaccounted\""));
  // What a crashed iopfd left (docs/SERVICE.md, Crashes).
  t.push_back(Counter("recovered_answers", "recovered answers",
                      "Answers a crashed iopfd owed, written by this one and accepted.",
                      "iopfd_recovered_answers_total",
                      [](const DeviceStats& s) { return s.recovered_answers; }));
  t.push_back(Counter("recovered_already_answered", "recovered already answered",
                      "Answers a crashed iopfd owed that the kernel had already taken (rejected "
                      "now, harmlessly).",
                      "iopfd_recovered_already_answered_total",
                      [](const DeviceStats& s) { return s.recovered_already_answered; }));
  t.push_back(Counter("recovered_groups", "recovered groups",
                      "Groups a crashed iopfd read and never resolved, resolved by this one (also "
                      "counted in groups).",
                      "iopfd_recovered_groups_total",
                      [](const DeviceStats& s) { return s.recovered_groups; }));
  // Invariants: each stays 0.
  t.push_back(Labelled(Counter("guard_answered", "guard answered",
                               "Groups answered INVALID by the exactly-once guard (a bug).",
                               kInvariants, [](const DeviceStats& s) { return s.guard_answered; }),
                       "kind=\"guard_answered\""));
  t.push_back(
      Labelled(Counter("duplicate_cookies", "duplicate cookies",
                       "Cookies read again while still outstanding (a kernel bug).", kInvariants,
                       [](const DeviceStats& s) { return s.duplicate_cookies; }),
               "kind=\"duplicate_cookie\""));
  t.push_back(Gauge("outstanding", "outstanding", "Groups read and not yet answered.",
                    "iopfd_outstanding_groups",
                    [](const DeviceStats& s) { return s.outstanding(); }));
  // Distributions.
  t.push_back(Percentiles(
      "batch", "batch", "Records per fault queue read.", "iopfd_read_batch_records", "records",
      [](const DeviceStats& s) -> const Histogram& { return s.batch_records; }));
  t.push_back(Percentiles("latency_ns", "latency", "Read completion to response write completion.",
                          "iopfd_response_latency_seconds", "ns",
                          [](const DeviceStats& s) -> const Histogram& { return s.latency_ns; }));
  t.push_back(Percentiles(
      "paging.unmap_ns", "unmap latency", "Duration of each IOMMU unmap call (evictions).",
      "iopfd_unmap_latency_seconds", "ns",
      [](const DeviceStats& s) -> const Histogram& { return s.paging.unmap_ns; }));
  return t;
}

// Appends help as "# " comment lines indented by indent, wrapped at 100 columns.
void AppendComment(std::string* out, const std::string& indent, std::string_view help) {
  std::string line;
  size_t pos = 0;
  while (pos < help.size()) {
    size_t space = help.find(' ', pos);
    if (space == std::string_view::npos) space = help.size();
    std::string_view word = help.substr(pos, space - pos);
    if (!line.empty() && indent.size() + 2 + line.size() + 1 + word.size() > 100) {
      absl::StrAppend(out, indent, "# ", line, "\n");
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", std::string(word));
    pos = space + 1;
  }
  if (!line.empty()) absl::StrAppend(out, indent, "# ", line, "\n");
}

// Returns the IDL field list for the rows of `group` ("" for the top level), top-level groups
// appearing once, where their first row is.
std::vector<std::string> IdlFields(std::string_view group) {
  std::vector<std::string> fields;
  std::vector<std::string_view> groups_done;
  for (const StatField& f : StatFields()) {
    if (group.empty() && !f.group().empty()) {
      if (std::find(groups_done.begin(), groups_done.end(), f.group()) != groups_done.end()) {
        continue;
      }
      groups_done.push_back(f.group());
      for (const StatGroup& g : StatGroups()) {
        if (g.key != f.group()) continue;
        std::string text;
        AppendComment(&text, "  ", g.help);
        absl::StrAppend(&text, "  ", g.key, ": ", g.idl_type);
        fields.push_back(std::move(text));
      }
      continue;
    }
    if (f.group() != group) continue;
    std::string text;
    AppendComment(&text, "  ", f.help);
    absl::StrAppend(&text, "  ", std::string(f.leaf()), ": ",
                    f.kind == Kind::kPercentiles ? "Percentiles" : "int");
    fields.push_back(std::move(text));
  }
  return fields;
}

std::string IdlType(const std::string& name, const std::vector<std::string>& fields) {
  std::string out = absl::StrCat("type ", name, " (\n");
  for (size_t i = 0; i < fields.size(); ++i) {
    absl::StrAppend(&out, fields[i], i + 1 < fields.size() ? ",\n" : "\n");
  }
  absl::StrAppend(&out, ")\n");
  return out;
}

}  // namespace

uint64_t StatField::Of(const DeviceStats& s) const {
  if (index >= 0) return s.invalid_by_reason[static_cast<size_t>(index)];
  return value != nullptr ? value(s) : 0;
}

std::string_view StatField::group() const {
  size_t dot = key.find('.');
  return dot == std::string::npos ? std::string_view() : std::string_view(key).substr(0, dot);
}

std::string_view StatField::leaf() const {
  size_t dot = key.find('.');
  return dot == std::string::npos ? std::string_view(key) : std::string_view(key).substr(dot + 1);
}

const std::vector<StatField>& StatFields() {
  static const auto* const kFields = new std::vector<StatField>(MakeFields());
  return *kFields;
}

const std::vector<StatGroup>& StatGroups() {
  static const auto* const kGroups = [] {
    std::string reasons;
    for (int r = 0; r < static_cast<int>(InvalidReason::kCount); ++r) {
      absl::StrAppend(&reasons, r == 0 ? "" : ", ",
                      std::string(InvalidReasonName(static_cast<InvalidReason>(r))));
    }
    return new std::vector<StatGroup>{
        {"invalid_by_reason", "[string]int",
         absl::StrCat("INVALID answers by reason: ", reasons, " (docs/CONTROL.md, Counters).")},
        {"paging", "PagingCounters",
         "Demand paging in the device's scope: what it holds mapped within its budget, and what "
         "was evicted (docs/PAGING.md)."},
        {"drain", "DrainCounters", "What the drain state machine did to the device."},
    };
  }();
  return *kGroups;
}

const std::vector<StatMetric>& StatMetrics() {
  static const auto* const kMetrics = new std::vector<StatMetric>{
      {kResponses, "Groups answered, by code and, for INVALID, reason."},
      {kInvariants, "Bugs caught and contained, by kind (each should stay 0)."},
  };
  return *kMetrics;
}

nlohmann::json StatsJson(std::string_view name, const DeviceStats& s, bool buckets) {
  nlohmann::json out = {{"name", std::string(name)}};
  for (const StatField& f : StatFields()) {
    nlohmann::json& slot =
        f.group().empty() ? out[f.key] : out[std::string(f.group())][std::string(f.leaf())];
    if (f.kind == Kind::kPercentiles) {
      const Histogram& h = f.histogram(s);
      slot = {{"count", h.count()},
              {"p50", h.Percentile(0.5)},
              {"p99", h.Percentile(0.99)},
              {"max", h.max()}};
      if (buckets) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& [le, count] : h.Buckets()) list.push_back({{"le", le}, {"count", count}});
        slot["buckets"] = std::move(list);
      }
    } else {
      slot = f.Of(s);
    }
  }
  return out;
}

std::string PrometheusLabelValue(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string StatsPrometheus(
    const std::vector<std::pair<std::string, const DeviceStats*>>& devices) {
  // Families in the order their first row appears; a family's samples device by device.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const StatField*>> rows;
  for (const StatField& f : StatFields()) {
    if (f.metric.empty()) continue;
    if (rows.find(f.metric) == rows.end()) order.push_back(f.metric);
    rows[f.metric].push_back(&f);
  }
  std::string out;
  for (const std::string& metric : order) {
    const std::vector<const StatField*>& family = rows[metric];
    const StatField& first = *family.front();
    std::string help = first.help;
    for (const StatMetric& m : StatMetrics()) {
      if (m.name == metric) help = m.help;
    }
    const char* type = first.kind == Kind::kPercentiles ? "summary"
                       : first.kind == Kind::kGauge     ? "gauge"
                                                        : "counter";
    absl::StrAppend(&out, "# HELP ", metric, " ", help, "\n# TYPE ", metric, " ", type, "\n");
    for (const auto& [name, stats] : devices) {
      const std::string device = absl::StrCat("device=\"", PrometheusLabelValue(name), "\"");
      for (const StatField* f : family) {
        const std::string labels =
            f->labels.empty() ? device : absl::StrCat(device, ",", f->labels);
        if (f->kind != Kind::kPercentiles) {
          absl::StrAppend(&out, metric, "{", labels, "} ", f->Of(*stats), "\n");
          continue;
        }
        // Nanoseconds are exported in seconds, the Prometheus base unit.
        const Histogram& h = f->histogram(*stats);
        const double scale = f->unit == "ns" ? 1e-9 : 1.0;
        for (double q : {0.5, 0.99}) {
          absl::StrAppend(&out, metric, "{", labels, ",quantile=\"", q, "\"} ",
                          static_cast<double>(h.Percentile(q)) * scale, "\n");
        }
        absl::StrAppend(&out, metric, "_sum{", labels, "} ", static_cast<double>(h.sum()) * scale,
                        "\n");
        absl::StrAppend(&out, metric, "_count{", labels, "} ", h.count(), "\n");
      }
    }
  }
  return out;
}

std::string StatsIdl() {
  std::vector<std::string> top = IdlFields("");
  top.insert(top.begin(), "  name: string");
  // A type for each group of rows (the others are maps, or made by hand: Percentiles).
  std::string out;
  for (const StatGroup& g : StatGroups()) {
    if (g.idl_type.empty() || g.idl_type[0] == '[') continue;
    absl::StrAppend(&out, "# ", g.help, "\n", IdlType(g.idl_type, IdlFields(g.key)), "\n");
  }
  absl::StrAppend(&out, "# One device's counters (docs/CONTROL.md, Counters).\n",
                  IdlType("DeviceStats", top));
  return out;
}

std::string StatsMarkdown() {
  std::string out =
      "| JSON key | Prometheus | unit | meaning |\n|----------|------------|------|---------|\n";
  for (const StatField& f : StatFields()) {
    std::string metric;
    if (!f.metric.empty()) {
      metric = f.labels.empty() ? absl::StrCat("`", f.metric, "`")
                                : absl::StrCat("`", f.metric, "{", f.labels, "}`");
    }
    std::string unit = f.unit;
    const char* what = f.kind == Kind::kPercentiles ? "count/p50/p99/max"
                       : f.kind == Kind::kGauge     ? "gauge"
                                                    : "";
    if (*what != '\0') absl::StrAppend(&unit, unit.empty() ? "" : ", ", what);
    absl::StrAppend(&out, "| `", f.key, "` | ", metric, " | ", unit, " | ", f.help, " |\n");
  }
  return out;
}

}  // namespace iopfd
