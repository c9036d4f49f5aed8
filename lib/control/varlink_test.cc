#include "iopfd/control/varlink.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using namespace std::string_literals;  // NOLINT(google-build-using-namespace): "..."s keeps NULs

std::string Msg(const json& j) { return j.dump() + std::string(1, '\0'); }

TEST(MessageFramerTest, SplitsCoalescedAndSplitMessages) {
  MessageFramer f(1024);
  ASSERT_TRUE(f.Append("{\"a\":1}\0{\"b\""s));
  EXPECT_EQ(f.Next(), "{\"a\":1}");
  EXPECT_EQ(f.Next(), std::nullopt);
  ASSERT_TRUE(f.Append(":2}\0{}\0"s));
  EXPECT_EQ(f.Next(), "{\"b\":2}");
  EXPECT_EQ(f.Next(), "{}");
  EXPECT_EQ(f.Next(), std::nullopt);
  EXPECT_EQ(f.buffered(), 0u);
}

TEST(MessageFramerTest, ByteByByte) {
  MessageFramer f(1024);
  std::string wire = Msg({{"method", "x.Y"}});
  for (char c : wire) ASSERT_TRUE(f.Append(std::string(1, c)));
  EXPECT_EQ(f.Next(), "{\"method\":\"x.Y\"}");
}

TEST(MessageFramerTest, OversizedUnfinishedMessageIsRefused) {
  MessageFramer f(8);
  EXPECT_TRUE(f.Append("12345678"));
  EXPECT_FALSE(f.Append("9"));
  MessageFramer g(8);
  // Complete messages do not count against the limit, only the unfinished tail does.
  EXPECT_TRUE(
      g.Append(std::string("1234567\0"
                           "1234567\0"
                           "12",
                           18)));
  EXPECT_EQ(g.Next(), "1234567");
}

