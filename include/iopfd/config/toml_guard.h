// A lexical check of configuration text before toml++ sees it.
//
// Configuration reaches iopfd from files and, through Adopt, from any admin-group client of the
// control socket. Debian 12's toml++ (3.3.0) misbehaves on some text instead of reporting an
// error: a non-ASCII character where the grammar allows none (the two bytes "\xc5\x92" as a
// whole document) reaches __builtin_unreachable in its Unicode tables (upstream issues 190 and
// 295, the latter still open), and a dotted key of some 100,000 parts exhausts the stack. TOML
// allows non-ASCII characters only inside strings and comments, so this check, which knows
// where strings and comments are, refuses the rest with an error naming line and column, and
// bounds the nesting toml++ would build. What it lets through was run against toml++ for every
// code point in every context (toml_guard_test.cc) and is fuzzed (tests/fuzz).
#ifndef IOPFD_CONFIG_TOML_GUARD_H_
#define IOPFD_CONFIG_TOML_GUARD_H_

#include <optional>
#include <string>
#include <string_view>

namespace iopfd {

// Nesting bounds: brackets and braces open at once outside strings and comments, and dots in
// one key. iopfd's own files use 2 and 2; toml++ alone allows 256 values deep and unbounded keys.
inline constexpr int kMaxTomlBrackets = 32;
inline constexpr int kMaxTomlKeyDots = 32;

struct TomlTextProblem {
  int line = 0;    // 1-based
  int column = 0;  // 1-based, in code points (as toml++ counts)
  std::string message;
};

// Returns nullopt when text may be given to toml++: valid UTF-8 (an optional byte order mark
// first), non-ASCII characters only inside strings and comments and never right after a
// backslash in a string (TOML has no such escape; a line-ending backslash followed by one, which
// TOML allows, is refused too: toml++ 3.3.0 cannot parse it), quotes only where a string can
// start (after a dot only in a key: in a value toml++ reads `1."..."` on as bare characters),
// and nesting within the bounds above. Otherwise returns the first problem. Linear, no
// recursion.
std::optional<TomlTextProblem> CheckTomlText(std::string_view text);

}  // namespace iopfd

#endif  // IOPFD_CONFIG_TOML_GUARD_H_
