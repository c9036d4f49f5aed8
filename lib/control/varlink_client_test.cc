#include "iopfd/control/varlink_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <thread>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/errors.h"
#include "varlink_test_util.h"

namespace iopfd {
namespace {

using ::iopfd::testutil::FakeServer;
using ::iopfd::testutil::Frame;
using ::iopfd::testutil::LimitReadWait;
using ::iopfd::testutil::ReadMessage;
using ::iopfd::testutil::TempDir;
using ::iopfd::testutil::WriteAll;
using ::iopfd::testutil::WriteByteByByte;
using ::testing::HasSubstr;
using Json = nlohmann::json;

struct Pair {
  VarlinkClient client;
  UniqueFd server;
};

Pair MakePair() {
  int sv[2] = {-1, -1};
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0) << std::strerror(errno);
  LimitReadWait(sv[0]);
  return Pair{VarlinkClient(UniqueFd(sv[0]), "test-peer"), UniqueFd(sv[1])};
}

// A reply message of exactly `size` bytes (before its NUL) whose parameters hold one long string.
std::string ReplyOfSize(size_t size) {
  std::string head = R"({"parameters":{"s":")", tail = R"("}})";
  return head + std::string(size - head.size() - tail.size(), 'x') + tail;
}

TEST(VarlinkClientTest, ConnectToMissingPathNamesPathAndErrno) {
  TempDir dir;
  std::string path = dir.path() + "/absent";
  absl::StatusOr<VarlinkClient> client = VarlinkClient::Connect(path);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoOf(client.status()), ENOENT);
  EXPECT_THAT(std::string(client.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(client.status().message()), HasSubstr("ENOENT"));
}

TEST(VarlinkClientTest, ConnectWithoutListenerIsRefused) {
  TempDir dir;
  std::string path = dir.path() + "/stale";
  {
    // A socket file left behind by a daemon that died: bound, never listening.
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  absl::StatusOr<VarlinkClient> client = VarlinkClient::Connect(path);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(ErrnoOf(client.status()), ECONNREFUSED);
  EXPECT_THAT(std::string(client.status().message()), HasSubstr(path));
}

TEST(VarlinkClientTest, ConnectRejectsPathLongerThanSunPath) {
  absl::StatusOr<VarlinkClient> client = VarlinkClient::Connect("/tmp/" + std::string(200, 'a'));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(ErrnoOf(client.status()), ENAMETOOLONG);
}

TEST(VarlinkClientTest, RoundTripOverSocketPath) {
  TempDir dir;
  std::string call;
  FakeServer server(dir.path() + "/sock", [&](int fd) {
    call = ReadMessage(fd);
    WriteAll(fd, Frame({{"parameters", {{"version", "0.1.0"}}}}));
  });
  absl::StatusOr<VarlinkClient> client = VarlinkClient::Connect(server.path());
  ASSERT_TRUE(client.ok()) << client.status();
  LimitReadWait(client->fd());
  ASSERT_TRUE(client->Call("io.iopfd.GetStatus", nullptr).ok());
  absl::StatusOr<VarlinkReply> reply = client->Next();
  server.Join();
  EXPECT_EQ(call, R"({"method":"io.iopfd.GetStatus","parameters":{}})");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->parameters, Json({{"version", "0.1.0"}}));
  EXPECT_EQ(reply->error, "");
  EXPECT_FALSE(reply->continues);
}

TEST(VarlinkClientTest, CallCarriesParametersAndMore) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client.Call("io.iopfd.GetStats", {{"device", "gpu0"}}, false).ok());
  EXPECT_EQ(ReadMessage(p.server.get()),
            R"({"method":"io.iopfd.GetStats","parameters":{"device":"gpu0"}})");
  ASSERT_TRUE(p.client.Call("io.iopfd.Monitor", Json::object(), true).ok());
  EXPECT_EQ(ReadMessage(p.server.get()),
            R"({"method":"io.iopfd.Monitor","more":true,"parameters":{}})");
}

