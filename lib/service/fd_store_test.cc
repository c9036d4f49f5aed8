#include "iopfd/service/fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "fake_service_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/fd.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// A memfd holding `text`: stands for an iommufd or fault queue, recognisable after the trip.
UniqueFd Marked(const std::string& text) {
  UniqueFd fd(memfd_create("marked", MFD_CLOEXEC));
  EXPECT_EQ(write(fd.get(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
  return fd;
}
std::string Mark(int fd) {
  char buf[64] = {};
  ssize_t n = pread(fd, buf, sizeof(buf), 0);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

TEST(FdStoreTest, AnAdoptedDeviceComesBackWithItsConfigAndDescriptors) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd iommufd = Marked("vm7 iommufd"), fault = Marked("vm7 fault"), ram = Marked("vm7 ram");
  ASSERT_TRUE(
      store
          .Keep(
              "vm7", "name = \"vm7\"\n",
              {{"vm7.iommufd", iommufd.get()}, {"vm7.fault", fault.get()}, {"vm7.ram", ram.get()}})
          .ok());
  EXPECT_EQ(store.kept(), 4u);
  // Descriptors first, the record last: a record always finds its descriptors.
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-adopted/vm7/fd0", "iopfd-adopted/vm7/fd1",
                                           "iopfd-adopted/vm7/fd2", "iopfd-adopted/vm7"));

  // iopfd restarts: a new process, a new store, the entries back in LISTEN_FDS.
  FdStore next(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  std::vector<FdStore::Stored> back = next.TakeStored(&inherited, &problems);
  EXPECT_THAT(problems, IsEmpty());
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].device, "vm7");
  EXPECT_EQ(back[0].config_text, "name = \"vm7\"\n");
  // Under the names the config gives them, the same files.
  auto f = back[0].fds.Take("vm7.fault");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(Mark(f->get()), "vm7 fault");
  EXPECT_EQ(Mark(back[0].fds.Take("vm7.iommufd")->get()), "vm7 iommufd");
  EXPECT_EQ(Mark(back[0].fds.Take("vm7.ram")->get()), "vm7 ram");
  // What is not the store's stays for the others (the control socket).
  EXPECT_THAT(inherited.Untaken(), ElementsAre("control"));
  // Still stored (systemd keeps them until told): counted, and Forget removes them all.
  EXPECT_EQ(next.kept(), 4u);
  next.Forget("vm7");
  EXPECT_THAT(systemd.Names(), IsEmpty());
  EXPECT_EQ(next.kept(), 0u);
}

TEST(FdStoreTest, ForgetRemovesOnlyThatDeviceRecordFirst) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd a = Marked("a"), b = Marked("b");
  ASSERT_TRUE(store.Keep("a", "name = \"a\"\n", {{"a.fault", a.get()}}).ok());
  ASSERT_TRUE(store.Keep("b", "name = \"b\"\n", {{"b.fault", b.get()}}).ok());
  systemd.messages.clear();
  store.Forget("a");
  EXPECT_THAT(systemd.messages, ElementsAre("FDSTOREREMOVE=1\nFDNAME=iopfd-adopted/a",
                                            "FDSTOREREMOVE=1\nFDNAME=iopfd-adopted/a/fd0"));
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-adopted/b/fd0", "iopfd-adopted/b"));
  store.Forget("a");  // twice: nothing more
  store.Forget("never-kept");
  EXPECT_EQ(systemd.messages.size(), 2u);
  EXPECT_EQ(store.kept(), 2u);
}

