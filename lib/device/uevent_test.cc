// The uevent parser against well-formed kernel messages (as lib/kobject_uevent.c builds them)
// and hostile ones, and the listener's rules for what it passes on.
#include "iopfd/device/uevent.h"

#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/service/log.h"

namespace iopfd {
namespace {

using ::testing::HasSubstr;

// "ACTION@DEVPATH\0" + each field + "\0", as the kernel lays a uevent out.
std::string Message(const std::string& header, const std::vector<std::string>& fields) {
  std::string m = header;
  m.push_back('\0');
  for (const std::string& f : fields) {
    m += f;
    m.push_back('\0');
  }
  return m;
}

std::string Remove(const std::string& devpath, const std::string& subsystem) {
  return Message("remove@" + devpath,
                 {"ACTION=remove", "DEVPATH=" + devpath, "SUBSYSTEM=" + subsystem, "SEQNUM=4711"});
}

// A string literal with its embedded NULs (and without the terminating one).
template <size_t N>
std::string Lit(const char (&s)[N]) {
  return std::string(s, N - 1);
}

absl::StatusOr<Uevent> Parse(const std::string& m) {
  return ParseUevent(std::span<const char>(m.data(), m.size()));
}

TEST(UeventParseTest, ARemoveOfTheSelfTestDevice) {
  auto ev = Parse(Remove("/devices/iommufd_mock3", "iommufd_mock"));
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_EQ(ev->action, "remove");
  EXPECT_EQ(ev->devpath, "/devices/iommufd_mock3");
  EXPECT_EQ(ev->subsystem, "iommufd_mock");
  EXPECT_EQ(ev->seqnum, 4711u);
  EXPECT_EQ(ev->Get("NOPE"), "");
}

TEST(UeventParseTest, PciErrorRecovery) {
  // drivers/pci/pci.h pci_uevent_ers: KOBJ_CHANGE with ERROR_EVENT and DEVICE_ONLINE.
  auto ev = Parse(Message("change@/devices/pci0000:00/0000:00:04.0",
                          {"ACTION=change", "DEVPATH=/devices/pci0000:00/0000:00:04.0",
                           "SUBSYSTEM=pci", "ERROR_EVENT=BEGIN_RECOVERY", "DEVICE_ONLINE=0",
                           "DRIVER=vfio-pci", "PCI_SLOT_NAME=0000:00:04.0", "SEQNUM=12"}));
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_EQ(ev->Get("ERROR_EVENT"), "BEGIN_RECOVERY");
  EXPECT_EQ(ev->Get("PCI_SLOT_NAME"), "0000:00:04.0");
  // A value may hold '=' and non-ASCII bytes (names); only control characters are refused.
  EXPECT_TRUE(Parse(Message("add@/devices/x", {"ACTION=add", "DEVPATH=/devices/x", "SUBSYSTEM=s",
                                               "SEQNUM=1", "NAME=a=b\xc3\xa9"}))
                  .ok());
}

TEST(UeventParseTest, HostileMessagesAreRefusedSayingWhatAndWhere) {
  const std::string ok_tail = Lit("ACTION=add\0DEVPATH=/d\0SUBSYSTEM=s\0SEQNUM=1\0");
  struct Case {
    std::string message;
    std::string error;
  };
  std::vector<Case> cases = {
      {"", "at byte 0: empty message"},
      {Lit("add@/d\0ACTION=add"), "at byte 16: not NUL-terminated"},
      {std::string(9000, 'A') + '\0', "at byte 8192: 9001 bytes, more than 8192"},
      {Lit("add/d\0") + ok_tail, "at byte 0: header is not ACTION@DEVPATH"},
      {Lit("explode@/d\0") + ok_tail, "at byte 0: unknown action 'explode'"},
      {Lit("add@d\0") + ok_tail, "at byte 4: DEVPATH in the header does not start"},
      {Lit("add@/d\x01\0") + ok_tail, "at byte 6: control character in the header"},
      {Lit("add@/d\0\0") + ok_tail, "at byte 7: empty field"},
      {Lit("add@/d\0NOEQUALS\0") + ok_tail, "at byte 7: field is not KEY=VALUE"},
      {Lit("add@/d\0=v\0") + ok_tail, "at byte 7: field is not KEY=VALUE"},
      {Lit("add@/d\0lower=v\0") + ok_tail, "at byte 7: key has characters other"},
      {Lit("add@/d\0K=a\nb\0") + ok_tail, "at byte 10: control character in the value of K"},
      {Lit("add@/d\0") + ok_tail + Lit("ACTION=add\0"), "duplicate key ACTION"},
      {Lit("add@/d\0ACTION=add\0DEVPATH=/d\0SEQNUM=1\0"), "no SUBSYSTEM"},
      {Lit("add@/d\0ACTION=remove\0DEVPATH=/d\0SUBSYSTEM=s\0SEQNUM=1\0"),
       "ACTION disagrees with the header"},
      {Lit("add@/e\0") + ok_tail, "DEVPATH disagrees with the header"},
      {Lit("add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=s\0SEQNUM=1x\0"),
       "SEQNUM is not a decimal number"},
      {Lit("add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=s\0SEQNUM=\0"), "empty SEQNUM"},
      {Lit("add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=\0SEQNUM=1\0"), "empty SUBSYSTEM"},
      {Lit("add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=s\0SEQNUM=99999999999999999999\0"),
       "SEQNUM is not a decimal number"},
      {Lit("add@/d\0") + std::string(65, 'K') + "=v" + '\0' + ok_tail,
       "at byte 7: key longer than 64"},
  };
  std::string many = Lit("add@/d\0") + ok_tail;
  for (int i = 0; i < 61; ++i) many += "K" + std::to_string(i) + "=v" + '\0';
  cases.push_back({many, "more than 64 fields"});
  for (const Case& c : cases) {
    auto ev = Parse(c.message);
    ASSERT_FALSE(ev.ok()) << c.error;
    EXPECT_EQ(ev.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(ev.status().message()), HasSubstr(c.error));
    EXPECT_THAT(std::string(ev.status().message()), ::testing::StartsWith("uevent: at byte "));
  }
}

TEST(UeventParseTest, RandomBytesNeverCrashAndValidOnesStayValid) {
  // Seeded, so a failure replays. Every mutation of a valid message either parses to a message
  // holding the four required keys or is refused; nothing reads out of bounds (ASan runs).
  std::mt19937_64 rng(20261124);
  const std::string base = Remove("/devices/iommufd_mock0", "iommufd_mock");
  int refused = 0, parsed = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string m = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (m.empty() ? 2 : rng() % 3) {
        case 0:
          m[rng() % m.size()] = static_cast<char>(rng());
          break;
        case 1:
          m.resize(rng() % (m.size() + 1));
          break;
        default:
          m.insert(rng() % (m.size() + 1), 1, static_cast<char>(rng()));
          break;
      }
    }
    auto ev = Parse(m);
    if (ev.ok()) {
      ++parsed;
      EXPECT_FALSE(ev->action.empty());
      EXPECT_EQ(ev->devpath.front(), '/');
      EXPECT_FALSE(ev->subsystem.empty());
    } else {
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(parsed, 0);  // mutations of a value's bytes keep it valid
}

class UeventListenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogSink([this](LogLevel, const std::string& line) { log_ += line + "\n"; });
    auto l = UeventListener::Open();
    // The socket needs nothing special (no privilege to listen to uevents).
    ASSERT_TRUE(l.ok()) << l.status();
    listener_ = *std::move(l);
    listener_->on_uevent = [this](const Uevent& ev) { seen_.push_back(ev.action + ev.devpath); };
  }
  void TearDown() override { SetLogSink(nullptr); }
  void Deliver(const std::string& m, uint32_t port = 0, bool truncated = false) {
    listener_->Deliver(std::span<const char>(m.data(), m.size()), port, truncated);
  }
  std::unique_ptr<UeventListener> listener_;
  std::vector<std::string> seen_;
  std::string log_;
};

TEST_F(UeventListenerTest, PassesOnTheKernelsAndCountsWhatItDrops) {
  Deliver(Remove("/devices/iommufd_mock1", "iommufd_mock"));
  Deliver(Remove("/devices/iommufd_mock2", "iommufd_mock"), /*port=*/4242);  // a process
  Deliver(Remove("/devices/iommufd_mock3", "iommufd_mock"), 0, /*truncated=*/true);
  Deliver(Lit("remove@/devices/x\0ACTION=remove\0"));  // no DEVPATH...
  EXPECT_EQ(seen_, std::vector<std::string>{"remove/devices/iommufd_mock1"});
  const UeventListener::Counters& c = listener_->counters();
  EXPECT_EQ(c.received, 4u);
  EXPECT_EQ(c.delivered, 1u);
  EXPECT_EQ(c.foreign, 1u);
  EXPECT_EQ(c.malformed, 2u);
  EXPECT_THAT(log_, HasSubstr("uevent from netlink port 4242 (not the kernel): dropped"));
  EXPECT_THAT(log_, HasSubstr("(truncated): dropped"));
  EXPECT_THAT(log_, HasSubstr("uevent: at byte 32: no DEVPATH: dropped"));
}

}  // namespace
}  // namespace iopfd
