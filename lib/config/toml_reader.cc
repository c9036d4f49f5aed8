#include "toml_reader.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/fd.h"
#include "iopfd/base/uapi.h"
#include "iopfd/config/toml_guard.h"

namespace iopfd::config_internal {

std::string Hex(uint64_t v) { return Cat("0x", absl::Hex(v)); }

std::string Quote(std::string_view s) { return Cat("\"", absl::CHexEscape(Arg(s)), "\""); }

std::string JoinPath(std::string_view prefix, std::string_view key) {
  if (prefix.empty()) return std::string(key);
  return Cat(prefix, ".", key);
}

std::string_view TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown type";
}

void SortErrorsFrom(std::vector<ConfigError>* errors, size_t from) {
  std::stable_sort(errors->begin() + static_cast<std::ptrdiff_t>(from), errors->end(),
                   [](const ConfigError& a, const ConfigError& b) {
                     if (a.where.line != b.where.line) return a.where.line < b.where.line;
                     return a.where.column < b.where.column;
                   });
}

std::string JoinNames(std::initializer_list<std::string_view> names) {
  std::string out;
  for (std::string_view name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

void CheckKeys(Reporter& rep, const toml::table& table, std::string_view prefix,
               std::initializer_list<std::string_view> allowed) {
  for (auto&& [key, value] : table) {
    if (std::find(allowed.begin(), allowed.end(), key.str()) != allowed.end()) continue;
    rep.At(key.source(), Cat(JoinPath(prefix, key.str()), ": unknown key (expected one of ",
                             JoinNames(allowed), ")"));
  }
}

const toml::node* Lookup(Reporter& rep, const toml::table& table, std::string_view prefix,
                         std::string_view key, bool required) {
  const toml::node* node = table.get(key);
  if (node == nullptr && required) {
    rep.AtTable(table, Cat(JoinPath(prefix, key), ": missing required key"));
  }
  return node;
}

void WrongType(Reporter& rep, const toml::node& node, std::string_view path,
               std::string_view expected) {
  rep.At(node, Cat(path, ": expected ", expected, ", got ", TypeName(node.type())));
}

std::optional<Field<std::string>> GetString(Reporter& rep, const toml::table& table,
                                            std::string_view prefix, std::string_view key,
                                            bool required) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const auto* str = node->as_string();
  if (str == nullptr) {
    WrongType(rep, *node, JoinPath(prefix, key), "a string");
    return std::nullopt;
  }
  return Field<std::string>{str->get(), node};
}

std::optional<Field<bool>> GetBool(Reporter& rep, const toml::table& table, std::string_view prefix,
                                   std::string_view key, bool required) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const auto* boolean = node->as_boolean();
  if (boolean == nullptr) {
    WrongType(rep, *node, JoinPath(prefix, key), "a boolean (true or false)");
    return std::nullopt;
  }
  return Field<bool>{boolean->get(), node};
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == kMaxI64) return Cat("must be >= ", min);
  return Cat("must be in ", min, "..", max);
}

std::optional<Field<int64_t>> GetInt(Reporter& rep, const toml::table& table,
                                     std::string_view prefix, std::string_view key, bool required,
                                     int64_t min, int64_t max) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const auto* integer = node->as_integer();
  if (integer == nullptr) {
    WrongType(rep, *node, JoinPath(prefix, key), "an integer");
    return std::nullopt;
  }
  const int64_t value = integer->get();
  if (value < min || value > max) {
    rep.At(*node, Cat(JoinPath(prefix, key), ": ", RangeText(min, max), " (got ", value, ")"));
    return std::nullopt;
  }
  return Field<int64_t>{value, node};
}

std::optional<Field<uint64_t>> GetSize(Reporter& rep, const toml::table& table,
                                       std::string_view prefix, std::string_view key,
                                       bool required) {
  const toml::node* node = Lookup(rep, table, prefix, key, required);
  if (node == nullptr) return std::nullopt;
  const std::string path = JoinPath(prefix, key);
  if (const auto* integer = node->as_integer()) {
    if (integer->get() < 0) {
      rep.At(*node, Cat(path, ": a size must not be negative (got ", integer->get(), ")"));
      return std::nullopt;
    }
    return Field<uint64_t>{static_cast<uint64_t>(integer->get()), node};
  }
  if (const auto* str = node->as_string()) {
    absl::StatusOr<uint64_t> size = ParseSize(str->get());
    if (!size.ok()) {
      rep.At(*node, Cat(path, ": ", size.status().message()));
      return std::nullopt;
    }
    return Field<uint64_t>{*size, node};
  }
  WrongType(rep, *node, path, "a size (an integer or a string such as \"2MiB\")");
  return std::nullopt;
}

