#!/usr/bin/env python3
"""walship performance benchmark (make bench): starts its own PostgreSQL 15 clusters on loopback, measures
walship against PostgreSQL's own tools in the same run, prints one table of ratios and writes it as JSON
under bench/results/. Method and knobs: docs/performance.md. Standard library only."""
import atexit
import datetime
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALSHIP_BIN = os.environ.get("WALSHIP_BIN", os.path.join(REPO, ".build/release/walship"))
PG_BINDIR = os.environ.get("PG_BINDIR") or "/usr/lib/postgresql/15/bin"


def knob(name, default, kind=int):
    return kind(os.environ.get(name, default))


WAL_MB = knob("BENCH_WAL_MB", 512)              # the catch-up backlog
# Each contender ships the backlog this many times, in alternating order; the table takes the medians. One
# shipping lasts about a second, and single runs of pg_receivewal varied by 10 % from one bench to the next.
CATCHUP_ROUNDS = knob("BENCH_CATCHUP_ROUNDS", 3)
WAN_WAL_MB = knob("BENCH_WAN_WAL_MB", 128)      # a second backlog, shipped through the WAN proxy
WAN_DELAY_MS = knob("BENCH_WAN_DELAY_MS", 30, float)  # one-way, each direction
WAN_MBIT = knob("BENCH_WAN_MBIT", 100, float)
PGBENCH_SCALE = knob("BENCH_SCALE", 20)
LAG_SECONDS = knob("BENCH_LAG_SECONDS", 60)
LAG_RATE = knob("BENCH_LAG_RATE", 200)          # pgbench -R transactions per second during the lag probe
PROBE_INTERVAL = knob("BENCH_PROBE_INTERVAL_MS", 100) / 1000
SYNC_SECONDS = knob("BENCH_SYNC_SECONDS", 15)
SYNC_ROUNDS = knob("BENCH_SYNC_ROUNDS", 3)
SYNC_CHECKPOINT = knob("BENCH_SYNC_CHECKPOINT", 1)  # a CHECKPOINT before each synchronous round
# One client is bound by the commit's round trip; eight keep both cores of the benchmark machine busy.
SYNC_CLIENTS = [int(c) for c in os.environ.get("BENCH_SYNC_CLIENTS", "1,8").split(",")]
# Set: every standby streams in every synchronous round (the method up to the eighth round of
# performance.md) instead of only the one under test.
SYNC_NEIGHBOURS = bool(os.environ.get("BENCH_SYNC_NEIGHBOURS"))
KEEP = bool(os.environ.get("BENCH_KEEP"))
# Profile mode: only the loopback catch-up (walship over TLS, pg_receivewal --no-sync) under perf record,
# reports written to this directory; no table.
PERF_DIR = os.environ.get("BENCH_PERF")
RESULTS_DIR = os.environ.get("BENCH_RESULTS_DIR", os.path.join(REPO, "bench/results"))
# The archive section (object store, scripts/s3-server.sh): the backlog each tool uploads, how many segments each
# restores one restore_command call at a time, and whether to run only this section (BENCH_ONLY=archive).
ARCHIVE_WAL_MB = knob("BENCH_ARCHIVE_WAL_MB", 256)
ARCHIVE_GET_SEGMENTS = knob("BENCH_ARCHIVE_GET_SEGMENTS", 16)
ONLY = os.environ.get("BENCH_ONLY", "")

AS_ROOT = os.geteuid() == 0
# PostgreSQL refuses to run as root; setpriv execs (no fork), so the child's PID is the program's own.
AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] if AS_ROOT else []
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024

workdir = None
children = []          # every Popen started, stopped at exit
clusters = []          # data directories of started postmasters


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- processes and cleanup

def cleanup():
    for child in reversed(children):
        if child.poll() is None:
            try:
                child.terminate()
            except OSError:
                pass
    deadline = time.monotonic() + 5
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    children.clear()
    for pgdata in clusters:
        stop_cluster(pgdata)
    clusters.clear()
    stop_stores()
    if workdir and not KEEP:
        shutil.rmtree(workdir, ignore_errors=True)


