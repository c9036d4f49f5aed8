#include "iopfd/config/config.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/uapi.h"
#include "testing/member_count.h"

namespace iopfd {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

std::vector<std::string> ErrorStrings(const LoadResult& result) {
  std::vector<std::string> out;
  for (const ConfigError& e : result.errors) out.push_back(e.ToString());
  return out;
}

// Parses a device file named "dev.toml" without looking at backing files.
LoadResult Parse(std::string_view text) { return ParseDeviceText(text, "dev.toml", false); }

std::vector<std::string> Errors(std::string_view text) { return ErrorStrings(Parse(text)); }

// Lines 1-9 of a valid adopt device file; the body of its one region starts on line 10.
constexpr std::string_view kRegionPrefix = R"(name = "dsa0"
attach = "adopt"
[adopt]
iommufd_fd = "i"
fault_fd = "f"
device_id = 3
[[space]]
ioas_id = 2
[[space.region]]
)";

std::string WithRegion(std::string_view body) {
  return std::string(kRegionPrefix) + std::string(body);
}

// Lines 1-6 of a valid adopt device file; spaces follow from line 7.
constexpr std::string_view kAdoptHeader = R"(name = "dsa0"
attach = "adopt"
[adopt]
iommufd_fd = "i"
fault_fd = "f"
device_id = 3
)";

// A space of lines 1-7 (with the given first line) holding one valid region.
std::string Space(std::string_view first_line, uint64_t iova) {
  return std::string("[[space]]\n") + std::string(first_line) +
         "\n[[space.region]]\niova = " + std::to_string(iova) +
         "\nsize = 4096\nbacking = \"anonymous\"\naccess = \"r\"\n";
}

// ---- ConfigError, LogLevelName.

TEST(ConfigErrorTest, ToStringWithPosition) {
  ConfigError e{SourceLocation{"a.toml", 3, 7}, "bad"};
  EXPECT_EQ(e.ToString(), "a.toml:3:7: bad");
}

TEST(ConfigErrorTest, ToStringWithoutPosition) {
  ConfigError e{SourceLocation{"a.toml", 0, 0}, "bad"};
  EXPECT_EQ(e.ToString(), "a.toml: bad");
}

TEST(LogLevelNameTest, NamesEveryLevel) {
  EXPECT_EQ(LogLevelName(LogLevel::kError), "error");
  EXPECT_EQ(LogLevelName(LogLevel::kWarning), "warning");
  EXPECT_EQ(LogLevelName(LogLevel::kInfo), "info");
  EXPECT_EQ(LogLevelName(LogLevel::kDebug), "debug");
}

// ---- ParseSize.

TEST(ParseSizeTest, AcceptsNumbersAndUnits) {
  struct Case {
    std::string_view text;
    uint64_t bytes;
  };
  const Case cases[] = {
      {"0", 0},
      {"4096", 4096},
      {"10B", 10},
      {"4KiB", 4096},
      {"4K", 4096},
      {"2MiB", 2u << 20},
      {"2M", 2u << 20},
      {"2 MiB", 2u << 20},
      {"3\tGiB", 3ull << 30},
      {"1G", 1ull << 30},
      {"1TiB", 1ull << 40},
      {"5T", 5ull << 40},
      {" 64KiB ", 64u << 10},
      {"0007", 7},
      {"18446744073709551615", UINT64_MAX},
      {"16777215TiB", 16777215ull << 40},
      {"17179869183G", 17179869183ull << 30},
  };
  for (const Case& c : cases) {
    absl::StatusOr<uint64_t> size = ParseSize(c.text);
    ASSERT_TRUE(size.ok()) << c.text << ": " << size.status();
    EXPECT_EQ(*size, c.bytes) << c.text;
  }
}

TEST(ParseSizeTest, RejectsInvalidSizes) {
  struct Case {
    std::string_view text;
    std::string_view why;
  };
  const Case cases[] = {
      {"", "empty"},
      {"   ", "empty"},
      {"-1", "must not be negative"},
      {"-4KiB", "must not be negative"},
      {"+4", "expected a number"},
      {"KiB", "expected a number"},
      {"1.5MiB", "fractional"},
      {"2.0", "fractional"},
      {"2MB", "unknown unit \"MB\""},
      {"2kib", "unknown unit \"kib\""},
      {"2k", "unknown unit \"k\""},
      {"0x1000", "unknown unit \"x1000\""},
      {"2 MiB x", "unknown unit \"MiB x\""},
      {"1e3", "unknown unit \"e3\""},
      {"18446744073709551616", "does not fit in 64 bits"},
      {"99999999999999999999999", "does not fit in 64 bits"},
      {"16777216TiB", "does not fit in 64 bits"},
      {"17179869184G", "does not fit in 64 bits"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<uint64_t> size = ParseSize(c.text);
    ASSERT_FALSE(size.ok()) << c.text << " parsed as " << *size;
    EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(size.status().message()), HasSubstr(std::string(c.why))) << c.text;
  }
}

TEST(ParseSizeTest, MessageQuotesTheText) {
  absl::StatusOr<uint64_t> size = ParseSize("2MB");
  ASSERT_FALSE(size.ok());
  EXPECT_EQ(size.status().message(),
            "invalid size \"2MB\": unknown unit \"MB\" (use B, KiB, MiB, GiB, TiB, K, M, G or T)");
}

// ---- ParseAccess.

TEST(ParseAccessTest, MapsLettersToPermissionBits) {
  EXPECT_EQ(ParseAccess("r").value(), uapi::kPermRead);
  EXPECT_EQ(ParseAccess("w").value(), uapi::kPermWrite);
  EXPECT_EQ(ParseAccess("x").value(), uapi::kPermExec);
  EXPECT_EQ(ParseAccess("p").value(), uapi::kPermPriv);
  EXPECT_EQ(ParseAccess("rw").value(), uapi::kPermRead | uapi::kPermWrite);
  EXPECT_EQ(ParseAccess("wr").value(), uapi::kPermRead | uapi::kPermWrite);
  EXPECT_EQ(ParseAccess("rwxp").value(),
            uapi::kPermRead | uapi::kPermWrite | uapi::kPermExec | uapi::kPermPriv);
}

TEST(ParseAccessTest, RejectsEmptyRepeatedAndUnknownLetters) {
  struct Case {
    std::string_view text;
    std::string_view message;
  };
  const Case cases[] = {
      {"", "empty access string (use the letters r, w, x, p)"},
      {"rr", "repeated access letter 'r' in \"rr\""},
      {"rwr", "repeated access letter 'r' in \"rwr\""},
      {"rz", "unknown access letter 'z' in \"rz\" (use r, w, x, p)"},
      {"R", "unknown access letter 'R' in \"R\" (use r, w, x, p)"},
      {"r w", "unknown access letter ' ' in \"r w\" (use r, w, x, p)"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<uint32_t> access = ParseAccess(c.text);
    ASSERT_FALSE(access.ok()) << c.text;
    EXPECT_EQ(access.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(access.status().message()), c.message);
  }
}

// ---- Valid device files.

TEST(DeviceTest, FullAdoptFile) {
  LoadResult result = Parse(R"(# A device handed over by its owner.
name = "dsa0"
attach = "adopt"

[adopt]
iommufd_fd = "dsa0-iommufd"
fault_fd = "dsa0-fault"
device_id = 3

[limits]
max_group_records = 128
max_fault_map_bytes = "4MiB"

[[space]]
pasid = 5
ioas_id = 2

  [[space.region]]
  iova = 0x40000000
  size = "1 GiB"
  backing = "file:/dev/shm/dsa0-heap"
  offset = "2MiB"
  access = "rw"
  prefetch = "64KiB"

  [[space.region]]
  iova = 0x1000000
  size = 8192
  backing = "fd:dsa0-ring"
  access = "rwxp"

[[space]]
ioas_id = 7

  [[space.region]]
  iova = 0x2000
  size = "4K"
  backing = "anonymous"
  access = "r"
)");
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  ASSERT_EQ(result.config.devices.size(), 1u);
  const DeviceConfig& d = result.config.devices[0];
  EXPECT_EQ(d.name, "dsa0");
  EXPECT_EQ(d.file, "dev.toml");
  EXPECT_EQ(d.mode, AttachMode::kAdopt);
  EXPECT_EQ(d.adopt.iommufd_fd, "dsa0-iommufd");
  EXPECT_EQ(d.adopt.fault_fd, "dsa0-fault");
  EXPECT_EQ(d.adopt.device_id, 3u);
  EXPECT_EQ(d.limits.max_group_records, 128u);
  EXPECT_EQ(d.limits.max_fault_map_bytes, 4u << 20);
  ASSERT_EQ(d.spaces.size(), 2u);

  const SpaceConfig& s0 = d.spaces[0];
  EXPECT_EQ(s0.pasid, 5u);
  EXPECT_EQ(s0.ioas_id, 2u);
  EXPECT_EQ(s0.where.file, "dev.toml");
  EXPECT_EQ(s0.where.line, 14);
  EXPECT_EQ(s0.where.column, 1);
  ASSERT_EQ(s0.regions.size(), 2u);
  // Sorted by iova: the second region of the file comes first.
  const RegionConfig& ring = s0.regions[0];
  EXPECT_EQ(ring.iova, 0x1000000u);
  EXPECT_EQ(ring.size, 8192u);
  EXPECT_EQ(ring.backing, BackingKind::kInheritedFd);
  EXPECT_EQ(ring.fd_name, "dsa0-ring");
  EXPECT_EQ(ring.path, "");
  EXPECT_EQ(ring.offset, 0u);
  EXPECT_EQ(ring.access, uapi::kPermRead | uapi::kPermWrite | uapi::kPermExec | uapi::kPermPriv);
  EXPECT_EQ(ring.prefetch, 0u);
  EXPECT_EQ(ring.page_size, 4096u);
  EXPECT_EQ(ring.where.line, 26);
  EXPECT_EQ(ring.where.column, 3);
  const RegionConfig& heap = s0.regions[1];
  EXPECT_EQ(heap.iova, 0x40000000u);
  EXPECT_EQ(heap.size, 1u << 30);
  EXPECT_EQ(heap.backing, BackingKind::kFile);
  EXPECT_EQ(heap.path, "/dev/shm/dsa0-heap");
  EXPECT_EQ(heap.fd_name, "");
  EXPECT_EQ(heap.offset, 2u << 20);
  EXPECT_EQ(heap.access, uapi::kPermRead | uapi::kPermWrite);
  EXPECT_EQ(heap.prefetch, 64u << 10);
  EXPECT_EQ(heap.page_size, 4096u);
  EXPECT_EQ(heap.where.line, 18);

  const SpaceConfig& s1 = d.spaces[1];
  EXPECT_FALSE(s1.pasid.has_value());
  EXPECT_EQ(s1.ioas_id, 7u);
  ASSERT_EQ(s1.regions.size(), 1u);
  EXPECT_EQ(s1.regions[0].iova, 0x2000u);
  EXPECT_EQ(s1.regions[0].size, 4096u);
  EXPECT_EQ(s1.regions[0].backing, BackingKind::kAnonymous);
  EXPECT_EQ(s1.regions[0].access, uapi::kPermRead);
}

TEST(DeviceTest, VfioFileWithCdev) {
  LoadResult result = Parse(R"(name = "dsa1"
attach = "vfio"
[vfio]
cdev = "/dev/vfio/devices/vfio0"
[[space]]
pasid = 1048575
[[space.region]]
iova = 0
size = "2MiB"
backing = "anonymous"
access = "rw"
)");
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  ASSERT_EQ(result.config.devices.size(), 1u);
  const DeviceConfig& d = result.config.devices[0];
  EXPECT_EQ(d.name, "dsa1");
  EXPECT_EQ(d.mode, AttachMode::kVfio);
  EXPECT_EQ(d.vfio.cdev, "/dev/vfio/devices/vfio0");
  EXPECT_EQ(d.vfio.pci, "");
  ASSERT_EQ(d.spaces.size(), 1u);
  EXPECT_EQ(d.spaces[0].pasid, 1048575u);
  EXPECT_EQ(d.spaces[0].ioas_id, 0u);
  ASSERT_EQ(d.spaces[0].regions.size(), 1u);
  EXPECT_EQ(d.spaces[0].regions[0].iova, 0u);
  EXPECT_EQ(d.spaces[0].regions[0].size, 2u << 20);
}

TEST(DeviceTest, VfioPciIsLowercased) {
  LoadResult result = Parse(R"(name = "dsa1"
attach = "vfio"
vfio = { pci = "0000:6A:1f.7" }
[[space]]
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)");
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.devices[0].vfio.pci, "0000:6a:1f.7");
  EXPECT_EQ(result.config.devices[0].vfio.cdev, "");
}

