#include "iopfd/device/uevent.h"

#include <netlink/netlink.h>
#include <netlink/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

// lib/kobject_uevent.c kobject_actions[].
constexpr std::array<absl::string_view, 8> kActions = {"add",    "remove",  "change", "move",
                                                       "online", "offline", "bind",   "unbind"};
constexpr size_t kMaxFields = 64;  // UEVENT_NUM_ENVP
constexpr size_t kMaxKey = 64;
// The kernel's multicast group for uevents (udev's rebroadcast is group 2).
constexpr uint32_t kKernelGroup = 1;

absl::Status Bad(size_t offset, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("uevent: at byte ", offset, ": ", what));
}

bool KeyChar(char c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }

// Returns the first control character's index in v, or npos.
size_t ControlCharAt(absl::string_view v) {
  for (size_t i = 0; i < v.size(); ++i) {
    const auto c = static_cast<unsigned char>(v[i]);
    if (c < 0x20 || c == 0x7f) return i;
  }
  return absl::string_view::npos;
}

}  // namespace

namespace {

// The header, ACTION@DEVPATH: sets *action and *devpath, or says what is wrong and where.
absl::Status ParseHeader(absl::string_view header, absl::string_view* action,
                         absl::string_view* devpath) {
  const size_t at = header.find('@');
  if (at == absl::string_view::npos) return Bad(0, "header is not ACTION@DEVPATH");
  *action = header.substr(0, at);
  *devpath = header.substr(at + 1);
  if (std::find(kActions.begin(), kActions.end(), *action) == kActions.end()) {
    return Bad(0, absl::StrCat("unknown action '", action->substr(0, 32), "'"));
  }
  if (devpath->empty() || (*devpath)[0] != '/') {
    return Bad(at + 1, "DEVPATH in the header does not start with '/'");
  }
  if (size_t c = ControlCharAt(*devpath); c != absl::string_view::npos) {
    return Bad(at + 1 + c, "control character in the header");
  }
  return absl::OkStatus();
}

// One KEY=VALUE field, at byte pos of the message: added to ev->env, or says what is wrong.
absl::Status ParseField(absl::string_view field, size_t pos, Uevent* ev) {
  if (field.empty()) return Bad(pos, "empty field");
  const size_t eq = field.find('=');
  if (eq == absl::string_view::npos || eq == 0) return Bad(pos, "field is not KEY=VALUE");
  const absl::string_view key = field.substr(0, eq);
  if (key.size() > kMaxKey) return Bad(pos, absl::StrCat("key longer than ", kMaxKey));
  if (!std::all_of(key.begin(), key.end(), KeyChar)) {
    return Bad(pos, "key has characters other than A-Z 0-9 _");
  }
  const absl::string_view value = field.substr(eq + 1);
  if (size_t c = ControlCharAt(value); c != absl::string_view::npos) {
    return Bad(pos + eq + 1 + c, absl::StrCat("control character in the value of ", key));
  }
  if (!ev->env.emplace(std::string(key), std::string(value)).second) {
    return Bad(pos, absl::StrCat("duplicate key ", key));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Uevent> ParseUevent(std::span<const char> message) {
  if (message.empty()) return Bad(0, "empty message");
  if (message.size() > kMaxUeventBytes) {
    return Bad(kMaxUeventBytes,
               absl::StrCat(message.size(), " bytes, more than ", kMaxUeventBytes));
  }
  if (message.back() != '\0') return Bad(message.size() - 1, "not NUL-terminated");
  const absl::string_view all(message.data(), message.size());
  size_t end = all.find('\0');
  absl::string_view action;
  absl::string_view devpath;
  if (absl::Status st = ParseHeader(all.substr(0, end), &action, &devpath); !st.ok()) return st;

  Uevent ev;
  size_t fields = 0;
  for (size_t pos = end + 1; pos < all.size(); pos = end + 1) {
    end = all.find('\0', pos);  // found: the message ends with NUL
    const absl::string_view field = all.substr(pos, end - pos);
    // An empty field is that error (ParseField), not one more field.
    if (!field.empty() && ++fields > kMaxFields) {
      return Bad(pos, absl::StrCat("more than ", kMaxFields, " fields"));
    }
    if (absl::Status st = ParseField(field, pos, &ev); !st.ok()) return st;
  }
  for (const char* required : {"ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"}) {
    const auto it = ev.env.find(required);
    if (it == ev.env.end()) return Bad(all.size(), absl::StrCat("no ", required));
    // The kernel never sends these empty (kobject_uevent_env fills each from a named kobject);
    // an empty SUBSYSTEM would otherwise reach the device manager as "no subsystem at all".
    if (it->second.empty()) return Bad(all.size(), absl::StrCat("empty ", required));
  }
  ev.action = ev.env["ACTION"];
  ev.devpath = ev.env["DEVPATH"];
  ev.subsystem = ev.env["SUBSYSTEM"];
  if (ev.action != action) return Bad(0, "ACTION disagrees with the header");
  if (ev.devpath != devpath) return Bad(0, "DEVPATH disagrees with the header");
  const std::string& seq = ev.env["SEQNUM"];
  auto [p, ec] = std::from_chars(seq.data(), seq.data() + seq.size(), ev.seqnum);
  if (seq.empty() || ec != std::errc() || p != seq.data() + seq.size()) {
    return Bad(all.size(), "SEQNUM is not a decimal number");
  }
  return ev;
}

absl::StatusOr<std::unique_ptr<UeventListener>> UeventListener::Open() {
  nl_sock* sock = nl_socket_alloc();
  if (sock == nullptr) return absl::ResourceExhaustedError("uevents: nl_socket_alloc failed");
  // Uevents are not request/response traffic: no sequence numbers to check, no auto-ack.
  nl_socket_disable_seq_check(sock);
  nl_socket_disable_auto_ack(sock);
  auto fail = [sock](const char* call, int err) {
    nl_socket_free(sock);
    return absl::UnavailableError(absl::StrCat("uevents: ", call, ": ", nl_geterror(err)));
  };
  if (int err = nl_connect(sock, NETLINK_KOBJECT_UEVENT); err < 0) return fail("nl_connect", err);
  if (int err = nl_socket_add_membership(sock, static_cast<int>(kKernelGroup)); err < 0) {
    return fail("nl_socket_add_membership", err);
  }
  // A burst (a hot-plug storm) must not overflow the socket while a drain holds the loop.
  if (int err = nl_socket_set_buffer_size(sock, 1 << 20, 0); err < 0) {
    return fail("nl_socket_set_buffer_size", err);
  }
  if (int err = nl_socket_set_nonblocking(sock); err < 0) {
    return fail("nl_socket_set_nonblocking", err);
  }
  return std::unique_ptr<UeventListener>(new UeventListener(sock));
}

UeventListener::UeventListener(nl_sock* sock) : sock_(sock), fd_(nl_socket_get_fd(sock)) {
  op_.client = this;
  cancel_.client = this;
  cancel_.kind = 1;
}

UeventListener::~UeventListener() { nl_socket_free(sock_); }

void UeventListener::Start(Ring& loop) { Arm(loop); }

void UeventListener::Arm(Ring& loop) {
  if (stopping_ || op_.in_flight) return;
  iov_ = {buf_, sizeof(buf_)};
  msg_ = {};
  msg_.msg_name = &from_;
  msg_.msg_namelen = sizeof(from_);
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  io_uring_sqe* sqe = loop.GetSqe();
  io_uring_prep_recvmsg(sqe, fd_, &msg_, 0);
  loop.Bind(sqe, &op_);
}

void UeventListener::Deliver(std::span<const char> message, uint32_t sender_port, bool truncated) {
  ++counters_.received;
  if (sender_port != 0) {
    // Only the kernel (port 0) speaks for devices; a process sending on the uevent family
    // (root can) is not believed.
    ++counters_.foreign;
    Log(LogLevel::kWarning,
        absl::StrCat("uevent from netlink port ", sender_port, " (not the kernel): dropped"));
    return;
  }
  if (truncated) {
    ++counters_.malformed;
    Log(LogLevel::kWarning,
        absl::StrCat("uevent longer than ", kMaxUeventBytes, " bytes (truncated): dropped"));
    return;
  }
  absl::StatusOr<Uevent> ev = ParseUevent(message);
  if (!ev.ok()) {
    ++counters_.malformed;
    Log(LogLevel::kWarning, absl::StrCat(ev.status().message(), ": dropped"));
    return;
  }
  ++counters_.delivered;
  if (ev->env.count("SYNTH_UUID") != 0) ++counters_.synthetic;
  if (on_uevent) on_uevent(*ev);
}

void UeventListener::OnCompletion(Ring& loop, RingOp& op, int res) {
  if (&op == &cancel_) return;
  if (res >= 0) {
    Deliver(std::span<const char>(buf_, static_cast<size_t>(res)), from_.nl_pid,
            (msg_.msg_flags & MSG_TRUNC) != 0);
  } else if (res == -ENOBUFS) {
    // The kernel dropped uevents for us: say so; what was lost cannot be recovered from here.
    ++counters_.overruns;
    Log(LogLevel::kError, "uevents lost: the netlink socket's buffer overflowed (ENOBUFS)");
  } else if (res != -ECANCELED && res != -EAGAIN && res != -EINTR) {
    Log(LogLevel::kError, std::string(ErrnoStatus(-res, "", "recvmsg uevent socket").message()));
    if (res != -ENOMEM) {
      broken_ = true;  // a broken socket: stop listening rather than spin; GetStatus says so
      return;
    }
  }
  Arm(loop);
}

void UeventListener::Stop(Ring& loop) {
  stopping_ = true;
  if (op_.in_flight) {
    io_uring_sqe* sqe = loop.GetSqe();
    io_uring_prep_cancel(sqe, &op_, 0);
    loop.Bind(sqe, &cancel_);
  }
}

}  // namespace iopfd
