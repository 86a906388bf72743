#!/usr/bin/python3
"""End to end: the real daemon, scraped every second by a real Prometheus server (Debian's
/usr/bin/prometheus) on loopback, with the shipped alert rules loaded. The test drives load
(physmemctl and physmem_loadgen), then asks Prometheus's HTTP API that

  * every metric named in docs/metrics.md exists, with sane values: free pages drop by exactly
    the pages allocated, buddyinfo (+ the per-CPU lists) sums to the free pages, watermarks are
    ordered, pages allocated minus pages freed equals the pages the leases hold, leases created
    = active + revoked + expired, ...;
  * every template variable and every panel query of every dashboard in deploy/grafana/dashboards
    returns data, after substituting the variables and $__rate_interval/$__interval/$__range as
    Grafana would;
  * the shipped alert rules load and evaluate without errors.

The daemon is physmemd_test_hooks, built next to PHYSMEMD: physmemd's own main with a lease clock
the test advances, so that the lease whose expiry the metrics must count expires when the test
says, not when a short TTL runs out on a slow machine (tests/physmemd_process.py). Real-time waits
are bounded by time_scale() times their normal-build value, and the metrics are read from scrapes
that began after the events they must count, not after a sleep.

Usage: prometheus_e2e_test.py SOURCE_DIR PHYSMEMD PHYSMEMCTL PHYSMEM_LOADGEN   (run by ctest)
Prints one line per check and 'N passed, M failed'.
"""
import glob
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# The shared helpers live in tests/; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from physmemd_process import Physmemd, time_scale  # noqa: E402  (tests/physmemd_process.py)

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_S = 1  # scrape_interval of the test's Prometheus, and the datasource's timeInterval
# Timeouts only bound a hang: the daemon under test may be a sanitized build on a loaded machine.
SCALE = time_scale()


class Checks:
    def __init__(self):
        self.passed, self.failed = 0, []

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed.append("%s %s" % (what, detail))
            print("FAIL:", what, detail, flush=True)
        return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prom:
    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        with urllib.request.urlopen(url, timeout=10 * SCALE) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError("%s: %s" % (url, body))
        return body["data"]

    def query(self, expr, t=None):
        params = {"query": expr}
        if t is not None:
            params["time"] = "%.3f" % t
        return self.get("/api/v1/query", **params)["result"]

    def query_range(self, expr, start, end, step):
        return self.get("/api/v1/query_range", query=expr, start="%.3f" % start, end="%.3f" % end,
                        step="%gs" % step)["result"]

    def ready(self):
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


def by(result, *labels):
    """{(label values...): float value} of an instant vector."""
    return {tuple(s["metric"].get(l, "") for l in labels): float(s["value"][1]) for s in result}


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise RuntimeError("timed out waiting for " + what)


def metric_names_from_docs(source):
    """The metric names in docs/metrics.md's tables (first column, in backticks)."""
    names = []
    for line in open(os.path.join(source, "docs/metrics.md")):
        m = re.match(r"^\| `([a-z_:]+)` \|", line)
        if m:
            names.append(m.group(1))
    return names


def metrics_with_series_once_nonzero(source):
    """The metrics docs/metrics.md says have a series only once non-zero (counters labelled by
    events that may not happen in a short run, such as a migratetype steal)."""
    names = set()
    for line in open(os.path.join(source, "docs/metrics.md")):
        m = re.match(r"^\| `([a-z_:]+)` \|", line)
        if m and "A series exists once non-zero" in line:
            names.add(m.group(1))
    return names


# The TTL of the lease that expires (by the lease clock): far longer than the calls made under it.
SHORT_TTL_MS = 60000

HISTOGRAMS = {"physmem_alloc_wait_duration_seconds", "grpc_server_handling_seconds"}


def grafana_regex_escape(v):
    # Grafana's Prometheus datasource escapes regex metacharacters in multi-value variables.
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v)


def substitute(expr, values, interval_s, range_s):
    """Replaces dashboard variables the way Grafana does for a Prometheus query."""
    rate_interval = max(interval_s + SCRAPE_S, 4 * SCRAPE_S)
    expr = expr.replace("$__rate_interval", "%ds" % rate_interval)
    expr = expr.replace("$__interval", "%ds" % interval_s)
    expr = expr.replace("$__range", "%ds" % range_s)
    for name, vals in sorted(values.items(), key=lambda kv: -len(kv[0])):
        formatted = vals[0] if len(vals) == 1 else "(" + "|".join(grafana_regex_escape(v) for v in vals) + ")"
        expr = expr.replace("${%s}" % name, formatted).replace("$" + name, formatted)
    return expr


