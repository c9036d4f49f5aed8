// iopfctl top: a live full-screen view of iopfd (docs/CONTROL.md, "iopfctl top").
#ifndef IOPFD_DAEMON_IOPFCTL_TOP_H_
#define IOPFD_DAEMON_IOPFCTL_TOP_H_

#include <string>

namespace iopfd {

struct TopOptions {
  double every_s = 1.0;  // refresh interval
  bool once = false;     // print one frame (rates over one interval) and exit
};

// Runs the view against the control socket at `socket`: full screen while stdout is a terminal
// (keys from stdin when it is one too), else frames one after another (one with --once).
// Returns the exit code: 0 when quit (q, Ctrl-C, SIGTERM) or after --once's frame, 1 when iopfd
// answers with an error (PermissionDenied), 3 when it cannot be reached at the start (and for
// --once or batch output when it went away). While the view runs, iopfd going away is shown and
// the view reconnects at each refresh.
int RunTop(const std::string& socket, const TopOptions& options);

}  // namespace iopfd

#endif  // IOPFD_DAEMON_IOPFCTL_TOP_H_