TEST(DeviceTest, VfioPciWithLongDomain) {
  LoadResult result = Parse(R"(name = "d"
attach = "vfio"
vfio = { pci = "10000:e1:00.0" }
[[space]]
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)");
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.devices[0].vfio.pci, "10000:e1:00.0");
}

TEST(DeviceTest, Defaults) {
  LoadResult result =
      Parse(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                       "access = \"r\"\n"));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const DeviceConfig& d = result.config.devices[0];
  EXPECT_EQ(d.limits.max_group_records, 512u);
  EXPECT_EQ(d.limits.max_fault_map_bytes, 2u << 20);
  ASSERT_EQ(d.spaces.size(), 1u);
  EXPECT_FALSE(d.spaces[0].pasid.has_value());
  const RegionConfig& r = d.spaces[0].regions[0];
  EXPECT_EQ(r.offset, 0u);
  EXPECT_EQ(r.prefetch, 0u);
  EXPECT_EQ(r.page_size, 4096u);
  EXPECT_EQ(r.where.line, 9);
  EXPECT_EQ(r.where.column, 1);
}

TEST(DeviceTest, AdjacentRegionsDoNotOverlap) {
  LoadResult result = Parse(WithRegion(R"(iova = 0x2000
size = 4096
backing = "anonymous"
access = "r"
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
[[space.region]]
iova = 0x3000
size = 4096
backing = "anonymous"
access = "r"
)"));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const auto& regions = result.config.devices[0].spaces[0].regions;
  ASSERT_EQ(regions.size(), 3u);
  EXPECT_EQ(regions[0].iova, 0x1000u);
  EXPECT_EQ(regions[1].iova, 0x2000u);
  EXPECT_EQ(regions[2].iova, 0x3000u);
}

TEST(DeviceTest, RegionMayEndAtTheTopOfTheAddressSpace) {
  // iova + size = 2^64 - 4096, the end of the last page below 2^64.
  LoadResult result = Parse(WithRegion(R"(iova = 0x7ffffffffffff000
size = "9223372036854775808"
backing = "anonymous"
access = "r"
)"));
  EXPECT_THAT(ErrorStrings(result), IsEmpty());
}

// ---- Syntax errors.

TEST(DeviceErrorTest, TomlSyntaxError) {
  LoadResult result = Parse("name = \"dsa0\"\nattach = = \"adopt\"\n");
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre("dev.toml:2:10: invalid TOML: Error while parsing value: could not "
                          "determine value type"));
  EXPECT_TRUE(result.config.devices.empty());
}

TEST(DeviceErrorTest, TomlDuplicateKey) {
  EXPECT_THAT(
      Errors("name = \"a\"\nname = \"b\"\n"),
      ElementsAre("dev.toml:2:8: invalid TOML: Error while parsing key-value pair: cannot redefine "
                  "existing string 'name'"));
}

// ---- Unknown keys.

TEST(DeviceErrorTest, UnknownKeysEverywhere) {
  EXPECT_THAT(
      Errors(R"(name = "dsa0"
attach = "adopt"
colour = "blue"
[adopt]
iommufd_fd = "i"
fault_fd = "f"
device_id = 3
fault = "x"
[limits]
max_records = 1
[[space]]
ioas_id = 2
pasdi = 4
[[space.region]]
iova = 0x1000
sise = 4096
size = 4096
backing = "anonymous"
access = "r"
[extra]
)"),
      ElementsAre(
          "dev.toml:3:1: colour: unknown key (expected one of name, attach, sysfs, adopt, vfio, "
          "limits, drain, space)",
          "dev.toml:8:1: adopt.fault: unknown key (expected one of iommufd_fd, fault_fd, "
          "device_id, device_fd, switch_module, switch_target)",
          "dev.toml:10:1: limits.max_records: unknown key (expected one of max_group_records, "
          "max_fault_map_bytes, max_resident)",
          "dev.toml:13:1: space[0].pasdi: unknown key (expected one of pasid, ioas_id, hwpt_id, "
          "dirty_tracking, max_resident, region)",
          "dev.toml:16:1: space[0].region[0].sise: unknown key (expected one of iova, size, "
          "backing, offset, access, prefetch, map_unit, first_touch)",
          "dev.toml:20:2: extra: unknown key (expected one of name, attach, sysfs, adopt, vfio, "
          "limits, drain, space)"));
}

constexpr char kVfioHead[] = R"(name = "nic0"
attach = "vfio"
[vfio]
cdev = "/dev/vfio/devices/vfio0"
[[space]]
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)";

TEST(DeviceDrainTest, DefaultsToTheOwnerWithTenSeconds) {
  LoadResult r = Parse(kVfioHead);
  ASSERT_THAT(ErrorStrings(r), IsEmpty());
  EXPECT_EQ(r.config.devices[0].drain.halt, HaltMethod::kOwner);
  EXPECT_EQ(r.config.devices[0].drain.halt_timeout_ms, 10000u);
}

TEST(DeviceDrainTest, ResetAndTimeoutInVfioMode) {
  LoadResult r =
      Parse(std::string(kVfioHead) + "[drain]\nhalt = \"reset\"\nhalt_timeout_ms = 250\n");
  ASSERT_THAT(ErrorStrings(r), IsEmpty());
  EXPECT_EQ(r.config.devices[0].drain.halt, HaltMethod::kReset);
  EXPECT_EQ(r.config.devices[0].drain.halt_timeout_ms, 250u);
}

TEST(DeviceDrainTest, BadValuesNameKeyAndPlace) {
  EXPECT_THAT(
      Errors(std::string(kVfioHead) + "[drain]\nhalt = \"bus\"\nhalt_timeout_ms = 0\n"
                                      "when = 1\n"),
      ElementsAre("dev.toml:12:8: drain.halt: must be \"owner\", \"reset\" or \"bus-master\" "
                  "(got \"bus\")",
                  "dev.toml:13:19: drain.halt_timeout_ms: must be in 1..600000 (got 0)",
                  "dev.toml:14:1: drain.when: unknown key (expected one of halt, "
                  "halt_timeout_ms)"));
  EXPECT_THAT(Errors(std::string(kVfioHead) + "[drain]\nhalt = 1\n"),
              ElementsAre("dev.toml:12:8: drain.halt: expected a string, got an integer"));
}

TEST(DeviceDrainTest, AdoptModeCannotReset) {
  EXPECT_THAT(Errors(R"(name = "dsa0"
attach = "adopt"
[adopt]
iommufd_fd = "i"
fault_fd = "f"
device_id = 3
[drain]
halt = "reset"
[[space]]
ioas_id = 2
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)"),
              ElementsAre("dev.toml:8:8: drain.halt: \"reset\" needs the VFIO device fd (attach = "
                          "\"vfio\", or adopt.device_fd, or a switch module that resets); "
                          "otherwise the owner stops the device (\"owner\")"));
}

constexpr char kAdoptSwitchable[] = R"(name = "dsa0"
attach = "adopt"
[adopt]
iommufd_fd = "i"
fault_fd = "f"
device_id = 3
%s
[drain]
halt = "reset"
[[space]]
ioas_id = 2
%s
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)";

std::string Switchable(const std::string& adopt_line, const std::string& space_line) {
  std::string t = kAdoptSwitchable;
  t.replace(t.find("%s"), 2, adopt_line);
  t.replace(t.find("%s"), 2, space_line);
  return t;
}

TEST(DeviceDrainTest, AdoptWithTheDeviceFdMayResetAndNeedsTheOwnersHwpt) {
  LoadResult r = Parse(Switchable("device_fd = \"d\"", "hwpt_id = 9"));
  ASSERT_THAT(ErrorStrings(r), IsEmpty());
  const DeviceConfig& d = r.config.devices[0];
  EXPECT_EQ(d.adopt.device_fd, "d");
  EXPECT_TRUE(d.adopt.can_switch());
  EXPECT_EQ(d.drain.halt, HaltMethod::kReset);
  EXPECT_EQ(d.spaces[0].hwpt_id, 9u);
  EXPECT_THAT(Errors(Switchable("device_fd = \"d\"", "")),
              ElementsAre("dev.toml:10:1: space[0].hwpt_id: required with adopt.device_fd (the "
                          "IOPF-capable HWPT the owner attached, which a drain puts back)"));
  EXPECT_THAT(Errors(Switchable("device_fd = \"f\"", "hwpt_id = 9")),
              ElementsAre(HasSubstr("dev.toml:7:13: adopt.device_fd: must differ from "
                                    "adopt.iommufd_fd and adopt.fault_fd"),
                          HasSubstr("drain.halt: \"reset\" needs the VFIO device fd"),
                          HasSubstr("space[0].hwpt_id: only with")));
}

TEST(DeviceDrainTest, AdoptWithASwitchModuleMayAskForReset) {
  // Whether the module can reset is known when it is loaded (the attach fails then if not).
  LoadResult r =
      Parse(Switchable("switch_module = \"/usr/lib/x.so\"\nswitch_target = \"7\"", "hwpt_id = 9"));
  ASSERT_THAT(ErrorStrings(r), IsEmpty());
  EXPECT_EQ(r.config.devices[0].adopt.switch_module, "/usr/lib/x.so");
  EXPECT_EQ(r.config.devices[0].adopt.switch_target, "7");
  EXPECT_EQ(r.config.devices[0].drain.halt, HaltMethod::kReset);
  std::string bad = Switchable("switch_module = \"x.so\"", "hwpt_id = 9");
  EXPECT_THAT(Errors(bad), ElementsAre(HasSubstr("adopt.switch_module: must be an absolute path "
                                                 "(got \"x.so\")"),
                                       HasSubstr("drain.halt: \"reset\" needs the VFIO device fd"),
                                       HasSubstr("space[0].hwpt_id: only with")));
}

TEST(DeviceDrainTest, HwptIdOnlyWhereIopfdCanSwitch) {
  std::string t = Switchable("", "hwpt_id = 9");
  t.replace(t.find("halt = \"reset\""), 14, "halt = \"owner\"");
  EXPECT_THAT(Errors(t), ElementsAre(HasSubstr("space[0].hwpt_id: only with adopt.device_fd or "
                                               "adopt.switch_module")));
  EXPECT_THAT(Errors(std::string(kVfioHead).insert(std::string(kVfioHead).find("[[space.region]]"),
                                                   "hwpt_id = 3\n")),
              ElementsAre(HasSubstr("space[0].hwpt_id: not allowed with attach = \"vfio\"")));
  EXPECT_THAT(Errors(Switchable("switch_target = \"7\"\ndevice_fd = \"d\"", "hwpt_id = 9")),
              ElementsAre(HasSubstr("adopt.switch_target: only with adopt.switch_module")));
  EXPECT_THAT(Errors(Switchable("switch_module = \"/m.so\"\ndevice_fd = \"d\"", "hwpt_id = 9")),
              ElementsAre(HasSubstr("adopt.switch_module: not with adopt.device_fd")));
}

