#include "iopfd/config/toml_guard.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"

namespace iopfd {
namespace {

// Decodes one UTF-8 code point at text[i]: its value and length, or length 0 when the bytes are
// not well-formed UTF-8 (overlong forms, surrogates and values past U+10FFFF included).
struct CodePoint {
  uint32_t value = 0;
  size_t length = 0;
};
CodePoint Decode(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) return {b0, 1};
  size_t n = 0;
  uint32_t v = 0;
  uint32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, v = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, v = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, v = b0 & 0x07, min = 0x10000;
  } else {
    return {};
  }
  if (i + n > text.size()) return {};
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return {};
    v = (v << 6) | (byte(i + k) & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return {};
  return {v, n};
}

bool IsBareKeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

enum class State { kNormal, kComment, kBasic, kLiteral, kMlBasic, kMlLiteral };

class Checker {
 public:
  explicit Checker(std::string_view text) : text_(text) {}

  std::optional<TomlTextProblem> Run() {
    // toml++ skips a UTF-8 byte order mark at the very start.
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") i_ = 3;
    while (i_ < text_.size()) {
      const CodePoint cp = Decode(text_, i_);
      if (cp.length == 0) {
        return Problem(
            absl::StrFormat("invalid UTF-8 (byte 0x%02x)", static_cast<uint8_t>(text_[i_])));
      }
      if (auto p = Step(cp)) return p;
    }
    return std::nullopt;
  }

 private:
  TomlTextProblem Problem(std::string message) const {
    return TomlTextProblem{line_, column_, std::move(message)};
  }
  bool At(std::string_view s) const { return text_.substr(i_, s.size()) == s; }
  // Moves past n bytes that are one or more ASCII characters or one code point.
  void Advance(size_t n, bool one_code_point = false) {
    for (size_t k = 0; k < n; ++k) {
      if (text_[i_ + k] == '\n') {
        ++line_;
        column_ = 1;
      } else if (!one_code_point || k == 0) {
        ++column_;
      }
    }
    i_ += n;
  }

  std::optional<TomlTextProblem> Step(const CodePoint& cp) {
    const char c = cp.value < 0x80 ? static_cast<char>(cp.value) : '\x80';
    switch (state_) {
      case State::kNormal:
        return Normal(cp, c);
      case State::kComment:
        if (c == '\n') EndLine();
        break;
      case State::kBasic:
      case State::kMlBasic:
        if (c == '\\') return Backslash();
        if (state_ == State::kBasic && c == '"') {
          EndString('"');
        } else if (state_ == State::kBasic && c == '\n') {
          EndLine();
        } else if (state_ == State::kMlBasic && At("\"\"\"")) {
          return CloseMultiline('"');
        }
        break;
      case State::kLiteral:
        if (c == '\'') {
          EndString('\'');
        } else if (c == '\n') {
          EndLine();
        }
        break;
      case State::kMlLiteral:
        if (At("'''")) return CloseMultiline('\'');
        break;
    }
    Advance(cp.length, true);
    return std::nullopt;
  }

  std::optional<TomlTextProblem> Normal(const CodePoint& cp, char c) {
    if (cp.value >= 0x80) {
      return Problem(absl::StrFormat(
          "character U+%04X outside a string or comment (TOML allows only ASCII there)", cp.value));
    }
    // A run of bare-key characters, quoted parts and dots is a key (or a number or date, which
    // have at most two dots): its dots are the depth of tables it makes.
    if (c == '.') {
      if (++key_dots_ > kMaxTomlKeyDots) {
        return Problem(absl::StrFormat("a key of more than %d dotted parts", kMaxTomlKeyDots + 1));
      }
    } else if (!IsBareKeyChar(c) && c != ' ' && c != '\t' && c != '"' && c != '\'') {
      key_dots_ = 0;
    }
    if (c == '[' || c == '{') {
      if (++brackets_ > kMaxTomlBrackets) {
        return Problem(absl::StrFormat("nested deeper than %d arrays, tables and inline tables",
                                       kMaxTomlBrackets));
      }
    } else if ((c == ']' || c == '}') && brackets_ > 0) {
      --brackets_;
    }
    if (auto p = QuoteProblem(c)) return p;
    TrackContext(c);
    if (c == '\n') {
      prev_ = '\0';
    } else if (c != ' ' && c != '\t' && c != '\r' && c != '"' && c != '\'') {
      prev_ = c;
    }
    if (c == '#') {
      state_ = State::kComment;
    } else if (c == '"') {
      if (At("\"\"\"")) {
        state_ = State::kMlBasic;
        Advance(3);
        return std::nullopt;
      }
      state_ = State::kBasic;
    } else if (c == '\'') {
      if (At("'''")) {
        state_ = State::kMlLiteral;
        Advance(3);
        return std::nullopt;
      }
      state_ = State::kLiteral;
    }
    Advance(1);
    return std::nullopt;
  }

