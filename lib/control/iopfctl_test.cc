// Runs the built iopfctl binary (and its bash completion) against fake Varlink servers.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "varlink_test_util.h"

#ifndef IOPFCTL_PATH
#error "IOPFCTL_PATH must name the iopfctl binary under test"
#endif
#ifndef IOPFCTL_COMPLETION
#error "IOPFCTL_COMPLETION must name iopfctl.bash-completion"
#endif

namespace iopfd {
namespace {

using ::iopfd::testutil::FakeServer;
using ::iopfd::testutil::Frame;
using ::iopfd::testutil::ProcessResult;
using ::iopfd::testutil::ReadMessage;
using ::iopfd::testutil::RunProcess;
using ::iopfd::testutil::TempDir;
using ::iopfd::testutil::WriteAll;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;
using Json = nlohmann::json;

class IopfctlTest : public ::testing::Test {
 protected:
  ProcessResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), IOPFCTL_PATH);
    return RunProcess(args, dir_.path());
  }

  // A server on socket_ that records the call it receives and answers with `replies`.
  std::unique_ptr<FakeServer> Serve(const std::vector<Json>& replies) {
    return std::make_unique<FakeServer>(socket_, [this, replies](int fd) {
      call_ = ReadMessage(fd);
      for (const Json& r : replies) WriteAll(fd, Frame(r));
    });
  }

  TempDir dir_;
  std::string socket_ = dir_.path() + "/io.iopfd";
  std::string call_;
};

TEST_F(IopfctlTest, NonexistentSocketExits3) {
  ProcessResult r = Run({"--control-socket", socket_, "status"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.err,
            "iopfctl: cannot connect to " + socket_ + ": ENOENT (No such file or directory)\n");
  EXPECT_THAT(r.out, IsEmpty());
}

TEST_F(IopfctlTest, UsageErrorsExit2) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"--bogus", "status"},
      {"status", "extra"},
      {"drain"},
      {"drain", "gpu0", "gpu1"},
      {"drain", "gpu0", "0"},
      {"drain", "gpu0", "0x100000"},
      {"drain", "gpu0", "5x"},
      {"drain", "gpu0", "0x"},
      {"drain", "gpu0", "1", "2"},
      {"reset", "gpu0", "5"},
      {"devices", "--prometheus"},
      {"log-level", "verbose"},
      {"budget", "gpu0"},
      {"budget", "gpu0", "lots"},
      {"budget", "gpu0", "0", "1GiB"},
      {"budget", "gpu0", "5", "2MB"},
      {"evict", "gpu0", "0x1000"},
      {"evict", "gpu0", "zz", "4096"},
      {"evict", "gpu0", "0x1000", "1.5KiB"},
      {"evict", "gpu0", "0x2000000", "0x1000", "4096"},
      {"--control-socket"},
      {"--control-socket", "", "status"},
  };
  for (const auto& args : cases) {
    std::vector<std::string> full = {"--control-socket", socket_};
    full.insert(full.end(), args.begin(), args.end());
    ProcessResult r = Run(full);
    std::string what = ::testing::PrintToString(args);
    EXPECT_EQ(r.exit_code, 2) << what;
    EXPECT_THAT(r.err, StartsWith("iopfctl: ")) << what;
    EXPECT_THAT(r.err, HasSubstr("\nusage: iopfctl ")) << what;
    EXPECT_THAT(r.out, IsEmpty()) << what;
  }
}