// space.dirty_tracking: adopt mode, with the owner's HWPT named (hwpt_id), one space per HWPT;
// vfio mode, on by default.
TEST(DevicePagingTest, DirtyTrackingNeedsTheHwptInAdoptMode) {
  std::string t = Switchable("", "hwpt_id = 9\ndirty_tracking = true");
  t.replace(t.find("halt = \"reset\""), 14, "halt = \"owner\"");
  LoadResult r = Parse(t);
  ASSERT_THAT(ErrorStrings(r), IsEmpty());
  EXPECT_TRUE(r.config.devices[0].spaces[0].dirty_tracking);
  EXPECT_EQ(r.config.devices[0].spaces[0].hwpt_id, 9u);
  std::string no_hwpt = Switchable("", "dirty_tracking = true");
  no_hwpt.replace(no_hwpt.find("halt = \"reset\""), 14, "halt = \"owner\"");
  EXPECT_THAT(Errors(no_hwpt),
              ElementsAre("dev.toml:10:1: space[0].hwpt_id: required with dirty_tracking = true "
                          "(the HWPT whose dirty bits iopfd reads)"));
  std::string wrong = Switchable("", "hwpt_id = 9\ndirty_tracking = \"yes\"");
  wrong.replace(wrong.find("halt = \"reset\""), 14, "halt = \"owner\"");
  EXPECT_THAT(Errors(wrong), Contains("dev.toml:13:18: space[0].dirty_tracking: expected a boolean "
                                      "(true or false), got a string"));
  // Vfio mode: iopfd's own HWPT, with dirty bits where the IOMMU has them unless turned off.
  LoadResult vfio = Parse(std::string(kVfioHead).insert(
      std::string(kVfioHead).find("[[space.region]]"), "dirty_tracking = false\n"));
  ASSERT_THAT(ErrorStrings(vfio), IsEmpty());
  EXPECT_FALSE(vfio.config.devices[0].spaces[0].WantsDirtyBits(AttachMode::kVfio));
  EXPECT_TRUE(SpaceConfig{}.WantsDirtyBits(AttachMode::kVfio));
  EXPECT_FALSE(SpaceConfig{}.WantsDirtyBits(AttachMode::kAdopt));
  // A PASID space reading the same HWPT's bits would steal them from the first.
  std::string twice =
      t + "\n[[space]]\npasid = 5\nioas_id = 4\nhwpt_id = 9\ndirty_tracking = true\n";
  EXPECT_THAT(Errors(twice), Contains(HasSubstr("space[1].hwpt_id: 9 reads its dirty bits for "
                                                "space[0] already (dirty_tracking): one space per "
                                                "HWPT")));
}

TEST(DeviceDrainTest, BusMasterNeedsTheVfioDeviceFd) {
  LoadResult r = Parse(std::string(kVfioHead) + "[drain]\nhalt = \"bus-master\"\n");
  ASSERT_THAT(ErrorStrings(r), IsEmpty());
  EXPECT_EQ(r.config.devices[0].drain.halt, HaltMethod::kBusMaster);
  std::string adopt = Switchable("switch_module = \"/m.so\"", "hwpt_id = 9");
  adopt.replace(adopt.find("halt = \"reset\""), 14, "halt = \"bus-master\"");
  EXPECT_THAT(Errors(adopt), ElementsAre(HasSubstr("drain.halt: \"bus-master\" needs the VFIO "
                                                   "device fd (attach = \"vfio\", or "
                                                   "adopt.device_fd)")));
  adopt = Switchable("device_fd = \"d\"", "hwpt_id = 9");
  adopt.replace(adopt.find("halt = \"reset\""), 14, "halt = \"bus-master\"");
  EXPECT_THAT(Errors(adopt), IsEmpty());
}

TEST(DeviceDrainTest, ChangingTheDrainSettingsIsAChange) {
  LoadResult a = Parse(kVfioHead);
  LoadResult b = Parse(std::string(kVfioHead) + "[drain]\nhalt_timeout_ms = 5\n");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(SameDeviceSettings(a.config.devices[0], b.config.devices[0]));
  EXPECT_TRUE(SameDeviceSettings(a.config.devices[0], a.config.devices[0]));
}

using iopfd_testing::MemberCount;

// Reload restarts a device exactly when its settings changed (SameDeviceSettings, the settings'
// defaulted operator==). Each member of every settings struct is changed here, one at a time,
// and must make a difference; where a setting was read from must not. A member added to one of
// these structs fails the count below until its change is added to the list: that is how a new
// key cannot be left out of the comparison.
TEST(DeviceSettingsTest, EveryMemberIsComparedAndOnlySettingsAre) {
  static_assert(MemberCount<RegionConfig>() == 12, "add the new member's change below");
  static_assert(MemberCount<SpaceConfig>() == 7, "add the new member's change below");
  static_assert(MemberCount<AdoptConfig>() == 6, "add the new member's change below");
  static_assert(MemberCount<VfioConfig>() == 2, "add the new member's change below");
  static_assert(MemberCount<DeviceLimits>() == 3, "add the new member's change below");
  static_assert(MemberCount<DrainConfig>() == 2, "add the new member's change below");
  static_assert(MemberCount<DeviceConfig>() == 9, "add the new member's change below");
  DeviceConfig base;
  base.name = "d";
  base.spaces.emplace_back();
  base.spaces[0].regions.emplace_back();
  using Change = std::function<void(DeviceConfig&)>;
  const std::vector<std::pair<std::string, Change>> settings = {
      {"region.iova", [](DeviceConfig& d) { d.spaces[0].regions[0].iova = 1; }},
      {"region.size", [](DeviceConfig& d) { d.spaces[0].regions[0].size = 1; }},
      {"region.backing",
       [](DeviceConfig& d) { d.spaces[0].regions[0].backing = BackingKind::kFile; }},
      {"region.path", [](DeviceConfig& d) { d.spaces[0].regions[0].path = "/p"; }},
      {"region.fd_name", [](DeviceConfig& d) { d.spaces[0].regions[0].fd_name = "f"; }},
      {"region.offset", [](DeviceConfig& d) { d.spaces[0].regions[0].offset = 1; }},
      {"region.access", [](DeviceConfig& d) { d.spaces[0].regions[0].access = 1; }},
      {"region.prefetch", [](DeviceConfig& d) { d.spaces[0].regions[0].prefetch = 1; }},
      {"region.page_size", [](DeviceConfig& d) { d.spaces[0].regions[0].page_size = 1; }},
      {"region.map_unit", [](DeviceConfig& d) { d.spaces[0].regions[0].map_unit = 1; }},
      {"region.first_touch",
       [](DeviceConfig& d) { d.spaces[0].regions[0].first_touch_page = false; }},
      {"space.max_resident", [](DeviceConfig& d) { d.spaces[0].max_resident = 1; }},
      {"limits.max_resident", [](DeviceConfig& d) { d.limits.max_resident = 1; }},
      {"space.pasid", [](DeviceConfig& d) { d.spaces[0].pasid = 1; }},
      {"space.ioas_id", [](DeviceConfig& d) { d.spaces[0].ioas_id = 1; }},
      {"space.hwpt_id", [](DeviceConfig& d) { d.spaces[0].hwpt_id = 1; }},
      {"space.dirty_tracking", [](DeviceConfig& d) { d.spaces[0].dirty_tracking = true; }},
      {"space.regions", [](DeviceConfig& d) { d.spaces[0].regions.emplace_back(); }},
      {"adopt.iommufd_fd", [](DeviceConfig& d) { d.adopt.iommufd_fd = "i"; }},
      {"adopt.fault_fd", [](DeviceConfig& d) { d.adopt.fault_fd = "f"; }},
      {"adopt.device_id", [](DeviceConfig& d) { d.adopt.device_id = 1; }},
      {"adopt.device_fd", [](DeviceConfig& d) { d.adopt.device_fd = "v"; }},
      {"adopt.switch_module", [](DeviceConfig& d) { d.adopt.switch_module = "/m.so"; }},
      {"adopt.switch_target", [](DeviceConfig& d) { d.adopt.switch_target = "t"; }},
      {"vfio.cdev", [](DeviceConfig& d) { d.vfio.cdev = "/dev/vfio/devices/vfio0"; }},
      {"vfio.pci", [](DeviceConfig& d) { d.vfio.pci = "0000:00:01.0"; }},
      {"limits.max_group_records", [](DeviceConfig& d) { d.limits.max_group_records = 1; }},
      {"limits.max_fault_map_bytes", [](DeviceConfig& d) { d.limits.max_fault_map_bytes = 1; }},
      {"drain.halt", [](DeviceConfig& d) { d.drain.halt = HaltMethod::kReset; }},
      {"drain.halt_timeout_ms", [](DeviceConfig& d) { d.drain.halt_timeout_ms = 1; }},
      {"name", [](DeviceConfig& d) { d.name = "e"; }},
      {"mode", [](DeviceConfig& d) { d.mode = AttachMode::kVfio; }},
      {"sysfs", [](DeviceConfig& d) { d.sysfs = "/sys/devices/x"; }},
      {"spaces", [](DeviceConfig& d) { d.spaces.emplace_back(); }},
  };
  for (const auto& [what, change] : settings) {
    DeviceConfig changed = base;
    change(changed);
    EXPECT_FALSE(SameDeviceSettings(base, changed)) << what << " is not compared";
  }
  const std::vector<std::pair<std::string, Change>> provenance = {
      {"file", [](DeviceConfig& d) { d.file = "/etc/iopfd/devices.d/other.toml"; }},
      {"space.where",
       [](DeviceConfig& d) {
         d.spaces[0].where = SourceLocation{"x.toml", 3, 1};
       }},
      {"region.where",
       [](DeviceConfig& d) {
         d.spaces[0].regions[0].where = SourceLocation{"x.toml", 9, 2};
       }},
  };
  for (const auto& [what, change] : provenance) {
    DeviceConfig moved = base;
    change(moved);
    EXPECT_TRUE(SameDeviceSettings(base, moved)) << what << " is not a setting";
  }
}

// Each enum's one table of names: every value once, each name parses back to its value, and the
// error message lists them all.
template <typename E, size_t N>
void ExpectRoundTrip(const EnumName<E> (&table)[N], E last) {
  EXPECT_EQ(N, static_cast<size_t>(last) + 1) << "a value without a name";
  for (size_t i = 0; i < N; ++i) {
    EXPECT_EQ(static_cast<size_t>(table[i].value), i);
    EXPECT_EQ(ValueNamed(table, NameOf(table, table[i].value)), table[i].value);
  }
  EXPECT_EQ(ValueNamed(table, "no such name"), std::nullopt);
}

TEST(EnumNamesTest, EveryValueHasOneNameThatParsesBack) {
  ExpectRoundTrip(kAttachModeNames, AttachMode::kVfio);
  ExpectRoundTrip(kHaltMethodNames, HaltMethod::kBusMaster);
  ExpectRoundTrip(kLogLevelNames, LogLevel::kDebug);
  EXPECT_EQ(NamesForMessage(kHaltMethodNames), "\"owner\", \"reset\" or \"bus-master\"");
  EXPECT_EQ(NamesForMessage(kAttachModeNames), "\"adopt\" or \"vfio\"");
  EXPECT_EQ(LogLevelName(LogLevel::kWarning), "warning");
}

TEST(DeviceErrorTest, UnknownKeyInVfioTable) {
  EXPECT_THAT(Errors(R"(name = "d"
attach = "vfio"
[vfio]
cdev = "/dev/vfio/devices/vfio0"
  bdf = "0000:00:04.0"
[[space]]
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)"),
              ElementsAre("dev.toml:5:3: vfio.bdf: unknown key (expected one of cdev, pci)"));
}

// ---- Wrong types.

TEST(DeviceErrorTest, WrongTypes) {
  EXPECT_THAT(Errors(R"(name = 5
attach = "adopt"
[adopt]
iommufd_fd = "i"
fault_fd = ["f"]
device_id = "3"
[limits]
max_fault_map_bytes = 1.5
[[space]]
ioas_id = true
[[space.region]]
iova = "0x1000"
size = 4096
backing = "anonymous"
access = "r"
)"),
              ElementsAre("dev.toml:1:8: name: expected a string, got an integer",
                          "dev.toml:5:12: adopt.fault_fd: expected a string, got an array",
                          "dev.toml:6:13: adopt.device_id: expected an integer, got a string",
                          "dev.toml:8:23: limits.max_fault_map_bytes: expected a size (an integer "
                          "or a string such as \"2MiB\"), got a float",
                          "dev.toml:10:11: space[0].ioas_id: expected an integer, got a boolean",
                          "dev.toml:12:8: space[0].region[0].iova: expected an integer, got a "
                          "string"));
}

