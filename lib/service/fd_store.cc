#include "iopfd/service/fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/json.h"
#include "iopfd/service/log.h"
#include "nlohmann/json.hpp"

namespace iopfd {
namespace {

using nlohmann::json;

// A record larger than this is not ours (a device file is limited to far less by Adopt's
// message size).
constexpr off_t kMaxRecordBytes = 1 << 20;

std::string RecordName(const std::string& device) { return kFdStorePrefix + device; }
std::string FdName(const std::string& device, size_t i) {
  return absl::StrCat(kFdStorePrefix, device, "/fd", i);
}

// The index in a descriptor's name "fd<i>" as Keep writes it: decimal without sign, spaces or
// leading zeros, below the most descriptors one Adopt call can carry. nullopt for anything else,
// so that a name cannot alias another or claim a huge index.
std::optional<size_t> ParseFdIndex(std::string_view part) {
  constexpr size_t kMaxIndex = 1024;
  if (part.size() < 3 || part.substr(0, 2) != "fd" || part.size() > 6) return std::nullopt;
  std::string_view digits = part.substr(2);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  size_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<size_t>(c - '0');
  }
  if (v >= kMaxIndex) return std::nullopt;
  return v;
}

// Writes the record into a sealed memfd: nobody, systemd included, can change it afterwards.
absl::StatusOr<UniqueFd> MakeRecord(const std::string& text) {
  UniqueFd fd(memfd_create("iopfd-adopted", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus(errno, "", "memfd_create");
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus(n < 0 ? errno : EIO, "the record memfd", "write");
    done += static_cast<size_t>(n);
  }
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg)
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
    return ErrnoStatus(errno, "the record memfd", "F_ADD_SEALS");
  }
  return fd;
}

// Reads a record back; nullopt with *why set when it is not one.
std::optional<json> ReadRecord(int fd, std::string* why) {
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < 0 || size > kMaxRecordBytes) {
    *why = size < 0 ? "not a file" : "larger than 1 MiB";
    return std::nullopt;
  }
  std::string text(static_cast<size_t>(size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *why = n < 0 ? absl::StrCat("read: ", std::string(ErrnoName(errno))) : "shorter than it said";
      return std::nullopt;
    }
    done += static_cast<size_t>(n);
  }
  // The record is what a previous process wrote, but the file is whatever systemd handed back
  // under that name: read it as hostile (bounded depth, every field's type checked before use).
  absl::StatusOr<json> parsed = ParseJson(text);
  if (!parsed.ok()) {
    *why = absl::StrCat("not a record: ", parsed.status().message());
    return std::nullopt;
  }
  json& j = *parsed;
  uint64_t version = 0;
  if (!j.is_object() || !j.contains("version") || !GetUnsigned(j["version"], 1, &version) ||
      version != 1 || !j.contains("config") || !j["config"].is_string() || !j.contains("fds") ||
      !j["fds"].is_array()) {
    *why = "not a version 1 record {version, config, fds}";
    return std::nullopt;
  }
  for (const json& n : j["fds"]) {
    if (!n.is_string()) {
      *why = "fds: not a list of names";
      return std::nullopt;
    }
  }
  return j;
}

// One device's entries in the store as they came back at start: the record, the descriptors
// by index, and every name seen (the names to remove if the device cannot be taken back).
struct StoredEntries {
  std::optional<UniqueFd> record;
  std::map<size_t, UniqueFd> fds;
  std::vector<std::string> names;
  size_t entries = 0;
  size_t order = 0;
  std::string poisoned;  // why the entries cannot be trusted, if they cannot
};

// Takes every entry under kFdStorePrefix out of `inherited` and groups them by device, in the
// order their records came; names that are no entry iopfd makes go to *strays (closed).
std::map<std::string, StoredEntries> GroupStoredEntries(ListenFds* inherited,
                                                        std::vector<std::string>* strays) {
  std::map<std::string, StoredEntries> by_device;
  const std::string prefix = kFdStorePrefix;
  size_t order = 0;
  for (const std::string& name : inherited->Untaken()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    auto fd = inherited->Take(name);
    if (!fd.ok()) continue;
    std::string rest = name.substr(prefix.size());
    size_t slash = rest.find('/');
    std::optional<size_t> index;
    if (slash != std::string::npos) index = ParseFdIndex(std::string_view(rest).substr(slash + 1));
    if (slash == std::string::npos && !rest.empty()) {
      StoredEntries& e = by_device[rest];
      if (e.record.has_value()) {
        e.poisoned = "two records under one name";  // which one is iopfd's is unknowable
      } else {
        e.record = std::move(*fd);
        e.order = order++;
      }
      ++e.entries;
      if (std::find(e.names.begin(), e.names.end(), name) == e.names.end()) {
        e.names.insert(e.names.begin(), name);  // the record is removed first
      }
    } else if (slash != std::string::npos && slash > 0 && index.has_value()) {
      StoredEntries& e = by_device[rest.substr(0, slash)];
      if (!e.fds.emplace(*index, std::move(*fd)).second) {
        e.poisoned = absl::StrCat("two descriptors named '", name, "'");
      }
      ++e.entries;
      if (std::find(e.names.begin(), e.names.end(), name) == e.names.end()) e.names.push_back(name);
    } else {
      strays->push_back(name);
    }
  }
  return by_device;
}

}  // namespace

