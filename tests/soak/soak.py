#!/usr/bin/python3
"""The soak test's driver: one real physmemd, several physmem_soak_client processes, then checks.

Starts physmemd on a fresh Unix socket with its arena in a /dev/shm file (so the clients can sign
and verify the pages they are handed), with metrics on a free port when the daemon has
--metrics_listen; samples the daemon's memory, threads and fds every second; runs --clients client
processes of --threads threads each for --seconds; waits for the leases the clients abandoned to
expire; then checks, and writes summary.json (machine-readable) and prints a human summary:

  1. zero unexpected errors in every client (each client classifies every reply it gets; see
     tests/soak/soak_client.cc), and every client exited 0;
  2. no page was held by two clients at overlapping times (signatures in the shared arena, checked
     by the clients; ledgers of held intervals, checked here by physmem_soak_ledger_check);
  3. after all leases end, every page is free: Validate's census (allocated 0, free = total, no
     leases, allocator and lease book agree) and zoneinfo (pages free + the per-CPU lists' pages
     = managed in every zone: "pages free" is NR_FREE_PAGES, which leaves per-CPU pages out, as
     in the kernel's /proc/zoneinfo);
  4. the daemon's own memory is flat: the median RssAnon of the last window against the first
     window after warm-up (the arena is a /dev/shm file, so its pages count as RssShmem, apart);
     fds are back to their count before the clients started, threads stay under a bound (gRPC's
     pools grow with load up to a cap and keep their threads);
  5. when the daemon exports metrics: its counters moved exactly as the clients' own counts say
     (nothing else calls the daemon while the clients run), see check_metrics();
  6. SIGTERM at the end: the daemon exits 0 within 15 s.

Exit status 0 when every check passed, 1 otherwise. Uses only the Python standard library (run it
with /usr/bin/python3 like the other test scripts).
"""
import argparse
import ctypes
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

