#include "iopfd/control/ctl_format.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "iopfd/fault/stat_table.h"

namespace iopfd {
namespace {

using Json = nlohmann::json;

constexpr char kMissing[] = "-";

// Returns the member `key` of obj, or nullptr when obj is not an object or lacks it. nlohmann's
// const operator[] on a missing key is undefined behaviour, hence every lookup goes through here.
const Json* Member(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

std::optional<uint64_t> Unsigned(const Json* value) {
  if (value == nullptr) return std::nullopt;
  if (value->is_number_unsigned()) return value->get<uint64_t>();
  if (value->is_number_integer() && value->get<int64_t>() >= 0) {
    return static_cast<uint64_t>(value->get<int64_t>());
  }
  return std::nullopt;
}

std::optional<uint64_t> UnsignedField(const Json& obj, const char* key) {
  return Unsigned(Member(obj, key));
}

std::string StringField(const Json& obj, const char* key) {
  const Json* v = Member(obj, key);
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::string(kMissing);
}

// Varlink ints are signed, so a negative value is shown as such rather than hidden.
std::string CountOf(const Json* value) {
  if (auto u = Unsigned(value)) return FormatCount(*u);
  if (value != nullptr && value->is_number_integer()) {
    return absl::StrCat("-", FormatCount(0 - static_cast<uint64_t>(value->get<int64_t>())));
  }
  return kMissing;
}

std::string CountField(const Json& obj, const char* key) { return CountOf(Member(obj, key)); }

// Renders value in the largest of units it reaches (each `base` times the one before), with one
// decimal above the first unit.
std::string Scaled(uint64_t value, uint64_t base, const char* const* units, size_t n_units) {
  if (value < base) return absl::StrCat(value, " ", units[0]);
  size_t unit = 1;
  uint64_t divisor = base;
  while (unit + 1 < n_units && value / divisor >= base) {
    divisor *= base;
    ++unit;
  }
  uint64_t whole = value / divisor;
  // The remainder is below divisor (at most 2^60), so ten times it still fits in 64 bits.
  uint64_t tenths = (value % divisor * 10 + divisor / 2) / divisor;
  if (tenths == 10) {
    ++whole;
    tenths = 0;
  }
  if (whole == base && unit + 1 < n_units) {
    whole = 1;
    ++unit;
  }
  return absl::StrCat(whole, ".", tenths, " ", units[unit]);
}

// Terminal columns taken by s: UTF-8 continuation bytes take none.
size_t DisplayWidth(const std::string& s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// A table of text cells rendered with columns two spaces apart; numbers are right-aligned.
class Table {
 public:
  explicit Table(std::vector<bool> right_aligned) : right_(std::move(right_aligned)) {}

  void Add(std::vector<std::string> row) {
    row.resize(right_.size());
    rows_.push_back(std::move(row));
  }

  // Returns every row prefixed by indent, without trailing blanks, each ending in '\n'.
  std::string Render(std::string_view indent = {}) const {
    std::vector<size_t> width(right_.size(), 0);
    for (const auto& row : rows_) {
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], DisplayWidth(row[c]));
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line(indent);
      for (size_t c = 0; c < row.size(); ++c) {
        if (c > 0) line.append("  ");
        std::string pad(width[c] - DisplayWidth(row[c]), ' ');
        line.append(right_[c] ? pad + row[c] : row[c] + pad);
      }
      line.erase(line.find_last_not_of(' ') + 1);
      out.append(line).append("\n");
    }
    return out;
  }

 private:
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

// Returns the elements of a JSON array, or an empty list when it is missing or not an array.
std::vector<const Json*> Elements(const Json& obj, const char* key) {
  std::vector<const Json*> out;
  const Json* array = Member(obj, key);
  if (array == nullptr || !array->is_array()) return out;
  for (const Json& e : *array) out.push_back(&e);
  return out;
}

// The PASIDs of a device, shortened so that a device with hundreds keeps the table readable.
std::string PasidCell(const Json& device) {
  constexpr size_t kShown = 4;
  std::vector<std::string> parts;
  const Json* no_pasid = Member(device, "no_pasid_space");
  if (no_pasid != nullptr && no_pasid->is_boolean() && no_pasid->get<bool>()) {
    parts.push_back("no-pasid");
  }
  std::vector<const Json*> pasids = Elements(device, "pasids");
  for (size_t i = 0; i < pasids.size() && i < kShown; ++i) parts.push_back(CountOf(pasids[i]));
  std::string cell;
  for (const std::string& p : parts) absl::StrAppend(&cell, cell.empty() ? "" : ",", p);
  if (pasids.size() > kShown) absl::StrAppend(&cell, " +", pasids.size() - kShown);
  return cell.empty() ? std::string(kMissing) : cell;
}

// A row's value as the daemon sent it, at the row's key ("-" when missing).
const Json* MemberAt(const Json& device, const StatField& f) {
  if (f.group().empty()) return Member(device, f.key.c_str());
  const Json* group = Member(device, std::string(f.group()).c_str());
  return group == nullptr ? nullptr : Member(*group, std::string(f.leaf()).c_str());
}

std::string ValueCell(const Json& device, const StatField& f) {
  const Json* v = MemberAt(device, f);
  if (f.unit == "bytes") {
    auto n = Unsigned(v);
    return n ? FormatBytes(*n) : std::string(kMissing);
  }
  return CountOf(v);
}

// The INVALID reasons, non-zero ones only, in the table's order; then reasons a newer daemon
// added (nlohmann keeps keys sorted). "none" only when the daemon said so; a daemon that sent no
// breakdown gets "-".
void AddReasons(const Json& device, Table* counters) {
  const Json* reasons = Member(device, "invalid_by_reason");
  if (reasons == nullptr || !reasons->is_object()) {
    counters->Add({"invalid by reason", kMissing});
    return;
  }
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> known;
  auto add = [&rows](const std::string& name, const Json& value) {
    auto n = Unsigned(&value);
    if (n && *n == 0) return;
    rows.push_back({absl::StrCat("  ", name), CountOf(&value)});
  };
  for (const StatField& f : StatFields()) {
    if (f.group() != "invalid_by_reason") continue;
    known.emplace_back(f.leaf());
    if (const Json* v = Member(*reasons, known.back().c_str())) add(known.back(), *v);
  }
  for (const auto& item : reasons->items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      add(item.key(), item.value());
    }
  }
  counters->Add({"invalid by reason", rows.empty() ? "none" : ""});
  for (auto& row : rows) counters->Add(std::move(row));
}

std::vector<std::string> PercentilesRow(const Json& device, const StatField& f) {
  const Json* p = MemberAt(device, f);
  std::vector<std::string> row = {f.label, kMissing, kMissing, kMissing, kMissing};
  if (p == nullptr) return row;
  auto count = UnsignedField(*p, "count");
  row[1] = CountField(*p, "count");
  // With nothing recorded the percentiles are 0 by construction, not a measured 0.
  if (count && *count > 0) {
    const char* fields[] = {"p50", "p99", "max"};
    for (size_t i = 0; i < 3; ++i) {
      auto v = UnsignedField(*p, fields[i]);
      row[i + 2] = !v ? std::string(kMissing) : f.unit == "ns" ? FormatNanos(*v) : FormatCount(*v);
    }
  }
  return row;
}

// One device's stats: the rows of the table of counters (stat_table.h), by section.
std::string StatsBlock(const Json& device) {
  Table counters({false, true});
  Table drain({false, true});
  Table percentiles({false, true, true, true, true});
  percentiles.Add({"percentiles", "COUNT", "P50", "P99", "MAX"});
  // The drain block only from a daemon that sends it.
  const Json* drain_group = Member(device, "drain");
  const bool has_drain = drain_group != nullptr && drain_group->is_object();
  for (const StatField& f : StatFields()) {
    if (f.kind == StatField::Kind::kPercentiles) {
      percentiles.Add(PercentilesRow(device, f));
    } else if (f.group().empty()) {
      counters.Add({f.label, ValueCell(device, f)});
    } else if (f.group() == "drain" && has_drain) {
      drain.Add({f.label, ValueCell(device, f)});
    }
  }
  AddReasons(device, &counters);
  return absl::StrCat(StringField(device, "name"), "\n", counters.Render("  "), drain.Render("  "),
                      percentiles.Render("  "));
}

std::string NameList(const Json& obj, const char* key) {
  std::string out;
  for (const Json* name : Elements(obj, key)) {
    absl::StrAppend(&out, out.empty() ? "" : ", ",
                    name->is_string() ? name->get<std::string>() : std::string(kMissing));
  }
  return out.empty() ? std::string(kMissing) : out;
}

// Strings that read unambiguously without quotes in a key=value line.
bool IsBare(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7F || c == '"' || c == '\'' || c == '=' || c == '\\') return false;
  }
  return true;
}

}  // namespace