TEST(FdStoreTest, AConfiguredDevicesLedgerComesBackWithItsFaultQueue) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd ledger = Marked("vm7 ledger"), fault = Marked("vm7 fault");
  ASSERT_TRUE(store.KeepLedger("vm7", ledger.get(), fault.get()).ok());
  EXPECT_EQ(store.kept(), 2u);
  // The fault queue first: a ledger that came back always finds it.
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-ledger/vm7/fault", "iopfd-ledger/vm7"));

  FdStore next(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  // Adoptions and ledgers are taken apart: neither takes the other's entries.
  EXPECT_THAT(next.TakeStored(&inherited, &problems), IsEmpty());
  std::vector<FdStore::StoredLedger> back = next.TakeLedgers(&inherited, &problems);
  EXPECT_THAT(problems, IsEmpty());
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].device, "vm7");
  EXPECT_EQ(Mark(back[0].ledger.get()), "vm7 ledger");
  EXPECT_EQ(Mark(back[0].fault.get()), "vm7 fault");
  EXPECT_THAT(inherited.Untaken(), ElementsAre("control"));
  EXPECT_EQ(next.kept(), 2u);
  systemd.messages.clear();
  next.ForgetLedger("vm7");
  EXPECT_THAT(systemd.messages, ElementsAre("FDSTOREREMOVE=1\nFDNAME=iopfd-ledger/vm7",
                                            "FDSTOREREMOVE=1\nFDNAME=iopfd-ledger/vm7/fault"));
  EXPECT_EQ(next.kept(), 0u);
  next.ForgetLedger("vm7");  // twice: nothing more
  EXPECT_EQ(systemd.messages.size(), 2u);
}

// A configured device's map record and the iommufd it records mappings of: kept, found apart
// from the ledgers and the adoptions, broken pairs removed, and forgotten by name.
TEST(FdStoreTest, AConfiguredDevicesMapRecordComesBackWithItsIommufd) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd record = Marked("vm7 maps"), iommufd = Marked("vm7 iommufd");
  UniqueFd ledger = Marked("vm7 ledger"), fault = Marked("vm7 fault");
  ASSERT_TRUE(store.KeepMapRecord("vm7", record.get(), iommufd.get()).ok());
  ASSERT_TRUE(store.KeepLedger("vm7", ledger.get(), fault.get()).ok());
  ASSERT_TRUE(store.KeepMapRecord("vm7", record.get(), iommufd.get()).ok());  // replaces
  EXPECT_EQ(store.kept(), 4u);
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-ledger/vm7/fault", "iopfd-ledger/vm7",
                                           "iopfd-maps/vm7/iommufd", "iopfd-maps/vm7"));

  FdStore next(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  inherited.Add("iopfd-maps/alone", Marked("alone maps"));  // as a clean stop leaves it
  inherited.Add("iopfd-maps/orphan/iommufd", Marked("x"));
  inherited.Add("iopfd-maps/a/b/iommufd", Marked("x"));
  std::vector<std::string> problems;
  EXPECT_THAT(next.TakeStored(&inherited, &problems), IsEmpty());
  EXPECT_EQ(next.TakeLedgers(&inherited, &problems).size(), 1u);
  std::vector<FdStore::StoredPair> back = next.TakeMapRecords(&inherited, &problems);
  EXPECT_THAT(problems,
              UnorderedElementsAre("fd store: 'iopfd-maps/a/b/iommufd' is not an entry iopfd "
                                   "makes; closed",
                                   "fd store: the map record of 'orphan' cannot be used: its "
                                   "'iommufd' entry came back without the map record; removed"));
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].device, "alone");
  EXPECT_EQ(Mark(back[0].main.get()), "alone maps");
  EXPECT_FALSE(back[0].partner.valid());
  EXPECT_EQ(back[1].device, "vm7");
  EXPECT_EQ(Mark(back[1].main.get()), "vm7 maps");
  EXPECT_EQ(Mark(back[1].partner.get()), "vm7 iommufd");
  EXPECT_EQ(next.kept(), 5u);
  // The record alone is one entry, kept and forgotten as such.
  systemd.messages.clear();
  next.ForgetMapRecord("alone");
  EXPECT_THAT(systemd.messages, ElementsAre("FDSTOREREMOVE=1\nFDNAME=iopfd-maps/alone"));
  ASSERT_TRUE(next.KeepMapRecord("alone", back[0].main.get(), -1).ok());
  EXPECT_THAT(systemd.messages.back(), HasSubstr("FDNAME=iopfd-maps/alone"));
  next.ForgetMapRecord("alone");
  systemd.messages.clear();
  next.ForgetMapRecord("vm7");
  EXPECT_THAT(systemd.messages, ElementsAre("FDSTOREREMOVE=1\nFDNAME=iopfd-maps/vm7",
                                            "FDSTOREREMOVE=1\nFDNAME=iopfd-maps/vm7/iommufd"));
  EXPECT_EQ(next.kept(), 2u);  // the ledger's stay
}

