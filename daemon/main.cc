// iopfd: user-space IOMMU page-fault service. main() parses the command line and runs a Daemon
// (lib/service/daemon.cc), which owns the wiring.
#include <cstdio>
#include <string>
#include <vector>

#include "iopfd/config/config.h"
#include "iopfd/service/daemon.h"
#include "iopfd/service/log.h"

namespace {

constexpr char kUsage[] =
    "usage: iopfd [--config FILE] [--devices-dir DIR] [--control-socket PATH]\n"
    "             [--check-config] [--stats-json FILE] [--version] [--help]\n"
    "\n"
    "Resolves IOMMU page requests (PCIe PRI) from iommufd fault queues.\n"
    "  --config FILE       global configuration (default /etc/iopfd/iopfd.toml)\n"
    "  --devices-dir DIR   per-device files (default from the global file, else\n"
    "                      /etc/iopfd/devices.d)\n"
    "  --control-socket PATH  the Varlink control socket (default from the global\n"
    "                      file, else /run/iopfd/io.iopfd); a socket passed by systemd\n"
    "                      as LISTEN_FDNAMES \"control\" is used instead when present\n"
    "  --check-config      validate the configuration, print each error as\n"
    "                      file:line:col: message, and exit (0 valid, 1 invalid)\n"
    "  --stats-json FILE   write per-device statistics as JSON lines at exit\n"
    "Signals: SIGTERM/SIGINT answer everything outstanding and exit; SIGUSR1 prints stats;\n"
    "SIGHUP reloads the configuration (as iopfctl reload does).\n";

struct Flags {
  iopfd::LoadOptions load;
  bool check_config = false;
  std::string stats_json;
  std::string control_socket;
};

// Returns -1 to continue, or an exit code.
int ParseFlags(int argc, char** argv, Flags* flags) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* name) -> const std::string* {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "iopfd: %s needs a value\n%s", name, kUsage);
        return nullptr;
      }
      return &args[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--version") {
      std::printf("iopfd %s\n", IOPFD_VERSION);
      return 0;
    } else if (a == "--check-config") {
      flags->check_config = true;
    } else if (a == "--config") {
      const std::string* v = value("--config");
      if (v == nullptr) return 2;
      flags->load.global_path = *v;
      flags->load.global_optional = false;
    } else if (a == "--devices-dir") {
      const std::string* v = value("--devices-dir");
      if (v == nullptr) return 2;
      flags->load.devices_dir = *v;
    } else if (a == "--control-socket") {
      const std::string* v = value("--control-socket");
      if (v == nullptr) return 2;
      flags->control_socket = *v;
    } else if (a == "--stats-json") {
      const std::string* v = value("--stats-json");
      if (v == nullptr) return 2;
      flags->stats_json = *v;
    } else {
      std::fprintf(stderr, "iopfd: unknown argument '%s'\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (int rc = ParseFlags(argc, argv, &flags); rc >= 0) return rc;

  iopfd::LoadResult loaded = iopfd::LoadConfig(flags.load);
  if (flags.check_config) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.ToString().c_str());
    if (!loaded.ok()) return 1;
    std::printf("configuration OK: %zu device(s)\n", loaded.config.devices.size());
    return 0;
  }
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.ToString().c_str());
    std::fprintf(stderr, "iopfd: invalid configuration, not starting\n");
    return 1;
  }
  auto daemon = iopfd::Daemon::Start({.load = flags.load,
                                      .stats_json = flags.stats_json,
                                      .control_socket = flags.control_socket,
                                      .version = IOPFD_VERSION},
                                     loaded.config);
  if (!daemon.ok()) {
    iopfd::Log(iopfd::LogLevel::kError, std::string(daemon.status().message()));
    return 1;
  }
  return (*daemon)->Run();
}
