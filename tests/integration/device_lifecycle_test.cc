// Devices coming and going while iopfd runs: Reload (and SIGHUP), Adopt with descriptors passed
// over the control socket, Detach. No IOMMU here, so each adopt-mode device gets a stand-in
// fault queue: one end of a SOCK_SEQPACKET socketpair, whose other end the test keeps to inject
// page-request groups and read iopfd's responses. Its "iommufd" is /dev/null, so every map
// fails (ENOTTY) and every group is answered INVALID (map_failed): what is checked is that each
// group gets exactly one answer whatever happens to the devices around it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "fake_queue.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "nlohmann/json.hpp"

namespace {

using iopfd_test::Client;
using iopfd_test::DeviceText;
using iopfd_test::ExpectEachOnce;
using iopfd_test::FakeQueue;
using iopfd_test::Iopfd;
using iopfd_test::IopfdOptions;
using nlohmann::json;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

json Names(const json& reply, const char* key) { return reply["parameters"][key]; }

class DeviceLifecycleTest : public ::testing::Test {
 protected:
  // Devices a and b configured; c's descriptors inherited but c not configured yet.
  DeviceLifecycleTest() {
    IopfdOptions o;
    o.devices = {{"a.toml", DeviceText("a")}, {"b.toml", DeviceText("b")}};
    for (auto [name, q] : {std::pair{"a", &a_}, std::pair{"b", &b_}, std::pair{"c", &c_}}) {
      o.fds.emplace_back(std::string(name) + ".iommufd", q->iommufd);
      o.fds.emplace_back(std::string(name) + ".fault", q->theirs);
    }
    iopfd_ = std::make_unique<Iopfd>(o);
  }
  FakeQueue a_, b_, c_;
  std::unique_ptr<Iopfd> iopfd_;
};

TEST_F(DeviceLifecycleTest, ReloadAddsRemovesAndRestartsWithoutDisturbingTheOthers) {
  Client admin(iopfd_->socket());
  ASSERT_TRUE(admin.connected());
  // Faults flow on a and b.
  for (int i = 0; i < 50; ++i) a_.Fault(0x100000);
  for (int i = 0; i < 20; ++i) b_.Fault(0x100000);
  ExpectEachOnce(a_.Responses(50), 1, 50, "a before reload");
  ExpectEachOnce(b_.Responses(20), 1, 20, "b before reload");
  // The held inherited fds were announced, not closed.
  EXPECT_THAT(iopfd_->Log(), HasSubstr("held for a later reload: c.iommufd, c.fault"));

  // b goes, c comes, a stays. Faults queued on b before the reload are answered by its removal;
  // faults on a keep flowing throughout.
  for (int i = 0; i < 30; ++i) b_.Fault(0x100000);
  iopfd_->WriteDevice("b.toml", "");
  iopfd_->WriteDevice("c.toml", DeviceText("c"));
  std::thread flow([this] {
    for (int i = 0; i < 200; ++i) a_.Fault(0x100000);
  });
  json r = admin.CallOne({{"method", "io.iopfd.Reload"}});
  flow.join();
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_THAT(Names(r, "added"), ElementsAre("c"));
  EXPECT_THAT(Names(r, "removed"), ElementsAre("b"));
  EXPECT_THAT(Names(r, "kept"), ElementsAre("a"));
  EXPECT_THAT(Names(r, "restarted"), IsEmpty());
  EXPECT_THAT(Names(r, "failed"), IsEmpty());
  ExpectEachOnce(b_.Responses(30), 21, 30, "b's last faults, answered at removal");
  ExpectEachOnce(a_.Responses(200), 51, 200, "a during reload");
  for (int i = 0; i < 10; ++i) c_.Fault(0x100000);
  ExpectEachOnce(c_.Responses(10), 1, 10, "c after reload");
  // b is no longer read: a fault on it stays unanswered.
  b_.Fault(0x100000);
  EXPECT_TRUE(b_.Quiet(200));

  json devices = admin.CallOne({{"method", "io.iopfd.ListDevices"}});
  std::vector<std::string> names;
  for (const json& d : devices["parameters"]["devices"]) names.push_back(d["name"]);
  EXPECT_THAT(names, UnorderedElementsAre("a", "c"));

  // Changing a's settings restarts it (its descriptors are reused); c is left alone.
  iopfd_->WriteDevice("a.toml", DeviceText("a", "\n[limits]\nmax_group_records = 64\n"));
  r = admin.CallOne({{"method", "io.iopfd.Reload"}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_THAT(Names(r, "restarted"), ElementsAre("a"));
  EXPECT_THAT(Names(r, "kept"), ElementsAre("c"));
  for (int i = 0; i < 5; ++i) a_.Fault(0x100000);
  ExpectEachOnce(a_.Responses(5), 251, 5, "a after its restart");

  // b's file comes back, but b was handed back when it was removed: iopfd closed its
  // descriptors, so it cannot attach until its owner hands them over again.
  iopfd_->WriteDevice("b.toml", DeviceText("b"));
  r = admin.CallOne({{"method", "io.iopfd.Reload"}});
  EXPECT_THAT(Names(r, "added"), IsEmpty());
  ASSERT_EQ(Names(r, "failed").size(), 1u) << r.dump();
  EXPECT_THAT(Names(r, "failed")[0]["error"].get<std::string>(), HasSubstr("'b.iommufd'"));
  EXPECT_TRUE(b_.Quiet(100));
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, AnInvalidConfigurationChangesNothingAndNamesEachError) {
  Client admin(iopfd_->socket());
  iopfd_->WriteDevice("b.toml", DeviceText("b") + "  prefetch = \"lots\"\n");
  iopfd_->WriteDevice("c.toml", "name = \"c\"\nattach = \"sideways\"\n");
  json r = admin.CallOne({{"method", "io.iopfd.Reload"}});
  ASSERT_EQ(r.value("error", ""), "io.iopfd.InvalidConfig") << r.dump();
  std::vector<std::string> errors = r["parameters"]["errors"];
  const std::string dir = (iopfd_->dir() / "devices.d").string();
  EXPECT_THAT(errors, Contains(AllOf(HasSubstr(dir + "/b.toml:16:"), HasSubstr("prefetch"))))
      << r.dump();
  EXPECT_THAT(errors, Contains(HasSubstr(dir + "/c.toml:2:"))) << r.dump();
  // Nothing changed: both devices still answer.
  a_.Fault(0x100000);
  b_.Fault(0x100000);
  ExpectEachOnce(a_.Responses(1), 1, 1, "a");
  ExpectEachOnce(b_.Responses(1), 1, 1, "b");
  EXPECT_EQ(iopfd_->Stop(), 0);
  EXPECT_THAT(iopfd_->Log(), HasSubstr("reload: invalid configuration; nothing changed"));
}

TEST_F(DeviceLifecycleTest, SighupReloadsAndMonitorSeesIt) {
  Client monitor(iopfd_->socket());
  monitor.Call({{"method", "io.iopfd.Monitor"}, {"more", true}});
  ASSERT_EQ(monitor.Next().value()["parameters"]["event"], "subscribed");
  iopfd_->WriteDevice("a.toml", "");
  iopfd_->Signal(SIGHUP);
  std::vector<std::string> events;
  while (events.size() < 2) {
    auto e = monitor.Next();
    ASSERT_TRUE(e.has_value());
    events.push_back((*e)["parameters"]["event"].get<std::string>() + ":" +
                     (*e)["parameters"].value("device", ""));
  }
  EXPECT_THAT(events, ElementsAre("device_removed:a", "reload:"));
  a_.Fault(0x100000);
  EXPECT_TRUE(a_.Quiet(200));
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, AdoptTakesDescriptorsOverTheSocketAndDetachHandsThemBack) {
  FakeQueue d;
  Client admin(iopfd_->socket());
  json call = {{"method", "io.iopfd.Adopt"},
               {"parameters", {{"config", DeviceText("d")}, {"fds", {"d.iommufd", "d.fault"}}}}};
  json r = admin.CallWithFds(call, {d.iommufd, d.theirs});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_EQ(r["parameters"]["name"], "d");
  for (int i = 0; i < 40; ++i) d.Fault(0x100000);
  ExpectEachOnce(d.Responses(40), 1, 40, "d after Adopt");

  json devices = admin.CallOne({{"method", "io.iopfd.ListDevices"}});
  std::map<std::string, std::string> origin;
  for (const json& dev : devices["parameters"]["devices"]) origin[dev["name"]] = dev["origin"];
  EXPECT_EQ(origin["d"], "adopted");
  EXPECT_EQ(origin["a"], "config");

  // A reload leaves an adopted device alone, and a second Adopt of the name is refused.
  EXPECT_THAT(Names(admin.CallOne({{"method", "io.iopfd.Reload"}}), "kept"),
              UnorderedElementsAre("a", "b"));
  FakeQueue d2;
  r = admin.CallWithFds(call, {d2.iommufd, d2.theirs});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.Busy") << r.dump();

  // Drains need the attachments, which the owner holds in adopt mode: refused, saying why,
  // and the device keeps being served.
  r = admin.CallOne({{"method", "io.iopfd.Drain"}, {"parameters", {{"device", "d"}}}});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.NotSupported") << r.dump();
  EXPECT_THAT(r["parameters"]["reason"].get<std::string>(), HasSubstr("adopt mode"));
  r = admin.CallOne({{"method", "io.iopfd.Halt"}, {"parameters", {{"device", "d"}}}});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.NotSupported") << r.dump();
  r = admin.CallOne({{"method", "io.iopfd.Resume"}, {"parameters", {{"device", "d"}}}});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.InvalidState") << r.dump();
  devices = admin.CallOne({{"method", "io.iopfd.ListDevices"}});
  for (const json& dev : devices["parameters"]["devices"]) EXPECT_EQ(dev["state"], "running");

  // Faults queued before Detach are answered by it; its final counters come back.
  for (int i = 0; i < 25; ++i) d.Fault(0x100000);
  r = admin.CallOne({{"method", "io.iopfd.Detach"}, {"parameters", {{"device", "d"}}}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_EQ(r["parameters"]["stats"]["groups"], 65);
  EXPECT_EQ(r["parameters"]["stats"]["responses_written"], 65);
  EXPECT_EQ(r["parameters"]["stats"]["outstanding"], 0);
  ExpectEachOnce(d.Responses(25), 41, 25, "d's faults answered by Detach");
  d.Fault(0x100000);
  EXPECT_TRUE(d.Quiet(200)) << "iopfd still reads a detached device";
  r = admin.CallOne({{"method", "io.iopfd.Detach"}, {"parameters", {{"device", "d"}}}});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.NoSuchDevice");
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, AdoptRefusesWhatDoesNotAddUp) {
  FakeQueue d;
  Client admin(iopfd_->socket());
  auto adopt = [&](const json& params, const std::vector<int>& fds) {
    return admin.CallWithFds({{"method", "io.iopfd.Adopt"}, {"parameters", params}}, fds);
  };
  // Fewer names than descriptors.
  json r = adopt({{"config", DeviceText("d")}, {"fds", {"d.iommufd"}}}, {d.iommufd, d.theirs});
  EXPECT_EQ(r.value("error", ""), "org.varlink.service.InvalidParameter") << r.dump();
  EXPECT_EQ(r["parameters"]["parameter"], "fds");
  // A descriptor the configuration never names.
  r = adopt({{"config", DeviceText("d")}, {"fds", {"d.iommufd", "d.fault", "extra"}}},
            {d.iommufd, d.theirs, d.iommufd});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.InvalidConfig") << r.dump();
  // The configuration names a descriptor that did not come.
  r = adopt({{"config", DeviceText("d")}, {"fds", {"d.iommufd"}}}, {d.iommufd});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.AttachFailed") << r.dump();
  EXPECT_THAT(r["parameters"]["error"].get<std::string>(), HasSubstr("fault_fd"));
  // Bad TOML, with its position.
  r = adopt({{"config", "name = \"d\"\nattach = \n"}}, {});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.InvalidConfig") << r.dump();
  EXPECT_THAT(r["parameters"]["errors"][0].get<std::string>(), HasSubstr("<Adopt config>:2:"));
  // Memory by path is refused: only what comes with the call (fd:) or iopfd's own.
  std::string by_path = DeviceText("d");
  const std::string anon = "backing = \"anonymous\"";
  by_path.replace(by_path.find(anon), anon.size(), "backing = \"file:/dev/shm/x\"");
  r = adopt({{"config", by_path}, {"fds", {"d.iommufd", "d.fault"}}}, {d.iommufd, d.theirs});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.InvalidConfig") << r.dump();
  EXPECT_THAT(r["parameters"]["errors"][0].get<std::string>(),
              HasSubstr("<Adopt config>:11:3: file: backings are not accepted over Adopt"));
  // So is a switch module: a path iopfd would load into itself.
  std::string with_module = DeviceText("d", "switch_module = \"/tmp/evil.so\"\n");
  with_module.replace(with_module.find("ioas_id = 1"), 11, "ioas_id = 1\nhwpt_id = 4");
  r = adopt({{"config", with_module}, {"fds", {"d.iommufd", "d.fault"}}}, {d.iommufd, d.theirs});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.InvalidConfig") << r.dump();
  EXPECT_THAT(r["parameters"]["errors"][0].get<std::string>(),
              HasSubstr("adopt.switch_module is not accepted over Adopt"));
  // A vfio device is configured in devices.d, not adopted.
  r = adopt({{"config",
              "name = \"v\"\nattach = \"vfio\"\n[vfio]\ncdev = \"/dev/vfio/devices/"
              "vfio0\"\n[[space]]\n  [[space.region]]\n  iova = 0x100000\n  size = "
              "\"64KiB\"\n  backing = \"anonymous\"\n  access = \"rw\"\n"}},
            {});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.InvalidConfig") << r.dump();
  // The name of a configured device.
  r = adopt({{"config", DeviceText("a")}, {"fds", {"a.iommufd", "a.fault"}}},
            {d.iommufd, d.theirs});
  EXPECT_EQ(r.value("error", ""), "io.iopfd.Busy") << r.dump();
  // None of it disturbed the configured devices, and the connection still works.
  a_.Fault(0x100000);
  ExpectEachOnce(a_.Responses(1), 1, 1, "a");
  EXPECT_EQ(admin.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, DetachOfAConfiguredDeviceHoldsAcrossReloadsUntilItChanges) {
  Client admin(iopfd_->socket());
  json r = admin.CallOne({{"method", "io.iopfd.Detach"}, {"parameters", {{"device", "b"}}}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  json status = admin.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"];
  EXPECT_EQ(status["devices_detached"], 1);
  EXPECT_EQ(status["health"], "ok");
  r = admin.CallOne({{"method", "io.iopfd.Reload"}});
  EXPECT_THAT(Names(r, "detached"), ElementsAre("b"));
  EXPECT_THAT(Names(r, "added"), IsEmpty());
  // Changed settings mean the operator wants it back; but Detach closed its descriptors, so the
  // attach fails, loudly, and health says so.
  iopfd_->WriteDevice("b.toml", DeviceText("b", "\n[limits]\nmax_group_records = 64\n"));
  r = admin.CallOne({{"method", "io.iopfd.Reload"}});
  ASSERT_EQ(Names(r, "failed").size(), 1u) << r.dump();
  EXPECT_EQ(Names(r, "failed")[0]["device"], "b");
  EXPECT_THAT(Names(r, "failed")[0]["error"].get<std::string>(), HasSubstr("b.iommufd"));
  EXPECT_EQ(admin.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "degraded");
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, DescriptorsNoCallTakesAreClosed) {
  Client c(iopfd_->socket());
  ASSERT_EQ(c.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  const size_t before = iopfd_->OpenFds();
  FakeQueue d;
  // Descriptors sent with calls that take none, with a refused Adopt, and split from their
  // message (the message completes in a later write) are all closed once the call is answered.
  for (int i = 0; i < 20; ++i) {
    json r = c.CallWithFds({{"method", "io.iopfd.GetStatus"}}, {d.iommufd, d.theirs});
    ASSERT_TRUE(r.contains("parameters")) << r.dump();
  }
  json r = c.CallWithFds(
      {{"method", "io.iopfd.Adopt"}, {"parameters", {{"config", DeviceText("d")}, {"fds", {"x"}}}}},
      {d.iommufd, d.theirs});
  EXPECT_EQ(r.value("error", ""), "org.varlink.service.InvalidParameter");
  std::string call = json({{"method", "io.iopfd.GetStatus"}}).dump();
  ASSERT_TRUE(c.SendWithFds(call.substr(0, 5), {d.iommufd}));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(c.Send(call.substr(5) + std::string(1, '\0')));
  ASSERT_TRUE(c.Next().has_value());
  EXPECT_EQ(iopfd_->OpenFds(), before);
  // More descriptors than one message may carry: the connection is closed, nothing leaks.
  std::vector<int> many(17, d.iommufd);
  EXPECT_EQ(c.CallWithFds({{"method", "io.iopfd.GetStatus"}}, many), json(nullptr));
  Client other(iopfd_->socket());
  EXPECT_EQ(other.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"]["health"], "ok");
  EXPECT_EQ(iopfd_->OpenFds(), before);  // c's connection closed, other's open
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, AFaultQueueThatFailsIsReportedAndTheOthersGoOn) {
  Client monitor(iopfd_->socket());
  monitor.Call({{"method", "io.iopfd.Monitor"}, {"more", true}});
  ASSERT_EQ(monitor.Next().value()["parameters"]["event"], "subscribed");
  // b's peer goes away: its fd polls readable (hang-up) and reads nothing, for ever.
  close(b_.ours);
  b_.ours = -1;
  auto e = monitor.Next();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ((*e)["parameters"]["event"], "device_failed");
  EXPECT_EQ((*e)["parameters"]["device"], "b");
  EXPECT_THAT((*e)["parameters"]["detail"].get<std::string>(), HasSubstr("reads in a row"));
  Client c(iopfd_->socket());
  json status = c.CallOne({{"method", "io.iopfd.GetStatus"}})["parameters"];
  EXPECT_EQ(status["health"], "degraded");
  a_.Fault(0x100000);
  ExpectEachOnce(a_.Responses(1), 1, 1, "a after b failed");
  EXPECT_EQ(iopfd_->Stop(), 0);
}

TEST_F(DeviceLifecycleTest, AStopArrivingDuringAReloadStillStops) {
  // SIGHUP then SIGTERM at once: the stop may be read while the reload removes a device.
  for (int round = 0; round < 5; ++round) {
    IopfdOptions o;
    o.devices = {{"a.toml", DeviceText("a")}, {"b.toml", DeviceText("b")}};
    FakeQueue a, b;
    for (auto [name, q] : {std::pair{"a", &a}, std::pair{"b", &b}}) {
      o.fds.emplace_back(std::string(name) + ".iommufd", q->iommufd);
      o.fds.emplace_back(std::string(name) + ".fault", q->theirs);
    }
    Iopfd iopfd(o);
    a.Fault(0x100000);
    ASSERT_EQ(a.Responses(1).size(), 1u);
    iopfd.WriteDevice("a.toml", "");
    iopfd.Signal(SIGHUP);
    iopfd.Signal(SIGTERM);
    EXPECT_EQ(iopfd.WaitExit(10000), 0) << "round " << round;
  }
}

}  // namespace
