// The Varlink protocol (varlink.org) as iopfd's control socket speaks it: NUL-terminated JSON
// messages on a Unix stream socket, calls dispatched to registered methods, the standard
// org.varlink.service interface, and per-method authorization.
#ifndef IOPFD_CONTROL_VARLINK_H_
#define IOPFD_CONTROL_VARLINK_H_

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "iopfd/base/fd.h"
#include "nlohmann/json.hpp"

namespace iopfd {

// Splits a byte stream into messages at NUL bytes, holding at most max_message bytes of one
// unfinished message.
class MessageFramer {
 public:
  explicit MessageFramer(size_t max_message) : max_message_(max_message) {}
  // Appends received bytes. Returns false when a message grew past max_message without its NUL:
  // the stream can no longer be trusted and the connection must be closed.
  bool Append(std::string_view bytes);
  // Returns the next complete message without its NUL, or nullopt when none is complete.
  std::optional<std::string> Next();
  // Returns the bytes held for unfinished or unread messages.
  size_t buffered() const { return buffer_.size() - start_; }

 private:
  size_t max_message_;
  std::string buffer_;
  size_t start_ = 0;  // first byte not yet returned by Next()
};

struct VarlinkCall {
  std::string method;  // "interface.Method"
  nlohmann::json parameters = nlohmann::json::object();
  bool oneway = false;
  bool more = false;
  bool upgrade = false;
  // File descriptors that came with the message (SCM_RIGHTS), in order; a handler that uses
  // them moves them out. Whatever is left is closed once the call is answered. Never null
  // inside a handler.
  std::vector<UniqueFd>* fds = nullptr;
};

// Parses one message as a call. InvalidArgument when it is not JSON (including invalid UTF-8),
// not an object, has no string "method", or has fields of the wrong type; the message names
// the problem.
absl::StatusOr<VarlinkCall> ParseCall(std::string_view message);

// A method's answer: parameters, or an error name with its parameters.
struct VarlinkReply {
  nlohmann::json parameters = nlohmann::json::object();
  std::string error;  // empty for success
  // Returns a successful reply carrying params (a JSON object).
  static VarlinkReply Ok(nlohmann::json params = nlohmann::json::object()) {
    VarlinkReply r;
    r.parameters = std::move(params);
    return r;
  }
  // Returns the error `name` ("interface.Error") with its parameters.
  static VarlinkReply Error(std::string name, nlohmann::json params = nlohmann::json::object()) {
    VarlinkReply r;
    r.parameters = std::move(params);
    r.error = std::move(name);
    return r;
  }
};

// Returns the wire form of a reply, with its terminating NUL. `continues` marks a reply of a
// "more" call that will be followed by others.
std::string EncodeReply(const VarlinkReply& reply, bool continues = false);

// Where the later replies of a streaming call ("more") go once its handler has returned. The
// connection owns the other end; once it is gone, Send does nothing and open() is false.
class ReplyChannel {
 public:
  virtual ~ReplyChannel() = default;
  // Queues reply; `continues` keeps the call open for more.
  virtual void Send(const VarlinkReply& reply, bool continues) = 0;
  virtual bool open() const = 0;
};

// The subscribers of a stream of events (io.iopfd.Monitor). Not thread-safe: used from the
// loop's thread only.
class EventBus {
 public:
  // Adds a subscriber; it is dropped once its channel closes.
  void Subscribe(std::shared_ptr<ReplyChannel> channel);
  // Sends {"event", "device"?, "detail"?} to every open subscriber, keeping the stream open.
  void Publish(const std::string& event, const std::string& device = {},
               const std::string& detail = {});
  // The same with more fields (an object, merged into the event's parameters).
  void Publish(const std::string& event, const std::string& device, const std::string& detail,
               const nlohmann::json& fields);
  // Ends every stream with a last reply carrying `event`.
  void Close(const std::string& event);
  // Returns the number of open subscribers.
  size_t subscribers();

