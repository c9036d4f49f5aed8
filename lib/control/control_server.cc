#include "iopfd/control/control_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "iopfd/base/clock.h"
#include "iopfd/base/errors.h"
#include "iopfd/service/log.h"

namespace iopfd {

// Unsent replies past which a connection's calls are no longer read (backpressure); reading
// resumes once they are all sent.
constexpr size_t kPauseReadingAbove = 256 << 10;

absl::StatusOr<UniqueFd> ListenControlSocket(const std::string& path, std::optional<gid_t> gid) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("control socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty() && !std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return ErrnoStatus(ec.value(), path, "create directory " + dir.string());
    chmod(dir.c_str(), 0755);
  }
  // A socket file left by an earlier run is replaced; anything else at the path is an error, so
  // a typo never deletes a file.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return ErrnoStatus(EEXIST, path, "bind control socket", "exists and is not a socket");
    }
    unlink(path.c_str());
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoStatus(errno, path, "socket");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, path, "bind control socket");
  }
  // Root owns it; the control group may connect. Permission checks per method come on top.
  if (chmod(path.c_str(), 0660) != 0) return ErrnoStatus(errno, path, "chmod 0660");
  if (gid.has_value() && chown(path.c_str(), 0, *gid) != 0) {
    return ErrnoStatus(errno, path, absl::StrCat("chown root:", *gid));
  }
  if (listen(fd.get(), 64) != 0) return ErrnoStatus(errno, path, "listen");
  return fd;
}

namespace {

// Reads who is on the other end: SO_PEERCRED for pid/uid/gid, SO_PEERGROUPS (Linux >= 4.13)
// for the supplementary groups the group-based permissions need.
Peer PeerOf(int fd) {
  Peer p;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    p.pid = cred.pid;
    p.uid = cred.uid;
    p.gid = cred.gid;
  }
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      p.groups = std::move(groups);
      break;
    }
    if (errno != ERANGE) break;
    groups.resize(glen / sizeof(gid_t) + 1);
  }
  return p;
}

// Takes the descriptors of SCM_RIGHTS control messages out of msg.
std::vector<UniqueFd> ReceivedFds(const msghdr& msg) {
  std::vector<UniqueFd> fds;
  if (msg.msg_controllen == 0) return fds;
  for (const cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr;
       cm = CMSG_NXTHDR(const_cast<msghdr*>(&msg), const_cast<cmsghdr*>(cm))) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cm);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  return fds;
}

}  // namespace

// Streaming replies (Monitor) go into the connection's output like any reply; the loop sends
// them at its next flush. Detached when the connection dies, after which Send does nothing.
class ControlServer::Channel : public ReplyChannel {
 public:
  explicit Channel(Conn* conn) : conn_(conn) {}
  void Send(const VarlinkReply& reply, bool continues) override {
    if (conn_ != nullptr) conn_->out += EncodeReply(reply, continues);
  }
  bool open() const override { return conn_ != nullptr; }
  void Detach() { conn_ = nullptr; }

 private:
  Conn* conn_;
};

ControlServer::ControlServer(UniqueFd listener, VarlinkService* service,
                             ControlServerOptions options)
    : listener_(std::move(listener)), service_(service), options_(options) {
  for (RingOp& op : accept_ops_) op = {this, kAccept, nullptr, false};
  accept_cancel_op_ = {this, kCancel, nullptr, false};
}

ControlServer::~ControlServer() = default;

void ControlServer::Start(Ring& loop) { ArmAccept(loop); }

void ControlServer::ArmAccept(Ring& loop) {
  if (stopping_ || accept_cancel_op_.in_flight) return;
  // Several one-shot accepts rather than one re-armed per completion: that took one connection
  // per loop turn, and a turn carrying many busy clients' calls is long, so clients queued in
  // the backlog waited for minutes (seen with 200 clients in the VM under load). Rather than a
  // multishot accept: see kAcceptDepth.
  for (RingOp& op : accept_ops_) {
    if (op.in_flight) continue;
    io_uring_sqe* sqe = loop.GetSqe();
    io_uring_prep_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    loop.Bind(sqe, &op);
  }
}