def label_values(prom, query):
    m = re.match(r"^label_values\((?:(.*),\s*)?(\w+)\)$", query.strip())
    if not m:
        raise RuntimeError("not a label_values() query: " + query)
    params = {}
    if m.group(1):
        params["match[]"] = m.group(1)
    return prom.get("/api/v1/label/%s/values" % m.group(2), **params)


def ctl(physmemctl, sock, *args, check=True, timeout_ms=2000):
    # The deadline of every call (allocations included): physmemctl's 2 s default, scaled.
    cmd = [physmemctl, "--target=unix://" + sock, "--timeout_ms=%d" % (timeout_ms * SCALE)]
    p = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30 * SCALE)
    if check and p.returncode != 0:
        raise RuntimeError("physmemctl %s: %s" % (" ".join(args), p.stderr))
    return p


def main():
    source, physmemd, physmemctl, loadgen = sys.argv[1:5]
    c = Checks()
    procs = []
    with tempfile.TemporaryDirectory() as d:
        try:
            run(c, procs, d, source, physmemd, physmemctl, loadgen)
        except Exception as e:  # a broken set-up is a failure with its reason, not a crash
            c.check(False, "set-up", repr(e))
            for name in ("physmemd.log", "prometheus.log"):
                p = os.path.join(d, name)
                if os.path.exists(p):
                    print("---", name, "(tail)\n" + "".join(open(p).readlines()[-20:]))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10 * SCALE)
                except subprocess.TimeoutExpired:
                    p.kill()
    print("%d passed, %d failed" % (c.passed, len(c.failed)))
    return 1 if c.failed else 0