TEST(FdStoreTest, KeepingALedgerAgainReplacesItAndRoomIsChecked) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 3);
  UniqueFd l1 = Marked("ledger 1"), l2 = Marked("ledger 2"), fault = Marked("fault");
  ASSERT_TRUE(store.KeepLedger("a", l1.get(), fault.get()).ok());
  ASSERT_TRUE(store.KeepLedger("a", l2.get(), fault.get()).ok());
  EXPECT_EQ(store.kept(), 2u);
  ASSERT_EQ(systemd.entries.size(), 2u);
  EXPECT_EQ(Mark(systemd.entries[1].second.get()), "ledger 2");
  absl::Status st = store.KeepLedger("b", l1.get(), fault.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("b: in-flight ledger not kept in the fd store (2 of 3 "
                                      "entries used, 2 needed; raise FileDescriptorStoreMax=)"));
  EXPECT_EQ(store.kept(), 2u);
  // An adoption and a ledger share the room.
  EXPECT_EQ(store.Keep("c", "name = \"c\"\n", {{"c.fault", fault.get()}}).code(),
            absl::StatusCode::kResourceExhausted);
  // A send that fails takes back what was sent.
  FakeServiceManager failing;
  failing.fail_after = 1;
  FdStore broken(failing.sender(), 16);
  st = broken.KeepLedger("a", l1.get(), fault.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(broken.kept(), 0u);
}

TEST(FdStoreTest, LedgerEntriesThatMakeUpNoLedgerAreClosedRemovedAndNamed) {
  FakeServiceManager systemd;
  ListenFds inherited;
  inherited.Add("iopfd-ledger/only-fault/fault", Marked("x"));
  inherited.Add("iopfd-ledger/only-ledger", Marked("x"));
  inherited.Add("iopfd-ledger/twice", Marked("x"));
  inherited.Add("iopfd-ledger/twice", Marked("x"));
  inherited.Add("iopfd-ledger/twice/fault", Marked("x"));
  inherited.Add("iopfd-ledger/a/b", Marked("x"));
  inherited.Add("iopfd-ledger/", Marked("x"));
  inherited.Add("iopfd-ledger//fault", Marked("x"));
  inherited.Add("iopfd-ledger/good", Marked("ledger"));
  inherited.Add("iopfd-ledger/good/fault", Marked("fault"));
  inherited.Add("vm.fault", Marked("x"));
  FdStore store(systemd.sender(), 16);
  std::vector<std::string> problems;
  std::vector<FdStore::StoredLedger> back = store.TakeLedgers(&inherited, &problems);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].device, "good");
  EXPECT_THAT(
      problems,
      UnorderedElementsAre(
          "fd store: 'iopfd-ledger/a/b' is not an entry iopfd makes; closed",
          "fd store: 'iopfd-ledger/' is not an entry iopfd makes; closed",
          "fd store: 'iopfd-ledger//fault' is not an entry iopfd makes; closed",
          "fd store: the in-flight ledger of 'only-fault' cannot be used: its 'fault' entry "
          "came back without the in-flight ledger; removed",
          "fd store: the in-flight ledger of 'only-ledger' cannot be used: the in-flight ledger "
          "came back without its 'fault' entry; removed",
          "fd store: the in-flight ledger of 'twice' cannot be used: two entries named "
          "'iopfd-ledger/twice'; removed"));
  EXPECT_THAT(inherited.Untaken(), ElementsAre("vm.fault"));
  // Only the good one is still counted; each bad name was removed by one message.
  EXPECT_EQ(store.kept(), 2u);
  for (const char* n :
       {"iopfd-ledger/a/b", "iopfd-ledger/only-fault/fault", "iopfd-ledger/only-ledger",
        "iopfd-ledger/twice", "iopfd-ledger/twice/fault"}) {
    EXPECT_EQ(std::count(systemd.messages.begin(), systemd.messages.end(),
                         std::string("FDSTOREREMOVE=1\nFDNAME=") + n),
              1)
        << n;
  }
}