void ControlServer::ArmRecv(Ring& loop, Conn& c) {
  if (c.recv_op.in_flight || c.closing || c.dead || stopping_) return;
  io_uring_sqe* sqe = loop.GetSqe();
  // recvmsg rather than recv: a client may pass descriptors with a call (Adopt).
  c.iov = {c.buf, sizeof(c.buf)};
  c.msg = {};
  c.msg.msg_iov = &c.iov;
  c.msg.msg_iovlen = 1;
  c.msg.msg_control = c.control;
  c.msg.msg_controllen = sizeof(c.control);
  io_uring_prep_recvmsg(sqe, c.fd.get(), &c.msg, MSG_CMSG_CLOEXEC);
  loop.Bind(sqe, &c.recv_op);
}

void ControlServer::OnAccept(Ring& loop, int res) {
  if (res < 0) {
    if (res != -ECANCELED) {
      Log(LogLevel::kWarning, std::string(ErrnoStatus(-res, "control socket", "accept").message()));
    }
    // EMFILE and the like pass; keep accepting (the loop is not hurt by a failed accept).
    if (res != -ECANCELED) ArmAccept(loop);
    return;
  }
  UniqueFd fd(res);
  if (stopping_) {
    // Accepted just before the stop (an accept's completion delivered after Stop):
    // closing it is the answer; a connection kept now would never be reaped.
    return;
  }
  Peer peer = PeerOf(fd.get());
  uint32_t& mine = per_uid_[peer.uid];
  if (conns_.size() >= options_.max_connections || mine >= options_.max_connections_per_uid) {
    Log(LogLevel::kWarning,
        absl::StrCat("control socket: refusing a connection from uid ", peer.uid, " (pid ",
                     peer.pid, "): ", conns_.size(), " open, ", mine, " of them this uid's"));
    ArmAccept(loop);
    return;  // closing fd is the refusal
  }
  ++mine;
  auto c = std::make_unique<Conn>(options_.max_message);
  c->fd = std::move(fd);
  c->peer = std::move(peer);
  c->recv_op = {this, kRecv, c.get(), false};
  c->send_op = {this, kSend, c.get(), false};
  c->cancel_op = {this, kCancel, c.get(), false};
  c->channel = std::make_shared<Channel>(c.get());
  c->last_call = MonotonicNs();
  Conn& ref = *c;
  conns_.push_back(std::move(c));
  ArmRecv(loop, ref);
  ArmAccept(loop);
}

void ControlServer::OnRecv(Ring& loop, Conn& c, int res) {
  if (c.dead) {
    // The connection died while this read was completing: descriptors it carried were
    // installed in our table all the same, and are closed here.
    if (res > 0) (void)ReceivedFds(c.msg);
    return Reap(c);
  }
  if (res <= 0) {
    if (res != 0 && res != -ECANCELED && res != -ECONNRESET) {
      Log(LogLevel::kDebug, std::string(ErrnoStatus(-res, "control socket", "recv").message()));
    }
    // The client is gone (or closed its writing side): nothing more to answer.
    c.closing = true;
    if (c.out_sent >= c.out.size()) Kill(loop, c);
    return;
  }
  std::vector<UniqueFd> arrived = ReceivedFds(c.msg);
  if ((c.msg.msg_flags & MSG_CTRUNC) != 0 || c.fds_next.size() + arrived.size() > kMaxFds) {
    // Descriptors were lost (the kernel closed what did not fit in the control buffer) or are
    // too many: the call they came with cannot be served correctly.
    Log(LogLevel::kWarning,
        absl::StrCat("control socket: uid ", c.peer.uid, " (pid ", c.peer.pid, ") passed ",
                     (c.msg.msg_flags & MSG_CTRUNC) != 0
                         ? "file descriptors that did not fit (control data truncated)"
                         : absl::StrCat("more than ", kMaxFds, " file descriptors"),
                     " with one message; closing"));
    return Kill(loop, c);
  }
  if (!c.in.Append(std::string_view(c.buf, static_cast<size_t>(res)))) {
    Log(LogLevel::kWarning,
        absl::StrCat("control socket: uid ", c.peer.uid, " sent a message over ",
                     options_.max_message, " bytes; closing"));
    return Kill(loop, c);
  }
  HandleMessages(loop, c, &arrived);
  for (UniqueFd& fd : arrived) c.fds_next.push_back(std::move(fd));
  if (c.out.size() - c.out_sent > options_.max_output) {
    Log(LogLevel::kWarning,
        absl::StrCat("control socket: uid ", c.peer.uid, " is not reading its replies; closing"));
    return Kill(loop, c);
  }
  if (c.out.size() - c.out_sent > kPauseReadingAbove) {
    // Backpressure: its calls wait in the socket (and then in the client) until it reads what
    // it asked for. A client that never does costs at most this much and one read's replies,
    // and is closed when its output makes no progress for message_timeout_ms.
    c.reading_paused = true;
    return;
  }
  ArmRecv(loop, c);
}

