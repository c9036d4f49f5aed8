// The journal entry a message becomes, and when stderr counts as the journal.
#include "iopfd/service/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iopfd {
namespace {

using ::testing::ElementsAre;

TEST(LogTest, JournalEntryCarriesPriorityIdentifierAndPrefixedFields) {
  EXPECT_THAT(JournalEntry(LogLevel::kError, "gpu0: running -> quarantined (park failed)",
                           {{"DEVICE", "gpu0"}, {"previous state", "running"}, {"PASID", "5"}}),
              ElementsAre("MESSAGE=gpu0: running -> quarantined (park failed)", "PRIORITY=3",
                          "SYSLOG_IDENTIFIER=iopfd", "IOPFD_LEVEL=error", "IOPFD_DEVICE=gpu0",
                          "IOPFD_PREVIOUS_STATE=running", "IOPFD_PASID=5"));
  EXPECT_THAT(
      JournalEntry(LogLevel::kDebug, "x", {}),
      ElementsAre("MESSAGE=x", "PRIORITY=7", "SYSLOG_IDENTIFIER=iopfd", "IOPFD_LEVEL=debug"));
}

TEST(LogTest, StderrIsTheJournalOnlyWhenJournalStreamNamesIt) {
  struct stat st {};
  ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
  const std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  setenv("JOURNAL_STREAM", mine.c_str(), 1);
  EXPECT_TRUE(DetectJournal());
  setenv("JOURNAL_STREAM",
         (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1)).c_str(), 1);
  EXPECT_FALSE(DetectJournal());  // stderr redirected elsewhere: text
  for (const char* bad : {"", "12", "a:b", "1:2:3"}) {
    setenv("JOURNAL_STREAM", bad, 1);
    EXPECT_FALSE(DetectJournal()) << bad;
  }
  unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(DetectJournal());
}

}  // namespace
}  // namespace iopfd
