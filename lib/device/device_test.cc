#include "iopfd/device/device.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/uapi.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A kernel stand-in: hands out fds from real pipes (so UniqueFd can close them), answers the
// iommufd and VFIO ioctls with fresh ids, records every call, and fails the ioctls named in
// `fail` with their errno.
class FakeSyscalls : public Syscalls {
 public:
  ~FakeSyscalls() override {
    for (int fd : spare_) ::close(fd);
  }
  int Ioctl(int fd, unsigned long request, void* arg) override {
    calls.push_back(request);
    if (auto it = fail.find(request); it != fail.end()) return -it->second;
    switch (request) {
      case uapi::kIommuIoasAlloc:
        static_cast<uapi::IommuIoasAlloc*>(arg)->out_ioas_id = next_id_++;
        break;
      case uapi::kIommuFaultQueueAlloc: {
        auto* c = static_cast<uapi::IommuFaultAlloc*>(arg);
        c->out_fault_id = next_id_++;
        c->out_fault_fd = static_cast<uint32_t>(NewFd());
        break;
      }
      case uapi::kIommuHwptAlloc: {
        auto* c = static_cast<uapi::IommuHwptAlloc*>(arg);
        hwpt_allocs.push_back(*c);
        c->out_hwpt_id = next_id_++;
        break;
      }
      case uapi::kVfioDeviceBindIommufd:
        static_cast<uapi::VfioDeviceBindIommufd*>(arg)->out_devid = 77;
        break;
      case uapi::kVfioDeviceAttachIommufdPt:
        attaches.push_back(*static_cast<uapi::VfioDeviceAttachIommufdPt*>(arg));
        break;
      case uapi::kIommuIoasMapFile:
        map_files.push_back(*static_cast<uapi::IommuIoasMapFile*>(arg));
        break;
      case uapi::kIommuIoasMap:
        maps.push_back(*static_cast<uapi::IommuIoasMap*>(arg));
        break;
      default:
        break;
    }
    (void)fd;
    return 0;
  }
  int Open(const char* path, int /*flags*/) override {
    opened.emplace_back(path);
    if (auto it = open_fail.find(path); it != open_fail.end()) return -it->second;
    return NewFd();
  }
  ssize_t Pread(int /*fd*/, void* /*buf*/, size_t /*len*/, uint64_t /*offset*/) override {
    return -ENOSYS;
  }
  ssize_t Pwrite(int /*fd*/, const void* /*buf*/, size_t /*len*/, uint64_t /*offset*/) override {
    return -ENOSYS;
  }
  SwitchModule LoadSwitchModule(const std::string& path, std::string* error) override {
    *error = path + ": no modules in this test";
    return {};
  }
  ssize_t Read(int fd, void* buf, size_t len) override { return RealSyscalls().Read(fd, buf, len); }
  ssize_t Write(int fd, const void* buf, size_t len) override {
    return RealSyscalls().Write(fd, buf, len);
  }
  int MemfdCreate(const char* /*name*/, uint64_t /*size*/) override { return NewFd(); }
  void* MapShared(int /*fd*/, uint64_t /*offset*/, uint64_t length, bool /*writable*/) override {
    void* p =
        ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  void Unmap(void* addr, uint64_t length) override { ::munmap(addr, length); }

  int NewFd() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return -errno;
    spare_.push_back(p[1]);
    return p[0];
  }

  std::vector<unsigned long> calls;
  std::vector<std::string> opened;
  std::vector<uapi::IommuHwptAlloc> hwpt_allocs;
  std::vector<uapi::VfioDeviceAttachIommufdPt> attaches;
  std::vector<uapi::IommuIoasMapFile> map_files;
  std::vector<uapi::IommuIoasMap> maps;
  std::map<unsigned long, int> fail;
  std::map<std::string, int> open_fail;

 private:
  uint32_t next_id_ = 10;
  std::vector<int> spare_;
};

DeviceConfig VfioDevice(bool with_pasid) {
  DeviceConfig d;
  d.name = "dsa0";
  d.mode = AttachMode::kVfio;
  d.vfio.cdev = "/dev/vfio/devices/vfio3";
  SpaceConfig s;
  RegionConfig r;
  r.iova = 1 << 20;
  r.size = 64 << 10;
  r.page_size = 4096;
  r.access = uapi::kPermRead | uapi::kPermWrite;
  r.backing = BackingKind::kAnonymous;
  s.regions.push_back(r);
  d.spaces.push_back(s);
  if (with_pasid) {
    s.pasid = 7;
    d.spaces.push_back(s);
  }
  return d;
}

