#include "iopfd/control/control_methods.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/device/drain.h"
#include "iopfd/fault/stat_table.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

using nlohmann::json;

json FdStoreJson(const FdStore* store) {
  if (store == nullptr) return {{"enabled", false}, {"kept", 0}, {"room", 0}};
  return {{"enabled", store->enabled()}, {"kept", store->kept()}, {"room", store->room()}};
}

json UeventsJson(const UeventListener* l) {
  if (l == nullptr) return {{"listening", false}};
  const UeventListener::Counters& c = l->counters();
  return {{"listening", l->listening()}, {"synthetic", c.synthetic}, {"received", c.received},
          {"delivered", c.delivered},    {"malformed", c.malformed}, {"foreign", c.foreign},
          {"overruns", c.overruns}};
}

// "failed" when the fault queue can no longer be read or written, else the drain state.
const char* StateOf(const DaemonState* state, const Device& d) {
  if (d.read_failed() || d.write_failed()) return "failed";
  const DrainController* drain = state->manager->DrainOf(d);
  return drain == nullptr ? "running" : DrainStateName(drain->state());
}

Device* FindDevice(DaemonState* state, const std::string& name) {
  return state->manager->Find(name);
}

// Returns the string parameter `key`, or an InvalidParameter reply in *error.
std::optional<std::string> StringParam(const VarlinkCall& call, const char* key, bool required,
                                       VarlinkReply* error) {
  auto it = call.parameters.find(key);
  if (it == call.parameters.end() || it->is_null()) {
    if (required)
      *error = VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", key}});
    return std::nullopt;
  }
  if (!it->is_string()) {
    *error = VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", key}});
    return std::nullopt;
  }
  return it->get<std::string>();
}

json Strings(const std::vector<std::string>& v) {
  json a = json::array();
  for (const std::string& s : v) a.push_back(s);
  return a;
}

VarlinkReply Stopping() {
  return VarlinkReply::Error("io.iopfd.Busy", {{"device", ""}, {"reason", "iopfd is stopping"}});
}

VarlinkReply InvalidParameter(const char* name) {
  return VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", name}});
}

VarlinkReply Reload(DaemonState* state, const Peer& peer) {
  if (state->stopping && state->stopping()) return Stopping();
  Log(LogLevel::kInfo, absl::StrCat("reload requested by uid ", peer.uid));
  ReloadOutcome out = state->reload();
  if (!out.errors.empty()) {
    json errors = json::array();
    for (const ConfigError& e : out.errors) errors.push_back(e.ToString());
    return VarlinkReply::Error("io.iopfd.InvalidConfig", {{"errors", errors}});
  }
  const ReloadReport& r = out.report;
  json failed = json::array();
  for (const DeviceProblem& p : r.failed)
    failed.push_back({{"device", p.device}, {"error", p.error}});
  return VarlinkReply::Ok({{"added", Strings(r.added)},
                           {"removed", Strings(r.removed)},
                           {"restarted", Strings(r.restarted)},
                           {"kept", Strings(r.kept)},
                           {"detached", Strings(r.detached)},
                           {"failed", failed},
                           {"restart_required", Strings(out.restart_required)}});
}

}  // namespace

AdoptRequest ParseAdoptConfig(const std::string& text) {
  AdoptRequest out;
  // Backings are not checked on disk: file: ones are refused below, before anything is opened.
  LoadResult parsed = ParseDeviceText(text, "<Adopt config>", /*check_backings=*/false);
  if (!parsed.ok() || parsed.config.devices.size() != 1) {
    for (const ConfigError& e : parsed.errors) out.errors.push_back(e.ToString());
    if (out.errors.empty()) out.errors.emplace_back("<Adopt config>: no device");
    return out;
  }
  const DeviceConfig& config = parsed.config.devices.front();
  // Memory comes with the call or is iopfd's own: a path would let the caller map any tmpfs or
  // hugetlbfs file iopfd (root) can open, another guest's memory included, into an IOAS.
  for (const SpaceConfig& s : config.spaces) {
    for (const RegionConfig& r : s.regions) {
      if (r.backing == BackingKind::kFile) {
        out.errors.push_back(
            ConfigError{r.where,
                        "file: backings are not accepted over Adopt; pass the memory as "
                        "an fd: backing"}
                .ToString());
        return out;
      }
    }
  }
  // Likewise a switch module: a path iopfd would load into itself. Only a device file (root's)
  // may name one.
  if (!config.adopt.switch_module.empty()) {
    out.errors.emplace_back(
        "<Adopt config>: adopt.switch_module is not accepted over Adopt (a path iopfd would "
        "load); pass the VFIO device fd as adopt.device_fd, or name the module in a device file");
    return out;
  }
  out.config = config;
  return out;
}

