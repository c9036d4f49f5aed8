// Adopted devices survive a restart of iopfd through systemd's file descriptor store
// (sd_pid_notify_with_fds(3), FDSTORE=1): the descriptors a VMM handed over with Adopt are kept
// by the service manager while iopfd is down and come back at the next start in LISTEN_FDS, so
// iopfd continues on the same fault queues. Page requests that arrive meanwhile wait in the
// kernel's queue and are read after the restart; the clean stop before answered everything
// read. Without this a restart would close iopfd's copies and the VMM would have to adopt
// again, with nobody reading its queue in between.
//
// What is stored for an adopted device named D (FileDescriptorStoreMax= must leave room: one
// entry per descriptor, plus one):
//   iopfd-adopted/D/fd<i>  the i-th descriptor of the Adopt call (iommufd, fault queue, ...)
//   iopfd-adopted/D        a sealed memfd with the call itself: {"version": 1, "config": the
//                          device file text, "fds": the names the config gives the fds}
// Among the descriptors, under the name kLedgerFdName in the record's "fds", the device's
// in-flight ledger (inflight_ledger.h), with which the next process answers what a crashed one
// read and did not answer, and under kMapRecordFdName its map record (map_record.h), with which
// the next process takes back what this one held mapped in the owner's IOAS. The record goes last,
// so a record always finds its descriptors; descriptors without a record (iopfd stopped between the
// two) are removed at the next start.
//
// A device attached from a device file in adopt mode gets its descriptors from LISTEN_FDS at
// every start (whoever launches iopfd hands them over), but what a crash leaves unanswered on
// its fault queue needs a ledger too (configured_ledgers.h). What is stored for it:
//   iopfd-ledger/D         its in-flight ledger
//   iopfd-ledger/D/fault   the fault queue the ledger recorded reads of (a copy, so that what
//                          it owes is answered on that queue even if D comes back on another)
//   iopfd-maps/D           its map record (map_record.h): which units iopfd holds mapped
//   iopfd-maps/D/iommufd   the iommufd whose IOAS those mappings are in (a copy, so that they
//                          are unmapped there if D comes back on another)
#ifndef IOPFD_SERVICE_FD_STORE_H_
#define IOPFD_SERVICE_FD_STORE_H_

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "iopfd/service/listen_fds.h"

namespace iopfd {

// The prefix of every name iopfd stores; device files may not use it (config.cc).
inline constexpr char kFdStorePrefix[] = "iopfd-adopted/";
// The in-flight ledger's name among an adopted device's stored descriptors (the reserved prefix:
// no device file can give a descriptor this name).
inline constexpr char kLedgerFdName[] = "iopfd-adopted/ledger";
// The prefix of a configured adopt-mode device's ledger entries; device files may not use it.
inline constexpr char kLedgerStorePrefix[] = "iopfd-ledger/";
// The prefix of a configured adopt-mode device's map record entries; device files may not use
// it.
inline constexpr char kMapsStorePrefix[] = "iopfd-maps/";

// Not thread-safe: used from the fault loop's thread.
class FdStore {
 public:
  // Sends one notification with descriptors attached (SCM_RIGHTS): > 0 sent, 0 no service
  // manager, negative errno otherwise (sd_pid_notify_with_fds's convention).
  using Sender = std::function<int(const std::string& message, std::span<const int> fds)>;

  // Enabled when systemd said how many descriptors it keeps for iopfd: $FDSTORE, which
  // systemd 254 and later set to FileDescriptorStoreMax= (unset when that is 0), and a
  // NOTIFY_SOCKET to send them on. Otherwise every call does nothing.
  static FdStore FromEnvironment();
  // For tests: `send` instead of sd_pid_notify_with_fds, room for `max` descriptors.
  FdStore(Sender send, size_t max);

  // Returns true when descriptors are kept across restarts.
  bool enabled() const { return max_ > 0; }
  // Returns a sentence for the start-up log saying whether adopted devices survive a restart.
  std::string Describe() const;

  // Keeps a device adopted at run time: its descriptors (name in its config, descriptor) and
  // the config text, so that the next start adopts it again. Returns OK when stored or when the
  // store is disabled; ResourceExhausted when the entries would exceed FileDescriptorStoreMax=
  // (nothing is stored: a restart hands the device back); Internal when sending failed (what
  // was sent is removed again). The device is served either way.
  absl::Status Keep(const std::string& device, const std::string& config_text,
                    const std::vector<std::pair<std::string, int>>& fds);
  // Removes what Keep stored for the device (FDSTOREREMOVE=1): it was detached, removed or its
  // fault queue failed, so the next start must not adopt it again.
  void Forget(const std::string& device);

