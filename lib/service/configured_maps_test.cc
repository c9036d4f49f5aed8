#include "iopfd/service/configured_maps.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <string>
#include <vector>

#include "fake_service_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/fd.h"
#include "iopfd/fault/map_record.h"
#include "iopfd/service/fd_store.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::unique_ptr<MapRecord> Record() {
  auto r = MapRecord::Create("vm7", {{IoasId(2), 0x100000, 1 << 20, 64 << 10}});
  EXPECT_TRUE(r.ok()) << r.status();
  (*r)->Set(0, 3, true);
  return *std::move(r);
}

UniqueFd Dup(int fd) { return UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)); }

// A record kept with the iommufd comes back to the device served on that same iommufd (another
// descriptor of the same open file), and stays kept as it is.
TEST(ConfiguredMapsTest, TheRecordComesBackOnTheSameIommufd) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd iommufd(memfd_create("iommufd", MFD_CLOEXEC));
  std::unique_ptr<MapRecord> record = Record();
  ConfiguredMaps maps(&store);
  maps.Keep("vm7", record.get(), iommufd.get());
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-maps/vm7/iommufd", "iopfd-maps/vm7"));
  maps.Keep("vm7", record.get(), iommufd.get());  // the same file: nothing sent again
  EXPECT_EQ(systemd.messages.size(), 2u);

  FdStore next_store(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  ConfiguredMaps next(&next_store);
  next.TakeStored(&inherited, &problems);
  EXPECT_THAT(problems, IsEmpty());
  UniqueFd again = Dup(iommufd.get());  // as the launcher hands it over at the next start
  std::unique_ptr<MapRecord> back = next.For("vm7", again.get());
  ASSERT_NE(back, nullptr);
  EXPECT_TRUE(back->Held(0, 3));
  systemd.messages.clear();
  next.Keep("vm7", back.get(), again.get());  // the file the store holds: kept as it is
  EXPECT_THAT(systemd.messages, IsEmpty());
  EXPECT_THAT(next.SettleUnclaimed(), IsEmpty());
  next.Forget("vm7");
  EXPECT_THAT(systemd.messages, ElementsAre("FDSTOREREMOVE=1\nFDNAME=iopfd-maps/vm7",
                                            "FDSTOREREMOVE=1\nFDNAME=iopfd-maps/vm7/iommufd"));
}

// On another iommufd the recorded mappings are not in this device's IOAS: no record, and the
// entries go (the old iommufd is no longer held open by the store).
TEST(ConfiguredMapsTest, AnotherIommufdGetsNoRecordAndTheEntriesGo) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd old_iommufd(memfd_create("iommufd", MFD_CLOEXEC));
  std::unique_ptr<MapRecord> record = Record();
  ConfiguredMaps maps(&store);
  maps.Keep("vm7", record.get(), old_iommufd.get());
  FdStore next_store(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  ConfiguredMaps next(&next_store);
  next.TakeStored(&inherited, &problems);
  systemd.messages.clear();
  UniqueFd new_iommufd(memfd_create("iommufd", MFD_CLOEXEC));
  EXPECT_EQ(next.For("vm7", new_iommufd.get()), nullptr);
  EXPECT_THAT(systemd.messages, ElementsAre("FDSTOREREMOVE=1\nFDNAME=iopfd-maps/vm7",
                                            "FDSTOREREMOVE=1\nFDNAME=iopfd-maps/vm7/iommufd"));
  EXPECT_EQ(next_store.kept(), 0u);
}

// A clean stop leaves the record alone (no iommufd held for the owner while iopfd is away): it
// is taken back at the next start, its units checked one by one by the device, and kept again
// with the iommufd the device is served on.
TEST(ConfiguredMapsTest, ARecordAloneIsTakenBackAndKeptAgainWithItsIommufd) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  std::unique_ptr<MapRecord> record = Record();
  ASSERT_TRUE(store.KeepMapRecord("vm7", record->fd(), -1).ok());
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-maps/vm7"));
  FdStore next_store(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  ConfiguredMaps next(&next_store);
  next.TakeStored(&inherited, &problems);
  EXPECT_THAT(problems, IsEmpty());
  UniqueFd iommufd(memfd_create("iommufd", MFD_CLOEXEC));
  std::unique_ptr<MapRecord> back = next.For("vm7", iommufd.get());
  ASSERT_NE(back, nullptr);
  EXPECT_TRUE(back->Held(0, 3));
  next.Keep("vm7", back.get(), iommufd.get());
  EXPECT_THAT(systemd.Names(), ElementsAre("iopfd-maps/vm7/iommufd", "iopfd-maps/vm7"));
}

// A record no configured device took is removed once the devices attached; a file that is not
// a record is refused and removed.
TEST(ConfiguredMapsTest, UnclaimedAndBrokenRecordsAreRemoved) {
  FakeServiceManager systemd;
  FdStore store(systemd.sender(), 16);
  UniqueFd iommufd(memfd_create("iommufd", MFD_CLOEXEC));
  UniqueFd not_a_record(memfd_create("junk", MFD_CLOEXEC));
  ASSERT_TRUE(store.KeepMapRecord("gone", Record()->fd(), iommufd.get()).ok());
  ASSERT_TRUE(store.KeepMapRecord("junk", not_a_record.get(), iommufd.get()).ok());
  FdStore next_store(systemd.sender(), 16);
  ListenFds inherited = systemd.Restart();
  std::vector<std::string> problems;
  ConfiguredMaps next(&next_store);
  next.TakeStored(&inherited, &problems);
  EXPECT_EQ(next.For("junk", iommufd.get()), nullptr);
  EXPECT_THAT(next.SettleUnclaimed(), ElementsAre("gone"));
  EXPECT_EQ(next_store.kept(), 0u);
}

}  // namespace
}  // namespace iopfd
