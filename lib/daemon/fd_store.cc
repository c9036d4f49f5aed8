#include "iopfd/fd_store.h"

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
#include "iopfd/errors.h"
#include "iopfd/log.h"
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
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("version", 0) != 1 || !j.contains("config") ||
      !j["config"].is_string() || !j.contains("fds") || !j["fds"].is_array()) {
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
    return absl::StrCat("fd store: adopted devices are kept across restarts (room for ", max_,
                        " descriptors)");
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
  devices_.emplace_back(device, entries);
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
  const size_t entries = it->second;
  kept_ -= entries;
  devices_.erase(it);
  // Every entry of one name goes with one message; the record first, so that a stop in between
  // leaves descriptors without a record (removed at the next start), never the reverse.
  std::vector<std::string> names{RecordName(device)};
  for (size_t i = 0; i + 1 < entries; ++i) names.push_back(FdName(device, i));
  for (const std::string& n : names) {
    int rc = send_("FDSTOREREMOVE=1\nFDNAME=" + n, {});
    if (rc < 0) {
      Log(LogLevel::kWarning,
          absl::StrCat("fd store: removing ", n, ": ", std::string(ErrnoName(-rc))),
          {{"DEVICE", device}});
    }
  }
}

std::vector<FdStore::Stored> FdStore::TakeStored(ListenFds* inherited,
                                                 std::vector<std::string>* problems) {
  std::vector<Stored> out;
  // Group the entries by device: the record, and descriptors by index.
  struct Entries {
    std::optional<UniqueFd> record;
    std::map<size_t, UniqueFd> fds;
    size_t order = 0;
  };
  std::map<std::string, Entries> by_device;
  const std::string prefix = kFdStorePrefix;
  size_t order = 0;
  for (const std::string& name : inherited->Untaken()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    auto fd = inherited->Take(name);
    if (!fd.ok()) continue;
    std::string rest = name.substr(prefix.size());
    size_t slash = rest.find('/');
    size_t index = 0;
    if (slash == std::string::npos) {
      Entries& e = by_device[rest];
      e.record = std::move(*fd);
      e.order = order++;
    } else if (rest.compare(slash + 1, 2, "fd") == 0 &&
               absl::SimpleAtoi(rest.substr(slash + 3), &index)) {
      by_device[rest.substr(0, slash)].fds[index] = std::move(*fd);
    } else {
      problems->push_back(
          absl::StrCat("fd store: '", name, "' is not an entry iopfd makes; closed"));
      (void)send_("FDSTOREREMOVE=1\nFDNAME=" + name, {});
    }
  }
  std::vector<std::pair<size_t, Stored>> ordered;
  for (auto& [device, e] : by_device) {
    const size_t n_fds = e.fds.empty() ? 0 : e.fds.rbegin()->first + 1;
    std::string why;
    std::optional<json> record;
    if (!e.record.has_value()) {
      why = "descriptors without a record (iopfd stopped while storing or forgetting them)";
    } else if (record = ReadRecord(e.record->get(), &why); record.has_value()) {
      if ((*record)["fds"].size() != e.fds.size() || n_fds != e.fds.size()) {
        why = absl::StrCat("the record names ", (*record)["fds"].size(), " descriptors, ",
                           e.fds.size(), " came back");
        record.reset();
      }
    }
    // Counted as kept either way: Forget removes every entry systemd holds for it.
    devices_.emplace_back(device, n_fds + 1);
    kept_ += n_fds + 1;
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