FdStore FdStore::FromEnvironment() {
  size_t max = 0;
  const char* max_env = std::getenv("FDSTORE");           // NOLINT(concurrency-mt-unsafe): startup
  const char* socket_env = std::getenv("NOTIFY_SOCKET");  // NOLINT(concurrency-mt-unsafe)
  if (max_env != nullptr && socket_env != nullptr && *socket_env != '\0') {
    uint64_t v = 0;
    if (absl::SimpleAtoi(max_env, &v)) max = static_cast<size_t>(v);
  }
  // Not for whatever iopfd starts.
  unsetenv("FDSTORE");  // NOLINT(concurrency-mt-unsafe)
  return FdStore(
      [](const std::string& m, std::span<const int> fds) {
        return sd_pid_notify_with_fds(0, 0, m.c_str(), fds.data(),
                                      static_cast<unsigned>(fds.size()));
      },
      max);
}

FdStore::FdStore(Sender send, size_t max) : send_(std::move(send)), max_(max) {}

std::string FdStore::Describe() const {
  if (enabled()) {
    return absl::StrCat(
        "fd store: adopted devices and configured adopt-mode devices' in-flight ledgers are kept "
        "across restarts (room for ",
        max_, " descriptors)");
  }
  return "fd store: not enabled (FileDescriptorStoreMax= on systemd 254 or later): a restart "
         "hands adopted devices back to their owners";
}

absl::Status FdStore::Keep(const std::string& device, const std::string& config_text,
                           const std::vector<std::pair<std::string, int>>& fds) {
  if (!enabled()) return absl::OkStatus();
  const size_t entries = fds.size() + 1;
  if (kept_ + entries > max_) {
    return absl::ResourceExhaustedError(
        absl::StrCat(device, ": not kept in the fd store (", kept_, " of ", max_, " entries used, ",
                     entries, " needed; raise FileDescriptorStoreMax=): a restart hands it back"));
  }
  json record = {{"version", 1}, {"config", config_text}, {"fds", json::array()}};
  for (const auto& f : fds) record["fds"].push_back(f.first);
  auto memfd = MakeRecord(record.dump());
  if (!memfd.ok()) {
    return absl::InternalError(
        absl::StrCat(device, ": not kept in the fd store: ", memfd.status().message()));
  }
  // FDPOLL=0: systemd must not drop an entry on its own; iopfd says when (Forget).
  size_t sent = 0;
  int rc = 1;
  for (; sent < fds.size() && rc > 0; ++sent) {
    const int fd = fds[sent].second;
    rc = send_(absl::StrCat("FDSTORE=1\nFDPOLL=0\nFDNAME=", FdName(device, sent)), {&fd, 1});
  }
  if (rc > 0) {
    const int fd = memfd->get();
    rc = send_(absl::StrCat("FDSTORE=1\nFDPOLL=0\nFDNAME=", RecordName(device)), {&fd, 1});
  }
  std::vector<std::string> names{RecordName(device)};
  for (size_t i = 0; i < fds.size(); ++i) names.push_back(FdName(device, i));
  devices_.emplace_back(device, Held{std::move(names), entries});
  kept_ += entries;
  if (rc <= 0) {
    Forget(device);
    return absl::InternalError(
        absl::StrCat(device, ": not kept in the fd store: ",
                     rc == 0 ? std::string("no service manager") : std::string(ErrnoName(-rc))));
  }
  return absl::OkStatus();
}

void FdStore::Forget(const std::string& device) {
  auto it = std::find_if(devices_.begin(), devices_.end(),
                         [&](const auto& d) { return d.first == device; });
  if (it == devices_.end()) return;
  const Held held = std::move(it->second);
  devices_.erase(it);
  Remove(device, held);
}