namespace {

VarlinkReply Adopt(DaemonState* state, const VarlinkCall& call, const Peer& peer) {
  if (state->stopping && state->stopping()) return Stopping();
  VarlinkReply error;
  auto text = StringParam(call, "config", true, &error);
  if (!text) return error;
  std::vector<std::string> names;
  if (auto it = call.parameters.find("fds"); it != call.parameters.end() && !it->is_null()) {
    if (!it->is_array()) return InvalidParameter("fds");
    for (const json& n : *it) {
      if (!n.is_string()) return InvalidParameter("fds");
      std::string name = n.get<std::string>();
      if (name.empty() || std::find(names.begin(), names.end(), name) != names.end()) {
        return InvalidParameter("fds");
      }
      names.push_back(std::move(name));
    }
  }
  // Every passed descriptor needs a name and every name a descriptor.
  if (names.size() != call.fds->size()) {
    Log(LogLevel::kWarning,
        absl::StrCat("Adopt from uid ", peer.uid, " (pid ", peer.pid, "): ", names.size(),
                     " fd name(s) for ", call.fds->size(), " descriptor(s) passed"));
    return InvalidParameter("fds");
  }
  AdoptRequest parsed = ParseAdoptConfig(*text);
  if (!parsed.config.has_value()) {
    json errors = json::array();
    for (const std::string& e : parsed.errors) errors.push_back(e);
    return VarlinkReply::Error("io.iopfd.InvalidConfig", {{"errors", errors}});
  }
  const DeviceConfig& config = *parsed.config;
  ListenFds fds;
  for (size_t i = 0; i < names.size(); ++i) fds.Add(names[i], std::move((*call.fds)[i]));
  std::unique_ptr<InflightLedger> ledger;
  if (state->make_ledger) ledger = state->make_ledger(config.name);
  absl::Status st = state->manager->Adopt(config, std::move(fds), std::move(ledger));
  if (st.code() == absl::StatusCode::kAlreadyExists) {
    return VarlinkReply::Error("io.iopfd.Busy",
                               {{"device", config.name}, {"reason", std::string(st.message())}});
  }
  if (st.code() == absl::StatusCode::kInvalidArgument) {
    return VarlinkReply::Error("io.iopfd.InvalidConfig",
                               {{"errors", json::array({std::string(st.message())})}});
  }
  if (!st.ok()) {
    return VarlinkReply::Error("io.iopfd.AttachFailed",
                               {{"device", config.name}, {"error", std::string(st.message())}});
  }
  Log(LogLevel::kInfo, absl::StrCat(config.name, ": adopted at run time from uid ", peer.uid,
                                    " (pid ", peer.pid, ")"));
  if (state->on_adopted) {
    if (const Device* d = state->manager->Find(config.name); d != nullptr) {
      state->on_adopted(*d, *text);
    }
  }
  return VarlinkReply::Ok({{"name", config.name}});
}

VarlinkReply Detach(DaemonState* state, const VarlinkCall& call, const Peer& peer) {
  if (state->stopping && state->stopping()) return Stopping();
  VarlinkReply error;
  auto device = StringParam(call, "device", true, &error);
  if (!device) return error;
  Log(LogLevel::kInfo, absl::StrCat(*device, ": detach requested by uid ", peer.uid));
  auto stats = state->manager->Detach(*device);
  if (!stats.ok()) return VarlinkReply::Error("io.iopfd.NoSuchDevice", {{"device", *device}});
  return VarlinkReply::Ok({{"stats", StatsJson(*device, *stats)}});
}

// Drain, Reset, Halt and Resume. Errors: NoSuchDevice, NoSuchPasid, NotSupported (adopt mode:
// the owner holds the attachments), InvalidState (the request does not fit the device's state),
// DrainFailed (a step failed; the device is quarantined).
VarlinkReply DrainCall(DaemonState* state, const std::string& method, const VarlinkCall& call,
                       const Peer& peer) {
  if (state->stopping && state->stopping()) return Stopping();
  VarlinkReply error;
  auto device = StringParam(call, "device", true, &error);
  if (!device) return error;
  DrainController* drain = state->manager->DrainOf(*device);
  if (drain == nullptr) return VarlinkReply::Error("io.iopfd.NoSuchDevice", {{"device", *device}});
  std::optional<AttachmentKey> pasid;
  if (auto it = call.parameters.find("pasid"); it != call.parameters.end() && !it->is_null()) {
    // PASIDs are 20 bits; 0 is the kernel's "no PASID" (drain the whole device for that one).
    if (!it->is_number_unsigned() || it->get<uint64_t>() == 0 || it->get<uint64_t>() > 0xfffff) {
      return InvalidParameter("pasid");
    }
    pasid = static_cast<AttachmentKey>(it->get<uint64_t>());
  }
  const std::string cause = absl::StrCat(method, " by uid ", peer.uid, " (pid ", peer.pid, ")");
  const uint64_t now = MonotonicNs();
  absl::Status st;
  if (method == "Drain") {
    st = drain->Drain(pasid, cause, now);
  } else if (method == "Reset") {
    st = drain->Reset(cause, now);
  } else if (method == "Halt") {
    st = drain->Halt(cause, now);
  } else {
    st = drain->Resume(cause, now);
  }
  const std::string now_state = DrainStateName(drain->state());
  if (!st.ok()) {
    const std::string why(st.message());
    switch (st.code()) {
      case absl::StatusCode::kUnimplemented:
        return VarlinkReply::Error("io.iopfd.NotSupported", {{"method", method}, {"reason", why}});
      case absl::StatusCode::kFailedPrecondition:
        return VarlinkReply::Error("io.iopfd.InvalidState",
                                   {{"device", *device}, {"state", now_state}, {"reason", why}});
      case absl::StatusCode::kNotFound:
        return VarlinkReply::Error("io.iopfd.NoSuchPasid",
                                   {{"device", *device}, {"pasid", pasid.value_or(0)}});
      default:
        return VarlinkReply::Error("io.iopfd.DrainFailed",
                                   {{"device", *device}, {"state", now_state}, {"error", why}});
    }
  }
  return VarlinkReply::Ok({{"state", now_state}, {"epoch", drain->epoch()}});
}

// The optional "pasid" parameter of SetBudget and Evict: absent or null is the device (SetBudget)
// or the no-PASID space (Evict). Returns false with *error set when it is not a PASID.
bool PasidParam(const VarlinkCall& call, std::optional<AttachmentKey>* pasid, VarlinkReply* error) {
  auto it = call.parameters.find("pasid");
  if (it == call.parameters.end() || it->is_null()) return true;
  if (!it->is_number_unsigned() || it->get<uint64_t>() == 0 || it->get<uint64_t>() > 0xfffff) {
    *error = InvalidParameter("pasid");
    return false;
  }
  *pasid = static_cast<AttachmentKey>(it->get<uint64_t>());
  return true;
}

// Returns the reply for a Device::SetBudget/Evict error.
VarlinkReply PagingError(const std::string& device, std::optional<AttachmentKey> pasid,
                         const absl::Status& st) {
  if (st.code() == absl::StatusCode::kNotFound) {
    return VarlinkReply::Error("io.iopfd.NoSuchPasid",
                               {{"device", device}, {"pasid", pasid.value_or(0)}});
  }
  if (st.code() == absl::StatusCode::kInvalidArgument) {
    return VarlinkReply::Error("io.iopfd.InvalidRange",
                               {{"device", device}, {"reason", std::string(st.message())}});
  }
  return VarlinkReply::Error("io.iopfd.NotSupported",
                             {{"method", "paging"}, {"reason", std::string(st.message())}});
}

// The device and PASID a SetBudget or Evict call names. Returns the device, or null with
// *error set (Busy while stopping, NoSuchDevice, InvalidParameter).
Device* PagingTarget(DaemonState* state, const VarlinkCall& call,
                     std::optional<AttachmentKey>* pasid, VarlinkReply* error) {
  if (state->stopping && state->stopping()) {
    *error = Stopping();
    return nullptr;
  }
  auto device = StringParam(call, "device", true, error);
  if (!device) return nullptr;
  Device* d = state->manager->Find(*device);
  if (d == nullptr) {
    *error = VarlinkReply::Error("io.iopfd.NoSuchDevice", {{"device", *device}});
    return nullptr;
  }
  return PasidParam(call, pasid, error) ? d : nullptr;
}

// SetBudget(device, pasid?, max_resident?): the device's budget, or a space's; null max_resident
// is unbounded. Errors: NoSuchDevice, NoSuchPasid, InvalidRange (smaller than a map unit).
VarlinkReply SetBudgetCall(DaemonState* state, const VarlinkCall& call, const Peer& peer) {
  VarlinkReply error;
  std::optional<AttachmentKey> pasid;
  Device* d = PagingTarget(state, call, &pasid, &error);
  if (d == nullptr) return error;
  const std::string& device = d->name();
  std::optional<uint64_t> bytes;
  if (auto it = call.parameters.find("max_resident");
      it != call.parameters.end() && !it->is_null()) {
    if (!it->is_number_unsigned()) return InvalidParameter("max_resident");
    bytes = it->get<uint64_t>();
  }
  if (absl::Status st = d->SetBudget(pasid, bytes); !st.ok()) {
    return PagingError(device, pasid, st);
  }
  Log(LogLevel::kInfo,
      absl::StrCat(device, pasid ? absl::StrCat(" PASID ", *pasid) : "", ": max_resident ",
                   bytes ? absl::StrCat(*bytes, " bytes") : "unbounded", " (uid ", peer.uid, ")"),
      {{"DEVICE", device}});
  const PagingCounters& c = d->stats().paging;
  return VarlinkReply::Ok({{"resident_bytes", c.resident_bytes}});
}

// Evict(device, pasid?, iova, length). Errors: NoSuchDevice, NoSuchPasid, InvalidRange.
VarlinkReply EvictCall(DaemonState* state, const VarlinkCall& call, const Peer& peer) {
  VarlinkReply error;
  std::optional<AttachmentKey> pasid;
  Device* d = PagingTarget(state, call, &pasid, &error);
  if (d == nullptr) return error;
  const std::string& device = d->name();
  uint64_t range[2] = {0, 0};
  const char* keys[2] = {"iova", "length"};
  for (int i = 0; i < 2; ++i) {
    auto it = call.parameters.find(keys[i]);
    if (it == call.parameters.end() || !it->is_number_unsigned()) return InvalidParameter(keys[i]);
    range[i] = it->get<uint64_t>();
  }
  auto report = d->Evict(pasid, range[0], range[1]);
  if (!report.ok()) return PagingError(device, pasid, report.status());
  Log(LogLevel::kInfo,
      absl::StrCat(device, ": evicted ", report->bytes, " bytes at 0x", absl::Hex(range[0]),
                   " (uid ", peer.uid, ")"),
      {{"DEVICE", device}});
  return VarlinkReply::Ok({{"evicted_bytes", report->bytes},
                           {"evicted_units", report->units},
                           {"pinned_units", report->pinned},
                           {"stuck_units", report->stuck}});
}

VarlinkReply GetStatus(DaemonState* state) {
  const DeviceManager& m = *state->manager;
  size_t running = 0, adopted = 0, quarantined = 0;
  bool failed = false;
  for (const auto& d : m.devices()) {
    // A drain in progress or a Halt holding the device are wanted states: the device is still
    // served. A failed fault queue or a quarantine is not.
    const std::string s = StateOf(state, *d);
    const bool bad = s == "failed" || s == "quarantined";
    quarantined += s == "quarantined";
    if (m.IsAdoptedAtRunTime(d->name())) {
      ++adopted;
    } else if (!bad) {
      ++running;
    }
    failed |= bad;
  }
  // Detached devices are out by request, not by failure.
  bool ok = !failed && running + m.detached() == m.configured();
  json reply = {{"version", state->version},
                {"uptime_usec", (MonotonicNs() - state->start_ns) / 1000},
                {"devices_configured", m.configured()},
                {"devices_running", running},
                {"devices_detached", m.detached()},
                {"devices_adopted", adopted},
                {"devices_quarantined", quarantined},
                {"uevents", UeventsJson(state->uevents)},
                {"fd_store", FdStoreJson(state->fd_store)},
                {"health", ok ? "ok" : "degraded"}};
  if (std::optional<uint64_t> limit = MemlockLimit()) reply["memlock_limit_bytes"] = *limit;
  return VarlinkReply::Ok(reply);
}

VarlinkReply ListDevices(DaemonState* state) {
  json list = json::array();
  for (const auto& d : state->manager->devices()) {
    json pasids = json::array();
    bool no_pasid = false;
    for (AddressSpace& s : d->spaces().spaces()) {
      if (s.pasid()) {
        pasids.push_back(*s.pasid());
      } else {
        no_pasid = true;
      }
    }
    const DeviceStats& st = d->stats();
    list.push_back(
        {{"name", d->name()},
         {"attach", NameOf(kAttachModeNames, d->mode())},
         {"origin", state->manager->IsAdoptedAtRunTime(d->name()) ? "adopted" : "config"},
         {"state", StateOf(state, *d)},
         {"epoch", st.drain_epoch},
         {"halt", NameOf(kHaltMethodNames, d->config().drain.halt)},
         {"pasids", pasids},
         {"no_pasid_space", no_pasid},
         {"counters",
          {{"records", st.records},
           {"groups", st.groups},
           {"success", st.responses_success},
           {"invalid", st.responses_invalid},
           {"outstanding", st.outstanding()}}}});
  }
  return VarlinkReply::Ok({{"devices", list}});
}

// One scope's paging counters as JSON: the "paging" object of a DeviceStats (the same table).
json PagingCountersJson(const PagingCounters& c) {
  DeviceStats s;
  s.paging = c;
  return StatsJson("", s)["paging"];
}

// GetStats' "paging": the daemon's scope (all devices) and each space's (of `device` only, when
// given).
json PagingView(const Pager& pager, const std::optional<std::string>& device) {
  json spaces = json::array();
  for (const PagedSpace* s : pager.spaces()) {
    if (device && s->device().name() != *device) continue;
    json entry = {{"device", s->device().name()}, {"counters", PagingCountersJson(s->counters())}};
    if (s->space().pasid()) entry["pasid"] = *s->space().pasid();
    spaces.push_back(std::move(entry));
  }
  return {{"daemon", PagingCountersJson(pager.totals())}, {"spaces", std::move(spaces)}};
}

// The Prometheus families of the daemon's and the spaces' paging scopes (the devices' are in
// the table): resident bytes, budget, evicted units.
std::string PagingPrometheus(const Pager& pager, const std::optional<std::string>& device) {
  const PagingCounters& t = pager.totals();
  std::string out = absl::StrCat(
      "# HELP iopfd_daemon_resident_bytes Bytes iopfd holds mapped (and so pinned), all devices.\n"
      "# TYPE iopfd_daemon_resident_bytes gauge\niopfd_daemon_resident_bytes ",
      t.resident_bytes,
      "\n# HELP iopfd_daemon_resident_budget_bytes The daemon's max_resident; 0 when unbounded.\n"
      "# TYPE iopfd_daemon_resident_budget_bytes gauge\niopfd_daemon_resident_budget_bytes ",
      t.budget_bytes, "\n");
  const struct {
    const char* name;
    const char* type;
    const char* help;
    uint64_t PagingCounters::*member;
  } kFamilies[] = {
      {"iopfd_space_resident_bytes", "gauge", "Bytes iopfd holds mapped in the address space.",
       &PagingCounters::resident_bytes},
      {"iopfd_space_resident_budget_bytes", "gauge",
       "The address space's max_resident; 0 when unbounded.", &PagingCounters::budget_bytes},
      {"iopfd_space_evicted_units_total", "counter",
       "Map units of the address space unmapped to stay within a budget.",
       &PagingCounters::evicted_units},
  };
  for (const auto& f : kFamilies) {
    absl::StrAppend(&out, "# HELP ", f.name, " ", f.help, "\n# TYPE ", f.name, " ", f.type, "\n");
    for (const PagedSpace* s : pager.spaces()) {
      if (device && s->device().name() != *device) continue;
      absl::StrAppend(&out, f.name, "{device=\"", PrometheusLabelValue(s->device().name()),
                      "\",pasid=\"",
                      s->space().pasid() ? absl::StrCat(*s->space().pasid()) : "none", "\"} ",
                      s->counters().*f.member, "\n");
    }
  }
  return out;
}

VarlinkReply GetStats(DaemonState* state, const VarlinkCall& call) {
  VarlinkReply error;
  auto device = StringParam(call, "device", false, &error);
  auto format = StringParam(call, "format", false, &error);
  if (!error.error.empty()) return error;
  // Histogram buckets, for a client that computes percentiles over its own intervals
  // (iopfctl top). Off by default: they are most of the reply's size.
  bool buckets = false;
  if (auto b = call.parameters.find("buckets"); b != call.parameters.end() && !b->is_null()) {
    if (!b->is_boolean()) {
      return VarlinkReply::Error("org.varlink.service.InvalidParameter",
                                 {{"parameter", "buckets"}});
    }
    buckets = b->get<bool>();
  }
  if (format && *format != "json" && *format != "prometheus") {
    return VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", "format"}});
  }
  std::vector<const Device*> chosen;
  if (device) {
    Device* d = FindDevice(state, *device);
    if (d == nullptr) return VarlinkReply::Error("io.iopfd.NoSuchDevice", {{"device", *device}});
    chosen.push_back(d);
  } else {
    for (const auto& d : state->manager->devices()) chosen.push_back(d.get());
  }
  json list = json::array();
  for (const Device* d : chosen) list.push_back(StatsJson(d->name(), d->stats(), buckets));
  json params = {{"devices", list}};
  if (state->pager != nullptr) params["paging"] = PagingView(*state->pager, device);
  if (format && *format == "prometheus") {
    params["text"] = PrometheusText(chosen, [state](const Device& d) { return StateOf(state, d); });
    if (state->pager != nullptr)
      params["text"] = params["text"].get<std::string>() + PagingPrometheus(*state->pager, device);
  }
  return VarlinkReply::Ok(params);
}

VarlinkReply SetLogLevelCall(DaemonState* state, const VarlinkCall& call, const Peer& peer) {
  VarlinkReply error;
  auto level = StringParam(call, "level", true, &error);
  if (!level) return error;
  if (std::optional<LogLevel> l = ValueNamed(kLogLevelNames, *level)) {
    SetLogLevel(*l);
    Log(LogLevel::kInfo, absl::StrCat("log level set to ", *level, " by uid ", peer.uid));
    state->events->Publish("log_level", {}, absl::StrCat(*level, " (uid ", peer.uid, ")"));
    return VarlinkReply::Ok();
  }
  return VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", "level"}});
}

}  // namespace

