// iopfctl: command-line client of iopfd's Varlink control socket.
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "iopfctl_top.h"
#include "iopfd/base/errors.h"
#include "iopfd/config/config.h"
#include "iopfd/control/ctl_format.h"
#include "iopfd/control/varlink_client.h"
#include "nlohmann/json.hpp"

namespace {

constexpr char kUsage[] =
    "usage: iopfctl [--control-socket PATH] [--json] COMMAND [ARG...]\n"
    "       iopfctl --help | --version\n"
    "\n"
    "Queries and controls iopfd, the user-space IOMMU page-fault service.\n"
    "Commands:\n"
    "  status                 version, uptime and health of the daemon\n"
    "  devices                the devices served, with their fault counters\n"
    "  top [--once] [--interval SECONDS]\n"
    "                         a live view of every device: faults/s, latency percentiles over\n"
    "                         the interval, resident bytes and budget, evictions/s, drains;\n"
    "                         keys: q quit, s sort, r reverse, / filter, h help; --once prints\n"
    "                         one frame (so does output that is not a terminal, every interval)\n"
    "  stats [DEV] [--prometheus]\n"
    "                         detailed statistics of one device or of all; --prometheus\n"
    "                         prints the Prometheus text exposition format\n"
    "  drain DEV [PASID]      halt the page requests of a device (or of one PASID), flush\n"
    "                         every outstanding tag and resume; with halt = \"owner\" it\n"
    "                         waits in halting for the owner's `halt DEV`\n"
    "  reset DEV              halt, flush, function level reset, flush again and resume\n"
    "                         (drain, reset, halt and resume return once a reset they\n"
    "                         started, which runs in the background, has finished)\n"
    "  halt DEV               confirm a drain's DMA stop (halting), or hold a running\n"
    "                         device's page requests halted until resume\n"
    "  resume DEV             resume a halted or quarantined device\n"
    "  reload                 re-read the configuration; prints what was added, removed,\n"
    "                         restarted and kept, and devices that failed to attach\n"
    "  detach DEV             stop serving a device after answering what was read from it;\n"
    "                         prints its final statistics\n"
    "  monitor                print events as they happen, until the daemon ends the\n"
    "                         stream or Ctrl-C\n"
    "  log-level LEVEL        set the log level: error, warning, info or debug\n"
    "  budget DEV [PASID] SIZE|unbounded\n"
    "                         set the device's max_resident budget (or a PASID space's);\n"
    "                         SIZE like \"512MiB\"; what is held beyond it is evicted\n"
    "  evict DEV [PASID] IOVA LENGTH\n"
    "                         unmap what iopfd mapped in a range of the device's space\n"
    "                         (the no-PASID one, or PASID's); IOVA in hex or decimal\n"
    "Options:\n"
    "  --control-socket PATH  the daemon's socket (default /run/iopfd/io.iopfd)\n"
    "  --json                 print each reply's parameters as JSON\n"
    "Exit status: 0 success, 1 the daemon answered with an error (or an unreadable reply),\n"
    "2 usage error, 3 the daemon cannot be reached or closed the connection.\n";

constexpr char kDefaultSocket[] = "/run/iopfd/io.iopfd";

enum ExitCode : int { kOk = 0, kErrorReply = 1, kUsageError = 2, kUnreachable = 3 };

enum class Output {
  kNone,
  kStatus,
  kDevices,
  kStats,
  kReload,
  kDetach,
  kMonitor,
  kDrain,
  kBudget,
  kEvict,
  kTop
};

struct Command {
  const char* name;
  const char* method;  // without the interface prefix
  size_t min_args;
  size_t max_args;
  Output output;
};

constexpr Command kCommands[] = {
    {"status", "GetStatus", 0, 0, Output::kStatus},
    {"devices", "ListDevices", 0, 0, Output::kDevices},
    {"stats", "GetStats", 0, 1, Output::kStats},
    {"drain", "Drain", 1, 2, Output::kDrain},
    {"reset", "Reset", 1, 1, Output::kDrain},
    {"halt", "Halt", 1, 1, Output::kDrain},
    {"resume", "Resume", 1, 1, Output::kDrain},
    {"reload", "Reload", 0, 0, Output::kReload},
    {"detach", "Detach", 1, 1, Output::kDetach},
    {"monitor", "Monitor", 0, 0, Output::kMonitor},
    {"log-level", "SetLogLevel", 1, 1, Output::kNone},
    {"budget", "SetBudget", 2, 3, Output::kBudget},
    {"evict", "Evict", 3, 4, Output::kEvict},
    {"top", "", 0, 0, Output::kTop},
};

struct Invocation {
  std::string socket = kDefaultSocket;
  bool json = false;
  bool prometheus = false;
  iopfd::TopOptions top;  // top's --once and --interval
  bool top_options = false;
  const Command* command = nullptr;
  std::vector<std::string> args;
  std::optional<uint32_t> pasid;  // drain DEV PASID, budget DEV PASID SIZE, evict DEV PASID ...
  std::optional<uint64_t> size;   // budget: nullopt is "unbounded"
  uint64_t iova = 0, length = 0;  // evict
};

int UsageError(const std::string& message) {
  std::fprintf(stderr, "iopfctl: %s\n%s", message.c_str(), kUsage);
  return kUsageError;
}

// The options, into inv; the rest into *positional. Returns -1 to go on, or the exit code.
int ParseOptions(int argc, char** argv, Invocation* inv, std::vector<std::string>* positional) {
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (options_done || a.empty() || a[0] != '-' || a == "-") {
      positional->push_back(a);
    } else if (a == "--") {
      options_done = true;
    } else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return kOk;
    } else if (a == "--version") {
      std::printf("iopfctl %s\n", IOPFD_VERSION);
      return kOk;
    } else if (a == "--json") {
      inv->json = true;
    } else if (a == "--prometheus") {
      inv->prometheus = true;
    } else if (a == "--once") {
      inv->top.once = inv->top_options = true;
    } else if (a == "--interval") {
      if (i + 1 >= argc) return UsageError("--interval needs a value");
      const std::string v = argv[++i];
      double s = 0;
      if (!absl::SimpleAtod(v, &s) || !(s >= 0.1 && s <= 3600)) {
        return UsageError(absl::StrCat("--interval: '", v, "' is not 0.1..3600 seconds"));
      }
      inv->top.every_s = s;
      inv->top_options = true;
    } else if (a == "--control-socket") {
      if (i + 1 >= argc) return UsageError("--control-socket needs a value");
      inv->socket = argv[++i];
    } else if (a.rfind("--control-socket=", 0) == 0) {
      inv->socket = a.substr(std::strlen("--control-socket="));
    } else {
      return UsageError(absl::StrCat("unknown option '", a, "'"));
    }
  }
  return -1;
}