CLIENT_METHODS = ["CreateLease", "KeepAlive", "RevokeLease", "GetLease", "AllocPages", "GetFreePages",
                  "GetZeroedPage", "AllocPagesBulk", "FreePages", "FreePagesByAddress", "FreePagesBulk",
                  "GetTarget"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--threads", type=int, default=4, help="worker threads per client process")
    p.add_argument("--mem_mb", type=int, default=512, help="emulated RAM (x86_64: DMA, DMA32, Normal)")
    p.add_argument("--physmemd", required=True)
    p.add_argument("--client", required=True, help="physmem_soak_client")
    p.add_argument("--ledger_check", required=True, help="physmem_soak_ledger_check")
    p.add_argument("--physmemctl", default="", help="physmemctl (default: next to physmemd)")
    p.add_argument("--out", required=True, help="directory for logs, reports and the summary")
    p.add_argument("--rss_bound_pct", type=float, default=10.0,
                   help="RssAnon growth allowed, first window to last, in percent ...")
    p.add_argument("--rss_bound_mib", type=float, default=4.0, help="... or in MiB, whichever is larger")
    p.add_argument("--keep_ledgers", action="store_true", help="keep the ledger files (large)")
    return p.parse_args()


def die_with_parent():
    """Runs in each child before exec: SIGKILL it if the driver dies (e.g. a ctest timeout)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def remove_stale_arenas():
    """Arena files of earlier drivers that were killed before they could clean up."""
    for path in glob.glob("/dev/shm/physmem-soak-*"):
        m = re.match(r"/dev/shm/physmem-soak-(\d+)", path)
        if m and not os.path.exists("/proc/" + m.group(1)):
            os.unlink(path)


class Daemon:
    def __init__(self, args, out):
        self.out = out
        self.socket = os.path.join(out, "physmemd.sock")
        self.arena = "/dev/shm/physmem-soak-%d" % os.getpid()
        self.log_path = os.path.join(out, "physmemd.log")
        helpfull = subprocess.run([args.physmemd, "--helpfull"], capture_output=True, text=True).stdout
        self.has_metrics = "metrics_listen" in helpfull
        cmd = [args.physmemd, "--target=x86_64", "--mem_mb=%d" % args.mem_mb, "--unix_socket=" + self.socket,
               "--arena_path=" + self.arena,
               # All clients share one uid: let that identity use all of ZONE_DMA (default cap: 1/8).
               "--identity_dma_pages=4096",
               # A waiting allocation answers within 2 s: a client's key retry after a missed
               # deadline (10 s) always gets a definite answer.
               "--max_alloc_wait_ms=2000"]
        if self.has_metrics:
            cmd.append("--metrics_listen=127.0.0.1:0")
        self.cmd = cmd
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.metrics_port = 0
        deadline = time.time() + 30
        while time.time() < deadline:
            text = open(self.log_path).read()
            m = re.search(r"event=started .*", text)
            if m:
                pm = re.search(r" metrics=(\d+)", m.group(0))
                if pm:
                    self.metrics_port = int(pm.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("physmemd did not start:\n" + open(self.log_path).read())

    def target(self):
        return "unix://" + self.socket

    def scrape(self):
        if not self.metrics_port:
            return None
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=10) as r:
            return parse_prometheus(r.read().decode())

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # The arena, and the crash-recovery journal's files beside it (<arena>.journal*), which a
        # daemon with the journal writes by default when its arena is a file.
        for path in [self.arena] + glob.glob(self.arena + ".journal*"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def parse_prometheus(text):
    """[(name, {label: value}, float)] from the text exposition format."""
    samples = []
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            continue
        labels = dict(label_re.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def msum(samples, name, **want):
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == w for k, w in want.items()))


def proc_status(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[k] = int(v.split()[0]) * 1024
            elif k == "Threads":
                fields[k] = int(v)
    fields["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    return fields


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.t0 = time.time()

    def run(self):
        while not self.stop.is_set():
            try:
                s = proc_status(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            if "RssAnon" not in s:  # exiting: a zombie has no memory fields
                return
            s["t"] = time.time() - self.t0
            self.samples.append(s)
            self.stop.wait(1.0)


def ctl(args, daemon, *cmd):
    r = subprocess.run([args.physmemctl, "--target=" + daemon.target(), *cmd], capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout + r.stderr


def census(args, daemon):
    rc, text = ctl(args, daemon, "validate")
    c = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}
    c["ok"] = rc == 0
    c["text"] = text.strip()
    return c


def zones(args, daemon):
    _, text = ctl(args, daemon, "zoneinfo")
    out = {}
    for block in re.split(r"(?=Node 0, zone)", text):
        m = re.match(r"Node 0, zone\s+(\S+)", block)
        if not m:
            continue
        free = re.search(r"pages free\s+(\d+)", block)
        managed = re.search(r"managed\s+(\d+)", block)
        # Each CPU's pageset "count:" (zoneinfo_show_print()): free pages on its per-CPU lists.
        pcp = sum(int(n) for n in re.findall(r"^\s+count:\s+(\d+)", block, re.M))
        out[m.group(1)] = {"free": int(free.group(1)) + pcp, "managed": int(managed.group(1))}
    return out


def rss_growth(samples, run_window, args):
    """Median RssAnon of the first window after warm-up against the last window of the run.
    Warm-up: a third of the run, at most 60 s (gRPC's pools and malloc's arenas grow for the first
    minute or two, then stay); windows: a sixth of the run, at most 60 s."""
    seconds = run_window[1] - run_window[0]
    warm = min(60.0, seconds / 3)
    window = min(60.0, seconds / 6)
    run = [s for s in samples if run_window[0] <= s["t"] <= run_window[1]]
    if not run:
        return {"ok": False, "why": "no samples"}
    t_start = run[0]["t"]
    t_end = run[-1]["t"]
    first = [s["RssAnon"] for s in run if t_start + warm <= s["t"] < t_start + warm + window]
    last = [s["RssAnon"] for s in run if t_end - window < s["t"] <= t_end]
    if not first or not last:
        return {"ok": False, "why": "not enough samples"}
    a, b = statistics.median(first), statistics.median(last)
    growth = b - a
    bound = max(a * args.rss_bound_pct / 100, args.rss_bound_mib * 2**20)
    return {"warmup_s": warm, "window_s": window, "first_rss_anon_mib": a / 2**20, "last_rss_anon_mib": b / 2**20,
            "growth_mib": growth / 2**20, "growth_pct": 100.0 * growth / a if a else 0.0,
            "bound_mib": bound / 2**20, "max_vmrss_mib": max(s["VmRSS"] for s in run) / 2**20,
            "max_rss_shmem_mib": max(s.get("RssShmem", 0) for s in run) / 2**20,
            "ok": growth <= bound}


def total(reports, key):
    return sum(r.get(key, 0) for r in reports)


def prefixed(reports, prefix):
    out = {}
    for r in reports:
        for k, v in r.items():
            if k.startswith(prefix) and isinstance(v, int):
                out[k[len(prefix):]] = out.get(k[len(prefix):], 0) + v
    return out


def check_metrics(before, after, reports):
    """What the daemon's counters must show, given that only the soak clients called it (the
    driver's own calls are Validate and GetZoneInfo, which change no counter checked here).
    Exact equalities, each of which would catch a lost or double count:
      alloc_total{zone} delta       == blocks the clients acquired in that zone (single allocations
                                       that succeeded, first answers to a key, bulk pages; replays
                                       of a key allocate nothing and are not counted)
      alloc_pages_total{zone}       == pages acquired in that zone
      free_total{zone}              == blocks freed by the clients + blocks reclaimed with leases
      free_pages_total{zone}        == pages freed by the clients + pages reclaimed when their
                                       leases were revoked or expired, in that zone
                                    == alloc_pages_total{zone} (every page came back)
      lease_pages_reclaimed_total   == revoke replies' pages_freed + pages held by abandoned leases
      leases_created/revoked/expired_total == leases created / revoked / abandoned to expire
      leases_active (end) == 0; zone_free_pages == zone_managed_pages in every zone
      grpc_server_started_total{method} == calls the clients started, for each method they use
      grpc_server_handled_total{method} summed over codes == the same (each call answered once)
                                       (both: minus at most the calls whose deadline passed on the
                                       client, which may never have reached the daemon)
      alloc_waits_total{timed_out} >= the clients' "waited" refusals, and the excess plus
                                       {cancelled} <= the clients' deadline misses on waiting calls
      grpc_server_handled_total{method, code} == replies with that code the clients saw — except
                                       that a waiting call whose answer crossed the client's deadline
                                       was counted by the client as DEADLINE_EXCEEDED: then the
                                       server's count of OK/RESOURCE_EXHAUSTED may exceed the client's
                                       by at most that many.
    """
    checks = []

    def delta(name, **labels):
        return msum(after, name, **labels) - msum(before, name, **labels)

    def eq(what, got, want):
        checks.append({"check": what, "metric": got, "clients": want, "ok": abs(got - want) < 0.5})

    acquired_blocks = prefixed(reports, "acquired.blocks.")
    acquired_pages = prefixed(reports, "acquired.pages.")
    freed_pages = prefixed(reports, "freed.pages.")
    reclaimed_pages = prefixed(reports, "reclaimed.pages.")
    freed_blocks = prefixed(reports, "freed.blocks.")
    reclaimed_blocks = prefixed(reports, "reclaimed.blocks.")
    for zone in sorted(set(acquired_pages) | {l.get("zone") for n, l, _ in after if n == "physmem_alloc_total"} - {None}):
        eq("physmem_alloc_total{zone=%s}" % zone, delta("physmem_alloc_total", zone=zone), acquired_blocks.get(zone, 0))
        eq("physmem_alloc_pages_total{zone=%s}" % zone, delta("physmem_alloc_pages_total", zone=zone),
           acquired_pages.get(zone, 0))
        eq("physmem_free_pages_total{zone=%s}" % zone, delta("physmem_free_pages_total", zone=zone),
           freed_pages.get(zone, 0) + reclaimed_pages.get(zone, 0))
        eq("physmem_free_total{zone=%s}" % zone, delta("physmem_free_total", zone=zone),
           freed_blocks.get(zone, 0) + reclaimed_blocks.get(zone, 0))
        eq("physmem_free_pages_total == physmem_alloc_pages_total {zone=%s}" % zone,
           delta("physmem_free_pages_total", zone=zone), delta("physmem_alloc_pages_total", zone=zone))
        eq("physmem_zone_free_pages == managed {zone=%s}" % zone, msum(after, "physmem_zone_free_pages", zone=zone),
           msum(after, "physmem_zone_managed_pages", zone=zone))
    eq("physmem_lease_pages_reclaimed_total", delta("physmem_lease_pages_reclaimed_total"),
       total(reports, "reclaimed.revoke_pages") + total(reports, "reclaimed.expiry_pages"))
    eq("physmem_leases_created_total", delta("physmem_leases_created_total"), total(reports, "leases.created"))
    eq("physmem_leases_revoked_total", delta("physmem_leases_revoked_total"), total(reports, "leases.revoked"))
    eq("physmem_leases_expired_total", delta("physmem_leases_expired_total"),
       total(reports, "leases.abandoned") + total(reports, "leases.lost"))
    eq("physmem_leases_active (end)", msum(after, "physmem_leases_active"), 0)
    calls = prefixed(reports, "calls.")
    codes = prefixed(reports, "codes.")
    svc = "physmem.v1.PhysMem"
    for method in CLIENT_METHODS:
        # A call whose deadline passed on the client may never have reached the daemon (on a loaded
        # machine a 100 ms deadline can expire before the request is read): then the daemon counts
        # it nowhere. Every other call the daemon starts and answers exactly once.
        missed = codes.get(method + ".DEADLINE_EXCEEDED", 0)
        for metric in ("grpc_server_started_total", "grpc_server_handled_total"):
            if method == "KeepAlive" and metric == "grpc_server_handled_total":
                continue  # the stream's end is the client cancelling at exit
            got = delta(metric, grpc_service=svc, grpc_method=method)
            what = "%s{grpc_method=%s}%s" % (metric, method, " summed over codes" if "handled" in metric else "")
            if missed == 0:
                eq(what, got, calls.get(method, 0))
            else:
                checks.append({"check": what + " within [clients - %d deadline misses, clients]" % missed,
                               "metric": got, "clients": calls.get(method, 0),
                               "ok": calls.get(method, 0) - missed <= got <= calls.get(method, 0)})
        server_codes = {l["grpc_code"] for n, l, _ in after
                        if n == "grpc_server_handled_total" and l.get("grpc_method") == method}
        client_codes = {k.split(".", 1)[1] for k in codes if k.startswith(method + ".")}
        for code in sorted(server_codes | client_codes):
            got = delta("grpc_server_handled_total", grpc_service=svc, grpc_method=method, grpc_code=code)
            want = codes.get(method + "." + code, 0)
            if method == "KeepAlive":
                continue  # the stream's end code is the client cancelling at exit
            if missed == 0:
                eq("grpc_server_handled_total{grpc_method=%s,grpc_code=%s}" % (method, code), got, want)
            elif code != "DEADLINE_EXCEEDED":
                ok = want <= got <= want + missed
                checks.append({"check": "grpc_server_handled_total{grpc_method=%s,grpc_code=%s} within "
                                        "[clients, clients + %d deadline misses]" % (method, code, missed),
                               "metric": got, "clients": want, "ok": ok})
    # Waits: every RESOURCE_EXHAUSTED "waited" a client saw is a timed-out wait; the daemon may
    # count more timed-out (or cancelled) waits only for calls whose answer the client missed.
    waited = total(reports, "expected.no_memory_waited")
    missed_waits = total(reports, "expected.deadline_while_waiting")
    timed_out = delta("physmem_alloc_waits_total", outcome="timed_out")
    cancelled = delta("physmem_alloc_waits_total", outcome="cancelled")
    checks.append({"check": "physmem_alloc_waits_total{outcome=timed_out} - clients' 'waited' refusals + "
                            "{outcome=cancelled} within [0, clients' deadline misses on waiting calls]",
                   "metric": timed_out - waited + cancelled, "clients": missed_waits,
                   "ok": timed_out >= waited and 0 <= timed_out - waited + cancelled <= missed_waits})
    # Reported, not checked: their exact relation to the clients' counts depends on retries inside
    # the daemon (a waiting allocation fails the allocator many times before it succeeds).
    info = {"physmem_alloc_failures_total": delta("physmem_alloc_failures_total"),
            "physmem_alloc_waits_total": {o: delta("physmem_alloc_waits_total", outcome=o)
                                          for o in ("satisfied", "timed_out", "cancelled")},
            "clients_deadline_misses_on_waiting_calls": missed_waits,
            "clients_no_memory_waited": total(reports, "expected.no_memory_waited"),
            "process_resident_memory_bytes": msum(after, "process_resident_memory_bytes")}
    return checks, info


def main():
    args = parse_args()
    args.out = os.path.abspath(args.out)  # the socket path goes into a unix:// URI, which must be absolute
    os.makedirs(args.out, exist_ok=True)
    if not args.physmemctl:
        args.physmemctl = os.path.join(os.path.dirname(args.physmemd), "physmemctl")
    summary = {"seconds": args.seconds, "client_processes": args.clients, "threads_per_client": args.threads,
               "mem_mb": args.mem_mb, "checks": {}}
    failures = []

    def check(name, ok, detail):
        summary["checks"][name] = {"ok": bool(ok), "detail": detail}
        if not ok:
            failures.append(name)

    remove_stale_arenas()
    daemon = Daemon(args, args.out)
    sampler = Sampler(daemon.proc.pid)
    try:
        sampler.start()
        time.sleep(2)  # idle baseline
        baseline = proc_status(daemon.proc.pid)
        before = daemon.scrape()
        nthreads = args.clients * args.threads
        clients = []
        t0 = time.time()
        for i in range(args.clients):
            cmd = [args.client, "--target=" + daemon.target(), "--client_id=%d" % i, "--threads=%d" % args.threads,
                   "--total_threads=%d" % nthreads, "--seconds=%g" % args.seconds, "--arena_file=" + daemon.arena,
                   "--ledger=" + os.path.join(args.out, "client-%d.ledger" % i),
                   "--report=" + os.path.join(args.out, "client-%d.json" % i)]
            clients.append(subprocess.Popen(cmd, stdout=open(os.path.join(args.out, "client-%d.log" % i), "w"),
                                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
        while any(c.poll() is None for c in clients):
            if time.time() - t0 > args.seconds + 180:
                for c in clients:
                    c.kill()
                check("clients_finished", False, "clients still running %.0f s after the end" % (time.time() - t0))
                break
            time.sleep(0.5)
        run_window = (t0 - sampler.t0, time.time() - sampler.t0)
        elapsed = time.time() - t0
        codes = [c.wait() for c in clients]
        check("clients_exit_0", all(c == 0 for c in codes), "exit codes %s" % codes)

        reports = []
        for i in range(args.clients):
            try:
                with open(os.path.join(args.out, "client-%d.json" % i)) as f:
                    reports.append(json.load(f))
            except (OSError, ValueError) as e:
                check("client_%d_report" % i, False, str(e))
        unexpected = prefixed(reports, "unexpected.")
        examples = [e for r in reports for e in r.get("unexpected_examples", [])][:20]
        check("zero_unexpected_errors", sum(unexpected.values()) == 0,
              {"unexpected": unexpected, "examples": examples})
        ops = sum(v for k, v in prefixed(reports, "calls.").items() if k != "KeepAlive")
        summary["operations"] = ops
        summary["ops_per_second"] = ops / elapsed
        summary["expected_errors"] = prefixed(reports, "expected.")
        summary["clients"] = {k: total(reports, k) for k in
                              ("leases.created", "leases.revoked", "leases.abandoned", "keepalive.renewals",
                               "signatures.written", "signatures.verified", "zero_checks", "replays.checked",
                               "replays.after_deadline", "lease_checks", "ledger.records")}
        summary["clients"]["acquired_pages"] = sum(prefixed(reports, "acquired.pages.").values())
        check("signatures_verified", total(reports, "signatures.verified") > 0,
              "%d page signatures verified" % total(reports, "signatures.verified"))

        ledgers = [os.path.join(args.out, "client-%d.ledger" % i) for i in range(args.clients)]
        lc = subprocess.run([args.ledger_check, *ledgers], capture_output=True, text=True, timeout=1800)
        try:
            verdict = json.loads(lc.stdout)
        except ValueError:
            verdict = {"error": lc.stdout + lc.stderr}
        check("no_page_held_twice", lc.returncode == 0 and verdict.get("records", 0) > 0, verdict)
        if not args.keep_ledgers:
            for path in ledgers:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

        # Abandoned leases expire one TTL (at most 5 s) after their last renewal. Poll with
        # zoneinfo and the lease list (safe at any time), then Validate once the daemon is quiet:
        # the invariant checker needs no free to run beside it (a lease being reclaimed would show
        # a page in transit as lost).
        t_end = time.time()
        deadline = t_end + 30
        while time.time() < deadline:
            z = zones(args, daemon)
            _, leases_text = ctl(args, daemon, "lease", "list")
            if z and all(v["free"] == v["managed"] for v in z.values()) and not leases_text.strip():
                break
            time.sleep(0.5)
        c = census(args, daemon)
        c["after_s"] = round(time.time() - t_end, 1)
        check("every_page_free", c["ok"] and c.get("allocated_pages") == 0 and c.get("leases") == 0 and
              c.get("free_pages") == c.get("total_pages") and c.get("lease_pages") == 0, c)
        z = zones(args, daemon)
        check("zoneinfo_free_equals_managed", z and all(v["free"] == v["managed"] for v in z.values()), z)

        time.sleep(2)  # let connections close
        end_status = proc_status(daemon.proc.pid)
        summary["daemon"] = {"baseline": baseline, "end": end_status}
        check("fds_back_to_baseline", end_status["fds"] <= baseline["fds"],
              "fds %d before the clients, %d after" % (baseline["fds"], end_status["fds"]))
        # gRPC's thread pools grow with load, slowly, up to a cap that scales with the cores, and
        # keep their threads: the count does not return to the idle start. A leak (a thread per
        # connection, stream, lease or waiting call) would pass any such cap within seconds.
        growth = rss_growth(sampler.samples, run_window, args)
        run_max = max([s["Threads"] for s in sampler.samples if run_window[0] <= s["t"]] or [0])
        cap = baseline["Threads"] + 4 * os.cpu_count() + 8
        check("threads_bounded", run_max <= cap and end_status["Threads"] <= run_max,
              "threads: %d idle before the clients, at most %d while they ran (cap: idle + 4 x %d cores + 8 = %d), "
              "%d after they left" % (baseline["Threads"], run_max, os.cpu_count(), cap, end_status["Threads"]))

        summary["rss"] = growth
        check("rss_flat", growth.get("ok"), growth)

        after = daemon.scrape()
        if after is None:
            summary["metrics"] = "skipped: this physmemd has no --metrics_listen"
        else:
            mchecks, info = check_metrics(before, after, reports)
            summary["metrics"] = {"checks": mchecks, "info": info}
            bad = [m for m in mchecks if not m["ok"]]
            check("metrics_match_clients", not bad and mchecks, bad or "%d equalities hold" % len(mchecks))

        daemon.proc.send_signal(signal.SIGTERM)
        try:
            rc = daemon.proc.wait(timeout=15)
            check("sigterm_exit_0", rc == 0, "exit status %d" % rc)
        except subprocess.TimeoutExpired:
            check("sigterm_exit_0", False, "did not exit within 15 s of SIGTERM")
    finally:
        sampler.stop.set()
        daemon.cleanup()

    summary["series_t_rssanon_mib_vmrss_mib_threads_fds"] = [
        [round(s["t"], 1), round(s["RssAnon"] / 2**20, 2), round(s["VmRSS"] / 2**20, 2), s["Threads"], s["fds"]]
        for s in sampler.samples]
    summary["failed"] = failures
    summary["ok"] = not failures
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print_human(summary, args.out)
    return 0 if not failures else 1


def print_human(s, out):
    print("soak: %d client processes x %d threads for %.0f s: %d operations (%.0f ops/s)" %
          (s["client_processes"], s["threads_per_client"], s["seconds"], s.get("operations", 0),
           s.get("ops_per_second", 0)))
    r = s.get("rss", {})
    if "first_rss_anon_mib" in r:
        print("daemon RssAnon: %.1f MiB after warm-up, %.1f MiB at the end: %+.2f MiB (%+.1f%%; bound %.1f MiB); "
              "max VmRSS %.1f MiB (arena pages touched: %.1f MiB shmem)" %
              (r["first_rss_anon_mib"], r["last_rss_anon_mib"], r["growth_mib"], r["growth_pct"], r["bound_mib"],
               r["max_vmrss_mib"], r["max_rss_shmem_mib"]))
    if s.get("expected_errors"):
        print("expected refusals: " + ", ".join("%s=%d" % kv for kv in sorted(s["expected_errors"].items())))
    for name, c in s["checks"].items():
        detail = c["detail"] if isinstance(c["detail"], str) else json.dumps(c["detail"], default=str)
        if len(detail) > 300 and c["ok"]:
            detail = detail[:300] + "..."
        print("  %-30s %s  %s" % (name, "ok  " if c["ok"] else "FAIL", detail))
    if isinstance(s.get("metrics"), str):
        print("  metrics: " + s["metrics"])
    print("summary: %s/summary.json -> %s" % (out, "PASS" if s["ok"] else "FAIL"))


if __name__ == "__main__":
    sys.exit(main())
