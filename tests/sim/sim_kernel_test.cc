// The simulated kernel with iopfd's real device setup and fault path on top: what the drain
// must prevent (a stale answer meeting a reused tag after FLR) happens here without a drain,
// and parking the attachment first prevents it.
#include "sim_kernel.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iopfd/device/device.h"

namespace iopfd::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<ViolationKind> Kinds(const PriDevice& d) {
  std::vector<ViolationKind> out;
  for (const Violation& v : d.violations()) out.push_back(v.kind);
  return out;
}

class SimKernelTest : public ::testing::Test {
 protected:
  explicit SimKernelTest(SimKernel::PriPolicy policy = SimKernel::PriPolicy::kIntel)
      : kernel_(&function_, policy) {
    ListenFds none;
    auto d = Device::Attach(SimVfioDevice("sim0", {std::nullopt}, 1 << 20), &none, &kernel_,
                            ReadLimits{64});
    EXPECT_TRUE(d.ok()) << d.status();
    if (d.ok()) device_ = *std::move(d);
  }
  // The function issues a one-page group and the IOMMU queues it.
  PageRequest Fault(uint64_t page) {
    auto g = function_.IssueGroup(std::nullopt, 0x100000 + page * 4096, uapi::kPermRead, 1);
    kernel_.DeliverRequests(g);
    return g[0];
  }
  // What the daemon's loop does in one turn, through the seam: read, resolve, queue responses.
  size_t ReadAndResolve() {
    auto buf = device_->read_buffer();
    ssize_t n = kernel_.Read(device_->fault_fd(), buf.data(), buf.size_bytes());
    if (n <= 0) return 0;
    size_t records = static_cast<size_t>(n) / sizeof(uapi::PageFault);
    device_->processor().Process(buf.first(records), 0);
    return records;
  }
  void WriteResponses() {
    ResponseQueue& q = device_->responses();
    while (q.HasUnwritten()) {
      auto span = q.BeginWrite();
      ssize_t w = kernel_.Write(device_->fault_fd(), span.data(), span.size_bytes());
      if (!q.CompleteWrite(static_cast<int>(w), 0)) break;
    }
  }

  PriDevice function_;
  SimKernel kernel_;
  std::unique_ptr<Device> device_;
};

TEST_F(SimKernelTest, FaultsFlowAndEverySuccessIsMapped) {
  ASSERT_NE(device_, nullptr);
  EXPECT_TRUE(function_.enabled());
  for (int i = 0; i < 10; ++i) Fault(static_cast<uint64_t>(i));
  EXPECT_EQ(ReadAndResolve(), 10u);
  WriteResponses();
  EXPECT_EQ(function_.completed(), 10u);
  EXPECT_EQ(kernel_.mappings().size(), 1u);  // ten adjacent pages, one coalesced map
  function_.CheckNothingLost();
  EXPECT_THAT(function_.violations(), IsEmpty());
  EXPECT_THAT(kernel_.violations(), IsEmpty());
}

TEST_F(SimKernelTest, WithoutADrainAStaleAnswerMeetsAReusedTagAfterFlr) {
  ASSERT_NE(device_, nullptr);
  Fault(0);
  ASSERT_EQ(ReadAndResolve(), 1u);  // read and resolved, its answer not yet written
  // A reset with the IOPF HWPT still attached: the function forgets its tag, PRI comes back on
  // (it was on when the state was saved), and the index is reused at once.
  ASSERT_EQ(kernel_.Ioctl(kernel_.vfio_fd(), uapi::kVfioDeviceReset, nullptr), 0);
  EXPECT_TRUE(function_.enabled());
  function_.ResumeDma();
  Fault(0);
  WriteResponses();  // the old cookie is still valid in the kernel: the answer goes through
  EXPECT_THAT(Kinds(function_), ElementsAre(ViolationKind::kStaleResponse));
}

// Parks the no-PASID attachment: a fault-less HWPT over the same IOAS replaces the IOPF one
// (by hand here; the drain state machine will do it). Returns the IOPF HWPT.
uint32_t Park(SimKernel& k) {
  const uint32_t iopf = k.AttachedHwpt(std::nullopt);
  uapi::IommuHwptAlloc park{};
  park.size = sizeof(park);
  park.dev_id = k.dev_id();
  park.pt_id = k.IoasOf(iopf);
  EXPECT_EQ(k.Ioctl(k.iommufd(), uapi::kIommuHwptAlloc, &park), 0);
  uapi::VfioDeviceAttachIommufdPt at{sizeof(at), 0, park.out_hwpt_id, 0};
  EXPECT_EQ(k.Ioctl(k.vfio_fd(), uapi::kVfioDeviceAttachIommufdPt, &at), 0);
  return iopf;
}

void Unpark(SimKernel& k, uint32_t iopf) {
  uapi::VfioDeviceAttachIommufdPt at{sizeof(at), 0, iopf, 0};
  EXPECT_EQ(k.Ioctl(k.vfio_fd(), uapi::kVfioDeviceAttachIommufdPt, &at), 0);
}