void ControlServer::HandleMessages(Ring& loop, Conn& c, std::vector<UniqueFd>* arrived) {
  std::vector<std::string> messages;
  while (auto msg = c.in.Next()) messages.push_back(*std::move(msg));
  NoteReceived(c, !messages.empty());
  // AF_UNIX stream sockets end a read right after the data that carried descriptors
  // (unix_stream_read_generic), so they came with the message this read ends in: the last one
  // completed now, or the one still incomplete. Descriptors held from an earlier read belong to
  // the first message completed now.
  const bool ends_on_boundary = c.in.buffered() == 0;
  for (size_t k = 0; k < messages.size(); ++k) {
    std::vector<UniqueFd> fds;
    if (k == 0) fds.swap(c.fds_next);
    if (k + 1 == messages.size() && ends_on_boundary) {
      for (UniqueFd& fd : *arrived) fds.push_back(std::move(fd));
      arrived->clear();
    }
    bool close = false;
    c.out += service_->Handle(messages[k], c.peer, &close, c.channel, &fds);
    if (close) {
      c.closing = true;
      break;
    }
    // One read can carry hundreds of calls: page requests that arrived meanwhile are answered
    // between them, not after all of them.
    loop.Yield();
  }
}

void ControlServer::NoteReceived(Conn& c, bool completed_messages) {
  const uint64_t now = MonotonicNs();
  if (completed_messages) c.last_call = now;
  // The clock of an unfinished message starts at its first byte and stops when it completes.
  if (c.in.buffered() == 0) {
    c.partial_since = 0;
  } else if (c.partial_since == 0 || completed_messages) {
    c.partial_since = now;
  }
}

void ControlServer::OnSend(Ring& loop, Conn& c, int res) {
  if (c.dead) return Reap(c);
  if (res < 0) return Kill(loop, c);  // EPIPE, ECONNRESET: the client left
  c.out_sent += static_cast<size_t>(res);
  if (res > 0) c.output_since = MonotonicNs();
  if (c.out_sent >= c.out.size()) {
    c.out.clear();
    c.out_sent = 0;
    if (c.closing) return Kill(loop, c);
    if (c.reading_paused) {
      c.reading_paused = false;
      // An unfinished message's clock starts again: iopfd, not the client, held it up.
      if (c.partial_since != 0) c.partial_since = MonotonicNs();
      ArmRecv(loop, c);
    }
  }
}

void ControlServer::Flush(Ring& loop) {
  std::vector<Conn*> overflowing;
  for (auto& c : conns_) {
    // Streamed events can pile up for a subscriber that stopped reading, too.
    if (!c->dead && c->out.size() - c->out_sent > options_.max_output) {
      overflowing.push_back(c.get());
      continue;
    }
    if (c->dead || c->send_op.in_flight) continue;
    if (c->out_sent >= c->out.size()) {
      c->output_since = 0;  // nothing pending: no clock running
      continue;
    }
    // Output pending: its clock runs from when it was last empty or last made progress.
    if (c->output_since == 0) c->output_since = MonotonicNs();
    io_uring_sqe* sqe = loop.GetSqe();
    io_uring_prep_send(sqe, c->fd.get(), c->out.data() + c->out_sent, c->out.size() - c->out_sent,
                       MSG_NOSIGNAL);
    loop.Bind(sqe, &c->send_op);
  }
  for (Conn* c : overflowing) {
    Log(LogLevel::kWarning,
        absl::StrCat("control socket: uid ", c->peer.uid, " is not reading its replies; closing"));
    Kill(loop, *c);
  }
}

void ControlServer::OnCompletion(Ring& loop, RingOp& op, int res) {
  switch (op.kind) {
    case kAccept:
      OnAccept(loop, res);
      break;
    case kRecv:
      OnRecv(loop, *static_cast<Conn*>(op.owner), res);
      break;
    case kSend:
      OnSend(loop, *static_cast<Conn*>(op.owner), res);
      break;
    case kCancel:
      if (op.owner != nullptr) Reap(*static_cast<Conn*>(op.owner));
      break;
    default:
      break;
  }
}