TEST_F(IopfctlTest, HelpAndVersionExit0) {
  ProcessResult help = Run({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, StartsWith("usage: iopfctl "));
  EXPECT_THAT(help.err, IsEmpty());
  ProcessResult version = Run({"--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_THAT(version.out, testing::MatchesRegex("iopfctl [0-9]+\\.[0-9]+\\.[0-9]+\n"));
}

TEST_F(IopfctlTest, ErrorReplyExits1) {
  auto server =
      Serve({Json{{"error", "io.iopfd.NoSuchDevice"}, {"parameters", {{"device", "gpu9"}}}}});
  ProcessResult r = Run({"--control-socket", socket_, "drain", "gpu9"});
  server->Join();
  EXPECT_EQ(call_, R"({"method":"io.iopfd.Drain","parameters":{"device":"gpu9"}})");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "iopfctl: Drain: NoSuchDevice: device=gpu9\n");
  EXPECT_THAT(r.out, IsEmpty());
}

// A reset answered "resetting" (it runs on the daemon's worker): iopfctl follows the device
// with ListDevices until it settles, and prints where it ended.
TEST_F(IopfctlTest, ResetWaitsUntilTheDeviceSettles) {
  std::vector<std::string> calls;
  FakeServer server(socket_, [&calls](int fd) {
    calls.push_back(ReadMessage(fd));
    WriteAll(fd, Frame(Json{{"parameters", {{"state", "resetting"}, {"epoch", 4}}}}));
    const char* states[] = {"resetting", "flushing", "running"};
    for (const char* state : states) {
      calls.push_back(ReadMessage(fd));
      Json other = {{"name", "nic0"}, {"state", "resetting"}, {"epoch", 9}};
      Json mine = {{"name", "gpu0"}, {"state", state}, {"epoch", state == states[2] ? 5 : 4}};
      WriteAll(fd, Frame(Json{{"parameters", {{"devices", {other, mine}}}}}));
    }
  });
  ProcessResult r = Run({"--control-socket", socket_, "reset", "gpu0"});
  server.Join();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[0], R"({"method":"io.iopfd.Reset","parameters":{"device":"gpu0"}})");
  EXPECT_EQ(calls[3], R"({"method":"io.iopfd.ListDevices","parameters":{}})");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "gpu0: running (epoch 5)\n");
}

TEST_F(IopfctlTest, AResetThatEndsQuarantinedExits1) {
  FakeServer server(socket_, [](int fd) {
    ReadMessage(fd);
    WriteAll(fd, Frame(Json{{"parameters", {{"state", "resetting"}, {"epoch", 0}}}}));
    ReadMessage(fd);
    Json mine = {{"name", "gpu0"}, {"state", "quarantined"}, {"epoch", 0}};
    WriteAll(fd, Frame(Json{{"parameters", {{"devices", {mine}}}}}));
  });
  ProcessResult r = Run({"--control-socket", socket_, "reset", "gpu0"});
  server.Join();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("gpu0 was quarantined while it finished"));
  EXPECT_THAT(r.out, IsEmpty());
}

TEST_F(IopfctlTest, StatusExits0) {
  auto server = Serve({Json{{"parameters",
                             {{"version", "0.1.0"},
                              {"uptime_usec", 3723000000},
                              {"devices_configured", 2},
                              {"devices_running", 2},
                              {"health", "ok"}}}}});
  ProcessResult r = Run({"status", "--control-socket=" + socket_});
  server->Join();
  EXPECT_EQ(call_, R"({"method":"io.iopfd.GetStatus","parameters":{}})");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "version  0.1.0\n"
            "uptime   1h 2m 3s\n"
            "devices  2 configured, 2 running\n"
            "health   ok\n");
  EXPECT_THAT(r.err, IsEmpty());
}

TEST_F(IopfctlTest, JsonPrintsReplyParameters) {
  auto server = Serve({Json{{"parameters", {{"health", "ok"}, {"devices_running", 1}}}}});
  ProcessResult r = Run({"--control-socket", socket_, "--json", "status"});
  server->Join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "{\n"
            "  \"devices_running\": 1,\n"
            "  \"health\": \"ok\"\n"
            "}\n");
}

TEST_F(IopfctlTest, StatsPrometheusPrintsText) {
  std::string text = "# TYPE iopfd_records_total counter\niopfd_records_total{device=\"gpu0\"} 5";
  auto server = Serve({Json{{"parameters", {{"devices", Json::array()}, {"text", text}}}}});
  ProcessResult r = Run({"--control-socket", socket_, "stats", "gpu0", "--prometheus"});
  server->Join();
  EXPECT_EQ(Json::parse(call_), Json::parse(R"({"method":"io.iopfd.GetStats",
      "parameters":{"device":"gpu0","format":"prometheus"}})"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, text + "\n");
}

TEST_F(IopfctlTest, PrometheusWithoutTextExits1) {
  auto server = Serve({Json{{"parameters", {{"devices", Json::array()}}}}});
  ProcessResult r = Run({"--control-socket", socket_, "stats", "--prometheus"});
  server->Join();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no Prometheus text"));
}

TEST_F(IopfctlTest, MonitorPrintsEventsUntilTheStreamEnds) {
  auto server = Serve({
      Json{{"continues", true},
           {"parameters",
            {{"event", "state"}, {"device", "gpu0"}, {"detail", "running -> failed"}}}},
      Json{{"continues", true}, {"parameters", {{"event", "reload"}}}},
      Json{{"parameters", {{"event", "shutdown"}}}},
  });
  ProcessResult r = Run({"--control-socket", socket_, "monitor"});
  server->Join();
  EXPECT_EQ(call_, R"({"method":"io.iopfd.Monitor","more":true,"parameters":{}})");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "state gpu0: running -> failed\nreload\nshutdown\n");
}

