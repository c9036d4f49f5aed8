// A small blocking Varlink client, enough for iopfctl: one call at a time on one connection.
//
// Varlink frames every message as a JSON object followed by a NUL byte on a stream socket. A
// call with "more" is answered by a stream of replies, each but the last carrying
// "continues": true.
#ifndef IOPFD_CONTROL_VARLINK_CLIENT_H_
#define IOPFD_CONTROL_VARLINK_CLIENT_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "nlohmann/json.hpp"

namespace iopfd {

// One reply to a call.
struct VarlinkReply {
  // The reply's parameters; an empty object when the message had none.
  nlohmann::json parameters = nlohmann::json::object();
  // The fully qualified error name ("io.iopfd.NoSuchDevice"), or empty for a normal reply.
  std::string error;
  // True when more replies to the same call follow.
  bool continues = false;
};

// A connection to a Varlink service. Not thread-safe: one caller makes a call and reads its
// replies before the next call.
class VarlinkClient {
 public:
  // A reply bigger than this is treated as a broken server rather than buffered without bound.
  static constexpr size_t kMaxMessageBytes = size_t{16} << 20;

  // Connects to the Varlink service listening on the Unix socket at socket_path.
  // Returns the connected client, or an ErrnoStatus naming the path and the errno (ENOENT when
  // nothing is there, ECONNREFUSED when nobody listens, EACCES, ENAMETOOLONG when the path does
  // not fit a sockaddr_un, ...); ErrnoOf() on the status gives the errno back.
  static absl::StatusOr<VarlinkClient> Connect(const std::string& socket_path);

  // Wraps an already connected stream socket, e.g. one end of a socketpair. `peer` names the
  // other end in error messages.
  explicit VarlinkClient(UniqueFd fd, std::string peer = "varlink peer");

  VarlinkClient(VarlinkClient&&) noexcept = default;
  VarlinkClient& operator=(VarlinkClient&&) noexcept = default;

  // Sends one call of `method` (fully qualified, "io.iopfd.GetStatus") with `parameters` (an
  // object, or null for none); `more` asks for a stream of replies.
  // Returns OK once the whole message is written; an ErrnoStatus for a failed send (EPIPE when
  // the server has closed the connection; SIGPIPE is never raised); InvalidArgument when
  // parameters is neither an object nor null; or the earlier error when a previous Next() left
  // the connection unusable.
  absl::Status Call(std::string_view method, const nlohmann::json& parameters, bool more = false);

  // Blocks until the next reply is complete and returns it; replies may arrive split across
  // reads or several to a read.
  // Errors: Unavailable when the server closes the connection before a reply is complete (the
  // message says whether it was mid-reply); an ErrnoStatus for a failed read; DataLoss for a
  // reply that is not a JSON object of the Varlink shape or that exceeds kMaxMessageBytes.
  // After an oversized reply the stream cannot be resynchronised, so every later Call and Next
  // returns that same error; a malformed but complete reply leaves the connection usable.
  absl::StatusOr<VarlinkReply> Next();

  // Returns the socket, e.g. for poll().
  int fd() const { return fd_.get(); }

 private:
  // Returns the reply in buffer_[0, end) and drops it and its NUL from the buffer.
  absl::StatusOr<VarlinkReply> TakeMessage(size_t end);

  UniqueFd fd_;
  std::string peer_;
  // Bytes received but not yet returned: at most one partial message after the complete ones.
  std::string buffer_;
  // How much of buffer_ is known to hold no NUL, so a reply trickling in is not rescanned.
  size_t scanned_ = 0;
  absl::Status broken_;
};

}  // namespace iopfd

#endif  // IOPFD_CONTROL_VARLINK_CLIENT_H_
