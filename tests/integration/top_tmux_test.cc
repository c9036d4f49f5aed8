// iopfctl top on a real terminal: tmux runs it against a running iopfd serving stand-in devices;
// the test types keys (send-keys) and reads the screen (capture-pane), as a person would.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

#include "fake_queue.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"

namespace {

using iopfd_test::DeviceText;
using iopfd_test::FakeQueue;
using iopfd_test::Iopfd;
using iopfd_test::IopfdOptions;
using iopfd_test::Shell;
using ::testing::HasSubstr;
using ::testing::Not;

// A tmux server of the test's own (its own socket name), with one session running a command in a
// 110x30 terminal.
class Tmux {
 public:
  Tmux(const std::string& session, const std::string& command) : session_(session) {
    server_ = "iopfd-top-test-" + std::to_string(getpid());
    std::string out;
    started_ =
        Shell(Cmd("new-session -d -s " + session_ + " -x 110 -y 30 '" + command + "'"), &out) == 0;
    EXPECT_TRUE(started_) << "tmux: " << out;
  }
  ~Tmux() {
    Shell(Cmd("kill-session -t " + session_));
    Shell(Cmd("list-sessions") + " >/dev/null 2>&1 || " + Cmd("kill-server") + " 2>/dev/null");
  }
  Tmux(const Tmux&) = delete;
  Tmux& operator=(const Tmux&) = delete;

