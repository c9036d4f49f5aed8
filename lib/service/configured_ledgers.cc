#include "iopfd/service/configured_ledgers.h"

#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "iopfd/base/errors.h"
#include "iopfd/base/syscalls.h"
#include "iopfd/service/log.h"

namespace iopfd {

absl::StatusOr<bool> SameOpenFile(int a, int b) {
  const pid_t self = getpid();
  // 0: the same struct file; 1 or 2: an order between two different ones.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): the syscall has no libc wrapper
  const long rc = syscall(SYS_kcmp, self, self, KCMP_FILE, a, b);
  if (rc >= 0) return rc == 0;
  const int err = errno;
  if (err == ENOSYS || err == EPERM) {
    return absl::UnimplementedError(
        absl::StrCat("kcmp: ", std::string(ErrnoName(err)),
                     " (the kernel cannot say whether two descriptors are one file)"));
  }
  return ErrnoStatus(err, "", "kcmp");
}

void ConfiguredLedgers::TakeStored(ListenFds* inherited, std::vector<std::string>* problems) {
  for (FdStore::StoredLedger& s : store_->TakeLedgers(inherited, problems)) {
    std::string name = s.device;
    stored_.insert_or_assign(std::move(name), std::move(s));
  }
}

absl::StatusOr<InflightLedger::Answered> ConfiguredLedgers::AnswerOnStoredQueue(
    FdStore::StoredLedger& stored) {
  auto ledger = InflightLedger::Open(stored.device, std::move(stored.ledger));
  if (!ledger.ok()) return ledger.status();
  return (*ledger)->AnswerAllLeftovers(stored.device, stored.fault.get(), RealSyscalls());
}

std::unique_ptr<InflightLedger> ConfiguredLedgers::TakeBack(
    FdStore::StoredLedger stored, int fault_fd, InflightLedger::Answered* answered_elsewhere) {
  const std::string name = stored.device;
  absl::StatusOr<bool> same = SameOpenFile(stored.fault.get(), fault_fd);
  if (same.ok() && *same) {
    auto ledger = InflightLedger::Open(name, std::move(stored.ledger));
    if (ledger.ok()) {
      // The store's entries stay as they are: the same ledger, the same queue.
      kept_.insert(name);
      return *std::move(ledger);
    }
    Log(LogLevel::kError,
        absl::StrCat(ledger.status().message(), "; what a crash left unanswered stays unanswered"),
        {{"DEVICE", name}});
    store_->ForgetLedger(name);
    return nullptr;
  }
  // Another queue (the owner handed over a new one), or no way to tell: the groups the ledger
  // recorded came from the stored queue, so they are answered there, and nothing of them can
  // meet this queue's cookies.
  auto answered = AnswerOnStoredQueue(stored);
  store_->ForgetLedger(name);
  if (!answered.ok()) {
    Log(LogLevel::kError, std::string(answered.status().message()), {{"DEVICE", name}});
    return nullptr;
  }
  answered_elsewhere->accepted += answered->accepted;
  answered_elsewhere->rejected += answered->rejected;
  answered_elsewhere->groups += answered->groups;
  if (answered->accepted + answered->rejected != 0) {
    Log(LogLevel::kWarning,
        absl::StrCat(name,
                     ": the previous iopfd died owing answers on the fault queue it had then (",
                     same.ok() ? std::string("the device came back on another")
                               : absl::StrCat("whether the device came back on it is unknown: ",
                                              same.status().message()),
                     "): ", answered->accepted, " answered there now (", answered->groups,
                     " unresolved group(s) INVALID), ", answered->rejected,
                     " had reached the kernel already"),
        {{"DEVICE", name}});
  }
  return nullptr;
}

std::unique_ptr<InflightLedger> ConfiguredLedgers::For(
    const std::string& name, int fault_fd, InflightLedger::Answered* answered_elsewhere) {
  if (auto it = stored_.find(name); it != stored_.end()) {
    FdStore::StoredLedger stored = std::move(it->second);
    stored_.erase(it);
    std::unique_ptr<InflightLedger> same_queue =
        TakeBack(std::move(stored), fault_fd, answered_elsewhere);
    if (same_queue != nullptr) return same_queue;
  }
  if (!store_->enabled()) return nullptr;
  auto ledger = InflightLedger::Create(name, capacity_);
  if (!ledger.ok()) {
    Log(LogLevel::kWarning,
        absl::StrCat(ledger.status().message(), "; a crash would leave what it read unanswered"),
        {{"DEVICE", name}});
    return nullptr;
  }
  // Stored before the device's first read: a crash from then on finds it.
  absl::Status st = store_->KeepLedger(name, (*ledger)->fd(), fault_fd);
  if (!st.ok()) {
    Log(LogLevel::kWarning, std::string(st.message()), {{"DEVICE", name}});
    return nullptr;
  }
  kept_.insert(name);
  return *std::move(ledger);
}

void ConfiguredLedgers::Forget(const std::string& device) {
  if (kept_.erase(device) != 0) store_->ForgetLedger(device);
}

std::vector<std::string> ConfiguredLedgers::SettleUnclaimed() {
  std::vector<std::string> names;
  for (auto& [name, s] : stored_) {
    // Its device file is gone or no longer adopt mode, or its attach failed: nobody serves that
    // queue now, so what the dead process owed on it is answered before the entries go.
    auto answered = AnswerOnStoredQueue(s);
    if (!answered.ok()) {
      Log(LogLevel::kError, std::string(answered.status().message()), {{"DEVICE", name}});
    } else {
      Log(answered->accepted + answered->rejected != 0 ? LogLevel::kWarning : LogLevel::kInfo,
          absl::StrCat(name,
                       ": its in-flight ledger came back from the fd store but the device "
                       "is not served; answered ",
                       answered->accepted, " (", answered->groups, " group(s) INVALID, ",
                       answered->rejected, " had been answered) on its fault queue, removed"),
          {{"DEVICE", name}});
    }
    store_->ForgetLedger(name);
    names.push_back(name);
  }
  stored_.clear();
  return names;
}

void ConfiguredLedgers::ForgetAll() {
  for (const std::string& name : kept_) store_->ForgetLedger(name);
  kept_.clear();
}

}  // namespace iopfd
