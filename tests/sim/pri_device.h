// A simulated PCIe function with a Page Request Interface, for unit and property tests of the
// drain state machine. It models what the drain exists to protect (PCIe base spec, ATS chapter;
// shared/reference/000_be90ba70f49c598f.txt): page request groups identified by a PRG index, an
// Outstanding Page Request Allocation, PRI Enable and the Stopped status, and a Function Level
// Reset that makes the function forget every tag it issued. It checks the protocol from the
// device's side and records every violation instead of aborting, so a test can print them all
// together with its seed.
#ifndef IOPFD_TESTS_SIM_PRI_DEVICE_H_
#define IOPFD_TESTS_SIM_PRI_DEVICE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace iopfd::sim {

// One page request as the function sends it. Every request of a group carries the group's PRG
// index; the last one has `last` set.
struct PageRequest {
  uint32_t prg_index = 0;
  std::optional<uint32_t> pasid;
  uint64_t addr = 0;
  uint32_t perm = 0;  // read/write/exec/priv bits, as iommufd's IOMMU_PGFAULT_PERM_*
  bool last = false;
  // Which issue of this PRG index the request belongs to. Not on the wire: the simulation
  // carries it along so that a response can be traced to the group its sender meant, which is
  // how a stale answer meeting a reused index is told apart from a correct one.
  uint64_t generation = 0;
};

enum class ResponseCode { kSuccess, kInvalid, kFailure };

// What the function saw go wrong.
enum class ViolationKind {
  kUnexpectedPrgIndex,    // a response for an index with no group outstanding (stale or repeat)
  kStaleResponse,         // a response meant for an earlier group of a reused index
  kRequestWhileHalted,    // the function was told to stop DMA, yet a request was issued
  kRequestWhileDisabled,  // PRI Enable was clear, yet a request was issued
  kOverAllocation,        // more requests outstanding than the allocation allows
  kIndexInUse,            // a group issued under an index that is still outstanding
  kLostGroup,             // a group never answered although nothing made the function forget it
};

struct Violation {
  ViolationKind kind;
  std::string detail;
};

// Returns a short name for the kind ("unexpected_prg_index", ...).
const char* ViolationName(ViolationKind kind);

class PriDevice {
 public:
  struct Options {
    uint32_t allocation = 64;    // Outstanding Page Request Allocation, in requests
    uint32_t prg_indices = 512;  // PRG index is 9 bits
  };
  PriDevice() : PriDevice(Options{}) {}
  // A zero allocation or index space is taken as one.
  explicit PriDevice(Options options) : options_(options) {
    if (options_.allocation == 0) options_.allocation = 1;
    if (options_.prg_indices == 0) options_.prg_indices = 1;
  }

  // --- PRI capability, as the kernel drives it.
  // Sets PRI Enable. Clearing it makes the function stop issuing requests; what is outstanding
  // stays outstanding until answered (Stopped reports when nothing is).
  void SetEnabled(bool enabled) { enabled_ = enabled; }
  bool enabled() const { return enabled_; }
  // PRI Status Stopped: Enable is clear and no request is outstanding.
  bool stopped() const { return !enabled_ && outstanding_requests_ == 0; }

  // --- The function's own DMA engine.
  // A DMA stop (the owner quiesced it, or a reset is under way): no request may be issued until
  // ResumeDma. The drain state machine is what decides when; the function only checks.
  void HaltDma() { halted_ = true; }
  void ResumeDma() { halted_ = false; }
  bool halted() const { return halted_; }

  // Returns true when a group of `pages` requests could be issued now: PRI enabled, DMA not
  // halted, allocation and a free PRG index available.
  bool CanIssue(uint32_t pages) const;
  // Issues a group of `pages` requests (1..allocation) for consecutive pages from addr, under a
  // free PRG index. An obedient caller checks CanIssue first; issuing anyway is recorded as the
  // violation it is (and the group is issued all the same, as a broken function would).
  std::vector<PageRequest> IssueGroup(std::optional<uint32_t> pasid, uint64_t addr, uint32_t perm,
                                      uint32_t pages);

  // A Page Group Response arriving at the function for prg_index, meant for the given
  // generation of it. Completes the group when it is the outstanding one; records
  // kUnexpectedPrgIndex or kStaleResponse otherwise.
  void Respond(uint32_t prg_index, uint64_t generation, ResponseCode code);

  // Function Level Reset: every outstanding group is forgotten (its index may be reused at once),
  // DMA stops and PRI Enable clears, as in the spec; the kernel restores Enable afterwards only
  // if it had it recorded (pci_restore_state), which the caller models with SetEnabled.
  void Flr();

  // Records kLostGroup for every group still outstanding. Call when the system is quiet: every
  // request reached the handler and everything the handler owed was answered.
  void CheckNothingLost();

  // Returns the number of requests and groups outstanding.
  uint32_t outstanding_requests() const { return outstanding_requests_; }
  size_t outstanding_groups() const { return groups_.size(); }
  // Counters for tests: groups issued, completed by a response, forgotten by FLR.
  uint64_t issued() const { return issued_; }
  uint64_t completed() const { return completed_; }
  uint64_t forgotten() const { return forgotten_; }
  const std::vector<Violation>& violations() const { return violations_; }

 private:
  struct Group {
    uint64_t generation;
    uint32_t requests;
  };
  void Flag(ViolationKind kind, std::string detail);

  Options options_;
  bool enabled_ = true;
  bool halted_ = false;
  uint32_t outstanding_requests_ = 0;
  std::map<uint32_t, Group> groups_;  // PRG index -> the group outstanding under it
  uint32_t next_index_ = 0;           // where the search for a free index starts
  uint64_t next_generation_ = 1;
  uint64_t issued_ = 0, completed_ = 0, forgotten_ = 0;
  std::vector<Violation> violations_;
};

}  // namespace iopfd::sim

#endif  // IOPFD_TESTS_SIM_PRI_DEVICE_H_