def run(c, procs, d, source, physmemd, physmemctl, loadgen):
    t_start = time.time()
    # Metrics on a free port (Physmemd's --metrics_listen=127.0.0.1:0), an ordinary arena.
    # No per-identity DMA cap (an eighth of ZONE_DMA by default, below one order-10 block): the
    # order-10 DMA allocations below must reach the allocator and fail there, counted.
    daemon = Physmemd(physmemd, d, "--target=x86_64", "--mem_mb=64", "--max_alloc_wait_ms=300",
                      "--identity_dma_pages=4096", lease_clock=True)
    daemon.start()
    procs.append(daemon.process)
    sock = daemon.sock
    line = daemon.started_line
    metrics_port = int(re.search(r"metrics=(\d+)", line).group(1))
    pcp_on = "pcp=off" not in line
    metadata_bytes = int(re.search(r"metadata_bytes=(\d+)", line).group(1))

    prom_port = free_port()
    cfg = os.path.join(d, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: %ds\n  evaluation_interval: %ds\n" % (SCRAPE_S, SCRAPE_S))
        f.write("rule_files:\n  - %s\n" % os.path.join(source, "deploy/prometheus/physmemd.rules.yml"))
        f.write("scrape_configs:\n  - job_name: physmemd\n    static_configs:\n"
                "      - targets: ['127.0.0.1:%d']\n" % metrics_port)
    plog = open(os.path.join(d, "prometheus.log"), "w")
    procs.append(subprocess.Popen(
        [PROMETHEUS, "--config.file=" + cfg, "--storage.tsdb.path=" + os.path.join(d, "tsdb"),
         "--web.listen-address=127.0.0.1:%d" % prom_port, "--log.level=warn"], stdout=plog, stderr=plog))
    prom = Prom(prom_port)
    wait_for(prom.ready, 30 * SCALE, "Prometheus ready")
    wait_for(lambda: by(prom.query('up{job="physmemd"}'), "job").get(("physmemd",)) == 1, 30 * SCALE,
             "the first scrape")
    c.check(True, "Prometheus scrapes physmemd on 127.0.0.1:%d" % metrics_port)

    def fresh(expr, after):
        """The vector from the first scrape that began after `after` (all series of one scrape)."""
        def got():
            r = prom.query("timestamp(%s)" % expr)
            if r and min(float(s["value"][1]) for s in r) > after:
                return prom.query(expr)
            return None
        return wait_for(got, 15 * SCALE, "a scrape of %s after %.3f" % (expr, after))

    def scraped_after(after):
        """The start time of the first scrape of physmemd that began after `after`."""
        def got():
            times = [float(s["value"][1]) for s in prom.query('timestamp(up{job="physmemd"})')]
            return next((t for t in times if t > after), None)
        return wait_for(got, 15 * SCALE, "a scrape after %.3f" % after)

    # --- Free pages drop by exactly what was allocated (per zone). Nothing else runs now.
    t0 = time.time()
    before = by(fresh("physmem_zone_free_pages", t0), "zone")
    # 10 minutes: it outlives the test, and the lease clock's advance below (SHORT_TTL_MS).
    lease = ctl(physmemctl, sock, "lease", "create", "--ttl_ms=600000", "--name=e2e-held").stdout.strip()
    allocated = {}
    for gfp, order in [("GFP_KERNEL", 3), ("GFP_KERNEL", 0), ("GFP_KERNEL|__GFP_DMA32", 2), ("GFP_KERNEL|__GFP_DMA", 1)]:
        out = ctl(physmemctl, sock, "alloc", lease, "--gfp=" + gfp, "--order=%d" % order).stdout
        zone = re.search(r"zone=(\w+)", out).group(1)
        allocated[zone] = allocated.get(zone, 0) + (1 << order)
    t1 = time.time()
    after = by(fresh("physmem_zone_free_pages", t1), "zone")
    for (zone,), v in sorted(before.items()):
        c.check(v - after[(zone,)] == allocated.get(zone, 0), "free pages of %s drop by the %d allocated" %
                (zone, allocated.get(zone, 0)), "before %d after %d" % (v, after[(zone,)]))
    held = by(prom.query('physmem_lease_held_pages{lease_name="e2e-held"}'), "lease_name")
    c.check(held.get(("e2e-held",)) == sum(allocated.values()), "physmem_lease_held_pages of the named lease",
            str(held))

    # --- Load: every kind of event the metrics count.
    t_load = time.time()
    p = subprocess.run([loadgen, "--target=unix://" + sock, "--scenario=mixed", "--concurrency=2", "--duration=3s",
                        "--orders=0,1,2,3", "--format=summary", "--timeout_ms=%d" % (10000 * SCALE)],
                       capture_output=True, text=True, timeout=60 * SCALE)
    c.check(p.returncode == 0, "physmem_loadgen mixed run", p.stderr[-500:])
    ctl(physmemctl, sock, "alloc", lease, "--form=zeroed")
    # High-order failures: order-10 GFP_NOWAIT in DMA until the zone cannot give one.
    failures = 0
    for _ in range(8):
        if ctl(physmemctl, sock, "alloc", lease, "--gfp=GFP_NOWAIT|__GFP_DMA", "--order=10", check=False).returncode:
            failures += 1
    c.check(failures > 0, "order-10 DMA allocations eventually fail", "%d failures" % failures)
    # Fallback and waiting: exhaust Normal with order-10 blocks (they fall back to DMA32), then
    # a GFP_KERNEL allocation that waits 300 ms (--max_alloc_wait_ms, well inside its deadline)
    # for memory and times out.
    hog = ctl(physmemctl, sock, "lease", "create", "--ttl_ms=600000", "--name=e2e-hog").stdout.strip()
    zones_served = set()
    for _ in range(20):
        r = ctl(physmemctl, sock, "alloc", hog, "--gfp=GFP_NOWAIT", "--order=10", check=False)
        if r.returncode:
            break
        zones_served.add(re.search(r"zone=(\w+)", r.stdout).group(1))
    c.check("DMA32" in zones_served, "GFP_NOWAIT order 10 falls back from Normal to DMA32", str(zones_served))
    ctl(physmemctl, sock, "alloc", hog, "--gfp=GFP_KERNEL", "--order=10", check=False, timeout_ms=2000)
    ctl(physmemctl, sock, "lease", "revoke", hog)
    # An expiring lease holding a page; a refused free (double free). The lease expires when the
    # test moves the daemon's lease clock past its TTL, whatever the real time its calls took.
    short = ctl(physmemctl, sock, "lease", "create", "--ttl_ms=%d" % SHORT_TTL_MS, "--name=e2e-short").stdout.strip()
    out = ctl(physmemctl, sock, "alloc", short, "--order=0").stdout
    c.check(re.search(r"pfn=(0x[0-9a-f]+)", out) is not None, "the short lease holds a page", out)
    tmp = ctl(physmemctl, sock, "alloc", lease, "--order=0").stdout
    tmp_pfn = re.search(r"pfn=(0x[0-9a-f]+)", tmp).group(1)
    ctl(physmemctl, sock, "free", lease, "--pfn=" + tmp_pfn)
    c.check(ctl(physmemctl, sock, "free", lease, "--pfn=" + tmp_pfn, check=False).returncode == 1,
            "a double free is refused")
    daemon.advance_lease_clock(SHORT_TTL_MS + 1)
    c.check(daemon.wait_for_log("event=lease_expired lease=%s " % short), "the reaper ends the short lease",
            daemon.log()[-2000:])
    c.check(ctl(physmemctl, sock, "lease", "get", short, check=False).returncode == 1, "the expired lease is gone")
    t_end = time.time()
    # Two more scrapes, both begun after every event above: the checks below read them, and the
    # panels' ranges end with them (a rate() needs two samples of a series, and the series of the
    # last events above only appear in scrapes after them).
    t_last = scraped_after(scraped_after(t_end))

    # --- Every metric of docs/metrics.md exists.
    names = metric_names_from_docs(source)
    c.check(len(names) >= 40, "docs/metrics.md lists the metrics", "%d names" % len(names))
    # A family whose series appear only once non-zero is still exported from the start: the
    # daemon's own page has its TYPE line, and Prometheus has its series if the run made any.
    once_nonzero = metrics_with_series_once_nonzero(source)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port, timeout=10 * SCALE) as r:
        exported = r.read().decode()
    now = time.time()
    for name in names:
        expr = name + "_count" if name in HISTOGRAMS else name
        if name in once_nonzero:
            c.check("# TYPE %s counter\n" % name in exported, "metric %s is exported" % name)
            continue
        r = prom.query(expr, now)
        c.check(len(r) > 0, "metric %s exists" % expr)

    def vec(expr, *labels):
        return by(prom.query(expr, now), *labels)

    # --- Sane values.
    free = vec("physmem_zone_free_pages", "zone")
    managed = vec("physmem_zone_managed_pages", "zone")
    present = vec("physmem_zone_present_pages", "zone")
    spanned = vec("physmem_zone_spanned_pages", "zone")
    c.check(set(free) == {("DMA",), ("DMA32",), ("Normal",)}, "x86_64 has zones DMA, DMA32, Normal", str(set(free)))
    for z in free:
        c.check(0 <= free[z] <= managed.get(z, -1) <= present.get(z, -1) <= spanned.get(z, -1),
                "free <= managed <= present <= spanned in %s" % z[0],
                "%s %s %s %s" % (free[z], managed.get(z), present.get(z), spanned.get(z)))
    wm = vec("physmem_zone_watermark_pages", "zone", "level")
    for (z,) in free:
        c.check(0 < wm.get((z, "min"), 0) < wm.get((z, "low"), 0) < wm.get((z, "high"), 0),
                "watermarks min < low < high in %s" % z, str({k: v for k, v in wm.items() if k[0] == z}))
    blocks = vec("physmem_buddyinfo_blocks", "zone", "order")
    pcp = vec("physmem_pcp_pages", "zone")
    for (z,) in free:
        buddy = sum(v * (1 << int(o)) for (zz, o), v in blocks.items() if zz == z)
        c.check(buddy + pcp.get((z,), 0) == free[(z,)], "buddyinfo sums to the free pages in %s" % z,
                "sum(blocks << order) %d + pcp %d vs free %d" % (buddy, pcp.get((z,), 0), free[(z,)]))
        c.check(sorted(int(o) for (zz, o) in blocks if zz == z) == list(range(11)), "buddyinfo has orders 0..10 in " + z)
    frag = vec("physmem_zone_fragmentation_index", "zone", "order")
    c.check(frag and all(-1 <= v <= 1 for v in frag.values()), "fragmentation index within [-1, 1]")
    held_pages = sum(v for v in vec("sum(physmem_zone_managed_pages) - sum(physmem_zone_free_pages)").values())
    lease_pages = sum(vec("physmem_lease_held_pages", "lease_name").values())
    c.check(held_pages == lease_pages, "allocated pages = pages the leases hold",
            "managed-free %d, lease_held_pages %d" % (held_pages, lease_pages))
    net = vec("sum(physmem_alloc_pages_total) - sum(physmem_free_pages_total)")
    c.check(list(net.values()) == [held_pages], "pages allocated - pages freed = pages held",
            "%s vs %d" % (net, held_pages))
    blocks_net = vec("sum(physmem_alloc_total) - sum(physmem_free_total)")
    c.check(blocks_net and list(blocks_net.values())[0] >= 0, "blocks allocated >= blocks freed", str(blocks_net))
    leases = vec("physmem_leases_created_total - physmem_leases_active - physmem_leases_revoked_total"
                 " - physmem_leases_expired_total")
    c.check(list(leases.values()) == [0], "leases created = active + revoked + expired", str(leases))
    c.check(vec("physmem_leases_expired_total")[()] >= 1, "the short lease counted as expired")
    c.check(vec("physmem_lease_pages_reclaimed_total")[()] >= 1, "its page counted as reclaimed")
    c.check(vec("physmem_leases_active")[()] == 1, "one lease (e2e-held) active at the end")
    c.check(vec('sum(physmem_alloc_failures_total{order="10"})').get((), 0) >= failures,
            "order-10 failures counted", "%d failures made" % failures)
    c.check(vec('sum(physmem_alloc_fallbacks_total{zone="DMA32", preferred_zone="Normal"})').get((), 0) >= 1,
            "Normal -> DMA32 fallbacks counted")
    c.check(vec("sum(physmem_alloc_waits_total)").get((), 0) >= 1, "the waiting allocation counted")
    c.check(vec("physmem_pages_zeroed_total").get((), 0) >= 1, "the zeroed page counted")
    c.check(vec('physmem_free_refused_total{reason="not_allocated"}', "reason").get(("not_allocated",), 0) >= 1,
            "the double free counted as not_allocated")
    if pcp_on:
        c.check(vec("sum(physmem_pcp_hits_total)").get((), 0) > 0, "per-CPU list hits under load")
    c.check(vec("physmem_page_size_bytes")[()] == 4096, "page size 4096")
    c.check(vec("physmem_mem_map_bytes")[()] == metadata_bytes, "mem_map bytes = the started line's metadata_bytes")
    c.check(vec("physmem_arena_bytes")[()] >= sum(managed.values()) * 4096, "arena covers the managed pages")
    c.check(vec('physmem_arena_backing_info{backing="ordinary"}', "backing") == {("ordinary",): 1.0},
            "arena_backing_info says ordinary")
    c.check(list(vec("physmem_build_info").values()) == [1.0], "build_info is 1")
    c.check(0 < vec("process_resident_memory_bytes")[()] < 1 << 30, "RSS plausible")
    c.check(t_start - 5 <= vec("process_start_time_seconds")[()] <= now, "start time plausible")
    started = vec('sum(grpc_server_started_total{grpc_service="physmem.v1.PhysMem"})').get((), 0)
    handled = vec('sum(grpc_server_handled_total{grpc_service="physmem.v1.PhysMem"})').get((), 0)
    c.check(100 < handled <= started, "gRPC calls counted (handled <= started)", "%s %s" % (handled, started))
    c.check(vec('sum(grpc_server_handled_total{grpc_code="RESOURCE_EXHAUSTED"})').get((), 0) >= failures,
            "RESOURCE_EXHAUSTED replies counted by code name")
    c.check(vec('sum(grpc_server_handling_seconds_count{grpc_method="AllocPages"})').get((), 0) > 0,
            "AllocPages latency histogram has observations")

    # --- Every template variable and every panel query of every dashboard returns data.
    dashboards = sorted(glob.glob(os.path.join(source, "deploy/grafana/dashboards/*.json")))
    c.check(len(dashboards) >= 2, "dashboards shipped", str(dashboards))
    range_s = int(time.time() - t_start) + 1
    for path in dashboards:
        dash = json.load(open(path))
        values = {}
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            vals = label_values(prom, substitute(q, values, SCRAPE_S, range_s))
            c.check(len(vals) > 0, "%s: variable $%s has values" % (os.path.basename(path), var["name"]), q)
            values[var["name"]] = vals if var.get("multi") or var.get("includeAll") else vals[:1]
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                expr = substitute(t["expr"], values, SCRAPE_S, range_s)
                what = "%s: panel '%s' %s" % (os.path.basename(path), panel["title"], t["refId"])
                try:
                    if t.get("instant"):
                        r = prom.query(expr, now)
                        points = [s["value"][1] for s in r]
                    else:
                        r = prom.query_range(expr, t_load, t_last + SCRAPE_S, SCRAPE_S)
                        points = [v[1] for s in r for v in s["values"]]
                except Exception as e:  # a query Prometheus refuses is a failed panel
                    c.check(False, what, "%s: %s" % (expr, e))
                    continue
                finite = [float(v) for v in points if math.isfinite(float(v))]
                c.check(len(finite) > 0, what + " returns data", expr)

    # --- The shipped alert rules loaded and evaluate cleanly.
    groups = prom.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    c.check(len(rules) == 5 and all(r.get("health") == "ok" for r in rules), "alert rules loaded and healthy",
            str([(r["name"], r.get("health"), r.get("lastError")) for r in rules]))
    print("checks done in %.1f s" % (time.time() - t_start))


if __name__ == "__main__":
    sys.exit(main())