// Parses a decimal or 0x-prefixed hex number (PASIDs and IOVAs are written both ways in kernel
// logs and lspci). Returns nullopt when `text` is not one.
std::optional<uint64_t> ParseNumber(const std::string& text) {
  const bool hex = text.rfind("0x", 0) == 0 || text.rfind("0X", 0) == 0;
  const char* first = text.data() + (hex ? 2 : 0);
  const char* last = text.data() + text.size();
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(first, last, value, hex ? 16 : 10);
  if (first == last || ec != std::errc() || end != last) return std::nullopt;
  return value;
}

// Reads the PASID argument of drain, budget and evict. Returns -1, or the exit code.
int PasidArgument(Invocation* inv, const std::string& text) {
  std::optional<uint64_t> pasid = ParseNumber(text);
  if (!pasid || *pasid == 0 || *pasid > 0xfffff) {
    return UsageError(
        absl::StrCat(inv->command->name, ": PASID '", text, "' is not a number in 1..1048575"));
  }
  inv->pasid = static_cast<uint32_t>(*pasid);
  return -1;
}

// budget DEV [PASID] SIZE|unbounded and evict DEV [PASID] IOVA LENGTH. Returns -1, or the exit
// code.
int PagingArguments(Invocation* inv) {
  const std::string_view name = inv->command->name;
  const size_t own = name == "budget" ? 1 : 2;  // the arguments after DEV [PASID]
  if (inv->args.size() == own + 2) {
    if (int rc = PasidArgument(inv, inv->args[1]); rc >= 0) return rc;
  }
  const size_t at = inv->args.size() - own;
  if (name == "budget") {
    const std::string& text = inv->args[at];
    if (text == "unbounded") return -1;
    absl::StatusOr<uint64_t> size = iopfd::ParseSize(text);
    if (!size.ok()) return UsageError(absl::StrCat("budget: ", size.status().message()));
    inv->size = *size;
    return -1;
  }
  std::optional<uint64_t> iova = ParseNumber(inv->args[at]);
  absl::StatusOr<uint64_t> length = iopfd::ParseSize(inv->args[at + 1]);
  if (!iova) return UsageError(absl::StrCat("evict: IOVA '", inv->args[at], "' is not a number"));
  if (!length.ok()) return UsageError(absl::StrCat("evict: ", length.status().message()));
  inv->iova = *iova;
  inv->length = *length;
  return -1;
}