def stop_cluster(pgdata, mode="immediate"):
    pidfile = os.path.join(pgdata, "postmaster.pid")
    if not os.path.exists(pidfile):
        return
    subprocess.run(AS_POSTGRES + [f"{PG_BINDIR}/pg_ctl", "-D", pgdata, "-m", mode, "-w", "-t", "30", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # pg_ctl failed (or timed out): the postmaster's own PID, never a name pattern
        with open(pidfile) as f:
            pid = int(f.readline())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def spawn(argv, logname, env=None):
    out = open(os.path.join(workdir, logname), "ab")
    child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    out.close()
    children.append(child)
    return child


def reap(child):
    """The child's resource usage (CPU, peak RSS) from wait4 once it has exited, else None. Popen.poll() would
    reap it without the usage, so exits are collected here."""
    if child.returncode is not None:
        return getattr(child, "usage", {"cpu_seconds": 0.0, "max_rss_bytes": 0})
    pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
    if pid != child.pid:
        return None
    child.returncode = os.waitstatus_to_exitcode(status)
    child.usage = {"cpu_seconds": rusage.ru_utime + rusage.ru_stime, "max_rss_bytes": rusage.ru_maxrss * 1024}
    if child in children:
        children.remove(child)
    return child.usage


def stop(child, sig=signal.SIGTERM, timeout=15):
    """Stops a child and returns its resource usage."""
    if child.returncode is None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while (usage := reap(child)) is None:
        if time.monotonic() > deadline:
            os.kill(child.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    return usage


def proc_sample(pid):
    """CPU seconds so far (utime+stime) and peak RSS (VmHWM) of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    memory = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                memory[key] = int(line.split()[1]) * 1024
    return {"cpu_seconds": cpu, "max_rss_bytes": memory.get("VmHWM", 0), "rss_bytes": memory.get("VmRSS", 0),
            "rss_anon_bytes": memory.get("RssAnon", 0), "rss_file_bytes": memory.get("RssFile", 0)}


def wait_for(what, condition, timeout, interval=0.1, alive=()):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for child in alive:
            if reap(child) is not None:
                raise RuntimeError(f"{what}: a process it needs exited (status {child.returncode}, see {workdir})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, **kwargs)


# ---------------------------------------------------------------- LSNs and a minimal PostgreSQL client

def parse_lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value):
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class PG:
    """The simple query protocol over TCP with trust authentication: enough to time a probe to the
    millisecond, which a psql process per query cannot."""

    def __init__(self, port, database="postgres", timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = self.sock.makefile("rb")
        body = struct.pack("!I", 196608) + b"user\0postgres\0database\0" + database.encode() + b"\0\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self._until_ready()

    def _message(self):
        header = self.stream.read(5)
        if len(header) < 5:
            raise ConnectionError("server closed the connection")
        kind, length = header[:1], struct.unpack("!I", header[1:])[0]
        return kind, self.stream.read(length - 4)

    def _until_ready(self):
        rows, error = [], None
        while True:
            kind, payload = self._message()
            if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                raise RuntimeError("the benchmark's client supports trust authentication only")
            if kind == b"D":
                count = struct.unpack("!H", payload[:2])[0]
                offset, row = 2, []
                for _ in range(count):
                    size = struct.unpack("!i", payload[offset:offset + 4])[0]
                    offset += 4
                    row.append(None if size < 0 else payload[offset:offset + size].decode())
                    offset += max(size, 0)
                rows.append(row)
            elif kind == b"E":
                fields = dict((p[:1], p[1:].decode(errors="replace")) for p in payload.split(b"\0") if p)
                error = fields.get(b"M", "error")
            elif kind == b"Z":
                if error:
                    raise RuntimeError(error)
                return rows

    def query(self, sql):
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
        return self._until_ready()

    def value(self, sql):
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def close(self):
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()


def sql(port, statement, database="postgres"):
    connection = PG(port, database)
    try:
        return connection.value(statement)
    finally:
        connection.close()


def try_sql(port, statement, database="postgres"):
    try:
        return sql(port, statement, database)
    except (OSError, RuntimeError, ConnectionError):
        return None


# ---------------------------------------------------------------- clusters

def chown_to_postgres(path):
    if AS_ROOT:
        run(["chown", "-R", "postgres:postgres", path])


def start_cluster(pgdata, port, extra_conf=""):
    with open(os.path.join(pgdata, "postgresql.conf"), "a") as f:
        f.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{workdir}'\n{extra_conf}\n")
    clusters.append(pgdata)
    restart_cluster(pgdata)


def restart_cluster(pgdata):
    """Starts a configured cluster again (after stop_cluster)."""
    run(AS_POSTGRES + [f"{PG_BINDIR}/pg_ctl", "-D", pgdata, "-l", pgdata + ".log", "-w", "-t", "120", "start"],
        stdout=subprocess.DEVNULL)


def make_primary(name):
    pgdata = os.path.join(workdir, name)
    run(AS_POSTGRES + [f"{PG_BINDIR}/initdb", "-D", pgdata, "-A", "trust", "-U", "postgres"], stdout=subprocess.DEVNULL)
    port = free_port()
    start_cluster(pgdata, port, """wal_level = replica
max_wal_senders = 20
max_replication_slots = 20
shared_buffers = 256MB
max_wal_size = 1GB
checkpoint_timeout = 1min
wal_keep_size = 0
synchronous_standby_names = ''""")
    return pgdata, port


def pgbench_env(port, **options):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres", PGDATABASE="bench")
    if options:
        env["PGOPTIONS"] = " ".join(f"-c {k}={v}" for k, v in options.items())
    return env


def set_primary_conninfo(port, conninfo):
    """Points a standby elsewhere without a restart; an empty conninfo stops its walreceiver."""
    sql(port, f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
    sql(port, "SELECT pg_reload_conf()")


def set_sync_standby(port, name):
    sql(port, f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
    sql(port, "SELECT pg_reload_conf()")
    if name:
        wait_for(f"{name} to be the synchronous standby",
                 lambda: try_sql(port, f"SELECT 1 FROM pg_stat_replication WHERE application_name = '{name}' "
                                       "AND sync_state = 'sync'"), 60)
    else:
        wait_for("no synchronous standby", lambda: try_sql(port, "SHOW synchronous_standby_names") == "", 10)


# ---------------------------------------------------------------- walship processes

class Walship:
    """A receiver and a sender, TLS or plaintext, with their status endpoints."""

    def __init__(self, binary, certs):
        self.binary, self.certs = binary, certs
        self.receiver = self.sender = None
        self.paused_sender_usage = []  # senders stopped by pause_sender since the last stop

    def tls(self, end, insecure):
        if insecure:
            return ["--insecure"]
        return ["--tls-cert", f"{self.certs}/{end}.crt", "--tls-key", f"{self.certs}/{end}.key",
                "--tls-ca", f"{self.certs}/ca.crt"]

    def start_receiver(self, spool, port, status_port, insecure=False, standby_port=None, tag="receiver", extra=()):
        argv = AS_POSTGRES + [self.binary, "receive", "--listen", f"127.0.0.1:{port}", "--spool", spool,
                              "--status-listen", f"127.0.0.1:{status_port}"] + self.tls("receiver", insecure)
        if standby_port:
            argv += ["--standby-listen", f"127.0.0.1:{standby_port}", "--standby-trust"]
        argv += list(extra)
        self.receiver = spawn(argv, tag + ".log")
        self.receiver_status = status_port
        wait_for("the receiver's status endpoint", lambda: status(status_port), 30, alive=[self.receiver])

    def start_sender(self, primary_port, to_port, slot, status_port, insecure=False, sync=False,
                     application_name="walship_bench", tag="sender", extra=()):
        argv = AS_POSTGRES + [self.binary, "send", "--source", f"host=127.0.0.1 port={primary_port} user=postgres",
                              "--to", f"127.0.0.1:{to_port}", "--slot", slot, "--create-slot",
                              "--application-name", application_name,
                              "--status-listen", f"127.0.0.1:{status_port}"] + self.tls("sender", insecure)
        if sync:
            argv.append("--sync")
        argv += list(extra)
        self.sender_argv, self.sender_log = argv, tag + ".log"
        self.sender = spawn(argv, self.sender_log)
        self.sender_status = status_port
        wait_for("the sender's status endpoint", lambda: status(status_port), 30, alive=[self.sender])

    def pause_sender(self):
        """Stops the sender; its slot keeps the WAL for resume_sender."""
        self.paused_sender_usage.append(stop(self.sender))
        self.sender = None

    def resume_sender(self):
        self.sender = spawn(self.sender_argv, self.sender_log)
        wait_for("the sender's status endpoint", lambda: status(self.sender_status), 30, alive=[self.sender])

    def sample(self):
        """CPU seconds so far and current/peak RSS of both processes (from /proc)."""
        return {"sender": proc_sample(self.sender.pid), "receiver": proc_sample(self.receiver.pid)}

    def durable_lsn(self):
        return chain_lsn(status(self.receiver_status), "durable")

    def stop(self):
        usage = {}
        senders = self.paused_sender_usage + ([stop(self.sender)] if self.sender else [])
        if senders:
            usage["sender"] = max(senders, key=lambda u: u["max_rss_bytes"])
        if self.receiver:
            usage["receiver"] = stop(self.receiver)
        self.sender = self.receiver = None
        self.paused_sender_usage = []
        return usage


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def chain_lsn(document, stage):
    for system in (document or {}).get("systems", []):
        for entry in system.get("chain", []):
            if entry.get("name") == stage and entry.get("lsn"):
                return parse_lsn(entry["lsn"])
    return 0


# ---------------------------------------------------------------- 1. catch-up

def generate_backlog(port, slots, megabytes):
    """A pgbench WAL backlog of `megabytes`, held by one slot per contender, all created at the same LSN. The
    backlog ends where the primary's WAL ends, so a contender never ships (or a proxy counts) WAL beyond it."""
    sql(port, "CHECKPOINT")
    names = ",".join(f"'{s}'" for s in slots)
    sql(port, f"SELECT count(*) FROM unnest(ARRAY[{names}]) s, pg_create_physical_replication_slot(s, true)")
    # A physical slot reserves from the last checkpoint's redo pointer, so all of them start together.
    starts = {sql(port, f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{s}'") for s in slots}
    if len(starts) != 1:
        raise RuntimeError(f"the contenders' slots start at different LSNs: {starts}")
    start = parse_lsn(starts.pop())
    segment_start = start - start % (16 * MiB)  # both walship and pg_receivewal start at the segment's start
    log(f"generating {megabytes} MiB of pgbench WAL from {format_lsn(start)}")
    writer = spawn([f"{PG_BINDIR}/pgbench", "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "3600"], "pgbench-backlog.log",
                   env=pgbench_env(port, synchronous_commit="off"))
    wait_for("the backlog", lambda: parse_lsn(sql(port, "SELECT pg_current_wal_lsn()")) >= segment_start + megabytes * MiB,
             1800, interval=0.2, alive=[writer])
    stop(writer, signal.SIGINT, timeout=30)
    end = parse_lsn(sql(port, "SELECT pg_current_wal_lsn()"))
    wait_for("the backlog flushed", lambda: parse_lsn(sql(port, "SELECT pg_current_wal_flush_lsn()")) >= end, 30)
    log(f"backlog {format_lsn(segment_start)} .. {format_lsn(end)} ({(end - segment_start) / MiB:.0f} MiB)")
    return segment_start, end


def catchup_walship(walship, primary_port, slot, start, end, insecure, wan=None, sender_extra=()):
    spool = os.path.join(workdir, f"spool-{slot}")
    os.makedirs(spool)
    chown_to_postgres(spool)
    receiver_port, receiver_status, sender_status = free_port(), free_port(), free_port()
    proxy = None
    to_port = receiver_port
    if wan:
        to_port, proxy, stats_file = start_wan_proxy(receiver_port, f"proxy-{slot}")
    walship.start_receiver(spool, receiver_port, receiver_status, insecure=insecure, tag=f"receiver-{slot}")
    started = time.monotonic()
    walship.start_sender(primary_port, to_port, slot, sender_status, insecure=insecure, tag=f"sender-{slot}",
                         extra=sender_extra)
    profilers = [perf_record(walship.sender.pid, f"walship-send-{slot}"),
                 perf_record(walship.receiver.pid, f"walship-receive-{slot}")] if PERF_DIR else []
    peak = {"sender": 0, "receiver": 0}

    def done():
        for role, child in (("sender", walship.sender), ("receiver", walship.receiver)):
            peak[role] = max(peak[role], proc_sample(child.pid)["max_rss_bytes"])
        return walship.durable_lsn() >= end

    wait_for(f"walship ({slot}) to hold the backlog durably", done, 3600, interval=0.05,
             alive=[walship.sender, walship.receiver])
    elapsed = time.monotonic() - started
    sample = {"sender": proc_sample(walship.sender.pid), "receiver": proc_sample(walship.receiver.pid)}
    sender_doc = status(sender_status) or {}
    for profiler in profilers:
        stop(profiler, signal.SIGINT, timeout=120)
    walship.stop()
    wire = None
    if proxy:
        stop(proxy)  # writes its final count
        with open(stats_file) as f:
            wire = json.load(f)["up"]
    counters = sender_doc.get("sender", {})
    wal = end - start
    result = {
        "seconds": elapsed, "wal_bytes": wal, "mb_per_s": wal / MiB / elapsed,
        "cpu_seconds": sample["sender"]["cpu_seconds"] + sample["receiver"]["cpu_seconds"],
        "cpu_seconds_sender": sample["sender"]["cpu_seconds"], "cpu_seconds_receiver": sample["receiver"]["cpu_seconds"],
        "rss_sender_bytes": max(peak["sender"], sample["sender"]["max_rss_bytes"]),
        "rss_receiver_bytes": max(peak["receiver"], sample["receiver"]["max_rss_bytes"]),
        "wal_bytes_sent": counters.get("walBytesSent"), "wire_bytes_sent": counters.get("wireBytesSent"),
        "compression": counters.get("compression"), "wal_frames": counters.get("walFramesSent"),
        "wal_frames_high_compression": counters.get("walFramesHighCompression"),
        "memory_at_done": sample,
    }
    result["cpu_seconds_per_gb"] = result["cpu_seconds"] / (wal / 1024 ** 3)
    # Wire bytes per WAL byte: the proxy's count where the link runs through it (TLS records included),
    # else walship's own counters (frame bytes, before TLS).
    if wire is not None:
        result["wire_per_wal"] = wire / wal
        result["wire_counted_by"] = "proxy"
    elif counters.get("walBytesSent"):
        result["wire_per_wal"] = counters["wireBytesSent"] / counters["walBytesSent"]
        result["wire_counted_by"] = "walship counters"
    shutil.rmtree(spool, ignore_errors=True)
    sql(primary_port, f"SELECT pg_drop_replication_slot('{slot}')")
    return result


def median_run(runs):
    """One contender's catch-up rounds as one result: the round of median throughput, with the median CPU per GB
    and the highest peak RSS of all rounds; every round's throughput and CPU kept beside."""
    ordered = sorted(runs, key=lambda r: r["mb_per_s"])
    result = dict(ordered[len(ordered) // 2])
    result["cpu_seconds_per_gb"] = statistics.median(r["cpu_seconds_per_gb"] for r in runs)
    for key in ("rss_sender_bytes", "rss_receiver_bytes", "rss_bytes"):
        if key in result:
            result[key] = max(r[key] for r in runs)
    result["rounds"] = [{"mb_per_s": r["mb_per_s"], "cpu_seconds_per_gb": r["cpu_seconds_per_gb"]} for r in runs]
    return result


def catchup_receivewal(primary_port, slot, start, end, durable, wan=False):
    directory = os.path.join(workdir, f"receivewal-{slot}")
    os.makedirs(directory)
    chown_to_postgres(directory)
    port, proxy = primary_port, None
    if wan:
        port, proxy, stats_file = start_wan_proxy(primary_port, f"proxy-{slot}")
    argv = AS_POSTGRES + [f"{PG_BINDIR}/pg_receivewal", "-D", directory, "--slot", slot, "--compress=lz4",
                          "-E", format_lsn(end), "--no-loop", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    if not durable:
        argv.append("--no-sync")
    started = time.monotonic()
    child = spawn(argv, f"pg_receivewal-{slot}.log")
    profiler = perf_record(child.pid, f"pg_receivewal-{slot}") if PERF_DIR else None
    peak = 0
    while (usage := reap(child)) is None:  # VmHWM is read while the process lives
        try:
            peak = max(peak, proc_sample(child.pid)["max_rss_bytes"])
        except OSError:
            pass
        time.sleep(0.02)
        if time.monotonic() - started > 3600:
            raise RuntimeError("pg_receivewal did not reach the end of the backlog")
    elapsed = time.monotonic() - started
    if profiler:
        stop(profiler, signal.SIGINT, timeout=120)
    if child.returncode != 0:
        raise RuntimeError(f"pg_receivewal failed (status {child.returncode}); see {workdir}/pg_receivewal-{slot}.log")
    wal = end - start
    wire = None
    if proxy:
        stop(proxy)
        with open(stats_file) as f:
            wire = json.load(f)["down"]
    stored = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
    shutil.rmtree(directory, ignore_errors=True)
    sql(primary_port, f"SELECT pg_drop_replication_slot('{slot}')")
    return {"seconds": elapsed, "wal_bytes": wal, "mb_per_s": wal / MiB / elapsed,
            "cpu_seconds": usage["cpu_seconds"], "cpu_seconds_per_gb": usage["cpu_seconds"] / (wal / 1024 ** 3),
            "rss_bytes": max(peak, usage["max_rss_bytes"]), "stored_bytes": stored,
            # The replication protocol carries WAL uncompressed; --compress only shrinks the files.
            "wire_per_wal": (wire / wal) if wire is not None else 1.0,
            "wire_counted_by": "proxy" if wire is not None else "protocol (uncompressed XLogData)"}


def perf_record(pid, name):
    """perf record of one process with call graphs; stopped with SIGINT, reported by perf_report."""
    os.makedirs(PERF_DIR, exist_ok=True)
    return spawn(["perf", "record", "-F", "999", "-g", "-o", os.path.join(PERF_DIR, name + ".data"), "-p", str(pid)],
                 f"perf-{name}.log")


def perf_report():
    for name in sorted(os.listdir(PERF_DIR)):
        if name.endswith(".data"):
            data = os.path.join(PERF_DIR, name)
            with open(data[:-5] + ".txt", "w") as out:
                subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol",
                                "--percent-limit", "0.5", "--stdio", "-g", "none"],
                               stdout=out, stderr=subprocess.DEVNULL)
            log(f"profile: {data[:-5]}.txt")


def start_wan_proxy(target_port, name):
    port = free_port()
    stats_file = os.path.join(workdir, name + ".json")
    proxy = spawn([sys.executable, os.path.join(REPO, "scripts/wan-proxy.py"), str(port), str(target_port),
                   "--delay-ms", str(WAN_DELAY_MS), "--mbit", str(WAN_MBIT), "--stats", stats_file], name + ".log")
    wait_for("the WAN proxy", lambda: os.path.exists(stats_file), 10, alive=[proxy])
    return port, proxy, stats_file


# ---------------------------------------------------------------- 2. streaming lag

def probe_lag(primary_port, standbys, seconds, rate, tag):
    """Commits a marker row every PROBE_INTERVAL under pgbench -R load and times, from the moment the INSERT
    is sent, its appearance on each standby (polled every 0.5 ms by one thread per standby)."""
    load = spawn([f"{PG_BINDIR}/pgbench", "-n", "-c", "4", "-j", "2", "-R", str(rate), "-T", str(seconds + 5)],
                 f"pgbench-lag-{tag}.log", env=pgbench_env(primary_port))
    time.sleep(2)  # let the load settle
    primary = PG(primary_port, "bench")
    watchers = {name: PG(port, "bench") for name, port in standbys.items()}
    latencies = {name: [] for name in standbys}
    try:
        deadline = time.monotonic() + seconds
        marker = int(time.time() * 1000) % 1_000_000_000
        while time.monotonic() < deadline:
            marker += 1
            sent = [0.0]
            seen = {}
            armed = threading.Event()

            def watch(name, connection, marker=marker):
                armed.wait()
                query = f"SELECT 1 FROM bench_probe WHERE id = {marker}"
                give_up = time.monotonic() + 30
                while time.monotonic() < give_up:
                    if connection.query(query):
                        seen[name] = time.monotonic() - sent[0]
                        return
                    time.sleep(0.0005)

            threads = [threading.Thread(target=watch, args=item) for item in watchers.items()]
            for t in threads:
                t.start()
            sent[0] = time.monotonic()
            armed.set()
            primary.query(f"INSERT INTO bench_probe (id) VALUES ({marker})")
            for t in threads:
                t.join()
            for name in standbys:
                if name not in seen:
                    raise RuntimeError(f"probe row {marker} never appeared on the {name} standby")
                latencies[name].append(seen[name] * 1000)
            time.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - sent[0])))
    finally:
        primary.close()
        for connection in watchers.values():
            connection.close()
        stop(load, signal.SIGINT)
    return {name: summarize(values) for name, values in latencies.items()}


def summarize(values):
    ordered = sorted(values)

    def percentile(p):
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    return {"samples": len(ordered), "p50_ms": percentile(50), "p99_ms": percentile(99), "max_ms": ordered[-1],
            "mean_ms": statistics.fmean(ordered)}


# ---------------------------------------------------------------- 3. synchronous cost

def pgbench_tps(port, seconds, tag, clients):
    output = subprocess.run([f"{PG_BINDIR}/pgbench", "-n", "-c", str(clients), "-j", str(min(clients, 2)),
                             "-T", str(seconds)],
                            env=pgbench_env(port), capture_output=True, text=True, check=True).stdout
    with open(os.path.join(workdir, f"pgbench-{tag}.log"), "a") as f:
        f.write(output)
    for line in output.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError("pgbench printed no tps line")


class Streaming:
    """Which standbys run in a synchronous round: only what the configuration under test needs (the walship
    chain with its DR standby, or the native standby; nothing for the round without a synchronous standby).
    All of them live on this one machine, so a standby running beside the one under test would share its
    disk and cores, which two sites do not: the later of two fsyncs on one disk waits for the earlier, and
    the walship chain, three hops from the primary, always fsyncs later than a native standby (ninth round
    in performance.md). A standby that is off is shut down, not only cut off from its upstream: the DR
    standby's restore_command would otherwise restore the spool's growing segment again every retry
    interval, 20-40 MB/s of writes on the disk the synchronous standby fsyncs on (tenth round)."""

    NEEDS = {"none": set(), "native": {"native"}, "walship": {"walship", "dr"}, "walship_without_dr": {"walship"}}

    def __init__(self, primary_port, walship, standbys):
        self.primary_port, self.walship = primary_port, walship
        self.standbys = standbys  # "native"/"dr": (port, data directory)
        self.on = {"native": True, "walship": True, "dr": True}

    def only(self, contender):
        self.exactly(set(self.on) if SYNC_NEIGHBOURS else self.NEEDS[contender])

    def all(self):
        self.exactly(set(self.on))

    def exactly(self, wanted):
        for name in self.on:  # stop first, then start
            if self.on[name] and name not in wanted:
                self.switch(name, False)
        for name in ("walship", "dr", "native"):  # the DR standby streams from the running chain
            if not self.on[name] and name in wanted:
                self.switch(name, True)

    def switch(self, name, on):
        self.on[name] = on
        if name != "walship":
            port, pgdata = self.standbys[name]
            if on:
                restart_cluster(pgdata)
            else:
                stop_cluster(pgdata, "fast")
        elif on:
            self.walship.resume_sender()
        else:
            self.walship.pause_sender()
        if name == "dr":
            self.wait_for_dr(on)
            return
        primary = self.primary_port
        application = "native_replica" if name == "native" else "walship_bench"
        if not on:
            wait_for(f"the {name} standby to stop streaming",
                     lambda: try_sql(primary, "SELECT count(*) FROM pg_stat_replication "
                                              f"WHERE application_name = '{application}'") == "0", 60)
            return
        # Caught up with what the primary wrote meanwhile, so the round measures commits, not a catch-up.
        target = parse_lsn(sql(primary, "SELECT pg_current_wal_lsn()"))
        if name == "native":
            def flushed():
                lsn = try_sql(primary, "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = "
                                       "'native_replica' AND state = 'streaming'")
                return bool(lsn) and parse_lsn(lsn) >= target
            wait_for("the native standby to catch up", flushed, 300)
        else:
            wait_for("the walship chain to catch up", lambda: self.walship.durable_lsn() >= target, 300,
                     alive=[self.walship.sender, self.walship.receiver])

    def wait_for_dr(self, on):
        port, _ = self.standbys["dr"]
        if not on:
            wait_for("the DR standby to disconnect", lambda: not standbys_connected(self.walship.receiver_status), 60)
            return
        target = self.walship.durable_lsn()
        def received():
            lsn = try_sql(port, "SELECT pg_last_wal_receive_lsn()")
            return standbys_connected(self.walship.receiver_status) and bool(lsn) and parse_lsn(lsn) >= target
        wait_for("the DR standby to catch up", received, 300)


def sync_rounds(primary_port, contenders, tag, walship, streaming):
    """TPS for each synchronous_standby_names setting and client count, interleaved over SYNC_ROUNDS rounds;
    the median. For walship's rounds also the sender's and receiver's CPU per commit and the receiver's RSS
    after each round."""
    summary = {"method": ("all standbys streaming" if SYNC_NEIGHBOURS else "only what the configuration needs running (the other standbys shut down)")
               + "; contenders in reverse order every other round" + ("; a CHECKPOINT before each" if SYNC_CHECKPOINT else "")}
    results = {clients: {name: [] for name in contenders} for clients in SYNC_CLIENTS}
    per_commit = {clients: [] for clients in SYNC_CLIENTS}
    for round_number in range(SYNC_ROUNDS):
        for clients in SYNC_CLIENTS:
            # Every other round in reverse, so no contender always follows the same one.
            order = list(contenders.items())
            if round_number % 2:
                order.reverse()
            for name, standby_name in order:
                streaming.only(name)
                set_sync_standby(primary_port, standby_name)
                if SYNC_CHECKPOINT:
                    # Each round starts right after a checkpoint, so each writes the same share of full-page
                    # images instead of whatever the 1-minute checkpoint cycle happens to be at.
                    sql(primary_port, "CHECKPOINT")
                measured = name == "walship"
                before = walship.sample() if measured else None
                commits = int(sql(primary_port, "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'"))
                tps = pgbench_tps(primary_port, SYNC_SECONDS, f"sync-{tag}-{name}-c{clients}", clients)
                commits = int(sql(primary_port, "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")) - commits
                log(f"  sync round {round_number + 1}, {clients} client(s), {name}: {tps:.0f} tps")
                results[clients][name].append(tps)
                if measured:
                    after = walship.sample()
                    per_commit[clients].append(
                        {role: {"cpu_ms_per_commit": (after[role]["cpu_seconds"] - before[role]["cpu_seconds"])
                                * 1000 / max(commits, 1), "rss_bytes_after": after[role]["rss_bytes"]}
                         for role in after})
    set_sync_standby(primary_port, "")
    streaming.all()
    for clients in SYNC_CLIENTS:
        block = {name: {"tps": statistics.median(values), "rounds": values} for name, values in results[clients].items()}
        block["walship_per_round"] = per_commit[clients]
        summary[str(clients)] = block
    return summary


# ---------------------------------------------------------------- 4. promote

def first_write(port, started, timeout=60):
    def attempt():
        try:
            sql(port, "INSERT INTO bench_probe (id) VALUES (-1) ON CONFLICT DO NOTHING", "bench")
            return time.monotonic()
        except (OSError, RuntimeError, ConnectionError):
            return None
    return wait_for("the first accepted write", attempt, timeout, interval=0.01) - started


# ---------------------------------------------------------------- the run

def main():
    global workdir
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(cleanup)
    if not os.access(WALSHIP_BIN, os.X_OK):
        sys.exit(f"no walship binary at {WALSHIP_BIN} (make release)")
    workdir = os.path.join(os.environ.get("BENCH_DIR", "/tmp"), f"walship-bench-{os.getpid()}")
    os.makedirs(workdir)
    chown_to_postgres(workdir)
    os.chmod(workdir, 0o755)
    binary = os.path.join(workdir, "walship")  # readable by the postgres OS user, like a DR host's install
    shutil.copy(WALSHIP_BIN, binary)
    os.chmod(binary, 0o755)
    certs = os.path.join(workdir, "certs")
    run([binary, "certs", "init", certs, "--receiver-name", "127.0.0.1", "--sender-name", "bench-primary"],
        stdout=subprocess.DEVNULL)
    chown_to_postgres(certs)
    walship = Walship(binary, certs)
    results = {"facts": machine_facts(), "knobs": knobs(), "catchup": {}, "wan": {}, "lag": {}, "sync": {}, "promote": {}}
    begun = time.monotonic()
    log(f"working in {workdir}")

    primary, primary_port = make_primary("primary")
    results["facts"]["postgresql"] = sql(primary_port, "SHOW server_version")
    log(f"pgbench -i -s {PGBENCH_SCALE}")
    sql(primary_port, "CREATE DATABASE bench")
    run([f"{PG_BINDIR}/pgbench", "-i", "-q", "-s", str(PGBENCH_SCALE)], env=pgbench_env(primary_port),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sql(primary_port, "CREATE TABLE bench_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
        "bench")

    if ONLY == "archive":
        results["archive"] = archive_section(walship, binary, primary, primary_port)
        finish(results, begun)
        return

    # 1. Catch-up, loopback: each contender ships the identical backlog through a slot of its own per round.
    contenders = {
        "walship_tls": ("walship, TLS", lambda slot: catchup_walship(walship, primary_port, slot, start, end, insecure=False)),
        "walship_plain": ("walship, plaintext",
                          lambda slot: catchup_walship(walship, primary_port, slot, start, end, insecure=True)),
        "receivewal_sync": ("pg_receivewal --compress=lz4 (its default fsyncs)",
                            lambda slot: catchup_receivewal(primary_port, slot, start, end, durable=True)),
        "receivewal_nosync": ("pg_receivewal --compress=lz4 --no-sync",
                              lambda slot: catchup_receivewal(primary_port, slot, start, end, durable=False)),
    }
    if PERF_DIR:  # one profile of each side
        contenders = {k: v for k, v in contenders.items() if k in ("walship_tls", "receivewal_nosync")}
    rounds = 1 if PERF_DIR else CATCHUP_ROUNDS
    start, end = generate_backlog(primary_port, [f"{name}_{i}" for name in contenders for i in range(rounds)], WAL_MB)
    results["catchup_backlog"] = {"start": format_lsn(start), "end": format_lsn(end), "bytes": end - start}
    catchup = results["catchup"]
    runs = {name: [] for name in contenders}
    for i in range(rounds):
        for name in (list(contenders) if i % 2 == 0 else reversed(contenders)):
            label, ship = contenders[name]
            log(f"catch-up round {i + 1}: {label}")
            runs[name].append(ship(f"{name}_{i}"))
    for name, rs in runs.items():
        catchup[name] = median_run(rs)
    for name, r in catchup.items():
        high = f", {r['wal_frames_high_compression']} of {r['wal_frames']} frames LZ4HC" if r.get("wal_frames") else ""
        log(f"  {name}: {r['mb_per_s']:.1f} MB/s, {r['cpu_seconds_per_gb']:.1f} CPU s/GB, wire {r['wire_per_wal']:.3f}{high}")
    if PERF_DIR:
        perf_report()
        return

    # The WAN link: a smaller backlog of its own through the delay line, both tools.
    start, end = generate_backlog(primary_port, ["walship_wan", "walship_wan_fast", "receivewal_wan"], WAN_WAL_MB)
    results["wan"]["backlog"] = {"start": format_lsn(start), "end": format_lsn(end), "bytes": end - start}
    log(f"WAN catch-up ({WAN_DELAY_MS:g} ms one way, {WAN_MBIT:g} Mbit/s): walship, TLS")
    results["wan"]["catchup_walship"] = catchup_walship(walship, primary_port, "walship_wan", start, end,
                                                       insecure=False, wan=True)
    # The same backlog with LZ4HC ruled out: what the sender's adaptive compression (--compression auto,
    # the default) gains on a slow link.
    log("WAN catch-up: walship, TLS, --compression fast")
    results["wan"]["catchup_walship_fast"] = catchup_walship(walship, primary_port, "walship_wan_fast", start, end,
                                                            insecure=False, wan=True,
                                                            sender_extra=["--compression", "fast"])
    for name in ("catchup_walship", "catchup_walship_fast"):
        w = results["wan"][name]
        log(f"  {name}: {w['mb_per_s']:.1f} MB/s, wire {w['wire_per_wal']:.3f}, "
            f"{w['wal_frames_high_compression']} of {w['wal_frames']} frames LZ4HC, {w['cpu_seconds_sender']:.2f} s sender CPU")
    log("WAN catch-up: pg_receivewal --compress=lz4 --no-sync")
    results["wan"]["catchup_receivewal"] = catchup_receivewal(primary_port, "receivewal_wan", start, end,
                                                             durable=False, wan=True)

    # 5. The archive tier, here while the primary has no standbys: its own backlog, store and receivers.
    results["archive"] = archive_section(walship, binary, primary, primary_port)

    # 2-4. Streaming: a native standby and a walship chain with its DR standby, side by side.
    standby_port, native_port, dr_port = free_port(), free_port(), free_port()
    receiver_port, receiver_status, sender_status = free_port(), free_port(), free_port()
    native = os.path.join(workdir, "native")
    log("native standby: pg_basebackup")
    # With a slot, as a DBA would give a standby that is sometimes shut down: the synchronous rounds stop it
    # while the primary writes and checkpoints, which would otherwise remove WAL it still needs.
    run(AS_POSTGRES + [f"{PG_BINDIR}/pg_basebackup", "-D", native, "-X", "stream", "-c", "fast",
                       "-C", "-S", "native_replica",
                       "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres"], stdout=subprocess.DEVNULL)
    open(os.path.join(native, "standby.signal"), "w").close()
    chown_to_postgres(native)
    native_conninfo = f"host=127.0.0.1 port={primary_port} user=postgres application_name=native_replica"
    start_cluster(native, native_port, f"primary_conninfo = '{native_conninfo}'\nprimary_slot_name = 'native_replica'\n"
                                       "wal_retrieve_retry_interval = 1s")
    spool = os.path.join(workdir, "spool")
    os.makedirs(spool)
    chown_to_postgres(spool)
    log("walship chain: receive, send, backup, restore")
    walship.start_receiver(spool, receiver_port, receiver_status, standby_port=standby_port)
    walship.start_sender(primary_port, receiver_port, "walship_bench", sender_status, sync=True)
    with open(os.path.join(workdir, "backup.log"), "w") as backup_log:
        run([binary, "backup", "--source", f"host=127.0.0.1 port={primary_port} user=postgres",
             "--to", f"127.0.0.1:{receiver_port}"] + walship.tls("sender", False), stdout=backup_log,
            stderr=subprocess.STDOUT)
    dr = os.path.join(workdir, "dr")
    dr_conninfo = f"host=127.0.0.1 port={standby_port} user=postgres application_name=dr_replica"
    run([binary, "restore", "--spool", spool, "--pgdata", dr, "--standby", "--walship-path", binary,
         "--primary-conninfo", dr_conninfo],
        stdout=subprocess.DEVNULL)
    start_cluster(dr, dr_port, "archive_mode = off\nwal_retrieve_retry_interval = 1s")
    standbys = {"walship": dr_port, "native": native_port}
    for name, port in standbys.items():
        wait_for(f"the {name} standby to replay the probe table",
                 lambda port=port: try_sql(port, "SELECT count(*) FROM bench_probe", "bench") is not None, 120)
    wait_for("both standbys in pg_stat_replication / the receiver",
             lambda: try_sql(primary_port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "2"
             and standbys_connected(receiver_status), 60)

    log(f"lag: probe every {PROBE_INTERVAL * 1000:g} ms for {LAG_SECONDS} s under pgbench -R {LAG_RATE}")
    results["lag"]["loopback"] = probe_lag(primary_port, standbys, LAG_SECONDS, LAG_RATE, "loopback")
    log(f"  {results['lag']['loopback']}")

    streaming = Streaming(primary_port, walship, {"native": (native_port, native), "dr": (dr_port, dr)})
    contenders = {"none": "", "native": "native_replica", "walship": "walship_bench"}
    if not SYNC_NEIGHBOURS:  # with every standby streaming there is no round without the DR standby
        contenders["walship_without_dr"] = "walship_bench"
    log(f"sync TPS, TLS: {SYNC_ROUNDS} rounds of {SYNC_SECONDS} s, clients {SYNC_CLIENTS}, "
        f"{'all standbys streaming' if SYNC_NEIGHBOURS else 'each standby alone'}")
    results["sync"]["tls"] = sync_rounds(primary_port, contenders, "tls", walship, streaming)

    # WAN lag: the walship link and the native standby's replication connection each through a proxy.
    log("WAN lag: sender and native standby through the WAN proxy")
    usage_tls = walship.stop()
    to_port, proxy_walship, _ = start_wan_proxy(receiver_port, "proxy-lag-walship")
    native_via, proxy_native, _ = start_wan_proxy(primary_port, "proxy-lag-native")
    walship.start_receiver(spool, receiver_port, receiver_status, standby_port=standby_port, tag="receiver-wan")
    walship.start_sender(primary_port, to_port, "walship_bench", sender_status, sync=True, tag="sender-wan")
    set_primary_conninfo(native_port, f"host=127.0.0.1 port={native_via} user=postgres application_name=native_replica")
    wait_for("both standbys streaming through the proxies",
             lambda: try_sql(native_port, "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming' "
                                          f"AND conninfo LIKE '%port={native_via}%'") == "1"
             and chain_lsn(status(sender_status), "sent") > 0 and standbys_connected(receiver_status), 60)
    results["wan"]["lag"] = probe_lag(primary_port, standbys, LAG_SECONDS, LAG_RATE, "wan")
    log(f"  {results['wan']['lag']}")
    usage_wan = walship.stop()
    stop(proxy_walship)
    set_primary_conninfo(native_port, native_conninfo)
    stop(proxy_native)

    log("sync TPS, plaintext link")
    walship.start_receiver(spool, receiver_port, receiver_status, insecure=True, standby_port=standby_port,
                           tag="receiver-plain")
    walship.start_sender(primary_port, receiver_port, "walship_bench", sender_status, insecure=True, sync=True,
                         tag="sender-plain")
    wait_for("both standbys streaming on loopback",
             lambda: try_sql(primary_port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "2",
             60)
    results["sync"]["plaintext"] = sync_rounds(primary_port, contenders, "plain", walship, streaming)
    results["streaming_rss"] = {"tls": usage_tls, "wan": usage_wan}

    # 4. Promote: both standbys caught up with an idle primary, then each promoted and timed to a first write.
    target = parse_lsn(sql(primary_port, "SELECT pg_current_wal_lsn()"))
    for name, port in standbys.items():
        wait_for(f"the {name} standby to replay everything",
                 lambda port=port: parse_lsn(sql(port, "SELECT pg_last_wal_replay_lsn()")) >= target, 60)
    # walship promote refuses while the old primary may be alive: it dies first, as in a disaster, and both
    # standbys are promoted once the receiver holds the sender's verdict that it is lost.
    log("promote: the primary is killed")
    stop_cluster(primary)
    wait_for("the receiver to find the primary lost",
             lambda: ((status(receiver_status) or {}).get("systems") or [{}])[0].get("promotion", {}).get("ready") is True,
             60)
    log("promote: pg_promote() on the native standby")
    started = time.monotonic()
    try_sql(native_port, "SELECT pg_promote(true, 60)")
    results["promote"]["native_seconds"] = first_write(native_port, started)
    log("promote: walship promote")
    report = os.path.join(workdir, "promotion")
    outside = {}
    started = time.monotonic()
    watcher = threading.Thread(target=lambda: outside.update(seconds=first_write(dr_port, started)))
    watcher.start()
    promote = subprocess.run([binary, "promote", "--pgdata", dr, "--spool", spool, "--report", report],
                             capture_output=True, text=True)
    finished = time.monotonic()
    watcher.join()
    with open(os.path.join(workdir, "promote.log"), "w") as f:
        f.write(promote.stdout + promote.stderr)
    if promote.returncode != 0:
        raise RuntimeError(f"walship promote failed: {promote.stdout}{promote.stderr}")
    with open(report + ".json") as f:
        reported = json.load(f)
    results["promote"]["walship_reported_rto_seconds"] = reported.get("rtoSeconds")
    results["promote"]["walship_command_seconds"] = finished - started
    results["promote"]["walship_external_first_write_seconds"] = outside.get("seconds")
    usage_plain = walship.stop()
    results["streaming_rss"]["plaintext"] = usage_plain
    finish(results, begun)


def finish(results, begun):
    results["total_seconds"] = time.monotonic() - begun
    rows = verdicts(results)
    results["table"] = rows
    print_table(rows)
    write_results(results)


def standbys_connected(receiver_status):
    document = status(receiver_status) or {}
    return any(s.get("connected") for system in document.get("systems", []) for s in system.get("standbys", []))


# ---------------------------------------------------------------- 5. the archive tier

stores = []            # object store directories started, stopped at exit


def start_store():
    """Starts the store (again, with its data, after stop_stores)."""
    directory = os.path.join(workdir, "s3")
    output = subprocess.run([os.path.join(REPO, "scripts/s3-server.sh"), "start", directory], capture_output=True,
                            text=True, check=True).stdout
    if directory not in stores:
        stores.append(directory)
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def stop_stores():
    for directory in stores:
        subprocess.run([os.path.join(REPO, "scripts/s3-server.sh"), "stop", directory], capture_output=True)


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def segment_names(start, end):
    """Timeline 1's segments wholly inside [start, end)."""
    return [f"00000001{n >> 8:08X}{n & 0xFF:08X}" for n in range(start // (16 * MiB), end // (16 * MiB))]


def pgbackrest_config(store, primary, primary_port):
    """A stanza on the store's TLS endpoint, encrypted and LZ4-compressed as walship's archive is; two processes
    (the machine's cores) and bundled small files for backup and restore, as pgBackRest recommends."""
    endpoint = store["S3_TLS_ENDPOINT"].removeprefix("https://")
    # pgBackRest matches the certificate's DNS names only, not its IP address.
    host, port = "localhost", endpoint.rsplit(":", 1)[1]
    path = os.path.join(workdir, "pgbackrest.conf")
    for directory in ("pgbackrest-log", "pgbackrest-lock", "pgbackrest-spool"):
        os.makedirs(os.path.join(workdir, directory), exist_ok=True)
        chown_to_postgres(os.path.join(workdir, directory))
    with open(path, "w") as f:
        f.write(f"""[global]
repo1-type=s3
repo1-path=/pgbackrest-bench
repo1-s3-bucket={store["S3_BUCKET"]}
repo1-s3-endpoint={host}
repo1-storage-port={port}
repo1-storage-ca-file={store["S3_CA_FILE"]}
repo1-s3-uri-style=path
repo1-s3-region={store["AWS_REGION"]}
repo1-s3-key={store["AWS_ACCESS_KEY_ID"]}
repo1-s3-key-secret={store["AWS_SECRET_ACCESS_KEY"]}
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=walship-bench-cipher-passphrase
compress-type=lz4
process-max=2
repo1-bundle=y
repo1-retention-full=2
log-path={workdir}/pgbackrest-log
lock-path={workdir}/pgbackrest-lock
spool-path={workdir}/pgbackrest-spool
log-level-console=warn
log-level-file=off
start-fast=y

[bench]
pg1-path={primary}
pg1-port={primary_port}
pg1-socket-path={workdir}
pg1-user=postgres
""")
    os.chmod(path, 0o644)
    return AS_POSTGRES + ["pgbackrest", f"--config={path}", "--stanza=bench"]


def timed_commands(commands):
    """Runs the commands one after another (as PostgreSQL runs archive_command and restore_command): wall seconds
    and the CPU seconds of the commands and their children."""
    cpu, started = children_cpu(), time.monotonic()
    for argv, env in commands:
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - started, children_cpu() - cpu


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
               if not os.path.islink(os.path.join(root, name)))


def archive_section(walship, binary, primary, primary_port):
    """Uploads the same WAL backlog with walship receive --archive and with pgbackrest archive-push to the same
    store (over TLS, both encrypting), reads segments back one call at a time with walship restore-wal and
    pgbackrest archive-get, and compares synchronous commits with the store up and down."""
    result = {}
    log("archive: starting the object store (scripts/s3-server.sh)")
    store = start_store()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=store["AWS_ACCESS_KEY_ID"],
               AWS_SECRET_ACCESS_KEY=store["AWS_SECRET_ACCESS_KEY"], AWS_REGION=store["AWS_REGION"])
    credentials = os.path.join(workdir, "s3-credentials")
    with open(credentials, "w") as f:
        f.write(f"[default]\naws_access_key_id = {store['AWS_ACCESS_KEY_ID']}\n"
                f"aws_secret_access_key = {store['AWS_SECRET_ACCESS_KEY']}\n")
    os.chmod(credentials, 0o600)
    chown_to_postgres(credentials)
    keyring = os.path.join(workdir, "archive-keyring.json")
    run([binary, "keys", "init", keyring], stdout=subprocess.DEVNULL)
    chown_to_postgres(keyring)
    os.chmod(store["S3_CA_FILE"], 0o644)
    archive = ["--archive", f"s3://{store['S3_BUCKET']}/walship-bench", "--archive-endpoint", store["S3_TLS_ENDPOINT"],
               "--archive-ca", store["S3_CA_FILE"], "--archive-credentials", credentials, "--encryption-keyring", keyring]

    start, end = generate_backlog(primary_port, ["archive_walship", "archive_pgbackrest"], ARCHIVE_WAL_MB)
    segments = segment_names(start, end)
    wal = len(segments) * 16 * MiB
    result["segments"] = len(segments)

    # walship: the backlog shipped into a spool first (the link compresses it), then a receiver with --archive
    # started on it uploads every completed segment; timed from its start until the status shows none waiting.
    spool = os.path.join(workdir, "spool-archive")
    os.makedirs(spool)
    chown_to_postgres(spool)
    receiver_port, receiver_status, sender_status = free_port(), free_port(), free_port()
    walship.start_receiver(spool, receiver_port, receiver_status, tag="receiver-archive-fill")
    walship.start_sender(primary_port, receiver_port, "archive_walship", sender_status, tag="sender-archive-fill")
    wait_for("the archive backlog in the spool", lambda: walship.durable_lsn() >= end, 1800,
             alive=[walship.sender, walship.receiver])
    walship.stop()
    sql(primary_port, "SELECT pg_drop_replication_slot('archive_walship')")
    log(f"archive: walship receive --archive uploads {len(segments)} segments")
    started = time.monotonic()
    walship.start_receiver(spool, receiver_port, receiver_status, tag="receiver-archive", extra=archive)

    def uploaded():
        systems = (status(receiver_status) or {}).get("systems") or [{}]
        state = systems[0].get("archive") or {}
        return state.get("archivedObjects", 0) >= len(segments) and state.get("lagSegments") == 0
    wait_for("walship's archive to catch up", uploaded, 1800, interval=0.05, alive=[walship.receiver])
    elapsed = time.monotonic() - started
    cpu = proc_sample(walship.receiver.pid)["cpu_seconds"]
    walship.stop()
    result["walship_push"] = {"seconds": elapsed, "cpu_seconds": cpu, "mb_per_s": wal / MiB / elapsed,
                              "cpu_seconds_per_gb": cpu / (wal / 1024 ** 3)}
    log(f"  walship: {result['walship_push']}")

    # pgBackRest: archive-push per segment, as its archive_command does, from the primary's pg_wal.
    pgbackrest = pgbackrest_config(store, primary, primary_port)
    run(pgbackrest + ["stanza-create"], stdout=subprocess.DEVNULL)
    log(f"archive: pgbackrest archive-push of the same {len(segments)} segments")
    seconds, cpu = timed_commands([(pgbackrest + ["archive-push", os.path.join(primary, "pg_wal", name)], None)
                                   for name in segments])
    sql(primary_port, "SELECT pg_drop_replication_slot('archive_pgbackrest')")
    result["pgbackrest_push"] = {"seconds": seconds, "cpu_seconds": cpu, "mb_per_s": wal / MiB / seconds,
                                 "cpu_seconds_per_gb": cpu / (wal / 1024 ** 3)}
    log(f"  pgbackrest: {result['pgbackrest_push']}")

    # Reading back: one restore_command call per segment, from the archive alone.
    restored = os.path.join(workdir, "restored")
    os.makedirs(restored)
    chown_to_postgres(restored)
    system = sql(primary_port, "SELECT system_identifier FROM pg_control_system()")
    wanted = segments[:ARCHIVE_GET_SEGMENTS]
    read_wal = len(wanted) * 16 * MiB
    log(f"archive: {len(wanted)} segments read back one call at a time")
    cache = os.path.join(workdir, "wal-cache")
    seconds, cpu = timed_commands([(AS_POSTGRES + [binary, "restore-wal", "--system", system, "--archive-cache", cache]
                                    + archive + [name, os.path.join(restored, "w-" + name)], None) for name in wanted])
    result["walship_get"] = {"seconds": seconds, "cpu_seconds": cpu, "mb_per_s": read_wal / MiB / seconds,
                             "cpu_seconds_per_gb": cpu / (read_wal / 1024 ** 3)}
    seconds, cpu = timed_commands([(pgbackrest + ["archive-get", name, os.path.join(restored, "p-" + name)], None)
                                   for name in wanted])
    result["pgbackrest_get"] = {"seconds": seconds, "cpu_seconds": cpu, "mb_per_s": read_wal / MiB / seconds,
                                "cpu_seconds_per_gb": cpu / (read_wal / 1024 ** 3)}
    for name in wanted:
        with open(os.path.join(restored, "w-" + name), "rb") as a, open(os.path.join(restored, "p-" + name), "rb") as b:
            if a.read() != b.read():
                raise RuntimeError(f"{name}: walship restore-wal and pgbackrest archive-get returned different bytes")
    shutil.rmtree(restored, ignore_errors=True)
    log(f"  walship restore-wal: {result['walship_get']}; pgbackrest archive-get: {result['pgbackrest_get']}")

    # Synchronous commits with the archiving receiver, the store up and then stopped: uploads never sit on the
    # commit path, so the store's outage must not slow commits.
    set_sync_standby(primary_port, "")
    spool_sync = os.path.join(workdir, "spool-archive-sync")
    os.makedirs(spool_sync)
    chown_to_postgres(spool_sync)
    walship.start_receiver(spool_sync, receiver_port, receiver_status, tag="receiver-archive-sync", extra=archive)
    walship.start_sender(primary_port, receiver_port, "archive_sync", sender_status, sync=True,
                         tag="sender-archive-sync")
    set_sync_standby(primary_port, "walship_bench")

    # A base backup of the same database in each tool's repository, then each restored from the bucket alone into a
    # new directory (the files in place, verified; no replay). pgBackRest's backup skips its WAL archive check: only
    # the restore of the files is timed.
    log("archive: walship backup, then walship restore --archive from the bucket alone")
    backups = [binary, "backups", "--system", system, "--json"] + archive
    run([binary, "backup", "--source", f"host=127.0.0.1 port={primary_port} user=postgres",
         "--to", f"127.0.0.1:{receiver_port}"] + walship.tls("sender", False), stdout=subprocess.DEVNULL)
    wait_for("walship's base backup in the archive",
             lambda: json.loads(subprocess.run(backups, capture_output=True, text=True).stdout or "[]"), 600, interval=1)
    target = os.path.join(workdir, "restored-walship")
    seconds, cpu = timed_commands([([binary, "restore", "--system", system, "--pgdata", target,
                                     "--walship-path", binary] + archive, None)])
    size = directory_bytes(target)
    result["walship_restore"] = {"seconds": seconds, "cpu_seconds": cpu, "bytes": size,
                                 "mb_per_s": size / MiB / seconds, "cpu_seconds_per_gb": cpu / (size / 1024 ** 3)}
    log("archive: pgbackrest backup --type=full, then pgbackrest restore")
    run(pgbackrest + ["backup", "--type=full", "--no-archive-check"], stdout=subprocess.DEVNULL)
    target = os.path.join(workdir, "restored-pgbackrest")
    os.makedirs(target, mode=0o700)
    chown_to_postgres(target)
    seconds, cpu = timed_commands([(pgbackrest + ["restore", f"--pg1-path={target}"], None)])
    size = directory_bytes(target)
    result["pgbackrest_restore"] = {"seconds": seconds, "cpu_seconds": cpu, "bytes": size,
                                    "mb_per_s": size / MiB / seconds, "cpu_seconds_per_gb": cpu / (size / 1024 ** 3)}
    log(f"  walship restore: {result['walship_restore']}; pgbackrest restore: {result['pgbackrest_restore']}")
    for name in ("restored-walship", "restored-pgbackrest"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)

    # Alternating, each round after a CHECKPOINT (as the synchronous rounds above): pgbench slows as its tables
    # bloat, which all-up-then-all-down would charge to the stopped store.
    sync = {"up": [], "down": []}
    for i in range(SYNC_ROUNDS):
        for phase in ("up", "down") if i % 2 == 0 else ("down", "up"):
            if phase == "down":
                stop_stores()
            else:
                start_store()
            # The daemons' own writes as they stop or start (the OSD's store) settle before the round.
            os.sync()
            if SYNC_CHECKPOINT:
                sql(primary_port, "CHECKPOINT")
            sync[phase].append(pgbench_tps(primary_port, SYNC_SECONDS, f"archive-{phase}", 1))
    set_sync_standby(primary_port, "")
    walship.stop()
    sql(primary_port, "SELECT pg_drop_replication_slot('archive_sync')")
    result["sync_tps"] = {phase: {"tps": statistics.median(v), "rounds": v} for phase, v in sync.items()}
    log(f"  sync TPS with the store up / down: {result['sync_tps']}")
    for directory in (spool, spool_sync):
        shutil.rmtree(directory, ignore_errors=True)
    return result


# ---------------------------------------------------------------- the table

def verdicts(r):
    rows = []

    def row(metric, walship, baseline, ratio, target, met, unit=""):
        rows.append({"metric": metric, "walship": walship, "baseline": baseline, "ratio": ratio,
                     "target": target, "met": met, "unit": unit})

    if r.get("catchup"):
        streaming_verdicts(r, row)
    if r.get("archive"):
        archive_verdicts(r["archive"], row)
    return rows


def archive_verdicts(a, row):
    w, p = a["walship_push"], a["pgbackrest_push"]
    ratio = w["mb_per_s"] / p["mb_per_s"]
    row("archive upload MB/s, encrypted, TLS: walship receive --archive vs pgbackrest archive-push", w["mb_per_s"],
        p["mb_per_s"], ratio, "≥ 1.0×", ratio >= 1.0)
    ratio = w["cpu_seconds_per_gb"] / p["cpu_seconds_per_gb"]
    row("archive upload CPU s/GB (walship: the spool's LZ4 frames, compressed on the link)", w["cpu_seconds_per_gb"],
        p["cpu_seconds_per_gb"], ratio, "≤ 1.0×", ratio <= 1.0)
    w, p = a["walship_get"], a["pgbackrest_get"]
    row("restore_command MB/s, one call per segment: walship restore-wal (prefetch 8) vs pgbackrest archive-get",
        w["mb_per_s"],
        p["mb_per_s"], w["mb_per_s"] / p["mb_per_s"], "(info)", None)
    row("restore_command CPU s/GB: walship restore-wal vs pgbackrest archive-get", w["cpu_seconds_per_gb"],
        p["cpu_seconds_per_gb"], w["cpu_seconds_per_gb"] / p["cpu_seconds_per_gb"], "(info)", None)
    if "walship_restore" in a:
        w, p = a["walship_restore"], a["pgbackrest_restore"]
        ratio = w["mb_per_s"] / p["mb_per_s"]
        row("restore of a base backup from the bucket MB/s: walship restore --archive vs pgbackrest restore",
            w["mb_per_s"], p["mb_per_s"], ratio, "≥ 1.0×", ratio >= 1.0)
        ratio = w["cpu_seconds_per_gb"] / p["cpu_seconds_per_gb"]
        row("restore of a base backup from the bucket CPU s/GB", w["cpu_seconds_per_gb"], p["cpu_seconds_per_gb"],
            ratio, "≤ 1.0×", ratio <= 1.0)
    up, down = a["sync_tps"]["up"]["tps"], a["sync_tps"]["down"]["tps"]
    row("sync TPS, 1 client, archiving receiver: the store stopped vs running", down, up, down / up, "≥ 0.95×",
        down / up >= 0.95)


def streaming_verdicts(r, row):
    c = r["catchup"]

    bar = c["receivewal_nosync"]
    for name, label in (("walship_tls", "TLS"), ("walship_plain", "plaintext")):
        w = c[name]
        ratio = w["mb_per_s"] / bar["mb_per_s"]
        row(f"catch-up MB/s, durable, {label} vs pg_receivewal --no-sync", w["mb_per_s"], bar["mb_per_s"], ratio,
            "≥ 0.8×", ratio >= 0.8)
        ratio = w["cpu_seconds_per_gb"] / bar["cpu_seconds_per_gb"]
        row(f"catch-up CPU s/GB (sender+receiver), {label} vs pg_receivewal --no-sync", w["cpu_seconds_per_gb"],
            bar["cpu_seconds_per_gb"], ratio, "≤ 1.0×", ratio <= 1.0)
    w, d = c["walship_tls"], c["receivewal_sync"]
    row("catch-up MB/s, durable, TLS vs pg_receivewal (default fsyncs)", w["mb_per_s"], d["mb_per_s"],
        w["mb_per_s"] / d["mb_per_s"], "(info)", None)
    row("wire bytes per WAL byte (pgbench)", w["wire_per_wal"], bar["wire_per_wal"],
        w["wire_per_wal"] / bar["wire_per_wal"], "walship ≤ 0.2", w["wire_per_wal"] <= 0.2)
    for role in ("sender", "receiver"):
        rss = max([c[name][f"rss_{role}_bytes"] for name in ("walship_tls", "walship_plain")] +
                  [phase[role]["max_rss_bytes"] for phase in r["streaming_rss"].values()]) / MiB
        row(f"peak RSS MiB, walship {role} (catch-up and streaming) vs pg_receivewal", rss, bar["rss_bytes"] / MiB,
            rss / (bar["rss_bytes"] / MiB), "≤ 64 MiB", rss <= 64)
    counts = sorted(int(k) for k in r["sync"]["tls"] if k.isdigit())
    for mode in ("tls", "plaintext"):
        for clients in counts:
            s = r["sync"][mode][str(clients)]
            link = "TLS" if mode == "tls" else "plaintext"
            for name, label in (("walship", "walship + DR standby"), ("walship_without_dr", "walship, DR standby stopped,")):
                if name not in s:
                    continue
                ratio = s[name]["tps"] / s["native"]["tps"]
                row(f"sync TPS, {clients} client{'s' if clients > 1 else ''}, {link}: {label} vs native",
                    s[name]["tps"], s["native"]["tps"], ratio, "≥ 0.95×", ratio >= 0.95)
            row(f"  (no synchronous standby, same block: {s['none']['tps']:.0f} tps)", s["walship"]["tps"],
                s["none"]["tps"], s["walship"]["tps"] / s["none"]["tps"], "(info)", None)
    rounds = r["sync"]["tls"][str(counts[-1])]["walship_per_round"]  # one receiver process through all TLS rounds
    first, last = rounds[0]["receiver"]["cpu_ms_per_commit"], rounds[-1]["receiver"]["cpu_ms_per_commit"]
    row(f"receiver CPU ms per sync commit (TLS, {counts[-1]} clients), last round vs first", last, first,
        last / max(first, 1e-9), "(info)", None)
    for label, lag in (("loopback", r["lag"]["loopback"]), ("WAN", r["wan"]["lag"])):
        w, n = lag["walship"], lag["native"]
        for p in ("p50", "p99", "max"):
            met = (w["p99_ms"] <= n["p99_ms"] + 5) if (p == "p99" and label == "loopback") else None
            row(f"commit→replay {p} ms, {label}", w[f"{p}_ms"], n[f"{p}_ms"], w[f"{p}_ms"] / max(n[f"{p}_ms"], 1e-9),
                "≤ native + 5 ms" if met is not None else "(info)", met)
    ww, wr = r["wan"]["catchup_walship"], r["wan"]["catchup_receivewal"]
    row("WAN catch-up MB/s, TLS vs pg_receivewal --no-sync", ww["mb_per_s"], wr["mb_per_s"],
        ww["mb_per_s"] / wr["mb_per_s"], "(info)", None)
    row("WAN wire bytes per WAL byte (proxy count)", ww["wire_per_wal"], wr["wire_per_wal"],
        ww["wire_per_wal"] / wr["wire_per_wal"], "walship ≤ 0.2", ww["wire_per_wal"] <= 0.2)
    wf = r["wan"].get("catchup_walship_fast")
    if wf:
        row("WAN catch-up MB/s, --compression auto vs fast", ww["mb_per_s"], wf["mb_per_s"],
            ww["mb_per_s"] / wf["mb_per_s"], "(info)", None)
        row("WAN wire bytes per WAL byte, --compression auto vs fast", ww["wire_per_wal"], wf["wire_per_wal"],
            ww["wire_per_wal"] / wf["wire_per_wal"], "(info)", None)
        row("WAN sender CPU s/GB, --compression auto vs fast", ww["cpu_seconds_sender"] / (ww["wal_bytes"] / 1024 ** 3),
            wf["cpu_seconds_sender"] / (wf["wal_bytes"] / 1024 ** 3), ww["cpu_seconds_sender"] / max(wf["cpu_seconds_sender"], 1e-9),
            "(info)", None)
    p = r["promote"]
    rto = p["walship_reported_rto_seconds"] or p["walship_external_first_write_seconds"]
    row("promote RTO s (walship promote's report) vs pg_promote()", rto, p["native_seconds"],
        rto / p["native_seconds"], "≤ 3 s", rto <= 3)
    row("  promote, measured outside: start → first accepted write", p["walship_external_first_write_seconds"],
        p["native_seconds"], p["walship_external_first_write_seconds"] / p["native_seconds"], "(info)", None)


def print_table(rows):
    def number(value):
        return "" if value is None else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")

    width = max(len(r["metric"]) for r in rows)
    header = f"{'metric':<{width}}  {'walship':>9}  {'baseline':>9}  {'ratio':>7}  {'target':<15}  met?"
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        print(f"{r['metric']:<{width}}  {number(r['walship']):>9}  {number(r['baseline']):>9}  "
              f"{number(r['ratio']):>7}  {r['target']:<15}  {met}")
    print()


def machine_facts():
    def output(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return None

    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory = int(f.readline().split()[1]) * 1024
    return {"nproc": os.cpu_count(), "cpu": model, "memory_bytes": memory, "kernel": platform.release(),
            "walship_commit": output(["git", "rev-parse", "HEAD"]),
            # Uncommitted changes to anything but earlier results (latest.json is rewritten by every run).
            "walship_dirty": bool(output(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                          ":(exclude)bench/results"])),
            "walship_version": output([WALSHIP_BIN, "--version"]),
            "python": platform.python_version(), "as_root": AS_ROOT,
            "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def knobs():
    return {"BENCH_WAL_MB": WAL_MB, "BENCH_CATCHUP_ROUNDS": CATCHUP_ROUNDS, "BENCH_WAN_WAL_MB": WAN_WAL_MB, "BENCH_WAN_DELAY_MS": WAN_DELAY_MS,
            "BENCH_WAN_MBIT": WAN_MBIT, "BENCH_SCALE": PGBENCH_SCALE, "BENCH_LAG_SECONDS": LAG_SECONDS,
            "BENCH_LAG_RATE": LAG_RATE, "BENCH_PROBE_INTERVAL_MS": PROBE_INTERVAL * 1000,
            "BENCH_SYNC_SECONDS": SYNC_SECONDS, "BENCH_SYNC_ROUNDS": SYNC_ROUNDS, "BENCH_SYNC_CLIENTS": SYNC_CLIENTS,
            "BENCH_SYNC_NEIGHBOURS": SYNC_NEIGHBOURS, "BENCH_SYNC_CHECKPOINT": SYNC_CHECKPOINT,
            "BENCH_ARCHIVE_WAL_MB": ARCHIVE_WAL_MB, "BENCH_ARCHIVE_GET_SEGMENTS": ARCHIVE_GET_SEGMENTS,
            "BENCH_ONLY": ONLY}


def write_results(results):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS_DIR, f"{stamp}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    shutil.copy(path, os.path.join(RESULTS_DIR, "latest.json"))
    log(f"results: {path}")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
