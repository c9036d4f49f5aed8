// Human-readable rendering of io.iopfd Varlink replies, for iopfctl.
//
// Every function is pure and never throws: a field that is missing or of the wrong type (an
// older or newer daemon) is shown as "-" instead of failing the whole output.
#ifndef IOPFD_CONTROL_CTL_FORMAT_H_
#define IOPFD_CONTROL_CTL_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "nlohmann/json.hpp"

namespace iopfd {

// Returns n with thousands separators: "1,234,567".
std::string FormatCount(uint64_t n);

// Returns a byte count as "512 B" below 1 KiB, else with one decimal in the largest binary unit
// it reaches: "1.5 KiB", "1.0 MiB", "3.2 GiB" (up to EiB). Rounding that would give "1024.0"
// moves up a unit instead.
std::string FormatBytes(uint64_t bytes);

// Returns a duration in nanoseconds as "850 ns" below 1 us, else with one decimal in us, ms or
// s: "12.3 us", "1.0 ms", "2.5 s". Rounding that would give "1000.0" moves up a unit instead.
std::string FormatNanos(uint64_t ns);

// Returns an uptime in microseconds as "1d 2h 3m 4s", leaving out leading zero units ("42s",
// "0s") and the fraction of a second.
std::string FormatUptime(uint64_t usec);

// Returns the last dot-separated part of a Varlink name: "io.iopfd.NoSuchDevice" ->
// "NoSuchDevice".
std::string ShortVarlinkName(std::string_view name);

// Returns the GetStatus reply as aligned "key  value" lines (version, uptime, devices, health).
std::string FormatStatus(const nlohmann::json& parameters);

// Returns the ListDevices reply as a table with one row per device and the header
// NAME ATTACH STATE PASIDS GROUPS SUCCESS INVALID OUTSTANDING, or "no devices\n".
std::string FormatDevices(const nlohmann::json& parameters);

// Returns the GetStats reply as one block per device, separated by blank lines: the counters,
// the non-zero INVALID counts by reason, and the batch and latency percentiles. Returns
// "no devices\n" when the reply lists none.
std::string FormatStats(const nlohmann::json& parameters);

// Returns the Reload reply as "added", "removed" and "kept" lines of device names.
std::string FormatReload(const nlohmann::json& parameters);

// Returns the reply of Drain, Reset, Halt or Resume: "DEV: STATE (epoch N)", and in "halting"
// what the owner has to do next.
std::string FormatDrainReply(std::string_view device, const nlohmann::json& parameters);

// Returns true for the drain states the daemon leaves on its own (flushing, resetting,
// resuming): a drain command waits them out.
bool IsTransientState(const nlohmann::json& state);

// Returns {"state", "epoch"} of `device` in a ListDevices reply's parameters, or nullopt when
// the reply does not list it. The reply is the daemon's word, not to be trusted: whatever it
// holds, this never throws; fields of the wrong type read as "" and 0.
std::optional<nlohmann::json> DeviceStateIn(const nlohmann::json& parameters,
                                            std::string_view device);

// Returns one Monitor event as a single line without a newline: "EVENT[ DEVICE][: DETAIL]".
std::string FormatMonitorEvent(const nlohmann::json& parameters);

// Returns an error reply as one line without a newline:
// "iopfctl: <method>: <error>: key=value ..." with the interface prefix dropped from method and
// error, and the ": key=value" part left out when there are no parameters. String values are
// printed bare unless they contain spaces, quotes, '=' or control characters, in which case they
// are JSON-quoted; other values are compact JSON, so the result is always one line.
std::string FormatError(std::string_view method, std::string_view error,
                        const nlohmann::json& parameters);

}  // namespace iopfd

#endif  // IOPFD_CONTROL_CTL_FORMAT_H_
