#include "iopfd/control/varlink.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "iopfd/base/json.h"

namespace iopfd {

const char kVarlinkServiceDescription[] =
    "# The Varlink Service Interface is provided by every varlink service. It\n"
    "# describes the service and the interfaces it implements.\n"
    "interface org.varlink.service\n"
    "\n"
    "# Get a list of all the interfaces a service provides and information\n"
    "# about the implementation.\n"
    "method GetInfo() -> (\n"
    "  vendor: string,\n"
    "  product: string,\n"
    "  version: string,\n"
    "  url: string,\n"
    "  interfaces: []string\n"
    ")\n"
    "\n"
    "# Get the description of an interface that is implemented by this service.\n"
    "method GetInterfaceDescription(interface: string) -> (description: string)\n"
    "\n"
    "# The requested interface was not found.\n"
    "error InterfaceNotFound (interface: string)\n"
    "\n"
    "# The requested method was not found\n"
    "error MethodNotFound (method: string)\n"
    "\n"
    "# The interface defines the requested method, but the service does not\n"
    "# implement it.\n"
    "error MethodNotImplemented (method: string)\n"
    "\n"
    "# One of the passed parameters is invalid.\n"
    "error InvalidParameter (parameter: string)\n"
    "\n"
    "# Client is denied access\n"
    "error PermissionDenied ()\n"
    "\n"
    "# Method is expected to be called with 'more' set to true, but wasn't\n"
    "error ExpectedMore ()\n";

bool MessageFramer::Append(std::string_view bytes) {
  // Compact once the consumed prefix dominates, so a long-lived connection does not grow.
  if (start_ > 0 && start_ >= buffer_.size() / 2) {
    buffer_.erase(0, start_);
    start_ = 0;
  }
  buffer_.append(bytes);
  // Only the unfinished tail counts against the limit: complete messages are consumed next.
  size_t last_nul = buffer_.rfind('\0');
  size_t tail = last_nul == std::string::npos || last_nul < start_ ? buffer_.size() - start_
                                                                   : buffer_.size() - last_nul - 1;
  return tail <= max_message_;
}

std::optional<std::string> MessageFramer::Next() {
  size_t nul = buffer_.find('\0', start_);
  if (nul == std::string::npos) return std::nullopt;
  std::string msg = buffer_.substr(start_, nul - start_);
  start_ = nul + 1;
  if (start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  return msg;
}

absl::StatusOr<VarlinkCall> ParseCall(std::string_view message) {
  // Bounded nesting (json.h): a message that nests deeper is refused before any nested value
  // exists. nlohmann::json rejects invalid UTF-8 in strings as a parse error, which is what the
  // protocol wants: such a message is not a call.
  absl::StatusOr<nlohmann::json> parsed = ParseJson(message);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("message ", parsed.status().message()));
  }
  nlohmann::json& j = *parsed;
  if (!j.is_object()) return absl::InvalidArgumentError("message is not a JSON object");
  VarlinkCall call;
  auto method = j.find("method");
  if (method == j.end() || !method->is_string()) {
    return absl::InvalidArgumentError("message has no string \"method\"");
  }
  call.method = method->get<std::string>();
  if (auto p = j.find("parameters"); p != j.end() && !p->is_null()) {
    if (!p->is_object()) return absl::InvalidArgumentError("\"parameters\" is not an object");
    call.parameters = std::move(*p);
  }
  for (auto [key, field] : {std::pair{"oneway", &call.oneway}, std::pair{"more", &call.more},
                            std::pair{"upgrade", &call.upgrade}}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_boolean())
      return absl::InvalidArgumentError(std::string("\"") + key + "\" is not a boolean");
    *field = it->get<bool>();
  }
  return call;
}

std::string EncodeReply(const VarlinkReply& reply, bool continues) {
  nlohmann::json j = nlohmann::json::object();
  if (!reply.error.empty()) j["error"] = reply.error;
  // Parameters are left out when empty, the canonical encoding (receivers accept either).
  if (!reply.parameters.empty()) j["parameters"] = reply.parameters;
  if (continues) j["continues"] = true;
  std::string out =
      j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
  out.push_back('\0');
  return out;
}

bool Peer::RootOrIn(std::optional<gid_t> group) const {
  if (uid == 0) return true;
  if (!group.has_value()) return false;
  return gid == *group || std::find(groups.begin(), groups.end(), *group) != groups.end();
}

VarlinkService::VarlinkService(std::string vendor, std::string product, std::string version,
                               std::string url)
    : vendor_(std::move(vendor)),
      product_(std::move(product)),
      version_(std::move(version)),
      url_(std::move(url)) {
  AddInterface("org.varlink.service", kVarlinkServiceDescription);
  SetAccess("org.varlink.service.GetInfo", Access::kRead);
  SetAccess("org.varlink.service.GetInterfaceDescription", Access::kRead);
  AddMethod("org.varlink.service.GetInfo", {}, [this](const VarlinkCall&, const Peer&) {
    nlohmann::json names = nlohmann::json::array();
    for (const auto& [name, desc] : interfaces_) names.push_back(name);
    return VarlinkReply::Ok({{"vendor", vendor_},
                             {"product", product_},
                             {"version", version_},
                             {"url", url_},
                             {"interfaces", names}});
  });
  AddMethod(
      "org.varlink.service.GetInterfaceDescription", {"interface"},
      [this](const VarlinkCall& call, const Peer&) {
        auto it = call.parameters.find("interface");
        if (it == call.parameters.end() || !it->is_string()) {
          return VarlinkReply::Error("org.varlink.service.InvalidParameter",
                                     {{"parameter", "interface"}});
        }
        auto found = interfaces_.find(it->get<std::string>());
        if (found == interfaces_.end()) {
          return VarlinkReply::Error("org.varlink.service.InterfaceNotFound", {{"interface", *it}});
        }
        return VarlinkReply::Ok({{"description", found->second}});
      });
}

