// iopfd-metrics, the Prometheus scrape endpoint, against a real iopfd serving a stand-in device:
// started the way systemd starts it (the listening socket passed as LISTEN_FDS), scraped over
// TCP, and what it serves linted by Prometheus's own promtool (scripts/fetch-promtool.sh).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

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
using ::testing::StartsWith;

// One HTTP exchange with 127.0.0.1:port: sends `request`, returns all that comes back until the
// server closes (empty after 10 s without an answer).
std::string Http(uint16_t port, const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string got;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[65536];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return got;
}

std::string Body(const std::string& response) {
  size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// iopfd-metrics with a listening socket of the test's passed to it as systemd passes one.
class Metrics {
 public:
  Metrics(const std::string& control_socket, const std::string& log) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 16) != 0 ||
        getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ADD_FAILURE() << "listening socket: " << std::strerror(errno);
    }
    port_ = ntohs(a.sin_port);
    pid_ = fork();
    if (pid_ == 0) {
      if (dup2(l, 3) < 0) _exit(120);
      setenv("LISTEN_FDS", "1", 1);
      setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 2);
      execl(IOPFD_METRICS_PATH, "iopfd-metrics", "--control-socket", control_socket.c_str(),
            "--scrape-timeout", "2000", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(l);
  }
  ~Metrics() {
    if (pid_ > 0) Stop();
  }
  int Stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    const bool exited = iopfd_test::WaitPidFor(pid_, 10000, &status);
    pid_ = -1;
    return exited && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  uint16_t port() const { return port_; }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

class MetricsEndpointTest : public ::testing::Test {
 protected:
  MetricsEndpointTest() {
    IopfdOptions o;
    o.devices = {{"gpu0.toml", DeviceText("gpu0")}};
    o.fds = {{"gpu0.iommufd", q_.iommufd}, {"gpu0.fault", q_.theirs}};
    iopfd_ = std::make_unique<Iopfd>(o);
    metrics_ =
        std::make_unique<Metrics>(iopfd_->socket(), (iopfd_->dir() / "metrics.log").string());
  }
  FakeQueue q_;
  std::unique_ptr<Iopfd> iopfd_;
  std::unique_ptr<Metrics> metrics_;
};

TEST_F(MetricsEndpointTest, ServesWhatPromtoolAcceptsWithTheDevicesCounters) {
  for (int i = 0; i < 10; ++i) q_.Fault(0x100000 + static_cast<uint64_t>(i) * 0x1000);
  ASSERT_EQ(q_.Responses(10).size(), 10u);
  std::string response = Http(metrics_->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  std::string body = Body(response);
  EXPECT_THAT(body, HasSubstr("iopfd_page_requests_total{device=\"gpu0\"} 10\n"));
  EXPECT_THAT(body, HasSubstr("# TYPE iopfd_responses_total counter\n"));

  std::string promtool;
  ASSERT_EQ(Shell(IOPFD_SOURCE_DIR "/scripts/fetch-promtool.sh", &promtool), 0)
      << "promtool is needed to lint the exposition: " << promtool;
  while (!promtool.empty() && promtool.back() == '\n') promtool.pop_back();
  const std::string file = (iopfd_->dir() / "metrics.txt").string();
  std::ofstream(file) << body;
  std::string lint;
  // promtool exits non-zero and names each problem (naming, units, HELP/TYPE) on its output.
  EXPECT_EQ(Shell(promtool + " check metrics < " + file, &lint), 0) << lint;
  EXPECT_EQ(lint, "");
}

// The label names the samples of each family carry in a scrape: family -> labels. (Parsed by
// hand: std::regex trips GCC 12's maybe-uninitialized warning in the sanitized builds.)
std::map<std::string, std::set<std::string>> LabelsByFamily(const std::string& body) {
  std::map<std::string, std::set<std::string>> out;
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      out[line.substr(7, line.find(' ', 7) - 7)];
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    std::string name = line.substr(0, line.find_first_of("{ "));
    for (const std::string sfx : {"_sum", "_count"}) {
      if (!out.contains(name) && name.ends_with(sfx)) name.resize(name.size() - sfx.size());
    }
    const size_t brace = line.find('{');
    if (brace == std::string::npos) continue;
    const std::string labels = line.substr(brace + 1, line.find('}') - brace - 1);
    // name="value",name="value": the names are what precedes each =" after { or a comma.
    for (size_t at = 0; (at = labels.find("=\"", at)) != std::string::npos; ++at) {
      const size_t from = labels.find_last_of(',', at);
      out[name].insert(labels.substr(from == std::string::npos ? 0 : from + 1,
                                     at - (from == std::string::npos ? 0 : from + 1)));
    }
  }
  return out;
}

// The iopfd_* names an expression mentions.
std::vector<std::string> MetricNames(const std::string& e) {
  std::vector<std::string> out;
  for (size_t at = 0; (at = e.find("iopfd_", at)) != std::string::npos;) {
    size_t end = at;
    while (end < e.size() &&
           (std::islower(static_cast<unsigned char>(e[end])) != 0 || e[end] == '_')) {
      ++end;
    }
    out.push_back(e.substr(at, end - at));
    at = end;
  }
  return out;
}

