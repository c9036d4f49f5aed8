// The soak (bench/soak.sh, `iopf-guest soak SECONDS`): iopfd serving four mock devices for a long
// time while everything an operator, a VMM and a crash can do to it happens at random:
//  - mock0 (halt = "owner", a switch module) is drained, reset, held and resumed;
//  - mockB is only flooded (the control group for accounting);
//  - mockC's device file is removed and written again, each time followed by a Reload;
//  - mockD is adopted at run time and detached again;
//  - control clients ask for status and statistics;
//  - about every 45 s iopfd is killed (SIGKILL) and started again with what the fd store kept,
//    as systemd would (FdStoreKeeper): the adopted device and the in-flight ledger come back.
// Page requests flood every device meanwhile. Every 10 s one line samples iopfd's resident
// memory, open descriptors and CPU time. At the end iopfd is stopped and every device's fault
// queue is probed from the owner's side: a cookie the kernel still holds as read and unanswered
// is a lost answer (must be 0); what is still queued unread is counted, not lost.
#ifndef IOPFD_TESTS_VM_GUEST_SOAK_H_
#define IOPFD_TESTS_VM_GUEST_SOAK_H_

#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "mock_env.h"

namespace mockenv {

struct Sample {
  double t = 0;
  uint64_t rss_kb = 0;
  uint64_t fds = 0;
  uint64_t cpu_ms = 0;
};

inline Sample SampleProcess(pid_t pid, double t) {
  Sample s;
  s.t = t;
  std::ifstream status(Format("/proc/%d/status", pid));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kb = std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  if (DIR* dir = opendir(Format("/proc/%d/fd", pid).c_str())) {
    while (dirent* e = readdir(dir)) s.fds += e->d_name[0] != '.';
    closedir(dir);
  }
  std::ifstream stat(Format("/proc/%d/stat", pid));
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
  const size_t close_paren = text.rfind(')');
  if (close_paren != std::string::npos) {
    std::istringstream rest(text.substr(close_paren + 2));
    std::string field;
    uint64_t utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
      if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
    }
    s.cpu_ms = (utime + stime) * 1000 / static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  }
  return s;
}