// Lines 1-2 of a device file; root keys can follow from line 3, then an [adopt] table.
constexpr std::string_view kNameAndAttach = "name = \"d\"\nattach = \"adopt\"\n";
constexpr std::string_view kAdoptTable =
    "[adopt]\niommufd_fd = \"i\"\nfault_fd = \"f\"\ndevice_id = 3\n";

TEST(DeviceErrorTest, SpaceMustBeAnArrayOfTables) {
  EXPECT_THAT(Errors(std::string(kNameAndAttach) + "space = 3\n" + std::string(kAdoptTable)),
              ElementsAre("dev.toml:3:9: space: expected an array of tables ([[space]]), got an "
                          "integer"));
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + "[space]\nioas_id = 1\n"),
              ElementsAre("dev.toml:7:1: space: expected an array of tables ([[space]]), got a "
                          "table"));
}

TEST(DeviceErrorTest, SpaceElementMustBeATable) {
  EXPECT_THAT(Errors(std::string(kNameAndAttach) + "space = [1]\n" + std::string(kAdoptTable)),
              ElementsAre("dev.toml:3:10: space[0]: expected a table, got an integer"));
}

TEST(DeviceErrorTest, AdoptMustBeATable) {
  EXPECT_THAT(Errors(R"(name = "d"
attach = "adopt"
adopt = "yes"
)" + Space("ioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:3:9: adopt: expected a table, got a string"));
}

// ---- Missing keys.

TEST(DeviceErrorTest, MissingNameAndAttachAreFileLevel) {
  LoadResult result = Parse(Space("pasid = 1", 0x1000));
  EXPECT_THAT(ErrorStrings(result), ElementsAre("dev.toml: name: missing required key",
                                                "dev.toml: attach: missing required key"));
  EXPECT_EQ(result.errors[0].where.line, 0);
  EXPECT_EQ(result.errors[0].where.file, "dev.toml");
}

TEST(DeviceErrorTest, MissingAdoptTable) {
  EXPECT_THAT(Errors("name = \"d\"\nattach = \"adopt\"\n" + Space("ioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:2:10: adopt: table [adopt] is required when attach = "
                          "\"adopt\""));
}

TEST(DeviceErrorTest, MissingVfioTable) {
  EXPECT_THAT(Errors("name = \"d\"\nattach = \"vfio\"\n" + Space("", 0x1000)),
              ElementsAre("dev.toml:2:10: vfio: table [vfio] is required when attach = \"vfio\""));
}

TEST(DeviceErrorTest, MissingAdoptKeys) {
  EXPECT_THAT(
      Errors("name = \"d\"\nattach = \"adopt\"\n\n[adopt]\n" + Space("ioas_id = 1", 0x1000)),
      ElementsAre("dev.toml:4:1: adopt.iommufd_fd: missing required key",
                  "dev.toml:4:1: adopt.fault_fd: missing required key",
                  "dev.toml:4:1: adopt.device_id: missing required key"));
}

TEST(DeviceErrorTest, MissingSpace) {
  EXPECT_THAT(Errors(kAdoptHeader),
              ElementsAre("dev.toml: space: at least one [[space]] is required"));
}

TEST(DeviceErrorTest, EmptySpaceArray) {
  EXPECT_THAT(Errors(std::string(kNameAndAttach) + "space = []\n" + std::string(kAdoptTable)),
              ElementsAre("dev.toml:3:9: space: at least one [[space]] is required"));
}

TEST(DeviceErrorTest, SpaceWithoutRegions) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + "[[space]]\nioas_id = 1\n"),
              ElementsAre("dev.toml:7:1: space[0].region: at least one [[space.region]] is "
                          "required"));
}

TEST(DeviceErrorTest, MissingIoasIdInAdoptMode) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("pasid = 1", 0x1000)),
              ElementsAre("dev.toml:7:1: space[0].ioas_id: missing required key"));
}

TEST(DeviceErrorTest, MissingRegionKeys) {
  EXPECT_THAT(Errors(WithRegion("prefetch = 0\n")),
              ElementsAre("dev.toml:9:1: space[0].region[0].iova: missing required key",
                          "dev.toml:9:1: space[0].region[0].size: missing required key",
                          "dev.toml:9:1: space[0].region[0].backing: missing required key",
                          "dev.toml:9:1: space[0].region[0].access: missing required key"));
}

// ---- Names and modes.

TEST(DeviceErrorTest, InvalidNames) {
  const std::string long_name(65, 'a');
  const std::string max_name(64, 'a');
  const std::string rest =
      "attach = \"adopt\"\n[adopt]\niommufd_fd = \"i\"\nfault_fd = \"f\"\n"
      "device_id = 3\n" +
      Space("ioas_id = 1", 0x1000);
  EXPECT_THAT(Errors("name = \"dsa 0\"\n" + rest),
              ElementsAre("dev.toml:1:8: name: \"dsa 0\" is not a valid device name (1 to 64 of "
                          "A-Z a-z 0-9 _ . -)"));
  EXPECT_THAT(Errors("name = \"\"\n" + rest), ElementsAre(HasSubstr("dev.toml:1:8: name: \"\" is "
                                                                    "not a valid device name")));
  EXPECT_THAT(Errors("name = \"..\"\n" + rest),
              ElementsAre(HasSubstr("dev.toml:1:8: name: \"..\" is not a valid device name")));
  EXPECT_THAT(Errors("name = \"" + long_name + "\"\n" + rest),
              ElementsAre(HasSubstr("is not a valid device name")));
  EXPECT_THAT(Errors("name = \"" + max_name + "\"\n" + rest), IsEmpty());
  EXPECT_THAT(Errors("name = \"A-z_0.9\"\n" + rest), IsEmpty());
}

TEST(DeviceErrorTest, UnknownAttachMode) {
  EXPECT_THAT(Errors("name = \"d\"\nattach = \"iommufd\"\n" + Space("ioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:2:10: attach: must be \"adopt\" or \"vfio\" (got "
                          "\"iommufd\")"));
}

TEST(DeviceErrorTest, VfioTableForbiddenInAdoptMode) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + "[vfio]\ncdev = \"/dev/vfio/devices/vfio0\"\n" +
                     Space("ioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:7:1: vfio: not allowed when attach = \"adopt\""));
}

TEST(DeviceErrorTest, AdoptTableAndIoasForbiddenInVfioMode) {
  EXPECT_THAT(Errors(R"(name = "d"
attach = "vfio"
[vfio]
cdev = "/dev/vfio/devices/vfio0"
[adopt]
device_id = 3
[[space]]
ioas_id = 1
[[space.region]]
iova = 0x1000
size = 4096
backing = "anonymous"
access = "r"
)"),
              ElementsAre("dev.toml:5:1: adopt: not allowed when attach = \"vfio\"",
                          "dev.toml:8:11: space[0].ioas_id: not allowed with attach = \"vfio\" "
                          "(iopfd allocates the IOAS)"));
}

std::vector<std::string> VfioErrors(std::string_view vfio_body) {
  return Errors("name = \"d\"\nattach = \"vfio\"\n[vfio]\n" + std::string(vfio_body) +
                Space("", 0x1000));
}

TEST(DeviceErrorTest, VfioNeedsExactlyOneOfCdevAndPci) {
  EXPECT_THAT(VfioErrors("cdev = \"/dev/vfio/devices/vfio0\"\npci = \"0000:00:04.0\"\n"),
              ElementsAre("dev.toml:3:1: vfio: set exactly one of cdev and pci, not both"));
  EXPECT_THAT(VfioErrors(""), ElementsAre("dev.toml:3:1: vfio: one of cdev and pci is required"));
}

TEST(DeviceErrorTest, VfioCdevMustBeAbsolute) {
  EXPECT_THAT(VfioErrors("cdev = \"vfio0\"\n"),
              ElementsAre("dev.toml:4:8: vfio.cdev: must be an absolute path (got \"vfio0\")"));
}

TEST(DeviceErrorTest, VfioBadPciAddresses) {
  for (std::string_view pci :
       {"00:04.0", "0000:00:04", "0000:00:4.0", "0000:0g:04.0", "0000:00:20.0", "0000:00:04.8",
        "0000-00:04.0", "0000:00:04.00", "123456789:00:04.0", " 0000:00:04.0"}) {
    EXPECT_THAT(VfioErrors("pci = \"" + std::string(pci) + "\"\n"),
                ElementsAre("dev.toml:4:7: vfio.pci: \"" + std::string(pci) +
                            "\" is not a PCI address DDDD:BB:DD.F (e.g. \"0000:00:04.0\")"))
        << pci;
  }
}

TEST(DeviceErrorTest, AdoptFdNames) {
  const auto adopt = [](std::string_view iommufd, std::string_view fault) {
    return Errors("name = \"d\"\nattach = \"adopt\"\n[adopt]\niommufd_fd = \"" +
                  std::string(iommufd) + "\"\nfault_fd = \"" + std::string(fault) +
                  "\"\ndevice_id = 1\n" + Space("ioas_id = 1", 0x1000));
  };
  EXPECT_THAT(adopt("", "f"),
              ElementsAre("dev.toml:4:14: adopt.iommufd_fd: file descriptor name \"\" must not "
                          "be empty"));
  EXPECT_THAT(adopt("i", "a:b"),
              ElementsAre("dev.toml:5:12: adopt.fault_fd: file descriptor name \"a:b\" must not "
                          "contain ':' (the LISTEN_FDNAMES separator)"));
  EXPECT_THAT(adopt("same", "same"),
              ElementsAre("dev.toml:5:12: adopt.fault_fd: must differ from adopt.iommufd_fd "
                          "(both are \"same\")"));
  EXPECT_THAT(adopt("a\\tb", "f"), ElementsAre(HasSubstr("must be printable ASCII")));
  EXPECT_THAT(adopt(std::string(256, 'x'), "f"),
              ElementsAre(HasSubstr("must be at most 255 characters")));
  EXPECT_THAT(adopt(std::string(255, 'x'), "f"), IsEmpty());
}

// ---- Ranges.

TEST(DeviceErrorTest, DeviceIdRange) {
  const auto with_id = [](std::string_view id) {
    return Errors(
        "name = \"d\"\nattach = \"adopt\"\n[adopt]\niommufd_fd = \"i\"\nfault_fd = "
        "\"f\"\ndevice_id = " +
        std::string(id) + "\n" + Space("ioas_id = 1", 0x1000));
  };
  EXPECT_THAT(with_id("0"),
              ElementsAre("dev.toml:6:13: adopt.device_id: must be in 1..4294967295 (got 0)"));
  EXPECT_THAT(with_id("4294967296"),
              ElementsAre("dev.toml:6:13: adopt.device_id: must be in 1..4294967295 (got "
                          "4294967296)"));
  EXPECT_THAT(with_id("4294967295"), IsEmpty());
}

TEST(DeviceErrorTest, RegionFdMustNotBeTheDevicesOwnFds) {
  EXPECT_THAT(
      Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"fd:f\"\naccess = \"r\"\n")),
      ElementsAre(AllOf(StartsWith("dev.toml:9:"),
                        HasSubstr("region backing: fd \"f\" is adopt.fault_fd, not memory"))));
  EXPECT_THAT(
      Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"fd:i\"\naccess = \"r\"\n")),
      ElementsAre(HasSubstr("is adopt.iommufd_fd, not memory")));
  EXPECT_THAT(
      Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"fd:ram\"\naccess = \"r\"\n")),
      IsEmpty());
}

TEST(DeviceErrorTest, PasidRange) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("pasid = 0\nioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:8:9: space[0].pasid: must be in 1..1048575 (got 0)"));
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("pasid = 0x100000\nioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:8:9: space[0].pasid: must be in 1..1048575 (got 1048576)"));
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("pasid = -1\nioas_id = 1", 0x1000)),
              ElementsAre("dev.toml:8:9: space[0].pasid: must be in 1..1048575 (got -1)"));
}