const toml::table* GetTable(Reporter& rep, const toml::table& table, std::string_view prefix,
                            std::string_view key) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return nullptr;
  const toml::table* sub = node->as_table();
  if (sub == nullptr) WrongType(rep, *node, JoinPath(prefix, key), "a table");
  return sub;
}

std::vector<const toml::table*> GetTableArray(Reporter& rep, const toml::table& table,
                                              std::string_view prefix, std::string_view key,
                                              std::string_view what) {
  std::vector<const toml::table*> tables;
  const std::string path = JoinPath(prefix, key);
  const toml::node* node = table.get(key);
  if (node == nullptr) {
    rep.AtTable(table, Cat(path, ": at least one ", what, " is required"));
    return tables;
  }
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    WrongType(rep, *node, path, Cat("an array of tables (", what, ")"));
    return tables;
  }
  if (array->empty()) {
    rep.At(*node, Cat(path, ": at least one ", what, " is required"));
    return tables;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    const toml::table* sub = element.as_table();
    if (sub == nullptr) WrongType(rep, element, Cat(path, "[", i, "]"), "a table");
    tables.push_back(sub);
  }
  return tables;
}

std::optional<std::string> FdNameProblem(std::string_view name) {
  if (name.empty()) return "must not be empty";
  if (name.size() > kMaxFdNameLength) {
    return Cat("must be at most ", kMaxFdNameLength, " characters");
  }
  for (char c : name) {
    if (c == ':') return "must not contain ':' (the LISTEN_FDNAMES separator)";
    if (c < 0x20 || c > 0x7e) return "must be printable ASCII";
  }
  // iopfd keeps adopted devices' descriptors in systemd's fd store under these names and takes
  // every one of them back at start (fd_store.h): a configured name there would be taken too.
  for (std::string_view reserved : kReservedFdNamePrefixes) {
    if (name.substr(0, reserved.size()) == reserved) {
      return Cat("must not begin with '", reserved, "' (iopfd's own names in systemd's fd store)");
    }
  }
  return std::nullopt;
}

std::optional<std::string> GetFdName(Reporter& rep, const toml::table& table,
                                     std::string_view prefix, std::string_view key,
                                     const toml::node** node_out, bool required) {
  auto field = GetString(rep, table, prefix, key, required);
  if (!field) return std::nullopt;
  if (auto problem = FdNameProblem(field->value)) {
    rep.At(*field->node, Cat(JoinPath(prefix, key), ": file descriptor name ", Quote(field->value),
                             " ", *problem));
    return std::nullopt;
  }
  *node_out = field->node;
  return field->value;
}

bool IsValidDeviceName(std::string_view name) {
  if (name.empty() || name.size() > kMaxDeviceNameLength) return false;
  // "." and ".." match the character set but would make surprising path components.
  if (name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

std::optional<std::string> NormalizePci(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos || colon < 4 || colon > 8) return std::nullopt;
  const std::string_view rest = text.substr(colon + 1);
  if (rest.size() != 7 || rest[2] != ':' || rest[5] != '.') return std::nullopt;
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool separator = i == colon || i == colon + 3 || i == colon + 6;
    if (separator) {
      out.push_back(c);
      continue;
    }
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
    out.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  // Device numbers are 5 bits, function numbers 3 bits.
  const int device = std::stoi(out.substr(colon + 4, 2), nullptr, 16);
  const char function = out[colon + 7];
  if (device > 0x1f || function < '0' || function > '7') return std::nullopt;
  return out;
}

// Parses TOML text; reports a syntax error and returns nullopt on failure.
std::optional<toml::table> ParseToml(std::string_view text, const std::string& file,
                                     std::vector<ConfigError>* errors) {
  // toml++ must never see text it may crash on (toml_guard.h).
  if (std::optional<TomlTextProblem> p = CheckTomlText(text)) {
    errors->push_back(
        ConfigError{SourceLocation{file, p->line, p->column}, Cat("invalid TOML: ", p->message)});
    return std::nullopt;
  }
  try {
    return toml::parse(text, std::string_view(file));
  } catch (const toml::parse_error& e) {
    errors->push_back(ConfigError{SourceLocation{file, static_cast<int>(e.source().begin.line),
                                                 static_cast<int>(e.source().begin.column)},
                                  Cat("invalid TOML: ", e.description())});
    return std::nullopt;
  }
}

}  // namespace iopfd::config_internal