std::string FormatCount(uint64_t n) {
  std::string digits = absl::StrCat(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  return Scaled(bytes, 1024, kUnits, std::size(kUnits));
}

std::string FormatNanos(uint64_t ns) {
  static constexpr const char* kUnits[] = {"ns", "us", "ms", "s"};
  return Scaled(ns, 1000, kUnits, std::size(kUnits));
}

std::string FormatUptime(uint64_t usec) {
  uint64_t s = usec / 1000000;
  const uint64_t parts[] = {s / 86400, s / 3600 % 24, s / 60 % 60, s % 60};
  const char* units[] = {"d", "h", "m", "s"};
  std::string out;
  for (size_t i = 0; i < 4; ++i) {
    if (out.empty() && parts[i] == 0 && i < 3) continue;
    absl::StrAppend(&out, out.empty() ? "" : " ", parts[i], units[i]);
  }
  return out;
}

std::string ShortVarlinkName(std::string_view name) {
  size_t dot = name.rfind('.');
  return std::string(dot == std::string_view::npos ? name : name.substr(dot + 1));
}

std::string FormatStatus(const Json& p) {
  Table table({false, false});
  table.Add({"version", StringField(p, "version")});
  auto uptime = UnsignedField(p, "uptime_usec");
  table.Add({"uptime", uptime ? FormatUptime(*uptime) : std::string(kMissing)});
  std::string devices = absl::StrCat(CountField(p, "devices_configured"), " configured, ",
                                     CountField(p, "devices_running"), " running");
  // Only worth a word when there are some.
  for (const char* key : {"devices_adopted", "devices_detached", "devices_quarantined"}) {
    auto n = UnsignedField(p, key);
    if (n && *n > 0) absl::StrAppend(&devices, ", ", FormatCount(*n), " ", key + 8);
  }
  table.Add({"devices", devices});
  if (const Json* u = Member(p, "uevents"); u != nullptr && u->is_object()) {
    const Json* listening = Member(*u, "listening");
    if (listening != nullptr && listening->is_boolean() && !listening->get<bool>()) {
      table.Add({"uevents", "not followed (no netlink socket)"});
    } else {
      table.Add({"uevents", absl::StrCat(CountField(*u, "received"), " received, ",
                                         CountField(*u, "malformed"), " malformed, ",
                                         CountField(*u, "foreign"), " foreign, ",
                                         CountField(*u, "overruns"), " overruns")});
    }
  }
  if (const Json* f = Member(p, "fd_store"); f != nullptr && f->is_object()) {
    const Json* enabled = Member(*f, "enabled");
    if (enabled != nullptr && enabled->is_boolean() && enabled->get<bool>()) {
      table.Add({"fd store", absl::StrCat(CountField(*f, "kept"), " of ", CountField(*f, "room"),
                                          " entries (adopted devices survive a restart)")});
    } else {
      table.Add({"fd store", "not enabled (a restart hands adopted devices back)"});
    }
  }
  table.Add({"health", StringField(p, "health")});
  return table.Render();
}

std::string FormatDevices(const Json& p) {
  std::vector<const Json*> devices = Elements(p, "devices");
  if (devices.empty()) return "no devices\n";
  Table table({false, false, false, true, false, true, true, true, true});
  table.Add({"NAME", "ATTACH", "STATE", "EPOCH", "PASIDS", "GROUPS", "SUCCESS", "INVALID",
             "OUTSTANDING"});
  for (const Json* d : devices) {
    static const Json kNone;
    const Json* c = Member(*d, "counters");
    const Json& counters = c != nullptr ? *c : kNone;
    table.Add({StringField(*d, "name"), StringField(*d, "attach"), StringField(*d, "state"),
               CountField(*d, "epoch"), PasidCell(*d), CountField(counters, "groups"),
               CountField(counters, "success"), CountField(counters, "invalid"),
               CountField(counters, "outstanding")});
  }
  return table.Render();
}

// One paging scope's line: resident (in how many units, how many of them partial) of budget (or
// unbounded), evicted units. The units are left out when the daemon does not report them (one
// older than the gauges).
std::string PagingLine(const Json& counters) {
  auto bytes = [&counters](const char* key) {
    auto n = UnsignedField(counters, key);
    return n ? FormatBytes(*n) : std::string(kMissing);
  };
  auto budget = UnsignedField(counters, "budget_bytes");
  std::string units;
  if (Member(counters, "resident_units") != nullptr) {
    units = absl::StrCat(" in ", CountField(counters, "resident_units"), " units (",
                         CountField(counters, "partial_units"), " partial)");
  }
  return absl::StrCat(bytes("resident_bytes"), units, " resident of ",
                      !budget        ? std::string(kMissing)
                      : *budget == 0 ? std::string("unbounded")
                                     : FormatBytes(*budget),
                      ", ", CountField(counters, "evicted_units"), " units evicted");
}

// GetStats' paging view (docs/PAGING.md): the daemon's scope, then each address space's.
std::string PagingBlock(const Json& paging) {
  Table table({false, false});
  if (const Json* daemon = Member(paging, "daemon"))
    table.Add({"all devices", PagingLine(*daemon)});
  for (const Json* s : Elements(paging, "spaces")) {
    const Json* counters = Member(*s, "counters");
    auto pasid = UnsignedField(*s, "pasid");
    table.Add({absl::StrCat(StringField(*s, "device"),
                            pasid ? absl::StrCat(" pasid ", *pasid) : std::string(" no pasid")),
               counters != nullptr ? PagingLine(*counters) : std::string(kMissing)});
  }
  return absl::StrCat("paging\n", table.Render("  "));
}

std::string FormatStats(const Json& p) {
  std::vector<const Json*> devices = Elements(p, "devices");
  if (devices.empty()) return "no devices\n";
  std::string out;
  for (const Json* d : devices) absl::StrAppend(&out, out.empty() ? "" : "\n", StatsBlock(*d));
  if (const Json* paging = Member(p, "paging"); paging != nullptr && paging->is_object()) {
    absl::StrAppend(&out, "\n", PagingBlock(*paging));
  }
  return out;
}

std::string FormatReload(const Json& p) {
  Table table({false, false});
  table.Add({"added", NameList(p, "added")});
  table.Add({"removed", NameList(p, "removed")});
  table.Add({"restarted", NameList(p, "restarted")});
  table.Add({"kept", NameList(p, "kept")});
  // The rows below appear only when there is something to say.
  if (!Elements(p, "detached").empty()) table.Add({"detached", NameList(p, "detached")});
  for (const Json* f : Elements(p, "failed")) {
    std::string line = absl::StrCat(StringField(*f, "device"), ": ", StringField(*f, "error"));
    std::replace_if(
        line.begin(), line.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
    table.Add({"failed", line});
  }
  if (!Elements(p, "restart_required").empty()) {
    table.Add({"needs restart", NameList(p, "restart_required")});
  }
  return table.Render();
}

std::string FormatMonitorEvent(const Json& p) {
  std::string out = StringField(p, "event");
  const Json* device = Member(p, "device");
  if (device != nullptr && device->is_string())
    absl::StrAppend(&out, " ", device->get<std::string>());
  const Json* detail = Member(p, "detail");
  if (detail != nullptr && detail->is_string())
    absl::StrAppend(&out, ": ", detail->get<std::string>());
  // A detail with a newline would break the one-event-per-line promise to scripts.
  std::replace_if(
      out.begin(), out.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  return out;
}

std::string FormatDrainReply(std::string_view device, const Json& p) {
  std::string state = StringField(p, "state");
  std::string out =
      absl::StrCat(std::string(device), ": ", state, " (epoch ", CountField(p, "epoch"), ")\n");
  if (state == "halting") {
    absl::StrAppend(&out, "waiting for the owner: stop the device's DMA, then run `iopfctl halt ",
                    std::string(device), "`\n");
  }
  return out;
}

std::string FormatError(std::string_view method, std::string_view error, const Json& p) {
  std::string out =
      absl::StrCat("iopfctl: ", ShortVarlinkName(method), ": ", ShortVarlinkName(error));
  if (!p.is_object() || p.empty()) return out;
  out.append(":");
  for (const auto& [key, value] : p.items()) {
    std::string text;
    if (value.is_string() && IsBare(value.get<std::string>())) {
      text = value.get<std::string>();
    } else {
      text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    }
    absl::StrAppend(&out, " ", key, "=", text);
  }
  return out;
}

bool IsTransientState(const Json& state) {
  return state == "flushing" || state == "resetting" || state == "resuming";
}

std::optional<Json> DeviceStateIn(const Json& parameters, std::string_view device) {
  const Json* devices = Member(parameters, "devices");
  if (devices == nullptr || !devices->is_array()) return std::nullopt;
  std::optional<Json> found;
  for (const Json& d : *devices) {
    const Json* name = Member(d, "name");
    if (name == nullptr || !name->is_string() || name->get_ref<const std::string&>() != device) {
      continue;
    }
    const Json* state = Member(d, "state");
    found = Json{{"state", state != nullptr && state->is_string() ? *state : Json("")},
                 {"epoch", UnsignedField(d, "epoch").value_or(0)}};
  }
  return found;
}

}  // namespace iopfd