void FdStore::Remove(const std::string& device, const Held& held) {
  kept_ -= held.entries;
  // Every entry of one name goes with one message, and only names that exist are named (never
  // a count derived from what the store held, which may be anything). The first name first: a
  // record before its descriptors, a ledger before its fault queue, so that a stop in between
  // leaves descriptors that make up nothing (removed at the next start), never the reverse.
  for (const std::string& n : held.names) {
    int rc = send_("FDSTOREREMOVE=1\nFDNAME=" + n, {});
    if (rc < 0) {
      Log(LogLevel::kWarning,
          absl::StrCat("fd store: removing ", n, ": ", std::string(ErrnoName(-rc))),
          {{"DEVICE", device}});
    }
  }
}

// The two kinds of paired entries a configured adopt-mode device gets: the main file (stored
// last, removed first) and the descriptor it belongs to.
const FdStore::PairKind FdStore::kLedgerPair = {kLedgerStorePrefix, "/fault", "in-flight ledger",
                                                "a crash would leave what it read unanswered",
                                                /*partner_optional=*/false};
// A map record stands alone after a clean stop (ConfiguredMaps::SettleAtStop).
const FdStore::PairKind FdStore::kMapsPair = {
    kMapsStorePrefix, "/iommufd", "map record",
    "after a restart what it mapped is served as someone else's, outside the budgets",
    /*partner_optional=*/true};

absl::Status FdStore::KeepPair(const PairKind& kind, const std::string& device, int main_fd,
                               int partner_fd) {
  if (!enabled()) return absl::OkStatus();
  ForgetPair(kind, device);
  const size_t entries = partner_fd >= 0 ? 2 : 1;
  if (kept_ + entries > max_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        device, ": ", kind.what, " not kept in the fd store (", kept_, " of ", max_,
        " entries used, ", entries, " needed; raise FileDescriptorStoreMax=): ", kind.without));
  }
  // The partner first: a main entry that came back always finds it.
  const std::string main_name = kind.prefix + device;
  const std::string partner_name = main_name + kind.partner_suffix;
  int rc = 1;
  if (partner_fd >= 0) rc = send_("FDSTORE=1\nFDPOLL=0\nFDNAME=" + partner_name, {&partner_fd, 1});
  if (rc > 0) rc = send_("FDSTORE=1\nFDPOLL=0\nFDNAME=" + main_name, {&main_fd, 1});
  std::vector<std::string> names{main_name};
  if (partner_fd >= 0) names.push_back(partner_name);
  PairsOf(kind).emplace_back(device, Held{std::move(names), entries});
  kept_ += entries;
  if (rc <= 0) {
    ForgetPair(kind, device);
    return absl::InternalError(
        absl::StrCat(device, ": ", kind.what, " not kept in the fd store: ",
                     rc == 0 ? std::string("no service manager") : std::string(ErrnoName(-rc))));
  }
  return absl::OkStatus();
}

void FdStore::ForgetPair(const PairKind& kind, const std::string& device) {
  auto& pairs = PairsOf(kind);
  auto it =
      std::find_if(pairs.begin(), pairs.end(), [&](const auto& d) { return d.first == device; });
  if (it == pairs.end()) return;
  const Held held = std::move(it->second);
  pairs.erase(it);
  Remove(device, held);
}

// Longer than 60 lines: grouping the entries by device, with each way a pair can be broken
// named, reads best as one pass.
std::vector<FdStore::StoredPair> FdStore::TakePairs(const PairKind& kind, ListenFds* inherited,
                                                    std::vector<std::string>* problems) {
  struct Found {
    std::optional<UniqueFd> main, partner;
    std::vector<std::string> names;
    size_t entries = 0;
    std::string poisoned;
  };
  std::map<std::string, Found> by_device;
  const std::string prefix = kind.prefix;
  const std::string suffix = kind.partner_suffix;
  for (const std::string& name : inherited->Untaken()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    auto fd = inherited->Take(name);
    if (!fd.ok()) continue;
    std::string rest = name.substr(prefix.size());
    const bool is_partner = rest.size() > suffix.size() &&
                            rest.compare(rest.size() - suffix.size(), suffix.size(), suffix) == 0;
    const std::string device = is_partner ? rest.substr(0, rest.size() - suffix.size()) : rest;
    if (device.empty() || device.find('/') != std::string::npos) {
      problems->push_back(
          absl::StrCat("fd store: '", name, "' is not an entry iopfd makes; closed"));
      (void)send_("FDSTOREREMOVE=1\nFDNAME=" + name, {});
      continue;
    }
    Found& f = by_device[device];
    std::optional<UniqueFd>& slot = is_partner ? f.partner : f.main;
    if (slot.has_value()) {
      f.poisoned = absl::StrCat("two entries named '", name, "'");
    } else {
      slot = std::move(*fd);
    }
    ++f.entries;
    if (std::find(f.names.begin(), f.names.end(), name) == f.names.end()) {
      // The main entry is removed first (KeepPair stores it last).
      if (is_partner) {
        f.names.push_back(name);
      } else {
        f.names.insert(f.names.begin(), name);
      }
    }
  }
  std::vector<StoredPair> out;
  for (auto& [device, f] : by_device) {
    PairsOf(kind).emplace_back(device, Held{f.names, f.entries});
    kept_ += f.entries;
    std::string why = f.poisoned;
    if (why.empty() && !f.main.has_value()) {
      why = absl::StrCat("its '", suffix.substr(1), "' entry came back without the ", kind.what);
    }
    if (why.empty() && !f.partner.has_value() && !kind.partner_optional) {
      why =
          absl::StrCat("the ", kind.what, " came back without its '", suffix.substr(1), "' entry");
    }
    if (!why.empty()) {
      problems->push_back(absl::StrCat("fd store: the ", kind.what, " of '", device,
                                       "' cannot be used: ", why, "; removed"));
      ForgetPair(kind, device);
      continue;
    }
    out.push_back({device, std::move(*f.main), f.partner ? std::move(*f.partner) : UniqueFd()});
  }
  return out;
}