TEST(DeviceAttachTest, VfioModeBindsAllocatesAndAttachesPerPasid) {
  FakeSyscalls sys;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(true), &fds, &sys, ReadLimits{64});
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_THAT(sys.opened, ElementsAre("/dev/iommu", "/dev/vfio/devices/vfio3"));
  // Per space: the IOPF-capable HWPT, then its park HWPT over the same IOAS without a fault.
  ASSERT_EQ(sys.hwpt_allocs.size(), 4u);
  for (size_t i = 0; i < sys.hwpt_allocs.size(); ++i) {
    const auto& h = sys.hwpt_allocs[i];
    EXPECT_EQ(h.dev_id, 77u);
    // Every HWPT of a device that uses PASIDs carries ALLOC_PASID, the no-PASID one included.
    if (i % 2 == 0) {
      EXPECT_EQ(h.flags, uapi::kHwptFaultIdValid | uapi::kHwptAllocPasid);
      EXPECT_NE(h.fault_id, 0u);
    } else {
      EXPECT_EQ(h.flags, uapi::kHwptAllocPasid);
      EXPECT_EQ(h.pt_id, sys.hwpt_allocs[i - 1].pt_id);
    }
  }
  EXPECT_NE(sys.hwpt_allocs[0].pt_id, sys.hwpt_allocs[2].pt_id);  // one IOAS per space
  ASSERT_EQ(sys.attaches.size(), 2u);
  EXPECT_EQ(sys.attaches[0].flags, 0u);
  EXPECT_EQ(sys.attaches[1].flags, uapi::kVfioDeviceAttachPasid);
  EXPECT_EQ(sys.attaches[1].pasid, 7u);
  EXPECT_EQ((*dev)->read_buffer().size(), 64u);
  EXPECT_GE(fcntl((*dev)->fault_fd(), F_GETFL) & O_NONBLOCK, 1);
}

TEST(DeviceAttachTest, VfioWithoutPasidsDoesNotAskForPasidCapableHwpts) {
  FakeSyscalls sys;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(false), &fds, &sys, ReadLimits{64});
  ASSERT_TRUE(dev.ok()) << dev.status();
  ASSERT_EQ(sys.hwpt_allocs.size(), 2u);
  EXPECT_EQ(sys.hwpt_allocs[0].flags, uapi::kHwptFaultIdValid);
  EXPECT_EQ(sys.hwpt_allocs[1].flags, 0u);  // the park HWPT
}

DeviceConfig AdoptDevice();

TEST(DeviceParkTest, ParkAndUnparkSwitchHwptsPerAttachment) {
  FakeSyscalls sys;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(true), &fds, &sys, ReadLimits{64});
  ASSERT_TRUE(dev.ok()) << dev.status();
  Device& d = **dev;
  ASSERT_TRUE(d.can_park());
  ASSERT_EQ(sys.attaches.size(), 2u);
  const uint32_t iopf7 = sys.attaches[1].pt_id;  // PASID 7's IOPF-capable HWPT
  sys.attaches.clear();
  ASSERT_TRUE(d.Park(7u).ok());
  EXPECT_TRUE(d.parked(7u));
  EXPECT_FALSE(d.parked(kNoPasidAttachment));
  ASSERT_EQ(sys.attaches.size(), 1u);
  EXPECT_EQ(sys.attaches[0].pasid, 7u);
  EXPECT_EQ(sys.attaches[0].flags, uapi::kVfioDeviceAttachPasid);
  EXPECT_NE(sys.attaches[0].pt_id, iopf7);  // a real replace, to the park HWPT
  ASSERT_TRUE(d.Park(7u).ok());             // already parked: nothing to do
  EXPECT_EQ(sys.attaches.size(), 1u);
  ASSERT_TRUE(d.Park(std::nullopt).ok());
  EXPECT_EQ(sys.attaches.size(), 2u);
  ASSERT_TRUE(d.Unpark(std::nullopt).ok());
  ASSERT_EQ(sys.attaches.size(), 4u);
  EXPECT_EQ(sys.attaches[3].pt_id, iopf7);  // back to the IOPF-capable HWPT
  EXPECT_FALSE(d.parked(std::nullopt));
  EXPECT_EQ(d.Park(9u).code(), absl::StatusCode::kNotFound);
  sys.fail[uapi::kVfioDeviceAttachIommufdPt] = EBUSY;  // a PCI reset under way
  absl::Status st = d.Park(std::nullopt);
  EXPECT_THAT(std::string(st.message()), HasSubstr("dsa0: VFIO_DEVICE_ATTACH_IOMMUFD_PT: EBUSY"));
  EXPECT_FALSE(d.parked(std::nullopt));
  EXPECT_TRUE(d.ResetFunction().ok());
  sys.fail[uapi::kVfioDeviceReset] = EIO;
  EXPECT_THAT(std::string(d.ResetFunction().message()), HasSubstr("dsa0: VFIO_DEVICE_RESET: EIO"));
}