TEST(DeviceErrorTest, IoasIdRange) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("ioas_id = 0", 0x1000)),
              ElementsAre("dev.toml:8:11: space[0].ioas_id: must be in 1..4294967295 (got 0)"));
}

TEST(DeviceErrorTest, LimitsRanges) {
  const auto limits = [](std::string_view body) {
    return Errors(std::string(kAdoptHeader) + "[limits]\n" + std::string(body) +
                  Space("ioas_id = 1", 0x1000));
  };
  EXPECT_THAT(limits("max_group_records = 0\n"),
              ElementsAre("dev.toml:8:21: limits.max_group_records: must be in 1..65536 (got 0)"));
  EXPECT_THAT(limits("max_group_records = 65537\n"),
              ElementsAre("dev.toml:8:21: limits.max_group_records: must be in 1..65536 (got "
                          "65537)"));
  EXPECT_THAT(limits("max_fault_map_bytes = \"2KiB\"\n"),
              ElementsAre("dev.toml:8:23: limits.max_fault_map_bytes: must be in "
                          "4096..1073741824 bytes (got 2048)"));
  EXPECT_THAT(limits("max_fault_map_bytes = \"2GiB\"\n"),
              ElementsAre("dev.toml:8:23: limits.max_fault_map_bytes: must be in "
                          "4096..1073741824 bytes (got 2147483648)"));
  EXPECT_THAT(limits("max_fault_map_bytes = \"2 furlongs\"\n"),
              ElementsAre("dev.toml:8:23: limits.max_fault_map_bytes: invalid size \"2 "
                          "furlongs\": unknown unit \"furlongs\" (use B, KiB, MiB, GiB, TiB, K, M, "
                          "G or T)"));
  EXPECT_THAT(limits("max_group_records = 65536\nmax_fault_map_bytes = \"1GiB\"\n"), IsEmpty());
  EXPECT_THAT(limits("max_fault_map_bytes = 4096\n"), IsEmpty());
}

// ---- Regions.

TEST(RegionErrorTest, MisalignedIova) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1001\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n")),
              ElementsAre("dev.toml:10:8: space[0].region[0].iova: must be aligned to the page "
                          "size 4096 (got 0x1001)"));
}

TEST(RegionErrorTest, NegativeIova) {
  EXPECT_THAT(Errors(WithRegion("iova = -4096\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n")),
              ElementsAre("dev.toml:10:8: space[0].region[0].iova: must be >= 0 (got -4096)"));
}

TEST(RegionErrorTest, SizeNotAMultipleOfThePageSize) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = \"5000\"\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n")),
              ElementsAre("dev.toml:11:8: space[0].region[0].size: must be a multiple of the "
                          "page size 4096 (got 5000)"));
}

TEST(RegionErrorTest, ZeroSize) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 0\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n")),
              ElementsAre("dev.toml:11:8: space[0].region[0].size: must be greater than 0"));
}

TEST(RegionErrorTest, NegativeAndInvalidSizes) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = -4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n")),
              ElementsAre("dev.toml:11:8: space[0].region[0].size: a size must not be negative "
                          "(got -4096)"));
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = \"1.5MiB\"\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n")),
              ElementsAre("dev.toml:11:8: space[0].region[0].size: invalid size \"1.5MiB\": "
                          "fractional sizes are not supported"));
}

TEST(RegionErrorTest, IovaPlusSizeOverflows) {
  // iova + size = 2^64: the end is not representable.
  EXPECT_THAT(Errors(WithRegion("iova = 0x7ffffffffffff000\nsize = \"9223372036854779904\"\n"
                                "backing = \"anonymous\"\naccess = \"r\"\n")),
              ElementsAre("dev.toml:11:8: space[0].region[0].size: iova 0x7ffffffffffff000 + "
                          "size 0x8000000000001000 overflows 64 bits"));
}

TEST(RegionErrorTest, MisalignedOffset) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"fd:mem\"\n"
                                "offset = 512\naccess = \"r\"\n")),
              ElementsAre("dev.toml:13:10: space[0].region[0].offset: must be aligned to the "
                          "page size 4096 (got 512)"));
}

TEST(RegionErrorTest, AnonymousOffsetMustBeZero) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "offset = \"4KiB\"\naccess = \"r\"\n")),
              ElementsAre("dev.toml:13:10: space[0].region[0].offset: must be 0 for an anonymous "
                          "backing (got 4096)"));
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "offset = 0\naccess = \"r\"\n")),
              IsEmpty());
}

TEST(RegionErrorTest, Prefetch) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\nprefetch = 6000\n")),
              ElementsAre("dev.toml:14:12: space[0].region[0].prefetch: must be a multiple of "
                          "4096 (got 6000)"));
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\nprefetch = \"4MiB\"\n")),
              ElementsAre("dev.toml:14:12: space[0].region[0].prefetch: must not exceed "
                          "limits.max_fault_map_bytes (2097152) (got 4194304)"));
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\nprefetch = \"2MiB\"\n")),
              IsEmpty());
}

TEST(RegionErrorTest, PrefetchIsCheckedAgainstConfiguredLimit) {
  // [limits] comes after the spaces in the file and still applies.
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"r\"\nprefetch = \"64KiB\"\n"
                                "[limits]\nmax_fault_map_bytes = \"32KiB\"\n")),
              ElementsAre("dev.toml:14:12: space[0].region[0].prefetch: must not exceed "
                          "limits.max_fault_map_bytes (32768) (got 65536)"));
}

TEST(RegionErrorTest, BadBackings) {
  const auto backing = [](std::string_view b) {
    return Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"" + std::string(b) +
                             "\"\naccess = \"r\"\n"));
  };
  EXPECT_THAT(backing("shm"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: must be \"anonymous\", "
                          "\"file:/absolute/path\" or \"fd:NAME\" (got \"shm\")"));
  EXPECT_THAT(backing("file:dev/shm/x"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: the file of "
                          "\"file:dev/shm/x\" must be an absolute path"));
  EXPECT_THAT(backing("file:"), ElementsAre(HasSubstr("must be an absolute path")));
  EXPECT_THAT(backing("fd:a:b"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: file descriptor name "
                          "\"a:b\" must not contain ':' (the LISTEN_FDNAMES separator)"));
  EXPECT_THAT(backing("fd:"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: file descriptor name "
                          "\"\" must not be empty"));
  EXPECT_THAT(backing("fd:iopfd-adopted/vm7/fd0"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: file descriptor name "
                          "\"iopfd-adopted/vm7/fd0\" must not begin with 'iopfd-adopted/' "
                          "(iopfd's own names in systemd's fd store)"));
  EXPECT_THAT(backing("fd:iopfd-ledger/vm7/fault"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: file descriptor name "
                          "\"iopfd-ledger/vm7/fault\" must not begin with 'iopfd-ledger/' "
                          "(iopfd's own names in systemd's fd store)"));
  EXPECT_THAT(backing("fd:iopfd-maps/vm7/iommufd"),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: file descriptor name "
                          "\"iopfd-maps/vm7/iommufd\" must not begin with 'iopfd-maps/' "
                          "(iopfd's own names in systemd's fd store)"));
}

TEST(RegionErrorTest, BadAccess) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"rwz\"\n")),
              ElementsAre("dev.toml:13:10: space[0].region[0].access: unknown access letter 'z' "
                          "in \"rwz\" (use r, w, x, p)"));
  EXPECT_THAT(Errors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"anonymous\"\n"
                                "access = \"\"\n")),
              ElementsAre("dev.toml:13:10: space[0].region[0].access: empty access string (use "
                          "the letters r, w, x, p)"));
}

TEST(RegionErrorTest, OverlappingRegionsNameBoth) {
  LoadResult result = Parse(WithRegion(R"(iova = 0x2000
size = 0x2000
backing = "anonymous"
access = "r"
[[space.region]]
iova = 0x1000
size = 0x2000
backing = "anonymous"
access = "r"
)"));
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre("dev.toml:9:1: space[0].region[0] [0x2000, 0x4000) overlaps "
                          "space[0].region[1] [0x1000, 0x3000)"));
  // What could be parsed is still returned, sorted.
  const auto& regions = result.config.devices[0].spaces[0].regions;
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(regions[0].iova, 0x1000u);
  EXPECT_EQ(regions[1].iova, 0x2000u);
}

TEST(RegionErrorTest, RegionContainingTwoOthers) {
  EXPECT_THAT(Errors(WithRegion(R"(iova = 0x1000
size = "1MiB"
backing = "anonymous"
access = "r"
[[space.region]]
iova = 0x4000
size = 4096
backing = "anonymous"
access = "r"
[[space.region]]
iova = 0x8000
size = 4096
backing = "anonymous"
access = "r"
)")),
              ElementsAre("dev.toml:14:1: space[0].region[1] [0x4000, 0x5000) overlaps "
                          "space[0].region[0] [0x1000, 0x101000)",
                          "dev.toml:19:1: space[0].region[2] [0x8000, 0x9000) overlaps "
                          "space[0].region[0] [0x1000, 0x101000)"));
}

TEST(RegionErrorTest, SameIovaInDifferentSpacesIsFine) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("pasid = 1\nioas_id = 1", 0x1000) +
                     Space("pasid = 2\nioas_id = 1", 0x1000)),
              IsEmpty());
}

// ---- Spaces.

TEST(SpaceErrorTest, DuplicatePasid) {
  EXPECT_THAT(
      Errors(std::string(kAdoptHeader) + Space("pasid = 5\nioas_id = 1", 0x1000) +
             Space("pasid = 6\nioas_id = 1", 0x1000) + Space("pasid = 5\nioas_id = 1", 0x1000)),
      ElementsAre("dev.toml:24:9: space[2].pasid: PASID 5 is already used by space[0]"));
}

TEST(SpaceErrorTest, TwoSpacesWithoutPasid) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("ioas_id = 1", 0x1000) +
                     Space("ioas_id = 2", 0x1000)),
              ElementsAre("dev.toml:14:1: space[1]: a second space without pasid (space[0] is "
                          "the no-PASID space)"));
}

TEST(SpaceErrorTest, InvalidPasidIsNotTakenForMissing) {
  EXPECT_THAT(Errors(std::string(kAdoptHeader) + Space("ioas_id = 1", 0x1000) +
                     Space("pasid = 0\nioas_id = 2", 0x1000)),
              ElementsAre("dev.toml:15:9: space[1].pasid: must be in 1..1048575 (got 0)"));
}

// ---- Several errors at once.

TEST(DeviceErrorTest, CollectsAllErrorsInFileOrder) {
  LoadResult result = Parse(R"(name = "bad name"
attach = "adopt"
[adopt]
iommufd_fd = "i"
fault_fd = "f"
device_id = 0
[[space]]
ioas_id = 2
[[space.region]]
iova = 0x1001
size = "3 parsecs"
backing = "anonymous"
access = "rr"
)");
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre(HasSubstr("dev.toml:1:8: name: \"bad name\" is not a valid"),
                          HasSubstr("dev.toml:6:13: adopt.device_id: must be in"),
                          HasSubstr("dev.toml:10:8: space[0].region[0].iova: must be aligned"),
                          HasSubstr("dev.toml:11:8: space[0].region[0].size: invalid size"),
                          HasSubstr("dev.toml:13:10: space[0].region[0].access: repeated")));
  // What could be parsed is kept.
  ASSERT_EQ(result.config.devices.size(), 1u);
  EXPECT_EQ(result.config.devices[0].adopt.iommufd_fd, "i");
  EXPECT_EQ(result.config.devices[0].spaces[0].ioas_id, 2u);
}

// ---- Files on disk.