  // A quote where no string can start (see the comments inside), or nullopt.
  std::optional<TomlTextProblem> QuoteProblem(char c) const {
    // A quote starts a string only where TOML can have one: a key (first on a line, or after
    // '{', ',', '.' or '['), or a value (after '=', '[', ','). Elsewhere toml++ does not take it
    // for a string and reads on into it as bare characters, non-ASCII ones included (a fuzzer
    // found `x =0"\xc3\xa4"` reaching __builtin_unreachable that way).
    if ((c == '"' || c == '\'') && prev_ != '\0' && prev_ != '=' && prev_ != '[' && prev_ != '{' &&
        prev_ != ',' && prev_ != '.') {
      return Problem(
          absl::StrFormat("a quote right after '%c' (no string can start there)", prev_));
    }
    // After a dot, only in a key (`a."b"`): in a value, toml++ 3.3.0 reads a float's `1.` on
    // into the quoted part as bare characters (a fuzzer found `a = 1."\xc3\xa9"` reaching
    // __builtin_unreachable), and no value has a dot before a quote anyway.
    if ((c == '"' || c == '\'') && prev_ == '.' && value_) {
      return Problem("a quote right after '.' in a value (no string can start there)");
    }
    return std::nullopt;
  }

  // Whether the text is in a key or a value: '=' starts a value; an inline table's '{' and ','
  // start keys, an array's '[' and ',' values; a closing bracket ends an inner value (a table
  // header's ']' ends the header); a new line outside brackets starts a key.
  void TrackContext(char c) {
    switch (c) {
      case '=':
        value_ = true;
        break;
      case '{':
        open_.push_back('{');
        value_ = false;
        break;
      case '[':
        open_.push_back(value_ ? '[' : 'h');
        break;
      case ',':
        if (!open_.empty()) value_ = open_.back() == '[';
        break;
      case '}':
      case ']':
        if (!open_.empty()) {
          value_ = open_.back() != 'h';
          open_.pop_back();
        }
        break;
      case '\n':
        if (open_.empty()) value_ = false;
        break;
      default:
        break;
    }
  }

  // A multi-line string closes at three quotes; one or two more right after are its last
  // characters (TOML 1.0), so the string ends after up to five.
  std::optional<TomlTextProblem> CloseMultiline(char quote) {
    Advance(3);
    for (int k = 0; k < 2 && i_ < text_.size() && text_[i_] == quote; ++k) Advance(1);
    state_ = State::kNormal;
    prev_ = quote;
    return std::nullopt;
  }
  // A single-line string or a comment ends.
  void EndString(char quote) {
    state_ = State::kNormal;
    prev_ = quote;
  }
  void EndLine() {
    state_ = State::kNormal;
    prev_ = '\0';
    if (open_.empty()) value_ = false;  // a comment's or a broken string's end of line
  }

  // A backslash in a basic string: an escape of one ASCII character, or (multi-line strings)
  // a line-ending backslash, which trims all whitespace and newlines after it. Either way the
  // character that follows must be ASCII (see the header).
  std::optional<TomlTextProblem> Backslash() {
    Advance(1);
    if (state_ == State::kMlBasic) {
      while (i_ < text_.size() &&
             (text_[i_] == ' ' || text_[i_] == '\t' || text_[i_] == '\r' || text_[i_] == '\n')) {
        Advance(1);
      }
    }
    if (i_ >= text_.size()) return std::nullopt;
    const CodePoint next = Decode(text_, i_);
    if (next.length == 0) {
      return Problem(
          absl::StrFormat("invalid UTF-8 (byte 0x%02x)", static_cast<uint8_t>(text_[i_])));
    }
    if (next.value >= 0x80) {
      return Problem(absl::StrFormat(
          "character U+%04X right after a backslash (not an escape; after a line-ending "
          "backslash, move it to the line before or write it as \\u%04X)",
          next.value, next.value));
    }
    // The escaped character itself (\" and \\ must not end the string or start an escape);
    // after a line-ending backslash it is ordinary content, handled by the next step.
    if (text_[i_ - 1] == '\\') Advance(1);
    return std::nullopt;
  }

  std::string_view text_;
  size_t i_ = 0;
  int line_ = 1;
  int column_ = 1;
  State state_ = State::kNormal;
  // The last character outside strings and comments on this line that is not a space or tab
  // ('\0' at the start of a line; a quote after a string).
  char prev_ = '\0';
  int brackets_ = 0;
  int key_dots_ = 0;
  bool value_ = false;      // in a value (TrackContext)
  std::vector<char> open_;  // '[' array, '{' inline table, 'h' table header, innermost last
};

}  // namespace

std::optional<TomlTextProblem> CheckTomlText(std::string_view text) { return Checker(text).Run(); }

}  // namespace iopfd
