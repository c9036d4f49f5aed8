// iopf-systemd-check: the booted-systemd VM test's driver. It runs as a service of a Debian
// system whose PID 1 is systemd (tests/vm/systemd/run-systemd-vm.sh), installs iopfd's .deb and
// plays the VMM of a mock PRI device (CONFIG_IOMMUFD_TEST): it creates the device, hands it to
// the installed service with io.iopfd.Adopt over the systemd-owned control socket, injects page
// requests, and checks what the issue asks of a system service: READY before active, faults
// resolved, reload, a restart in the middle of a flood (the fd store) and a watchdog restart
// losing none, varlinkctl against the socket, a clean stop answering everything, the journal's
// fields and the sandbox in force; with the argument "boot" (a second boot, iopfd enabled), the
// time from kernel start to iopfd's READY=1. Each check prints one line on the console:
//   IOPF-RESULT <case> PASS|FAIL <detail>
// Compiled at test time against the booted kernel's drivers/iommu/iommufd/iommufd_test.h.

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>

#include "mock_env.h"

namespace {

using namespace mockenv;  // NOLINT(google-build-using-namespace): the guest driver's own helpers

constexpr char kSocket[] = "/run/iopfd/io.iopfd";
constexpr char kUnit[] = "iopfd.service";

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Runs a shell command line; returns its exit status and its output (stdout and stderr).
std::pair<int, std::string> Sh(const std::string& cmd) {
  return RunCapture({"/bin/sh", "-c", cmd + " 2>&1"});
}

std::string Show(const std::string& property, const std::string& unit = kUnit) {
  return Trim(Sh("systemctl show -P " + property + " " + unit).second);
}

uint64_t ShowNum(const std::string& property) {
  return std::strtoull(Show(property).c_str(), nullptr, 10);
}

bool Contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

// The last line of text containing `what`, or "".
std::string LineWith(const std::string& text, const std::string& what) {
  std::istringstream in(text);
  std::string found;
  for (std::string line; std::getline(in, line);) {
    if (Contains(line, what)) found = line;
  }
  return found;
}

// A command's JSON output (iopfctl --json, varlinkctl) with white space removed, so that checks
// and ParseCounters see "key":value.
std::string JsonOf(const std::string& cmd) { return Sh(cmd + " | tr -d ' \\n'").second; }

// The counters one iopfd process logged for `device` when it exited ("DEV: final counters
// {...}", one journal entry per device); empty when it logged none.
std::map<std::string, uint64_t> FinalCountersOf(const std::string& pid, const std::string& device) {
  Sh("journalctl --sync");
  std::string log = Sh("journalctl -q -o cat _PID=" + pid).second;
  std::string line = LineWith(log, device + ": final counters {");
  if (line.empty()) return {};
  return ParseCounters(line.substr(line.find('{')));
}

// The live counters of `device` in the running iopfd (GetStats through iopfctl).
std::map<std::string, uint64_t> LiveCounters(const std::string& device) {
  // {"devices":[{...}]}: the one device's object.
  return ParseCounters(After(JsonOf("iopfctl --json stats " + device), "\"devices\":["));
}

// What the checks share: the mock device (owned here, as a VMM owns its device) and how many
// page request groups were injected so far, each of which some iopfd process must have answered.
struct Run {
  Env e;
  uint64_t sent = 0;
  bool installed = false;
  bool adopted = false;
};

// Injects one read request for page `i` of R0 (no PASID) or of R2 (PASID 5) on odd i.
int TriggerPage(const Env& e, uint64_t i) {
  bool pasid = (i % 2) == 1;
  uint64_t page = pasid ? (i / 2) % (kR2Size / kPage) : (i / 2) % (kR0Size / kPage);
  return Trigger(e, (pasid ? kR2 : kR0) + page * kPage, IOMMU_PGFAULT_PERM_READ, pasid,
                 static_cast<uint32_t>(i % 512));
}

bool CaseBooted() {
  Verdict v("systemd_booted");
  std::string comm = Trim(Sh("cat /proc/1/comm").second);
  v.Expect(comm == "systemd", "PID 1 is " + comm);
  auto [rc, state] = Sh("systemctl is-system-running --wait");
  state = Trim(state);
  if (state != "running") {
    v.Expect(false, "system " + state + "; failed units: " +
                        Trim(Sh("systemctl --failed --plain --no-legend | tr '\\n' ' '").second));
  }
  std::printf("IOPF-INFO systemd %s; %s\n",
              Trim(Sh("systemctl --version | head -1").second).c_str(),
              Trim(Sh("systemd-analyze time | head -1").second).c_str());
  return v.Report();
}

bool CasePackageInstalls(Run& r) {
  Verdict v("package_installs");
  auto t0 = std::chrono::steady_clock::now();
  auto [rc, out] = Sh("dpkg -i /iopf/debs/*.deb");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  v.Expect(rc == 0, "dpkg -i exit " + std::to_string(rc) + ": " + LineWith(out, "rror"));
  v.Expect(Show("LoadState") == "loaded", "iopfd.service " + Show("LoadState"));
  // postinst ran daemon-reload: systemd knows the unit files as installed.
  v.Expect(Show("NeedDaemonReload") == "no", "iopfd.service needs a daemon-reload");
  v.Expect(Show("LoadState", "iopfd.socket") == "loaded", "iopfd.socket not loaded");
  v.Expect(Contains(Sh("dpkg-query -W -f='${Conffiles}' iopfd").second, "/etc/iopfd/iopfd.toml"),
           "/etc/iopfd/iopfd.toml is not a conffile");
  v.Expect(Sh("/usr/sbin/iopfd --check-config").first == 0, "iopfd --check-config fails");
  std::printf("IOPF-INFO dpkg -i took %.1f s\n", secs);
  r.installed = rc == 0;
  return v.Report();
}

// A configured device that cannot attach (its VFIO cdev does not exist): iopfd must log why and
// still report READY, and only then may systemd call the service active.
bool CaseStartReachesActiveAfterReady(const Run& r) {
  Verdict v("start_reaches_active_after_ready");
  if (!r.installed) {
    v.Expect(false, "not installed");
    return v.Report();
  }
  WriteFile("/etc/iopfd/devices.d/nic0.toml",
            "name = \"nic0\"\nattach = \"vfio\"\n[vfio]\ncdev = \"/dev/vfio/devices/vfio7\"\n"
            "[[space]]\n  [[space.region]]\n  iova = 0x1000000\n  size = \"1MiB\"\n"
            "  backing = \"anonymous\"\n  access = \"rw\"\n");
  auto [rc, out] = Sh("systemctl start iopfd.service");
  v.Expect(rc == 0, "systemctl start: " + Trim(out));
  // Type=notify: start returns when the unit is active, i.e. after READY=1.
  v.Expect(Show("Type") == "notify", "Type=" + Show("Type"));
  v.Expect(Show("ActiveState") == "active" && Show("SubState") == "running",
           "state " + Show("ActiveState") + "/" + Show("SubState"));
  // READY=1 comes after every configured device attached or failed: the moment the unit is
  // active, iopfd already accounts for nic0 (configured, not running: degraded).
  std::string status = JsonOf("iopfctl --json status");
  v.Expect(Contains(status, R"("devices_configured":1)") &&
               Contains(status, R"("devices_running":0)") &&
               Contains(status, R"("health":"degraded")"),
           "status right after start: " + Trim(status));
  std::string text = Show("StatusText");
  v.Expect(Contains(text, "device"), "STATUS= text: " + text);
  Sh("journalctl --sync");
  std::string log = Sh("journalctl -q -o cat -u iopfd.service").second;
  v.Expect(Contains(log, "nic0:"), "no logged reason for nic0");
  v.Expect(Contains(log, "serving 0 of 1 device(s)"), "no 'serving 0 of 1' line");
  // Logged right after READY=1, so possibly after start returned: waited for.
  v.Expect(WaitFor(
               [] {
                 Sh("journalctl --sync");
                 return Contains(Sh("journalctl -q -o cat -u iopfd.service").second,
                                 "watchdog: pinging every 5000 ms");
               },
               10000),
           "watchdog not armed");
  uint64_t exec = ShowNum("ExecMainStartTimestampMonotonic");
  uint64_t active = ShowNum("ActiveEnterTimestampMonotonic");
  v.Expect(active > exec && exec > 0, "ActiveEnter before ExecMainStart");
  std::printf("IOPF-INFO start to READY %.1f ms (exec %.3f s, active %.3f s after kernel start)\n",
              static_cast<double>(active - exec) / 1e3, static_cast<double>(exec) / 1e6,
              static_cast<double>(active) / 1e6);
  return v.Report();
}

bool CaseAdoptedFaultsResolved(Run& r) {
  Verdict v("adopted_device_faults_resolved");
  Setup(r.e, "systemd", "info", "mockD");
  ControlClient ctl(kSocket);
  v.Expect(ctl.ok(), "cannot connect to the control socket");
  std::string reply =
      ctl.Call(R"({"method":"io.iopfd.Adopt","parameters":{"config":)" +
                   JsonString(DeviceFile(r.e, /*fd_backings=*/true)) +
                   R"(,"fds":["mockD.iommufd","mockD.fault","mockD.ram0","mockD.ram1",)"
                   R"("mockD.ram2"]}})",
               {r.e.iommufd, r.e.fault_fd, r.e.ram0, r.e.ram1, r.e.ram2});
  r.adopted = Contains(reply, R"("name":"mockD")");
  v.Expect(r.adopted, "Adopt reply: " + reply);
  constexpr uint64_t kN = 128;
  for (uint64_t i = 0; i < kN; ++i) TriggerPage(r.e, r.sent++);
  v.Expect(WaitFor([&] { return CheckMap(r.e, r.e.hwpt, kR0, 64 * kPage, r.e.va0); }),
           "no-PASID pages mapped to their backing");
  v.Expect(WaitFor([&] { return CheckMap(r.e, r.e.hwpt_pasid, kR2, 64 * kPage, r.e.va2); }),
           "PASID 5 pages mapped to their backing");
  v.Expect(WaitFor([&] { return LiveCounters("mockD")["responses_written"] == kN; }), "responses");
  auto s = LiveCounters("mockD");
  v.ExpectEq(s, "groups", kN);
  v.ExpectEq(s, "responses_written", kN);
  v.ExpectEq(s, "responses_rejected", 0);
  v.ExpectEq(s, "outstanding", 0);
  std::string status = JsonOf("iopfctl --json status");
  // Its five descriptors, the in-flight ledger, the map record and the record of the call.
  v.Expect(Contains(status, R"("enabled":true)") && Contains(status, R"("kept":8)"),
           "fd store after Adopt: " + Trim(status));
  return v.Report();
}

// systemctl reload runs ExecReload (iopfctl reload): the same process applies the change. A
// configuration that does not load fails the reload and changes nothing.
bool CaseReloadAppliesChange() {
  Verdict v("reload_applies_config_change");
  std::string pid = Show("MainPID");
  unlink("/etc/iopfd/devices.d/nic0.toml");
  auto [rc, out] = Sh("systemctl reload iopfd.service");
  v.Expect(rc == 0, "systemctl reload: " + Trim(out));
  v.Expect(Show("MainPID") == pid, "MainPID changed: " + pid + " -> " + Show("MainPID"));
  std::string status = JsonOf("iopfctl --json status");
  v.Expect(Contains(status, R"("devices_configured":0)") && Contains(status, R"("health":"ok")") &&
               Contains(status, R"("devices_adopted":1)"),
           "status after reload: " + Trim(status));
  WriteFile("/etc/iopfd/devices.d/bad.toml", "name = \"bad\"\nattach = \"sideways\"\n");
  auto [bad_rc, bad_out] = Sh("systemctl reload iopfd.service");
  v.Expect(bad_rc != 0, "a reload with an invalid device file succeeded");
  v.Expect(Show("ActiveState") == "active" && Show("MainPID") == pid,
           "after a failed reload: " + Show("ActiveState") + " pid " + Show("MainPID"));
  unlink("/etc/iopfd/devices.d/bad.toml");
  Sh("journalctl --sync");
  std::string log = Sh("journalctl -q -o cat -u iopfd.service _PID=" + pid).second;
  v.Expect(Contains(log, "bad.toml"), "the invalid file is not named in the log");
  v.Expect(Contains(Show("LoadState"), "loaded") && Show("NRestarts") == "0", "restarted");
  return v.Report();
}

// Floods page requests from another thread until `during` has returned and `tail` more were
// sent; returns {requests sent before `during` started, sent when it returned}.
std::pair<uint64_t, uint64_t> FloodAround(Run& r, const std::function<void()>& during,
                                          uint64_t tail) {
  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> stop_at{~0ull};
  const uint64_t base = r.sent;
  std::thread flood([&] {
    while (sent.load() < stop_at.load() && sent.load() < 200000) {
      TriggerPage(r.e, base + sent.load());
      sent.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  });
  WaitFor([&] { return sent.load() >= 300; }, 30000);
  uint64_t before = sent.load();
  during();
  uint64_t after = sent.load();
  stop_at.store(after + tail);
  flood.join();
  r.sent += sent.load();
  return {before, after};
}

bool CaseRestartDuringFlood(Run& r) {
  Verdict v("restart_during_flood_loses_nothing");
  if (!r.adopted) {
    v.Expect(false, "no adopted device");
    return v.Report();
  }
  const std::string old_pid = Show("MainPID");
  const uint64_t sent_before = r.sent;
  int restart_rc = 0;
  auto [at_start, at_end] = FloodAround(
      r, [&] { restart_rc = Sh("systemctl restart iopfd.service").first; }, 1000);
  v.Expect(restart_rc == 0, "systemctl restart failed");
  const std::string new_pid = Show("MainPID");
  v.Expect(new_pid != old_pid && new_pid != "0", "MainPID " + old_pid + " -> " + new_pid);
  v.Expect(WaitFor([&] { return QueueEmpty(r.e); }, 60000), "queue not read empty");
  v.Expect(WaitFor([&] { return LiveCounters("mockD")["outstanding"] == 0; }), "outstanding");
  // Every group injected since the device was adopted is counted exactly once: by the process
  // before the restart (its final counters) or by the one after (its live counters).
  auto before = FinalCountersOf(old_pid, "mockD");
  auto after = LiveCounters("mockD");
  v.Expect(!before.empty(), "no final counters from pid " + old_pid);
  v.ExpectEq(before, "outstanding", 0);
  v.ExpectEq(before, "responses_rejected", 0);
  v.ExpectEq(before, "responses_written", before["groups"]);
  v.ExpectEq(after, "responses_written", after["groups"]);
  v.ExpectEq(after, "responses_rejected", 0);
  const uint64_t answered = before["groups"] + after["groups"];
  v.Expect(answered == r.sent, Format("groups answered %llu+%llu, injected %llu",
                                      static_cast<unsigned long long>(before["groups"]),
                                      static_cast<unsigned long long>(after["groups"]),
                                      static_cast<unsigned long long>(r.sent)));
  v.Expect(after["groups"] > 0 && before["groups"] > sent_before,
           "the flood did not span the restart");
  Sh("journalctl --sync");
  v.Expect(Contains(Sh("journalctl -q -o cat _PID=" + new_pid).second,
                    "mockD: adopted again from the fd store"),
           "the new process did not take mockD from the fd store");
  std::printf(
      "IOPF-INFO restart: %llu requests before it, %llu during it, %llu after; old process "
      "answered %llu, new %llu\n",
      static_cast<unsigned long long>(at_start), static_cast<unsigned long long>(at_end - at_start),
      static_cast<unsigned long long>(r.sent - sent_before - at_end),
      static_cast<unsigned long long>(before["groups"]),
      static_cast<unsigned long long>(after["groups"]));
  return v.Report();
}

// One HTTP exchange with 127.0.0.1:port; returns all that came back before the server closed.
std::string Http(uint16_t port, const std::string& request) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string got;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[65536];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) got.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return got;
}