TEST(ParseCallTest, AcceptsCallsAndNullParameters) {
  auto c = ParseCall(R"({"method":"io.iopfd.GetStats","parameters":{"device":"d"},"more":true})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->method, "io.iopfd.GetStats");
  EXPECT_EQ(c->parameters["device"], "d");
  EXPECT_TRUE(c->more);
  EXPECT_FALSE(c->oneway);
  auto n = ParseCall(R"({"method":"a.B","parameters":null,"oneway":null})");
  ASSERT_TRUE(n.ok());
  EXPECT_TRUE(n->parameters.is_object());
}

TEST(ParseCallTest, RefusesWhatIsNotACall) {
  for (const char* bad : {"", "nonsense", "[1,2]", "{}", R"({"method":3})",
                          R"({"method":"a.B","parameters":[]})", R"({"method":"a.B","more":"yes"})",
                          "{\"method\":\"a.B\",\"parameters\":{\"x\":\"\xff\xfe\"}}"}) {
    EXPECT_FALSE(ParseCall(bad).ok()) << bad;
  }
}

class ServiceTest : public ::testing::Test {
 protected:
  ServiceTest() : service_("iopfd", "iopfd", "1.2.3", "https://example.invalid/iopfd") {
    service_.AddInterface("io.test", "interface io.test\nmethod Read() -> ()\n");
    service_.SetAccess("io.test.Read", Access::kRead);
    service_.SetAccess("io.test.Write", Access::kAdmin);
    service_.AddMethod("io.test.Read", {"device"}, [](const VarlinkCall& c, const Peer&) {
      return VarlinkReply::Ok({{"echo", c.parameters.value("device", "")}});
    });
    service_.AddMethod("io.test.Write", {},
                       [](const VarlinkCall&, const Peer&) { return VarlinkReply::Ok(); });
    service_.set_policy({.control_group = 100, .admin_group = 200});
  }
  json Call(const json& msg, const Peer& peer, bool* close = nullptr) {
    bool c = false;
    std::string out = service_.Handle(msg.dump(), peer, &c);
    if (close) *close = c;
    if (out.empty()) return nullptr;
    EXPECT_EQ(out.back(), '\0');
    out.pop_back();
    return json::parse(out);
  }
  VarlinkService service_;
  Peer root_{.pid = 1, .uid = 0, .gid = 0, .groups = {}};
};

TEST_F(ServiceTest, GetInfoListsInterfaces) {
  json r = Call({{"method", "org.varlink.service.GetInfo"}}, root_);
  EXPECT_EQ(r["parameters"]["product"], "iopfd");
  EXPECT_EQ(r["parameters"]["version"], "1.2.3");
  EXPECT_THAT(r["parameters"]["interfaces"].get<std::vector<std::string>>(),
              ElementsAre("io.test", "org.varlink.service"));
}

TEST_F(ServiceTest, GetInterfaceDescription) {
  json r = Call({{"method", "org.varlink.service.GetInterfaceDescription"},
                 {"parameters", {{"interface", "io.test"}}}},
                root_);
  EXPECT_EQ(r["parameters"]["description"], "interface io.test\nmethod Read() -> ()\n");
  json missing = Call({{"method", "org.varlink.service.GetInterfaceDescription"},
                       {"parameters", {{"interface", "io.none"}}}},
                      root_);
  EXPECT_EQ(missing["error"], "org.varlink.service.InterfaceNotFound");
  EXPECT_EQ(missing["parameters"]["interface"], "io.none");
}

TEST_F(ServiceTest, UnknownInterfaceMethodAndParameter) {
  EXPECT_EQ(Call({{"method", "io.none.X"}}, root_)["error"],
            "org.varlink.service.InterfaceNotFound");
  json m = Call({{"method", "io.test.Nope"}}, root_);
  EXPECT_EQ(m["error"], "org.varlink.service.MethodNotFound");
  EXPECT_EQ(m["parameters"]["method"], "io.test.Nope");
  json p = Call({{"method", "io.test.Read"}, {"parameters", {{"bogus", 1}}}}, root_);
  EXPECT_EQ(p["error"], "org.varlink.service.InvalidParameter");
  EXPECT_EQ(p["parameters"]["parameter"], "bogus");
  json ok = Call({{"method", "io.test.Read"}, {"parameters", {{"device", "d0"}}}}, root_);
  EXPECT_FALSE(ok.contains("error"));
  EXPECT_EQ(ok["parameters"]["echo"], "d0");
}

TEST_F(ServiceTest, OnewayGetsNoReplyAndUpgradeIsRefused) {
  EXPECT_TRUE(Call({{"method", "io.test.Read"}, {"oneway", true}}, root_).is_null());
  json u = Call({{"method", "io.test.Read"}, {"upgrade", true}}, root_);
  EXPECT_EQ(u["error"], "org.varlink.service.InvalidParameter");
  EXPECT_EQ(u["parameters"]["parameter"], "upgrade");
}

TEST_F(ServiceTest, GarbageClosesTheConnectionAfterSayingWhy) {
  bool close = false;
  std::string out = service_.Handle("not json", root_, &close);
  EXPECT_TRUE(close);
  ASSERT_FALSE(out.empty());
  out.pop_back();
  EXPECT_EQ(json::parse(out)["error"], "org.varlink.service.InvalidParameter");
}

TEST_F(ServiceTest, AuthorizationTable) {
  struct Case {
    Peer peer;
    bool read, write;
  };
  const Case cases[] = {
      {{.pid = 2, .uid = 0, .gid = 0, .groups = {}}, true, true},               // root
      {{.pid = 2, .uid = 1000, .gid = 1000, .groups = {}}, false, false},       // nobody special
      {{.pid = 2, .uid = 1000, .gid = 100, .groups = {}}, true, false},         // control, primary
      {{.pid = 2, .uid = 1000, .gid = 1000, .groups = {5, 100}}, true, false},  // control, supp.
      {{.pid = 2, .uid = 1000, .gid = 1000, .groups = {200}}, true, true},      // admin
  };
  for (const Case& c : cases) {
    json r = Call({{"method", "io.test.Read"}}, c.peer);
    json w = Call({{"method", "io.test.Write"}}, c.peer);
    EXPECT_EQ(!r.contains("error"), c.read) << "uid " << c.peer.uid << " gid " << c.peer.gid;
    EXPECT_EQ(!w.contains("error"), c.write) << "uid " << c.peer.uid << " gid " << c.peer.gid;
    if (!c.write) {
      EXPECT_EQ(w["error"], "io.iopfd.PermissionDenied");
      EXPECT_EQ(w["parameters"]["method"], "io.test.Write");
    }
  }
  // Without configured groups only root gets in.
  service_.set_policy({});
  EXPECT_TRUE(Call({{"method", "io.test.Read"}}, {.pid = 2, .uid = 1000, .gid = 100, .groups = {}})
                  .contains("error"));
  EXPECT_FALSE(Call({{"method", "io.test.Read"}}, root_).contains("error"));
}

// A method registered without an access entry is closed: only root may call it, not even the
// admin group (issue 12: authorization must fail safe when a method is added).
TEST_F(ServiceTest, AMethodWithoutAnAccessEntryIsRootsOnly) {
  service_.AddMethod("io.test.Forgotten", {},
                     [](const VarlinkCall&, const Peer&) { return VarlinkReply::Ok(); });
  EXPECT_EQ(service_.AccessOf("io.test.Forgotten"), std::nullopt);
  const Peer admin{.pid = 2, .uid = 1000, .gid = 1000, .groups = {200}};
  EXPECT_EQ(Call({{"method", "io.test.Forgotten"}}, admin)["error"], "io.iopfd.PermissionDenied");
  EXPECT_FALSE(Call({{"method", "io.test.Forgotten"}}, root_).contains("error"));
  // The service's own methods have entries.
  for (const std::string& m : service_.MethodNames()) {
    if (m.rfind("org.varlink.service.", 0) == 0) {
      EXPECT_EQ(service_.AccessOf(m), Access::kRead);
    }
  }
}

TEST(EncodeReplyTest, CanonicalForm) {
  EXPECT_EQ(EncodeReply(VarlinkReply::Ok()), "{}\0"s);
  EXPECT_EQ(EncodeReply(VarlinkReply::Ok({{"a", 1}}), true),
            "{\"continues\":true,\"parameters\":{\"a\":1}}\0"s);
  EXPECT_EQ(EncodeReply(VarlinkReply::Error("x.Y")), "{\"error\":\"x.Y\"}\0"s);
}

}  // namespace
}  // namespace iopfd