TEST_F(SimKernelTest, ParkingBeforeTheResetFlushesEveryTagSoNothingStaleSurvives) {
  ASSERT_NE(device_, nullptr);
  Fault(0);
  Fault(1);
  ASSERT_EQ(ReadAndResolve(), 2u);  // both read, answers not yet written
  Fault(2);                         // one more queued, not read
  const uint32_t iopf = Park(kernel_);
  // The kernel answered all three groups of the attachment. On Intel PRI stays enabled.
  EXPECT_EQ(kernel_.auto_responses(), 3u);
  EXPECT_EQ(kernel_.Queued(device_->fault_fd()), 0u);
  EXPECT_EQ(function_.outstanding_groups(), 0u);
  EXPECT_TRUE(function_.enabled());
  // The answers iopfd still holds are stale; nothing else was read since, so the kernel refuses
  // their cookies and the function never sees them.
  WriteResponses();
  EXPECT_EQ(kernel_.refused_responses(), 2u);
  EXPECT_EQ(device_->stats().responses_rejected, 2u);
  ASSERT_EQ(kernel_.Ioctl(kernel_.vfio_fd(), uapi::kVfioDeviceReset, nullptr), 0);
  Unpark(kernel_, iopf);
  function_.ResumeDma();
  Fault(0);
  EXPECT_EQ(ReadAndResolve(), 1u);
  WriteResponses();
  function_.CheckNothingLost();
  EXPECT_THAT(function_.violations(), IsEmpty());
  EXPECT_THAT(kernel_.violations(), IsEmpty());
}

TEST_F(SimKernelTest, AHeldCookieWrittenAfterAParkCanAnswerAnotherGroup) {
  ASSERT_NE(device_, nullptr);
  Fault(0);
  ASSERT_EQ(ReadAndResolve(), 1u);  // cookie 1, answer SUCCESS held
  const uint32_t iopf = Park(kernel_);
  Unpark(kernel_, iopf);
  Fault(40);  // a page nobody mapped
  uapi::PageFault rec[1];
  ASSERT_EQ(kernel_.Read(device_->fault_fd(), rec, sizeof(rec)), static_cast<ssize_t>(sizeof(rec)));
  EXPECT_EQ(rec[0].cookie, 1u);  // the freed cookie, reused
  // Writing what was held across the park is not refused: it answers the new group.
  WriteResponses();
  EXPECT_EQ(kernel_.refused_responses(), 0u);
  EXPECT_EQ(kernel_.violations().size(), 1u);      // SUCCESS for a page that is not mapped
  EXPECT_THAT(function_.violations(), IsEmpty());  // the function cannot tell
}

TEST_F(SimKernelTest, DeviceParkDropsWhatItHeldSoNoAnswerIsMisdirected) {
  ASSERT_NE(device_, nullptr);
  ASSERT_TRUE(device_->can_park());
  Fault(0);
  ASSERT_EQ(ReadAndResolve(), 1u);  // cookie 1, answer SUCCESS held
  ASSERT_TRUE(device_->Park(std::nullopt).ok());
  EXPECT_EQ(kernel_.auto_responses(), 1u);
  EXPECT_EQ(device_->stats().responses_stale_dropped, 1u);
  EXPECT_FALSE(device_->responses().HasUnwritten());
  ASSERT_TRUE(device_->Unpark(std::nullopt).ok());
  Fault(40);
  ASSERT_EQ(ReadAndResolve(), 1u);  // reuses cookie 1, and is answered for itself
  WriteResponses();
  EXPECT_EQ(device_->stats().outstanding(), 0u);
  function_.CheckNothingLost();
  EXPECT_THAT(function_.violations(), IsEmpty());
  EXPECT_THAT(kernel_.violations(), IsEmpty());
}

class AmdSimKernelTest : public SimKernelTest {
 protected:
  AmdSimKernelTest() : SimKernelTest(SimKernel::PriPolicy::kAmd) {}
};

TEST_F(AmdSimKernelTest, PriFollowsTheRidDomain) {
  ASSERT_NE(device_, nullptr);
  EXPECT_TRUE(function_.enabled());
  Fault(0);
  const uint32_t iopf = Park(kernel_);
  EXPECT_TRUE(function_.stopped());
  // PRI was off when the reset saved the state: it stays off.
  ASSERT_EQ(kernel_.Ioctl(kernel_.vfio_fd(), uapi::kVfioDeviceReset, nullptr), 0);
  EXPECT_FALSE(function_.enabled());
  Unpark(kernel_, iopf);
  EXPECT_TRUE(function_.enabled());
}

TEST_F(SimKernelTest, ReadFollowsTheFaultFdRules) {
  ASSERT_NE(device_, nullptr);
  auto g = function_.IssueGroup(std::nullopt, 0x100000, uapi::kPermRead, 3);
  kernel_.DeliverRequests({g[0], g[1]});
  EXPECT_EQ(kernel_.Queued(device_->fault_fd()), 0u);  // partial: not delivered yet
  kernel_.DeliverRequests({g[2]});
  EXPECT_EQ(kernel_.Queued(device_->fault_fd()), 1u);
  uapi::PageFault buf[3];
  EXPECT_EQ(kernel_.Read(device_->fault_fd(), buf, 10), -ESPIPE);
  EXPECT_EQ(kernel_.Read(device_->fault_fd(), buf, 2 * sizeof(buf[0])), -EINVAL);
  ASSERT_EQ(kernel_.Read(device_->fault_fd(), buf, sizeof(buf)), static_cast<ssize_t>(sizeof(buf)));
  EXPECT_EQ(buf[0].cookie, buf[2].cookie);
  EXPECT_EQ(buf[2].flags & uapi::kPgfaultLastPage, uapi::kPgfaultLastPage);
  EXPECT_EQ(kernel_.Read(device_->fault_fd(), buf, sizeof(buf)), 0);
  uapi::PageResponse two[2] = {{buf[0].cookie, uapi::kRespSuccess}, {999, uapi::kRespSuccess}};
  EXPECT_EQ(kernel_.Write(device_->fault_fd(), two, sizeof(two)),
            static_cast<ssize_t>(sizeof(two[0])));  // stops at the unknown cookie
  EXPECT_EQ(kernel_.Write(device_->fault_fd(), two, sizeof(two[0])), -EINVAL);  // answered
  EXPECT_EQ(function_.completed(), 1u);
}

}  // namespace
}  // namespace iopfd::sim
