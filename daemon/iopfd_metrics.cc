// iopfd-metrics: serves iopfd's statistics to Prometheus over HTTP (GET /metrics), from the
// sockets systemd passes it (iopfd-metrics.socket) or from --listen addresses.
#include <signal.h>
#include <sys/socket.h>

#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "iopfd/control/metrics_http.h"
#include "iopfd/service/listen_fds.h"

namespace {

constexpr char kUsage[] =
    "usage: iopfd-metrics [--control-socket PATH] [--listen ADDRESS:PORT]...\n"
    "                     [--scrape-timeout MS]\n"
    "       iopfd-metrics --help | --version\n"
    "\n"
    "Serves iopfd's statistics in the Prometheus text format at GET /metrics over HTTP,\n"
    "one GetStats call to iopfd per scrape. Without --listen it serves the sockets systemd\n"
    "passes it (iopfd-metrics.socket, 127.0.0.1:10960).\n"
    "Options:\n"
    "  --control-socket PATH  iopfd's control socket (default /run/iopfd/io.iopfd)\n"
    "  --listen ADDRESS:PORT  listen on a numeric address: 127.0.0.1:10960, [::1]:10960\n"
    "  --scrape-timeout MS    how long a scrape waits for iopfd (default 5000); past it the\n"
    "                         scrape is answered 503\n"
    "Exit status: 0 stopped by SIGTERM or SIGINT, 1 a runtime error, 2 usage error.\n";

volatile sig_atomic_t g_stop = 0;

void OnStop(int) { g_stop = 1; }

struct Options {
  std::string socket = "/run/iopfd/io.iopfd";
  std::vector<std::string> listen;
  int timeout_ms = 5000;
};

int Usage(const std::string& message) {
  std::fprintf(stderr, "iopfd-metrics: %s\n%s", message.c_str(), kUsage);
  return 2;
}

// Returns -1 to go on, or the exit code.
int Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      return i + 1 < argc ? argv[++i] : (Usage(absl::StrCat(name, " needs a value")), nullptr);
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--version") {
      std::printf("iopfd-metrics %s\n", IOPFD_VERSION);
      return 0;
    }
    if (a == "--control-socket" || a == "--listen" || a == "--scrape-timeout") {
      const char* v = value(a.c_str());
      if (v == nullptr) return 2;
      if (a == "--control-socket") {
        o->socket = v;
      } else if (a == "--listen") {
        o->listen.emplace_back(v);
      } else {
        std::string_view t(v);
        auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), o->timeout_ms);
        if (t.empty() || ec != std::errc() || end != t.data() + t.size() || o->timeout_ms < 1 ||
            o->timeout_ms > 600000) {
          return Usage(
              absl::StrCat("--scrape-timeout: '", std::string(t), "' is not 1..600000 ms"));
        }
      }
      continue;
    }
    return Usage(absl::StrCat("unknown argument '", a, "'"));
  }
  if (o->socket.empty()) return Usage("--control-socket needs a non-empty path");
  return -1;
}

// The sockets to serve: --listen's, else systemd's. Returns false (the error said) when there
// are none or one is not a listening stream socket.
bool Listeners(const Options& o, std::vector<iopfd::UniqueFd>* out) {
  for (const std::string& a : o.listen) {
    absl::StatusOr<iopfd::UniqueFd> fd = iopfd::ListenTcp(a);
    if (!fd.ok()) {
      std::fprintf(stderr, "iopfd-metrics: --listen %s\n",
                   std::string(fd.status().message()).c_str());
      return false;
    }
    out->push_back(*std::move(fd));
  }
  if (!o.listen.empty()) return true;
  absl::StatusOr<iopfd::ListenFds> fds = iopfd::ListenFds::FromEnvironment();
  if (!fds.ok()) {
    std::fprintf(stderr, "iopfd-metrics: %s\n", std::string(fds.status().message()).c_str());
    return false;
  }
  *out = fds->TakeAll();
  if (out->empty()) {
    std::fprintf(stderr,
                 "iopfd-metrics: no socket to serve: run it from iopfd-metrics.socket, or give "
                 "--listen ADDRESS:PORT\n");
    return false;
  }
  for (const iopfd::UniqueFd& fd : *out) {
    // Accept=yes would hand over a connection, not a listener: say so instead of failing later.
    int listening = 0;
    socklen_t len = sizeof(listening);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) {
      std::fprintf(stderr,
                   "iopfd-metrics: fd %d is not a listening socket (the socket unit needs "
                   "Accept=no)\n",
                   fd.get());
      return false;
    }
  }
  return true;
}

int Run(const Options& o) {
  std::vector<iopfd::UniqueFd> listeners;
  if (!Listeners(o, &listeners)) return 1;
  struct sigaction sa = {};
  sa.sa_handler = OnStop;
  sigemptyset(&sa.sa_mask);
  // No SA_RESTART: poll returns EINTR and the loop sees the flag.
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // The log says when scrapes start failing and when they work again, not once per scrape.
  bool failing = false;
  iopfd::MetricsSource source = [&o, &failing]() {
    absl::StatusOr<std::string> text = iopfd::FetchPrometheusText(o.socket, o.timeout_ms);
    if (text.ok() == failing) {
      failing = !text.ok();
      if (failing) {
        std::fprintf(stderr, "iopfd-metrics: scrapes answered 503 while iopfd cannot be read: %s\n",
                     std::string(text.status().message()).c_str());
      } else {
        std::fprintf(stderr, "iopfd-metrics: iopfd answers again at %s\n", o.socket.c_str());
      }
    }
    return text;
  };
  iopfd::MetricsServer server(std::move(listeners), source);
  while (g_stop == 0) {
    if (absl::Status st = server.Poll(-1); !st.ok()) {
      std::fprintf(stderr, "iopfd-metrics: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o;
    if (int rc = Parse(argc, argv, &o); rc >= 0) return rc;
    return Run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "iopfd-metrics: %s\n", e.what());
    return 1;
  }
}
