// Minimal leveled logging to stderr (journald structured logging comes with the service work).
#ifndef IOPFD_LOG_H_
#define IOPFD_LOG_H_

#include <functional>
#include <string>

#include "iopfd/config.h"

namespace iopfd {

// Sets the most verbose level that is printed (default kInfo).
void SetLogLevel(LogLevel level);
// Returns the current level.
LogLevel GetLogLevel();
// Prints "iopfd[<level>]: <message>" to stderr when level is enabled. Thread-safe (one write).
void Log(LogLevel level, const std::string& message);

// Where enabled messages go instead of stderr (tests that keep a log per case); an empty
// function restores stderr. Not thread-safe: set it before any thread logs.
using LogSink = std::function<void(LogLevel, const std::string&)>;
void SetLogSink(LogSink sink);

}  // namespace iopfd

#endif  // IOPFD_LOG_H_
