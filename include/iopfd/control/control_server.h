// iopfd's control socket: a Varlink service on a Unix stream socket, driven on the fault loop's
// ring so that no client can stall fault handling.
#ifndef IOPFD_CONTROL_CONTROL_SERVER_H_
#define IOPFD_CONTROL_CONTROL_SERVER_H_

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "iopfd/control/varlink.h"
#include "iopfd/loop/ring.h"

namespace iopfd {

// Creates the listening socket at path: makes the parent directory (0755) if missing, replaces a
// stale socket left by an earlier run (never another kind of file), binds, sets mode 0660 and
// group `gid` (when given; the owner stays root), and listens. Errors name the path, the step
// and the errno.
absl::StatusOr<UniqueFd> ListenControlSocket(const std::string& path, std::optional<gid_t> gid);

struct ControlServerOptions {
  size_t max_message = 1 << 20;  // a longer message closes its connection
  size_t max_output = 8 << 20;   // replies a client leaves unread before it is dropped
  uint32_t max_connections = 64;
  uint32_t max_connections_per_uid = 16;
  // A message begun and not finished, or output not taken by the client, for this long closes
  // the connection (a client that sends half a call, or reads too slowly, holds a slot).
  uint64_t message_timeout_ns = 10'000'000'000;
  // A connection with nothing in progress and no Monitor stream, idle for this long, is closed.
  uint64_t idle_timeout_ns = 300'000'000'000;
};

// Accepts connections, frames their messages, dispatches them to a VarlinkService and sends the
// replies, all through non-blocking operations on the loop's ring. A client that stops reading,
// floods or holds half a message costs a bounded buffer and never delays fault responses: the
// loop never waits on a client. Connections over the total or per-uid cap are closed at accept.
// File descriptors may come with a message (SCM_RIGHTS, at most 16 per message); they belong to
// the message being received when they arrive and are closed after its call unless the method
// takes them (io.iopfd.Adopt).
class ControlServer : public RingClient {
 public:
  // Takes a listening socket; service must outlive the server.
  ControlServer(UniqueFd listener, VarlinkService* service, ControlServerOptions options);
  ~ControlServer() override;

  void Start(Ring& loop) override;
  void OnCompletion(Ring& loop, RingOp& op, int res) override;
  void Flush(Ring& loop) override;
  void Stop(Ring& loop) override;
  bool Busy() const override;

  // Returns the number of open connections.
  size_t connections() const { return conns_.size(); }
  // Returns when the next connection times out (message or idle timeout), or nullopt.
  std::optional<uint64_t> NextDeadline() const;
  // Closes the connections whose time ran out by now_ns, saying why in the log.
  void Tick(Ring& loop, uint64_t now_ns);
  // Connections closed for a timeout so far.
  uint64_t timed_out() const { return timed_out_; }

 private:
  enum Kind { kAccept = 1, kRecv, kSend, kCancel };
  // Descriptors one message may carry.
  static constexpr size_t kMaxFds = 16;
  class Channel;  // a connection's ReplyChannel, for streaming replies
  struct Conn {
    UniqueFd fd;
    Peer peer;
    MessageFramer in;
    std::string out;
    size_t out_sent = 0;
    bool closing = false;  // no more input is read; close once the output is sent
    // No more input is read until the output is sent: the client is not reading its replies
    // (kPauseReadingAbove).
    bool reading_paused = false;
    bool dead = false;  // close as soon as nothing is in flight
    RingOp recv_op, send_op, cancel_op;
    std::shared_ptr<Channel> channel;
    // Descriptors received while a message was still incomplete: they belong to it.
    std::vector<UniqueFd> fds_next;
    uint64_t partial_since = 0;  // when the unfinished message began (0: none)
    uint64_t output_since = 0;   // when the output last had nothing pending or made progress
    uint64_t last_call = 0;      // when the connection was accepted or last completed a call
    msghdr msg{};
    iovec iov{};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    char buf[16384];
    explicit Conn(size_t max_message) : in(max_message) {}
  };
  using ConnList = std::list<std::unique_ptr<Conn>>;

  // Arms every accept of accept_ops_ that is not in flight.
  void ArmAccept(Ring& loop);
  void ArmRecv(Ring& loop, Conn& c);
  void OnAccept(Ring& loop, int res);
  void OnRecv(Ring& loop, Conn& c, int res);
  void OnSend(Ring& loop, Conn& c, int res);
  // Hands every message a read completed to the service, in order, with the descriptors that
  // came with each (those of this read, `arrived`, go to the message they belong to; what is
  // left belongs to the unfinished one), appending the replies to c's output.
  void HandleMessages(Ring& loop, Conn& c, std::vector<UniqueFd>* arrived);
  // Starts or stops c's timeout clocks after a read: an unfinished message's, and the idle one
  // when the read completed calls.
  void NoteReceived(Conn& c, bool completed_messages);
  // Marks c dead, cancels what it has in flight, and frees it once nothing is.
  void Kill(Ring& loop, Conn& c);
  void Reap(Conn& c);
  // When c times out, and why (nullopt: it does not).
  std::optional<std::pair<uint64_t, const char*>> DeadlineOf(const Conn& c) const;

  UniqueFd listener_;
  VarlinkService* service_;
  ControlServerOptions options_;
  // One-shot accepts kept in flight. Not one multishot accept: that one takes every connection
  // the kernel queues, as fast as clients make them, into iopfd's descriptor table before the
  // loop sees a single completion, so a flood while the loop is busy held hundreds of
  // descriptors however low the caps (seen in the sanitizer build: 170 for a cap of 64). With
  // kAcceptDepth one-shot accepts, at most that many connections are accepted and not yet
  // counted against the caps, and a loop turn still takes up to that many from the backlog.
  static constexpr size_t kAcceptDepth = 16;
  std::array<RingOp, kAcceptDepth> accept_ops_;
  RingOp accept_cancel_op_;
  ConnList conns_;
  std::map<uid_t, uint32_t> per_uid_;
  bool stopping_ = false;
  uint64_t timed_out_ = 0;
};

}  // namespace iopfd

#endif  // IOPFD_CONTROL_CONTROL_SERVER_H_