TEST_F(IopfctlTest, MonitorEndsCleanlyOnCtrlC) {
  std::string after_event;
  FakeServer server(socket_, [&](int fd) {
    ReadMessage(fd);
    WriteAll(fd, Frame({{"continues", true}, {"parameters", {{"event", "reload"}}}}));
    // The stream stays open: only the client can end it.
    after_event = ReadMessage(fd);
  });
  ProcessResult r = RunProcess({IOPFCTL_PATH, "--control-socket", socket_, "monitor"}, dir_.path(),
                               [](pid_t pid, const std::string& out) {
                                 // Interrupting before the event is printed would not show the line
                                 // was flushed.
                                 auto deadline =
                                     std::chrono::steady_clock::now() + std::chrono::seconds(20);
                                 while (std::filesystem::file_size(out) == 0 &&
                                        std::chrono::steady_clock::now() < deadline) {
                                   std::this_thread::sleep_for(std::chrono::milliseconds(5));
                                 }
                                 ::kill(pid, SIGINT);
                               });
  server.Join();
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "reload\n");
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(after_event, "<eof>");
}

TEST_F(IopfctlTest, MonitorErrorMidStreamExits1) {
  auto server = Serve({
      Json{{"continues", true}, {"parameters", {{"event", "reload"}}}},
      Json{{"error", "io.iopfd.PermissionDenied"}, {"parameters", {{"method", "Monitor"}}}},
  });
  ProcessResult r = Run({"--control-socket", socket_, "monitor"});
  server->Join();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "reload\n");
  EXPECT_EQ(r.err, "iopfctl: Monitor: PermissionDenied: method=Monitor\n");
}

TEST_F(IopfctlTest, MonitorClosedMidStreamExits3) {
  auto server = Serve({Json{{"continues", true}, {"parameters", {{"event", "reload"}}}}});
  ProcessResult r = Run({"--control-socket", socket_, "monitor"});
  server->Join();
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "reload\n");
}

TEST_F(IopfctlTest, ServerClosingWithoutReplyExits3) {
  auto server = Serve({});
  ProcessResult r = Run({"--control-socket", socket_, "devices"});
  server->Join();
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.err, "iopfctl: ListDevices: " + socket_ +
                       ": connection closed by the server without a reply\n");
}

TEST_F(IopfctlTest, MalformedReplyExits1) {
  auto server = std::make_unique<FakeServer>(socket_, [](int fd) {
    ReadMessage(fd);
    WriteAll(fd, std::string("[]\0", 3));
  });
  ProcessResult r = Run({"--control-socket", socket_, "devices"});
  server->Join();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("malformed reply"));
}

TEST_F(IopfctlTest, CommandsSendTheirParameters) {
  struct Case {
    std::vector<std::string> args;
    std::string call;
  };
  const Case cases[] = {
      {{"stats"}, R"({"method":"io.iopfd.GetStats","parameters":{}})"},
      {{"reset", "gpu0"}, R"({"method":"io.iopfd.Reset","parameters":{"device":"gpu0"}})"},
      {{"halt", "gpu0"}, R"({"method":"io.iopfd.Halt","parameters":{"device":"gpu0"}})"},
      {{"resume", "gpu0"}, R"({"method":"io.iopfd.Resume","parameters":{"device":"gpu0"}})"},
      {{"reload"}, R"({"method":"io.iopfd.Reload","parameters":{}})"},
      {{"detach", "gpu0"}, R"({"method":"io.iopfd.Detach","parameters":{"device":"gpu0"}})"},
      {{"log-level", "debug"},
       R"({"method":"io.iopfd.SetLogLevel","parameters":{"level":"debug"}})"},
      {{"--", "drain", "-odd-name"},
       R"({"method":"io.iopfd.Drain","parameters":{"device":"-odd-name"}})"},
      {{"budget", "gpu0", "512MiB"},
       R"({"method":"io.iopfd.SetBudget","parameters":{"device":"gpu0","max_resident":536870912}})"},
      {{"budget", "gpu0", "0x5", "unbounded"},
       R"({"method":"io.iopfd.SetBudget","parameters":{"device":"gpu0","max_resident":null,"pasid":5}})"},
      {{"evict", "gpu0", "0x100000", "64KiB"},
       R"({"method":"io.iopfd.Evict","parameters":{"device":"gpu0","iova":1048576,"length":65536}})"},
      {{"evict", "gpu0", "7", "4096", "8192"},
       R"({"method":"io.iopfd.Evict","parameters":{"device":"gpu0","iova":4096,"length":8192,"pasid":7}})"},
  };
  for (const Case& c : cases) {
    std::string what = ::testing::PrintToString(c.args);
    ::unlink(socket_.c_str());
    auto server = Serve({Json{{"parameters", Json::object()}}});
    std::vector<std::string> args = {"--control-socket", socket_};
    args.insert(args.end(), c.args.begin(), c.args.end());
    ProcessResult r = Run(args);
    server->Join();
    EXPECT_EQ(call_, c.call) << what;
    EXPECT_EQ(r.exit_code, 0) << what << r.err;
  }
}