// A directory under the system temp dir, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "iopfd-config-test-XXXXXX");
    const char* made = ::mkdtemp(templ.data());
    if (made == nullptr) {
      ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
      return;
    }
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  // Creates (once) and returns an empty subdirectory "devices".
  std::string Devices() const {
    std::string devices = path_ + "/devices";
    std::filesystem::create_directory(devices);
    return devices;
  }
  // Writes a file; a relative name is taken relative to the directory.
  std::string Write(const std::string& name, std::string_view text) const {
    std::string file = name.starts_with('/') ? name : path_ + "/" + name;
    std::ofstream out(file);
    out << text;
    return file;
  }

 private:
  std::string path_;
};

LoadOptions Options(const std::string& global_path, std::optional<std::string> devices_dir,
                    bool global_optional) {
  LoadOptions options;
  options.global_path = global_path;
  options.devices_dir = std::move(devices_dir);
  options.global_optional = global_optional;
  return options;
}

std::string DeviceText(std::string_view name, uint32_t device_id = 1) {
  return "name = \"" + std::string(name) +
         "\"\nattach = \"adopt\"\n[adopt]\niommufd_fd = \"i\"\nfault_fd = \"f\"\ndevice_id = " +
         std::to_string(device_id) + "\n" + Space("ioas_id = 1", 0x1000);
}

TEST(GlobalConfigTest, EveryKey) {
  TempDir dir;
  const std::string devices = dir.path() + "/devices";
  ASSERT_TRUE(std::filesystem::create_directory(devices));
  const std::string global = dir.Write("iopfd.toml", R"([daemon]
log_level = "debug"
devices_dir = ")" + devices + R"("
ring_entries = 1024
read_records = 64
max_read_records = 4096
)");
  LoadResult result = LoadConfig(Options(global, std::nullopt, false));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const GlobalConfig& g = result.config.global;
  EXPECT_EQ(g.log_level, LogLevel::kDebug);
  EXPECT_EQ(g.devices_dir, devices);
  EXPECT_EQ(g.ring_entries, 1024u);
  EXPECT_EQ(g.read_records, 64u);
  EXPECT_EQ(g.max_read_records, 4096u);
  EXPECT_TRUE(result.config.devices.empty());
}

TEST(GlobalConfigTest, EveryLogLevel) {
  TempDir dir;
  for (LogLevel level : {LogLevel::kError, LogLevel::kWarning, LogLevel::kInfo, LogLevel::kDebug}) {
    const std::string global = dir.Write(
        "iopfd.toml", "[daemon]\nlog_level = \"" + std::string(LogLevelName(level)) + "\"\n");
    LoadResult result = LoadConfig(Options(global, dir.Devices(), true));
    ASSERT_THAT(ErrorStrings(result), IsEmpty());
    EXPECT_EQ(result.config.global.log_level, level);
  }
}

TEST(GlobalConfigTest, MissingOptionalGlobalFileGivesDefaults) {
  TempDir dir;
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", dir.path(), true));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const GlobalConfig& g = result.config.global;
  EXPECT_EQ(g.log_level, LogLevel::kInfo);
  EXPECT_EQ(g.devices_dir, "/etc/iopfd/devices.d");
  EXPECT_EQ(g.ring_entries, 256u);
  EXPECT_EQ(g.read_records, 256u);
  EXPECT_EQ(g.max_read_records, 65536u);
}

TEST(GlobalConfigTest, EmptyGlobalFileGivesDefaults) {
  TempDir dir;
  const std::string global = dir.Write("iopfd.toml", "# nothing\n[daemon]\n");
  LoadResult result = LoadConfig(Options(global, dir.Devices(), true));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.global.ring_entries, 256u);
  EXPECT_EQ(result.config.global.log_level, LogLevel::kInfo);
}

TEST(GlobalConfigTest, MissingRequiredGlobalFile) {
  TempDir dir;
  const std::string global = dir.path() + "/none.toml";
  LoadResult result = LoadConfig(Options(global, dir.Devices(), false));
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre(global + ": open: ENOENT (No such file or directory)"));
}

TEST(GlobalConfigTest, GlobalFileIsADirectory) {
  TempDir dir;
  LoadResult result = LoadConfig(Options(dir.path(), dir.path(), true));
  EXPECT_THAT(ErrorStrings(result), ElementsAre(dir.path() + ": read: EISDIR (Is a directory)"));
}

std::vector<std::string> GlobalErrors(std::string_view text) {
  TempDir dir;
  const std::string global = dir.Write("iopfd.toml", text);
  std::vector<std::string> errors = ErrorStrings(LoadConfig(Options(global, dir.Devices(), true)));
  // Report errors relative to the file name, as the temp dir varies.
  for (std::string& e : errors) {
    if (e.starts_with(dir.path() + "/")) e.erase(0, dir.path().size() + 1);
  }
  return errors;
}

TEST(GlobalConfigTest, Errors) {
  EXPECT_THAT(GlobalErrors("[daemon]\nlog_level = \"verbose\"\n"),
              ElementsAre("iopfd.toml:2:13: daemon.log_level: must be \"error\", \"warning\", "
                          "\"info\" or \"debug\" (got \"verbose\")"));
  EXPECT_THAT(GlobalErrors("[daemon]\nring_entries = 100\n"),
              ElementsAre("iopfd.toml:2:16: daemon.ring_entries: must be a power of two (got "
                          "100)"));
  EXPECT_THAT(GlobalErrors("[daemon]\nring_entries = 4\n"),
              ElementsAre("iopfd.toml:2:16: daemon.ring_entries: must be in 8..32768 (got 4)"));
  EXPECT_THAT(GlobalErrors("[daemon]\nring_entries = 65536\n"),
              ElementsAre("iopfd.toml:2:16: daemon.ring_entries: must be in 8..32768 (got "
                          "65536)"));
  EXPECT_THAT(GlobalErrors("[daemon]\nread_records = 0\n"),
              ElementsAre("iopfd.toml:2:16: daemon.read_records: must be in 1..1048576 (got 0)"));
  EXPECT_THAT(GlobalErrors("[daemon]\nmax_read_records = 2097152\n"),
              ElementsAre("iopfd.toml:2:20: daemon.max_read_records: must be in 1..1048576 (got "
                          "2097152)"));
  EXPECT_THAT(GlobalErrors("[daemon]\nread_records = 512\nmax_read_records = 256\n"),
              ElementsAre("iopfd.toml:2:16: daemon.read_records (512) must not exceed "
                          "daemon.max_read_records (256)"));
  // The default read_records (256) is checked against a given max.
  EXPECT_THAT(GlobalErrors("[daemon]\nmax_read_records = 128\n"),
              ElementsAre("iopfd.toml:2:20: daemon.read_records (256) must not exceed "
                          "daemon.max_read_records (128)"));
  EXPECT_THAT(GlobalErrors("[daemon]\ndevices_dir = \"devices.d\"\n"),
              ElementsAre("iopfd.toml:2:15: daemon.devices_dir: must be an absolute path (got "
                          "\"devices.d\")"));
  EXPECT_THAT(GlobalErrors("[daemon]\nring_entries = \"256\"\n"),
              ElementsAre("iopfd.toml:2:16: daemon.ring_entries: expected an integer, got a "
                          "string"));
  EXPECT_THAT(
      GlobalErrors("[daemon]\nlog_lvl = \"info\"\n[server]\n"),
      ElementsAre("iopfd.toml:2:1: daemon.log_lvl: unknown key (expected one of "
                  "log_level, devices_dir, ring_entries, read_records, max_read_records, "
                  "max_resident)",
                  "iopfd.toml:3:2: server: unknown key (expected one of daemon, control, paging)"));
  EXPECT_THAT(GlobalErrors("daemon = 1\n"),
              ElementsAre("iopfd.toml:1:10: daemon: expected a table, got an integer"));
  EXPECT_THAT(GlobalErrors("[daemon\n"), ElementsAre(HasSubstr("iopfd.toml:1:8: invalid TOML: ")));
}

TEST(GlobalConfigTest, ValidBoundaries) {
  EXPECT_THAT(GlobalErrors("[daemon]\nring_entries = 8\nread_records = 1\nmax_read_records = 1\n"),
              IsEmpty());
  EXPECT_THAT(GlobalErrors("[daemon]\nring_entries = 32768\nread_records = 1048576\n"
                           "max_read_records = 1048576\n"),
              IsEmpty());
}

TEST(GlobalConfigTest, ControlTable) {
  EXPECT_THAT(GlobalErrors("[control]\nsocket = \"/run/x/io.iopfd\"\ngroup = \"root\"\n"
                           "admin_group = \"root\"\nmax_connections = 8\n"
                           "max_connections_per_uid = 2\nmax_message_bytes = 4096\n"),
              IsEmpty());
  EXPECT_THAT(GlobalErrors("[control]\nsocket = \"io.iopfd\"\n"),
              ElementsAre("iopfd.toml:2:10: control.socket: must be an absolute path of at most "
                          "107 bytes (got \"io.iopfd\")"));
  EXPECT_THAT(GlobalErrors("[control]\ngroup = \"no-such-group-iopfd\"\n"),
              ElementsAre("iopfd.toml:2:9: control.group: no such group "
                          "\"no-such-group-iopfd\""));
  EXPECT_THAT(GlobalErrors("[control]\nmax_connections = 0\nmax_message_bytes = 10\nport = 1\n"),
              ElementsAre("iopfd.toml:2:19: control.max_connections: must be in 1..4096 (got 0)",
                          "iopfd.toml:3:21: control.max_message_bytes: must be in 1024..67108864 "
                          "(got 10)",
                          HasSubstr("iopfd.toml:4:1: control.port: unknown key")));
  EXPECT_THAT(GlobalErrors("[control]\nmessage_timeout_ms = 100\nidle_timeout_ms = 86400000\n"),
              IsEmpty());
  EXPECT_THAT(GlobalErrors("[control]\nmessage_timeout_ms = 99\nidle_timeout_ms = 999\n"),
              ElementsAre("iopfd.toml:2:22: control.message_timeout_ms: must be in 100..600000 "
                          "(got 99)",
                          "iopfd.toml:3:19: control.idle_timeout_ms: must be in 1000..86400000 "
                          "(got 999)"));
}

TEST(LoadConfigTest, ReadsDeviceFilesInNameOrder) {
  TempDir dir;
  dir.Write("20-b.toml", DeviceText("b", 2));
  dir.Write("10-c.toml", DeviceText("c", 3));
  dir.Write("30-a.toml", DeviceText("a", 1));
  dir.Write("README", "not toml at all [");
  dir.Write("40-d.toml.disabled", "nor this [");
  dir.Write(".50-hidden.toml", "nor this [");
  ASSERT_TRUE(std::filesystem::create_directory(dir.path() + "/sub"));
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", dir.path(), true));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  ASSERT_EQ(result.config.devices.size(), 3u);
  EXPECT_EQ(result.config.devices[0].name, "c");
  EXPECT_EQ(result.config.devices[0].file, dir.path() + "/10-c.toml");
  EXPECT_EQ(result.config.devices[1].name, "b");
  EXPECT_EQ(result.config.devices[1].adopt.device_id, 2u);
  EXPECT_EQ(result.config.devices[2].name, "a");
}

TEST(LoadConfigTest, DevicesDirFromGlobalFile) {
  TempDir dir;
  const std::string devices = dir.path() + "/devices.d";
  ASSERT_TRUE(std::filesystem::create_directory(devices));
  std::ofstream(devices + "/dsa0.toml") << DeviceText("dsa0");
  const std::string global =
      dir.Write("iopfd.toml", "[daemon]\ndevices_dir = \"" + devices + "/\"\n");
  LoadResult result = LoadConfig(Options(global, std::nullopt, true));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  ASSERT_EQ(result.config.devices.size(), 1u);
  EXPECT_EQ(result.config.devices[0].file, devices + "/dsa0.toml");
}

TEST(LoadConfigTest, DevicesDirOptionOverridesGlobalFile) {
  TempDir dir;
  dir.Write("iopfd.toml", "[daemon]\ndevices_dir = \"/nonexistent/iopfd\"\n");
  dir.Write(dir.Devices() + "/dsa0.toml", DeviceText("dsa0"));
  LoadResult result = LoadConfig(Options(dir.path() + "/iopfd.toml", dir.Devices(), true));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.global.devices_dir, "/nonexistent/iopfd");
  ASSERT_EQ(result.config.devices.size(), 1u);
}

