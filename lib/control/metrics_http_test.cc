#include "iopfd/control/metrics_http.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/errors.h"
#include "varlink_test_util.h"

namespace iopfd {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(ParseHttpRequestTest, ReadsTheRequestLineOfWellFormedHeads) {
  absl::StatusOr<HttpRequest> r =
      ParseHttpRequest("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "GET");
  EXPECT_EQ(r->target, "/metrics");
  EXPECT_EQ(r->version, "HTTP/1.1");
  // Bare LF line ends, and empty lines before the request line (RFC 9112 2.2).
  r = ParseHttpRequest("\r\n\nHEAD /metrics?a=b HTTP/1.0\nHost: x\n\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "HEAD");
  EXPECT_EQ(r->target, "/metrics?a=b");
}

TEST(ParseHttpRequestTest, NamesWhatIsWrongWithABadHead) {
  auto error = [](std::string_view head) {
    absl::StatusOr<HttpRequest> r = ParseHttpRequest(head);
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_THAT(error(""), HasSubstr("no request line"));
  EXPECT_THAT(error("GET /metrics\r\n\r\n"), HasSubstr("METHOD TARGET VERSION"));
  EXPECT_THAT(error("GET  /metrics HTTP/1.1\r\n\r\n"), HasSubstr("METHOD TARGET VERSION"));
  EXPECT_THAT(error("G(T /metrics HTTP/1.1\r\n\r\n"), HasSubstr("method"));
  EXPECT_THAT(error("GET metrics HTTP/1.1\r\n\r\n"), HasSubstr("target"));
  EXPECT_THAT(error("GET /metrics HTTP/x.1\r\n\r\n"), HasSubstr("version"));
  EXPECT_THAT(error("GET /metrics HTTP/1.1\r\n folded\r\n\r\n"), HasSubstr("folded"));
  EXPECT_THAT(error("GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), HasSubstr("NAME: VALUE"));
  absl::StatusOr<HttpRequest> two = ParseHttpRequest("GET /metrics HTTP/2.0\r\n\r\n");
  EXPECT_EQ(two.status().code(), absl::StatusCode::kUnimplemented);
}

// A source that counts its calls.
struct CountingSource {
  int calls = 0;
  absl::StatusOr<std::string> result = std::string("iopfd_up 1\n");
  MetricsSource Get() {
    return [this]() -> absl::StatusOr<std::string> {
      ++calls;
      return result;
    };
  }
};

HttpRequest Req(std::string method, std::string target) {
  return {std::move(method), std::move(target), "HTTP/1.1"};
}

std::string Header(const HttpResponse& r, std::string_view name) {
  for (const auto& [n, v] : r.headers) {
    if (n == name) return v;
  }
  return "";
}

TEST(RespondToTest, GetOfMetricsAnswersTheSourcesTextAsPrometheusText) {
  CountingSource s;
  HttpResponse r = RespondTo(Req("GET", "/metrics"), s.Get());
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "iopfd_up 1\n");
  EXPECT_EQ(Header(r, "Content-Type"), kPrometheusContentType);
  EXPECT_EQ(r.Serialize(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: 11\r\nConnection: close\r\n\r\niopfd_up 1\n");
  // Prometheus may add parameters to the target.
  EXPECT_EQ(RespondTo(Req("GET", "/metrics?name[]=x"), s.Get()).status, 200);
  EXPECT_EQ(s.calls, 2);
}

TEST(RespondToTest, HeadSaysTheLengthWithoutTheBody) {
  CountingSource s;
  HttpResponse r = RespondTo(Req("HEAD", "/metrics"), s.Get());
  EXPECT_EQ(r.status, 200);
  std::string wire = r.Serialize();
  EXPECT_THAT(wire, HasSubstr("Content-Length: 11\r\n"));
  EXPECT_THAT(wire, ::testing::EndsWith("\r\n\r\n"));
}

TEST(RespondToTest, OtherMethodsAndPathsAreRefusedWithoutCallingTheSource) {
  CountingSource s;
  HttpResponse post = RespondTo(Req("POST", "/metrics"), s.Get());
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(Header(post, "Allow"), "GET, HEAD");
  EXPECT_EQ(RespondTo(Req("GET", "/"), s.Get()).status, 404);
  EXPECT_EQ(RespondTo(Req("GET", "/metricsx"), s.Get()).status, 404);
  EXPECT_EQ(RespondTo(Req("DELETE", "/etc/passwd"), s.Get()).status, 404);
  EXPECT_EQ(RespondTo(absl::InvalidArgumentError("bad"), s.Get()).status, 400);
  EXPECT_EQ(RespondTo(absl::UnimplementedError("HTTP/2.0"), s.Get()).status, 505);
  EXPECT_EQ(s.calls, 0);
}

TEST(RespondToTest, ASourceThatFailsIsAnswered503WithItsReason) {
  CountingSource s;
  s.result = absl::NotFoundError("/run/iopfd/io.iopfd: connect: ENOENT");
  HttpResponse r = RespondTo(Req("GET", "/metrics"), s.Get());
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, HasSubstr("connect: ENOENT"));
  EXPECT_THAT(r.Serialize(), StartsWith("HTTP/1.1 503 Service Unavailable\r\n"));
}

// A loopback client of a server driven by the test's own calls to Poll.
class ServerTest : public ::testing::Test {
 protected:
  void Start(MetricsServerOptions options = {}) {
    absl::StatusOr<UniqueFd> l = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(l.ok()) << l.status();
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    ASSERT_EQ(getsockname(l->get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port_ = ntohs(a.sin_port);
    std::vector<UniqueFd> ls;
    ls.push_back(*std::move(l));
    server_.emplace(std::move(ls), source_.Get(), options);
  }
  UniqueFd Connect() {
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0)
        << std::strerror(errno);
    return fd;
  }
  // Polls the server until the client's connection reaches EOF; returns what it read.
  std::string Drain(int fd, int max_polls = 200) {
    std::string got;
    for (int i = 0; i < max_polls; ++i) {
      EXPECT_TRUE(server_->Poll(20).ok());
      char buf[4096];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) got.append(buf, n);
      if (n == 0) return got;
    }
    ADD_FAILURE() << "no EOF after " << max_polls << " polls; read so far: " << got;
    return got;
  }
  std::string Exchange(std::string_view request) {
    UniqueFd c = Connect();
    EXPECT_TRUE(testutil::WriteAll(c.get(), request));
    return Drain(c.get());
  }

  CountingSource source_;
  std::optional<MetricsServer> server_;
  uint16_t port_ = 0;
};

TEST_F(ServerTest, AnswersOneRequestPerConnectionAndCloses) {
  Start();
  std::string got = Exchange("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
  EXPECT_THAT(got, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(got, ::testing::EndsWith("\r\n\r\niopfd_up 1\n"));
  EXPECT_THAT(Exchange("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
              StartsWith("HTTP/1.1 405 "));
  EXPECT_THAT(Exchange("GET /x HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(Exchange("\x16\x03\x01 binary\r\n\r\n"), StartsWith("HTTP/1.1 400 "));
  EXPECT_EQ(server_->counters().responses, 4u);
  EXPECT_EQ(source_.calls, 1);
  // Every connection is gone once the client closed its end.
  for (int i = 0; i < 10 && server_->connections() > 0; ++i) ASSERT_TRUE(server_->Poll(20).ok());
  EXPECT_EQ(server_->connections(), 0u);
}

TEST_F(ServerTest, ARequestArrivingInPiecesIsAnsweredOnceWhole) {
  Start();
  UniqueFd c = Connect();
  ASSERT_TRUE(testutil::WriteAll(c.get(), "GET /met"));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(server_->Poll(10).ok());
  EXPECT_EQ(source_.calls, 0);
  ASSERT_TRUE(testutil::WriteAll(c.get(), "rics HTTP/1.1\r\n\r"));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(server_->Poll(10).ok());
  EXPECT_EQ(source_.calls, 0);
  ASSERT_TRUE(testutil::WriteAll(c.get(), "\n"));
  EXPECT_THAT(Drain(c.get()), StartsWith("HTTP/1.1 200 OK"));
}

TEST_F(ServerTest, AStalledClientDoesNotHoldOthersAndIsClosedAtItsDeadline) {
  MetricsServerOptions o;
  o.connection_timeout_ms = 300;
  Start(o);
  UniqueFd stalled = Connect();
  ASSERT_TRUE(testutil::WriteAll(stalled.get(), "GET /metrics HTTP/1.1\r\n"));  // never ends
  EXPECT_THAT(Exchange("GET /metrics HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 200 OK"));
  // The stalled one gets no answer, only its connection closed once its time is up.
  EXPECT_EQ(Drain(stalled.get()), "");
  EXPECT_EQ(server_->counters().timed_out, 1u);
}

TEST_F(ServerTest, AtTheConnectionLimitNewClientsWaitTheirTurnInTheBacklog) {
  MetricsServerOptions o;
  o.max_connections = 1;
  o.connection_timeout_ms = 300;
  Start(o);
  UniqueFd stalled = Connect();
  ASSERT_TRUE(server_->Poll(20).ok());
  ASSERT_EQ(server_->connections(), 1u);
  UniqueFd waiting = Connect();
  ASSERT_TRUE(testutil::WriteAll(waiting.get(), "GET /metrics HTTP/1.1\r\n\r\n"));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(server_->Poll(10).ok());
  EXPECT_EQ(source_.calls, 0);  // not accepted yet: the slot is taken
  // Once the stalled one's deadline passes, the waiting one is served.
  EXPECT_THAT(Drain(waiting.get()), StartsWith("HTTP/1.1 200 OK"));
  EXPECT_EQ(server_->counters().accepted, 2u);
}

TEST_F(ServerTest, AnOversizedHeadIsAnswered431) {
  MetricsServerOptions o;
  o.max_request_bytes = 100;
  Start(o);
  std::string head = "GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(200, 'a') + "\r\n\r\n";
  EXPECT_THAT(Exchange(head), StartsWith("HTTP/1.1 431 "));
  EXPECT_EQ(source_.calls, 0);
}

TEST(ListenTcpTest, RefusesWhatIsNotANumericAddressAndPort) {
  for (const char* bad : {"localhost:80", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x", "[zz]:1",
                          ":80", "127.0.0.1:"}) {
    absl::StatusOr<UniqueFd> fd = ListenTcp(bad);
    EXPECT_EQ(fd.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(fd.status().message(), HasSubstr(bad));
  }
  // A port in use: the bind's errno, named.
  absl::StatusOr<UniqueFd> first = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(first.ok());
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(first->get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  absl::StatusOr<UniqueFd> second = ListenTcp("127.0.0.1:" + std::to_string(ntohs(a.sin_port)));
  EXPECT_EQ(ErrnoOf(second.status()), EADDRINUSE);
}

TEST(FetchPrometheusTextTest, ReturnsTheTextOfAGetStatsCall) {
  testutil::TempDir dir;
  testutil::FakeServer server(dir.path() + "/s", [](int fd) {
    nlohmann::json call = nlohmann::json::parse(testutil::ReadMessage(fd));
    EXPECT_EQ(call["method"], "io.iopfd.GetStats");
    EXPECT_EQ(call["parameters"]["format"], "prometheus");
    testutil::WriteAll(fd, testutil::Frame({{"parameters", {{"text", "iopfd_up 1\n"}}}}));
  });
  absl::StatusOr<std::string> text = FetchPrometheusText(server.path(), 5000);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "iopfd_up 1\n");
}

TEST(FetchPrometheusTextTest, NamesTheVarlinkErrorAndAReplyWithoutText) {
  testutil::TempDir dir;
  {
    testutil::FakeServer server(dir.path() + "/e", [](int fd) {
      testutil::ReadMessage(fd);
      testutil::WriteAll(fd, testutil::Frame({{"error", "io.iopfd.PermissionDenied"},
                                              {"parameters", nlohmann::json::object()}}));
    });
    absl::StatusOr<std::string> text = FetchPrometheusText(server.path(), 5000);
    EXPECT_THAT(text.status().message(), HasSubstr("io.iopfd.PermissionDenied"));
  }
  testutil::FakeServer server(dir.path() + "/n", [](int fd) {
    testutil::ReadMessage(fd);
    testutil::WriteAll(fd, testutil::Frame({{"parameters", {{"devices", 1}}}}));
  });
  EXPECT_EQ(FetchPrometheusText(server.path(), 5000).status().code(), absl::StatusCode::kDataLoss);
}

TEST(FetchPrometheusTextTest, ADaemonAwayOrSilentIsAnErrorWithinTheTimeout) {
  testutil::TempDir dir;
  EXPECT_EQ(ErrnoOf(FetchPrometheusText(dir.path() + "/none", 1000).status()), ENOENT);
  // A socket nobody accepts on: the connect completes into the backlog, the reply never comes.
  UniqueFd l(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string path = dir.path() + "/silent";
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(bind(l.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(l.get(), 4), 0);
  absl::StatusOr<std::string> text = FetchPrometheusText(path, 200);
  EXPECT_EQ(ErrnoOf(text.status()), EAGAIN) << text.status();
}

}  // namespace
}  // namespace iopfd