void VarlinkService::AddInterface(const std::string& name, std::string description) {
  interfaces_[name] = std::move(description);
}

void VarlinkService::AddMethod(const std::string& qualified, std::vector<std::string> params,
                               Handler handler) {
  methods_[qualified] = Method{std::move(params), std::move(handler), nullptr};
}

void VarlinkService::AddStreamingMethod(const std::string& qualified,
                                        std::vector<std::string> params, StreamHandler handler) {
  methods_[qualified] = Method{std::move(params), nullptr, std::move(handler)};
}

std::optional<Access> VarlinkService::AccessOf(const std::string& qualified) const {
  auto it = access_.find(qualified);
  if (it == access_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> VarlinkService::MethodNames() const {
  std::vector<std::string> out;
  out.reserve(methods_.size());
  for (const auto& [name, m] : methods_) out.push_back(name);
  return out;
}

void EventBus::Subscribe(std::shared_ptr<ReplyChannel> channel) {
  subscribers_.push_back(std::move(channel));
}

void EventBus::Publish(const std::string& event, const std::string& device,
                       const std::string& detail) {
  Publish(event, device, detail, nlohmann::json::object());
}

void EventBus::Publish(const std::string& event, const std::string& device,
                       const std::string& detail, const nlohmann::json& fields) {
  nlohmann::json params = fields.is_object() ? fields : nlohmann::json::object();
  params["event"] = event;
  if (!device.empty()) params["device"] = device;
  if (!detail.empty()) params["detail"] = detail;
  VarlinkReply reply = VarlinkReply::Ok(params);
  std::erase_if(subscribers_, [](const auto& c) { return !c->open(); });
  for (auto& c : subscribers_) c->Send(reply, /*continues=*/true);
}

void EventBus::Close(const std::string& event) {
  VarlinkReply reply = VarlinkReply::Ok({{"event", event}});
  for (auto& c : subscribers_) {
    if (c->open()) c->Send(reply, /*continues=*/false);
  }
  subscribers_.clear();
}

size_t EventBus::subscribers() {
  std::erase_if(subscribers_, [](const auto& c) { return !c->open(); });
  return subscribers_.size();
}

std::pair<VarlinkReply, bool> VarlinkService::Dispatch(
    const VarlinkCall& call, const Peer& peer, const std::shared_ptr<ReplyChannel>& channel) {
  auto it = methods_.find(call.method);
  if (it == methods_.end()) {
    size_t dot = call.method.rfind('.');
    std::string iface = dot == std::string::npos ? std::string() : call.method.substr(0, dot);
    if (interfaces_.count(iface) == 0) {
      return {VarlinkReply::Error("org.varlink.service.InterfaceNotFound", {{"interface", iface}}),
              false};
    }
    return {VarlinkReply::Error("org.varlink.service.MethodNotFound", {{"method", call.method}}),
            false};
  }
  const Method& m = it->second;
  const std::optional<Access> access = AccessOf(call.method);
  const bool allowed = !access.has_value()         ? peer.uid == 0
                       : *access == Access::kAdmin ? policy_.MayMutate(peer)
                                                   : policy_.MayRead(peer);
  if (!allowed) {
    return {VarlinkReply::Error("io.iopfd.PermissionDenied", {{"method", call.method}}), false};
  }
  for (const auto& item : call.parameters.items()) {
    if (std::find(m.params.begin(), m.params.end(), item.key()) == m.params.end()) {
      return {
          VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", item.key()}}),
          false};
    }
  }
  if (m.stream) {
    if (!call.more || call.oneway) {
      return {VarlinkReply::Error("org.varlink.service.ExpectedMore"), false};
    }
    if (channel == nullptr) {
      return {VarlinkReply::Error("org.varlink.service.MethodNotImplemented",
                                  {{"method", call.method}}),
              false};
    }
    VarlinkReply first = m.stream(call, peer, channel);
    return {first, first.error.empty()};
  }
  return {m.handler(call, peer), false};
}

std::string VarlinkService::Handle(std::string_view message, const Peer& peer, bool* close,
                                   const std::shared_ptr<ReplyChannel>& channel,
                                   std::vector<UniqueFd>* fds) {
  *close = false;
  auto call = ParseCall(message);
  std::vector<UniqueFd> none;
  if (call.ok()) call->fds = fds != nullptr ? fds : &none;
  if (!call.ok()) {
    // Not a call at all: nothing in it can be trusted, not even "oneway". Say why, then close.
    *close = true;
    return EncodeReply(VarlinkReply::Error("org.varlink.service.InvalidParameter",
                                           {{"parameter", std::string(call.status().message())}}));
  }
  if (call->upgrade) {
    // iopfd speaks nothing but Varlink on this socket.
    return EncodeReply(
        VarlinkReply::Error("org.varlink.service.InvalidParameter", {{"parameter", "upgrade"}}));
  }
  auto [reply, continues] = Dispatch(*call, peer, channel);
  if (call->oneway) return {};
  return EncodeReply(reply, continues);
}

}  // namespace iopfd