TEST(DeviceParkTest, AdoptModeCannotPark) {
  FakeSyscalls sys;
  ListenFds fds;
  fds.Add("vmm-iommufd", UniqueFd(sys.NewFd()));
  fds.Add("vmm-fault", UniqueFd(sys.NewFd()));
  fds.Add("guest-ram", UniqueFd(sys.NewFd()));
  auto dev = Device::Attach(AdoptDevice(), &fds, &sys, ReadLimits{16});
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_FALSE((*dev)->can_park());
  EXPECT_EQ((*dev)->Park(std::nullopt).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*dev)->ResetFunction().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DeviceAttachTest, OldKernelErrorNamesDeviceStepErrnoAndWhy) {
  FakeSyscalls sys;
  sys.fail[uapi::kIommuHwptAlloc] = EOPNOTSUPP;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(false), &fds, &sys, ReadLimits{64});
  ASSERT_FALSE(dev.ok());
  EXPECT_EQ(dev.status().message(),
            "dsa0: IOMMU_HWPT_ALLOC: EOPNOTSUPP (Operation not supported): kernel lacks "
            "fault-capable paging HWPTs (need >= 7.x)");
}

TEST(DeviceAttachTest, EachVfioStepNamesItselfOnFailure) {
  struct Step {
    unsigned long ioctl;
    const char* name;
  };
  for (Step step : {Step{uapi::kVfioDeviceBindIommufd, "VFIO_DEVICE_BIND_IOMMUFD"},
                    Step{uapi::kIommuFaultQueueAlloc, "IOMMU_FAULT_QUEUE_ALLOC"},
                    Step{uapi::kIommuIoasAlloc, "IOMMU_IOAS_ALLOC"},
                    Step{uapi::kVfioDeviceAttachIommufdPt, "VFIO_DEVICE_ATTACH_IOMMUFD_PT"}}) {
    FakeSyscalls sys;
    sys.fail[step.ioctl] = EBUSY;
    ListenFds fds;
    auto dev = Device::Attach(VfioDevice(false), &fds, &sys, ReadLimits{64});
    ASSERT_FALSE(dev.ok()) << step.name;
    EXPECT_THAT(std::string(dev.status().message()),
                HasSubstr(std::string("dsa0: ") + step.name + ": EBUSY"));
  }
  FakeSyscalls sys;
  sys.open_fail["/dev/iommu"] = ENOENT;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(false), &fds, &sys, ReadLimits{64});
  ASSERT_FALSE(dev.ok());
  EXPECT_THAT(std::string(dev.status().message()),
              HasSubstr("dsa0: open /dev/iommu: ENOENT (No such file or directory): kernel without "
                        "CONFIG_IOMMUFD"));
}

DeviceConfig AdoptDevice() {
  DeviceConfig d = VfioDevice(false);
  d.mode = AttachMode::kAdopt;
  d.adopt.iommufd_fd = "vmm-iommufd";
  d.adopt.fault_fd = "vmm-fault";
  d.adopt.device_id = 5;
  d.spaces[0].ioas_id = 2;
  d.spaces[0].regions[0].backing = BackingKind::kInheritedFd;
  d.spaces[0].regions[0].fd_name = "guest-ram";
  return d;
}

