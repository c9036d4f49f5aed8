// Kernel uevents (NETLINK_KOBJECT_UEVENT): what iopfd hears about the devices it serves being
// removed, unbound or going through PCI error recovery (docs/KERNEL_FACTS.md section 7).
#ifndef IOPFD_DEVICE_UEVENT_H_
#define IOPFD_DEVICE_UEVENT_H_

#include <linux/netlink.h>
#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "iopfd/loop/ring.h"

struct nl_sock;

namespace iopfd {

// One kernel uevent. lib/kobject_uevent.c sends "ACTION@DEVPATH\0" and then KEY=VALUE\0 pairs,
// always with ACTION, DEVPATH, SUBSYSTEM and SEQNUM.
struct Uevent {
  std::string action;     // add, remove, change, move, online, offline, bind, unbind
  std::string devpath;    // below /sys: "/devices/pci0000:00/0000:00:04.0"
  std::string subsystem;  // "pci", "iommufd_mock", ...
  uint64_t seqnum = 0;
  std::map<std::string, std::string> env;  // every KEY=VALUE, the four above included
  // Returns env[key], or "" when absent.
  std::string Get(const std::string& key) const {
    auto it = env.find(key);
    return it == env.end() ? std::string() : it->second;
  }
};

// The largest message accepted (the kernel's env buffer is 2048 bytes, UEVENT_BUFFER_SIZE,
// plus the header).
inline constexpr size_t kMaxUeventBytes = 8192;

// Parses one message strictly. Errors (InvalidArgument) say what is wrong and at which byte
// offset: not NUL-terminated, too long, a header that is not ACTION@/DEVPATH with a known
// action, an empty field, a field that is not KEY=VALUE with KEY of [A-Z0-9_] (at most 64) or a
// value with control characters, a duplicate key, more than 64 fields, a missing ACTION,
// DEVPATH, SUBSYSTEM or SEQNUM, a header that disagrees with them, a SEQNUM not a decimal
// number.
absl::StatusOr<Uevent> ParseUevent(std::span<const char> message);

// Receives the kernel's uevents on the fault loop's ring and hands each valid one on. The
// socket is made with libnl and joins multicast group 1 (the kernel's; udev rebroadcasts on
// group 2 are not heard). A message whose sender is not the kernel (netlink port id 0) is
// dropped and counted, as is every malformed one, with a log line saying why.
class UeventListener : public RingClient {
 public:
  // Opens and binds the socket. Errors name the libnl call and its error text.
  static absl::StatusOr<std::unique_ptr<UeventListener>> Open();
  ~UeventListener() override;
  UeventListener(const UeventListener&) = delete;
  UeventListener& operator=(const UeventListener&) = delete;

  // Called for every valid kernel uevent, from the loop's thread (a client completion: it may
  // add and remove devices).
  std::function<void(const Uevent&)> on_uevent;

  struct Counters {
    uint64_t received = 0;   // messages read
    uint64_t delivered = 0;  // valid kernel uevents handed to on_uevent
    uint64_t malformed = 0;  // dropped: ParseUevent refused them, or truncated
    uint64_t foreign = 0;    // dropped: not sent by the kernel
    uint64_t overruns = 0;   // ENOBUFS: the socket buffer overflowed and uevents were lost
    uint64_t synthetic = 0;  // synthetic (SYNTH_UUID: a write to a uevent file), passed on
  };
  // Returns false once the socket failed for good and nothing more is read.
  bool listening() const { return !broken_; }
  const Counters& counters() const { return counters_; }

  // Handles one received message as OnCompletion does (for tests): `sender_port` is the
  // netlink port id of the sender (0: the kernel), `truncated` whether MSG_TRUNC was set.
  void Deliver(std::span<const char> message, uint32_t sender_port, bool truncated);

  // RingClient.
  void Start(Ring& loop) override;
  void OnCompletion(Ring& loop, RingOp& op, int res) override;
  void Flush(Ring& /*loop*/) override {}
  void Stop(Ring& loop) override;
  bool Busy() const override { return op_.in_flight || cancel_.in_flight; }

 private:
  explicit UeventListener(nl_sock* sock);
  void Arm(Ring& loop);

  nl_sock* sock_;
  int fd_;
  RingOp op_;
  RingOp cancel_;
  bool stopping_ = false;
  bool broken_ = false;
  Counters counters_;
  alignas(8) char buf_[kMaxUeventBytes]{};
  sockaddr_nl from_{};
  iovec iov_{};
  msghdr msg_{};
};

}  // namespace iopfd

#endif  // IOPFD_DEVICE_UEVENT_H_
