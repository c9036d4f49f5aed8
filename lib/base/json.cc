#include "iopfd/base/json.h"

#include "absl/strings/str_cat.h"

namespace iopfd {

size_t FindJsonTooDeep(std::string_view text, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      // A backslash escapes exactly the next byte as far as finding the string's end goes:
      // \" and \\ are the only escapes that could hide or fake a closing quote.
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, size_t max_depth) {
  if (size_t at = FindJsonTooDeep(text, max_depth); at != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("nested deeper than ", max_depth, " levels at byte ", at));
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  return j;
}

bool GetUnsigned(const nlohmann::json& j, uint64_t max, uint64_t* out) {
  if (!j.is_number_integer()) return false;
  if (j.is_number_unsigned()) {
    const auto v = j.get<uint64_t>();
    if (v > max) return false;
    *out = v;
    return true;
  }
  const auto v = j.get<int64_t>();
  if (v < 0 || static_cast<uint64_t>(v) > max) return false;
  *out = static_cast<uint64_t>(v);
  return true;
}

}  // namespace iopfd