TEST(FdStoreTest, DisabledStoreSendsNothing) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 0);
  EXPECT_FALSE(store.enabled());
  UniqueFd a = Marked("a");
  EXPECT_TRUE(store.Keep("a", "x", {{"a.fault", a.get()}}).ok());
  store.Forget("a");
  EXPECT_TRUE(store.KeepLedger("a", a.get(), a.get()).ok());
  store.ForgetLedger("a");
  EXPECT_THAT(systemd.messages, IsEmpty());
  EXPECT_THAT(store.Describe(), HasSubstr("not enabled (FileDescriptorStoreMax="));
}

TEST(FdStoreTest, NoRoomStoresNothingAndSaysWhatToRaise) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 4);
  UniqueFd a = Marked("a"), b = Marked("b");
  ASSERT_TRUE(store.Keep("a", "x", {{"a.iommufd", a.get()}, {"a.fault", b.get()}}).ok());
  absl::Status st = store.Keep("b", "y", {{"b.iommufd", a.get()}, {"b.fault", b.get()}});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("b: not kept in the fd store (3 of 4 entries used, 3 needed; "
                                      "raise FileDescriptorStoreMax=)"));
  EXPECT_EQ(systemd.entries.size(), 3u);
  EXPECT_EQ(store.kept(), 3u);
}

TEST(FdStoreTest, ASendThatFailsTakesBackWhatWasSent) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd a = Marked("a"), b = Marked("b");
  systemd.fail_after = 1;  // the first descriptor goes, the second does not
  absl::Status st = store.Keep("a", "x", {{"a.iommufd", a.get()}, {"a.fault", b.get()}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(st.message(), HasSubstr("EPIPE"));
  EXPECT_EQ(store.kept(), 0u);
  // The removals were attempted for every name (they fail here too, which is only logged).
  EXPECT_THAT(systemd.messages,
              testing::Contains(HasSubstr("FDSTOREREMOVE=1\nFDNAME=iopfd-adopted/a/fd0")));
}

TEST(FdStoreTest, TheRecordIsSealed) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd a = Marked("a");
  ASSERT_TRUE(store.Keep("a", "name = \"a\"\n", {{"a.fault", a.get()}}).ok());
  const UniqueFd& record = systemd.entries.back().second;
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg)
  int seals = fcntl(record.get(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_LT(write(record.get(), "x", 1), 0);
}

TEST(FdStoreTest, EntriesThatMakeUpNoAdoptionAreClosedRemovedAndNamed) {
  FakeServiceManager systemd;
  FdStore first(systemd.sender(), 64);
  UniqueFd a = Marked("a"), b = Marked("b");
  ASSERT_TRUE(first.Keep("good", "name = \"good\"\n", {{"good.fault", a.get()}}).ok());
  ASSERT_TRUE(
      first.Keep("short", "name = \"short\"\n", {{"s.iommufd", a.get()}, {"s.fault", b.get()}})
          .ok());
  // A descriptor of "short" went missing; "orphan" has descriptors but no record (a stop
  // between storing them and the record); "junk" has a record that is not one; and a name under
  // the prefix iopfd never makes.
  std::erase_if(systemd.entries,
                [](const auto& e) { return e.first == "iopfd-adopted/short/fd1"; });
  systemd.entries.emplace_back("iopfd-adopted/orphan/fd0", Marked("o"));
  systemd.entries.emplace_back("iopfd-adopted/junk/fd0", Marked("j"));
  systemd.entries.emplace_back("iopfd-adopted/junk", Marked("{not json"));
  systemd.entries.emplace_back("iopfd-adopted/x/y", Marked("?"));
  systemd.entries.emplace_back("dsa0-fault", Marked("configured"));

  FdStore next(systemd.sender(), 64);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  std::vector<FdStore::Stored> back = next.TakeStored(&inherited, &problems);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].device, "good");
  EXPECT_THAT(
      problems,
      UnorderedElementsAre(
          "fd store: 'iopfd-adopted/x/y' is not an entry iopfd makes; closed",
          "fd store: adopted device 'junk' cannot be taken back: not a record: not valid JSON; "
          "removed",
          "fd store: adopted device 'orphan' cannot be taken back: descriptors without a record "
          "(iopfd stopped while storing or forgetting them); removed",
          "fd store: adopted device 'short' cannot be taken back: the record names 2 "
          "descriptors, 1 came back; removed"));
  // Only the good one and what is not the store's are left in systemd's store.
  EXPECT_THAT(systemd.Names(),
              UnorderedElementsAre("iopfd-adopted/good/fd0", "iopfd-adopted/good", "dsa0-fault"));
  EXPECT_THAT(inherited.Untaken(), UnorderedElementsAre("control", "dsa0-fault"));
  EXPECT_EQ(next.kept(), 2u);
}

