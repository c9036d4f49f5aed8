// The global file (/etc/iopfd/iopfd.toml: [daemon], [control]; docs/CONFIG.md).

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
#include "toml_reader.h"

namespace iopfd::config_internal {
namespace {

// Resolves a group name to its gid; reports an unknown group at the key.
std::optional<uint32_t> ResolveGroup(Reporter& rep, const Field<std::string>& field,
                                     std::string_view key) {
  std::vector<char> buf(16384);
  struct group grp {};
  struct group* found = nullptr;
  int rc = ::getgrnam_r(field.value.c_str(), &grp, buf.data(), buf.size(), &found);
  if (rc != 0 || found == nullptr) {
    rep.At(*field.node, Cat(key, ": no such group ", Quote(field.value),
                            rc != 0 ? Cat(" (", ErrnoName(rc), ")") : std::string()));
    return std::nullopt;
  }
  return static_cast<uint32_t>(found->gr_gid);
}

void ParseControl(Reporter& rep, const toml::table& table, ControlConfig* control) {
  const std::string_view p = "control";
  CheckKeys(rep, table, p,
            {"socket", "group", "admin_group", "max_connections", "max_connections_per_uid",
             "max_message_bytes", "message_timeout_ms", "idle_timeout_ms"});
  if (auto socket = GetString(rep, table, p, "socket", /*required=*/false)) {
    // sun_path holds 108 bytes including the NUL.
    if (socket->value.empty() || socket->value[0] != '/' || socket->value.size() > 107) {
      rep.At(*socket->node, Cat("control.socket: must be an absolute path of at most 107 bytes "
                                "(got ",
                                Quote(socket->value), ")"));
    } else {
      control->socket = socket->value;
    }
  }
  if (auto group = GetString(rep, table, p, "group", /*required=*/false)) {
    control->group = group->value;
    control->group_gid = ResolveGroup(rep, *group, "control.group");
  }
  if (auto group = GetString(rep, table, p, "admin_group", /*required=*/false)) {
    control->admin_group = group->value;
    control->admin_group_gid = ResolveGroup(rep, *group, "control.admin_group");
  }
  if (auto n = GetInt(rep, table, p, "max_connections", /*required=*/false, 1, 4096)) {
    control->max_connections = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "max_connections_per_uid", /*required=*/false, 1, 4096)) {
    control->max_connections_per_uid = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "max_message_bytes", /*required=*/false, 1024, 64 << 20)) {
    control->max_message_bytes = static_cast<uint64_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "message_timeout_ms", /*required=*/false, 100, 600000)) {
    control->message_timeout_ms = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "idle_timeout_ms", /*required=*/false, 1000, 86400000)) {
    control->idle_timeout_ms = static_cast<uint32_t>(n->value);
  }
}

// [paging]: the eviction policy and its thrash protection.
void ParsePaging(Reporter& rep, const toml::table& table, PagingConfig* paging) {
  const std::string_view p = "paging";
  CheckKeys(rep, table, p, {"policy", "thrash_window_us", "thrash_events", "thrash_protect_ms"});
  if (auto policy = GetString(rep, table, p, "policy", /*required=*/false)) {
    if (auto v = ValueNamed(kEvictionPolicyNames, policy->value)) {
      paging->policy = *v;
    } else {
      rep.At(*policy->node, Cat("paging.policy: must be ", NamesForMessage(kEvictionPolicyNames),
                                " (got ", Quote(policy->value), ")"));
    }
  }
  if (auto n = GetInt(rep, table, p, "thrash_window_us", /*required=*/false, 0, 10'000'000)) {
    paging->thrash_window_us = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "thrash_events", /*required=*/false, 1, 255)) {
    paging->thrash_events = static_cast<uint32_t>(n->value);
  }
  if (auto n = GetInt(rep, table, p, "thrash_protect_ms", /*required=*/false, 0, 600'000)) {
    paging->thrash_protect_ms = static_cast<uint32_t>(n->value);
  }
}

// [daemon]: the loop's sizes, where device files are, the log level, the daemon's budget.
void ParseDaemon(Reporter& rep, const toml::table& daemon, GlobalConfig* global) {
  const std::string_view p = "daemon";
  CheckKeys(rep, daemon, p,
            {"log_level", "devices_dir", "ring_entries", "read_records", "max_read_records",
             "max_resident"});
  if (auto budget = GetSize(rep, daemon, p, "max_resident", /*required=*/false)) {
    // At least one page; against the devices' map units it is checked by LoadConfig.
    if (budget->value < 4096) {
      rep.At(*budget->node,
             Cat("daemon.max_resident: must be at least 4096 bytes (got ", budget->value, ")"));
    } else {
      global->paging.max_resident = budget->value;
      global->paging.max_resident_where = rep.Where(*budget->node);
    }
  }
  if (auto level = GetString(rep, daemon, p, "log_level", /*required=*/false)) {
    if (auto l = ValueNamed(kLogLevelNames, level->value)) {
      global->log_level = *l;
    } else {
      rep.At(*level->node, Cat("daemon.log_level: must be ", NamesForMessage(kLogLevelNames),
                               " (got ", Quote(level->value), ")"));
    }
  }
  if (auto dir = GetString(rep, daemon, p, "devices_dir", /*required=*/false)) {
    if (dir->value.empty() || dir->value[0] != '/') {
      rep.At(*dir->node,
             Cat("daemon.devices_dir: must be an absolute path (got ", Quote(dir->value), ")"));
    } else {
      global->devices_dir = dir->value;
    }
  }
  if (auto ring = GetInt(rep, daemon, p, "ring_entries", /*required=*/false, 8, 32768)) {
    if ((ring->value & (ring->value - 1)) != 0) {
      rep.At(*ring->node,
             Cat("daemon.ring_entries: must be a power of two (got ", ring->value, ")"));
    } else {
      global->ring_entries = static_cast<uint32_t>(ring->value);
    }
  }
  constexpr int64_t kMaxRecords = 1 << 20;
  const auto max_records =
      GetInt(rep, daemon, p, "max_read_records", /*required=*/false, 1, kMaxRecords);
  if (max_records) global->max_read_records = static_cast<uint32_t>(max_records->value);
  const auto records = GetInt(rep, daemon, p, "read_records", /*required=*/false, 1, kMaxRecords);
  if (records) global->read_records = static_cast<uint32_t>(records->value);
  if (global->read_records > global->max_read_records) {
    // Blame read_records when it was given, else the max that undercuts its default.
    const toml::node* node = records ? records->node : max_records->node;
    rep.At(*node,
           Cat("daemon.read_records (", global->read_records,
               ") must not exceed daemon.max_read_records (", global->max_read_records, ")"));
  }
}

}  // namespace

void ParseGlobal(std::string_view text, const std::string& file, GlobalConfig* global,
                 std::vector<ConfigError>* errors) {
  const size_t first_error = errors->size();
  std::optional<toml::table> root = ParseToml(text, file, errors);
  if (!root) return;
  Reporter rep(file, &*root, errors);
  CheckKeys(rep, *root, "", {"daemon", "control", "paging"});
  if (const toml::table* paging = GetTable(rep, *root, "", "paging")) {
    ParsePaging(rep, *paging, &global->paging);
  }
  if (const toml::table* control = GetTable(rep, *root, "", "control")) {
    ParseControl(rep, *control, &global->control);
  }
  if (const toml::table* daemon = GetTable(rep, *root, "", "daemon")) {
    ParseDaemon(rep, *daemon, global);
  }
  SortErrorsFrom(errors, first_error);
}

}  // namespace iopfd::config_internal
