// The control socket of a real iopfd process: protocol conformance, limits, and who may call
// what. iopfd runs with no devices (it still serves the socket); the test talks raw Varlink.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "nlohmann/json.hpp"

namespace {

using iopfd_test::Client;
using iopfd_test::Iopfd;
using nlohmann::json;

// Debian's base system has these groups; they stand in for the control and admin groups.
constexpr gid_t kDaemonGid = 1;  // "daemon": the control group (read-only methods)
constexpr gid_t kBinGid = 2;     // "bin": the admin group (all methods)
constexpr uid_t kNobody = 65534;

class ControlSocketTest : public ::testing::Test {
 protected:
  Iopfd iopfd_;
};

TEST_F(ControlSocketTest, ServesStatusInfoAndDescriptionWithNoDevices) {
  Client c(iopfd_.socket());
  ASSERT_TRUE(c.connected());
  json info = c.CallOne({{"method", "org.varlink.service.GetInfo"}});
  EXPECT_EQ(info["parameters"]["product"], "iopfd");
  EXPECT_THAT(info["parameters"]["interfaces"], ::testing::Contains("io.iopfd"));
  json status = c.CallOne({{"method", "io.iopfd.GetStatus"}});
  EXPECT_EQ(status["parameters"]["devices_configured"], 0);
  EXPECT_EQ(status["parameters"]["health"], "ok");
  // The daemon listens to the kernel's uevents (the socket needs no privilege), and has seen
  // nothing malformed.
  EXPECT_EQ(status["parameters"]["uevents"]["listening"], true) << status.dump();
  EXPECT_EQ(status["parameters"]["uevents"]["malformed"], 0);
  EXPECT_EQ(status["parameters"]["uevents"]["foreign"], 0);
  json desc = c.CallOne({{"method", "org.varlink.service.GetInterfaceDescription"},
                         {"parameters", {{"interface", "io.iopfd"}}}});
  std::string text = desc["parameters"]["description"];
  EXPECT_THAT(text, ::testing::HasSubstr("interface io.iopfd"));
  EXPECT_THAT(text, ::testing::HasSubstr(
                        "method GetStats(device: ?string, format: ?string, buckets: ?bool)"));
  EXPECT_EQ(c.CallOne({{"method", "io.iopfd.ListDevices"}})["parameters"]["devices"],
            json::array());
  json stats = c.CallOne({{"method", "io.iopfd.GetStats"}, {"parameters", {{"device", "nope"}}}});
  EXPECT_EQ(stats["error"], "io.iopfd.NoSuchDevice");
  EXPECT_EQ(iopfd_.Stop(), 0);
}

TEST_F(ControlSocketTest, SplitPipelinedOnewayAndMore) {
  Client c(iopfd_.socket());
  // Three calls, one of them oneway, sent one byte at a time.
  std::string wire = json({{"method", "io.iopfd.GetStatus"}}).dump() + '\0' +
                     json({{"method", "io.iopfd.GetStatus"}, {"oneway", true}}).dump() + '\0' +
                     json({{"method", "io.iopfd.ListDevices"}, {"more", true}}).dump() + '\0';
  for (char ch : wire) ASSERT_TRUE(c.Send(std::string(1, ch)));
  auto a = c.Next();
  auto b = c.Next();
  ASSERT_TRUE(a && b);
  EXPECT_TRUE((*a)["parameters"].contains("version"));
  EXPECT_TRUE((*b)["parameters"].contains("devices"));  // the oneway call had no reply
  EXPECT_FALSE(b->contains("continues"));  // a method that does not stream replies once
  json mon = c.CallOne({{"method", "io.iopfd.Monitor"}});
  EXPECT_EQ(mon["error"], "org.varlink.service.ExpectedMore");
  json up = c.CallOne({{"method", "io.iopfd.GetStatus"}, {"upgrade", true}});
  EXPECT_EQ(up["error"], "org.varlink.service.InvalidParameter");
}

TEST_F(ControlSocketTest, BadInputGetsAnErrorOrAClosedConnectionNeverACrash) {
  {
    Client c(iopfd_.socket());
    c.Send(std::string("{\"method\": \"io.iopfd.GetStatus\", \"parameters\": [1]}") + '\0');
    EXPECT_EQ(c.Next().value()["error"], "org.varlink.service.InvalidParameter");
    EXPECT_EQ(c.Next(), std::nullopt);  // closed after a message that is not a call
  }
  {
    Client c(iopfd_.socket());
    c.Send(std::string("{\"method\":\"io.iopfd.GetStatus\",\"x\":\"\xc3\x28\"}") +
           '\0');  // bad UTF-8
    EXPECT_EQ(c.Next().value()["error"], "org.varlink.service.InvalidParameter");
  }
  {
    Client c(iopfd_.socket());
    c.Send(std::string(8192, ' '));  // over max_message_bytes (4096) without a NUL
    EXPECT_EQ(c.Next(), std::nullopt);
  }
  {
    Client c(iopfd_.socket());
    json r = c.CallOne({{"method", "io.iopfd.SetLogLevel"}, {"parameters", {{"level", 3}}}});
    EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
    EXPECT_EQ(r["parameters"]["parameter"], "level");
  }
  Client after(iopfd_.socket());
  EXPECT_EQ(after.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  EXPECT_EQ(iopfd_.Stop(), 0);
}

// Issue 12: one 400 KB message of 200,000 nested arrays killed iopfd (the stack ran out
// copying the parsed value). Any member of control.group can send it: it must get an error and
// a closed connection, and every other client must go on being served. 100,000 deep, which
// used to be answered, is refused the same way now (both are far beyond kMaxJsonDepth).
TEST(ControlHostileTest, DeepNestingIsRefusedAndTheDaemonLives) {
  iopfd_test::IopfdOptions opts;
  opts.global = "[control]\nmax_message_bytes = 1048576\n";
  Iopfd iopfd(opts);
  for (size_t depth : {size_t{200000}, size_t{100000}, size_t{65}}) {
    Client c(iopfd.socket());
    ASSERT_TRUE(c.connected());
    std::string msg = R"({"method":"io.iopfd.GetStatus","parameters":{"x":)" +
                      std::string(depth, '[') + std::string(depth, ']') + "}}";
    ASSERT_TRUE(c.Send(msg + '\0'));
    auto reply = c.Next();
    ASSERT_TRUE(reply.has_value()) << "no reply to " << depth << " levels: " << iopfd.Log();
    EXPECT_EQ((*reply)["error"], "org.varlink.service.InvalidParameter");
    EXPECT_THAT((*reply)["parameters"]["parameter"].get<std::string>(),
                ::testing::HasSubstr("nested deeper than 64 levels"));
    EXPECT_EQ(c.Next(), std::nullopt) << "closed after a message that is not a call";
  }
  Client after(iopfd.socket());
  EXPECT_EQ(after.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  EXPECT_EQ(iopfd.Stop(), 0);
}

TEST_F(ControlSocketTest, AClientThatNeverReadsIsDroppedAndOthersAreServed) {
  Client hog(iopfd_.socket());
  int small = 4096;
  setsockopt(hog.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  std::string call = json({{"method", "org.varlink.service.GetInterfaceDescription"},
                           {"parameters", {{"interface", "io.iopfd"}}}})
                         .dump() +
                     '\0';
  // Ask for far more than the server buffers for one client (8 MiB), never reading.
  bool closed = false;
  for (int i = 0; i < 20000 && !closed; ++i) {
    closed = !hog.Send(call);
    if (i % 100 == 0) {
      Client other(iopfd_.socket());
      ASSERT_EQ(other.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok")
          << "served while the hog floods, round " << i;
    }
  }
  EXPECT_TRUE(closed) << "the server should drop a client that never reads";
}

// Clients queued in the listen backlog are all accepted at once, not one per loop turn while
// busy clients keep every turn full. Counted, not timed: the busy clients' replies until the
// last queued client is answered. Accepting one connection per turn gives each busy client
// about one reply per queued client (hundreds here); accepting the backlog at once, a few.
TEST(ControlBacklogTest, QueuedClientsAreAcceptedTogetherWhileOthersKeepItBusy) {
  iopfd_test::IopfdOptions options;
  options.global = "[control]\nmax_connections = 256\nmax_connections_per_uid = 256\n";
  Iopfd iopfd(options);
  constexpr int kBusy = 6;
  constexpr int kQueued = 60;  // under the listen backlog (64): every connect completes at once
  std::atomic<bool> stop{false};
  std::atomic<int> busy_replies{0}, busy_ready{0}, busy_bad{0};
  std::vector<std::thread> busy;
  busy.reserve(kBusy);
  for (int i = 0; i < kBusy; ++i) {
    busy.emplace_back([&] {
      Client c(iopfd.socket());
      bool first = true;
      while (!stop.load()) {
        json r = c.CallOne({{"method", "org.varlink.service.GetInterfaceDescription"},
                            {"parameters", {{"interface", "io.iopfd"}}}});
        if (!r.contains("parameters")) {
          ++busy_bad;
          return;
        }
        if (first) ++busy_ready;
        first = false;
        ++busy_replies;
      }
    });
  }
  while (busy_ready.load() + busy_bad.load() < kBusy) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // The queued clients connect and call while iopfd is stopped: all of them wait in the
  // backlog when it continues, behind the busy clients' calls.
  iopfd.Signal(SIGSTOP);
  std::vector<std::unique_ptr<Client>> queued;
  for (int i = 0; i < kQueued; ++i) {
    queued.push_back(std::make_unique<Client>(iopfd.socket()));
    ASSERT_TRUE(queued.back()->connected()) << i;
    ASSERT_TRUE(queued.back()->Call({{"method", "io.iopfd.GetStatus"}})) << i;
  }
  const int before = busy_replies.load();
  iopfd.Signal(SIGCONT);
  for (int i = 0; i < kQueued; ++i) {
    auto r = queued[i]->Next();
    ASSERT_TRUE(r.has_value()) << "queued client " << i << " got no reply";
    EXPECT_EQ((*r)["parameters"]["health"], "ok") << r->dump();
  }
  const int during = busy_replies.load() - before;
  stop = true;
  for (auto& t : busy) t.join();
  EXPECT_EQ(busy_bad.load(), 0);
  EXPECT_LT(during, kQueued) << "busy clients got " << during << " replies before the last of "
                             << kQueued << " queued clients was answered";
  EXPECT_EQ(iopfd.Stop(), 0);
}

// Connections accepted in the turn the stop signal arrives (the accepts in flight deliver
// up to 16 at once) must not keep the daemon from exiting.
TEST(ControlBacklogTest, AStopWithConnectionsArrivingStillExits) {
  iopfd_test::IopfdOptions options;
  options.global = "[control]\nmax_connections = 256\nmax_connections_per_uid = 256\n";
  Iopfd iopfd(options);
  {
    Client first(iopfd.socket());  // iopfd is up and serving
    ASSERT_EQ(first.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  }
  iopfd.Signal(SIGSTOP);
  std::vector<std::unique_ptr<Client>> queued;
  for (int i = 0; i < 40; ++i) {
    queued.push_back(std::make_unique<Client>(iopfd.socket()));
    ASSERT_TRUE(queued.back()->Call({{"method", "io.iopfd.GetStatus"}}));
  }
  iopfd.Signal(SIGTERM);  // arrives with the connections, in the same turn
  iopfd.Signal(SIGCONT);
  EXPECT_EQ(iopfd.WaitExit(10000), 0) << iopfd.Log();
}

TEST_F(ControlSocketTest, ConnectionsAreCapped) {
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 6; ++i) {
    clients.push_back(std::make_unique<Client>(iopfd_.socket()));
    ASSERT_EQ(clients.back()->CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"],
              "ok");
  }
  Client seventh(iopfd_.socket());  // over max_connections_per_uid = 6: closed at accept
  seventh.Call({{"method", "io.iopfd.GetStatus"}});
  EXPECT_EQ(seventh.Next(), std::nullopt);
  clients.pop_back();  // a slot frees up once one leaves
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Client again(iopfd_.socket());
  EXPECT_EQ(again.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
}

TEST_F(ControlSocketTest, AMonitorThatNeverReadsIsDroppedNotBuffered) {
  Client lazy(iopfd_.socket());
  lazy.Call({{"method", "io.iopfd.Monitor"}, {"more", true}});
  ASSERT_EQ(lazy.Next().value()["parameters"]["event"], "subscribed");
  // ~100 bytes of event per call: 120,000 calls queue ~12 MB for a subscriber that reads none
  // of it, past the 8 MiB a client may leave unread. Sent oneway and pipelined, in chunks.
  Client admin(iopfd_.socket());
  std::string chunk;
  for (int i = 0; i < 1000; ++i) {
    chunk += json({{"method", "io.iopfd.SetLogLevel"},
                   {"oneway", true},
                   {"parameters", {{"level", i % 2 ? "warning" : "error"}}}})
                 .dump() +
             std::string(1, '\0');
  }
  for (int i = 0; i < 120; ++i) ASSERT_TRUE(admin.Send(chunk));
  // The admin connection is served in order: this reply comes after every one of those calls.
  EXPECT_EQ(admin.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  // The lazy subscriber was cut off: what it can still read ends in a closed connection well
  // before 120,000 events.
  size_t events = 0;
  while (lazy.Next().has_value()) ++events;
  EXPECT_LT(events, 100000u);
  EXPECT_GT(events, 0u);
  Client fresh(iopfd_.socket());
  EXPECT_EQ(fresh.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  EXPECT_EQ(iopfd_.Stop(), 0);
}

TEST_F(ControlSocketTest, MonitorStreamsEventsUntilTheDaemonStops) {
  Client monitor(iopfd_.socket());
  monitor.Call({{"method", "io.iopfd.Monitor"}, {"more", true}});
  auto first = monitor.Next();
  ASSERT_TRUE(first);
  EXPECT_EQ((*first)["parameters"]["event"], "subscribed");
  EXPECT_EQ((*first)["continues"], true);
  Client admin(iopfd_.socket());
  ASSERT_FALSE(
      admin.CallOne({{"method", "io.iopfd.SetLogLevel"}, {"parameters", {{"level", "warning"}}}})
          .contains("error"));
  auto event = monitor.Next();
  ASSERT_TRUE(event);
  EXPECT_EQ((*event)["parameters"]["event"], "log_level");
  EXPECT_THAT((*event)["parameters"]["detail"].get<std::string>(),
              ::testing::HasSubstr("warning (uid 0)"));
  EXPECT_EQ((*event)["continues"], true);
  EXPECT_EQ(iopfd_.Stop(), 0);
  auto last = monitor.Next();
  ASSERT_TRUE(last) << "the stream ends with a last reply";
  EXPECT_EQ((*last)["parameters"]["event"], "stopping");
  EXPECT_FALSE(last->contains("continues"));
}

// Socket activation: systemd binds the socket and passes it as fd 3 named "control"; iopfd
// serves that one and creates none of its own.
TEST(SocketActivationTest, ServesTheSocketSystemdPassed) {
  auto dir = std::filesystem::temp_directory_path() / ("iopfd-act-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir / "devices.d");
  std::ofstream(dir / "iopfd.toml") << "";
  const std::string passed = (dir / "passed.sock").string();
  const std::string own = (dir / "own.sock").string();
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", passed.c_str());
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(lfd, 8), 0);
  pid_t pid = fork();
  if (pid == 0) {
    // dup2 onto itself (lfd may already be 3) keeps close-on-exec: clear it explicitly.
    if (dup2(lfd, 3) < 0 || fcntl(3, F_SETFD, 0) < 0) _exit(120);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_FDNAMES", "control", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    int log = open((dir / "iopfd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(log, 2);
    execl(IOPFD_PATH, "iopfd", "--config", (dir / "iopfd.toml").c_str(), "--devices-dir",
          (dir / "devices.d").c_str(), "--control-socket", own.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(lfd);
  std::optional<json> status;
  for (int i = 0; i < 100 && !status; ++i) {
    Client c(passed);
    status = c.CallOne({{"method", "io.iopfd.GetStatus"}});
    if (status->is_null()) {
      status.reset();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (!status) {
    std::ifstream log(dir / "iopfd.log");
    std::cerr << log.rdbuf();
  }
  ASSERT_TRUE(status) << "no reply on the passed socket";
  EXPECT_EQ((*status)["parameters"]["health"], "ok");
  EXPECT_FALSE(std::filesystem::exists(own)) << "iopfd made its own socket as well";
  kill(pid, SIGTERM);
  int st = 0;
  EXPECT_TRUE(iopfd_test::WaitPidFor(pid, 60000, &st)) << "iopfd did not exit after SIGTERM";
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  std::ifstream log(dir / "iopfd.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, ::testing::HasSubstr("control socket from systemd"));
  EXPECT_THAT(text, ::testing::Not(::testing::HasSubstr("closing it")));
  EXPECT_TRUE(std::filesystem::exists(passed)) << "a passed socket is systemd's to remove";
  std::filesystem::remove_all(dir);
}

TEST_F(ControlSocketTest, AuthorizationByUidAndGroup) {
  ASSERT_EQ(geteuid(), 0u) << "this test forks children that drop to other users: run as root";
  // The socket is root:daemon 0660, so "nobody" without the group cannot even connect; with it,
  // or with the admin group (which the server checks, not the file mode), it can.
  struct Case {
    const char* who;
    gid_t gid;
    std::vector<gid_t> groups;
    int expect;  // bit 0: may connect, bit 1: may read, bit 2: may mutate
  };
  const Case cases[] = {
      {"nobody", kNobody, {}, 0},
      {"nobody+daemon (control)", kNobody, {kDaemonGid}, 1 | 2},
      {"daemon as primary group", kDaemonGid, {}, 1 | 2},
      {"nobody+daemon+bin (admin)", kNobody, {kDaemonGid, kBinGid}, 1 | 2 | 4},
  };
  const std::string path = iopfd_.socket();
  for (const Case& c : cases) {
    int got = iopfd_test::AsUser(kNobody, c.gid, c.groups, [&path] {
      Client cl(path);
      if (!cl.connected()) return 0;
      int bits = 1;
      if (!cl.CallOne({{"method", "io.iopfd.GetStatus"}}).contains("error")) bits |= 2;
      json m =
          cl.CallOne({{"method", "io.iopfd.SetLogLevel"}, {"parameters", {{"level", "info"}}}});
      if (!m.contains("error"))
        bits |= 4;
      else if (m["error"] != "io.iopfd.PermissionDenied")
        bits |= 64;
      return bits;
    });
    EXPECT_EQ(got, c.expect) << c.who;
  }
  Client root(path);
  EXPECT_FALSE(
      root.CallOne({{"method", "io.iopfd.SetLogLevel"}, {"parameters", {{"level", "info"}}}})
          .contains("error"));
}

}  // namespace
