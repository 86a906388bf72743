#!/usr/bin/python3
"""Writes deploy/grafana/dashboards/*.json, physmemd's Grafana dashboards, from the panel lists
below: editing this file and re-running it keeps ids, grid positions and variable wiring
consistent, which hand-edited dashboard JSON rarely stays. tests/deploy/deploy_files_test.py
checks that the committed JSON is what this script writes.

    /usr/bin/python3 deploy/grafana/make_dashboards.py [OUTPUT_DIR]   # default: deploy/grafana/dashboards

Every query selects job=~"$job", instance=~"$instance" (and zone=~"$zone" where the metric has a
zone), so the variables filter every panel. Metric names: docs/metrics.md.
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
ZSEL = SEL + ', zone=~"$zone"'
RI = "$__rate_interval"


def variables():
    def query_var(name, label, query, multi):
        return {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query, "refresh": 2, "sort": 1,
            "multi": multi, "includeAll": multi,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
            "hide": 0, "options": [], "regex": "", "skipUrlSync": False,
        }

    return {"list": [
        {"name": "datasource", "label": "Datasource", "type": "datasource", "query": "prometheus",
         "current": {"selected": False, "text": "Prometheus", "value": "physmem-prometheus"},
         "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "",
         "skipUrlSync": False},
        query_var("job", "Job", "label_values(physmem_build_info, job)", False),
        query_var("instance", "Instance", 'label_values(physmem_build_info{job=~"$job"}, instance)', True),
        query_var("zone", "Zone", 'label_values(physmem_zone_free_pages{job=~"$job", instance=~"$instance"}, zone)', True),
    ]}


class Layout:
    """Places panels left to right in rows of 24 grid units, as Grafana's gridPos expects."""

    def __init__(self):
        self.x, self.y, self.row_h, self.next_id, self.panels = 0, 0, 0, 1, []

    def row(self, title):
        self.newline()
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1

    def newline(self):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self.next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    t = {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "format": fmt, "editorMode": "code"}
    return t