 private:
  std::vector<std::shared_ptr<ReplyChannel>> subscribers_;
};

// Who is calling, from SO_PEERCRED and SO_PEERGROUPS.
struct Peer {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  std::vector<gid_t> groups;  // supplementary groups
  // Returns true when the peer is root or has gid as its primary or a supplementary group.
  bool RootOrIn(std::optional<gid_t> gid) const;
};

// Who may call a method.
enum class Access {
  kRead,   // root, the control group and the admin group: the method changes nothing
  kAdmin,  // root and the admin group
};

// Which peers are in which group. An unset group admits nobody but root.
struct AccessPolicy {
  std::optional<gid_t> control_group;
  std::optional<gid_t> admin_group;
  bool MayRead(const Peer& p) const { return p.RootOrIn(control_group) || p.RootOrIn(admin_group); }
  bool MayMutate(const Peer& p) const { return p.RootOrIn(admin_group); }
};

// A set of interfaces and their methods. Dispatch is synchronous: a handler returns its reply.
class VarlinkService {
 public:
  using Handler = std::function<VarlinkReply(const VarlinkCall&, const Peer&)>;
  // A method whose replies may come later, through the channel. It runs only for calls with
  // "more" (others get org.varlink.service.ExpectedMore); its return value is sent at once with
  // "continues" set.
  using StreamHandler =
      std::function<VarlinkReply(const VarlinkCall&, const Peer&, std::shared_ptr<ReplyChannel>)>;

  // vendor, product, version and url are what org.varlink.service.GetInfo returns.
  VarlinkService(std::string vendor, std::string product, std::string version, std::string url);

  // Registers an interface and its description (the .varlink text GetInterfaceDescription
  // returns). Its methods are added with AddMethod.
  void AddInterface(const std::string& name, std::string description);
  // Registers "interface.Method". `params` lists the parameter names the method accepts: any
  // other is refused with org.varlink.service.InvalidParameter before the handler runs. Who may
  // call it is SetAccess's: a method without an access entry is refused (io.iopfd.
  // PermissionDenied) to every peer but root, so a method added without deciding who may call
  // it is closed, not open.
  void AddMethod(const std::string& qualified, std::vector<std::string> params, Handler handler);
  // Registers a streaming method (see StreamHandler); otherwise like AddMethod.
  void AddStreamingMethod(const std::string& qualified, std::vector<std::string> params,
                          StreamHandler handler);
  // Sets who may call the method `qualified` (registered or not yet).
  void SetAccess(const std::string& qualified, Access access) { access_[qualified] = access; }
  // Returns the access entry of a method, or nullopt when it has none (root only).
  std::optional<Access> AccessOf(const std::string& qualified) const;
  // Returns the names of every registered method, sorted.
  std::vector<std::string> MethodNames() const;
  void set_policy(AccessPolicy policy) { policy_ = policy; }

  // Handles one message and returns the bytes to send back (empty for "oneway" calls). Sets
  // *close when the message was not a valid call at all (not JSON, not an object): the
  // connection is then closed after the returned error, if any, is sent. `channel` is the
  // connection's, for streaming methods (without one they answer MethodNotImplemented). `fds`
  // are the descriptors that came with the message (may be null); the method may take them.
  std::string Handle(std::string_view message, const Peer& peer, bool* close,
                     const std::shared_ptr<ReplyChannel>& channel = nullptr,
                     std::vector<UniqueFd>* fds = nullptr);

 private:
  struct Method {
    std::vector<std::string> params;
    Handler handler;
    StreamHandler stream;
  };
  // Returns the reply and whether it continues (a stream's first reply).
  std::pair<VarlinkReply, bool> Dispatch(const VarlinkCall& call, const Peer& peer,
                                         const std::shared_ptr<ReplyChannel>& channel);

  std::string vendor_, product_, version_, url_;
  std::map<std::string, std::string> interfaces_;  // name -> description
  std::map<std::string, Method> methods_;          // "interface.Method" -> method
  std::map<std::string, Access> access_;           // "interface.Method" -> who may call it
  AccessPolicy policy_;
};

// The description of org.varlink.service, served by GetInterfaceDescription.
extern const char kVarlinkServiceDescription[];

}  // namespace iopfd

#endif  // IOPFD_CONTROL_VARLINK_H_
