// A device adopted at run time survives a restart of iopfd through systemd's file descriptor
// store: the real iopfd is run the way systemd 254+ runs a service with FileDescriptorStoreMax=
// (NOTIFY_SOCKET, FDSTORE=), and the test plays the service manager: it keeps the descriptors
// iopfd sends with FDSTORE=1, drops those FDSTOREREMOVE=1 names, and hands them back in
// LISTEN_FDS/LISTEN_FDNAMES at the next start. The stand-in fault queue (fake_queue.h) keeps
// getting page requests throughout; every one must be answered exactly once.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fake_queue.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "iopfd/fault/inflight_ledger.h"
#include "nlohmann/json.hpp"

namespace {

using iopfd_test::Client;
using iopfd_test::DeviceText;
using iopfd_test::ExpectEachOnce;
using iopfd_test::FakeQueue;
using iopfd_test::Iopfd;
using iopfd_test::IopfdOptions;
using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The service manager's end of NOTIFY_SOCKET, with its fd store.
class FakeSystemd {
 public:
  FakeSystemd() {
    path_ = std::filesystem::temp_directory_path() /
            ("iopfd-fdstore-" + std::to_string(getpid()) + ".sock");
    unlink(path_.c_str());
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ~FakeSystemd() {
    for (auto& e : store_) close(e.second);
    close(fd_);
    unlink(path_.c_str());
  }
  FakeSystemd(const FakeSystemd&) = delete;
  FakeSystemd& operator=(const FakeSystemd&) = delete;

  // The environment a service with FileDescriptorStoreMax=16 gets.
  std::vector<std::pair<std::string, std::string>> Env() const {
    return {{"NOTIFY_SOCKET", path_}, {"FDSTORE", "16"}};
  }
  // Handles the messages that arrive within ms (each wait restarts after a message).
  void Receive(int ms) {
    while (true) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, ms) != 1) return;
      char buf[4096];
      iovec iov{buf, sizeof(buf)};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
      if (n <= 0) return;
      std::vector<int> fds;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        fds.resize(count);
        std::memcpy(fds.data(), CMSG_DATA(c), count * sizeof(int));
      }
      Handle(std::string(buf, static_cast<size_t>(n)), fds);
    }
  }
  // Waits (up to 10 s) until the store holds exactly `names`.
  bool WaitFor(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    for (int i = 0; i < 100; ++i) {
      if (Names() == names) return true;
      Receive(100);
    }
    return Names() == names;
  }
  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    for (const auto& e : store_) out.push_back(e.first);
    std::sort(out.begin(), out.end());
    return out;
  }
  // LISTEN_FDS for the next start (the harness duplicates them into place).
  std::vector<std::pair<std::string, int>> Fds() const { return store_; }
  const std::vector<std::string>& removed() const { return removed_; }

 private:
  void Handle(const std::string& message, const std::vector<int>& fds) {
    std::string name;
    bool store = false, remove = false;
    std::stringstream lines(message);
    for (std::string line; std::getline(lines, line);) {
      if (line == "FDSTORE=1") store = true;
      if (line == "FDSTOREREMOVE=1") remove = true;
      if (line.rfind("FDNAME=", 0) == 0) name = line.substr(7);
    }
    if (store) {
      for (int fd : fds) store_.emplace_back(name, fd);
      return;
    }
    for (int fd : fds) close(fd);
    if (remove) {
      removed_.push_back(name);
      for (auto it = store_.begin(); it != store_.end();) {
        if (it->first == name) {
          close(it->second);
          it = store_.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  std::string path_;
  int fd_ = -1;
  std::vector<std::pair<std::string, int>> store_;
  std::vector<std::string> removed_;
};

// The record, the iommufd, the fault queue, the in-flight ledger and the map record.
const std::vector<std::string> kStored = {"iopfd-adopted/v", "iopfd-adopted/v/fd0",
                                          "iopfd-adopted/v/fd1", "iopfd-adopted/v/fd2",
                                          "iopfd-adopted/v/fd3"};

json Adopt(Client* c, FakeQueue* q) {
  return c->CallWithFds(
      {{"method", "io.iopfd.Adopt"},
       {"parameters", {{"config", DeviceText("v")}, {"fds", {"v.iommufd", "v.fault"}}}}},
      {q->iommufd, q->theirs});
}

TEST(FdStoreTest, AdoptedDeviceSurvivesARestartDuringAFloodWithEveryRequestAnsweredOnce) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o;
  o.env = systemd.Env();
  auto first = std::make_unique<Iopfd>(o);
  {
    Client c(first->socket());
    json r = Adopt(&c, &q);
    ASSERT_FALSE(r.contains("error")) << r.dump();
    json st = c.CallOne({{"method", "io.iopfd.GetStatus"}});
    EXPECT_EQ(st["parameters"]["fd_store"], json({{"enabled", true}, {"kept", 5}, {"room", 16}}));
  }
  // The test's own copies go: from now on only iopfd and the store hold the device's fds.
  close(q.theirs);
  q.theirs = -1;
  ASSERT_TRUE(systemd.WaitFor(kStored));

  // Page requests all the way through the restart; responses collected meanwhile.
  constexpr uint32_t kTotal = 3000;
  std::atomic<uint32_t> sent{0};
  std::thread flood([&] {
    for (uint32_t i = 0; i < kTotal; ++i) {
      // A queue nobody reads for 20 s (iopfd did not take it back) ends the flood: the
      // missing answers then fail the test instead of hanging it.
      if (q.FaultWithin(0x100000 + (i % 16) * 4096, 20000) == 0) break;
      sent = i + 1;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  auto answers = std::async(std::launch::async, [&] { return q.Responses(kTotal, 30); });
  while (sent < kTotal / 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(first->Stop(), 0);
  const uint32_t at_stop = sent;
  // What the first one stopped with: everything it read was answered before it exited.
  std::vector<json> stats = first->ExitStats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0]["outstanding"], 0) << stats[0].dump();
  first.reset();

  // The store is what systemd keeps across the restart, and hands back at the next start.
  systemd.Receive(50);
  EXPECT_EQ(systemd.Names(), kStored);
  o.fds = systemd.Fds();
  Iopfd second(o);
  flood.join();
  std::map<uint32_t, int> seen = answers.get();
  EXPECT_EQ(sent, kTotal) << "the queue stopped being read";
  ExpectEachOnce(seen, 1, kTotal, "across the restart");
  EXPECT_LT(at_stop, kTotal) << "the restart did not happen during the flood";
  EXPECT_THAT(second.Log(), HasSubstr("v: adopted again from the fd store"));

  Client c(second.socket());
  json devices = c.CallOne({{"method", "io.iopfd.ListDevices"}});
  ASSERT_EQ(devices["parameters"]["devices"].size(), 1u);
  EXPECT_EQ(devices["parameters"]["devices"][0]["origin"], "adopted");
  // Kept, not stored again: the entries are still systemd's.
  json st = c.CallOne({{"method", "io.iopfd.GetStatus"}});
  EXPECT_EQ(st["parameters"]["fd_store"]["kept"], 5);
  systemd.Receive(50);
  EXPECT_EQ(systemd.Names(), kStored);

  // Detach hands it back: the store forgets it, so the next start does not take it.
  json r = c.CallOne({{"method", "io.iopfd.Detach"}, {"parameters", {{"device", "v"}}}});
  ASSERT_FALSE(r.contains("error")) << r.dump();
  EXPECT_TRUE(systemd.WaitFor({}));
  EXPECT_THAT(systemd.removed(),
              ElementsAre("iopfd-adopted/v", "iopfd-adopted/v/fd0", "iopfd-adopted/v/fd1",
                          "iopfd-adopted/v/fd2", "iopfd-adopted/v/fd3"));
}

// Sends `total` page requests to the device "v" that `iopfd` serves on q, without reading a
// response (the socket fills, iopfd's writes get EAGAIN and it keeps owing answers), waits until
// it has read them all, and kills it (SIGKILL: no clean stop).
void FloodAndKill(Iopfd* iopfd, FakeQueue* q, uint32_t total) {
  uint32_t sent = 0;
  while (sent < total && q->FaultWithin(0x100000 + (sent % 16) * 4096, 10000) != 0) ++sent;
  ASSERT_EQ(sent, total);
  uint64_t groups = 0;
  for (int i = 0; i < 1000 && groups < total; ++i) {
    Client c(iopfd->socket());
    json st = c.CallOne({{"method", "io.iopfd.GetStats"}, {"parameters", {{"device", "v"}}}});
    groups = st["parameters"]["devices"][0]["groups"].get<uint64_t>();
    if (groups < total) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(groups, total);
  iopfd->Signal(SIGKILL);
  EXPECT_EQ(iopfd->WaitExit(5000), -1);
}

// Runs iopfd on an adopted device, floods it and kills it (FloodAndKill).
void CrashOwing(FakeSystemd* systemd, FakeQueue* q, const IopfdOptions& o, uint32_t total) {
  auto first = std::make_unique<Iopfd>(o);
  {
    Client c(first->socket());
    json r = Adopt(&c, q);
    ASSERT_FALSE(r.contains("error")) << r.dump();
  }
  close(q->theirs);
  q->theirs = -1;
  ASSERT_TRUE(systemd->WaitFor(kStored));
  ASSERT_NO_FATAL_FAILURE(FloodAndKill(first.get(), q, total));
  systemd->Receive(50);
}

// A crash leaves no answer behind: iopfd is killed (SIGKILL: no clean stop) while it owes
// answers it could not write yet (the test does not read the responses, so its socket fills
// and iopfd's writes get EAGAIN), and with groups read but not resolved. The kernel would keep
// those groups pending forever, since the store keeps the fault fd open; the next process finds
// them in the in-flight ledger the store kept too, and answers them before it reads anything.
TEST(FdStoreTest, AfterACrashTheNextProcessAnswersWhatTheDeadOneOwed) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o;
  o.env = systemd.Env();
  constexpr uint32_t kTotal = 2000;
  ASSERT_NO_FATAL_FAILURE(CrashOwing(&systemd, &q, o, kTotal));

  systemd.Receive(50);
  ASSERT_EQ(systemd.Names(), kStored);
  // The other thing a crash leaves: groups the kernel handed out in a read whose records the
  // dead process never resolved. Put there as the kernel's read would have: five more groups,
  // whose cookies the queue now counts as handed out.
  constexpr uint32_t kUnresolved = 5;
  {
    int ledger_fd = -1;
    for (const auto& [name, fd] : systemd.Fds()) {
      if (name == "iopfd-adopted/v/fd2") ledger_fd = fd;
    }
    auto ledger = iopfd::InflightLedger::Open("v", iopfd::UniqueFd(dup(ledger_fd)));
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    auto buf = (*ledger)->BeginRead(kUnresolved);
    for (uint32_t i = 0; i < kUnresolved; ++i) {
      buf[i] = {};
      buf[i].flags = iopfd::uapi::kPgfaultLastPage;
      buf[i].dev_id = iopfd_test::kDevId;
      buf[i].perm = iopfd::uapi::kPermRead;
      buf[i].addr = 0x100000 + i * 4096;
      buf[i].cookie = q.next_cookie++;
    }
  }
  auto answers =
      std::async(std::launch::async, [&] { return q.Responses(kTotal + kUnresolved, 30); });
  o.fds = systemd.Fds();
  Iopfd second(o);
  std::map<uint32_t, int> seen = answers.get();
  ExpectEachOnce(seen, 1, kTotal + kUnresolved, "across the crash");
  EXPECT_TRUE(q.Quiet(200)) << "answers beyond one per group";
  EXPECT_THAT(second.Log(), HasSubstr("v: the previous iopfd died owing "));
  Client c(second.socket());
  json st = c.CallOne({{"method", "io.iopfd.GetStats"}, {"parameters", {{"device", "v"}}}});
  const json& v = st["parameters"]["devices"][0];
  EXPECT_GT(v["recovered_answers"].get<uint64_t>(), 0u) << v.dump();
  EXPECT_EQ(v["recovered_already_answered"], 0) << v.dump();
  EXPECT_EQ(v["recovered_groups"], kUnresolved) << v.dump();
  EXPECT_EQ(v["outstanding"], 0) << v.dump();
  // And it goes on serving the queue.
  uint32_t next = q.Fault(0x100000);
  std::map<uint32_t, int> later = q.Responses(1, 10);
  EXPECT_EQ(later[next], 1);
}

// A crashed process's device that cannot be served again (a device file took its name) goes
// back to its owner with everything iopfd read answered: nothing is left pending in its queue.
TEST(FdStoreTest, ADeviceHandedBackAfterACrashHasWhatWasReadAnswered) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o;
  o.env = systemd.Env();
  constexpr uint32_t kTotal = 500;
  ASSERT_NO_FATAL_FAILURE(CrashOwing(&systemd, &q, o, kTotal));
  auto answers = std::async(std::launch::async, [&] { return q.Responses(kTotal, 30); });
  o.devices = {{"v.toml", DeviceText("v")}};
  o.fds = systemd.Fds();
  Iopfd second(o);
  ExpectEachOnce(answers.get(), 1, kTotal, "handed back after the crash");
  EXPECT_TRUE(systemd.WaitFor({}));
  EXPECT_THAT(second.Log(), HasSubstr("group(s) the previous iopfd read and did not answer (0 "
                                      "had been answered) before handing it back"));
  EXPECT_THAT(second.Log(), HasSubstr("v: not adopted again from the fd store"));
}

TEST(FdStoreTest, AStoredDeviceWhoseNameADeviceFileTookIsHandedBack) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o;
  o.env = systemd.Env();
  {
    Iopfd first(o);
    Client c(first.socket());
    ASSERT_FALSE(Adopt(&c, &q).contains("error"));
    ASSERT_TRUE(systemd.WaitFor(kStored));
  }
  // Meanwhile the operator configured a device "v" (its fds are not there: it fails to attach,
  // but the name is the configuration's).
  o.devices = {{"v.toml", DeviceText("v")}};
  o.fds = systemd.Fds();
  Iopfd second(o);
  EXPECT_TRUE(systemd.WaitFor({}));
  EXPECT_THAT(second.Log(), HasSubstr("v: not adopted again from the fd store: v: a device of "
                                      "this name is in the configuration; its descriptors are "
                                      "closed (handed back)"));
  Client c(second.socket());
  json st = c.CallOne({{"method", "io.iopfd.GetStatus"}});
  EXPECT_EQ(st["parameters"]["devices_adopted"], 0);
  EXPECT_EQ(st["parameters"]["fd_store"]["kept"], 0);
}

// A device configured in adopt mode gets its descriptors from whoever launches iopfd (here the
// test, as a VMM would), which keeps its own copy of the fault queue open across iopfd's crash:
// the kernel would keep the groups iopfd read pending forever. Its in-flight ledger is in the
// store with the queue it recorded, and the next process, handed the same queue, answers them
// before its first read.
// With them, its map record and a copy of its iommufd (which units iopfd holds mapped, and in
// which context); a clean stop leaves the record alone.
const std::vector<std::string> kLedgerStored = {"iopfd-ledger/v", "iopfd-ledger/v/fault",
                                                "iopfd-maps/v", "iopfd-maps/v/iommufd"};
const std::vector<std::string> kCleanStopStored = {"iopfd-maps/v"};

// The options of an iopfd serving "v" from a device file, its descriptors handed over on q
// (as a launcher would), with systemd's fd store.
IopfdOptions ConfiguredOn(const FakeSystemd& systemd, const FakeQueue& q) {
  IopfdOptions o;
  o.env = systemd.Env();
  o.devices = {{"v.toml", DeviceText("v")}};
  o.fds = {{"v.iommufd", q.iommufd}, {"v.fault", q.theirs}};
  return o;
}

// Runs iopfd with o until its ledger is stored, floods q and kills it (FloodAndKill).
void CrashConfigured(FakeSystemd* systemd, FakeQueue* q, const IopfdOptions& o, uint32_t total) {
  auto first = std::make_unique<Iopfd>(o);
  ASSERT_TRUE(systemd->WaitFor(kLedgerStored));
  ASSERT_NO_FATAL_FAILURE(FloodAndKill(first.get(), q, total));
  first.reset();
  systemd->Receive(50);
}

TEST(FdStoreTest, AConfiguredAdoptModeDeviceGetsWhatACrashLeftAnswered) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o = ConfiguredOn(systemd, q);
  const std::vector<std::pair<std::string, int>> launcher = o.fds;
  constexpr uint32_t kTotal = 1500;
  ASSERT_NO_FATAL_FAILURE(CrashConfigured(&systemd, &q, o, kTotal));
  ASSERT_EQ(systemd.Names(), kLedgerStored);
  auto answers = std::async(std::launch::async, [&] { return q.Responses(kTotal, 30); });
  o.fds = launcher;
  for (const auto& entry : systemd.Fds()) o.fds.push_back(entry);
  auto second = std::make_unique<Iopfd>(o);
  ExpectEachOnce(answers.get(), 1, kTotal, "across the crash");
  EXPECT_TRUE(q.Quiet(200)) << "answers beyond one per group";
  EXPECT_THAT(second->Log(), HasSubstr("v: the previous iopfd died owing "));
  {
    Client c(second->socket());
    json st = c.CallOne({{"method", "io.iopfd.GetStats"}, {"parameters", {{"device", "v"}}}});
    const json& v = st["parameters"]["devices"][0];
    EXPECT_GT(v["recovered_answers"].get<uint64_t>(), 0u) << v.dump();
    EXPECT_EQ(v["outstanding"], 0) << v.dump();
  }
  // The same queue came back: the ledger goes on as it was, nothing stored again.
  systemd.Receive(50);
  EXPECT_EQ(systemd.Names(), kLedgerStored);
  EXPECT_THAT(systemd.removed(), IsEmpty());
  // It goes on serving the queue.
  uint32_t next = q.Fault(0x100000);
  EXPECT_EQ(q.Responses(1, 10)[next], 1);
  // A clean stop answers everything: the store stops holding the owner's queue and iommufd,
  // and keeps the map record alone.
  EXPECT_EQ(second->Stop(), 0);
  EXPECT_TRUE(systemd.WaitFor(kCleanStopStored)) << ::testing::PrintToString(systemd.Names());
}

// The launcher hands the device a new fault queue after the crash: what the dead process owed
// is answered on the old one, where its groups came from (unresolved ones INVALID), and the new
// queue starts clean with a new ledger.
TEST(FdStoreTest, AConfiguredDeviceOnANewQueueHasTheOldQueueAnswered) {
  FakeSystemd systemd;
  FakeQueue old_queue, new_queue;
  IopfdOptions o = ConfiguredOn(systemd, old_queue);
  constexpr uint32_t kTotal = 800;
  ASSERT_NO_FATAL_FAILURE(CrashConfigured(&systemd, &old_queue, o, kTotal));
  auto answers = std::async(std::launch::async, [&] { return old_queue.Responses(kTotal, 30); });
  o.fds = {{"v.iommufd", new_queue.iommufd}, {"v.fault", new_queue.theirs}};
  for (const auto& entry : systemd.Fds()) o.fds.push_back(entry);
  Iopfd second(o);
  ExpectEachOnce(answers.get(), 1, kTotal, "on the old queue");
  EXPECT_TRUE(old_queue.Quiet(200)) << "answers beyond one per group";
  EXPECT_THAT(second.Log(), HasSubstr("v: the previous iopfd died owing answers on the fault "
                                      "queue it had then"));
  uint32_t next = new_queue.Fault(0x100000);
  EXPECT_EQ(new_queue.Responses(1, 10)[next], 1);
  EXPECT_TRUE(old_queue.Quiet(100));
  Client c(second.socket());
  json st = c.CallOne({{"method", "io.iopfd.GetStatus"}});
  EXPECT_EQ(st["parameters"]["fd_store"]["kept"], 4);  // a new ledger, a new map record
}

// A ledger whose device is no longer configured: its queue is answered, its entries removed.
TEST(FdStoreTest, ALedgerWhoseDeviceIsGoneIsAnsweredAndRemoved) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o = ConfiguredOn(systemd, q);
  constexpr uint32_t kTotal = 300;
  ASSERT_NO_FATAL_FAILURE(CrashConfigured(&systemd, &q, o, kTotal));
  auto answers = std::async(std::launch::async, [&] { return q.Responses(kTotal, 30); });
  o.devices = {};
  o.fds = systemd.Fds();
  Iopfd second(o);
  ExpectEachOnce(answers.get(), 1, kTotal, "for a device no longer configured");
  EXPECT_TRUE(systemd.WaitFor({}));
  EXPECT_THAT(second.Log(), HasSubstr("v: its in-flight ledger came back from the fd store but "
                                      "the device is not served"));
}

TEST(FdStoreTest, WithoutFdstoreNothingIsSentAndStatusSaysSo) {
  FakeSystemd systemd;
  FakeQueue q;
  IopfdOptions o;
  o.env = {
      {"NOTIFY_SOCKET", systemd.Env()[0].second}};  // systemd 252, or no FileDescriptorStoreMax=
  Iopfd iopfd(o);
  Client c(iopfd.socket());
  ASSERT_FALSE(Adopt(&c, &q).contains("error"));
  json st = c.CallOne({{"method", "io.iopfd.GetStatus"}});
  EXPECT_EQ(st["parameters"]["fd_store"]["enabled"], false);
  systemd.Receive(200);
  EXPECT_THAT(systemd.Names(), IsEmpty());
  EXPECT_THAT(iopfd.Log(), HasSubstr("fd store: not enabled"));
}

}  // namespace