namespace iopfd {
namespace {

class FakeChannel : public ReplyChannel {
 public:
  void Send(const VarlinkReply& reply, bool continues) override {
    sent.push_back(EncodeReply(reply, continues));
  }
  bool open() const override { return is_open; }
  std::vector<std::string> sent;
  bool is_open = true;
};

TEST(StreamingTest, NeedsMoreAndContinuesThroughTheChannel) {
  VarlinkService service("v", "p", "1", "u");
  EventBus bus;
  service.AddInterface("io.test", "interface io.test\n");
  service.AddStreamingMethod(
      "io.test.Watch", {},
      [&bus](const VarlinkCall&, const Peer&, std::shared_ptr<ReplyChannel> ch) {
        bus.Subscribe(std::move(ch));
        return VarlinkReply::Ok({{"event", "subscribed"}});
      });
  Peer root{.pid = 1, .uid = 0, .gid = 0, .groups = {}};
  auto ch = std::make_shared<FakeChannel>();
  bool close = false;
  EXPECT_EQ(service.Handle(R"({"method":"io.test.Watch"})", root, &close, ch),
            std::string("{\"error\":\"org.varlink.service.ExpectedMore\"}") + '\0');
  EXPECT_EQ(service.Handle(R"({"method":"io.test.Watch","more":true})", root, &close, nullptr),
            std::string("{\"error\":\"org.varlink.service.MethodNotImplemented\","
                        "\"parameters\":{\"method\":\"io.test.Watch\"}}") +
                '\0');
  EXPECT_EQ(service.Handle(R"({"method":"io.test.Watch","more":true})", root, &close, ch),
            std::string("{\"continues\":true,\"parameters\":{\"event\":\"subscribed\"}}") + '\0');
  auto gone = std::make_shared<FakeChannel>();
  bus.Subscribe(gone);
  gone->is_open = false;
  bus.Publish("device_failed", "dsa0", "poll fault fd: EBADF");
  EXPECT_EQ(bus.subscribers(), 1u);
  ASSERT_EQ(ch->sent.size(), 1u);
  EXPECT_EQ(ch->sent[0], std::string("{\"continues\":true,\"parameters\":{\"detail\":\"poll "
                                     "fault fd: EBADF\",\"device\":\"dsa0\",\"event\":"
                                     "\"device_failed\"}}") +
                             '\0');
  EXPECT_TRUE(gone->sent.empty());
  bus.Close("stopping");
  ASSERT_EQ(ch->sent.size(), 2u);
  EXPECT_EQ(ch->sent[1], std::string("{\"parameters\":{\"event\":\"stopping\"}}") + '\0');
  EXPECT_EQ(bus.subscribers(), 0u);
}

}  // namespace
}  // namespace iopfd