TEST_F(IopfctlTest, DrainCommandsSendDeviceAndPasidAndPrintTheState) {
  auto server = Serve({Json{{"parameters", {{"state", "halting"}, {"epoch", 3}}}}});
  ProcessResult drain = Run({"--control-socket", socket_, "drain", "gpu0", "0x1f"});
  server->Join();
  EXPECT_EQ(drain.exit_code, 0) << drain.err;
  EXPECT_EQ(Json::parse(call_)["method"], "io.iopfd.Drain");
  EXPECT_EQ(Json::parse(call_)["parameters"], (Json{{"device", "gpu0"}, {"pasid", 31}}));
  EXPECT_EQ(drain.out,
            "gpu0: halting (epoch 3)\nwaiting for the owner: stop the device's DMA, then run "
            "`iopfctl halt gpu0`\n");
  ::unlink(socket_.c_str());
  server = Serve({Json{{"parameters", {{"state", "running"}, {"epoch", 4}}}}});
  ProcessResult reset = Run({"--control-socket", socket_, "reset", "gpu0"});
  server->Join();
  EXPECT_EQ(reset.exit_code, 0) << reset.err;
  EXPECT_EQ(Json::parse(call_)["method"], "io.iopfd.Reset");
  EXPECT_EQ(Json::parse(call_)["parameters"], (Json{{"device", "gpu0"}}));
  EXPECT_EQ(reset.out, "gpu0: running (epoch 4)\n");
  ::unlink(socket_.c_str());
  server = Serve({Json{{"error", "io.iopfd.InvalidState"},
                       {"parameters", {{"device", "gpu0"}, {"state", "halted"}}}}});
  ProcessResult resume = Run({"--control-socket", socket_, "drain", "gpu0"});
  server->Join();
  EXPECT_EQ(resume.exit_code, 1);
  EXPECT_EQ(resume.err, "iopfctl: Drain: InvalidState: device=gpu0 state=halted\n");
}

TEST_F(IopfctlTest, ActionCommandsAreQuietReloadIsNot) {
  auto server = Serve({Json{{"parameters", Json::object()}}});
  ProcessResult quiet = Run({"--control-socket", socket_, "log-level", "debug"});
  server->Join();
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_THAT(quiet.out, IsEmpty());
  ::unlink(socket_.c_str());
  server = Serve({Json{
      {"parameters", {{"added", {"gpu1"}}, {"removed", Json::array()}, {"kept", {"gpu0"}}}}}});
  ProcessResult reload = Run({"--control-socket", socket_, "reload"});
  server->Join();
  EXPECT_EQ(reload.exit_code, 0);
  EXPECT_EQ(reload.out, "added      gpu1\nremoved    -\nrestarted  -\nkept       gpu0\n");
}

class CompletionTest : public IopfctlTest {
 protected:
  // Returns COMPREPLY, one word per line, after completing the last of words. `prog` is the
  // command being completed, which the completion runs to list devices.
  ProcessResult Complete(std::vector<std::string> words, const std::string& prog = IOPFCTL_PATH) {
    std::vector<std::string> args = {
        "/bin/bash",
        "--norc",
        "--noprofile",
        "-c",
        R"(source "$1" && shift && COMP_WORDS=("$@") && COMP_CWORD=$(($# - 1)) && _iopfctl;
           for w in "${COMPREPLY[@]}"; do echo "$w"; done)",
        "bash",
        IOPFCTL_COMPLETION,
        prog};
    args.insert(args.end(), words.begin(), words.end());
    return RunProcess(args, dir_.path());
  }
};

