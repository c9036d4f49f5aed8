// `iopfctl top`: what a live view of iopfd computes and shows, apart from the terminal.
//
// Each refresh reads three replies (GetStatus, ListDevices, GetStats with histogram buckets);
// TopModel turns two consecutive readings into per-device rates and interval percentiles, and
// RenderTop lays a frame out for a given terminal size. The terminal loop (daemon/iopfctl_top.cc)
// only fetches, feeds keys to HandleTopKey and writes frames.
#ifndef IOPFD_CONTROL_TOP_H_
#define IOPFD_CONTROL_TOP_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace iopfd {

// One reading of the daemon: the replies' parameters and when they were taken.
struct TopSample {
  uint64_t at_ns = 0;                                 // the client's CLOCK_MONOTONIC
  nlohmann::json status = nlohmann::json::object();   // GetStatus
  nlohmann::json devices = nlohmann::json::object();  // ListDevices
  nlohmann::json stats = nlohmann::json::object();    // GetStats {buckets: true}
};

// One device over the last interval.
struct TopRow {
  std::string name;
  std::string state;  // the drain state ("running", "quarantined", ...), or "?" when not listed
  uint64_t epoch = 0;
  // Page request records read per second; nullopt on the device's first reading.
  std::optional<double> faults_per_s;
  // Latency (read to answer written) of the answers written during the interval; nullopt when
  // none was (or on the first reading).
  std::optional<uint64_t> p50_ns, p99_ns;
  uint64_t resident_bytes = 0;
  uint64_t budget_bytes = 0;              // 0: unbounded
  std::optional<double> evictions_per_s;  // map units evicted per second
  uint64_t drains = 0;                    // since the device was attached
  bool drained_now = false;               // a drain or reset ran during the interval
};

// The daemon as a whole over the last interval.
struct TopTotals {
  std::string version;
  std::string health;
  uint64_t uptime_usec = 0;
  uint64_t devices_running = 0, devices_configured = 0;
  std::optional<double> faults_per_s, invalid_per_s, evictions_per_s;
  uint64_t resident_bytes = 0, budget_bytes = 0;  // the daemon's paging scope; 0: unbounded
};

// Rates and interval percentiles from consecutive samples.
class TopModel {
 public:
  // Takes a reading. A device's rates are over the time since its previous reading; a device
  // seen for the first time, or whose counters went backwards (detached and attached again
  // under the same name), starts over with no rates. Devices no longer listed are dropped.
  // Replies of an unexpected shape give empty or zero fields, never an exception.
  void Update(const TopSample& sample);

  // Returns the devices of the last reading, in the daemon's order.
  const std::vector<TopRow>& rows() const { return rows_; }
  const TopTotals& totals() const { return totals_; }
  // Returns the length of the last interval in seconds, or 0 before the second reading.
  double interval_s() const { return interval_s_; }

 private:
  struct Previous {
    uint64_t at_ns = 0;
    uint64_t records = 0, invalid = 0, evicted = 0, drains = 0, latency_count = 0;
    std::map<uint64_t, uint64_t> latency_buckets;  // le -> count
  };
  // Returns the counters of one GetStats device entry, read at at_ns.
  static Previous ReadingOf(const nlohmann::json& stats, uint64_t at_ns);
  // Sets the row's rates and interval percentiles from two readings; returns INVALID answers
  // per second.
  static double AddRates(TopRow& row, const Previous& was, const Previous& now);
  // The daemon's fields of totals_ (rates are the caller's).
  void SetTotals(const TopSample& sample);
  std::map<std::string, Previous> previous_;
  std::optional<uint64_t> previous_at_ns_;
  std::vector<TopRow> rows_;
  TopTotals totals_;
  double interval_s_ = 0;
};

// Returns the value at fraction q (0..1] of a histogram's buckets (le -> count): the smallest
// bucket bound at or above that rank, or nullopt when the buckets are empty.
std::optional<uint64_t> BucketPercentile(const std::map<uint64_t, uint64_t>& buckets, double q);

// The columns rows can be sorted by, in the order the `s` key cycles through them.
enum class TopSort { kFaults, kP99, kResident, kEvictions, kName, kState };

// What the person looking at the view chose, and what the terminal is.
struct TopView {
  TopSort sort = TopSort::kFaults;
  bool reverse = false;  // ascending instead of the column's natural order
  std::string filter;    // show devices whose name contains this (empty: all)
  bool editing = false;  // typing a filter after `/`
  std::string typed;     // the filter being typed
  bool color = true;     // SGR attributes (bold, reverse, colours); off for NO_COLOR
  bool help = false;     // the key help instead of the event lines
  bool keys = true;      // keys are read: the last line says which (not in plain frames)
  int width = 100, height = 30;
  double every_s = 1.0;            // the refresh interval, for the header
  std::deque<std::string> events;  // the latest Monitor events, newest last
};

// How many Monitor events the view keeps.
inline constexpr size_t kTopEvents = 5;

// Returns the column's name as the header shows it ("FAULTS/S").
const char* TopSortName(TopSort sort);

// Applies one key (a byte read from the terminal). Returns false for quit (q, Q, Ctrl-C;
// Escape or Ctrl-C while typing a filter only cancels the typing). Keys: s/S next/previous sort
// column, r reverse, / type a filter (Enter applies, an empty one shows all, Backspace edits),
// h or ? toggles help; others are ignored.
bool HandleTopKey(TopView& view, int key);

// Returns one frame: the totals, the column header, one line per shown device sorted and
// filtered as the view says, then the latest events and a key hint, every line at most
// view.width columns and at most view.height lines (devices that do not fit are counted in a
// "+N more" line). Lines end with "\n"; with view.color, SGR sequences mark the header, the
// sort column and states that need attention. No cursor movement: the caller positions it.
std::string RenderTop(const TopModel& model, const TopView& view, const std::string& clock);

}  // namespace iopfd

#endif  // IOPFD_CONTROL_TOP_H_