// The command's own arguments: drain's PASID, log-level's level, budget's and evict's. Returns
// -1, or the exit code.
int CheckArguments(Invocation* inv) {
  const std::string_view name = inv->command->name;
  if (name == "drain" && inv->args.size() == 2) {
    if (int rc = PasidArgument(inv, inv->args[1]); rc >= 0) return rc;
  }
  if (name == "budget" || name == "evict") return PagingArguments(inv);
  if (name == "log-level") {
    const std::string& level = inv->args[0];
    if (level != "error" && level != "warning" && level != "info" && level != "debug") {
      return UsageError(
          absl::StrCat("log-level: '", level, "' is not one of error, warning, info, debug"));
    }
  }
  return -1;
}

// Returns -1 to go on, or the exit code.
int Parse(int argc, char** argv, Invocation* inv) {
  std::vector<std::string> positional;
  if (int rc = ParseOptions(argc, argv, inv, &positional); rc >= 0) return rc;
  if (inv->socket.empty()) return UsageError("--control-socket needs a non-empty path");
  if (positional.empty()) return UsageError("no command given");
  for (const Command& c : kCommands) {
    if (positional[0] == c.name) inv->command = &c;
  }
  if (inv->command == nullptr) {
    return UsageError(absl::StrCat("unknown command '", positional[0], "'"));
  }
  inv->args.assign(positional.begin() + 1, positional.end());
  const Command& c = *inv->command;
  if (inv->args.size() < c.min_args || inv->args.size() > c.max_args) {
    return UsageError(absl::StrCat(c.name, ": wrong number of arguments"));
  }
  if (inv->prometheus && c.output != Output::kStats) {
    return UsageError("--prometheus goes with the stats command only");
  }
  if (inv->top_options && c.output != Output::kTop) {
    return UsageError("--once and --interval go with the top command only");
  }
  return CheckArguments(inv);
}

nlohmann::json Parameters(const Invocation& inv) {
  nlohmann::json p = nlohmann::json::object();
  std::string_view name = inv.command->name;
  if (name == "stats") {
    if (!inv.args.empty()) p["device"] = inv.args[0];
    if (inv.prometheus) p["format"] = "prometheus";
  } else if (name == "log-level") {
    p["level"] = inv.args[0];
  } else if (name == "drain") {
    p["device"] = inv.args[0];
    if (inv.pasid) p["pasid"] = *inv.pasid;
  } else if (name == "budget") {
    p["device"] = inv.args[0];
    if (inv.pasid) p["pasid"] = *inv.pasid;
    p["max_resident"] = inv.size ? nlohmann::json(*inv.size) : nlohmann::json(nullptr);
  } else if (name == "evict") {
    p["device"] = inv.args[0];
    if (inv.pasid) p["pasid"] = *inv.pasid;
    p["iova"] = inv.iova;
    p["length"] = inv.length;
  } else if (!inv.args.empty()) {
    p["device"] = inv.args[0];
  }
  return p;
}