TEST_F(CompletionTest, Commands) {
  EXPECT_EQ(Complete({""}).out,
            "status\ndevices\nstats\ntop\ndrain\nreset\nhalt\nresume\nreload\ndetach\nmonitor\n"
            "log-level\nbudget\nevict\n");
  EXPECT_EQ(Complete({"re"}).out, "reset\nresume\nreload\n");
  EXPECT_EQ(Complete({"--json", "dev"}).out, "devices\n");
}

TEST_F(CompletionTest, Options) {
  EXPECT_EQ(Complete({"--"}).out, "--control-socket\n--json\n--help\n--version\n");
  EXPECT_EQ(Complete({"stats", "--p"}).out, "--prometheus\n");
  EXPECT_EQ(Complete({"devices", "--p"}).out, "");
  EXPECT_EQ(Complete({"top", "--"}).out,
            "--control-socket\n--json\n--help\n--version\n--once\n--interval\n");
  EXPECT_EQ(Complete({"log-level", ""}).out, "error\nwarning\ninfo\ndebug\n");
  EXPECT_EQ(Complete({"log-level", "debug", ""}).out, "");
}

TEST_F(CompletionTest, DeviceNamesFromTheDaemon) {
  Json devices = Json::parse(R"({"devices": [
    {"name": "gpu0", "attach": "adopt", "state": "running", "pasids": [1], "no_pasid_space": false,
     "counters": {"records": 1, "groups": 1, "success": 1, "invalid": 0, "outstanding": 0}},
    {"name": "nic1", "attach": "vfio", "state": "running", "pasids": [], "no_pasid_space": true,
     "counters": {"records": 0, "groups": 0, "success": 0, "invalid": 0, "outstanding": 0}}]})");
  auto server = Serve({Json{{"parameters", devices}}});
  ProcessResult r = Complete({"--control-socket", socket_, "drain", ""});
  server->Join();
  EXPECT_EQ(call_, R"({"method":"io.iopfd.ListDevices","parameters":{}})");
  EXPECT_EQ(r.out, "gpu0\nnic1\n");

  ::unlink(socket_.c_str());
  server = Serve({Json{{"parameters", devices}}});
  r = Complete({"--control-socket", "=", socket_, "stats", "n"});
  server->Join();
  EXPECT_EQ(r.out, "nic1\n");
}

TEST_F(CompletionTest, OnlyTheFirstArgumentIsADevice) {
  // A stand-in iopfctl that logs its arguments and lists two devices the way --json does.
  std::string fake = dir_.path() + "/fake-iopfctl", log = dir_.path() + "/args";
  {
    std::ofstream script(fake);
    script
        << "#!/bin/sh\n"
        << "echo \"$*\" >> '" << log << "'\n"
        << "cat <<'EOF'\n"
        << Json{{"devices", {{{"name", "gpu0"}, {"state", "running"}}, {{"name", "nic1"}}}}}.dump(2)
        << "\nEOF\n";
  }
  ASSERT_EQ(::chmod(fake.c_str(), 0700), 0);
  EXPECT_EQ(Complete({"resume", ""}, fake).out, "gpu0\nnic1\n");
  EXPECT_EQ(Complete({"--control-socket", "/x/y", "resume", "g"}, fake).out, "gpu0\n");
  EXPECT_EQ(Complete({"resume", "gpu0", ""}, fake).out, "");
  EXPECT_EQ(Complete({"status", ""}, fake).out, "");
  std::ifstream in(log);
  std::stringstream calls;
  calls << in.rdbuf();
  EXPECT_EQ(calls.str(), "--json devices\n--control-socket /x/y --json devices\n");
}

TEST_F(IopfctlTest, DetachPrintsTheFinalStatistics) {
  auto server = Serve({Json{
      {"parameters",
       {{"stats",
         {{"name", "gpu0"}, {"groups", 65}, {"responses_written", 65}, {"outstanding", 0}}}}}}});
  ProcessResult r = Run({"--control-socket", socket_, "detach", "gpu0"});
  server->Join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("gpu0\n"));
  EXPECT_THAT(r.out, HasSubstr("65"));
}

TEST_F(CompletionTest, NoDaemonCompletesNothingQuietly) {
  ProcessResult r = Complete({"--control-socket", socket_, "halt", ""});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
}

}  // namespace
}  // namespace iopfd