void ControlServer::Kill(Ring& loop, Conn& c) {
  if (!c.dead) {
    c.dead = true;
    c.channel->Detach();
    // Buffers of operations in flight belong to the kernel until they complete: cancel them
    // and free the connection only when the last completion is in.
    if (c.recv_op.in_flight || c.send_op.in_flight) {
      io_uring_sqe* sqe = loop.GetSqe();
      io_uring_prep_cancel_fd(sqe, c.fd.get(), IORING_ASYNC_CANCEL_ALL);
      loop.Bind(sqe, &c.cancel_op);
    }
  }
  Reap(c);
}

void ControlServer::Reap(Conn& c) {
  if (!c.dead || c.recv_op.in_flight || c.send_op.in_flight || c.cancel_op.in_flight) return;
  auto it = per_uid_.find(c.peer.uid);
  if (it != per_uid_.end() && --it->second == 0) per_uid_.erase(it);
  conns_.remove_if([&c](const std::unique_ptr<Conn>& p) { return p.get() == &c; });
}

void ControlServer::Stop(Ring& loop) {
  stopping_ = true;
  if (std::any_of(accept_ops_.begin(), accept_ops_.end(),
                  [](const RingOp& op) { return op.in_flight; })) {
    // All of them with one cancel: every accept in flight is on the listener.
    io_uring_sqe* sqe = loop.GetSqe();
    io_uring_prep_cancel_fd(sqe, listener_.get(), IORING_ASYNC_CANCEL_ALL);
    loop.Bind(sqe, &accept_cancel_op_);
  }
  // Copy: Kill may erase from the list.
  std::vector<Conn*> all;
  for (auto& c : conns_) all.push_back(c.get());
  for (Conn* c : all) {
    // Last words (the end of a Monitor stream), best effort and without waiting: whatever the
    // socket buffer takes now. Not while a ring send of the same bytes is in flight.
    if (!c->dead && !c->send_op.in_flight && c->out_sent < c->out.size()) {
      (void)!send(c->fd.get(), c->out.data() + c->out_sent, c->out.size() - c->out_sent,
                  MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    Kill(loop, *c);
  }
}

std::optional<std::pair<uint64_t, const char*>> ControlServer::DeadlineOf(const Conn& c) const {
  if (c.dead) return std::nullopt;
  std::optional<std::pair<uint64_t, const char*>> out;
  auto earlier = [&out](uint64_t at, const char* why) {
    if (!out.has_value() || at < out->first) out = std::make_pair(at, why);
  };
  // While its reading is paused the client is not the one that stopped: only its output counts.
  if (c.partial_since != 0 && !c.reading_paused) {
    earlier(c.partial_since + options_.message_timeout_ns, "sent part of a message and stopped");
  }
  if (c.output_since != 0 && c.out_sent < c.out.size()) {
    earlier(c.output_since + options_.message_timeout_ns, "is not reading its replies");
  }
  // Idle: nothing half sent, nothing to send, no stream open (a Monitor subscriber waits for
  // events by design; the event bus holds its channel).
  if (c.partial_since == 0 && c.out_sent >= c.out.size() && c.channel.use_count() == 1) {
    earlier(c.last_call + options_.idle_timeout_ns, "has been idle");
  }
  return out;
}

std::optional<uint64_t> ControlServer::NextDeadline() const {
  std::optional<uint64_t> next;
  for (const auto& c : conns_) {
    if (auto d = DeadlineOf(*c); d.has_value() && (!next.has_value() || d->first < *next)) {
      next = d->first;
    }
  }
  return next;
}

void ControlServer::Tick(Ring& loop, uint64_t now_ns) {
  std::vector<std::pair<Conn*, const char*>> expired;
  for (auto& c : conns_) {
    if (auto d = DeadlineOf(*c); d.has_value() && d->first <= now_ns) {
      expired.emplace_back(c.get(), d->second);
    }
  }
  for (auto [c, why] : expired) {
    ++timed_out_;
    Log(LogLevel::kWarning, absl::StrCat("control socket: uid ", c->peer.uid, " (pid ", c->peer.pid,
                                         ") ", why, "; closing"));
    Kill(loop, *c);
  }
}

bool ControlServer::Busy() const {
  return std::any_of(accept_ops_.begin(), accept_ops_.end(),
                     [](const RingOp& op) { return op.in_flight; }) ||
         accept_cancel_op_.in_flight || !conns_.empty();
}

}  // namespace iopfd