TEST(DeviceAttachTest, AdoptModeTakesNamedFdsAndAllocatesNothing) {
  FakeSyscalls sys;
  ListenFds fds;
  fds.Add("vmm-iommufd", UniqueFd(sys.NewFd()));
  fds.Add("vmm-fault", UniqueFd(sys.NewFd()));
  fds.Add("guest-ram", UniqueFd(sys.NewFd()));
  fds.Add("stray", UniqueFd(sys.NewFd()));
  auto dev = Device::Attach(AdoptDevice(), &fds, &sys, ReadLimits{16});
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_TRUE(sys.calls.empty());  // no ioctl: the owner made every object
  EXPECT_THAT(fds.Untaken(), ElementsAre("stray"));
  EXPECT_EQ((*dev)->spaces().Find(false, 0)->ioas(), IoasId(2));
}

TEST(DeviceAttachTest, AdoptModeMissingFdNamesDeviceKeyAndName) {
  FakeSyscalls sys;
  ListenFds fds;
  fds.Add("vmm-iommufd", UniqueFd(sys.NewFd()));
  auto dev = Device::Attach(AdoptDevice(), &fds, &sys, ReadLimits{16});
  ASSERT_FALSE(dev.ok());
  EXPECT_THAT(std::string(dev.status().message()),
              HasSubstr("dsa0: fault_fd: no fd named 'vmm-fault' was handed over"));
  // What it took is put back, so that a corrected configuration can use it.
  EXPECT_THAT(fds.Untaken(), ElementsAre("vmm-iommufd"));
}

TEST(DeviceAttachTest, AdoptModeReleaseHandsEveryInheritedFdBackUnderItsName) {
  FakeSyscalls sys;
  ListenFds fds;
  std::map<std::string, int> numbers;
  for (const char* name : {"vmm-iommufd", "vmm-fault", "guest-ram"}) {
    numbers[name] = sys.NewFd();
    fds.Add(name, UniqueFd(numbers[name]));
  }
  auto dev = Device::Attach(AdoptDevice(), &fds, &sys, ReadLimits{16});
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ(fds.size(), 0u);
  ListenFds pool;
  (*dev)->ReleaseFds(&pool);
  dev->reset();  // the device's teardown must not close what it handed back
  for (const auto& [name, number] : numbers) {
    auto fd = pool.Take(name);
    ASSERT_TRUE(fd.ok()) << name;
    EXPECT_EQ(fd->get(), number) << name;
    EXPECT_EQ(fcntl(fd->get(), F_GETFD), FD_CLOEXEC) << name << " is still open";
  }
}

TEST(DeviceAttachTest, VfioModeReleasesNothing) {
  FakeSyscalls sys;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(true), &fds, &sys, ReadLimits{16});
  ASSERT_TRUE(dev.ok()) << dev.status();
  ListenFds pool;
  (*dev)->ReleaseFds(&pool);
  EXPECT_EQ(pool.size(), 0u);
}

TEST(IommufdMapTest, FallsBackToUserAddressMapOnKernelsWithoutMapFile) {
  FakeSyscalls sys;
  sys.fail[uapi::kIommuIoasMapFile] = ENOTTY;
  Iommufd iommufd(UniqueFd(sys.NewFd()), &sys, "dsa0");
  char page[4096];
  MapRequest req{
      IoasId(3), 0x100000, 4096, 9, 0x2000, page, uapi::kIoasMapReadable | uapi::kIoasMapWriteable};
  ASSERT_TRUE(iommufd.Map(req).ok());
  ASSERT_TRUE(iommufd.Map(req).ok());
  // MAP_FILE was tried once; after ENOTTY every map goes by user address.
  EXPECT_EQ(std::count(sys.calls.begin(), sys.calls.end(), uapi::kIommuIoasMapFile), 1);
  ASSERT_EQ(sys.maps.size(), 2u);
  EXPECT_EQ(sys.maps[0].user_va, reinterpret_cast<uintptr_t>(page));
  EXPECT_EQ(sys.maps[0].iova, 0x100000u);
  EXPECT_EQ(sys.maps[0].flags,
            uapi::kIoasMapFixedIova | uapi::kIoasMapReadable | uapi::kIoasMapWriteable);
}

