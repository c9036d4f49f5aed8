// Minimal leveled logging to stderr (journald structured logging comes with the service work).
#ifndef IOPFD_LOG_H_
#define IOPFD_LOG_H_

#include <string>

#include "iopfd/config.h"

namespace iopfd {

// Sets the most verbose level that is printed (default kInfo).
void SetLogLevel(LogLevel level);
// Returns the current level.
LogLevel GetLogLevel();
// Prints "iopfd[<level>]: <message>" to stderr when level is enabled. Thread-safe (one write).
void Log(LogLevel level, const std::string& message);

}  // namespace iopfd

#endif  // IOPFD_LOG_H_
