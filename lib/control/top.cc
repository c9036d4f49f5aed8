#include "iopfd/control/top.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/control/ctl_format.h"

namespace iopfd {
namespace {

using Json = nlohmann::json;

// Field readers that give 0 / "" for whatever is missing or of another type: the view must
// survive a daemon of another version.
uint64_t U64(const Json& j, std::string_view key) {
  if (!j.is_object()) return 0;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return 0;
  return it->is_number_unsigned() ? it->get<uint64_t>()
                                  : static_cast<uint64_t>(std::max<int64_t>(0, it->get<int64_t>()));
}
const Json& Obj(const Json& j, std::string_view key) {
  static const Json kEmpty = Json::object();
  if (!j.is_object()) return kEmpty;
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : kEmpty;
}
std::string Str(const Json& j, std::string_view key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}
const Json& Arr(const Json& j, std::string_view key) {
  static const Json kEmpty = Json::array();
  if (!j.is_object()) return kEmpty;
  auto it = j.find(key);
  return it != j.end() && it->is_array() ? *it : kEmpty;
}

std::map<uint64_t, uint64_t> Buckets(const Json& percentiles) {
  std::map<uint64_t, uint64_t> out;
  for (const Json& b : Arr(percentiles, "buckets")) out[U64(b, "le")] += U64(b, "count");
  return out;
}

// SGR sequences, or nothing without colour.
struct Style {
  bool on;
  std::string operator()(const char* code) const {
    return on ? absl::StrCat("\x1b[", code, "m") : "";
  }
};

// Cuts a line to `width` columns (the frame is ASCII but for device names, which are cut by
// bytes: names are ASCII in practice, and a cut one still fits).
std::string Fit(std::string_view line, int width) {
  return std::string(line.substr(0, static_cast<size_t>(std::max(width, 0))));
}

std::string Rate(const std::optional<double>& r) {
  if (!r) return "-";
  const double v = *r;
  char buf[32];
  if (v < 1000) {
    std::snprintf(buf, sizeof(buf), v < 10 && v != std::floor(v) ? "%.1f" : "%.0f", v);
  } else if (v < 1e6) {
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  }
  return buf;
}

std::string Nanos(const std::optional<uint64_t>& ns) { return ns ? FormatNanos(*ns) : "-"; }

bool NeedsAttention(const std::string& state) {
  return state == "quarantined" || state == "failed" || state == "?";
}
bool Transient(const std::string& state) { return state != "running" && !NeedsAttention(state); }

// The sort key's order: true when a comes first.
bool Before(const TopRow& a, const TopRow& b, TopSort sort) {
  auto num = [](const std::optional<double>& x) { return x.value_or(-1.0); };
  auto ns = [](const std::optional<uint64_t>& x) { return x ? static_cast<double>(*x) : -1.0; };
  switch (sort) {
    case TopSort::kFaults:
      return num(a.faults_per_s) > num(b.faults_per_s);
    case TopSort::kP99:
      return ns(a.p99_ns) > ns(b.p99_ns);
    case TopSort::kResident:
      return a.resident_bytes > b.resident_bytes;
    case TopSort::kEvictions:
      return num(a.evictions_per_s) > num(b.evictions_per_s);
    case TopSort::kName:
      return a.name < b.name;
    case TopSort::kState:
      return a.state < b.state;
  }
  return false;
}

constexpr TopSort kSortOrder[] = {TopSort::kFaults,    TopSort::kP99,  TopSort::kResident,
                                  TopSort::kEvictions, TopSort::kName, TopSort::kState};

}  // namespace

std::optional<uint64_t> BucketPercentile(const std::map<uint64_t, uint64_t>& buckets, double q) {
  uint64_t total = 0;
  for (const auto& [le, n] : buckets) total += n;
  if (total == 0) return std::nullopt;
  q = std::clamp(q, 0.0, 1.0);
  const auto rank =
      std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(total))));
  uint64_t seen = 0;
  for (const auto& [le, n] : buckets) {
    seen += n;
    if (seen >= rank) return le;
  }
  return buckets.rbegin()->first;
}