TEST(VarlinkClientTest, CallReplacesInvalidUtf8InsteadOfThrowing) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client.Call("io.iopfd.Drain", {{"device", "gpu\xff"}}).ok());
  EXPECT_EQ(ReadMessage(p.server.get()),
            "{\"method\":\"io.iopfd.Drain\",\"parameters\":{\"device\":\"gpu\xef\xbf\xbd\"}}");
}

TEST(VarlinkClientTest, CallRejectsNonObjectParameters) {
  Pair p = MakePair();
  absl::Status s = p.client.Call("io.iopfd.Drain", Json::array({1, 2}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(VarlinkClientTest, CallToClosedPeerIsEpipeNotSigpipe) {
  Pair p = MakePair();
  p.server.Reset();
  // Were SIGPIPE raised, the test binary would die here.
  absl::Status s = p.client.Call("io.iopfd.GetStatus", nullptr);
  EXPECT_EQ(ErrnoOf(s), EPIPE) << s;
}

TEST(VarlinkClientTest, ReplySplitByteByByte) {
  Pair p = MakePair();
  std::thread writer([&] {
    EXPECT_TRUE(WriteByteByByte(
        p.server.get(), Frame({{"parameters", {{"health", "ok"}, {"devices_running", 2}}}})));
  });
  absl::StatusOr<VarlinkReply> reply = p.client.Next();
  ::shutdown(p.client.fd(), SHUT_RDWR);  // frees the writer should the client have given up
  writer.join();
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->parameters, Json({{"health", "ok"}, {"devices_running", 2}}));
}

TEST(VarlinkClientTest, TwoRepliesInOneRead) {
  Pair p = MakePair();
  ASSERT_TRUE(WriteAll(p.server.get(),
                       Frame({{"parameters", {{"n", 1}}}}) + Frame({{"parameters", {{"n", 2}}}})));
  // Closing first proves the second reply comes from what was buffered, not from another read.
  p.server.Reset();
  absl::StatusOr<VarlinkReply> first = p.client.Next();
  absl::StatusOr<VarlinkReply> second = p.client.Next();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->parameters["n"], 1);
  EXPECT_EQ(second->parameters["n"], 2);
  absl::StatusOr<VarlinkReply> third = p.client.Next();
  EXPECT_EQ(third.status().code(), absl::StatusCode::kUnavailable);
}

TEST(VarlinkClientTest, ReplyEndingInTheReadThatStartsTheNext) {
  Pair p = MakePair();
  std::string a = Frame({{"parameters", {{"n", 1}}}}), b = Frame({{"parameters", {{"n", 2}}}});
  std::thread writer([&] {
    EXPECT_TRUE(WriteByteByByte(p.server.get(), a.substr(0, 5)));
    EXPECT_TRUE(WriteByteByByte(p.server.get(), a.substr(5) + b.substr(0, 7)));
    EXPECT_TRUE(WriteByteByByte(p.server.get(), b.substr(7)));
  });
  absl::StatusOr<VarlinkReply> first = p.client.Next();
  absl::StatusOr<VarlinkReply> second = p.client.Next();
  ::shutdown(p.client.fd(), SHUT_RDWR);
  writer.join();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->parameters["n"], 1);
  EXPECT_EQ(second->parameters["n"], 2);
}

TEST(VarlinkClientTest, ContinuesStream) {
  Pair p = MakePair();
  ASSERT_TRUE(p.client.Call("io.iopfd.Monitor", nullptr, true).ok());
  EXPECT_THAT(ReadMessage(p.server.get()), HasSubstr(R"("more":true)"));
  ASSERT_TRUE(WriteAll(p.server.get(),
                       Frame({{"continues", true}, {"parameters", {{"event", "state"}}}}) +
                           Frame({{"continues", true}, {"parameters", {{"event", "drain"}}}})));
  ASSERT_TRUE(WriteAll(p.server.get(), Frame({{"parameters", {{"event", "reload"}}}})));
  std::vector<std::pair<std::string, bool>> seen;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<VarlinkReply> r = p.client.Next();
    ASSERT_TRUE(r.ok()) << r.status();
    seen.emplace_back(r->parameters["event"].get<std::string>(), r->continues);
  }
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, bool>>{
                      {"state", true}, {"drain", true}, {"reload", false}}));
}