def panel(kind, title, targets, unit="short", description="", options=None, field_defaults=None, **extra):
    defaults = {"unit": unit}
    defaults.update(field_defaults or {})
    p = {"type": kind, "title": title, "description": description, "datasource": DS,
         "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
         "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options or {}}
    p.update(extra)
    return p


def timeseries(title, targets, unit="short", description="", stack=False, field_defaults=None, **extra):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40,
              "showPoints": "never", "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    return panel("timeseries", title, targets, unit, description,
                 options={"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}},
                 field_defaults=dict(field_defaults or {}, custom=custom), **extra)


def stat(title, targets, unit="short", description=""):
    return panel("stat", title, targets, unit, description,
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"})


def dashboard(uid, title, description, layout, tags):
    return {
        "uid": uid, "title": title, "description": description, "tags": tags,
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {}, "timezone": "browser",
        "templating": variables(), "annotations": {"list": []}, "links": [
            {"title": "physmemd dashboards", "type": "dashboards", "tags": ["physmemd"], "asDropdown": True,
             "includeVars": True, "keepTime": True}],
        "panels": layout.panels,
    }


def overview():
    L = Layout()
    L.row("Memory")
    L.add(stat("Free memory", [target(
        f"sum(physmem_zone_free_pages{{{ZSEL}}} * on (job, instance) group_left physmem_page_size_bytes{{{SEL}}})")],
        "bytes", "Free pages of the selected zones and instances, in bytes of the emulated target."), 6, 4)
    L.add(stat("Free / managed", [target(
        f"sum(physmem_zone_free_pages{{{ZSEL}}}) / sum(physmem_zone_managed_pages{{{ZSEL}}})")],
        "percentunit", "Share of the buddy-managed pages that are free."), 6, 4)
    L.add(stat("Leases active", [target(f"sum(physmem_leases_active{{{SEL}}})")]), 6, 4)
    L.add(stat("Daemon RSS", [target(f"sum(process_resident_memory_bytes{{{SEL}}})")], "bytes",
               "Host memory the daemons use: touched arena pages plus page metadata."), 6, 4)
    L.add(timeseries("Free memory by zone", [target(
        f"physmem_zone_free_pages{{{ZSEL}}} * on (job, instance) group_left physmem_page_size_bytes{{{SEL}}}",
        "{{instance}} {{zone}}")], "bytes",
        "Free pages (buddy plus per-CPU lists) of each zone, in bytes of the emulated target.", stack=False), 12, 8)
    L.add(timeseries("Free pages by zone vs low watermark", [
        target(f"physmem_zone_free_pages{{{ZSEL}}}", "{{instance}} {{zone}} free"),
        target(f'physmem_zone_watermark_pages{{{ZSEL}, level="low"}}', "{{instance}} {{zone}} low")], "short",
        "Below the low watermark, allocations that may wait start waiting (kswapd would wake)."), 12, 8)
    L.row("Allocations")
    L.add(timeseries("Allocation rate (pages/s)", [
        target(f"sum by (instance, zone) (rate(physmem_alloc_pages_total{{{ZSEL}}}[{RI}]))", "{{instance}} {{zone}} alloc"),
        target(f"-sum by (instance, zone) (rate(physmem_free_pages_total{{{ZSEL}}}[{RI}]))", "{{instance}} {{zone}} free")],
        "short", "Pages allocated (up) and freed (down) per second, by the zone that served them."), 12, 8)
    L.add(timeseries("Allocations by order (blocks/s)", [
        target(f"sum by (order) (rate(physmem_alloc_total{{{ZSEL}}}[{RI}]))", "order {{order}}")],
        "short", "Successful allocations per second by block order.", stack=True), 12, 8)
    L.add(timeseries("Allocation failures (per s)", [
        target(f"sum by (instance, zone, order, gfp_class) (rate(physmem_alloc_failures_total{{{ZSEL}}}[{RI}]))",
               "{{instance}} {{zone}} order {{order}} {{gfp_class}}")],
        "short", "Failed allocations by preferred zone, order and GFP class. Orders above 3 failing while "
        "memory is free means fragmentation: see the buddy dashboard."), 12, 8)
    L.add(timeseries("Zone fallbacks (per s)", [
        target(f"sum by (zone, preferred_zone) (rate(physmem_alloc_fallbacks_total{{{ZSEL}}}[{RI}]))",
               "{{preferred_zone}} -> {{zone}}")],
        "short", "Allocations served by a lower zone than the preferred one (zonelist fallback)."), 12, 8)
    L.add(timeseries("Per-CPU list hit ratio", [
        target(f"sum by (zone) (rate(physmem_pcp_hits_total{{{ZSEL}}}[{RI}])) / "
               f"sum by (zone) (rate(physmem_alloc_total{{{ZSEL}, order=~\"[0-3]\"}}[{RI}]))", "{{zone}}")],
        "percentunit", "Share of order 0..3 allocations served by a per-CPU list without the zone lock."), 12, 8)
    L.add(timeseries("Per-CPU refills and drains (batches/s)", [
        target(f"sum by (zone) (rate(physmem_pcp_refills_total{{{ZSEL}}}[{RI}]))", "{{zone}} refill"),
        target(f"sum by (zone) (rate(physmem_pcp_drains_total{{{ZSEL}}}[{RI}]))", "{{zone}} drain")],
        "short", "Batches moved between the per-CPU lists and the buddy (each takes the zone lock)."), 12, 8)
    L.row("Leases")
    L.add(timeseries("Lease activity (per s)", [
        target(f"sum(rate(physmem_leases_created_total{{{SEL}}}[{RI}]))", "created"),
        target(f"sum(rate(physmem_leases_revoked_total{{{SEL}}}[{RI}]))", "revoked"),
        target(f"sum(rate(physmem_leases_expired_total{{{SEL}}}[{RI}]))", "expired")],
        "short", "Leases created, revoked and expired per second. Many expiries at once: clients died or lost the daemon."), 8, 8)
    L.add(timeseries("Leases active", [target(f"sum by (instance) (physmem_leases_active{{{SEL}}})", "{{instance}}")]), 8, 8)
    L.add(timeseries("Pages reclaimed from ended leases (per s)", [
        target(f"sum by (instance) (rate(physmem_lease_pages_reclaimed_total{{{SEL}}}[{RI}]))", "{{instance}}")]), 8, 8)
    L.add(timeseries("Pages held by lease name (top 10)", [
        target(f"topk(10, sum by (lease_name) (physmem_lease_held_pages{{{SEL}}}))", "{{lease_name}}")],
        "short", "Pages held, by lease name; names beyond --metrics_max_lease_names are summed as (other)."), 24, 8)
    L.row("RPC")
    L.add(timeseries("RPC rate by method (per s)", [
        target(f"sum by (grpc_method) (rate(grpc_server_handled_total{{{SEL}}}[{RI}]))", "{{grpc_method}}")],
        "reqps"), 8, 8)
    L.add(timeseries("RPC errors by code (per s)", [
        target(f"sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{SEL}, grpc_code!=\"OK\"}}[{RI}]))",
               "{{grpc_method}} {{grpc_code}}")],
        "reqps", "Calls that did not end OK: RESOURCE_EXHAUSTED is no memory (or a quota), NOT_FOUND a gone lease."), 8, 8)
    # Latency of unary calls only: a KeepAlive or health Watch stream "takes" as long as it stays
    # open, minutes, and would swamp every percentile it is summed into.
    UNARY = f'{SEL}, grpc_type="unary"'
    L.add(timeseries("RPC latency percentiles (unary calls)", [
        target(f"histogram_quantile(0.50, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{UNARY}}}[{RI}])))", "p50"),
        target(f"histogram_quantile(0.90, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{UNARY}}}[{RI}])))", "p90"),
        target(f"histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{UNARY}}}[{RI}])))", "p99")],
        "s", "Server-side latency of unary calls over all methods (grpc_server_handling_seconds); streams "
        "(KeepAlive, health Watch) are left out: their duration is how long they stayed open."), 8, 8)
    L.add(timeseries("p50 latency by method (unary calls)", [
        target(f"histogram_quantile(0.50, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{{{UNARY}}}[{RI}])))",
               "{{grpc_method}}")], "s"), 12, 8)
    L.add(timeseries("p99 latency by method (unary calls)", [
        target(f"histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{{{UNARY}}}[{RI}])))",
               "{{grpc_method}}")], "s"), 12, 8)
    L.row("Daemon")
    L.add(panel("table", "Daemons", [
        target(f"physmem_build_info{{{SEL}}}", instant=True, fmt="table"),
        target(f"physmem_arena_backing_info{{{SEL}}}", instant=True, fmt="table")],
        description="Version and target of each daemon, and the arena backing it obtained (hugetlb, thp or ordinary).",
        transformations=[{"id": "merge", "options": {}}]), 24, 6)
    return dashboard("physmemd-overview", "physmemd overview",
                     "Free memory, allocations and failures, leases, RPC rate and latency, per-CPU hit ratio.", L, ["physmemd"])


def buddy():
    L = Layout()
    L.row("Buddy free lists")
    L.add(panel("bargauge", "Free blocks per order (/proc/buddyinfo)", [
        target(f"sum by (zone, order) (physmem_buddyinfo_blocks{{{ZSEL}}})", "{{zone}} order {{order}}", instant=True)],
        description="nr_free per order and zone, now: few high-order blocks with many low-order ones means fragmentation.",
        options={"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}), 12, 14)
    L.add(panel("heatmap", "Free blocks per order over time", [
        target(f"sum by (order) (physmem_buddyinfo_blocks{{{ZSEL}}})", "{{order}}", fmt="time_series")],
        description="One row per order (bottom: order 0), colour = free blocks of the selected zones.",
        options={"calculate": False, "yAxis": {"axisPlacement": "left"}, "color": {"scheme": "Oranges", "mode": "scheme"},
                 "cellGap": 1, "rowsFrame": {"layout": "auto"}, "legend": {"show": True},
                 "tooltip": {"show": True, "yHistogram": False}}), 12, 14)
    L.row("Fragmentation")
    L.add(timeseries("Fragmentation index by order", [
        target(f"physmem_zone_fragmentation_index{{{ZSEL}}}", "{{instance}} {{zone}} order {{order}}")],
        "short", "extfrag_index: -1 = a block of that order is free; 0..1 = why it would fail, "
        "0 lack of memory, towards 1 fragmentation.",
        field_defaults={"min": -1, "max": 1}), 12, 10)
    L.add(panel("bargauge", "Fragmentation index now", [
        target(f"max by (zone, order) (physmem_zone_fragmentation_index{{{ZSEL}}})", "{{zone}} order {{order}}", instant=True)],
        description="Per zone and order, now (-1: a suitable block exists).",
        options={"orientation": "horizontal", "displayMode": "lcd", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        field_defaults={"min": -1, "max": 1}), 12, 10)
    L.row("Mobility grouping (migratetypes)")
    L.add(timeseries("Pageblocks per migratetype", [
        target(f"sum by (migratetype) (physmem_pageblocks{{{ZSEL}}})", "{{migratetype}}")], "short",
        "/proc/pagetypeinfo's 'Number of blocks type': Movable pageblocks turning Unmovable or Reclaimable "
        "is what fragments a zone for good.", stack=True), 8, 8)
    L.add(timeseries("Fallbacks: pageblocks claimed and blocks stolen per second", [
        target(f"sum by (alloc_migratetype) (rate(physmem_migrate_claims_total{{{ZSEL}}}[{RI}])) or vector(0)",
               "claimed for {{alloc_migratetype}}"),
        target(f"sum by (alloc_migratetype) (rate(physmem_migrate_steals_total{{{ZSEL}}}[{RI}])) or vector(0)",
               "stolen for {{alloc_migratetype}}", ref="B")], "ops",
        "An allocation that found no block of its own type took one from another: claimed = the whole pageblock "
        "changed type (try_to_steal_block()), stolen = one block only (0 while none happened)."), 8, 8)
    L.add(timeseries("Highatomic reserve", [
        target(f"sum by (zone) (physmem_highatomic_reserved_pages{{{ZSEL}}})", "{{zone}} reserved"),
        target(f"sum by (zone) (physmem_highatomic_max_pages{{{ZSEL}}})", "{{zone}} cap", ref="B")], "short",
        "Pages set aside for high-order atomic allocations after one succeeded (reserve_highatomic_pageblock()), "
        "against the 1% cap; released before an allocation is declared failed."), 8, 8)
    L.row("Watermarks")
    L.add(timeseries("Free pages and watermarks: $zone", [
        target(f"sum by (zone) (physmem_zone_free_pages{{{ZSEL}}})", "{{zone}} free"),
        target(f'sum by (zone) (physmem_zone_watermark_pages{{{ZSEL}, level="min"}})', "{{zone}} min"),
        target(f'sum by (zone) (physmem_zone_watermark_pages{{{ZSEL}, level="low"}})', "{{zone}} low"),
        target(f'sum by (zone) (physmem_zone_watermark_pages{{{ZSEL}, level="high"}})', "{{zone}} high")],
        "short", "Free pages against the zone's min, low and high watermarks (one panel per zone).",
        repeat="zone", repeatDirection="h", maxPerRow=3), 8, 8)
    L.row("Per-CPU lists and zone sizes")
    L.add(timeseries("Pages on per-CPU lists", [
        target(f"sum by (zone) (physmem_pcp_pages{{{ZSEL}}})", "{{zone}}")], "short",
        "Free pages cached on the per-CPU lists (counted in free pages, not in buddyinfo)."), 12, 8)
    L.add(panel("table", "Zone sizes (pages)", [
        target(f"sum by (zone) (physmem_zone_spanned_pages{{{ZSEL}}})", instant=True, fmt="table"),
        target(f"sum by (zone) (physmem_zone_present_pages{{{ZSEL}}})", instant=True, fmt="table"),
        target(f"sum by (zone) (physmem_zone_managed_pages{{{ZSEL}}})", instant=True, fmt="table"),
        target(f"sum by (zone, for_zone) (physmem_zone_lowmem_reserve_pages{{{ZSEL}}})", instant=True, fmt="table")],
        description="spanned (holes included), present (RAM), managed (buddy); lowmem_reserve per requesting zone.",
        transformations=[{"id": "merge", "options": {}}]), 12, 8)
    return dashboard("physmemd-buddy", "physmemd buddy allocator and fragmentation",
                     "Free blocks per order, fragmentation index, watermarks against free pages.", L, ["physmemd"])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
    for name, d in [("physmemd-overview.json", overview()), ("physmemd-buddy.json", buddy())]:
        with open(os.path.join(out, name), "w") as f:
            json.dump(d, f, indent=2, sort_keys=False)
            f.write("\n")


if __name__ == "__main__":
    main()