TopModel::Previous TopModel::ReadingOf(const Json& stats, uint64_t at_ns) {
  const Json& paging = Obj(stats, "paging");
  const Json& latency = Obj(stats, "latency_ns");
  Previous now;
  now.at_ns = at_ns;
  now.records = U64(stats, "records");
  now.invalid = U64(stats, "responses_invalid");
  now.evicted = U64(paging, "evicted_units");
  now.drains = U64(Obj(stats, "drain"), "drains");
  now.latency_count = U64(latency, "count");
  now.latency_buckets = Buckets(latency);
  return now;
}

double TopModel::AddRates(TopRow& row, const Previous& was, const Previous& now) {
  const double secs = static_cast<double>(now.at_ns - was.at_ns) / 1e9;
  row.faults_per_s = static_cast<double>(now.records - was.records) / secs;
  row.evictions_per_s = static_cast<double>(now.evicted - was.evicted) / secs;
  row.drained_now = now.drains > was.drains;
  // The answers written in the interval: the buckets' growth since the previous reading.
  std::map<uint64_t, uint64_t> delta;
  for (const auto& [le, n] : now.latency_buckets) {
    auto w = was.latency_buckets.find(le);
    const uint64_t before = w != was.latency_buckets.end() ? w->second : 0;
    if (n > before) delta[le] = n - before;
  }
  row.p50_ns = BucketPercentile(delta, 0.5);
  row.p99_ns = BucketPercentile(delta, 0.99);
  return static_cast<double>(now.invalid - std::min(now.invalid, was.invalid)) / secs;
}

void TopModel::Update(const TopSample& sample) {
  interval_s_ = previous_at_ns_ && sample.at_ns > *previous_at_ns_
                    ? static_cast<double>(sample.at_ns - *previous_at_ns_) / 1e9
                    : 0;
  // ListDevices: state and epoch by name.
  std::map<std::string, const Json*> listed;
  for (const Json& d : Arr(sample.devices, "devices")) listed[Str(d, "name")] = &d;

  std::map<std::string, Previous> next;
  rows_.clear();
  double faults = 0, invalid = 0, evictions = 0;
  for (const Json& s : Arr(sample.stats, "devices")) {
    TopRow row;
    row.name = Str(s, "name");
    auto l = listed.find(row.name);
    const Json& paging = Obj(s, "paging");
    row.state = l != listed.end() ? Str(*l->second, "state") : "?";
    row.epoch = l != listed.end() ? U64(*l->second, "epoch") : U64(Obj(s, "drain"), "epoch");
    row.resident_bytes = U64(paging, "resident_bytes");
    row.budget_bytes = U64(paging, "budget_bytes");
    Previous now = ReadingOf(s, sample.at_ns);
    row.drains = now.drains;
    auto p = previous_.find(row.name);
    // Counters only grow while a device is attached: a drop is a new device of the same name.
    const bool same = p != previous_.end() && now.records >= p->second.records &&
                      now.evicted >= p->second.evicted && now.drains >= p->second.drains &&
                      now.latency_count >= p->second.latency_count;
    if (same && now.at_ns > p->second.at_ns) {
      invalid += AddRates(row, p->second, now);
      faults += *row.faults_per_s;
      evictions += *row.evictions_per_s;
    }
    next[row.name] = std::move(now);
    rows_.push_back(std::move(row));
  }
  previous_ = std::move(next);
  previous_at_ns_ = sample.at_ns;
  SetTotals(sample);
  if (interval_s_ > 0) {
    totals_.faults_per_s = faults;
    totals_.invalid_per_s = invalid;
    totals_.evictions_per_s = evictions;
  }
}

void TopModel::SetTotals(const TopSample& sample) {
  totals_ = TopTotals{};
  totals_.version = Str(sample.status, "version");
  totals_.health = Str(sample.status, "health");
  totals_.uptime_usec = U64(sample.status, "uptime_usec");
  totals_.devices_running = U64(sample.status, "devices_running");
  totals_.devices_configured = U64(sample.status, "devices_configured");
  const Json& daemon = Obj(Obj(sample.stats, "paging"), "daemon");
  totals_.resident_bytes = U64(daemon, "resident_bytes");
  totals_.budget_bytes = U64(daemon, "budget_bytes");
}

