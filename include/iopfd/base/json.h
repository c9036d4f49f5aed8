// JSON from outside iopfd (control messages, replies a daemon sends iopfctl, records a crashed
// iopfd left in systemd's fd store) parsed with bounds, so that no input can exhaust the stack.
//
// nlohmann::json parses iteratively and destroys iteratively (3.10+), but copying, comparing and
// serialising a value recurse once per level of nesting: a 400 KB message of 200,000 nested
// arrays is a valid document that kills the process the first time it is copied. The depth is
// therefore checked on the bytes, before any nested value exists.
#ifndef IOPFD_BASE_JSON_H_
#define IOPFD_BASE_JSON_H_

#include <cstddef>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace iopfd {

// Deeper than anything iopfd sends or accepts (its deepest reply, GetStats, nests 5 levels).
inline constexpr size_t kMaxJsonDepth = 64;

// Returns the byte offset of the first '[' or '{' that opens level max_depth + 1 (strings are
// skipped, escapes included), or npos when text nests no deeper than max_depth. Linear, no
// recursion, no allocation; meaningful for any bytes, valid JSON or not.
size_t FindJsonTooDeep(std::string_view text, size_t max_depth = kMaxJsonDepth);

// Parses text as one JSON document nested at most max_depth levels. Returns the value, or
// InvalidArgument saying "nested deeper than N levels at byte B" or "not valid JSON" (which
// includes invalid UTF-8 in strings). Never throws.
absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, size_t max_depth = kMaxJsonDepth);

// Returns the value of an unsigned integer field: true and *out set when j is a JSON integer
// (not a float, not a string) in [0, max]. For reading numbers from outside without the
// undefined float-to-integer conversions of json::get<>.
bool GetUnsigned(const nlohmann::json& j, uint64_t max, uint64_t* out);

}  // namespace iopfd

#endif  // IOPFD_BASE_JSON_H_
