#include "iopfd/control/metrics_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/control/varlink_client.h"
#include "nlohmann/json.hpp"

namespace iopfd {
namespace {

// How long a connection stays open after its response, waiting for the client's close.
constexpr uint64_t kLingerNs = 1000000000ull;

// RFC 9110 5.6.2: tchar.
bool IsTokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
         std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

HttpResponse TextResponse(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "text/plain; charset=utf-8");
  r.body = std::move(body);
  if (r.body.empty() || r.body.back() != '\n') r.body.push_back('\n');
  return r;
}

// Splits off the next line (CRLF or LF) of `rest`; returns false when none is left.
bool NextLine(std::string_view& rest, std::string_view& line) {
  if (rest.empty()) return false;
  size_t lf = rest.find('\n');
  line = rest.substr(0, lf);
  rest = lf == std::string_view::npos ? std::string_view() : rest.substr(lf + 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return true;
}

// The end of a request head in `in` (just past its empty line), or npos when it is not whole.
size_t HeadEnd(std::string_view in) {
  size_t crlf = in.find("\r\n\r\n");
  size_t lf = in.find("\n\n");
  size_t end = std::string_view::npos;
  if (crlf != std::string_view::npos) end = crlf + 4;
  if (lf != std::string_view::npos) end = std::min(end, lf + 2);
  return end;
}

absl::Status SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoStatus(errno, "", "fcntl(O_NONBLOCK)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HttpRequest> ParseHttpRequest(std::string_view head) {
  std::string_view rest = head;
  std::string_view line;
  // RFC 9112 2.2: empty lines before the request line are to be ignored.
  do {
    if (!NextLine(rest, line)) return absl::InvalidArgumentError("no request line");
  } while (line.empty());
  HttpRequest req;
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return absl::InvalidArgumentError("the request line is not METHOD TARGET VERSION");
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (method.empty() || !std::all_of(method.begin(), method.end(), IsTokenChar)) {
    return absl::InvalidArgumentError("the method is not a token");
  }
  if (target.empty() || target[0] != '/') {
    return absl::InvalidArgumentError("the target is not a path starting with '/'");
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" ||
      std::isdigit(static_cast<unsigned char>(version[5])) == 0 || version[6] != '.' ||
      std::isdigit(static_cast<unsigned char>(version[7])) == 0) {
    return absl::InvalidArgumentError("the version is not HTTP/<digit>.<digit>");
  }
  if (version != "HTTP/1.0" && version != "HTTP/1.1") {
    return absl::UnimplementedError(
        absl::StrCat(std::string(version), " is not served; use HTTP/1.1"));
  }
  while (NextLine(rest, line) && !line.empty()) {
    // RFC 9112 5.2: line folding is obsolete and a server may reject it; 5.1: a colon after a
    // non-empty name without white space before it.
    size_t colon = line.find(':');
    if (line[0] == ' ' || line[0] == '\t') {
      return absl::InvalidArgumentError("a header line is folded (starts with white space)");
    }
    if (colon == std::string_view::npos || colon == 0 ||
        !std::all_of(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(colon),
                     IsTokenChar)) {
      return absl::InvalidArgumentError(absl::StrCat("a header line is not NAME: VALUE (line ",
                                                     std::string(line.substr(0, 40)), ")"));
    }
  }
  req.method = std::string(method);
  req.target = std::string(target);
  req.version = std::string(version);
  return req;
}

std::string HttpResponse::Serialize() const {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", Reason(status), "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&out, name, ": ", value, "\r\n");
  absl::StrAppend(&out, "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  if (!omit_body) out += body;
  return out;
}

HttpResponse RespondTo(const absl::StatusOr<HttpRequest>& request, const MetricsSource& source) {
  if (!request.ok()) {
    const bool version = request.status().code() == absl::StatusCode::kUnimplemented;
    return TextResponse(version ? 505 : 400, std::string(request.status().message()));
  }
  std::string_view path = request->target;
  path = path.substr(0, path.find('?'));
  if (path != "/metrics") {
    return TextResponse(404, "iopfd-metrics serves /metrics only");
  }
  const bool head = request->method == "HEAD";
  if (request->method != "GET" && !head) {
    HttpResponse r = TextResponse(405, absl::StrCat(request->method, " /metrics: use GET"));
    r.headers.emplace_back("Allow", "GET, HEAD");
    return r;
  }
  absl::StatusOr<std::string> text = source();
  HttpResponse r;
  if (text.ok()) {
    r.headers.emplace_back("Content-Type", kPrometheusContentType);
    r.body = *std::move(text);
  } else {
    r = TextResponse(503, absl::StrCat("iopfd-metrics: ", text.status().message()));
  }
  r.omit_body = head;
  return r;
}

MetricsServer::MetricsServer(std::vector<UniqueFd> listeners, MetricsSource source,
                             MetricsServerOptions options)
    : listeners_(std::move(listeners)), source_(std::move(source)), options_(options) {
  // A listener left blocking would stall the loop when a connection it announced is gone by
  // the time accept runs (RST before accept).
  for (const UniqueFd& l : listeners_) (void)SetNonBlocking(l.get());
}

void MetricsServer::Accept(int listener, uint64_t now_ns) {
  while (conns_.size() < options_.max_connections) {
    int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    // EAGAIN: none left; ECONNABORTED and the like: that one is gone; EMFILE: the rest wait in
    // the backlog until a connection closes.
    if (fd < 0) return;
    ++counters_.accepted;
    Conn& c = conns_.emplace_back();
    c.fd = UniqueFd(fd);
    c.deadline_ns = now_ns + static_cast<uint64_t>(options_.connection_timeout_ms) * 1000000ull;
  }
}

bool MetricsServer::AddConnection(UniqueFd fd) {
  if (conns_.size() >= options_.max_connections || !SetNonBlocking(fd.get()).ok()) return false;
  ++counters_.accepted;
  Conn& c = conns_.emplace_back();
  c.fd = std::move(fd);
  c.deadline_ns =
      MonotonicNs() + static_cast<uint64_t>(options_.connection_timeout_ms) * 1000000ull;
  return true;
}

void MetricsServer::Answer(Conn& c) {
  size_t end = HeadEnd(c.in);
  HttpResponse r;
  if (end == std::string::npos || end > options_.max_request_bytes) {
    r = TextResponse(
        431, absl::StrCat("the request head exceeds ", options_.max_request_bytes, " bytes"));
  } else {
    r = RespondTo(ParseHttpRequest(std::string_view(c.in).substr(0, end)), source_);
  }
  if (r.status == 503) ++counters_.scrapes_failed;
  c.out = r.Serialize();
  c.responded = true;
  c.in.clear();
}

bool MetricsServer::OnReadable(Conn& c) {
  char buf[4096];
  while (true) {
    ssize_t n = recv(c.fd.get(), buf, sizeof(buf), 0);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    if (n == 0) {
      // The client is done sending. Before a request: nothing to answer. After the response:
      // the orderly end of the connection.
      return c.responded && !c.closing;
    }
    // A request's body, or bytes after the response: read and dropped (closing with unread
    // bytes would send a reset that can destroy the response in flight).
    if (c.responded) continue;
    c.in.append(buf, static_cast<size_t>(n));
    if (HeadEnd(c.in) != std::string::npos || c.in.size() > options_.max_request_bytes) {
      Answer(c);
      return OnWritable(c);
    }
  }
}

bool MetricsServer::OnWritable(Conn& c) {
  while (c.written < c.out.size()) {
    ssize_t n = send(c.fd.get(), c.out.data() + c.written, c.out.size() - c.written,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    c.written += static_cast<size_t>(n);
  }
  if (!c.closing) {
    ++counters_.responses;
    c.closing = true;
    shutdown(c.fd.get(), SHUT_WR);
    // The client has its answer: it gets a moment to close its end, not the whole deadline.
    c.deadline_ns = std::min(c.deadline_ns, MonotonicNs() + kLingerNs);
  }
  return true;
}

absl::Status MetricsServer::Poll(int timeout_ms) {
  std::vector<pollfd> fds;
  const bool room = conns_.size() < options_.max_connections;
  for (const UniqueFd& l : listeners_) fds.push_back({room ? l.get() : -1, POLLIN, 0});
  for (const Conn& c : conns_) {
    const bool writing = c.responded && c.written < c.out.size();
    fds.push_back({c.fd.get(), static_cast<short>(writing ? POLLOUT : POLLIN), 0});
  }
  // Wake in time for the nearest deadline.
  uint64_t now = MonotonicNs();
  for (const Conn& c : conns_) {
    const int64_t left_ms =
        c.deadline_ns > now ? static_cast<int64_t>((c.deadline_ns - now) / 1000000ull) + 1 : 0;
    if (timeout_ms < 0 || left_ms < timeout_ms) timeout_ms = static_cast<int>(left_ms);
  }
  int n = poll(fds.data(), fds.size(), timeout_ms);
  if (n < 0) return errno == EINTR ? absl::OkStatus() : ErrnoStatus(errno, "", "poll");
  now = MonotonicNs();
  // Connections first (their indexes in fds follow the listeners'), then new ones.
  std::vector<bool> keep(conns_.size(), true);
  for (size_t i = 0; i < conns_.size(); ++i) {
    const pollfd& p = fds[listeners_.size() + i];
    Conn& c = conns_[i];
    if (p.revents != 0) {
      const bool writing = c.responded && c.written < c.out.size();
      keep[i] = writing ? OnWritable(c) : OnReadable(c);
      if ((p.revents & (POLLERR | POLLNVAL)) != 0) keep[i] = false;
    }
    if (keep[i] && now >= c.deadline_ns) {
      keep[i] = false;
      if (!c.closing) ++counters_.timed_out;
    }
  }
  size_t k = 0;
  std::erase_if(conns_, [&](const Conn&) { return !keep[k++]; });
  for (size_t i = 0; i < listeners_.size(); ++i) {
    if ((fds[i].revents & POLLIN) != 0) Accept(listeners_[i].get(), now);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FetchPrometheusText(const std::string& socket_path, int timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return ErrnoStatus(ENAMETOOLONG, socket_path, "connect");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, socket_path, "socket");
  // A Unix stream connect waits for room in a full backlog for as long as the send timeout
  // says (unix_stream_connect uses sk_sndtimeo): bounded like the call itself.
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, socket_path, "connect");
  }
  VarlinkClient client(std::move(fd), socket_path);
  if (absl::Status st = client.Call("io.iopfd.GetStats", {{"format", "prometheus"}}); !st.ok()) {
    return st;
  }
  absl::StatusOr<VarlinkReply> reply = client.Next();
  if (!reply.ok()) return reply.status();
  if (!reply->error.empty()) {
    return absl::InternalError(
        absl::StrCat(socket_path, ": GetStats: ", reply->error, " ", reply->parameters.dump()));
  }
  auto text = reply->parameters.find("text");
  if (text == reply->parameters.end() || !text->is_string()) {
    return absl::DataLossError(absl::StrCat(socket_path, ": GetStats: the reply has no text"));
  }
  return text->get<std::string>();
}

absl::StatusOr<UniqueFd> ListenTcp(std::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", std::string(address), "' is not ADDRESS:PORT (127.0.0.1:10960, [::1]:10960)"));
  }
  std::string host(address.substr(0, colon));
  std::string_view port_text = address.substr(colon + 1);
  uint16_t port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", std::string(address), "': the port is not 0..65535"));
  }
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
    a6->sin6_family = family = AF_INET6;
    a6->sin6_port = htons(port);
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", std::string(address), "': not an IPv6 address"));
    }
    len = sizeof(sockaddr_in6);
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", std::string(address), "': not a numeric IPv4 address (IPv6: [::1]:PORT)"));
    }
    len = sizeof(sockaddr_in);
  }
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoStatus(errno, address, "socket");
  int one = 1;
  // A restarted server must not wait out TIME_WAIT connections of the one before it.
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    return ErrnoStatus(errno, address, "bind");
  }
  if (listen(fd.get(), 64) != 0) return ErrnoStatus(errno, address, "listen");
  return fd;
}

}  // namespace iopfd