TEST(IommufdMapTest, MapFileCarriesFdOffsetAndFixedIova) {
  FakeSyscalls sys;
  Iommufd iommufd(UniqueFd(sys.NewFd()), &sys, "dsa0");
  MapRequest req{IoasId(3), 0x200000, 8192, 9, 0x4000, nullptr, uapi::kIoasMapReadable};
  ASSERT_TRUE(iommufd.Map(req).ok());
  ASSERT_EQ(sys.map_files.size(), 1u);
  EXPECT_EQ(sys.map_files[0].fd, 9);
  EXPECT_EQ(sys.map_files[0].start, 0x4000u);
  EXPECT_EQ(sys.map_files[0].length, 8192u);
  EXPECT_EQ(sys.map_files[0].ioas_id, 3u);
  EXPECT_EQ(sys.map_files[0].flags, uapi::kIoasMapFixedIova | uapi::kIoasMapReadable);
  sys.fail[uapi::kIommuIoasMapFile] = EEXIST;
  absl::Status st = iommufd.Map(req);
  EXPECT_EQ(ErrnoOf(st), EEXIST);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists);
}

// The buffer grows from daemon.read_records up to daemon.max_read_records on EINVAL reads (a
// group larger than the buffer), whoever issued the read; past the limit reading is given up,
// and whoever serves the device hears of it once.
TEST(ReadBufferTest, GrowsByDoublingUpToTheLimitThenGivesUp) {
  FakeSyscalls sys;
  ListenFds fds;
  auto dev = Device::Attach(VfioDevice(false), &fds, &sys, ReadLimits{.initial = 3, .max = 10});
  ASSERT_TRUE(dev.ok());
  FaultQueue& q = (*dev)->queue();
  std::vector<std::string> failures;
  q.on_failed = [&failures](const std::string& why) { failures.push_back(why); };
  using R = FaultQueue::ReadResult;
  EXPECT_EQ(q.OnRead(-EINVAL, FaultQueue::ReadMode::kPolled, 0), R::kGrown);
  EXPECT_EQ((*dev)->read_buffer().size(), 6u);
  EXPECT_EQ(q.OnRead(-EINVAL, FaultQueue::ReadMode::kUntilEmpty, 0), R::kGrown);
  EXPECT_EQ((*dev)->read_buffer().size(), 10u);
  EXPECT_EQ(q.OnRead(-EINVAL, FaultQueue::ReadMode::kPolled, 0), R::kFailed);
  EXPECT_TRUE((*dev)->read_failed());
  EXPECT_EQ((*dev)->stats().read_grows, 2u);
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_THAT(failures[0], HasSubstr("exceeds 10 records (max_read_records)"));
  q.MarkReadFailed("again");
  EXPECT_EQ(failures.size(), 1u) << "a queue given up is reported once";
}

TEST(VfioCdevForPciTest, ResolvesThroughSysfsAndExplainsFailure) {
  auto root = std::filesystem::temp_directory_path() / ("iopfd-sysfs-" + std::to_string(getpid()));
  std::filesystem::create_directories(root / "bus/pci/devices/0000:00:04.0/vfio-dev/vfio5");
  auto cdev = VfioCdevForPci("0000:00:04.0", root.string());
  ASSERT_TRUE(cdev.ok()) << cdev.status();
  EXPECT_EQ(*cdev, "/dev/vfio/devices/vfio5");
  auto missing = VfioCdevForPci("0000:00:05.0", root.string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("0000:00:05.0: no VFIO cdev"));
  std::filesystem::remove_all(root);
}

// LISTEN_FDS parsing runs in a child: it adopts fds 3.. of the process and unsets the variables.
TEST(ListenFdsTest, ParsesNamesForThisProcessOnly) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int p[2];
    if (pipe(p) != 0 || dup2(p[0], 3) < 0 || dup2(p[1], 4) < 0) _exit(10);
    setenv("LISTEN_FDS", "2", 1);
    setenv("LISTEN_FDNAMES", "iommufd:fault", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    auto fds = ListenFds::FromEnvironment();
    if (!fds.ok()) _exit(11);
    if (getenv("LISTEN_FDS") != nullptr) _exit(12);  // unset for children
    auto fault = fds->Take("fault");
    if (!fault.ok() || fault->get() != 4) _exit(13);
    if (fds->Take("fault").ok()) _exit(14);  // taken once only
    if (fds->Untaken() != std::vector<std::string>{"iommufd"}) _exit(15);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", "1", 1);  // someone else's
    auto other = ListenFds::FromEnvironment();
    if (!other.ok() || !other->Untaken().empty()) _exit(16);
    setenv("LISTEN_FDS", "2", 1);
    setenv("LISTEN_FDNAMES", "only-one", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    if (ListenFds::FromEnvironment().ok()) _exit(17);  // names do not match the count
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "failed check number " << WEXITSTATUS(status);
}

}  // namespace
}  // namespace iopfd