// The labels of an expression's `by (a, b)` clause, if it has one.
std::vector<std::string> ByLabels(const std::string& e) {
  std::vector<std::string> out;
  const size_t by = e.find("by (");
  if (by == std::string::npos) return out;
  std::istringstream names(e.substr(by + 4, e.find(')', by) - by - 4));
  for (std::string l; std::getline(names, l, ',');) {
    l.erase(0, l.find_first_not_of(' '));
    out.push_back(l);
  }
  return out;
}

// Every query of contrib/grafana/iopfd-dashboard.json names families iopfd serves and groups by
// labels they carry: a renamed metric breaks this test, not an operator's dashboard.
TEST_F(MetricsEndpointTest, TheGrafanaDashboardAsksOnlyForWhatIsServed) {
  for (int i = 0; i < 4; ++i) q_.Fault(0x100000 + static_cast<uint64_t>(i) * 0x1000);
  ASSERT_EQ(q_.Responses(4).size(), 4u);
  const auto families =
      LabelsByFamily(Body(Http(metrics_->port(), "GET /metrics HTTP/1.1\r\n\r\n")));
  ASSERT_TRUE(families.contains("iopfd_page_requests_total"));
  std::ifstream f(IOPFD_SOURCE_DIR "/contrib/grafana/iopfd-dashboard.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json dash = nlohmann::json::parse(f);
  std::vector<std::string> exprs;
  for (const auto& panel : dash.at("panels")) {
    for (const auto& t : panel.at("targets")) exprs.push_back(t.at("expr").get<std::string>());
  }
  exprs.push_back(dash.at("templating").at("list").at(0).at("definition").get<std::string>());
  ASSERT_GE(exprs.size(), 10u);
  for (const std::string& e : exprs) {
    std::set<std::string> labels;
    for (std::string name : MetricNames(e)) {
      for (const std::string sfx : {"_sum", "_count"}) {
        if (!families.contains(name) && name.ends_with(sfx)) name.resize(name.size() - sfx.size());
      }
      ASSERT_TRUE(families.contains(name)) << name << " in " << e << " is not served";
      labels.insert(families.at(name).begin(), families.at(name).end());
    }
    for (const std::string& l : ByLabels(e)) {
      EXPECT_TRUE(labels.contains(l)) << "label " << l << " of " << e << " is not served";
    }
  }
}

TEST_F(MetricsEndpointTest, RefusesOtherMethodsAndPathsAndHeadHasNoBody) {
  EXPECT_THAT(Http(metrics_->port(), "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
              AllOf(StartsWith("HTTP/1.1 405 "), HasSubstr("Allow: GET, HEAD\r\n")));
  EXPECT_THAT(Http(metrics_->port(), "GET / HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(Http(metrics_->port(), "hello\r\n\r\n"), StartsWith("HTTP/1.1 400 "));
  std::string head = Http(metrics_->port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200 OK"));
  EXPECT_EQ(Body(head), "");
}

TEST_F(MetricsEndpointTest, AStalledClientNeitherHoldsScrapesNorFaults) {
  int stalled = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(metrics_->port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(stalled, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(send(stalled, "GET /metr", 9, MSG_NOSIGNAL), 9);
  EXPECT_THAT(Http(metrics_->port(), "GET /metrics HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 200 OK"));
  const uint32_t cookie = q_.Fault(0x100000);
  EXPECT_EQ(q_.Responses(1).count(cookie), 1u);
  close(stalled);
}

TEST_F(MetricsEndpointTest, WithIopfdGoneScrapesAre503AndTheEndpointStays) {
  ASSERT_EQ(iopfd_->Stop(), 0);
  std::string response = Http(metrics_->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_THAT(response, StartsWith("HTTP/1.1 503 Service Unavailable\r\n"));
  EXPECT_THAT(Body(response), HasSubstr(iopfd_->socket()));
  // Said once in its log, not per scrape.
  Http(metrics_->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(metrics_->Stop(), 0);
  std::ifstream f(iopfd_->dir() / "metrics.log");
  std::string log((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_THAT(log, HasSubstr("scrapes answered 503"));
}

TEST(MetricsStartTest, ARefusedStartSaysWhy) {
  std::string out;
  // No socket from systemd and no --listen.
  EXPECT_EQ(Shell(std::string("env -u LISTEN_FDS ") + IOPFD_METRICS_PATH, &out), 1);
  EXPECT_THAT(out, HasSubstr("no socket to serve"));
  EXPECT_EQ(Shell(std::string(IOPFD_METRICS_PATH) + " --listen localhost:1", &out), 1);
  EXPECT_THAT(out, HasSubstr("not a numeric IPv4 address"));
  EXPECT_EQ(Shell(std::string(IOPFD_METRICS_PATH) + " --scrape-timeout 0", &out), 2);
  // Accept=yes hands over a connection, not a listener.
  EXPECT_EQ(
      Shell(std::string("exec 3<>/dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec ") + IOPFD_METRICS_PATH,
            &out),
      1);
  EXPECT_THAT(out, HasSubstr("not a listening socket"));
}

}  // namespace
