// Control-socket bytes from any client: framing, parsing and dispatch of every io.iopfd method
// on a live (simulated) device, as root, an admin-group member, a control-group member or a
// stranger, with descriptors attached to each message (Adopt takes them).
//
// Input: one flags byte (bits 0-1 the peer, 2-3 descriptors per message, 4-7 the size of the
// chunks the stream arrives in), then the byte stream itself: NUL-terminated messages.
// Invariants: every reply is one valid JSON object with its NUL; nothing succeeds that the
// access table does not allow the peer; the device's requests keep being answered, exactly
// once, never SUCCESS for an unmapped page (sim_world.h).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/base/json.h"
#include "iopfd/control/varlink.h"
#include "sim_world.h"

namespace iopfd::fuzz {
namespace {

const Peer kPeers[] = {
    {.pid = 1, .uid = 0, .gid = 0, .groups = {}},              // root
    {.pid = 2, .uid = 1001, .gid = 1001, .groups = {200}},     // admin group
    {.pid = 3, .uid = 1002, .gid = 1002, .groups = {7, 100}},  // control group
    {.pid = 4, .uid = 1003, .gid = 1003, .groups = {}},        // neither
};

// Who may succeed, by the harness's own list (not the service's table, which it checks): the
// methods that change nothing are open to the control group, all are open to the admin group,
// none to a stranger.
bool Allowed(const std::string& method, int who) {
  static const std::set<std::string> kReadOnly = {
      "org.varlink.service.GetInfo", "org.varlink.service.GetInterfaceDescription",
      "io.iopfd.GetStatus",          "io.iopfd.ListDevices",
      "io.iopfd.GetStats",           "io.iopfd.Monitor"};
  if (who == 0 || who == 1) return true;
  return who == 2 && kReadOnly.count(method) != 0;
}

void CheckReply(const std::string& out) {
  FUZZ_CHECK(!out.empty() && out.back() == '\0', out);
  FUZZ_CHECK(out.find('\0') == out.size() - 1, "one message per reply");
  auto j = ParseJson(std::string_view(out).substr(0, out.size() - 1));
  FUZZ_CHECK(j.ok() && j->is_object(), out);
}

}  // namespace
}  // namespace iopfd::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  Input in(data, size);
  const uint8_t flags = in.Byte();
  const int who = flags & 3;
  const int fds_per_message = (flags >> 2) & 3;
  const size_t chunk = (flags >> 4) == 0 ? size : size_t{1} << ((flags >> 4) - 1);
  const Peer& peer = kPeers[who];

  SimWorld world;
  auto sink = std::make_shared<Sink>();
  MessageFramer framer(1 << 20);  // the daemon's default max_message_bytes
  std::string_view stream = in.Rest();
  int message_no = 0;
  bool closed = false;
  for (size_t at = 0; at < stream.size() && !closed; at += chunk) {
    if (!framer.Append(stream.substr(at, chunk))) break;  // too long: the server closes
    while (std::optional<std::string> msg = framer.Next()) {
      std::vector<UniqueFd> fds;
      fds.reserve(fds_per_message);
      for (int i = 0; i < fds_per_message; ++i) {
        fds.emplace_back(memfd_create("fuzz-fd", MFD_CLOEXEC));
      }
      auto call = ParseCall(*msg);
      std::string out = world.service.Handle(*msg, peer, &closed, sink, &fds);
      if (std::getenv("IOPFD_FUZZ_VERBOSE") != nullptr) {
        std::fprintf(stderr, "> %.200s\n< %.200s\n", msg->c_str(), out.c_str());
      }
      if (!call.ok()) {
        FUZZ_CHECK(closed, "a message that is not a call closes the connection");
        CheckReply(out);
        break;
      }
      if (call->oneway) {
        FUZZ_CHECK(out.empty(), "a oneway call got a reply");
      } else {
        CheckReply(out);
        auto reply = ParseJson(std::string_view(out).substr(0, out.size() - 1));
        if (!reply->contains("error")) {
          FUZZ_CHECK(Allowed(call->method, who), call->method);
        }
      }
      // The device keeps working meanwhile.
      ++message_no;
      world.Fault(message_no % 2 == 0, static_cast<uint32_t>(message_no * 7),
                  static_cast<uint32_t>(message_no), iopfd::uapi::kPermRead);
      world.host.Turn();
      world.CheckSafe();
      if (closed) break;
    }
  }
  for (const VarlinkReply& r : sink->replies) {
    CheckReply(EncodeReply(r, true));
  }
  world.CheckSafe();
  world.CheckNothingLost();
  return 0;
}
