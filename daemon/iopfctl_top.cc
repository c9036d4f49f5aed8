// iopfctl top: the terminal side of the live view (the model and the frame: lib/control/top.cc).
#include "iopfctl_top.h"

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/control/ctl_format.h"
#include "iopfd/control/top.h"
#include "iopfd/control/varlink_client.h"

namespace iopfd {
namespace {

volatile sig_atomic_t g_quit = 0;
volatile sig_atomic_t g_resized = 0;

void OnQuit(int) { g_quit = 1; }
void OnResize(int) { g_resized = 1; }

std::string Clock() {
  time_t now = time(nullptr);
  tm local{};
  localtime_r(&now, &local);
  char buf[16];
  strftime(buf, sizeof(buf), "%H:%M:%S", &local);
  return buf;
}

// One call and its reply's parameters; an error reply or a broken connection is a status whose
// message says which.
absl::StatusOr<nlohmann::json> CallOne(VarlinkClient& c, const char* method,
                                       const nlohmann::json& params) {
  if (absl::Status st = c.Call(method, params); !st.ok()) return st;
  absl::StatusOr<VarlinkReply> r = c.Next();
  if (!r.ok()) return r.status();
  if (!r->error.empty()) {
    return absl::PermissionDeniedError(FormatError(method, r->error, r->parameters));
  }
  return std::move(r->parameters);
}

// The terminal in the state top needs (no echo, keys one at a time, the alternate screen, no
// cursor), restored however top ends.
class Screen {
 public:
  explicit Screen(bool keys) {
    if (keys && tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      // Input only: output processing stays on, so "\n" still ends a line at column 0.
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      raw.c_cc[VMIN] = 1;
      raw.c_cc[VTIME] = 0;
      restore_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    std::fputs("\x1b[?1049h\x1b[?25l", stdout);
    std::fflush(stdout);
  }
  ~Screen() {
    std::fputs("\x1b[?25h\x1b[?1049l", stdout);
    std::fflush(stdout);
    if (restore_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  Screen(const Screen&) = delete;
  Screen& operator=(const Screen&) = delete;

 private:
  termios saved_{};
  bool restore_ = false;
};

void Size(TopView* view, bool tty) {
  winsize ws{};
  if (tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
    view->width = ws.ws_col;
    view->height = ws.ws_row;
    return;
  }
  // Not a terminal: COLUMNS if set, and no limit on lines.
  const char* cols = std::getenv("COLUMNS");  // NOLINT(concurrency-mt-unsafe): one thread
  view->width = cols != nullptr && std::atoi(cols) > 0 ? std::atoi(cols) : 120;
  view->height = 100000;
}

class Top {
 public:
  Top(std::string socket, const TopOptions& options)
      : socket_(std::move(socket)), options_(options) {}

  int Run() {
    const bool tty = isatty(STDOUT_FILENO) != 0;
    const char* no_color = std::getenv("NO_COLOR");  // NOLINT(concurrency-mt-unsafe)
    view_.color = tty && (no_color == nullptr || no_color[0] == '\0');
    view_.every_s = options_.every_s;
    Size(&view_, tty);
    if (!Connect()) {
      std::fprintf(stderr, "iopfctl: top: %s\n", offline_.c_str());
      return 3;
    }
    if (options_.once || !tty) {
      view_.keys = false;
      return Batch();
    }
    return Live();
  }

 private:
  // Connects both connections and subscribes; false with offline_ set when it cannot.
  bool Connect() {
    absl::StatusOr<VarlinkClient> calls = VarlinkClient::Connect(socket_);
    absl::StatusOr<VarlinkClient> monitor = VarlinkClient::Connect(socket_);
    if (!calls.ok() || !monitor.ok()) {
      const absl::Status& st = !calls.ok() ? calls.status() : monitor.status();
      const int err = ErrnoOf(st);
      offline_ = absl::StrCat("cannot connect to ", socket_, ": ",
                              err != 0 ? std::string(ErrnoName(err)) : std::string(st.message()));
      return false;
    }
    calls_.emplace(*std::move(calls));
    monitor_.emplace(*std::move(monitor));
    if (absl::Status st = monitor_->Call("io.iopfd.Monitor", nlohmann::json::object(), true);
        !st.ok()) {
      monitor_.reset();
    }
    offline_.clear();
    return true;
  }

  // Reads the three replies into the model. False with offline_ set when iopfd is gone (the
  // connections are dropped, to be made again); an error reply (PermissionDenied) ends top.
  bool Sample() {
    if (!calls_ && !Connect()) return false;
    TopSample s;
    absl::StatusOr<nlohmann::json> status = CallOne(*calls_, "io.iopfd.GetStatus", {});
    absl::StatusOr<nlohmann::json> devices =
        status.ok() ? CallOne(*calls_, "io.iopfd.ListDevices", {}) : status;
    absl::StatusOr<nlohmann::json> stats =
        devices.ok() ? CallOne(*calls_, "io.iopfd.GetStats", {{"buckets", true}}) : devices;
    if (!stats.ok()) {
      if (stats.status().code() == absl::StatusCode::kPermissionDenied) {
        fatal_ = std::string(stats.status().message());
      }
      offline_ = absl::StrCat("iopfd at ", socket_, " went away (", stats.status().message(),
                              "); reconnecting every ", Rate(), " s");
      calls_.reset();
      monitor_.reset();
      return false;
    }
    s.at_ns = MonotonicNs();
    s.status = *std::move(status);
    s.devices = *std::move(devices);
    s.stats = *std::move(stats);
    model_.Update(s);
    return true;
  }

  std::string Rate() const { return absl::StrCat(options_.every_s); }

  std::string Frame() {
    std::string frame = RenderTop(model_, view_, Clock());
    if (!offline_.empty()) frame = absl::StrCat(offline_, "\n", frame);
    return frame;
  }

  // --once, or output that is not a terminal: frames one after another, no escape sequences.
  int Batch() {
    if (!Sample() && !fatal_.empty()) return Fatal();
    while (g_quit == 0) {
      usleep(static_cast<useconds_t>(options_.every_s * 1e6));
      if (!Sample() && !fatal_.empty()) return Fatal();
      std::fputs(Frame().c_str(), stdout);
      if (std::fflush(stdout) != 0 || options_.once) break;
      std::fputs("\n", stdout);
    }
    return offline_.empty() ? 0 : 3;
  }

  int Fatal() {
    std::fprintf(stderr, "iopfctl: top: %s\n", fatal_.c_str());
    return 1;
  }

  void Draw() {
    // Home, each line cleared to its end, the rest of the screen cleared.
    std::string out = "\x1b[H" + absl::StrReplaceAll(Frame(), {{"\n", "\x1b[K\n"}}) + "\x1b[J";
    if (!out.empty() && out[out.size() - 4] == '\n') out.erase(out.size() - 4, 1);
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
  }

  // Reads one Monitor event into the view; returns true when the device list may have changed.
  bool OnEvent() {
    absl::StatusOr<VarlinkReply> r = monitor_->Next();
    if (!r.ok() || !r->error.empty() || !r->continues) {
      monitor_.reset();  // the daemon stopped: the next sample finds out and reconnects
      return true;
    }
    const std::string kind = r->parameters.value("event", "");
    if (kind == "subscribed") return false;
    view_.events.push_back(absl::StrCat(Clock(), "  ", FormatMonitorEvent(r->parameters)));
    while (view_.events.size() > kTopEvents) view_.events.pop_front();
    return kind.rfind("device_", 0) == 0 || kind == "state_changed" || kind == "reload";
  }

  int Live() {
    const bool keys = isatty(STDIN_FILENO) != 0;
    Screen screen(keys);
    struct sigaction sa = {};
    sa.sa_handler = OnResize;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGWINCH, &sa, nullptr);
    sa.sa_handler = OnQuit;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    const auto every_ns = static_cast<uint64_t>(options_.every_s * 1e9);
    Sample();
    uint64_t next = MonotonicNs();  // the first frame a moment after the first sample
    next += std::min<uint64_t>(every_ns, 200000000ull);
    Draw();
    while (g_quit == 0 && fatal_.empty()) {
      const uint64_t now = MonotonicNs();
      if (now >= next) {
        Sample();
        Draw();
        next = now + every_ns;
        continue;
      }
      pollfd fds[2] = {{keys ? STDIN_FILENO : -1, POLLIN, 0},
                       {monitor_ ? monitor_->fd() : -1, POLLIN, 0}};
      const int n = poll(fds, 2, static_cast<int>((next - now) / 1000000ull) + 1);
      if (g_resized != 0) {
        g_resized = 0;
        Size(&view_, true);
        Draw();
      }
      if (n <= 0) continue;
      if ((fds[0].revents & (POLLIN | POLLHUP)) != 0) {
        char keys_read[32];
        const ssize_t got = read(STDIN_FILENO, keys_read, sizeof(keys_read));
        if (got <= 0) break;  // the terminal is gone
        for (ssize_t i = 0; i < got; ++i) {
          if (!HandleTopKey(view_, static_cast<unsigned char>(keys_read[i]))) g_quit = 1;
        }
        Draw();
      }
      if (monitor_ && (fds[1].revents & (POLLIN | POLLHUP)) != 0 && OnEvent()) {
        // A device came, went or changed state: show it now, not at the next tick.
        Sample();
        Draw();
      }
    }
    return fatal_.empty() ? 0 : Fatal();
  }

  std::string socket_;
  TopOptions options_;
  TopView view_;
  TopModel model_;
  std::optional<VarlinkClient> calls_, monitor_;
  std::string offline_;  // why iopfd cannot be read now, shown above the frame
  std::string fatal_;    // an error reply: top ends with it
};

}  // namespace

int RunTop(const std::string& socket, const TopOptions& options) {
  return Top(socket, options).Run();
}

}  // namespace iopfd