TEST(LoadConfigTest, DuplicateNamesAcrossFiles) {
  TempDir dir;
  const std::string first = dir.Write("a.toml", DeviceText("dsa0", 1));
  const std::string second = dir.Write("b.toml", DeviceText("dsa0", 2));
  dir.Write("c.toml", DeviceText("dsa1", 3));
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", dir.path(), true));
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre(second + ":1:8: name: device name \"dsa0\" is already used by " + first));
  EXPECT_EQ(result.config.devices.size(), 3u);
}

TEST(LoadConfigTest, ErrorsInOneFileDoNotHideOthers) {
  TempDir dir;
  const std::string a = dir.Write("a.toml", "name = \n");
  const std::string b = dir.Write("b.toml", DeviceText("dsa0", 0));
  dir.Write("c.toml", DeviceText("dsa1"));
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", dir.path(), true));
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre(HasSubstr(a + ":1:8: invalid TOML: "),
                          b + ":6:13: adopt.device_id: must be in 1..4294967295 (got 0)"));
  ASSERT_EQ(result.config.devices.size(), 2u);
  EXPECT_EQ(result.config.devices[1].name, "dsa1");
}

TEST(LoadConfigTest, GlobalAndDeviceErrorsAreBothReported) {
  TempDir dir;
  const std::string global = dir.Write("iopfd.toml", "[daemon]\nring_entries = 3\n");
  dir.Write(dir.Devices() + "/d.toml", DeviceText("dsa0", 0));
  LoadResult result = LoadConfig(Options(global, dir.Devices(), true));
  EXPECT_THAT(ErrorStrings(result), ElementsAre(HasSubstr("iopfd.toml:2:16: daemon.ring_entries"),
                                                HasSubstr("d.toml:6:13: adopt.device_id")));
}

TEST(LoadConfigTest, MissingDevicesDirIsAnError) {
  TempDir dir;
  const std::string missing = dir.path() + "/devices.d";
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", missing, true));
  EXPECT_THAT(
      ErrorStrings(result),
      ElementsAre(missing + ": cannot open devices directory: ENOENT (No such file or directory)"));
}

TEST(LoadConfigTest, EmptyDevicesDirIsFine) {
  TempDir dir;
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", dir.path(), true));
  EXPECT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_TRUE(result.config.devices.empty());
}

TEST(LoadConfigTest, DirectoryNamedLikeADeviceFile) {
  TempDir dir;
  ASSERT_TRUE(std::filesystem::create_directory(dir.path() + "/x.toml"));
  LoadResult result = LoadConfig(Options(dir.path() + "/none.toml", dir.path(), true));
  EXPECT_THAT(ErrorStrings(result),
              ElementsAre(dir.path() + "/x.toml: read: EISDIR (Is a directory)"));
}

// ---- The shipped examples (config/ in the source tree) stay valid.

std::string SourceRoot() {
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

TEST(ExampleTest, GlobalExampleIsValidAndSpellsOutTheDefaults) {
  TempDir dir;
  LoadResult result =
      LoadConfig(Options(SourceRoot() + "/config/iopfd.toml", dir.Devices(), false));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const GlobalConfig defaults;
  EXPECT_EQ(result.config.global.log_level, defaults.log_level);
  EXPECT_EQ(result.config.global.devices_dir, defaults.devices_dir);
  EXPECT_EQ(result.config.global.ring_entries, defaults.ring_entries);
  EXPECT_EQ(result.config.global.read_records, defaults.read_records);
  EXPECT_EQ(result.config.global.max_read_records, defaults.max_read_records);
}

TEST(ExampleTest, DeviceExampleIsValid) {
  const std::string path = SourceRoot() + "/config/devices.d/dsa0.toml.example";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::stringstream text;
  text << in.rdbuf();
  LoadResult result = ParseDeviceText(text.str(), path, /*check_backings=*/false);
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const DeviceConfig& d = result.config.devices[0];
  EXPECT_EQ(d.name, "dsa0");
  EXPECT_EQ(d.mode, AttachMode::kAdopt);
  ASSERT_EQ(d.spaces.size(), 2u);
  EXPECT_EQ(d.spaces[0].regions.size(), 2u);
  EXPECT_EQ(d.spaces[1].regions.size(), 1u);
  // The limits shown are the defaults.
  const DeviceLimits defaults;
  EXPECT_EQ(d.limits.max_group_records, defaults.max_group_records);
  EXPECT_EQ(d.limits.max_fault_map_bytes, defaults.max_fault_map_bytes);
}

// ---- Backing checks.

// A file of a given size, removed on destruction.
class ScratchFile {
 public:
  ScratchFile(const std::string& dir, uint64_t size, mode_t mode = 0600) {
    static int counter = 0;
    path_ =
        dir + "/iopfd-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
      ADD_FAILURE() << "create " << path_ << ": " << std::strerror(errno);
      return;
    }
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      ADD_FAILURE() << "ftruncate " << path_ << ": " << std::strerror(errno);
    }
    ::close(fd);
  }
  ~ScratchFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string FileRegion(const std::string& path, std::string_view size, std::string_view access,
                       std::string_view offset = "0") {
  return WithRegion("iova = 0x200000\nsize = \"" + std::string(size) +
                    "\"\nbacking = \"file:" + path + "\"\noffset = \"" + std::string(offset) +
                    "\"\naccess = \"" + std::string(access) + "\"\n");
}

std::vector<std::string> BackingErrors(const std::string& text) {
  return ErrorStrings(ParseDeviceText(text, "dev.toml", /*check_backings=*/true));
}

bool IsTmpfsDir(const std::string& dir) {
  struct statfs fs {};
  return ::statfs(dir.c_str(), &fs) == 0 && static_cast<uint32_t>(fs.f_type) == TMPFS_MAGIC;
}

constexpr char kShm[] = "/dev/shm";

TEST(BackingTest, ShmFileIsAccepted) {
  ASSERT_TRUE(IsTmpfsDir(kShm));
  ScratchFile file(kShm, 2u << 20);
  LoadResult result = ParseDeviceText(FileRegion(file.path(), "1MiB", "rw", "1MiB"), "dev.toml",
                                      /*check_backings=*/true);
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const RegionConfig& r = result.config.devices[0].spaces[0].regions[0];
  EXPECT_EQ(r.backing, BackingKind::kFile);
  EXPECT_EQ(r.path, file.path());
  EXPECT_EQ(r.page_size, 4096u);
  EXPECT_EQ(r.offset, 1u << 20);
  // Read-only access needs only O_RDONLY.
  EXPECT_THAT(BackingErrors(FileRegion(file.path(), "2MiB", "r")), IsEmpty());
}

TEST(BackingTest, FileTooSmall) {
  ScratchFile file(kShm, 4096);
  EXPECT_THAT(BackingErrors(FileRegion(file.path(), "8KiB", "rw")),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: " + file.path() +
                          ": file is 4096 bytes, smaller than offset + size (8192)"));
}

TEST(BackingTest, FileTooSmallForOffsetPlusSize) {
  ScratchFile file(kShm, 8192);
  EXPECT_THAT(BackingErrors(FileRegion(file.path(), "8KiB", "rw")), IsEmpty());
  EXPECT_THAT(BackingErrors(FileRegion(file.path(), "8KiB", "rw", "4KiB")),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: " + file.path() +
                          ": file is 8192 bytes, smaller than offset + size (12288)"));
}

TEST(BackingTest, NonexistentFile) {
  const std::string path =
      std::string(kShm) + "/iopfd-config-test-missing-" + std::to_string(::getpid());
  EXPECT_THAT(BackingErrors(FileRegion(path, "4KiB", "r")),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: " + path +
                          ": stat: ENOENT (No such file or directory)"));
}

TEST(BackingTest, NonexistentFileIsNotCheckedWithoutCheckBackings) {
  const std::string path = "/nonexistent/iopfd/heap";
  LoadResult result = ParseDeviceText(FileRegion(path, "4KiB", "r"), "dev.toml", false);
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.devices[0].spaces[0].regions[0].page_size, 4096u);
}

TEST(BackingTest, DirectoryIsNotARegularFile) {
  const std::string path =
      std::string(kShm) + "/iopfd-config-test-dir-" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0) << std::strerror(errno);
  const std::vector<std::string> errors = BackingErrors(FileRegion(path, "4KiB", "r"));
  ::rmdir(path.c_str());
  EXPECT_THAT(errors, ElementsAre("dev.toml:12:11: space[0].region[0].backing: " + path +
                                  ": not a regular file"));
}

// Returns a writable directory that is neither tmpfs nor hugetlbfs, or "" when there is none.
std::string NonShmemDir() {
  std::vector<std::string> candidates;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back(exe.parent_path());
  candidates.push_back(std::filesystem::temp_directory_path(ec));
  candidates.push_back("/var/tmp");
  for (const std::string& dir : candidates) {
    struct statfs fs {};
    if (dir.empty() || ::statfs(dir.c_str(), &fs) != 0) continue;
    const uint32_t type = static_cast<uint32_t>(fs.f_type);
    if (type == TMPFS_MAGIC || type == HUGETLBFS_MAGIC) continue;
    if (::access(dir.c_str(), W_OK) == 0) return dir;
  }
  return "";
}

TEST(BackingTest, FileNotOnShmem) {
  const std::string dir = NonShmemDir();
  ASSERT_FALSE(dir.empty()) << "no writable directory outside tmpfs/hugetlbfs to test with";
  ScratchFile file(dir, 1u << 20);
  struct statfs fs {};
  ASSERT_EQ(::statfs(dir.c_str(), &fs), 0);
  std::ostringstream magic;
  magic << std::hex << static_cast<uint32_t>(fs.f_type);
  EXPECT_THAT(BackingErrors(FileRegion(file.path(), "4KiB", "r")),
              ElementsAre("dev.toml:12:11: space[0].region[0].backing: " + file.path() +
                          ": not on tmpfs or hugetlbfs (filesystem magic 0x" + magic.str() +
                          "); only shared memory files can back a region"));
}

// Runs fn in a child process without privileges (as nobody when the test runs as root) and
// returns what it returned, so that permission checks apply even to root.
std::string RunUnprivileged(const std::function<std::string()>& fn) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::close(pipe_fds[0]);
    if (::geteuid() == 0) {
      constexpr uid_t kNobody = 65534;
      if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
          ::setresuid(kNobody, kNobody, kNobody) != 0) {
        ::_exit(2);
      }
    }
    const std::string out = fn();
    const ssize_t n = ::write(pipe_fds[1], out.data(), out.size());
    ::_exit(n == static_cast<ssize_t>(out.size()) ? 0 : 3);
  }
  ::close(pipe_fds[1]);
  std::string out;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], buffer, sizeof(buffer))) > 0) out.append(buffer, n);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "child failed with status " + std::to_string(status);
  }
  return out;
}

TEST(BackingTest, OpenModeFollowsAccess) {
  // Readable by everyone, writable only by its owner: the unprivileged child can open it
  // O_RDONLY but not O_RDWR.
  ScratchFile file(kShm, 1u << 20, 0644);
  ASSERT_EQ(::chmod(file.path().c_str(), 0644), 0);
  if (::geteuid() != 0) {
    ASSERT_EQ(::chmod(file.path().c_str(), 0444), 0);
  }
  const auto errors_as_text = [&](std::string_view access) {
    return RunUnprivileged([&] {
      std::string out;
      for (const std::string& e : BackingErrors(FileRegion(file.path(), "4KiB", access))) {
        out += e + "\n";
      }
      return out;
    });
  };
  EXPECT_EQ(errors_as_text("r"), "");
  EXPECT_EQ(errors_as_text("rx"), "");
  EXPECT_EQ(errors_as_text("rw"), "dev.toml:12:11: space[0].region[0].backing: " + file.path() +
                                      ": open O_RDWR: EACCES (Permission denied)\n");
  EXPECT_EQ(errors_as_text("w"), "dev.toml:12:11: space[0].region[0].backing: " + file.path() +
                                     ": open O_RDWR: EACCES (Permission denied)\n");
}