inline int RunSoak(int seconds) {
  Verdict v("soak");
  Env a, b, c, dd;
  Setup(a, "soak", "warning");
  const std::string dir = a.dir;
  WriteFile(dir + "/devices.d/mock0.toml",
            SwitchableDeviceFile(a, "halt = \"owner\"\nhalt_timeout_ms = 60000\n"));
  Setup(b, "soak-b", "warning", "mockB");
  WriteFile(dir + "/devices.d/mockB.toml", DeviceFile(b));
  Setup(c, "soak-c", "warning", "mockC");
  const std::string c_file = dir + "/devices.d/mockC.toml";
  WriteFile(c_file, DeviceFile(c));
  Setup(dd, "soak-d", "warning", "mockD");
  const std::string sock = dir + "/ctl.sock";
  std::vector<std::pair<std::string, int>> configured = a.Fds();
  for (const Env* e : {&b, &c}) {
    for (const auto& f : e->Fds()) configured.push_back(f);
  }
  FdStoreKeeper store(dir + "/notify.sock");
  auto start_iopfd = [&] {
    store.Receive();
    std::vector<std::pair<std::string, int>> fds = configured;
    for (const auto& entry : store.entries()) fds.push_back(entry);
    Daemon d = StartWith(dir, fds, store.Env());
    // Serving, not only listening (the socket listens before the loop starts).
    if (!WaitFor(
            [&] { return !ControlClient(sock).Call(R"({"method":"io.iopfd.GetStatus"})").empty(); },
            30000)) {
      v.Expect(false, "iopfd did not come up");
    }
    return d;
  };
  auto call = [&](const std::string& json, const std::vector<int>& fds = {}) {
    ControlClient cl(sock);
    return cl.ok() ? cl.Call(json, fds) : std::string();
  };

  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  Daemon d = start_iopfd();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> sent[4] = {0, 0, 0, 0};
  std::vector<std::thread> floods;
  const Env* envs[4] = {&a, &b, &c, &dd};
  for (int k = 0; k < 4; ++k) {
    floods.emplace_back([&, k] {
      for (uint32_t i = 0; !stop.load(); ++i) {
        const bool pasid = i % 3 == 2;
        const uint64_t addr = pasid ? kR2 + (i % 48) * kPage : kR0 + (i % 200) * kPage;
        if (Trigger(*envs[k], addr, IOMMU_PGFAULT_PERM_READ, pasid, i % 512) == 0) ++sent[k];
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  }

  std::mt19937 rng(12);
  bool c_present = true, d_adopted = false;
  int kills = 0, actions = 0, refused = 0;
  double next_kill = 45, next_sample = 0;
  std::vector<Sample> samples;
  while (elapsed() < seconds && v.failures.empty()) {
    store.Receive();
    if (elapsed() >= next_sample) {
      Sample s = SampleProcess(d.pid, elapsed());
      samples.push_back(s);
      std::printf("IOPF-SOAK t=%.0fs pid=%d rss_kb=%llu fds=%llu cpu_ms=%llu sent=%llu\n", s.t,
                  d.pid, static_cast<unsigned long long>(s.rss_kb),
                  static_cast<unsigned long long>(s.fds), static_cast<unsigned long long>(s.cpu_ms),
                  static_cast<unsigned long long>(sent[0] + sent[1] + sent[2] + sent[3]));
      next_sample += 10;
    }
    if (elapsed() >= next_kill) {
      // A crash: nothing is answered on the way out; the next process takes the fd store.
      kill(d.pid, SIGKILL);
      int status = 0;
      waitpid(d.pid, &status, 0);
      ++kills;
      d = start_iopfd();
      // Whether mockD came back with the store (its Adopt may not have been stored yet).
      d_adopted = call(R"({"method":"io.iopfd.ListDevices"})").find(R"("name":"mockD")") !=
                  std::string::npos;
      next_kill += 45;
      continue;
    }
    int status = 0;
    if (waitpid(d.pid, &status, WNOHANG) == d.pid) {
      d.pid = -1;
      EchoLog(d);
      v.Expect(false, Format("iopfd died by itself at %.0f s (status 0x%x)", elapsed(), status));
      break;
    }
    ++actions;
    std::string r;
    switch (rng() % 7) {
      case 0:
        r = call(R"({"method":"io.iopfd.Drain","parameters":{"device":"mock0"}})");
        r += call(R"({"method":"io.iopfd.Halt","parameters":{"device":"mock0"}})");
        break;
      case 1:
        r = call(R"({"method":"io.iopfd.Reset","parameters":{"device":"mock0"}})");
        r += call(R"({"method":"io.iopfd.Halt","parameters":{"device":"mock0"}})");
        break;
      case 2:
        r = call(R"({"method":"io.iopfd.Halt","parameters":{"device":"mock0"}})");
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        r += call(R"({"method":"io.iopfd.Resume","parameters":{"device":"mock0"}})");
        break;
      case 3:
        if (c_present) {
          unlink(c_file.c_str());
        } else {
          WriteFile(c_file, DeviceFile(c));
        }
        c_present = !c_present;
        r = call(R"({"method":"io.iopfd.Reload"})");
        break;
      case 4:
        if (d_adopted) {
          r = call(R"({"method":"io.iopfd.Detach","parameters":{"device":"mockD"}})");
        } else {
          r = call(R"({"method":"io.iopfd.Adopt","parameters":{"config":)" +
                       JsonString(DeviceFile(dd, /*fd_backings=*/true)) +
                       R"(,"fds":["mockD.iommufd","mockD.fault","mockD.ram0","mockD.ram1",)"
                       R"("mockD.ram2"]}})",
                   {dd.iommufd, dd.fault_fd, dd.ram0, dd.ram1, dd.ram2});
        }
        if (r.find("\"error\"") == std::string::npos && !r.empty()) d_adopted = !d_adopted;
        break;
      default:
        for (const char* m :
             {R"({"method":"io.iopfd.GetStats"})", R"({"method":"io.iopfd.GetStatus"})",
              R"({"method":"io.iopfd.ListDevices"})"}) {
          r += call(m);
        }
        break;
    }
    if (r.empty()) ++refused;
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 200));
  }

  stop = true;
  for (auto& t : floods) t.join();
  // The end: mock0 runs, every served queue is read, iopfd stops cleanly.
  (void)call(R"({"method":"io.iopfd.Resume","parameters":{"device":"mock0"}})");
  WaitFor([&] { return QueueEmpty(a) && QueueEmpty(b) && (!c_present || QueueEmpty(c)); }, 60000);
  const Sample last = SampleProcess(d.pid, elapsed());
  const int rc = Stop(d);
  v.Expect(rc == 0, Format("iopfd exit %d at the end", rc));
  auto s0 = ReadStats(d, "mock0");
  size_t lost = 0, unread = 0;
  for (const Env* e : envs) {
    Probe p = ProbeFaultQueue(*e);
    lost += p.unanswered;
    unread += p.unread;
    v.Expect(p.unanswered == 0,
             Format("%s: %zu group(s) read and never answered", e->dev.c_str(), p.unanswered));
  }
  // Resources stay flat: compare the last sample with the first taken a minute in (per-process
  // figures restart with each kill; the bound covers the spread between processes).
  uint64_t rss_min = ~0ull, rss_max = 0, fds_min = ~0ull, fds_max = 0;
  for (const Sample& s : samples) {
    if (s.t < 60) continue;
    rss_min = std::min(rss_min, s.rss_kb);
    rss_max = std::max(rss_max, s.rss_kb);
    fds_min = std::min(fds_min, s.fds);
    fds_max = std::max(fds_max, s.fds);
  }
  if (rss_max > 0) {
    v.Expect(rss_max <= rss_min + 32 * 1024,
             Format("resident memory grew from %llu to %llu KiB", (unsigned long long)rss_min,
                    (unsigned long long)rss_max));
    v.Expect(fds_max <= fds_min + 16,
             Format("open descriptors grew from %llu to %llu", (unsigned long long)fds_min,
                    (unsigned long long)fds_max));
  }
  std::printf(
      "IOPF-SOAK end: %.0f s, %llu page requests sent (mock0 %llu, mockB %llu, mockC %llu, mockD "
      "%llu), %d actions (%d found iopfd away), %d kills; lost %zu, still queued %zu; last "
      "process: rss %llu KiB, %llu fds, cpu %llu ms; mock0's last run: groups %llu, rejected %llu, "
      "stale dropped %llu, recovered %llu\n",
      elapsed(), (unsigned long long)(sent[0] + sent[1] + sent[2] + sent[3]),
      (unsigned long long)sent[0].load(), (unsigned long long)sent[1].load(),
      (unsigned long long)sent[2].load(), (unsigned long long)sent[3].load(), actions, refused,
      kills, lost, unread, (unsigned long long)last.rss_kb, (unsigned long long)last.fds,
      (unsigned long long)last.cpu_ms, (unsigned long long)s0["groups"],
      (unsigned long long)s0["responses_rejected"],
      (unsigned long long)s0["responses_stale_dropped"],
      (unsigned long long)s0["recovered_answers"]);
  const bool ok = v.Report();
  std::printf("IOPF-SUMMARY %d passed, %d failed\n", ok ? 1 : 0, ok ? 0 : 1);
  return ok ? 0 : 1;
}

}  // namespace mockenv

#endif  // IOPFD_TESTS_VM_GUEST_SOAK_H_
