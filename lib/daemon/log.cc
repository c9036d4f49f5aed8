#include "iopfd/log.h"

#include <unistd.h>

#include <atomic>
#include <utility>

namespace iopfd {
namespace {
std::atomic<LogLevel> g_level{LogLevel::kInfo};
LogSink& Sink() {
  static LogSink sink;
  return sink;
}
}  // namespace

void SetLogSink(LogSink sink) { Sink() = std::move(sink); }

void SetLogLevel(LogLevel level) { g_level.store(level, std::memory_order_relaxed); }
LogLevel GetLogLevel() { return g_level.load(std::memory_order_relaxed); }

void Log(LogLevel level, const std::string& message) {
  if (level > GetLogLevel()) return;
  if (Sink()) return Sink()(level, message);
  std::string line = "iopfd[";
  line.append(LogLevelName(level)).append("]: ").append(message).append("\n");
  // One write(2) per line so lines from different threads never interleave.
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace iopfd
