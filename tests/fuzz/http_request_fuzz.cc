// What iopfd-metrics does with the bytes an HTTP client sends: the server's reading (requests in
// pieces, oversized heads, bytes after the head), the request parser, and the response.
//
// Input: byte 0 is the size of the pieces the client writes (1..256), the rest is what it
// writes before closing its sending side. Invariants: the server never crashes or hangs; it
// writes at most one response, a well-formed HTTP/1.1 response of a status it is meant to give,
// whose Content-Length is its body's length (HEAD: no body), then closes; when the input holds a
// whole request head within the limit, exactly one response is written; the metrics source is
// called only for a GET or HEAD of /metrics, and at most once.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <set>
#include <string>
#include <thread>

#include "fuzz_input.h"
#include "iopfd/control/metrics_http.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using iopfd::fuzz::Fail;
  if (size < 1) return 0;
  const size_t piece = (data[0] % 256) + 1;
  const std::string in(reinterpret_cast<const char*>(data + 1), size - 1);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) Fail("socketpair");
  int calls = 0;
  iopfd::MetricsServerOptions options;
  options.max_request_bytes = 512;  // small, so that the limit is reached often
  options.connection_timeout_ms = 2000;
  iopfd::MetricsServer server(
      {},
      [&calls]() -> absl::StatusOr<std::string> {
        ++calls;
        return std::string("iopfd_up 1\n");
      },
      options);
  if (!server.AddConnection(iopfd::UniqueFd(sv[0]))) Fail("AddConnection");
  // The client: writes in pieces (a write may fail once the server has answered and closed),
  // closes its sending side, and reads everything until the server closes.
  std::string out;
  std::thread client([fd = sv[1], &in, piece, &out] {
    for (size_t done = 0; done < in.size(); done += piece) {
      if (send(fd, in.data() + done, std::min(piece, in.size() - done), MSG_NOSIGNAL) < 0) break;
    }
    shutdown(fd, SHUT_WR);
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
    close(fd);
  });
  for (int i = 0; i < 1000 && server.connections() > 0; ++i) {
    if (!server.Poll(10).ok()) Fail("Poll failed");
  }
  if (server.connections() != 0) Fail("the connection was neither answered nor closed");
  client.join();

  // Which response the input calls for, by the same rules the server states.
  const size_t crlf = in.find("\r\n\r\n"), lf = in.find("\n\n");
  size_t end = std::string::npos;
  if (crlf != std::string::npos) end = crlf + 4;
  if (lf != std::string::npos) end = std::min(end, lf + 2);
  const bool whole = end != std::string::npos && end <= options.max_request_bytes;
  if (out.empty()) {
    if (whole) Fail("a whole request head got no response");
    if (in.size() > options.max_request_bytes) Fail("an oversized head got no 431");
    if (calls != 0) Fail("the source was called without a response");
    return 0;
  }
  static const std::set<std::string> kStatus = {"200", "400", "404", "405", "431", "505"};
  if (out.rfind("HTTP/1.1 ", 0) != 0 || out.size() < 12 || !kStatus.contains(out.substr(9, 3))) {
    Fail("not a response of a known status", out.substr(0, 40));
  }
  const size_t body_at = out.find("\r\n\r\n");
  if (body_at == std::string::npos) Fail("a response without the end of its head");
  const std::string head = out.substr(0, body_at + 2);
  const std::string body = out.substr(body_at + 4);
  const size_t cl = head.find("\r\nContent-Length: ");
  if (cl == std::string::npos) Fail("a response without Content-Length");
  const uint64_t length = std::stoull(head.substr(cl + 18));
  const bool head_only =
      out.substr(9, 3) == "200" && in.find("HEAD ") != std::string::npos && body.empty();
  if (!head_only && length != body.size()) Fail("Content-Length is not the body's length");
  if (head.find("Connection: close\r\n") == std::string::npos) Fail("no Connection: close");
  if (calls > 1) Fail("the source was called more than once for one connection");
  if ((calls == 1) != (out.substr(9, 3) == "200"))
    Fail("200 without a call, or a call without 200");
  if (calls == 1 && in.find("/metrics") == std::string::npos) Fail("a call for another path");
  return 0;
}