std::string PrometheusText(const std::vector<const Device*>& devices,
                           const std::function<const char*(const Device&)>& state_of) {
  std::vector<std::pair<std::string, const DeviceStats*>> stats;
  stats.reserve(devices.size());
  for (const Device* d : devices) stats.emplace_back(d->name(), &d->stats());
  std::string out = StatsPrometheus(stats);
  // The state is the device's, not a counter: it is not in the table.
  if (state_of) {
    absl::StrAppend(&out, "# HELP iopfd_device_state 1 for the state the device is in.\n",
                    "# TYPE iopfd_device_state gauge\n");
    for (const Device* d : devices) {
      absl::StrAppend(&out, "iopfd_device_state{device=\"", PrometheusLabelValue(d->name()),
                      "\",state=\"", state_of(*d), "\"} 1\n");
    }
  }
  return out;
}

const std::vector<std::pair<std::string, Access>>& IopfdMethodAccess() {
  // Every io.iopfd method and who may call it, in one place (docs/CONTROL.md). Only methods
  // that change nothing are open to the control group; a method missing here is root's only.
  static const auto* const kTable = new std::vector<std::pair<std::string, Access>>{
      {"io.iopfd.GetStatus", Access::kRead},    {"io.iopfd.ListDevices", Access::kRead},
      {"io.iopfd.GetStats", Access::kRead},     {"io.iopfd.Monitor", Access::kRead},
      {"io.iopfd.SetLogLevel", Access::kAdmin}, {"io.iopfd.Drain", Access::kAdmin},
      {"io.iopfd.Reset", Access::kAdmin},       {"io.iopfd.Halt", Access::kAdmin},
      {"io.iopfd.Resume", Access::kAdmin},      {"io.iopfd.Reload", Access::kAdmin},
      {"io.iopfd.Adopt", Access::kAdmin},       {"io.iopfd.Detach", Access::kAdmin},
      {"io.iopfd.SetBudget", Access::kAdmin},   {"io.iopfd.Evict", Access::kAdmin},
  };
  return *kTable;
}

