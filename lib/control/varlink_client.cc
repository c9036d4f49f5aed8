#include "iopfd/control/varlink_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/json.h"

namespace iopfd {
namespace {

// Large enough that a monitor stream or a big GetStats reply takes few reads.
constexpr size_t kReadChunk = 64 * 1024;

}  // namespace

absl::StatusOr<VarlinkClient> VarlinkClient::Connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty()) return ErrnoStatus(EINVAL, "", "connect", "empty socket path");
  // sun_path needs room for the terminating NUL; a longer path would silently name another file.
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return ErrnoStatus(ENAMETOOLONG, socket_path, "connect");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, socket_path, "socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, socket_path, "connect");
  }
  return VarlinkClient(std::move(fd), socket_path);
}

VarlinkClient::VarlinkClient(UniqueFd fd, std::string peer)
    : fd_(std::move(fd)), peer_(std::move(peer)) {}

absl::Status VarlinkClient::Call(std::string_view method, const nlohmann::json& parameters,
                                 bool more) {
  if (!broken_.ok()) return broken_;
  if (!parameters.is_null() && !parameters.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("varlink call ", std::string(method), ": parameters must be an object"));
  }
  nlohmann::json call = nlohmann::json::object();
  call["method"] = std::string(method);
  call["parameters"] = parameters.is_null() ? nlohmann::json::object() : parameters;
  if (more) call["more"] = true;
  // Arguments come from the command line and need not be UTF-8; replacing bad bytes keeps dump()
  // from throwing, and the server then answers about a name that does not exist.
  std::string wire = call.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  wire.push_back('\0');
  size_t done = 0;
  while (done < wire.size()) {
    // MSG_NOSIGNAL: a daemon that went away must give EPIPE here, not kill the caller.
    ssize_t n = ::send(fd_.get(), wire.data() + done, wire.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, peer_, "send");
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<VarlinkReply> VarlinkClient::Next() {
  if (!broken_.ok()) return broken_;
  while (true) {
    size_t nul = buffer_.find('\0', scanned_);
    // npos is larger than any limit, so this also means "a NUL was found".
    if (nul <= kMaxMessageBytes) return TakeMessage(nul);
    if (nul != std::string::npos || buffer_.size() > kMaxMessageBytes) {
      broken_ = absl::DataLossError(
          absl::StrCat(peer_, ": reply larger than ", kMaxMessageBytes, " bytes"));
      buffer_.clear();
      return broken_;
    }
    scanned_ = buffer_.size();
    char chunk[kReadChunk];
    ssize_t n = ::read(fd_.get(), chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, peer_, "read");
    }
    if (n == 0) {
      if (buffer_.empty()) {
        return absl::UnavailableError(
            absl::StrCat(peer_, ": connection closed by the server without a reply"));
      }
      return absl::UnavailableError(absl::StrCat(peer_, ": connection closed by the server after ",
                                                 buffer_.size(), " bytes of a reply"));
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

absl::StatusOr<VarlinkReply> VarlinkClient::TakeMessage(size_t end) {
  // A daemon's reply is outside input too (a wrong or hostile socket): bounded like a call.
  absl::StatusOr<nlohmann::json> parsed = ParseJson(std::string_view(buffer_).substr(0, end));
  buffer_.erase(0, end + 1);
  scanned_ = 0;
  auto malformed = [this](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(peer_, ": malformed reply: ", what));
  };
  if (!parsed.ok()) return malformed(parsed.status().message());
  nlohmann::json& message = *parsed;
  if (!message.is_object()) return malformed("not a JSON object");
  VarlinkReply reply;
  if (auto it = message.find("parameters"); it != message.end() && !it->is_null()) {
    if (!it->is_object()) return malformed("\"parameters\" is not an object");
    reply.parameters = std::move(*it);
  }
  if (auto it = message.find("error"); it != message.end()) {
    if (!it->is_string() || it->get_ref<const std::string&>().empty()) {
      return malformed("\"error\" is not a non-empty string");
    }
    reply.error = it->get<std::string>();
  }
  if (auto it = message.find("continues"); it != message.end()) {
    if (!it->is_boolean()) return malformed("\"continues\" is not a boolean");
    reply.continues = it->get<bool>();
  }
  return reply;
}

}  // namespace iopfd