const char* TopSortName(TopSort sort) {
  switch (sort) {
    case TopSort::kFaults:
      return "FAULTS/S";
    case TopSort::kP99:
      return "P99";
    case TopSort::kResident:
      return "RESIDENT";
    case TopSort::kEvictions:
      return "EVICT/S";
    case TopSort::kName:
      return "DEVICE";
    case TopSort::kState:
      return "STATE";
  }
  return "";
}

bool HandleTopKey(TopView& view, int key) {
  constexpr int kCtrlC = 3, kEscape = 27, kBackspace = 127, kCtrlH = 8;
  if (view.editing) {
    if (key == '\r' || key == '\n') {
      view.filter = view.typed;
      view.editing = false;
    } else if (key == kEscape || key == kCtrlC) {
      view.editing = false;
    } else if (key == kBackspace || key == kCtrlH) {
      if (!view.typed.empty()) view.typed.pop_back();
    } else if (key >= 0x20 && key < 0x7f && view.typed.size() < 64) {
      view.typed.push_back(static_cast<char>(key));
    }
    return true;
  }
  const size_t n = std::size(kSortOrder);
  size_t at = 0;
  while (at < n && kSortOrder[at] != view.sort) ++at;
  switch (key) {
    case 'q':
    case 'Q':
    case kCtrlC:
      return false;
    case 's':
      view.sort = kSortOrder[(at + 1) % n];
      break;
    case 'S':
      view.sort = kSortOrder[(at + n - 1) % n];
      break;
    case 'r':
      view.reverse = !view.reverse;
      break;
    case '/':
      view.editing = true;
      view.typed = view.filter;
      break;
    case 'h':
    case '?':
      view.help = !view.help;
      break;
    default:
      break;
  }
  return true;
}

namespace {

// One table row: name, state, epoch, faults/s, p50, p99, resident, budget, evict/s, drains.
std::string Columns(const std::array<std::string, 10>& c) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%-16.16s %-12.12s %6s %9s %9s %9s %10s %10s %8s %6s",
                c[0].c_str(), c[1].c_str(), c[2].c_str(), c[3].c_str(), c[4].c_str(), c[5].c_str(),
                c[6].c_str(), c[7].c_str(), c[8].c_str(), c[9].c_str());
  return buf;
}

// The lines of one frame, each cut to the view's width, styled only with colour on.
class Frame {
 public:
  explicit Frame(const TopView& view) : view_(view), sgr_{view.color} {}

  // Adds a line; with `code` and colour, wrapped in that SGR (padded to the width with `fill`).
  void Add(const std::string& plain, const char* code = nullptr, bool fill = false) {
    std::string line = Fit(plain, view_.width);
    if (code != nullptr && view_.color) {
      const int pad = fill ? std::max(0, view_.width - static_cast<int>(line.size())) : 0;
      line = absl::StrCat(sgr_(code), line, std::string(static_cast<size_t>(pad), ' '), sgr_("0"));
    }
    lines_.push_back(std::move(line));
  }

  void Totals(const TopTotals& t, const std::string& clock) {
    std::string head =
        absl::StrCat("iopfd ", t.version.empty() ? "?" : t.version, "  up ",
                     FormatUptime(t.uptime_usec), "  health ", t.health.empty() ? "?" : t.health,
                     "  devices ", t.devices_running, "/", t.devices_configured, " running");
    const std::string right = absl::StrCat("every ", Rate(view_.every_s), "s  ", clock);
    const int pad = view_.width - static_cast<int>(head.size()) - static_cast<int>(right.size());
    if (pad > 0) head = absl::StrCat(head, std::string(static_cast<size_t>(pad), ' '), right);
    Add(head, !t.health.empty() && t.health != "ok" ? "1;31" : nullptr);
    Add(absl::StrCat("faults ", Rate(t.faults_per_s), "/s  invalid ", Rate(t.invalid_per_s),
                     "/s  resident ", FormatBytes(t.resident_bytes), " of ",
                     t.budget_bytes != 0 ? FormatBytes(t.budget_bytes) : "unbounded",
                     "  evictions ", Rate(t.evictions_per_s), "/s"));
    Add(view_.editing ? absl::StrCat("filter: ", view_.typed, "_")
                      : (view_.filter.empty() ? "" : absl::StrCat("filter: ", view_.filter)));
    // The column header, the sort column's name marked v (descending) or ^, in reverse video.
    std::string header = Columns({"DEVICE", "STATE", "EPOCH", "FAULTS/S", "P50", "P99", "RESIDENT",
                                  "BUDGET", "EVICT/S", "DRAINS"});
    const std::string key = TopSortName(view_.sort);
    if (const size_t col = header.find(key); col != std::string::npos) {
      header.replace(col, key.size(), key + (view_.reverse ? "^" : "v"));
    }
    Add(header, "7", /*fill=*/true);
  }

