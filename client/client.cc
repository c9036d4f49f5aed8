// libiopfd-client: the implementation behind iopfd-client.h. Self-contained on purpose (libc and
// the header-only nlohmann-json, nothing of iopfd's own libraries): a VMM links one small
// shared library whose only run-time dependency beyond libc is libstdc++.
//
// Varlink framing: each message is a JSON object followed by a NUL byte on the stream socket;
// descriptors travel as SCM_RIGHTS with the call's first bytes.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "iopfd-client.h"
#include "nlohmann/json.hpp"

#define IOPFD_EXPORT __attribute__((visibility("default")))

using Json = nlohmann::json;

struct iopfd_client {
  int fd = -1;
  std::string peer;
  std::string buffer;  // bytes read past the last reply
  std::string error;
  std::string error_name;
  std::string scratch;  // returned strings live here until the next call
};

namespace {

// The largest reply accepted: anything bigger is a broken or hostile peer.
constexpr size_t kMaxReply = size_t{16} << 20;

thread_local std::string t_connect_error;

int Fail(iopfd_client* c, int result, std::string message, std::string name = "") {
  c->error = std::move(message);
  c->error_name = std::move(name);
  return result;
}

int ErrnoFail(iopfd_client* c, int result, const char* what, int err) {
  return Fail(
      c, result,
      c->peer + ": " + what + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")");
}

void CopyString(char* dst, size_t len, const std::string& s) {
  if (dst == nullptr || len == 0) return;
  const size_t n = std::min(len - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

std::string Str(const Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

uint64_t U64(const Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

// Sends one message, with fds attached to its first bytes.
int Send(iopfd_client* c, const std::string& wire, const std::vector<int>& fds) {
  size_t done = 0;
  while (done < wire.size()) {
    iovec iov{const_cast<char*>(wire.data() + done), wire.size() - done};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control;
    if (done == 0 && !fds.empty()) {
      control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    }
    // MSG_NOSIGNAL: iopfd going away must be EPIPE here, not a signal killing the VMM.
    ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoFail(c, IOPFD_E_IO, "send", errno);
    }
    done += static_cast<size_t>(n);
  }
  return IOPFD_OK;
}

// Reads the next reply: its parameters into *params, or IOPFD_E_DAEMON with its error name.
int Receive(iopfd_client* c, Json* params) {
  size_t nul;
  while ((nul = c->buffer.find('\0')) == std::string::npos) {
    if (c->buffer.size() > kMaxReply) {
      return Fail(c, IOPFD_E_PROTOCOL, c->peer + ": a reply larger than 16 MiB");
    }
    char chunk[65536];
    ssize_t n = recv(c->fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoFail(c, IOPFD_E_IO, "recv", errno);
    if (n == 0) {
      return Fail(c, IOPFD_E_IO,
                  c->peer + ": iopfd closed the connection" +
                      (c->buffer.empty() ? "" : " in the middle of a reply"));
    }
    c->buffer.append(chunk, static_cast<size_t>(n));
  }
  Json reply = Json::parse(c->buffer.begin(), c->buffer.begin() + static_cast<std::ptrdiff_t>(nul),
                           nullptr, /*allow_exceptions=*/false);
  c->buffer.erase(0, nul + 1);
  if (!reply.is_object()) return Fail(c, IOPFD_E_PROTOCOL, c->peer + ": a reply that is not JSON");
  auto p = reply.find("parameters");
  *params = p != reply.end() && p->is_object() ? *p : Json::object();
  auto e = reply.find("error");
  if (e != reply.end()) {
    if (!e->is_string()) return Fail(c, IOPFD_E_PROTOCOL, c->peer + ": an error without a name");
    std::string message = e->get<std::string>();
    for (const auto& [k, v] : params->items()) {
      message += " " + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
    }
    return Fail(c, IOPFD_E_DAEMON, message, e->get<std::string>());
  }
  return IOPFD_OK;
}

int Call(iopfd_client* c, const char* method, const Json& params, Json* reply,
         const std::vector<int>& fds = {}) {
  if (c == nullptr) return IOPFD_E_INVALID;
  c->error.clear();
  c->error_name.clear();
  if (c->fd < 0) return Fail(c, IOPFD_E_IO, "the connection is closed");
  // Replace invalid UTF-8 (a device name from a command line): iopfd then answers about a name
  // that does not exist instead of the call failing here.
  std::string wire = Json{{"method", method}, {"parameters", params}}.dump(
      -1, ' ', false, Json::error_handler_t::replace);
  wire.push_back('\0');
  if (int rc = Send(c, wire, fds); rc != IOPFD_OK) return rc;
  Json ignored;
  return Receive(c, reply != nullptr ? reply : &ignored);
}

// Calls that may throw (allocation) end here: no C++ exception crosses into C.
template <typename F>
int Guard(iopfd_client* c, F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return c != nullptr ? Fail(c, IOPFD_E_NOMEM, "out of memory") : IOPFD_E_NOMEM;
  } catch (const std::exception& e) {
    return c != nullptr ? Fail(c, IOPFD_E_PROTOCOL, std::string("unexpected reply: ") + e.what())
                        : IOPFD_E_PROTOCOL;
  }
}

int StateCall(iopfd_client* c, const char* method, const char* device, const Json& extra,
              iopfd_device_state* out) {
  if (c == nullptr) return IOPFD_E_INVALID;
  if (device == nullptr) return Fail(c, IOPFD_E_INVALID, std::string(method) + ": no device");
  return Guard(c, [&]() -> int {
    Json params = extra;
    params["device"] = device;
    Json reply;
    int rc = Call(c, method, params, &reply);
    if (rc == IOPFD_OK && out != nullptr) {
      CopyString(out->state, sizeof(out->state), Str(reply, "state"));
      out->epoch = U64(reply, "epoch");
    }
    return rc;
  });
}

bool Transient(const char* state) {
  return std::strcmp(state, "flushing") == 0 || std::strcmp(state, "resetting") == 0 ||
         std::strcmp(state, "resuming") == 0;
}

}  // namespace

extern "C" {

IOPFD_EXPORT int iopfd_client_connect(const char* socket_path, iopfd_client** out) {
  if (out == nullptr) return IOPFD_E_INVALID;
  *out = nullptr;
  t_connect_error.clear();
  const std::string path = socket_path != nullptr ? socket_path : IOPFD_CLIENT_DEFAULT_SOCKET;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    t_connect_error = "'" + path + "' is not a Unix socket path (empty, or over 107 bytes)";
    return IOPFD_E_INVALID;
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  auto* c = new (std::nothrow) iopfd_client;
  if (c == nullptr) return IOPFD_E_NOMEM;
  c->peer = path;
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0 || connect(c->fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    t_connect_error = path + ": connect: " + std::strerror(err) + " (errno " + std::to_string(err) +
                      ")" + (err == ENOENT ? ": is iopfd running?" : "") +
                      (err == EACCES ? ": root, or a group of iopfd.toml's [control]" : "");
    iopfd_client_close(c);
    return IOPFD_E_CONNECT;
  }
  *out = c;
  return IOPFD_OK;
}

IOPFD_EXPORT const char* iopfd_client_connect_error(void) { return t_connect_error.c_str(); }

IOPFD_EXPORT void iopfd_client_close(iopfd_client* client) {
  if (client == nullptr) return;
  if (client->fd >= 0) close(client->fd);
  delete client;
}

IOPFD_EXPORT const char* iopfd_client_error(const iopfd_client* client) {
  return client != nullptr ? client->error.c_str() : "no client";
}

IOPFD_EXPORT const char* iopfd_client_error_name(const iopfd_client* client) {
  return client != nullptr ? client->error_name.c_str() : "";
}

IOPFD_EXPORT int iopfd_client_fd(const iopfd_client* client) {
  return client != nullptr ? client->fd : -1;
}

IOPFD_EXPORT int iopfd_client_adopt(iopfd_client* client, const char* config,
                                    const struct iopfd_fd* fds, size_t nfds, char* name_out,
                                    size_t name_len) {
  if (client == nullptr) return IOPFD_E_INVALID;
  if (config == nullptr || (nfds != 0 && fds == nullptr) || nfds > 253) {
    return Fail(client, IOPFD_E_INVALID,
                "adopt: no config, or fds do not match nfds (at most 253)");
  }
  return Guard(client, [&]() -> int {
    Json names = Json::array();
    std::vector<int> raw;
    for (size_t i = 0; i < nfds; ++i) {
      if (fds[i].name == nullptr || fds[i].fd < 0) {
        return Fail(client, IOPFD_E_INVALID,
                    "adopt: fds[" + std::to_string(i) + "] has no name or no descriptor");
      }
      names.push_back(fds[i].name);
      raw.push_back(fds[i].fd);
    }
    Json reply;
    int rc = Call(client, "io.iopfd.Adopt", {{"config", config}, {"fds", names}}, &reply, raw);
    if (rc == IOPFD_OK) CopyString(name_out, name_len, Str(reply, "name"));
    return rc;
  });
}

IOPFD_EXPORT int iopfd_client_detach(iopfd_client* client, const char* device,
                                     uint64_t* groups_answered, uint64_t* outstanding) {
  if (client == nullptr) return IOPFD_E_INVALID;
  if (device == nullptr) return Fail(client, IOPFD_E_INVALID, "detach: no device");
  return Guard(client, [&]() -> int {
    Json reply;
    int rc = Call(client, "io.iopfd.Detach", {{"device", device}}, &reply);
    if (rc == IOPFD_OK) {
      const Json stats = reply.value("stats", Json::object());
      if (groups_answered != nullptr) {
        *groups_answered = U64(stats, "responses_success") + U64(stats, "responses_invalid");
      }
      if (outstanding != nullptr) *outstanding = U64(stats, "outstanding");
    }
    return rc;
  });
}

IOPFD_EXPORT int iopfd_client_drain(iopfd_client* client, const char* device, uint32_t pasid,
                                    struct iopfd_device_state* state) {
  Json extra = Json::object();
  if (pasid != 0) extra["pasid"] = pasid;
  return StateCall(client, "io.iopfd.Drain", device, extra, state);
}

IOPFD_EXPORT int iopfd_client_halt(iopfd_client* client, const char* device,
                                   struct iopfd_device_state* state) {
  return StateCall(client, "io.iopfd.Halt", device, Json::object(), state);
}

IOPFD_EXPORT int iopfd_client_resume(iopfd_client* client, const char* device,
                                     struct iopfd_device_state* state) {
  return StateCall(client, "io.iopfd.Resume", device, Json::object(), state);
}

IOPFD_EXPORT int iopfd_client_reset(iopfd_client* client, const char* device,
                                    struct iopfd_device_state* state) {
  return StateCall(client, "io.iopfd.Reset", device, Json::object(), state);
}

IOPFD_EXPORT int iopfd_client_get_device(iopfd_client* client, const char* device,
                                         struct iopfd_device_info* info) {
  if (client == nullptr) return IOPFD_E_INVALID;
  if (device == nullptr) return Fail(client, IOPFD_E_INVALID, "get_device: no device");
  return Guard(client, [&]() -> int {
    Json reply;
    int rc = Call(client, "io.iopfd.ListDevices", Json::object(), &reply);
    if (rc != IOPFD_OK) return rc;
    for (const Json& d : reply.value("devices", Json::array())) {
      if (!d.is_object() || Str(d, "name") != device) continue;
      if (info != nullptr) {
        std::memset(info, 0, sizeof(*info));
        CopyString(info->name, sizeof(info->name), Str(d, "name"));
        CopyString(info->attach, sizeof(info->attach), Str(d, "attach"));
        CopyString(info->origin, sizeof(info->origin), Str(d, "origin"));
        CopyString(info->state.state, sizeof(info->state.state), Str(d, "state"));
        info->state.epoch = U64(d, "epoch");
        const Json counters = d.value("counters", Json::object());
        info->records = U64(counters, "records");
        info->groups = U64(counters, "groups");
        info->success = U64(counters, "success");
        info->invalid = U64(counters, "invalid");
        info->outstanding = U64(counters, "outstanding");
      }
      return IOPFD_OK;
    }
    // The name ListDevices would give, so callers test one error name whichever call failed.
    return Fail(client, IOPFD_E_DAEMON, std::string("io.iopfd.NoSuchDevice device=") + device,
                "io.iopfd.NoSuchDevice");
  });
}

IOPFD_EXPORT int iopfd_client_wait_settled(iopfd_client* client, const char* device, int timeout_ms,
                                           struct iopfd_device_state* state) {
  iopfd_device_info info{};
  for (int waited = 0;; waited += 20) {
    if (int rc = iopfd_client_get_device(client, device, &info); rc != IOPFD_OK) return rc;
    if (state != nullptr) *state = info.state;
    if (!Transient(info.state.state)) return IOPFD_OK;
    if (waited >= timeout_ms) {
      return Fail(client, IOPFD_E_TIMEOUT,
                  std::string(device) + " still " + info.state.state + " after " +
                      std::to_string(timeout_ms) + " ms");
    }
    poll(nullptr, 0, 20);
  }
}

IOPFD_EXPORT int iopfd_client_get_status(iopfd_client* client, struct iopfd_status* status) {
  if (client == nullptr) return IOPFD_E_INVALID;
  return Guard(client, [&]() -> int {
    Json reply;
    int rc = Call(client, "io.iopfd.GetStatus", Json::object(), &reply);
    if (rc == IOPFD_OK && status != nullptr) {
      std::memset(status, 0, sizeof(*status));
      CopyString(status->version, sizeof(status->version), Str(reply, "version"));
      CopyString(status->health, sizeof(status->health), Str(reply, "health"));
      status->uptime_usec = U64(reply, "uptime_usec");
      status->devices_configured = static_cast<uint32_t>(U64(reply, "devices_configured"));
      status->devices_running = static_cast<uint32_t>(U64(reply, "devices_running"));
      status->devices_adopted = static_cast<uint32_t>(U64(reply, "devices_adopted"));
      status->devices_quarantined = static_cast<uint32_t>(U64(reply, "devices_quarantined"));
    }
    return rc;
  });
}

IOPFD_EXPORT int iopfd_client_call(iopfd_client* client, const char* method,
                                   const char* parameters_json, char** reply_json) {
  if (client == nullptr) return IOPFD_E_INVALID;
  if (reply_json != nullptr) *reply_json = nullptr;
  if (method == nullptr) return Fail(client, IOPFD_E_INVALID, "call: no method");
  return Guard(client, [&]() -> int {
    Json params = Json::object();
    if (parameters_json != nullptr) {
      params = Json::parse(parameters_json, nullptr, /*allow_exceptions=*/false);
      if (!params.is_object()) {
        return Fail(client, IOPFD_E_INVALID, "call: the parameters are not a JSON object");
      }
    }
    Json reply;
    int rc = Call(client, method, params, &reply);
    if (rc == IOPFD_OK && reply_json != nullptr) {
      const std::string text = reply.dump(-1, ' ', false, Json::error_handler_t::replace);
      *reply_json = strdup(text.c_str());
      if (*reply_json == nullptr) return Fail(client, IOPFD_E_NOMEM, "out of memory");
    }
    return rc;
  });
}

IOPFD_EXPORT void iopfd_client_free(char* p) { free(p); }

IOPFD_EXPORT const char* iopfd_client_result_name(int result) {
  switch (result) {
    case IOPFD_OK:
      return "IOPFD_OK";
    case IOPFD_E_CONNECT:
      return "IOPFD_E_CONNECT";
    case IOPFD_E_IO:
      return "IOPFD_E_IO";
    case IOPFD_E_PROTOCOL:
      return "IOPFD_E_PROTOCOL";
    case IOPFD_E_DAEMON:
      return "IOPFD_E_DAEMON";
    case IOPFD_E_INVALID:
      return "IOPFD_E_INVALID";
    case IOPFD_E_NOMEM:
      return "IOPFD_E_NOMEM";
    case IOPFD_E_TIMEOUT:
      return "IOPFD_E_TIMEOUT";
    default:
      return "unknown";
  }
}

}  // extern "C"