  // The screen as text (with_escapes: with the SGR attributes of each cell).
  std::string Screen(bool with_escapes = false) const {
    std::string out;
    Shell(Cmd(std::string("capture-pane -p ") + (with_escapes ? "-e " : "") + "-t " + session_),
          &out);
    return out;
  }
  void Keys(const std::string& keys) const { Shell(Cmd("send-keys -t " + session_ + " " + keys)); }
  bool Alive() const { return Shell(Cmd("has-session -t " + session_)) == 0; }
  // Waits up to 10 s for the screen to satisfy pred; returns the last screen read.
  std::string WaitFor(const std::function<bool(const std::string&)>& pred) const {
    std::string s;
    for (int i = 0; i < 200; ++i) {
      s = Screen();
      if (pred(s)) return s;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "the screen never showed what was waited for; it shows:\n" << s;
    return s;
  }

 private:
  std::string Cmd(const std::string& args) const { return "tmux -L " + server_ + " " + args; }
  std::string server_, session_;
  bool started_ = false;
};

// The row of `device` on the screen, split into its columns ("" when there is none).
std::vector<std::string> RowOf(const std::string& screen, const std::string& device) {
  std::istringstream in(screen);
  for (std::string line; std::getline(in, line);) {
    std::istringstream cols(line);
    std::vector<std::string> out;
    for (std::string c; cols >> c;) out.push_back(c);
    if (!out.empty() && out[0] == device) return out;
  }
  return {};
}

bool Shows(const std::string& screen, const std::string& what) {
  return screen.find(what) != std::string::npos;
}

class TopTmuxTest : public ::testing::Test {
 protected:
  TopTmuxTest() {
    IopfdOptions o;
    o.devices = {{"gpu0.toml", DeviceText("gpu0")}, {"nic1.toml", DeviceText("nic1")}};
    for (auto [name, q] :
         {std::pair{"gpu0", &gpu_}, std::pair{"nic1", &nic_}, std::pair{"late", &late_}}) {
      o.fds.emplace_back(std::string(name) + ".iommufd", q->iommufd);
      o.fds.emplace_back(std::string(name) + ".fault", q->theirs);
    }
    iopfd_ = std::make_unique<Iopfd>(o);
    ctl_ = std::string(IOPFCTL_PATH) + " --control-socket " + iopfd_->socket();
  }
  FakeQueue gpu_, nic_, late_;
  std::unique_ptr<Iopfd> iopfd_;
  std::string ctl_;
};

TEST_F(TopTmuxTest, ShowsDevicesRatesAndFollowsKeysAndDevicesComingAndGoing) {
  Tmux tmux("top", ctl_ + " top --interval 0.5");
  std::string s = tmux.WaitFor([](const std::string& x) {
    return Shows(x, "DEVICE") && Shows(x, "gpu0") && Shows(x, "nic1");
  });
  EXPECT_THAT(s, HasSubstr("devices 2/2 running"));
  EXPECT_EQ(RowOf(s, "gpu0").at(1), "running");

  // Faults on gpu0 show as a rate on its row, and nowhere else.
  for (int i = 0; i < 40; ++i) gpu_.Fault(0x100000 + static_cast<uint64_t>(i % 16) * 0x1000);
  ASSERT_EQ(gpu_.Responses(40).size(), 40u);
  s = tmux.WaitFor([](const std::string& x) {
    auto row = RowOf(x, "gpu0");
    return row.size() > 3 && row[3] != "0" && row[3] != "-";
  });
  EXPECT_EQ(RowOf(s, "nic1").at(3), "0") << s;

  // "/" filters by name, an empty filter shows all again.
  tmux.Keys("/ g p u Enter");
  s = tmux.WaitFor(
      [](const std::string& x) { return Shows(x, "filter: gpu") && !Shows(x, "nic1"); });
  EXPECT_FALSE(RowOf(s, "gpu0").empty());
  tmux.Keys("/ BSpace BSpace BSpace Enter");
  tmux.WaitFor([](const std::string& x) { return Shows(x, "nic1") && !Shows(x, "filter:"); });

  // "s" moves the sort to the next column.
  tmux.Keys("s");
  tmux.WaitFor([](const std::string& x) { return Shows(x, "P99v") && Shows(x, "sort (P99)"); });

  // A device added by a reload appears (with its Monitor event), a removed one disappears.
  iopfd_->WriteDevice("late.toml", DeviceText("late"));
  iopfd_->Signal(SIGHUP);
  s = tmux.WaitFor([](const std::string& x) { return !RowOf(x, "late").empty(); });
  EXPECT_THAT(s, HasSubstr("device_added late"));
  iopfd_->WriteDevice("nic1.toml", "");
  iopfd_->Signal(SIGHUP);
  tmux.WaitFor([](const std::string& x) { return RowOf(x, "nic1").empty() && Shows(x, "late"); });

  // q ends it: the session's only command exits.
  tmux.Keys("q");
  for (int i = 0; i < 100 && tmux.Alive(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(tmux.Alive()) << "iopfctl top did not exit on q";
}

TEST_F(TopTmuxTest, ColourUnlessNoColorAndIopfdGoingAwayIsShown) {
  Tmux colour("colour", ctl_ + " top --interval 0.5");
  colour.WaitFor([](const std::string& x) { return Shows(x, "gpu0"); });
  // The header row in reverse video (SGR 7).
  EXPECT_THAT(colour.Screen(true), HasSubstr("\x1b[7m"));
  Tmux plain("plain", "NO_COLOR=1 " + ctl_ + " top --interval 0.5");
  plain.WaitFor([](const std::string& x) { return Shows(x, "gpu0"); });
  EXPECT_THAT(plain.Screen(true), Not(HasSubstr("\x1b[7m")));

  ASSERT_EQ(iopfd_->Stop(), 0);
  std::string s = colour.WaitFor([](const std::string& x) { return Shows(x, "went away"); });
  EXPECT_THAT(s, HasSubstr("reconnecting"));
  EXPECT_TRUE(colour.Alive());
}

TEST_F(TopTmuxTest, OnceAndOutputThatIsNotATerminalPrintPlainFrames) {
  for (int i = 0; i < 10; ++i) gpu_.Fault(0x100000);
  ASSERT_EQ(gpu_.Responses(10).size(), 10u);
  std::string out;
  ASSERT_EQ(Shell(ctl_ + " top --once --interval 0.2", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("gpu0"));
  EXPECT_THAT(out, HasSubstr("nic1"));
  EXPECT_THAT(out, Not(HasSubstr("\x1b")));
  EXPECT_THAT(out, Not(HasSubstr("q quit")));
  // Not a terminal, no --once: a frame every interval until stopped.
  ASSERT_EQ(Shell("timeout 1.3 " + ctl_ + " top --interval 0.25 | grep -c '^DEVICE'", &out), 0);
  EXPECT_GE(std::stoi(out), 3) << out;
  ASSERT_EQ(Shell(ctl_ + " top --once --interval 0", &out), 2);
  EXPECT_THAT(out, HasSubstr("--interval"));
  ASSERT_EQ(Shell(ctl_ + " stats --once", &out), 2);
}

}  // namespace