// A writable hugetlbfs directory: an existing mount, or else a private instance mounted for the
// test (mounting needs root, as the test suite has; no huge pages need to be reserved, because
// the test only sizes files with ftruncate and never faults a page in).
class HugetlbfsDir {
 public:
  HugetlbfsDir() {
    std::ifstream mounts("/proc/self/mounts");
    std::string device, dir, type, rest;
    while (mounts >> device >> dir >> type && std::getline(mounts, rest)) {
      if (type != "hugetlbfs") continue;
      struct statfs fs {};
      if (::statfs(dir.c_str(), &fs) == 0 && static_cast<uint32_t>(fs.f_type) == HUGETLBFS_MAGIC &&
          ::access(dir.c_str(), W_OK) == 0) {
        path_ = dir;
        return;
      }
    }
    char tmpl[] = "/tmp/iopfd-hugetlbfs-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      error_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    if (::mount("iopfd-test", tmpl, "hugetlbfs", 0, nullptr) != 0) {
      error_ = std::string("mount -t hugetlbfs ") + tmpl + ": " + std::strerror(errno);
      ::rmdir(tmpl);
      return;
    }
    path_ = tmpl;
    mounted_ = true;
  }
  ~HugetlbfsDir() {
    if (mounted_) {
      ::umount2(path_.c_str(), MNT_DETACH);
      ::rmdir(path_.c_str());
    }
  }
  HugetlbfsDir(const HugetlbfsDir&) = delete;
  HugetlbfsDir& operator=(const HugetlbfsDir&) = delete;
  const std::string& path() const { return path_; }
  const std::string& error() const { return error_; }

 private:
  std::string path_;
  std::string error_;
  bool mounted_ = false;
};

TEST(BackingTest, HugetlbfsFileUsesTheHugePageSize) {
  HugetlbfsDir mount;
  ASSERT_FALSE(mount.path().empty()) << "no hugetlbfs to test with: " << mount.error();
  const std::string& dir = mount.path();
  struct statfs fs {};
  ASSERT_EQ(::statfs(dir.c_str(), &fs), 0);
  const uint64_t huge = static_cast<uint64_t>(fs.f_bsize);
  ScratchFile file(dir, 2 * huge);
  const std::string text =
      WithRegion("iova = " + std::to_string(huge) + "\nsize = " + std::to_string(huge) +
                 "\nbacking = \"file:" + file.path() + "\"\naccess = \"rw\"\n");
  LoadResult result = ParseDeviceText(text, "dev.toml", true);
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.devices[0].spaces[0].regions[0].page_size, huge);
  EXPECT_THAT(BackingErrors(WithRegion("iova = 0x1000\nsize = 4096\nbacking = \"file:" +
                                       file.path() + "\"\naccess = \"rw\"\n")),
              ElementsAre(HasSubstr("space[0].region[0].iova: must be aligned to the page size " +
                                    std::to_string(huge)),
                          HasSubstr("space[0].region[0].size: must be a multiple of the page "
                                    "size " +
                                    std::to_string(huge))));
}

}  // namespace
}  // namespace iopfd

namespace iopfd {
namespace {

// ---- Paging keys (docs/PAGING.md).

TEST(PagingConfigTest, MapUnitAndBudgetsAreRead) {
  LoadResult result =
      Parse(WithRegion("iova = 0x100000\nsize = \"1MiB\"\nbacking = \"anonymous\"\naccess = \"r\"\n"
                       "map_unit = \"16KiB\"\n[limits]\nmax_resident = \"256KiB\"\n"));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const DeviceConfig& d = result.config.devices[0];
  EXPECT_EQ(d.spaces[0].regions[0].map_unit, 16u << 10);
  EXPECT_EQ(d.limits.max_resident, 256u << 10);
  EXPECT_FALSE(d.spaces[0].max_resident.has_value());
  // Absent: the default unit and no budget (unbounded).
  LoadResult plain = Parse(
      WithRegion("iova = 0x100000\nsize = \"1MiB\"\nbacking = \"anonymous\"\naccess = \"r\"\n"));
  ASSERT_THAT(ErrorStrings(plain), IsEmpty());
  EXPECT_EQ(plain.config.devices[0].spaces[0].regions[0].map_unit, 0u);
  EXPECT_FALSE(plain.config.devices[0].limits.max_resident.has_value());
}

TEST(PagingConfigTest, FirstTouchIsRead) {
  const auto touch = [](std::string_view line) {
    return Parse(WithRegion(std::string("iova = 0x100000\nsize = \"1MiB\"\nbacking = "
                                        "\"anonymous\"\naccess = \"r\"\n") +
                            std::string(line)));
  };
  LoadResult absent = touch("");
  ASSERT_THAT(ErrorStrings(absent), IsEmpty());
  EXPECT_TRUE(absent.config.devices[0].spaces[0].regions[0].first_touch_page);
  LoadResult unit = touch("first_touch = \"unit\"\n");
  ASSERT_THAT(ErrorStrings(unit), IsEmpty());
  EXPECT_FALSE(unit.config.devices[0].spaces[0].regions[0].first_touch_page);
  LoadResult page = touch("first_touch = \"page\"\n");
  ASSERT_THAT(ErrorStrings(page), IsEmpty());
  EXPECT_TRUE(page.config.devices[0].spaces[0].regions[0].first_touch_page);
  EXPECT_THAT(ErrorStrings(touch("first_touch = \"pages\"\n")),
              ElementsAre("dev.toml:14:15: space[0].region[0].first_touch: must be \"page\" or "
                          "\"unit\" (got \"pages\")"));
}

TEST(PagingConfigTest, SpaceBudgetIsRead) {
  LoadResult result = Parse(std::string(kAdoptHeader) +
                            "[[space]]\nioas_id = 2\nmax_resident = \"1MiB\"\n"
                            "[[space.region]]\niova = 0x100000\nsize = \"4MiB\"\n"
                            "backing = \"anonymous\"\naccess = \"r\"\n");
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  EXPECT_EQ(result.config.devices[0].spaces[0].max_resident, 1u << 20);
}

TEST(PagingConfigTest, BadMapUnits) {
  const auto unit = [](std::string_view value) {
    return Errors(WithRegion(std::string("iova = 0x100000\nsize = \"1MiB\"\nbacking = "
                                         "\"anonymous\"\naccess = \"r\"\nmap_unit = ") +
                             std::string(value) + "\n"));
  };
  EXPECT_THAT(unit("12288"), ElementsAre("dev.toml:14:12: space[0].region[0].map_unit: must be a "
                                         "power of two (got 12288)"));
  EXPECT_THAT(unit("2048"), ElementsAre("dev.toml:14:12: space[0].region[0].map_unit: must be at "
                                        "least the page size 4096 (got 2048)"));
  EXPECT_THAT(unit("\"4MiB\""),
              ElementsAre("dev.toml:14:12: space[0].region[0].map_unit: must not exceed "
                          "limits.max_fault_map_bytes (2097152) (got 4194304)"));
  EXPECT_THAT(unit("\"2MiB\""), IsEmpty());
  EXPECT_THAT(unit("\"lots\""),
              ElementsAre("dev.toml:14:12: space[0].region[0].map_unit: invalid size \"lots\": "
                          "expected a number of bytes, optionally followed by a unit"));
}

// A budget that cannot hold one map unit could map nothing: refused where it is set.
TEST(PagingConfigTest, BudgetsSmallerThanAMapUnit) {
  EXPECT_THAT(Errors(WithRegion("iova = 0x100000\nsize = \"1MiB\"\nbacking = \"anonymous\"\n"
                                "access = \"r\"\n[limits]\nmax_resident = \"32KiB\"\n")),
              ElementsAre("dev.toml:15:16: limits.max_resident: 32768 bytes cannot hold one map "
                          "unit (65536 bytes, the region at line 9); make it at least that"));
  EXPECT_THAT(Errors(std::string(kAdoptHeader) +
                     "[[space]]\nioas_id = 2\nmax_resident = 8192\n"
                     "[[space.region]]\niova = 0x100000\nsize = \"1MiB\"\n"
                     "backing = \"anonymous\"\naccess = \"r\"\nmap_unit = 16384\n"),
              ElementsAre("dev.toml:9:16: space[0].max_resident: 8192 bytes cannot hold one map "
                          "unit (16384 bytes, the region at line 10); make it at least that"));
}

TEST(PagingConfigTest, GlobalKeys) {
  TempDir dir;
  const std::string devices = dir.Devices();
  dir.Write(devices + "/a.toml",
            "name = \"a\"\nattach = \"adopt\"\n[adopt]\niommufd_fd = \"i\"\nfault_fd = \"f\"\n"
            "device_id = 1\n[[space]]\nioas_id = 1\n[[space.region]]\niova = 0x100000\n"
            "size = \"1MiB\"\nbacking = \"anonymous\"\naccess = \"r\"\nmap_unit = \"256KiB\"\n");
  const std::string global =
      dir.Write("iopfd.toml",
                "[daemon]\nmax_resident = \"1GiB\"\n[paging]\npolicy = \"fifo\"\n"
                "thrash_window_us = 1000\nthrash_events = 5\nthrash_protect_ms = 20\n");
  LoadResult result = LoadConfig(Options(global, devices, false));
  ASSERT_THAT(ErrorStrings(result), IsEmpty());
  const PagingConfig& p = result.config.global.paging;
  EXPECT_EQ(p.max_resident, 1u << 30);
  EXPECT_EQ(p.policy, EvictionPolicy::kFifo);
  EXPECT_EQ(p.thrash_window_us, 1000u);
  EXPECT_EQ(p.thrash_events, 5u);
  EXPECT_EQ(p.thrash_protect_ms, 20u);
  // A daemon budget smaller than a device's unit is refused at the global key.
  dir.Write("iopfd.toml", "[daemon]\nmax_resident = \"128KiB\"\n");
  std::vector<std::string> errors = ErrorStrings(LoadConfig(Options(global, devices, false)));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], ::testing::HasSubstr("iopfd.toml:2:16: daemon.max_resident: 131072 "
                                              "bytes cannot hold one map unit of device \"a\" "
                                              "(262144 bytes, "));
  EXPECT_THAT(GlobalErrors("[paging]\npolicy = \"lru\"\n"),
              ElementsAre("iopfd.toml:2:10: paging.policy: must be \"workingset\" or \"fifo\" "
                          "(got \"lru\")"));
  EXPECT_THAT(GlobalErrors("[paging]\nthrash_events = 0\n"),
              ElementsAre(::testing::HasSubstr("iopfd.toml:2:17: paging.thrash_events: ")));
  EXPECT_THAT(GlobalErrors("[daemon]\nmax_resident = 100\n"),
              ElementsAre("iopfd.toml:2:16: daemon.max_resident: must be at least 4096 bytes "
                          "(got 100)"));
}

// Reload applies changed budgets to a running device and restarts it for anything else.
TEST(PagingConfigTest, BudgetsAloneDoNotMakeADifferentDevice) {
  DeviceConfig a;
  a.name = "d";
  a.spaces.emplace_back();
  a.spaces[0].regions.emplace_back();
  DeviceConfig b = a;
  b.limits.max_resident = 1 << 20;
  b.spaces[0].max_resident = 1 << 19;
  EXPECT_FALSE(SameDeviceSettings(a, b));
  EXPECT_TRUE(SameDeviceSettingsBesidesBudgets(a, b));
  b.spaces[0].regions[0].map_unit = 1 << 16;
  EXPECT_FALSE(SameDeviceSettingsBesidesBudgets(a, b)) << "a unit change remaps: a restart";
  DeviceConfig c = a;
  c.spaces.emplace_back();
  EXPECT_FALSE(SameDeviceSettingsBesidesBudgets(a, c));
}

}  // namespace
}  // namespace iopfd