  // An adoption to replay at start: the config text and the descriptors under the names it
  // gives them.
  struct Stored {
    std::string device;
    std::string config_text;
    ListenFds fds;
  };
  // Takes every stored entry out of `inherited` (LISTEN_FDS at start) and returns the
  // adoptions they make up, oldest first. Entries that make up none (a record that cannot be
  // read or names a descriptor that is missing, descriptors without a record) are closed and
  // removed from the store; each is described in *problems, naming the entry.
  std::vector<Stored> TakeStored(ListenFds* inherited, std::vector<std::string>* problems);

  // Keeps a configured device's in-flight ledger and the fault queue it records reads of (two
  // entries), replacing what was kept for the device before. Returns OK when stored or when
  // the store is disabled; ResourceExhausted when there is no room for two more entries;
  // Internal when sending failed (what was sent is removed again). Nothing stored means a
  // crash leaves what was read unanswered; the device is served either way.
  absl::Status KeepLedger(const std::string& device, int ledger_fd, int fault_fd);
  // Removes what KeepLedger stored for the device (or what came back at start for it).
  void ForgetLedger(const std::string& device);

  // A configured device's ledger as it came back at start.
  struct StoredLedger {
    std::string device;
    UniqueFd ledger;
    UniqueFd fault;
  };
  // Takes every ledger entry (kLedgerStorePrefix) out of `inherited` and returns the ledgers
  // they make up, by device name. Entries that make up none (one of the two missing, a name
  // twice, a name iopfd does not make) are closed and removed from the store; each is described
  // in *problems, naming the entry. The returned ones stay kept until ForgetLedger.
  std::vector<StoredLedger> TakeLedgers(ListenFds* inherited, std::vector<std::string>* problems);

  // Keeps a configured device's map record (map_record.h) and the iommufd whose IOAS it records
  // mappings in (two entries: iopfd-maps/D and iopfd-maps/D/iommufd; with iommufd -1 the record
  // alone, as a clean stop leaves it), replacing what was kept for the device before. Returns
  // as KeepLedger does; nothing stored means that after a restart what iopfd mapped for the
  // device is served as someone else's.
  absl::Status KeepMapRecord(const std::string& device, int record_fd, int iommufd);
  // Removes what KeepMapRecord stored for the device (or what came back at start for it).
  void ForgetMapRecord(const std::string& device);
  // A configured device's pair of entries as it came back at start: the main file (ledger or
  // map record) and the descriptor it belongs to (fault queue or iommufd; a map record may come
  // back alone, partner invalid).
  struct StoredPair {
    std::string device;
    UniqueFd main;
    UniqueFd partner;
  };
  // Takes every map record entry (kMapsStorePrefix) out of `inherited`, as TakeLedgers does for
  // ledgers: broken pairs are closed, removed and described in *problems; the returned ones
  // stay kept until ForgetMapRecord.
  std::vector<StoredPair> TakeMapRecords(ListenFds* inherited, std::vector<std::string>* problems);

  // Returns the number of store entries in use now, and the room systemd gives
  // (FileDescriptorStoreMax=; 0 when disabled), for GetStatus and tests.
  size_t kept() const { return kept_; }
  size_t room() const { return max_; }

 private:
  Sender send_;
  size_t max_ = 0;
  size_t kept_ = 0;
  // What is held for a device: the names of its entries (record first), for Forget, and how
  // many descriptors systemd holds under them, for the count.
  struct Held {
    std::vector<std::string> names;
    size_t entries = 0;
  };
  // Per device kept by this process or found at start.
  std::vector<std::pair<std::string, Held>> devices_;
  // Per configured device whose ledger is kept, and whose map record is.
  std::vector<std::pair<std::string, Held>> ledgers_;
  std::vector<std::pair<std::string, Held>> maps_;
  // The paired entries of a configured device: the main file's prefix, its partner's suffix,
  // what the pair is, and what is lost without it (for the messages).
  struct PairKind {
    const char* prefix;
    const char* partner_suffix;
    const char* what;
    const char* without;
    bool partner_optional;  // a main entry may come back alone
  };
  static const PairKind kLedgerPair;
  static const PairKind kMapsPair;
  std::vector<std::pair<std::string, Held>>& PairsOf(const PairKind& kind) {
    return &kind == &kMapsPair ? maps_ : ledgers_;
  }
  absl::Status KeepPair(const PairKind& kind, const std::string& device, int main_fd,
                        int partner_fd);
  void ForgetPair(const PairKind& kind, const std::string& device);
  std::vector<StoredPair> TakePairs(const PairKind& kind, ListenFds* inherited,
                                    std::vector<std::string>* problems);
  // Removes the entries `held` names, the first first.
  void Remove(const std::string& device, const Held& held);
};

}  // namespace iopfd

#endif  // IOPFD_SERVICE_FD_STORE_H_
