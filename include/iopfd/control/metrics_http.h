// iopfd-metrics: Prometheus's scrape endpoint for iopfd, served over HTTP by a process of its own.
//
// Prometheus scrapes HTTP; iopfd speaks Varlink on a Unix socket and keeps no IP socket (its unit
// allows AF_UNIX and AF_NETLINK only). iopfd-metrics sits between them: each `GET /metrics` is
// answered with the text of one GetStats call (format "prometheus"), so the fault loop sees a
// scrape as one read-only control call, and a slow or hostile HTTP client costs iopfd nothing.
// It runs socket-activated (iopfd-metrics.socket passes it the listening socket) or on an
// address of its own (--listen).
#ifndef IOPFD_CONTROL_METRICS_HTTP_H_
#define IOPFD_CONTROL_METRICS_HTTP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"

namespace iopfd {

// The request line of an HTTP/1.x request.
struct HttpRequest {
  std::string method;   // "GET"
  std::string target;   // "/metrics?x=1": the origin-form target as sent
  std::string version;  // "HTTP/1.1"
};

// Parses a request head: the request line and the header lines up to the empty line, CRLF or
// bare LF line ends (RFC 9112 2.2 lets a server accept LF). The headers are checked for shape
// only; iopfd-metrics needs none of them.
// Returns the request line, or InvalidArgument naming what is wrong (no request line, a method
// that is not a token, a target not starting with '/', a version that is not HTTP/<d>.<d>, a
// header line without a colon or starting with white space); Unimplemented for a version
// other than HTTP/1.0 and HTTP/1.1 (answered 505).
absl::StatusOr<HttpRequest> ParseHttpRequest(std::string_view head);

// A response to send: the status line, a few headers and a body.
struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // HEAD: the headers say the body's length, the body is not sent.
  bool omit_body = false;

  // Returns the response as bytes on the wire: status line, the headers, Content-Length and
  // "Connection: close" (every connection carries one request), an empty line, the body.
  std::string Serialize() const;
};

// Where the metrics come from: returns the exposition text, or an error that is answered 503
// with the error's message as the body.
using MetricsSource = std::function<absl::StatusOr<std::string>()>;

// The media type of the Prometheus text exposition format, version 0.0.4.
inline constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Returns the response to a parsed request (or to a parse error: 400, or 505 for Unimplemented):
// GET or HEAD of /metrics (any query string) calls `source` and answers 200 with its text, or
// 503 when it fails; another method on /metrics is 405 with "Allow: GET, HEAD"; any other path
// is 404. `source` is called only for GET and HEAD of /metrics.
HttpResponse RespondTo(const absl::StatusOr<HttpRequest>& request, const MetricsSource& source);

// Limits of one server.
struct MetricsServerOptions {
  // Connections served at once; more wait in the listening socket's backlog.
  size_t max_connections = 16;
  // A request head longer than this is answered 431 and the connection closed.
  size_t max_request_bytes = 8192;
  // A connection must deliver its request and take its response within this time, else it is
  // closed: a client that connects and stalls holds a slot no longer.
  int connection_timeout_ms = 10000;
};

// What a server has done, for tests and its log.
struct MetricsServerCounters {
  uint64_t accepted = 0;
  uint64_t responses = 0;       // responses written whole
  uint64_t timed_out = 0;       // connections closed at their deadline
  uint64_t scrapes_failed = 0;  // 503s: the source failed
};

// Serves HTTP on listening stream sockets (TCP or Unix), one request per connection, from a
// single thread with poll(): connections are non-blocking and each has a deadline, so no
// client can hold the server; the source is called synchronously, between polls.
class MetricsServer {
 public:
  // Takes the listening sockets (made non-blocking here) and the source.
  MetricsServer(std::vector<UniqueFd> listeners, MetricsSource source,
                MetricsServerOptions options = {});

  // Waits up to timeout_ms for something to do, then does all of it: accepts, reads requests,
  // answers complete ones, writes, closes what is done or past its deadline. EINTR returns OK
  // at once (the caller checks its stop flag).
  // Returns OK, or an ErrnoStatus when poll itself fails. A failed accept (EMFILE, ...) or a
  // connection's read or write error closes at most that connection and is not returned.
  absl::Status Poll(int timeout_ms);

  // Serves a connection accepted elsewhere (one end of a socketpair in the fuzz target), as if
  // accepted now: made non-blocking, given its deadline, answered by later Polls. Beyond
  // max_connections it is closed at once. Returns false when it was closed.
  bool AddConnection(UniqueFd fd);

  // Returns how many connections are open.
  size_t connections() const { return conns_.size(); }
  // Returns what the server has done so far.
  const MetricsServerCounters& counters() const { return counters_; }

 private:
  struct Conn {
    UniqueFd fd;
    std::string in;   // the request head as read so far
    std::string out;  // the response, once there is one
    size_t written = 0;
    uint64_t deadline_ns = 0;
    bool responded = false;
    bool closing = false;  // written whole and shut down for writing: reading until EOF
  };

  void Accept(int listener, uint64_t now_ns);
  // Returns false when the connection is finished (closed or to be closed).
  bool OnReadable(Conn& c);
  bool OnWritable(Conn& c);
  void Answer(Conn& c);

  std::vector<UniqueFd> listeners_;
  MetricsSource source_;
  MetricsServerOptions options_;
  std::vector<Conn> conns_;
  MetricsServerCounters counters_;
};

// Fetches the Prometheus text from iopfd: one GetStats call (format "prometheus") on the
// control socket at socket_path, with connect, send and receive each bounded by timeout_ms.
// Returns the text; errors: the connect's ErrnoStatus (ENOENT: iopfd is not running there,
// EACCES, EAGAIN on a timeout), Unavailable or DeadlineExceeded when the reply does not come,
// Internal naming the Varlink error when iopfd answers with one, DataLoss when the reply
// carries no text.
absl::StatusOr<std::string> FetchPrometheusText(const std::string& socket_path, int timeout_ms);

// Opens a listening TCP socket on "ADDRESS:PORT" ("127.0.0.1:10960", "[::1]:10960"; port 0 picks
// a free one). Returns the socket, InvalidArgument for text that is not a numeric address and
// port, or the ErrnoStatus of socket/bind/listen (EADDRINUSE, EACCES, ...).
absl::StatusOr<UniqueFd> ListenTcp(std::string_view address);

}  // namespace iopfd

#endif  // IOPFD_CONTROL_METRICS_HTTP_H_