absl::Status FdStore::KeepLedger(const std::string& device, int ledger_fd, int fault_fd) {
  return KeepPair(kLedgerPair, device, ledger_fd, fault_fd);
}

void FdStore::ForgetLedger(const std::string& device) { ForgetPair(kLedgerPair, device); }

std::vector<FdStore::StoredLedger> FdStore::TakeLedgers(ListenFds* inherited,
                                                        std::vector<std::string>* problems) {
  std::vector<StoredLedger> out;
  for (StoredPair& p : TakePairs(kLedgerPair, inherited, problems)) {
    out.push_back({std::move(p.device), std::move(p.main), std::move(p.partner)});
  }
  return out;
}

absl::Status FdStore::KeepMapRecord(const std::string& device, int record_fd, int iommufd) {
  return KeepPair(kMapsPair, device, record_fd, iommufd);
}

void FdStore::ForgetMapRecord(const std::string& device) { ForgetPair(kMapsPair, device); }

std::vector<FdStore::StoredPair> FdStore::TakeMapRecords(ListenFds* inherited,
                                                         std::vector<std::string>* problems) {
  return TakePairs(kMapsPair, inherited, problems);
}

std::vector<FdStore::Stored> FdStore::TakeStored(ListenFds* inherited,
                                                 std::vector<std::string>* problems) {
  std::vector<Stored> out;
  std::vector<std::string> strays;
  std::map<std::string, StoredEntries> by_device = GroupStoredEntries(inherited, &strays);
  for (const std::string& name : strays) {
    problems->push_back(absl::StrCat("fd store: '", name, "' is not an entry iopfd makes; closed"));
    (void)send_("FDSTOREREMOVE=1\nFDNAME=" + name, {});
  }
  std::vector<std::pair<size_t, Stored>> ordered;
  for (auto& [device, e] : by_device) {
    const size_t n_fds = e.fds.empty() ? 0 : e.fds.rbegin()->first + 1;
    std::string why;
    std::optional<json> record;
    if (!e.record.has_value()) {
      why = "descriptors without a record (iopfd stopped while storing or forgetting them)";
    } else if (!e.poisoned.empty()) {
      why = e.poisoned;
    } else if (record = ReadRecord(e.record->get(), &why); record.has_value()) {
      if ((*record)["fds"].size() != e.fds.size() || n_fds != e.fds.size()) {
        why = absl::StrCat("the record names ", (*record)["fds"].size(), " descriptors, ",
                           e.fds.size(), " came back");
        record.reset();
      }
    }
    // Counted as kept either way: Forget removes every entry systemd holds for it.
    devices_.emplace_back(device, Held{e.names, e.entries});
    kept_ += e.entries;
    if (!record.has_value()) {
      problems->push_back(absl::StrCat("fd store: adopted device '", device,
                                       "' cannot be taken back: ", why, "; removed"));
      Forget(device);
      continue;
    }
    Stored s{device, (*record)["config"].get<std::string>(), ListenFds()};
    size_t i = 0;
    for (const json& n : (*record)["fds"]) s.fds.Add(n.get<std::string>(), std::move(e.fds[i++]));
    ordered.emplace_back(e.order, std::move(s));
  }
  std::sort(ordered.begin(), ordered.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  out.reserve(ordered.size());
  for (auto& [o, s] : ordered) out.push_back(std::move(s));
  return out;
}

}  // namespace iopfd
