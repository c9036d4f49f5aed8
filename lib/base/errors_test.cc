#include "iopfd/base/errors.h"

#include <unistd.h>

#include <cerrno>
#include <csignal>

#include "gtest/gtest.h"
#include "iopfd/base/fd.h"

namespace iopfd {
namespace {

TEST(ErrnoStatusTest, NamesObjectOperationAndErrno) {
  absl::Status s = ErrnoStatus(EOPNOTSUPP, "dsa0", "IOMMU_HWPT_ALLOC", "kernel too old");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(),
            "dsa0: IOMMU_HWPT_ALLOC: EOPNOTSUPP (Operation not supported): kernel too old");
  EXPECT_EQ(ErrnoOf(s), EOPNOTSUPP);
}

TEST(ErrnoStatusTest, OmitsEmptyObjectAndHint) {
  absl::Status s = ErrnoStatus(ENOENT, "", "open /dev/iommu");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "open /dev/iommu: ENOENT (No such file or directory)");
}

TEST(ErrnoStatusTest, ErrnoOfPlainStatusIsZero) {
  EXPECT_EQ(ErrnoOf(absl::InternalError("x")), 0);
  EXPECT_EQ(ErrnoOf(absl::OkStatus()), 0);
}

TEST(UniqueFdTest, ClosesOnDestructionAndMoves) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  {
    UniqueFd a(fds[0]);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move,clang-analyzer-cplusplus.Move):
                              // checks moved-from state
    EXPECT_EQ(b.get(), fds[0]);
  }
  // The read end is closed, so writing to the pipe fails with EPIPE (SIGPIPE ignored here).
  signal(SIGPIPE, SIG_IGN);
  EXPECT_EQ(write(fds[1], "x", 1), -1);
  EXPECT_EQ(errno, EPIPE);
  close(fds[1]);
}

}  // namespace
}  // namespace iopfd
