// libiopfd-client against the real iopfd: every call a VMM makes, their errors, and the example
// VMM (examples/vmm-handover.c) run as a VMM would run it, with its descriptors inherited.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "fake_queue.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "iopfd-client.h"

extern char** environ;

namespace {

using iopfd_test::DeviceText;
using iopfd_test::ExpectEachOnce;
using iopfd_test::FakeQueue;
using iopfd_test::Iopfd;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A client that closes itself.
struct Client {
  iopfd_client* c = nullptr;
  explicit Client(const std::string& socket) {
    EXPECT_EQ(iopfd_client_connect(socket.c_str(), &c), IOPFD_OK) << iopfd_client_connect_error();
  }
  ~Client() { iopfd_client_close(c); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  std::string error_name() const { return iopfd_client_error_name(c); }
  std::string error() const { return iopfd_client_error(c); }
};

TEST(ClientConnectTest, SaysWhyItCannotConnect) {
  iopfd_client* c = reinterpret_cast<iopfd_client*>(1);
  EXPECT_EQ(iopfd_client_connect("/nonexistent/io.iopfd", &c), IOPFD_E_CONNECT);
  EXPECT_EQ(c, nullptr);
  EXPECT_THAT(iopfd_client_connect_error(), HasSubstr("/nonexistent/io.iopfd: connect:"));
  EXPECT_THAT(iopfd_client_connect_error(), HasSubstr("is iopfd running?"));
  EXPECT_EQ(iopfd_client_connect(std::string(200, 'x').c_str(), &c), IOPFD_E_INVALID);
  EXPECT_EQ(iopfd_client_connect(nullptr, nullptr), IOPFD_E_INVALID);
  EXPECT_STREQ(iopfd_client_result_name(IOPFD_E_DAEMON), "IOPFD_E_DAEMON");
  EXPECT_STREQ(iopfd_client_result_name(42), "unknown");
  iopfd_client_close(nullptr);
}

class ClientTest : public ::testing::Test {
 protected:
  ClientTest() : iopfd_(std::make_unique<Iopfd>()) {}
  std::unique_ptr<Iopfd> iopfd_;
};

TEST_F(ClientTest, AdoptWatchDrainAndDetachAsAVmmDoes) {
  Client cl(iopfd_->socket());
  iopfd_status status{};
  ASSERT_EQ(iopfd_client_get_status(cl.c, &status), IOPFD_OK) << cl.error();
  EXPECT_STREQ(status.version, "0.1.0");
  EXPECT_STREQ(status.health, "ok");
  EXPECT_EQ(status.devices_adopted, 0u);

  FakeQueue q;
  const std::string config = DeviceText("vm1");
  const iopfd_fd fds[] = {{"vm1.iommufd", q.iommufd}, {"vm1.fault", q.theirs}};
  char name[16];
  ASSERT_EQ(iopfd_client_adopt(cl.c, config.c_str(), fds, 2, name, sizeof(name)), IOPFD_OK)
      << cl.error();
  EXPECT_STREQ(name, "vm1");
  EXPECT_STREQ(iopfd_client_error(cl.c), "");
  for (int i = 0; i < 30; ++i) q.Fault(0x100000);
  ExpectEachOnce(q.Responses(30), 1, 30, "after Adopt");

  iopfd_device_info info{};
  ASSERT_EQ(iopfd_client_get_device(cl.c, "vm1", &info), IOPFD_OK) << cl.error();
  EXPECT_STREQ(info.origin, "adopted");
  EXPECT_STREQ(info.attach, "adopt");
  EXPECT_STREQ(info.state.state, "running");
  EXPECT_EQ(info.groups, 30u);
  EXPECT_EQ(info.invalid, 30u);  // the stand-in iommufd maps nothing
  ASSERT_EQ(iopfd_client_get_status(cl.c, &status), IOPFD_OK);
  EXPECT_EQ(status.devices_adopted, 1u);

  // Without the VFIO device fd iopfd cannot park the attachments: the VMM is told so.
  iopfd_device_state st{};
  EXPECT_EQ(iopfd_client_drain(cl.c, "vm1", 0, &st), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "io.iopfd.NotSupported");
  EXPECT_THAT(cl.error(), HasSubstr("adopt mode"));
  EXPECT_EQ(iopfd_client_reset(cl.c, "vm1", &st), IOPFD_E_DAEMON);
  EXPECT_EQ(iopfd_client_halt(cl.c, "vm1", &st), IOPFD_E_DAEMON);
  EXPECT_EQ(iopfd_client_resume(cl.c, "vm1", &st), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "io.iopfd.InvalidState");
  EXPECT_EQ(iopfd_client_drain(cl.c, "nope", 0, &st), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "io.iopfd.NoSuchDevice");
  ASSERT_EQ(iopfd_client_wait_settled(cl.c, "vm1", 1000, &st), IOPFD_OK);
  EXPECT_STREQ(st.state, "running");

  // The name is taken: Busy. The device goes on being served.
  FakeQueue q2;
  const iopfd_fd fds2[] = {{"vm1.iommufd", q2.iommufd}, {"vm1.fault", q2.theirs}};
  EXPECT_EQ(iopfd_client_adopt(cl.c, config.c_str(), fds2, 2, nullptr, 0), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "io.iopfd.Busy");

  for (int i = 0; i < 5; ++i) q.Fault(0x100000);
  ExpectEachOnce(q.Responses(5), 31, 5, "before Detach");
  uint64_t answered = 0, outstanding = 99;
  ASSERT_EQ(iopfd_client_detach(cl.c, "vm1", &answered, &outstanding), IOPFD_OK) << cl.error();
  EXPECT_EQ(answered, 35u);
  EXPECT_EQ(outstanding, 0u);
  q.Fault(0x100000);
  EXPECT_TRUE(q.Quiet(200)) << "iopfd still reads a detached device";
  EXPECT_EQ(iopfd_client_get_device(cl.c, "vm1", &info), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "io.iopfd.NoSuchDevice");
  EXPECT_EQ(iopfd_client_detach(cl.c, "vm1", nullptr, nullptr), IOPFD_E_DAEMON);
}

TEST_F(ClientTest, AdoptRefusesArgumentsThatDoNotAddUp) {
  Client cl(iopfd_->socket());
  FakeQueue q;
  const std::string config = DeviceText("vm2");
  const iopfd_fd one[] = {{"vm2.iommufd", q.iommufd}};
  EXPECT_EQ(iopfd_client_adopt(cl.c, config.c_str(), one, 1, nullptr, 0), IOPFD_E_DAEMON);
  EXPECT_FALSE(cl.error_name().empty());
  const iopfd_fd bad[] = {{"vm2.iommufd", -1}};
  EXPECT_EQ(iopfd_client_adopt(cl.c, config.c_str(), bad, 1, nullptr, 0), IOPFD_E_INVALID);
  EXPECT_THAT(cl.error(), HasSubstr("fds[0]"));
  EXPECT_EQ(iopfd_client_adopt(cl.c, nullptr, nullptr, 0, nullptr, 0), IOPFD_E_INVALID);
  EXPECT_EQ(iopfd_client_adopt(cl.c, "name = ", nullptr, 0, nullptr, 0), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "io.iopfd.InvalidConfig");
  // The connection is still good after every refusal.
  iopfd_status status{};
  EXPECT_EQ(iopfd_client_get_status(cl.c, &status), IOPFD_OK) << cl.error();
}

TEST_F(ClientTest, AnyMethodThroughTheRawCall) {
  Client cl(iopfd_->socket());
  char* reply = nullptr;
  ASSERT_EQ(iopfd_client_call(cl.c, "io.iopfd.GetStats", "{\"format\":\"prometheus\"}", &reply),
            IOPFD_OK)
      << cl.error();
  ASSERT_NE(reply, nullptr);
  nlohmann::json j = nlohmann::json::parse(reply);
  iopfd_client_free(reply);
  EXPECT_TRUE(j["text"].is_string());
  EXPECT_EQ(iopfd_client_call(cl.c, "io.iopfd.Nope", nullptr, &reply), IOPFD_E_DAEMON);
  EXPECT_EQ(reply, nullptr);
  EXPECT_EQ(cl.error_name(), "org.varlink.service.MethodNotFound");
  EXPECT_EQ(iopfd_client_call(cl.c, "io.iopfd.GetStats", "[1]", nullptr), IOPFD_E_INVALID);
  EXPECT_EQ(iopfd_client_call(cl.c, "io.iopfd.GetStats", "{\"bogus\":1}", nullptr), IOPFD_E_DAEMON);
  EXPECT_EQ(cl.error_name(), "org.varlink.service.InvalidParameter");
  EXPECT_THAT(cl.error(), HasSubstr("parameter=bogus"));
}

TEST_F(ClientTest, IopfdGoingAwayIsAnIoErrorNotASignal) {
  Client cl(iopfd_->socket());
  ASSERT_EQ(iopfd_->Stop(), 0);
  iopfd_status status{};
  // The first call may still be written into the closed socket's buffer; the reply never comes.
  EXPECT_EQ(iopfd_client_get_status(cl.c, &status), IOPFD_E_IO);
  EXPECT_THAT(cl.error(), HasSubstr(iopfd_->socket()));
  EXPECT_EQ(iopfd_client_get_status(cl.c, &status), IOPFD_E_IO);  // and no SIGPIPE
}

TEST_F(ClientTest, ControlNeedsTheAdminGroup) {
  // uid 65534 (nobody) in the read-only group ("daemon") may read, not adopt.
  const std::string socket = iopfd_->socket();
  const int rc = iopfd_test::AsUser(65534, 65534, {1}, [&socket]() {
    iopfd_client* c = nullptr;
    if (iopfd_client_connect(socket.c_str(), &c) != IOPFD_OK) return 10;
    iopfd_status status{};
    if (iopfd_client_get_status(c, &status) != IOPFD_OK) return 11;
    const int adopt = iopfd_client_adopt(c, DeviceText("x").c_str(), nullptr, 0, nullptr, 0);
    const bool denied = adopt == IOPFD_E_DAEMON &&
                        std::string(iopfd_client_error_name(c)) == "io.iopfd.PermissionDenied";
    iopfd_client_close(c);
    return denied ? 0 : 12;
  });
  EXPECT_EQ(rc, 0);
}

TEST_F(ClientTest, TheExampleVmmRunsTheWholeSequence) {
  FakeQueue q;
  for (int i = 0; i < 7; ++i) q.Fault(0x100000);  // queued before the hand-over
  const std::string config = (iopfd_->dir() / "vm3.toml").string();
  std::ofstream(config) << DeviceText("vm3");
  const std::string out = (iopfd_->dir() / "example.out").string();
  posix_spawn_file_actions_t a;
  posix_spawn_file_actions_init(&a);
  // The VMM's descriptors at numbers of its choosing (dup2 clears close-on-exec).
  posix_spawn_file_actions_adddup2(&a, q.iommufd, 10);
  posix_spawn_file_actions_adddup2(&a, q.theirs, 11);
  posix_spawn_file_actions_addopen(&a, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&a, 1, 2);
  std::vector<std::string> args = {
      VMM_HANDOVER_PATH, "--socket", iopfd_->socket(), "--config",        config, "--fd",
      "vm3.iommufd=10",  "--fd",     "vm3.fault=11",   "--expect-groups", "7",    "--drain"};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &a, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&a);
  int status = 0;
  ASSERT_TRUE(iopfd_test::WaitPidFor(pid, 30000, &status));
  std::ifstream f(out);
  std::stringstream text;
  text << f.rdbuf();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text.str();
  EXPECT_THAT(text.str(), StartsWith("iopfd 0.1.0, health ok"));
  EXPECT_THAT(text.str(), HasSubstr("adopted vm3\n"));
  EXPECT_THAT(text.str(), HasSubstr("vm3: running, epoch 0, 7 groups read"));
  EXPECT_THAT(text.str(), HasSubstr("drain: IOPFD_E_DAEMON io.iopfd.NotSupported"));
  EXPECT_THAT(text.str(), HasSubstr("detached vm3: 7 groups answered, 0 left unanswered"));
  ExpectEachOnce(q.Responses(7), 1, 7, "the example's device");
}

}  // namespace