TEST(VarlinkClientTest, ErrorReply) {
  Pair p = MakePair();
  ASSERT_TRUE(WriteAll(p.server.get(), Frame({{"error", "io.iopfd.NoSuchDevice"},
                                              {"parameters", {{"device", "gpu9"}}}})));
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->error, "io.iopfd.NoSuchDevice");
  EXPECT_EQ(r->parameters, Json({{"device", "gpu9"}}));
  EXPECT_FALSE(r->continues);
}

TEST(VarlinkClientTest, ReplyWithoutParametersHasEmptyObject) {
  Pair p = MakePair();
  ASSERT_TRUE(WriteAll(p.server.get(), std::string("{}\0", 3)));
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->parameters.is_object());
  EXPECT_TRUE(r->parameters.empty());
}

TEST(VarlinkClientTest, ReplyOfExactlyTheLimitIsAccepted) {
  Pair p = MakePair();
  std::string message = ReplyOfSize(VarlinkClient::kMaxMessageBytes);
  std::thread writer([&] { EXPECT_TRUE(WriteAll(p.server.get(), message + '\0')); });
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  ::shutdown(p.client.fd(), SHUT_RDWR);
  writer.join();
  ASSERT_TRUE(r.ok()) << r.status();
  // The 16 MiB limit counts the whole message: 20 bytes of head and 3 of tail around the string.
  EXPECT_EQ(r->parameters["s"].get_ref<const std::string&>().size(),
            VarlinkClient::kMaxMessageBytes - 23);
}

TEST(VarlinkClientTest, ReplyOneByteOverTheLimitBreaksTheConnection) {
  Pair p = MakePair();
  std::string message = ReplyOfSize(VarlinkClient::kMaxMessageBytes + 1);
  std::thread writer([&] { WriteAll(p.server.get(), message + '\0'); });
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("larger than"));
  // Whatever follows cannot be framed reliably, so the client refuses to go on.
  EXPECT_EQ(p.client.Next().status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(p.client.Call("io.iopfd.GetStatus", nullptr).code(), absl::StatusCode::kDataLoss);
  // Unblocks the writer should the trailing bytes still be queued.
  ::shutdown(p.client.fd(), SHUT_RDWR);
  writer.join();
}

TEST(VarlinkClientTest, EndlessReplyWithoutNulIsCutOff) {
  Pair p = MakePair();
  std::thread writer([&] {
    // Stops once the client gives up and the test closes the socket.
    std::string junk(1 << 20, 'x');
    while (WriteAll(p.server.get(), junk)) {
    }
  });
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  ::shutdown(p.client.fd(), SHUT_RDWR);
  writer.join();
}

TEST(VarlinkClientTest, ServerClosingMidReply) {
  Pair p = MakePair();
  ASSERT_TRUE(WriteAll(p.server.get(), R"({"parameters":{"hea)"));
  p.server.Reset();
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("after 19 bytes of a reply"));
}

TEST(VarlinkClientTest, ServerClosingWithoutReply) {
  Pair p = MakePair();
  p.server.Reset();
  absl::StatusOr<VarlinkReply> r = p.client.Next();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("test-peer"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("without a reply"));
}

TEST(VarlinkClientTest, MalformedRepliesAreDataLossButFramingSurvives) {
  const char* bad[] = {
      "not json",
      "[1,2]",
      R"({"parameters":[1]})",
      R"({"error":42})",
      R"({"error":""})",
      R"({"parameters":{},"continues":"yes"})",
      "{\"parameters\":{\"s\":\"\xff\"}}",
  };
  for (const char* message : bad) {
    Pair p = MakePair();
    ASSERT_TRUE(WriteAll(p.server.get(),
                         std::string(message) + '\0' + Frame({{"parameters", {{"ok", true}}}})));
    absl::StatusOr<VarlinkReply> r = p.client.Next();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << message;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("malformed reply")) << message;
    absl::StatusOr<VarlinkReply> next = p.client.Next();
    ASSERT_TRUE(next.ok()) << message << ": " << next.status();
    EXPECT_EQ(next->parameters["ok"], true) << message;
  }
}

}  // namespace
}  // namespace iopfd