// The line budget and evict print.
std::string PagingReply(const Invocation& inv, const nlohmann::json& p) {
  auto n = [&p](const char* key) { return p.is_object() ? p.value(key, uint64_t{0}) : 0; };
  if (inv.command->output == Output::kBudget) {
    return absl::StrCat(inv.args[0], ": max_resident ",
                        inv.size ? absl::StrCat(*inv.size, " bytes") : "unbounded", "; resident ",
                        n("resident_bytes"), " bytes\n");
  }
  return absl::StrCat(inv.args[0], ": evicted ", n("evicted_bytes"), " bytes (", n("evicted_units"),
                      " units); left mapped: ", n("pinned_units"), " pinned by unwritten answers, ",
                      n("stuck_units"), " not iopfd's to unmap\n");
}

// Prints one successful reply; returns the exit code.
int Print(const Invocation& inv, const nlohmann::json& p) {
  if (inv.json) {
    std::string doc = p.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
    std::printf("%s\n", doc.c_str());
    return kOk;
  }
  std::string out;
  switch (inv.command->output) {
    case Output::kNone:
      return kOk;
    case Output::kStatus:
      out = iopfd::FormatStatus(p);
      break;
    case Output::kDevices:
      out = iopfd::FormatDevices(p);
      break;
    case Output::kStats:
      if (inv.prometheus) {
        auto text = p.find("text");
        if (text == p.end() || !text->is_string()) {
          std::fprintf(stderr, "iopfctl: GetStats: the reply carries no Prometheus text\n");
          return kErrorReply;
        }
        out = text->get<std::string>();
        if (!out.empty() && out.back() != '\n') out.push_back('\n');
      } else {
        out = iopfd::FormatStats(p);
      }
      break;
    case Output::kReload:
      out = iopfd::FormatReload(p);
      break;
    case Output::kDetach: {
      // The final statistics, shown like `stats DEV`.
      nlohmann::json devices = nlohmann::json::array();
      if (p.is_object() && p.contains("stats")) devices.push_back(p["stats"]);
      out = iopfd::FormatStats(nlohmann::json{{"devices", devices}});
      break;
    }
    case Output::kMonitor:
      out = iopfd::FormatMonitorEvent(p) + "\n";
      break;
    case Output::kDrain:
      out = iopfd::FormatDrainReply(inv.args[0], p);
      break;
    case Output::kBudget:
    case Output::kEvict:
      out = PagingReply(inv, p);
      break;
    case Output::kTop:
      break;  // RunTop prints its own frames
  }
  std::fputs(out.c_str(), stdout);
  return kOk;
}

// A drain step the daemon finishes on its own (a function reset runs on its worker thread): the
// command follows the device until it settles, so that `iopfctl reset DEV` returns with the
// reset done (or failed), as an operator expects.
// Polls ListDevices until `device` leaves the transient states; returns its last entry's
// {state, epoch}, or an error status (the daemon went away, the device did, 60 s passed).
absl::StatusOr<nlohmann::json> WaitSettled(iopfd::VarlinkClient& client, const std::string& device,
                                           nlohmann::json last) {
  constexpr int kPollMs = 20;
  constexpr int kLimitMs = 60000;
  for (int waited = 0; waited <= kLimitMs; waited += kPollMs) {
    if (!iopfd::IsTransientState(last["state"])) return last;
    usleep(kPollMs * 1000);
    if (absl::Status st = client.Call("io.iopfd.ListDevices", nlohmann::json::object()); !st.ok()) {
      return st;
    }
    absl::StatusOr<iopfd::VarlinkReply> reply = client.Next();
    if (!reply.ok()) return reply.status();
    if (!reply->error.empty()) return absl::InternalError("ListDevices: " + reply->error);
    std::optional<nlohmann::json> entry = iopfd::DeviceStateIn(reply->parameters, device);
    if (!entry.has_value()) return absl::NotFoundError(device + " is no longer served");
    last = *std::move(entry);
  }
  return absl::DeadlineExceededError(
      absl::StrCat(device, " still ", last["state"].dump(), " after ", kLimitMs / 1000, " s"));
}

