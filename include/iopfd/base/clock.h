// The one clock iopfd measures with.
#ifndef IOPFD_BASE_CLOCK_H_
#define IOPFD_BASE_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace iopfd {

// Returns CLOCK_MONOTONIC in nanoseconds.
inline uint64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace iopfd

#endif  // IOPFD_BASE_CLOCK_H_
