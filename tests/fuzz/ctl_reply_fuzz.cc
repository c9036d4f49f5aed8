// What iopfctl does with a daemon's replies, when the daemon (or whatever listens on the socket)
// answers garbage: the client's framing and parsing, then every way iopfctl prints a reply.
//
// Input: the bytes the "daemon" sends, then it closes. Invariant: iopfctl's code never throws
// or crashes on them; every reply is read as a reply or refused as malformed.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <thread>

#include "fuzz_input.h"
#include "iopfd/control/ctl_format.h"
#include "iopfd/control/varlink_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using iopfd::fuzz::Fail;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) Fail("socketpair");
  // The daemon's side writes everything and closes, from a thread: the reply may be larger
  // than the socket buffer.
  const int daemon_fd = sv[1];
  std::thread daemon([fd = daemon_fd, data, size] {
    size_t done = 0;
    while (done < size) {
      ssize_t n = write(fd, data + done, size - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    close(fd);
  });
  iopfd::VarlinkClient client{iopfd::UniqueFd{sv[0]}, "fuzz daemon"};
  try {
    for (int i = 0; i < 64; ++i) {
      absl::StatusOr<iopfd::VarlinkReply> reply = client.Next();
      if (!reply.ok()) break;
      const nlohmann::json& p = reply->parameters;
      if (!p.is_object()) Fail("a reply's parameters are not an object");
      std::string out;
      out += iopfd::FormatStatus(p);
      out += iopfd::FormatDevices(p);
      out += iopfd::FormatStats(p);
      out += iopfd::FormatReload(p);
      out += iopfd::FormatDrainReply("dev0", p);
      out += iopfd::FormatMonitorEvent(p);
      out += iopfd::FormatError("io.iopfd.GetStatus", reply->error, p);
      (void)iopfd::DeviceStateIn(p, "dev0");
      nlohmann::json params = p;
      (void)iopfd::IsTransientState(params["state"]);
      if (out.empty()) Fail("nothing printed");
    }
  } catch (const std::exception& e) {
    Fail("iopfctl's reply handling threw", e.what());
  }
  // Unblocks a writer still waiting for room.
  shutdown(sv[0], SHUT_RDWR);
  daemon.join();
  return 0;
}