// The Prometheus endpoint as installed: iopfd-metrics.socket started, the service activated by
// the first scrape, serving mockD's counters, in its sandbox (no capability, its own network
// namespace).
bool CaseMetricsEndpoint(const Run& r) {
  Verdict v("metrics_endpoint");
  auto [rc, out] = Sh("systemctl start iopfd-metrics.socket");
  v.Expect(rc == 0, "systemctl start iopfd-metrics.socket: " + Trim(out));
  v.Expect(Show("ActiveState", "iopfd-metrics.service") == "inactive",
           "iopfd-metrics.service started before the first scrape");
  std::string got = Http(10960, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
  v.Expect(got.rfind("HTTP/1.1 200 OK\r\n", 0) == 0, "GET /metrics: " + got.substr(0, 200));
  if (r.adopted) {
    v.Expect(Contains(got, "iopfd_page_requests_total{device=\"mockD\"} "),
             "no page request count of mockD in the scrape");
  }
  v.Expect(
      Http(10960, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").rfind("HTTP/1.1 405", 0) ==
          0,
      "POST /metrics was not refused with 405");
  v.Expect(Show("ActiveState", "iopfd-metrics.service") == "active",
           "iopfd-metrics.service " + Show("ActiveState", "iopfd-metrics.service"));
  const std::string pid = Show("MainPID", "iopfd-metrics.service");
  std::string caps = LineWith(Sh("cat /proc/" + pid + "/status").second, "CapEff:");
  v.Expect(Contains(caps, "0000000000000000"), "iopfd-metrics capabilities: " + caps);
  std::string own = Trim(Sh("readlink /proc/" + pid + "/ns/net").second);
  v.Expect(!own.empty() && own != Trim(Sh("readlink /proc/1/ns/net").second),
           "iopfd-metrics shares the host's network namespace (" + own + ")");
  Sh("systemctl stop iopfd-metrics.socket iopfd-metrics.service");
  return v.Report();
}

bool CaseVarlinkctl() {
  Verdict v("varlinkctl_introspect_and_call");
  auto [irc, iface] = Sh(std::string("varlinkctl introspect ") + kSocket + " io.iopfd");
  v.Expect(irc == 0 && Contains(iface, "interface io.iopfd") &&
               Contains(iface, "method GetStatus(") && Contains(iface, "method Adopt("),
           "introspect: " + LineWith(iface, ""));
  auto [crc, devices] = Sh(std::string("varlinkctl call ") + kSocket + " io.iopfd.ListDevices {}");
  v.Expect(crc == 0 && Contains(devices, "\"mockD\"") && Contains(devices, "\"adopted\""),
           "call ListDevices: " + Trim(devices));
  auto [erc, err] =
      Sh(std::string("varlinkctl call ") + kSocket + " io.iopfd.GetStats '{\"device\":\"nope\"}'");
  v.Expect(erc != 0 && Contains(err, "io.iopfd.NoSuchDevice"), "unknown device: " + Trim(err));
  auto [nrc, info] = Sh(std::string("varlinkctl info ") + kSocket);
  v.Expect(nrc == 0 && Contains(info, "iopfd"), "info: " + Trim(info));
  return v.Report();
}

// SIGSTOP freezes the fault loop: no WATCHDOG=1 within WatchdogSec, so systemd aborts the
// process and Restart=on-failure starts another, which takes the device from the fd store and
// answers what arrived meanwhile.
bool CaseWatchdog(Run& r) {
  Verdict v("watchdog_restarts_stalled_loop");
  const std::string pid = Show("MainPID");
  const uint64_t restarts = ShowNum("NRestarts");
  auto before = LiveCounters("mockD");
  v.Expect(Sh("kill -STOP " + pid).first == 0, "kill -STOP failed");
  auto t0 = std::chrono::steady_clock::now();
  // Pages 200..231 of R0, not touched before (the flood used even i, pages i/2 % 256; mapping
  // is idempotent anyway: CheckMap proves the new process answered them).
  for (int i = 0; i < 32; ++i) {
    Trigger(r.e, kR0 + (200 + i) * kPage, IOMMU_PGFAULT_PERM_READ, false, 600 + i);
    ++r.sent;
  }
  bool restarted = WaitFor(
      [&] {
        std::string now = Show("MainPID");
        return now != pid && now != "0" && Show("ActiveState") == "active";
      },
      90000);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  v.Expect(restarted, "not restarted within 90 s: " + Show("ActiveState") + " " + Show("MainPID"));
  v.Expect(ShowNum("NRestarts") == restarts + 1,
           Format("NRestarts %llu", static_cast<unsigned long long>(ShowNum("NRestarts"))));
  Sh("journalctl --sync");
  v.Expect(Contains(Sh("journalctl -q -o cat -u iopfd.service").second, "Watchdog timeout"),
           "systemd logged no watchdog timeout");
  v.Expect(WaitFor(
               [&] {
                 return CheckMap(r.e, r.e.hwpt, kR0 + 200 * kPage, 32 * kPage,
                                 r.e.va0 + 200 * kPage);
               },
               30000),
           "requests sent while stopped were not answered after the restart");
  auto after = LiveCounters("mockD");
  v.ExpectEq(after, "groups", 32);
  v.ExpectEq(after, "responses_written", 32);
  v.ExpectEq(before, "outstanding", 0);
  std::printf("IOPF-INFO watchdog: stopped to active again in %.1f s (WatchdogSec=10s)\n", secs);
  return v.Report();
}

bool CaseSandbox() {
  Verdict v("sandbox_in_force");
  v.Expect(Show("FileDescriptorStorePreserve") == "restart",
           "FileDescriptorStorePreserve=" + Show("FileDescriptorStorePreserve"));
  v.Expect(Show("FileDescriptorStoreMax") == "256",
           "FileDescriptorStoreMax=" + Show("FileDescriptorStoreMax"));
  std::string status = Sh("cat /proc/" + Show("MainPID") + "/status").second;
  // CAP_CHOWN (0), CAP_FOWNER (3), CAP_IPC_LOCK (14).
  v.Expect(Contains(status, "CapBnd:\t0000000000004009"),
           "bounding set: " + LineWith(status, "CapBnd"));
  v.Expect(Contains(status, "NoNewPrivs:\t1"), "no_new_privs not set");
  v.Expect(Contains(status, "Seccomp:\t2"), "no seccomp filter: " + LineWith(status, "Seccomp:"));
  std::string exposure =
      LineWith(Sh("systemd-analyze security iopfd.service").second, "Overall exposure level");
  v.Expect(!exposure.empty(), "systemd-analyze security printed no exposure");
  std::printf("IOPF-INFO systemd-analyze security: %s\n", Trim(exposure).c_str());
  return v.Report();
}

// Reads what is left in the fault queue and answers it, as the owner does once iopfd let go.
uint64_t AnswerQueueAsOwner(const Env& e) {
  uint64_t groups = 0;
  iommu_hwpt_pgfault rec[64];
  for (;;) {
    pollfd p = {e.fault_fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) break;
    ssize_t n = read(e.fault_fd, rec, sizeof(rec));
    if (n <= 0) break;
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(rec[0]); ++i) {
      if (rec[i].flags & IOMMU_PGFAULT_FLAGS_LAST_PAGE) {
        iommu_hwpt_page_response resp = {};
        resp.cookie = rec[i].cookie;
        resp.code = IOMMUFD_PAGE_RESP_SUCCESS;
        if (write(e.fault_fd, &resp, sizeof(resp)) == sizeof(resp)) ++groups;
      }
    }
  }
  return groups;
}

bool CaseStop(Run& r) {
  Verdict v("stop_answers_everything");
  const std::string pid = Show("MainPID");
  const uint64_t sent_before = r.sent;
  auto live = LiveCounters("mockD");
  int stop_rc = 0;
  FloodAround(
      r, [&] { stop_rc = Sh("systemctl stop iopfd.service").first; }, 200);
  v.Expect(stop_rc == 0, "systemctl stop failed");
  v.Expect(Show("ActiveState") == "inactive", "ActiveState=" + Show("ActiveState"));
  v.Expect(Show("Result") == "success", "Result=" + Show("Result"));
  v.Expect(Show("ExecMainStatus") == "0", "exit status " + Show("ExecMainStatus"));
  auto fin = FinalCountersOf(pid, "mockD");
  v.Expect(!fin.empty(), "no final counters from pid " + pid);
  v.ExpectEq(fin, "outstanding", 0);
  v.ExpectEq(fin, "responses_rejected", 0);
  v.ExpectEq(fin, "responses_written", fin["groups"]);
  // What iopfd did not read stays queued for the owner: with the store released (a stop, not a
  // restart), the device is the VMM's again.
  uint64_t owner = AnswerQueueAsOwner(r.e);
  uint64_t flood = r.sent - sent_before;
  uint64_t read_during = fin["groups"] - live["groups"];
  v.Expect(
      read_during + owner == flood,
      Format("flood %llu: iopfd answered %llu before exiting, the owner %llu after",
             static_cast<unsigned long long>(flood), static_cast<unsigned long long>(read_during),
             static_cast<unsigned long long>(owner)));
  std::printf("IOPF-INFO stop during a flood of %llu: iopfd answered %llu, left %llu queued\n",
              static_cast<unsigned long long>(flood), static_cast<unsigned long long>(read_during),
              static_cast<unsigned long long>(owner));
  return v.Report();
}

bool CaseJournalFields() {
  Verdict v("journal_structured_fields");
  Sh("journalctl --sync");
  std::string verbose = Sh("journalctl -q -o verbose -u iopfd.service").second;
  for (const char* field : {"IOPFD_DEVICE=mockD", "IOPFD_DEVICE=nic0", "IOPFD_LEVEL=info",
                            "IOPFD_LEVEL=error", "SYSLOG_IDENTIFIER=iopfd"}) {
    v.Expect(Contains(verbose, field), std::string("no entry with ") + field);
  }
  // The fields are indexed: a match on one selects exactly mockD's entries.
  std::string mock = Sh("journalctl -q -o cat IOPFD_DEVICE=mockD").second;
  v.Expect(Contains(mock, "mockD: final counters") && !Contains(mock, "nic0"),
           "IOPFD_DEVICE=mockD match: " + LineWith(mock, ""));
  return v.Report();
}

// The second boot: iopfd installed and enabled before it (run-systemd-vm.sh), with a device
// file whose device cannot attach. Boot to ready is measured on systemd's own clock: the
// service's ActiveEnterTimestampMonotonic is CLOCK_MONOTONIC at READY=1, which started with
// the kernel.
bool CaseBootToReady() {
  Verdict v("boot_to_ready");
  auto [rc, state] = Sh("systemctl is-system-running --wait");
  v.Expect(Trim(state) == "running", "system " + Trim(state));
  v.Expect(Show("ActiveState") == "active" && Show("SubState") == "running",
           "iopfd " + Show("ActiveState") + "/" + Show("SubState"));
  v.Expect(Show("UnitFileState") == "enabled", "iopfd " + Show("UnitFileState"));
  v.Expect(Show("NRestarts") == "0", "NRestarts " + Show("NRestarts"));
  // Started by the boot transaction, not by anyone since: its socket came first.
  v.Expect(Show("ActiveState", "iopfd.socket") == "active", "iopfd.socket not active");
  std::string status = JsonOf("iopfctl --json status");
  v.Expect(Contains(status, R"("devices_configured":1)"), "status: " + Trim(status));
  const uint64_t userspace = std::strtoull(
      Trim(Sh("systemctl show -P UserspaceTimestampMonotonic").second).c_str(), nullptr, 10);
  const uint64_t exec = ShowNum("ExecMainStartTimestampMonotonic");
  const uint64_t ready = ShowNum("ActiveEnterTimestampMonotonic");
  v.Expect(ready > exec && exec > userspace && userspace > 0, "timestamps out of order");
  std::printf(
      "IOPF-INFO boot to ready: %.2f s from kernel start to iopfd READY=1 (userspace from "
      "%.2f s, iopfd exec %.2f s, ready %.2f s; exec to ready %.0f ms)\n",
      static_cast<double>(ready) / 1e6, static_cast<double>(userspace) / 1e6,
      static_cast<double>(exec) / 1e6, static_cast<double>(ready) / 1e6,
      static_cast<double>(ready - exec) / 1e3);
  return v.Report();
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  // systemd's console setup may have left a partial line (terminal resets): start afresh.
  std::printf("\n");
  if (argc > 1 && std::string(argv[1]) == "boot") return CaseBootToReady() ? 0 : 1;
  Run r;
  int failed = 0, passed = 0;
  auto count = [&](bool ok) { (ok ? passed : failed)++; };
  count(CaseBooted());
  count(CasePackageInstalls(r));
  count(CaseStartReachesActiveAfterReady(r));
  count(CaseAdoptedFaultsResolved(r));
  count(CaseReloadAppliesChange());
  count(CaseRestartDuringFlood(r));
  count(CaseVarlinkctl());
  count(CaseMetricsEndpoint(r));
  count(CaseWatchdog(r));
  count(CaseSandbox());
  count(CaseStop(r));
  count(CaseJournalFields());
  std::printf("IOPF-SUMMARY %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