// A drain reply in a transient state: waits for the device to settle (WaitSettled) and puts
// the settled {state, epoch} in *params. Returns -1 to print it, or the exit code of a drain
// that did not end running or halted (the error said on stderr).
int FollowDrain(iopfd::VarlinkClient& client, const Invocation& inv, nlohmann::json* params) {
  if (!iopfd::IsTransientState((*params)["state"])) return -1;
  const char* method = inv.command->method;
  const std::string& device = inv.args[0];
  absl::StatusOr<nlohmann::json> settled = WaitSettled(client, device, *params);
  if (!settled.ok()) {
    std::fprintf(stderr, "iopfctl: %s: waiting for %s to settle: %s\n", method, device.c_str(),
                 std::string(settled.status().message()).c_str());
    return kErrorReply;
  }
  *params = *settled;
  if ((*settled)["state"] == "quarantined") {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "iopfctl: %s: %s was quarantined while it finished (see the daemon's log or "
                 "`iopfctl monitor`); `iopfctl resume %s` when it is fit again\n",
                 method, device.c_str(), device.c_str());
    return kErrorReply;
  }
  if ((*settled)["state"] == "failed") {
    std::fflush(stdout);
    std::fprintf(stderr,
                 "iopfctl: %s: %s's fault queue failed while it finished (see the daemon's "
                 "log); it is no longer served\n",
                 method, device.c_str());
    return kErrorReply;
  }
  return -1;
}

void EndMonitor(int) {
  // Ctrl-C is the ordinary way to stop watching, not a failure; every event line was already
  // flushed, so nothing is lost by leaving without running exit handlers.
  _exit(kOk);
}

int Run(const Invocation& inv) {
  if (inv.command->output == Output::kTop) return iopfd::RunTop(inv.socket, inv.top);
  const std::string method = inv.command->method;
  absl::StatusOr<iopfd::VarlinkClient> client = iopfd::VarlinkClient::Connect(inv.socket);
  if (!client.ok()) {
    int err = iopfd::ErrnoOf(client.status());
    std::string why =
        err != 0 ? absl::StrCat(std::string(iopfd::ErrnoName(err)), " (", strerrordesc_np(err), ")")
                 : std::string(client.status().message());
    std::fprintf(stderr, "iopfctl: cannot connect to %s: %s\n", inv.socket.c_str(), why.c_str());
    return kUnreachable;
  }
  bool monitor = inv.command->output == Output::kMonitor;
  if (monitor) {
    struct sigaction sa = {};
    sa.sa_handler = EndMonitor;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
  }
  absl::Status sent = client->Call(absl::StrCat("io.iopfd.", method), Parameters(inv), monitor);
  if (!sent.ok()) {
    std::fprintf(stderr, "iopfctl: %s: %s\n", method.c_str(), std::string(sent.message()).c_str());
    return kUnreachable;
  }
  while (true) {
    absl::StatusOr<iopfd::VarlinkReply> reply = client->Next();
    if (!reply.ok()) {
      std::fprintf(stderr, "iopfctl: %s: %s\n", method.c_str(),
                   std::string(reply.status().message()).c_str());
      // A reply that arrived but cannot be read is the daemon answering badly, not being away.
      return reply.status().code() == absl::StatusCode::kDataLoss ? kErrorReply : kUnreachable;
    }
    if (!reply->error.empty()) {
      std::fflush(stdout);
      std::fprintf(stderr, "%s\n",
                   iopfd::FormatError(method, reply->error, reply->parameters).c_str());
      return kErrorReply;
    }
    if (inv.command->output == Output::kDrain) {
      if (int rc = FollowDrain(*client, inv, &reply->parameters); rc >= 0) return rc;
    }
    int rc = Print(inv, reply->parameters);
    if (rc != kOk) return rc;
    // Someone watching through a pipe wants each event as it happens.
    std::fflush(stdout);
    if (!monitor || !reply->continues) return kOk;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Nothing below is expected to throw; if something does (out of memory, a JSON type error in
  // a reply we did not foresee), report it as an error instead of aborting.
  try {
    Invocation inv;
    int rc = Parse(argc, argv, &inv);
    if (rc >= 0) return rc;
    return Run(inv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "iopfctl: %s\n", e.what());
    return 1;
  }
}
