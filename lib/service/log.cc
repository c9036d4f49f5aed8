#include "iopfd/service/log.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace iopfd {
namespace {
std::atomic<LogLevel> g_level{LogLevel::kInfo};
// -1: not decided yet; 0: stderr; 1: the journal.
std::atomic<int> g_journal{-1};
LogSink& Sink() {
  static LogSink sink;
  return sink;
}

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return LOG_ERR;
    case LogLevel::kWarning:
      return LOG_WARNING;
    case LogLevel::kInfo:
      return LOG_INFO;
    case LogLevel::kDebug:
      return LOG_DEBUG;
  }
  return LOG_INFO;
}

void WriteStderr(LogLevel level, const std::string& message) {
  std::string line = "iopfd[";
  line.append(LogLevelName(level)).append("]: ").append(message).append("\n");
  // One write(2) per line so lines from different threads never interleave.
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}
}  // namespace

void SetLogSink(LogSink sink) { Sink() = std::move(sink); }

void SetLogLevel(LogLevel level) { g_level.store(level, std::memory_order_relaxed); }
LogLevel GetLogLevel() { return g_level.load(std::memory_order_relaxed); }

bool DetectJournal() {
  bool journal = false;
  // systemd sets JOURNAL_STREAM for a service whose stderr (or stdout) it connected to the
  // journal; stderr redirected elsewhere (a shell, 2>file) does not match, and gets text.
  const char* env = std::getenv("JOURNAL_STREAM");  // NOLINT(concurrency-mt-unsafe): startup
  struct stat st {};
  if (env != nullptr && fstat(STDERR_FILENO, &st) == 0) {
    std::vector<absl::string_view> parts = absl::StrSplit(absl::string_view(env), ':');
    uint64_t dev = 0, ino = 0;
    journal = parts.size() == 2 && absl::SimpleAtoi(parts[0], &dev) &&
              absl::SimpleAtoi(parts[1], &ino) && dev == st.st_dev && ino == st.st_ino;
  }
  g_journal.store(journal ? 1 : 0);
  return journal;
}

std::vector<std::string> JournalEntry(LogLevel level, const std::string& message,
                                      const LogFields& fields) {
  std::vector<std::string> entry;
  entry.reserve(4 + fields.size());
  entry.push_back("MESSAGE=" + message);
  entry.push_back("PRIORITY=" + std::to_string(SyslogPriority(level)));
  entry.emplace_back("SYSLOG_IDENTIFIER=iopfd");
  entry.push_back("IOPFD_LEVEL=" + std::string(LogLevelName(level)));
  for (const auto& [name, value] : fields) {
    std::string key = "IOPFD_";
    for (char c : name) {
      const bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
      const bool lower = c >= 'a' && c <= 'z';
      key.push_back(ok ? c : lower ? static_cast<char>(c - 'a' + 'A') : '_');
    }
    key.append("=").append(value);
    entry.push_back(std::move(key));
  }
  return entry;
}

void Log(LogLevel level, const std::string& message, const LogFields& fields) {
  if (level > GetLogLevel()) return;
  if (Sink()) return Sink()(level, message);
  int journal = g_journal.load();
  if (journal < 0) journal = DetectJournal() ? 1 : 0;
  if (journal == 1) {
    std::vector<std::string> entry = JournalEntry(level, message, fields);
    std::vector<iovec> iov;
    iov.reserve(entry.size());
    for (std::string& e : entry) iov.push_back({e.data(), e.size()});
    // The journal gone (journald restarting): the line still goes out on stderr.
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0) return;
  }
  WriteStderr(level, message);
}

}  // namespace iopfd