void RegisterIopfdMethods(VarlinkService* service, DaemonState* state) {
  for (const auto& [name, access] : IopfdMethodAccess()) service->SetAccess(name, access);
  service->AddInterface("io.iopfd", kIopfdInterfaceDescription);

  service->AddMethod("io.iopfd.GetStatus", {},
                     [state](const VarlinkCall&, const Peer&) { return GetStatus(state); });

  service->AddMethod("io.iopfd.ListDevices", {},
                     [state](const VarlinkCall&, const Peer&) { return ListDevices(state); });

  service->AddMethod(
      "io.iopfd.GetStats", {"device", "format", "buckets"},
      [state](const VarlinkCall& call, const Peer&) { return GetStats(state, call); });

  service->AddMethod("io.iopfd.SetLogLevel", {"level"},
                     [state](const VarlinkCall& call, const Peer& peer) {
                       return SetLogLevelCall(state, call, peer);
                     });

  for (const char* name : {"Drain", "Reset", "Halt", "Resume"}) {
    std::string method = name;
    std::vector<std::string> params = {"device"};
    if (method == "Drain") params.push_back("pasid");
    service->AddMethod(absl::StrCat("io.iopfd.", name), params,
                       [state, method](const VarlinkCall& call, const Peer& peer) {
                         return DrainCall(state, method, call, peer);
                       });
  }
  service->AddMethod("io.iopfd.Reload", {},
                     [state](const VarlinkCall&, const Peer& peer) { return Reload(state, peer); });
  service->AddMethod(
      "io.iopfd.Adopt", {"config", "fds"},
      [state](const VarlinkCall& call, const Peer& peer) { return Adopt(state, call, peer); });
  service->AddMethod(
      "io.iopfd.Detach", {"device"},
      [state](const VarlinkCall& call, const Peer& peer) { return Detach(state, call, peer); });
  service->AddMethod("io.iopfd.SetBudget", {"device", "pasid", "max_resident"},
                     [state](const VarlinkCall& call, const Peer& peer) {
                       return SetBudgetCall(state, call, peer);
                     });
  service->AddMethod(
      "io.iopfd.Evict", {"device", "pasid", "iova", "length"},
      [state](const VarlinkCall& call, const Peer& peer) { return EvictCall(state, call, peer); });
  service->AddStreamingMethod(
      "io.iopfd.Monitor", {},
      [state](const VarlinkCall&, const Peer&, std::shared_ptr<ReplyChannel> channel) {
        state->events->Subscribe(std::move(channel));
        return VarlinkReply::Ok({{"event", "subscribed"}});
      });
}

}  // namespace iopfd
