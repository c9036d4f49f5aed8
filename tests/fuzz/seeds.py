#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/TARGET/) and the regression inputs
for the bugs issue 12 listed (tests/fuzz/regressions/TARGET/). Run from anywhere; the files are
committed, this script says how each was made. Formats: see each target's header comment."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(kind, target, name, data):
    d = os.path.join(HERE, kind, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def call(method, params=None, **extra):
    m = {"method": method}
    if params is not None:
        m["parameters"] = params
    m.update(extra)
    return json.dumps(m).encode() + b"\0"


# ---- varlink: flags byte (peer | fds << 2 | chunk << 4), then NUL-terminated messages.
ADOPT_CONFIG = ('name = "vm1"\nattach = "adopt"\n[adopt]\niommufd_fd = "a"\nfault_fd = "b"\n'
                'device_id = 1\n[[space]]\nioas_id = 2\n[[space.region]]\niova = 0x100000\n'
                'size = "64KiB"\nbacking = "anonymous"\naccess = "rw"\n')
reads = (call("org.varlink.service.GetInfo") +
         call("org.varlink.service.GetInterfaceDescription", {"interface": "io.iopfd"}) +
         call("io.iopfd.GetStatus") + call("io.iopfd.ListDevices") +
         call("io.iopfd.GetStats", {"device": "sim0"}) +
         call("io.iopfd.GetStats", {"format": "prometheus"}) +
         call("io.iopfd.Monitor", more=True))
drains = (call("io.iopfd.Drain", {"device": "sim0"}) + call("io.iopfd.Halt", {"device": "sim0"}) +
          call("io.iopfd.GetStatus") + call("io.iopfd.Resume", {"device": "sim0"}) +
          call("io.iopfd.Drain", {"device": "sim0", "pasid": 5}) +
          call("io.iopfd.Reset", {"device": "sim0"}) + call("io.iopfd.Halt", {"device": "sim0"}) +
          call("io.iopfd.Resume", {"device": "sim0"}) + call("io.iopfd.ListDevices"))
admin = (call("io.iopfd.SetLogLevel", {"level": "debug"}) + call("io.iopfd.Reload") +
         call("io.iopfd.Adopt", {"config": ADOPT_CONFIG, "fds": ["a", "b"]}) +
         call("io.iopfd.Detach", {"device": "vm1"}) + call("io.iopfd.Detach", {"device": "sim0"}) +
         call("io.iopfd.GetStatus"))
odd = (call("io.iopfd.GetStatus", oneway=True) + call("io.iopfd.GetStatus", upgrade=True) +
       call("io.iopfd.Nope") + call("no.such.Method") + call("io.iopfd.GetStats", {"x": 1}) +
       call("io.iopfd.Drain", {"device": 7}) + call("io.iopfd.Drain", {"device": "sim0", "pasid": -1}) +
       call("io.iopfd.Monitor") + b'{"method":"io.iopfd.GetStatus","more":"yes"}\0' + b"[1,2]\0")
write("corpus", "varlink", "reads-root", bytes([0]) + reads)
write("corpus", "varlink", "reads-control-chunked", bytes([2 | 3 << 4]) + reads)
write("corpus", "varlink", "drains-root", bytes([0]) + drains)
write("corpus", "varlink", "drains-admin-bytewise", bytes([1 | 1 << 4]) + drains)
write("corpus", "varlink", "drains-control", bytes([2]) + drains)
write("corpus", "varlink", "admin-with-fds", bytes([1 | 2 << 2]) + admin)
write("corpus", "varlink", "admin-as-stranger", bytes([3 | 1 << 2]) + admin)
write("corpus", "varlink", "odd", bytes([0]) + odd)
deep = 200000
write("regressions", "varlink", "nested-200000",
      bytes([2]) + b'{"method":"io.iopfd.GetStatus","parameters":{"x":' + b"[" * deep +
      b"]" * deep + b"}}\0")

# ---- config: global file, NUL, up to three device files.
with open(os.path.join(HERE, "../../config/iopfd.toml"), "rb") as f:
    global_file = f.read()
with open(os.path.join(HERE, "../../config/devices.d/dsa0.toml.example"), "rb") as f:
    dsa0 = f.read()
vfio = (b'name = "nic0"\nattach = "vfio"\n[vfio]\ncdev = "/dev/vfio/devices/vfio0"\n'
        b'[drain]\nhalt = "bus-master"\ntimeout_ms = 100\n[[space]]\n[[space.region]]\n'
        b'iova = 0x100000\nsize = "2MiB"\nbacking = "anonymous"\naccess = "rw"\nprefetch = "64KiB"\n'
        b'[[space]]\npasid = 3\n[[space.region]]\niova = 0\nsize = 4096\nbacking = "anonymous"\n'
        b'access = "r"\n')
write("corpus", "config", "examples", global_file + b"\0" + dsa0 + b"\0" + vfio)
write("corpus", "config", "adopt", b"\0" + ADOPT_CONFIG.encode())
write("corpus", "config", "unicode-in-strings",
      b'[daemon]\n# Ger\xc3\xa4t \xe2\x80\x94 \xf0\x9f\x98\x80\nlog_level = "info"\0'
      b'name = "d\xc3\xa9v"\nattach = """\\\n  adopt"""\n')
write("regressions", "config", "toml-c5-92", b"\xc5\x92")
write("regressions", "config", "toml-line-ending-backslash", b'\0a = """\\\n\xc2\xa7"""')
write("regressions", "config", "dotted-key-200000", b"\0" + b"a" + b".a" * 200000 + b" = 1\n")

# ---- uevent: messages separated by 0xFF.
DEV = "/devices/pci0000:00/0000:00:04.0"


def uevent(action, seq, **env):
    fields = [f"{action}@{DEV}", f"ACTION={action}", f"DEVPATH={DEV}", "SUBSYSTEM=pci",
              f"SEQNUM={seq}"] + [f"{k}={v}" for k, v in env.items()]
    return "\0".join(fields).encode() + b"\0"


write("corpus", "uevent", "recovery",
      b"\xff".join([uevent("change", 1, ERROR_EVENT="BEGIN_RECOVERY", ERROR_DEVICE_NO_RECOVERY="0"),
                    uevent("change", 2, ERROR_EVENT="SUCCESSFUL_RECOVERY")]))
write("corpus", "uevent", "failed-recovery",
      b"\xff".join([uevent("change", 3, ERROR_EVENT="BEGIN_RECOVERY"),
                    uevent("change", 4, ERROR_EVENT="FAILED_RECOVERY")]))
write("corpus", "uevent", "remove", uevent("remove", 5))
write("corpus", "uevent", "unbind-other", uevent("unbind", 6, DRIVER="vfio-pci") + b"\xff" +
      b"add@/devices/virtual/misc/iommu\0ACTION=add\0DEVPATH=/devices/virtual/misc/iommu\0"
      b"SUBSYSTEM=misc\0SEQNUM=7\0")

# ---- fault_records: options byte, paging byte (bit 0 on, bit 1 fifo, bits 2-4 budget in units
# minus one, bits 5-6 unit size 1/2/4/16 pages, bit 7 the budget on the device instead of the
# space), then batches (count byte, 40-byte records).
FLAGS_LAST, FLAGS_PASID = 1 << 1, 1 << 0


def rec(cookie, addr, perm=1, pasid=None, last=True, length=0, dev=7, grpid=None):
    flags = (FLAGS_LAST if last else 0) | (FLAGS_PASID if pasid is not None else 0)
    return struct.pack("<IIIIIIQII", flags, dev, pasid or 0,
                       cookie & 0x1ff if grpid is None else grpid, perm, 0, addr, length, cookie)


batch1 = [rec(1, 0x100000), rec(2, 0x100000 + 5 * 4096, 2), rec(3, 0x101000, pasid=5),
          rec(4, 0x200000, 1, length=8192), rec(5, 0x10), rec(6, 0x4000000 + 4096, 3)]
batch2 = [rec(7, 0x100000, last=False), rec(7, 0x101000, last=False), rec(7, 0x102000),
          rec(8, 0x200000, 2), rec(9, 0x103000, pasid=6)]
write("corpus", "fault_records", "mixed",
      bytes([0x13, 0x00]) + bytes([len(batch1)]) + b"".join(batch1) + bytes([len(batch2)]) +
      b"".join(batch2))
write("corpus", "fault_records", "limit-and-failures",
      bytes([0x21 | 0x40, 0x00]) + bytes([8]) + b"".join(rec(11, 0x100000 + i * 4096, last=(i == 7))
                                                  for i in range(8)))

# Paging: a two-unit budget of 4-page units, batches wider than it (groups wait for room), the
# first held unwritten over the second (the second's evictions must not take its units).
wide = [rec(20 + i, 0x100000 + i * 4 * 4096) for i in range(4)]
again = [rec(30 + i, 0x100000 + (3 - i) * 4 * 4096 + 4096) for i in range(4)]
write("corpus", "fault_records", "paging-budget",
      bytes([0x13, 0x01 | (1 << 2) | (2 << 5)]) + bytes([0x80 | len(wide)]) + b"".join(wide) +
      bytes([len(again)]) + b"".join(again))

# ---- ledger: capacity byte, then patches (u32 offset, length byte, bytes). Layout: header
# page (magic, version, record_size, capacity, cookie_slots, buffer_in_use, read_seq,
# buffer_live), slots from 4096 (8 bytes per cookie: code + 1, read_seq), records after
# 4096 + 512 KiB.
SLOTS, RECORDS = 4096, 4096 + 65536 * 8


def patch(off, data):
    return struct.pack("<IB", off, len(data)) + data


live = patch(24, struct.pack("<III", 4, 3, 1))  # buffer_in_use 4, read_seq 3, live
owed = patch(SLOTS + 8 * 2, struct.pack("<II", 1, 3)) + patch(SLOTS + 8 * 9, struct.pack("<II", 2, 2))
recs = patch(RECORDS, rec(2, 0x1000)) + patch(RECORDS + 40, rec(9, 0x2000)) + \
    patch(RECORDS + 80, rec(12, 0x3000, last=False))
write("corpus", "ledger", "live-buffer-owed", bytes([8]) + live + owed + recs)
write("corpus", "ledger", "owed-only", bytes([4]) + owed)
# Issue 12: a crash inside the zeroing leaves a dead buffer with records still in it.
dead = patch(24, struct.pack("<III", 4, 3, 0)) + patch(RECORDS + 80, rec(12, 0x3000))
write("regressions", "ledger", "dead-buffer-with-records", bytes([8]) + dead)
write("regressions", "ledger", "records-past-in-use",
      bytes([16]) + patch(24, struct.pack("<III", 1, 1, 1)) + patch(RECORDS + 40 * 10, rec(5, 0x5000)))

# ---- map_record: a layout byte, then patches (u16 offset, length byte, bytes). Layout: a
# 32-byte header (magic, version, regions, words), 64 bytes per region (ioas, access, iova,
# size, unit, first word, backing dev, ino, offset), then the bitmap.
def mpatch(off, data):
    return struct.pack("<HB", off, len(data)) + data


write("corpus", "map_record", "one-region-some-held",
      bytes([0x00]) + mpatch(96, struct.pack("<Q", 0x8000000000000005)))
write("corpus", "map_record", "three-regions-held",
      bytes([0x2e]) + mpatch(224, struct.pack("<QQ", 0xffffffffffffffff, 0x3)))
write("corpus", "map_record", "first-word-moved",
      bytes([0x01]) + mpatch(64, struct.pack("<Q", 1)) + mpatch(160, b"\xff" * 16))
# Hostile files a crashed or other run could leave: a region whose size outgrows its bits, a
# first word far past the bitmap (overflow), a unit that is not a power of two.
write("regressions", "map_record", "size-outgrows-bits",
      bytes([0x00]) + mpatch(48, struct.pack("<Q", 1 << 40)))
write("regressions", "map_record", "first-word-overflows",
      bytes([0x01]) + mpatch(128, struct.pack("<Q", (1 << 64) - 1)))
write("regressions", "map_record", "unit-not-a-power-of-two",
      bytes([0x00]) + mpatch(56, struct.pack("<Q", 12288)))

# ---- fd_store: entries separated by 0xFF: name, NUL, content.
def entry(name, content):
    return name.encode() + b"\0" + (content if isinstance(content, bytes) else content.encode())


record = json.dumps({"version": 1, "config": ADOPT_CONFIG, "fds": ["a", "b"]})
write("corpus", "fd_store", "one-device",
      b"\xff".join([entry("iopfd-adopted/vm1/fd0", "x"), entry("iopfd-adopted/vm1/fd1", "y"),
                    entry("iopfd-adopted/vm1", record), entry("control", "")]))
write("corpus", "fd_store", "ledger-and-orphans",
      b"\xff".join([entry("iopfd-adopted/vm2/fd0", "x"), entry("iopfd-adopted/vm2/fd1", "y"),
                    entry("iopfd-adopted/vm2/fd2", "z"),
                    entry("iopfd-adopted/vm2", json.dumps(
                        {"version": 1, "config": ADOPT_CONFIG,
                         "fds": ["a", "b", "iopfd-adopted/ledger"]})),
                    entry("iopfd-adopted/orphan/fd0", "o"), entry("iopfd-adopted/x/y", "?")]))
write("corpus", "fd_store", "configured-ledgers",
      b"\xff".join([entry("iopfd-ledger/a", "LEDGER"), entry("iopfd-ledger/a/fault", ""),
                    entry("iopfd-ledger/b", "LEDGER"), entry("iopfd-ledger/b/fault", ""),
                    entry("iopfd-ledger/c", "not a ledger"), entry("iopfd-ledger/c/fault", ""),
                    entry("iopfd-ledger/d/fault", ""), entry("iopfd-ledger/x/y", "?")]))
write("regressions", "fd_store", "huge-index",
      b"\xff".join([entry("iopfd-adopted/d/fd99999999", "h"),
                    entry("iopfd-adopted/d/fd18446744073709551615", "w")]))
write("regressions", "fd_store", "version-string",
      entry("iopfd-adopted/d", json.dumps({"version": "1", "config": "", "fds": []})))
write("regressions", "fd_store", "version-1e20",
      entry("iopfd-adopted/d", '{"version":1e20,"config":"","fds":[]}'))

# ---- http_request: byte 0 the client's piece size - 1, then the bytes it sends.
def http(name, piece, data):
    write("corpus", "http_request", name, bytes([piece - 1]) + data.encode())


http("get", 256, "GET /metrics HTTP/1.1\r\nHost: localhost:10960\r\nAccept: */*\r\n\r\n")
http("get-in-bytes", 1, "GET /metrics?x=1 HTTP/1.0\nHost: a\n\n")
http("head", 7, "HEAD /metrics HTTP/1.1\r\n\r\n")
http("post-with-body", 16, "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
http("other-path", 256, "GET /../etc/passwd HTTP/1.1\r\n\r\n")
http("http2", 256, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
http("folded", 3, "GET /metrics HTTP/1.1\r\nA: b\r\n c\r\n\r\n")
http("oversized", 64, "GET /metrics HTTP/1.1\r\nX: " + "a" * 600 + "\r\n\r\n")
http("no-end", 256, "GET /metrics HTTP/1.1\r\nHost: x\r\n")


# ---- ctl_reply: the bytes a daemon sends (NUL-terminated replies).
def reply(params=None, error=None, continues=False):
    m = {}
    if error:
        m["error"] = error
    if params is not None:
        m["parameters"] = params
    if continues:
        m["continues"] = True
    return json.dumps(m).encode() + b"\0"


status = {"version": "0.1.0", "uptime_usec": 123456789, "devices_configured": 2,
          "devices_running": 1, "devices_detached": 0, "devices_adopted": 1,
          "devices_quarantined": 0, "health": "ok",
          "uevents": {"listening": True, "received": 3, "delivered": 1, "malformed": 0,
                      "foreign": 2, "overruns": 0},
          "fd_store": {"enabled": True, "kept": 3, "room": 256}}
devices = {"devices": [{"name": "dev0", "attach": "vfio", "origin": "config", "state": "running",
                        "epoch": 2, "halt": "reset", "pasids": [0, 5],
                        "faults": 100, "groups_answered": 99}]}
stats = {"devices": [{"name": "dev0", "faults": 1000, "responses_success": 990,
                      "responses_invalid": 10, "latency_ns": {"p50": 1200, "p99": 54000},
                      "batch": {"p50": 8, "p99": 64},
                      "invalid_by_reason": {"no_region": 4, "permission": 6}}],
         "text": "# HELP iopfd_faults_total x\n"}
write("corpus", "ctl_reply", "status-devices-stats",
      reply(status) + reply(devices) + reply(stats))
write("corpus", "ctl_reply", "drain-and-monitor",
      reply({"state": "resetting", "epoch": 3}) + reply({"event": "subscribed"}, continues=True) +
      reply({"event": "state_changed", "device": "dev0", "detail": "reset", "state": "running",
             "previous_state": "resuming", "epoch": 4}, continues=True) +
      reply({"added": ["a"], "removed": [], "restarted": ["b"], "kept": [], "failed": [
          {"device": "c", "error": "attach: EBUSY"}]}))
write("corpus", "ctl_reply", "errors",
      reply({"device": "dev0", "state": "halting", "reason": "no"}, error="io.iopfd.InvalidState") +
      reply({"errors": ["f:1:2: bad"]}, error="io.iopfd.InvalidConfig") + b"{\"error\":3}\0")