  // The devices the filter shows, sorted, as many as fit above the footer.
  void Devices(const TopModel& model) {
    std::vector<const TopRow*> shown;
    for (const TopRow& r : model.rows()) {
      if (view_.filter.empty() || r.name.find(view_.filter) != std::string::npos) {
        shown.push_back(&r);
      }
    }
    const TopView& v = view_;
    std::stable_sort(shown.begin(), shown.end(), [&v](const TopRow* a, const TopRow* b) {
      return v.reverse ? Before(*b, *a, v.sort) : Before(*a, *b, v.sort);
    });
    // What is left once the footer (events or help, and the key line) has its room.
    const size_t footer =
        (view_.keys ? 2 : 1) + (view_.help ? 6 : std::min(view_.events.size(), kTopEvents));
    const int room = view_.height - static_cast<int>(lines_.size()) - static_cast<int>(footer);
    const size_t fit = room > 0 ? static_cast<size_t>(room) : 0;
    const size_t listed = shown.size() > fit ? (fit > 0 ? fit - 1 : 0) : shown.size();
    for (size_t i = 0; i < listed; ++i) {
      const TopRow& r = *shown[i];
      Add(Columns({r.name, r.state, absl::StrCat(r.epoch), Rate(r.faults_per_s), Nanos(r.p50_ns),
                   Nanos(r.p99_ns), FormatBytes(r.resident_bytes),
                   r.budget_bytes != 0 ? FormatBytes(r.budget_bytes) : "-", Rate(r.evictions_per_s),
                   absl::StrCat(r.drains, r.drained_now ? "*" : "")}),
          NeedsAttention(r.state) ? "31"
          : Transient(r.state)    ? "33"
                                  : nullptr);
    }
    if (listed < shown.size()) Add(absl::StrCat("+", shown.size() - listed, " more"));
    if (shown.empty()) {
      Add(model.rows().empty() ? "(no devices served)"
                               : absl::StrCat("(no device matches '", view_.filter, "')"));
    }
  }

  // The latest events, or the help; the key line.
  void Footer() {
    Add("");
    if (view_.help) {
      for (const char* h :
           {"q      quit", "s / S  sort by the next / previous column", "r      reverse the order",
            "/      filter by device name (Enter applies; empty: all)", "h ?    this help",
            "*      after DRAINS: a drain or reset this interval"}) {
        Add(h);
      }
    } else {
      const size_t skip = view_.events.size() > kTopEvents ? view_.events.size() - kTopEvents : 0;
      for (size_t i = skip; i < view_.events.size(); ++i) Add(view_.events[i]);
    }
    if (view_.keys) {
      Add(absl::StrCat("q quit  s sort (", TopSortName(view_.sort),
                       ")  r reverse  / filter  h help"));
    }
  }

  // Returns the lines, at most the view's height of them, each ended by "\n".
  std::string Text() {
    const auto most = static_cast<size_t>(std::max(view_.height, 1));
    if (lines_.size() > most) lines_.resize(most);
    std::string out;
    for (const std::string& l : lines_) absl::StrAppend(&out, l, "\n");
    return out;
  }

 private:
  const TopView& view_;
  const Style sgr_;
  std::vector<std::string> lines_;
};

}  // namespace

std::string RenderTop(const TopModel& model, const TopView& view, const std::string& clock) {
  Frame frame(view);
  frame.Totals(model.totals(), clock);
  frame.Devices(model);
  frame.Footer();
  return frame.Text();
}

}  // namespace iopfd