// Issue 12: the store is read as hostile. A descriptor index is what Keep writes or nothing: a
// huge one (which made Forget send 100 million removals, or wrapped to 0 and was never removed)
// or a non-canonical one is not an entry iopfd makes; a device is removed by the names it has,
// one message each.
TEST(FdStoreTest, HugeOrNonCanonicalIndicesAreNotEntries) {
  FakeServiceManager systemd;
  systemd.entries.emplace_back("iopfd-adopted/d/fd99999999", Marked("h"));
  systemd.entries.emplace_back("iopfd-adopted/d/fd18446744073709551615", Marked("w"));
  systemd.entries.emplace_back("iopfd-adopted/d/fd01", Marked("z"));
  systemd.entries.emplace_back("iopfd-adopted/d/fd+1", Marked("p"));
  systemd.entries.emplace_back("iopfd-adopted/d/fd 1", Marked("s"));
  systemd.entries.emplace_back("iopfd-adopted/d/fd", Marked("n"));
  systemd.entries.emplace_back("iopfd-adopted//fd0", Marked("e"));
  systemd.entries.emplace_back("iopfd-adopted/", Marked("r"));
  systemd.entries.emplace_back("iopfd-adopted/big/fd1023", Marked("b"));  // no record
  FdStore next(systemd.sender(), 64);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  EXPECT_THAT(next.TakeStored(&inherited, &problems), IsEmpty());
  EXPECT_EQ(problems.size(), 9u);
  for (const std::string& p : problems) EXPECT_THAT(p, HasSubstr("fd store: ")) << p;
  EXPECT_THAT(problems, ::testing::Contains(HasSubstr("adopted device 'big'")));
  // Everything went, each with one message: no message names a name that was not there.
  EXPECT_THAT(systemd.Names(), ElementsAre());
  EXPECT_LE(systemd.messages.size(), 10u);
  EXPECT_EQ(next.kept(), 0u);
}

// A record whose fields have the wrong types: a version that is a string (which threw from
// nlohmann-json and terminated iopfd), a float too large for any integer (an undefined
// conversion), a negative one; fds that are not names; deep nesting.
TEST(FdStoreTest, RecordsWithFieldsOfTheWrongTypeAreRemovedNotFatal) {
  const std::vector<std::string> bad = {
      R"({"version":"1","config":"","fds":[]})",
      R"({"version":1e20,"config":"","fds":[]})",
      R"({"version":-1,"config":"","fds":[]})",
      R"({"version":1.0,"config":"","fds":[]})",
      R"({"version":1,"config":7,"fds":[]})",
      R"({"version":1,"config":"","fds":[7]})",
      R"({"version":1,"config":"","fds":{}})",
      R"([1])",
      R"({"version":1,"config":"","fds":[],"x":)" + std::string(100000, '[') +
          std::string(100000, ']') + "}",
  };
  FakeServiceManager systemd;
  for (size_t i = 0; i < bad.size(); ++i) {
    systemd.entries.emplace_back("iopfd-adopted/r" + std::to_string(i), Marked(bad[i]));
  }
  FdStore next(systemd.sender(), 64);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  EXPECT_THAT(next.TakeStored(&inherited, &problems), IsEmpty());
  ASSERT_EQ(problems.size(), bad.size());
  for (const std::string& p : problems) EXPECT_THAT(p, HasSubstr("cannot be taken back")) << p;
  EXPECT_THAT(problems.back(), HasSubstr("nested deeper than 64 levels"));
  EXPECT_THAT(systemd.Names(), ElementsAre());
}

}  // namespace
}  // namespace iopfd
