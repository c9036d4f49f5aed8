// Leveled logging. To the journal with structured fields (IOPFD_DEVICE=, IOPFD_STATE=, ...) when
// stderr is connected to it (systemd sets JOURNAL_STREAM for a service's stderr), plain text
// lines on stderr otherwise.
#ifndef IOPFD_SERVICE_LOG_H_
#define IOPFD_SERVICE_LOG_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "iopfd/config/config.h"

namespace iopfd {

// Extra journal fields of one message, by name without the IOPFD_ prefix ("DEVICE", "PASID",
// "STATE", ...): they become IOPFD_DEVICE= and so on. Plain text output leaves them out (the
// message says the same in words).
using LogFields = std::vector<std::pair<std::string, std::string>>;

// Sets the most verbose level that is printed (default kInfo).
void SetLogLevel(LogLevel level);
// Returns the current level.
LogLevel GetLogLevel();
// Logs message when level is enabled: "iopfd[<level>]: <message>" on stderr (one write, so
// lines of different threads never interleave), or one journal entry (MESSAGE=, PRIORITY=,
// SYSLOG_IDENTIFIER=iopfd, IOPFD_LEVEL= and the fields). Thread-safe.
void Log(LogLevel level, const std::string& message, const LogFields& fields = {});

// Where enabled messages go instead (tests that keep a log per case); an empty function restores
// the default. Not thread-safe: set it before any thread logs.
using LogSink = std::function<void(LogLevel, const std::string&)>;
void SetLogSink(LogSink sink);

// Decides once whether stderr is the journal: JOURNAL_STREAM ("device:inode") names the file
// stderr is. Returns the decision. Called by Log on first use; tests may call it again after
// changing stderr or the variable.
bool DetectJournal();

// Returns the journal entry Log sends for a message: "MESSAGE=...", "PRIORITY=<syslog level>",
// "SYSLOG_IDENTIFIER=iopfd", "IOPFD_LEVEL=<name>", then "IOPFD_<NAME>=<value>" for each field.
// Field names are upper-cased; characters other than A-Z, 0-9 and _ become _.
std::vector<std::string> JournalEntry(LogLevel level, const std::string& message,
                                      const LogFields& fields);

}  // namespace iopfd

#endif  // IOPFD_SERVICE_LOG_H_
