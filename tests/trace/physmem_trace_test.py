#!/usr/bin/python3
"""physmem_trace as a user runs it (label trace). Usage: physmem_trace_test.py CASE PHYSMEM_TRACE SOURCE_DIR

Cases:
  CliReplayCompareAndExitCodes        replay/compare of the committed sample, JSON checked against an
                                      independent count of the file, every refusal's exit code
  RecordRestoresTracefsOnFakeTracefs  record against a fake tracefs directory: settings restored after
                                      a normal end, after Ctrl-C, nothing changed on a refusal
  LiveRecordOneSecondAndReplay        record 1 s on the real tracefs, replay, books balance
  AgreesWithPerfKmemPageStat          perf kmem --page record, then our figures == perf kmem --page stat
  DocsCommandsWork                    the commands of docs/trace.md, as pasted
  RecordProgressOverrunsAndErrors     record on a fake tracefs: progress lines, the kernel's overrun and
                                      dropped counters (exit 5), an output that cannot be created (exit 6,
                                      nothing changed), a setting tracefs refuses (restored)
  ReportHasEveryFigureAndCompareEveryKnob  the report's figures (per order, GFP class, migratetype,
                                      fallbacks, fragmentation over time, buddyinfo, pagetypeinfo) with
                                      their documented JSON names, and compare over every knob
Exit 77 = skipped; the reason is printed first.
"""
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CASE, TOOL, SRC = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
SAMPLE = os.path.join(SRC, "tests/trace/testdata/compile_sample.txt.gz")
SCALE = int(os.environ.get("PHYSMEM_TEST_TIME_SCALE", "1"))
SKIP = 77


def run(args, **kw):
    p = subprocess.run([TOOL] + args, capture_output=True, text=True, timeout=120 * SCALE, **kw)
    return p.returncode, p.stdout, p.stderr


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


def count_file(path):
    """Independent count of a trace file: substring matching, no code shared with trace/."""
    opener = gzip.open if path.endswith(".gz") else open
    c = {"lines": 0, "alloc": 0, "failed": 0, "free": 0, "batched": 0, "matched": 0, "free_only": 0}
    live = set()
    with opener(path, "rt", errors="replace") as f:
        for line in f:
            c["lines"] += 1
            m = re.search(r"pfn=(\S+)", line)
            pfn = m.group(1) if m else None
            if "mm_page_alloc: " in line:
                c["alloc"] += 1
                if pfn == "0xffffffffffffffff" or (pfn == "0x0" and "page=0000000000000000" in line):
                    c["failed"] += 1
                else:
                    live.add(pfn)
            elif "mm_page_free: " in line:
                c["free"] += 1
                if pfn in live:
                    live.discard(pfn)
                    c["matched"] += 1
                else:
                    c["free_only"] += 1
            elif "mm_page_free_batched: " in line:
                c["batched"] += 1
    return c


def check_books(report, counted):
    """What must hold between the file, the plan and each replay."""
    t = report["trace"]
    check(t["events"].get("mm_page_alloc", 0) == counted["alloc"], f"alloc events {t['events']} vs {counted}")
    check(t["events"].get("mm_page_free", 0) == counted["free"], f"free events {t['events']} vs {counted}")
    check(t["events"].get("mm_page_free_batched", 0) == counted["batched"], "free_batched events")
    check(t["skipped"]["failed_allocs"] == counted["failed"], "kernel failures")
    check(t["replayable_allocs"] + t["skipped"]["failed_allocs"] == counted["alloc"], "replayable allocations")
    check(t["replayable_frees"] + t["skipped"]["free_only"] + t["skipped"]["free_order_mismatch"] == counted["free"],
          "replayable frees")
    check(t["skipped"]["free_only"] == counted["free_only"], "free-only")
    check(report["perf_kmem"]["alloc_freed"] == counted["matched"], "alloc+freed")
    for r in report["replays"]:
        check(r["allocs"] + r["alloc_failures"] == t["replayable_allocs"], f"{r['config']}: allocations accounted")
        check(r["frees"] + r["free_of_refused"] + r["free_errors"] == t["replayable_frees"], f"{r['config']}: frees accounted")
        check(r["free_errors"] == 0, f"{r['config']}: no free refused")
        check(sum(r["failures_by_reason"].values()) == r["alloc_failures"], "refusals by reason")
        check(r["blocks_allocated_at_end"] == r["allocs"] - r["frees"], "blocks at end")


def cli_replay_compare_and_exit_codes():
    counted = count_file(SAMPLE)
    rc, out, err = run(["replay", "--trace=" + SAMPLE])
    check(rc == 0, f"replay rc {rc}: {err}")
    for needle in ["SUMMARY (page allocator)", "Total allocation requests", "REPLAY \"replay\"", "Final /proc/buddyinfo",
                   "Fragmentation index over the replay"]:
        check(needle in out, f"replay output has {needle!r}")
    check(f"Total allocation requests     : {counted['alloc']:16d}" in out, "perf-style allocation line")

    rc, out, err = run(["replay", "--trace=" + SAMPLE, "--json=-", "--mem_mb=64"])
    check(rc == 0, f"replay --json rc {rc}: {err}")
    report = json.loads(out)
    check_books(report, counted)
    check(report["replays"][0]["alloc_failures"] > 0, "a 64 MiB machine refuses some of the sample")

    rc, out, err = run(["compare", "--trace=" + SAMPLE, "name=small,mem_mb=64", "name=big,mem_mb=4096", "name=nopcp,pcp=off",
                        "name=percpu,per_cpu=on"])
    check(rc == 0, f"compare rc {rc}: {err}")
    header = [l for l in out.splitlines() if "small" in l and "big" in l and "nopcp" in l and "percpu" in l]
    check(header, "compare prints the configurations side by side")
    check("allocations refused" in out, "compare row")

    with tempfile.TemporaryDirectory() as d:
        json_path = os.path.join(d, "r.json")
        rc, out, err = run(["compare", "--trace=" + SAMPLE, "name=a,mem_mb=128", "name=b,min_free_kbytes=65536", "--json=" + json_path])
        check(rc == 0, f"compare --json rc {rc}: {err}")
        report = json.load(open(json_path))
        check([r["config"] for r in report["replays"]] == ["a", "b"], "both configurations in the JSON")
        check(report["replays"][1]["min_free_kbytes"] >= 65536 - 64, "min_free_kbytes applied")
        check_books(report, counted)

        hostile = os.path.join(d, "hostile.txt")
        with open(hostile, "wb") as f:
            f.write(b"  a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x10 order=0 migratetype=0 gfp_flags=GFP_KERNEL\n")
            f.write(b"  a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x20 order=99 migratetype=0 gfp_flags=GFP_KERNEL\n")
            f.write(b"\x00\x01\x02 binary junk \xff\xfe\n")
            f.write(b"  a-1 [000] ..... 1.0: mm_page_free: page=1 pfn=0xffffffffffffffff order=0\n")
            f.write(b"  a-1 [000] ..... 1.0: mm_page_alloc: page=1 pfn=0x30 order=0 migratetype=0 gfp_flags=GFP_NOPE\n")
            f.write(b"A" * (200 << 10) + b"\n")
        rc, out, err = run(["replay", "--trace=" + hostile])
        check(rc == 0, f"hostile file without --strict: rc {rc}: {err}")
        check("malformed lines (skipped)   : 5" in out, "five malformed lines counted:\n" + out)
        for needle in ["line 2: mm_page_alloc: order=99", "line 3: control byte 0x00", "line 4: mm_page_free: pfn=0xffffffffffffffff",
                       "line 5: mm_page_alloc: gfp_flags=\"GFP_NOPE\"", "line 6: line longer than"]:
            check(needle in out, f"report names {needle!r}")
        rc, out, err = run(["replay", "--trace=" + hostile, "--strict"])
        check(rc == 6 and f"{hostile}:2: mm_page_alloc: order=99" in err, f"--strict refuses at line 2: rc {rc}: {err}")

        truncated = os.path.join(d, "cut.gz")
        data = open(SAMPLE, "rb").read()
        open(truncated, "wb").write(data[: len(data) // 3])
        rc, out, err = run(["replay", "--trace=" + truncated])
        check(rc == 6 and "gzip" in err, f"truncated gzip: rc {rc}: {err}")

    for args, code, needle in [
        (["replay", "--trace=/nonexistent.gz"], 6, "/nonexistent.gz"),
        (["replay"], 1, "--trace=FILE is required"),
        (["compare", "--trace=" + SAMPLE, "name=only"], 1, "two or more configurations"),
        (["compare", "--trace=" + SAMPLE, "colour=red", "name=b"], 1, "unknown key \"colour\""),
        (["compare", "--trace=" + SAMPLE, "mem_mb=lots", "name=b"], 1, "bad value for mem_mb"),
        (["compare", "--trace=" + SAMPLE, "target=vax", "name=b"], 1, "vax"),
        (["frobnicate"], 1, "unknown subcommand"),
        ([], 1, "a subcommand is required"),
        (["record"], 1, "--out=FILE is required"),
    ]:
        rc, out, err = run(args)
        check(rc == code and needle in err, f"{args}: expected exit {code} and {needle!r}, got {rc}: {err}")
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # A copy uid 65534 can execute: the checkout may sit below a directory it cannot enter (/root).
        with tempfile.TemporaryDirectory() as d:
            os.chmod(d, 0o755)
            tool = shutil.copy(TOOL, os.path.join(d, "physmem_trace"))
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", tool, "record", "--seconds=1",
                                "--out=" + os.path.join(d, "never-written.gz")], capture_output=True, text=True, timeout=60)
            check(p.returncode == 2 and "needs root" in p.stderr, f"not root: exit 2, got {p.returncode}: {p.stderr}")
            check(not os.path.exists(os.path.join(d, "never-written.gz")), "nothing written when refused")
    elif os.geteuid() != 0:
        with tempfile.TemporaryDirectory() as d:
            rc, out, err = run(["record", "--seconds=1", "--out=" + os.path.join(d, "never-written.gz")])
            check(rc == 2 and "needs root" in err, f"not root: exit 2, got {rc}: {err}")
    print("ok")


PIPE_TEXT = ("  a-1 [000] ..... 1.000000: mm_page_alloc: page=0000000000000001 pfn=0x10 order=0 migratetype=0 gfp_flags=GFP_KERNEL\n"
             "  a-1 [000] ..... 1.000001: mm_page_free: page=0000000000000001 pfn=0x10 order=0\n")


def make_fake_tracefs(d, events=("mm_page_alloc", "mm_page_free", "mm_page_free_batched"), pipe=PIPE_TEXT):
    def put(rel, text):
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write(text)
    put("trace_pipe", pipe)
    put("trace", "")
    put("set_event", "")
    put("tracing_on", "0\n")
    put("buffer_size_kb", "7 (expanded: 1408)\n")
    put("per_cpu/cpu0/stats", "entries: 0\noverrun: 0\ndropped events: 0\n")
    for e in events:
        put(f"events/kmem/{e}/enable", "0\n")


def snapshot(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            if f in ("enable", "tracing_on", "buffer_size_kb"):
                out[os.path.relpath(os.path.join(root, f), d)] = open(os.path.join(root, f)).read().strip()
    return out


def skip_unless_root_for_record():
    if os.geteuid() != 0:
        print("SKIPPED: record needs root (it refuses before touching tracefs), and this test runs as uid", os.geteuid())
        sys.exit(SKIP)


def record_restores_tracefs_on_fake_tracefs():
    skip_unless_root_for_record()
    with tempfile.TemporaryDirectory() as d:
        fake = os.path.join(d, "tracefs")
        make_fake_tracefs(fake)
        out_path = os.path.join(d, "t.txt")
        rc, out, err = run(["record", "--tracefs=" + fake, "--seconds=0.3", "--out=" + out_path])
        check(rc == 0, f"record on a fake tracefs: rc {rc}: {err}")
        after = snapshot(fake)
        check(all(v == "0" for k, v in after.items() if k.endswith("enable")), f"events disabled again: {after}")
        check(after["tracing_on"] == "0", "tracing_on restored")
        check(after["buffer_size_kb"] == "1408", f"buffer_size_kb restored to the size in effect: {after}")
        check(open(out_path).read() == PIPE_TEXT, "the pipe's text is written as it was read")
        check("tracefs restored" in err, "says it restored tracefs")

        # Ctrl-C in the middle: exit 130, restored, the file holds what was read.
        make_fake_tracefs(fake)
        gz_path = os.path.join(d, "t.txt.gz")
        p = subprocess.Popen([TOOL, "record", "--tracefs=" + fake, "--seconds=600", "--out=" + gz_path],
                             stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30 * SCALE
        while time.time() < deadline and snapshot(fake).get("tracing_on") != "1":
            time.sleep(0.05)
        check(snapshot(fake).get("tracing_on") == "1", "recording started")
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=60 * SCALE)[1]
        check(p.returncode == 130 and "interrupted" in err, f"Ctrl-C: exit 130, got {p.returncode}: {err}")
        after = snapshot(fake)
        check(all(v == "0" for k, v in after.items() if k.endswith("enable")) and after["tracing_on"] == "0",
              f"restored after Ctrl-C: {after}")
        check(gzip.open(gz_path, "rt").read() == PIPE_TEXT, "gzip output holds what was read")

        # Lost events reported by the kernel in the stream: exit 5, file kept, restored.
        make_fake_tracefs(fake, pipe=PIPE_TEXT + "CPU:0 [LOST 42 EVENTS]\n")
        rc, out, err = run(["record", "--tracefs=" + fake, "--seconds=0.3", "--out=" + out_path])
        check(rc == 5 and "lost events" in err and "1 LOST notices" in err, f"lost events: rc {rc}: {err}")
        check(snapshot(fake)["tracing_on"] == "0", "restored after lost events")

        # A required event missing: exit 4 naming it, and nothing changed.
        missing = os.path.join(d, "old-kernel")
        make_fake_tracefs(missing, events=("mm_page_alloc",))
        before = snapshot(missing)
        rc, out, err = run(["record", "--tracefs=" + missing, "--seconds=0.3", "--out=" + out_path])
        check(rc == 4 and "kmem:mm_page_free" in err and "kmem:mm_page_free_batched" in err, f"missing events: rc {rc}: {err}")
        check(snapshot(missing) == before, "nothing changed on refusal")

        # No tracefs at all: exit 3.
        rc, out, err = run(["record", "--tracefs=" + os.path.join(d, "nowhere"), "--seconds=0.3", "--out=" + out_path])
        check(rc == 3 and "no tracefs" in err, f"no tracefs: rc {rc}: {err}")
    print("ok")


def tracefs_dir_or_skip():
    if os.geteuid() != 0:
        print("SKIPPED: recording needs root; this test runs as uid", os.geteuid())
        sys.exit(SKIP)
    return "/sys/kernel/tracing"


def workload(seconds):
    """Something that allocates and frees pages: a Python process churning memory, at most 50 times
    2 MiB a second (~25 k page allocations/s). Unpaced, it churned as fast as the CPU let it, so
    the recording (and every replay of it in DocsCommandsWork: 66 s on a quiet machine, 148 s in a
    loaded CI run) grew with the machine's speed and load."""
    code = ("import time\nend=time.time()+%f\nwhile time.time()<end:\n x=[bytearray(1<<20) for _ in range(2)]\n del x\n"
            " time.sleep(0.02)\n" % seconds)
    return subprocess.Popen(["/usr/bin/python3", "-c", code])


def live_record_one_second_and_replay():
    tracefs = tracefs_dir_or_skip()
    enable = [f"{tracefs}/events/kmem/{e}/enable" for e in ("mm_page_alloc", "mm_page_free", "mm_page_free_batched")]
    before = {p: open(p).read() for p in enable if os.path.exists(p)}
    mounted_before = os.path.exists(f"{tracefs}/trace_pipe")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "live.txt.gz")
        w = workload(3)
        rc, out, err = run(["record", "--seconds=1", "--out=" + path])
        w.wait()
        if rc == 3:
            print("SKIPPED: no tracefs on this machine:", err.strip())
            sys.exit(SKIP)
        if rc == 4:
            print("SKIPPED: this kernel lacks the kmem page events:", err.strip())
            sys.exit(SKIP)
        check(rc in (0, 5), f"record rc {rc}: {err}")
        check("tracefs restored" in err, "record restored tracefs")
        after = {p: open(p).read() for p in before}
        check(after == before, f"enable files as before: {before} -> {after}")
        check(os.path.exists(f"{tracefs}/trace_pipe") == mounted_before,
              f"tracefs {'still mounted' if mounted_before else 'unmounted again'}: {err}")
        counted = count_file(path)
        check(counted["alloc"] > 0, "a second with a workload has page allocations")
        rc, out, err = run(["replay", "--trace=" + path, "--json=-"])
        check(rc == 0, f"replay rc {rc}: {err}")
        report = json.loads(out)
        check_books(report, counted)
        check(report["trace"]["malformed_lines"] == 0, f"no malformed lines in a live recording: {report['trace']['first_errors']}")
        if rc == 5:
            print("note: the kernel lost events during this recording; the books above still balance")
    print("ok: recorded", counted["alloc"], "allocations,", counted["free"], "frees")


def perf_kmem_summary(text):
    rows = {}
    for m in re.finditer(r"^(Total [^:\n]+?)[ \t]*:[ \t]*([\d,]+)[ \t]+\[[ \t]*([\d,]+) KB \]", text, re.M):
        rows[m.group(1)] = (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")))
    table = {}
    for m in re.finditer(r"^[ \t]*(\d+)((?:[ \t]+(?:\d+|\.))+)[ \t]*$", text, re.M):
        cells = m.group(2).split()
        if len(cells) == 5:
            table[int(m.group(1))] = [0 if c == "." else int(c) for c in cells]
    return rows, table


def agrees_with_perf_kmem_page_stat():
    perf = shutil.which("perf")
    if perf is None:
        print("SKIPPED: perf is not installed (Debian package linux-perf; scripts/install-deps.sh installs it)")
        sys.exit(SKIP)
    tracefs = tracefs_dir_or_skip()
    mounted_before = os.path.exists(f"{tracefs}/trace_pipe")
    try:
        perf_kmem_comparison(perf)
    finally:
        # perf mounts tracefs by itself to read the tracepoint formats; leave the machine as found.
        if not mounted_before and os.path.exists(f"{tracefs}/trace_pipe"):
            subprocess.run(["umount", tracefs], check=False)
    print("ok")


def perf_kmem_comparison(perf):
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "perf.data")
        code = "x=[bytearray(1<<20) for _ in range(64)]\ndel x\nimport subprocess\nsubprocess.run(['ls','-R','/usr/include'],capture_output=True)\n"
        p = subprocess.run([perf, "kmem", "--page", "record", "-o", data, "--", "/usr/bin/python3", "-c", code],
                           capture_output=True, text=True, timeout=120 * SCALE)
        if p.returncode != 0 and ("perf_event_paranoid" in p.stderr or "No permission" in p.stderr or "not supported" in p.stderr):
            print("SKIPPED: perf cannot record kmem tracepoints here:", p.stderr.strip()[-300:])
            sys.exit(SKIP)
        check(p.returncode == 0, f"perf kmem --page record: {p.stderr}")
        script = os.path.join(d, "perf.txt")
        with open(script, "w") as f:
            p = subprocess.run([perf, "script", "-i", data], stdout=f, stderr=subprocess.PIPE, text=True, timeout=300 * SCALE)
        check(p.returncode == 0, f"perf script: {p.stderr}")
        p = subprocess.run([perf, "kmem", "-i", data, "--page", "stat"], capture_output=True, text=True, timeout=300 * SCALE,
                           env=dict(os.environ, LC_ALL="C"))
        check(p.returncode == 0, f"perf kmem stat: {p.stderr}")
        perf_rows, perf_table = perf_kmem_summary(p.stdout)
        check(len(perf_rows) == 6 and len(perf_table) == 11, f"parsed perf's summary: {p.stdout}")
        rc, out, err = run(["replay", "--trace=" + script, "--strict"])
        check(rc == 0, f"replay of perf script output: rc {rc}: {err}")
        ours_rows, ours_table = perf_kmem_summary(out)
        print("perf kmem:", perf_rows)
        print("ours:     ", ours_rows)
        check(ours_rows == perf_rows, "the summary lines agree with perf kmem --page stat")
        check(ours_table == perf_table, f"the order x migratetype table agrees: perf {perf_table} ours {ours_table}")


def docs_commands_work():
    """Every physmem_trace and physmemctl command of docs/trace.md's sh blocks, and the README's
    trace block (which must be among them, plus its picture line), run as pasted from a directory
    laid out like the repository (./build/...), against a physmemd this test starts with
    run.sh's defaults (x86_64, 512 MiB), reached as the README says: PHYSMEM_TARGET."""
    doc = open(os.path.join(SRC, "docs/trace.md")).read()
    blocks = re.findall(r"```sh\n(.*?)```", doc, re.S)
    wanted = ("physmem_trace ", "./build/physmemctl ")
    commands = [l.strip() for b in blocks for l in b.splitlines()
                if any(w in l for w in wanted) and not l.strip().startswith("#")]
    check(any(" record " in c for c in commands) and any(" replay " in c for c in commands) and any(" compare " in c for c in commands),
          f"docs/trace.md shows record, replay and compare: {commands}")
    readme = open(os.path.join(SRC, "README.md")).read()
    section = re.search(r"### Replaying kernel traces\n(.*?)\n### ", readme, re.S)
    check(section is not None, "README.md has a 'Replaying kernel traces' section")
    readme_commands = [l.strip() for b in re.findall(r"```sh\n(.*?)```", section.group(1), re.S) for l in b.splitlines()
                       if l.strip() and not l.strip().startswith("#")]
    check(len(readme_commands) == 3 and " record " in readme_commands[0] and " compare " in readme_commands[1]
          and "map --out=" in readme_commands[2], f"README's trace block: record, compare, picture: {readme_commands}")
    check(all(c in commands for c in readme_commands),
          f"README's trace commands are the ones run here: {readme_commands}")
    build = os.path.dirname(os.path.dirname(TOOL))
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "build/trace"))
        os.symlink(TOOL, os.path.join(d, "build/trace/physmem_trace"))
        os.symlink(os.path.join(build, "physmemctl"), os.path.join(d, "build/physmemctl"))
        shutil.copy(SAMPLE, os.path.join(d, "sample.txt.gz"))
        sys.path.insert(0, os.path.join(SRC, "tests"))
        from physmemd_process import Physmemd  # noqa: E402
        with Physmemd(os.path.join(build, "physmemd"), d) as daemon:
            env = dict(os.environ, PHYSMEM_TARGET=daemon.unix_target)
            for c in commands:
                argv = c.split()
                if argv[0] == "sudo":
                    if os.geteuid() != 0:
                        print("not run (needs root, this test runs as uid %d): %s" % (os.geteuid(), c))
                        shutil.copy(SAMPLE, os.path.join(d, "trace.txt.gz"))
                        continue
                    argv = argv[1:]
                w = workload(6) if " record " in c else None
                began = time.monotonic()
                p = subprocess.run(argv, cwd=d, env=env, capture_output=True, text=True, timeout=300 * SCALE)
                took = time.monotonic() - began
                if w:
                    w.wait()
                if " record " in c and p.returncode in (3, 4):
                    print("record not possible here (%s); replaying the committed sample instead" % p.stderr.strip())
                    shutil.copy(SAMPLE, os.path.join(d, "trace.txt.gz"))
                    continue
                check(p.returncode == 0 or (" record " in c and p.returncode == 5), f"{c}: exit {p.returncode}: {p.stderr}")
                if " compare " in c and ",daemon=" in c:
                    # The daemon's column, and the lease holding what the replay's book says.
                    check(re.search(r"^replayed .*physmemd", p.stdout, re.M), f"{c}: no physmemd column:\n{p.stdout}")
                    held = re.findall(r"(\d+) pages by this replay's book, (\d+) by the daemon", p.stdout)
                    check(held and all(a == b for a, b in held), f"{c}: lease pages disagree: {held}")
                if "map --out=" in c:
                    out = re.search(r"--out=(\S+)", c).group(1)
                    with open(os.path.join(d, out), "rb") as f:
                        check(f.read(8) == b"\x89PNG\r\n\x1a\n", f"{c}: {out} is not a PNG")
                print("ran (%.1f s): %s" % (took, c))
    print("ok")


def record_progress_overruns_and_errors():
    skip_unless_root_for_record()
    with tempfile.TemporaryDirectory() as d:
        fake = os.path.join(d, "tracefs")
        make_fake_tracefs(fake)
        out_path = os.path.join(d, "t.txt")
        # The kernel's own loss counters (per_cpu/cpuN/stats) rise while recording: counted from
        # their value at the start, printed in the progress lines and at the end, exit 5. The
        # recording is long and ended by Ctrl-C once a progress line shows the overrun, so a slow
        # or loaded machine cannot end it before the test's write is seen.
        p = subprocess.Popen([TOOL, "record", "--tracefs=" + fake, "--seconds=%d" % (120 * SCALE), "--out=" + out_path],
                             stderr=subprocess.PIPE, text=True)
        seen = []
        while True:
            line = p.stderr.readline()
            check(line, f"record printed what it records before ending: {seen}")
            seen.append(line)
            if "recording kmem:" in line:
                break
        stats = os.path.join(fake, "per_cpu/cpu0/stats")
        with open(stats + ".new", "w") as f:
            f.write("entries: 0\noverrun: 7\ndropped events: 3\n")
        os.replace(stats + ".new", stats)  # atomic: record never reads a half-written file
        while True:
            line = p.stderr.readline()
            check(line, f"a progress line showed the overrun before the recording ended: {seen}")
            seen.append(line)
            if "lines/s" in line and "7 overrun, 3 dropped" in line:
                break
        p.send_signal(signal.SIGINT)
        err = "".join(seen) + p.communicate(timeout=60 * SCALE)[1]
        check(p.returncode == 5 and "7 overwritten, 3 dropped" in err, f"kernel overruns: exit 5 with the counts, got {p.returncode}: {err}")
        progress = [l for l in err.splitlines() if "lines/s" in l]
        check(progress and "lost so far:" in progress[-1], f"progress lines with lines/s and the lost counts: {err}")
        check(any("7 overrun, 3 dropped" in l for l in progress), f"the last progress lines show the overrun: {progress}")
        after = snapshot(fake)
        check(all(v == "0" for k, v in after.items() if k.endswith("enable")) and after["tracing_on"] == "0",
              f"restored after overruns: {after}")

        # An output that cannot be created: exit 6, and tracefs untouched.
        make_fake_tracefs(fake)
        before = snapshot(fake)
        rc, out, err = run(["record", "--tracefs=" + fake, "--seconds=0.3", "--out=" + os.path.join(d, "no-such-dir", "t.gz")])
        check(rc == 6 and "cannot create" in err and "no-such-dir" in err, f"uncreatable output: exit 6, got {rc}: {err}")
        check(snapshot(fake) == before, "nothing changed when the output cannot be created")

        # tracefs refuses a setting half-way (tracing_on cannot be written): what was changed
        # before it (the events' enable files) is put back.
        make_fake_tracefs(fake)
        os.remove(os.path.join(fake, "tracing_on"))
        os.mkdir(os.path.join(fake, "tracing_on"))
        before = snapshot(fake)
        rc, out, err = run(["record", "--tracefs=" + fake, "--seconds=0.3", "--out=" + out_path])
        check(rc == 3 and "tracing_on" in err and "tracefs restored" in err, f"refused setting: exit 3 naming it, got {rc}: {err}")
        # (buffer_size_kb reads "7 (expanded: 1408)" on the fake and is put back as the size in effect, 1408.)
        check(snapshot(fake) == dict(before, buffer_size_kb="1408"), f"put back after the refusal: {before} -> {snapshot(fake)}")
    print("ok")


# The report's JSON field names (docs/trace.md, "stable field names"): a renamed or dropped field
# fails here and must be changed in the docs too.
REPORT_KEYS = {"trace", "perf_kmem", "replays"}
TRACE_KEYS = {"lines", "bytes", "events", "unknown_events", "unknown_event_names", "callchain_lines", "malformed_lines",
              "first_errors", "lost_events", "seconds", "cpus", "replayable_allocs", "replayable_frees", "skipped", "live_at_end"}
SKIPPED_KEYS = {"failed_allocs", "free_only", "free_order_mismatch", "realloc_of_live_pfn", "free_batched", "reference_events"}
PERF_KEYS = {"alloc_requests", "alloc_bytes", "free_requests", "free_bytes", "alloc_freed", "alloc_freed_bytes", "free_only",
             "free_only_bytes", "failures", "failure_bytes", "order_migratetype"}
REPLAY_KEYS = {"config", "mode", "target", "min_free_kbytes", "pcp_requested", "pcp_active", "thread_pages_requested",
               "thread_pages_active", "page_group_by_mobility", "threads",
               "cpu_mapping", "allocs", "alloc_failures", "frees", "free_of_refused", "free_errors", "failures_by_reason",
               "allocs_by_order", "failures_by_order", "frees_by_order", "allocs_by_gfp_class", "failures_by_gfp_class",
               "allocs_by_migratetype", "failures_by_migratetype", "blocks_allocated_at_end", "migrate", "fragmentation",
               "final_buddyinfo", "final_pagetypeinfo", "daemon", "wall_seconds", "ops_per_second"}
MIGRATE_KEYS = {"fallbacks", "claims", "steals", "claims_by_migratetype", "steals_by_migratetype"}
SAMPLE_KEYS = {"ops_done", "trace_seconds", "fallbacks", "claims", "steals", "zones"}
ZONE_KEYS = {"zone", "managed_pages", "free_pages", "fragmentation_index"}
MIGRATETYPES = ["Unmovable", "Movable", "Reclaimable", "HighAtomic", "CMA", "Isolate"]


def count_by_order_and_migratetype(path):
    """Granted kernel allocations per order and per migratetype, counted from the text alone."""
    by_order, by_mt = [0] * 11, [0] * 6
    with gzip.open(path, "rt", errors="replace") as f:
        for line in f:
            if "mm_page_alloc: " not in line or "pfn=0xffffffffffffffff" in line or "page=0000000000000000" in line:
                continue
            by_order[int(re.search(r" order=(\d+)", line).group(1))] += 1
            by_mt[int(re.search(r" migratetype=(\d+)", line).group(1))] += 1
    return by_order, by_mt


def report_has_every_figure_and_compare_every_knob():
    counted = count_file(SAMPLE)
    by_order, by_mt = count_by_order_and_migratetype(SAMPLE)
    with tempfile.TemporaryDirectory() as d:
        json_path = os.path.join(d, "r.json")
        configs = ["name=grouped,mem_mb=128", "name=ungrouped,mem_mb=128,mobility=off",
                   "name=arm,target=arm64,mem_mb=256,pcp=off,min_free_kbytes=8192", "name=cached,mem_mb=128,thread_pages=on"]
        rc, out, err = run(["compare", "--trace=" + SAMPLE, "--samples=6", "--json=" + json_path] + configs)
        check(rc == 0, f"compare rc {rc}: {err}")
        report = json.load(open(json_path))
    for needle in ["GFP class", "Migratetype        allocs", "Migratetype fallbacks", "Fragmentation index over the replay",
                   "Final /proc/buddyinfo", "Final /proc/pagetypeinfo", "Number of blocks type", "Total allocation failures"]:
        check(needle in out, f"the text report has {needle!r}")
    check(re.search(r"^ +grouped +ungrouped +arm +cached$", out, re.M) and
          re.search(r"^mobility grouping +on +off +on +on$", out, re.M) and re.search(r"^thread pages +off +off +off +(on|on \(inactive\))$", out, re.M),
          f"side by side:\n{out[-3000:]}")

    doc = open(os.path.join(SRC, "docs/trace.md")).read()
    for keys in (REPORT_KEYS, TRACE_KEYS, SKIPPED_KEYS, PERF_KEYS, REPLAY_KEYS, MIGRATE_KEYS, SAMPLE_KEYS, ZONE_KEYS):
        for k in keys:
            check(f"`{k}`" in doc or f"`{k}[]`" in doc, f"JSON field {k!r} is documented in docs/trace.md")
    check(set(report) == REPORT_KEYS, f"report keys {set(report)}")
    check(set(report["trace"]) == TRACE_KEYS, f"trace keys {set(report['trace']) ^ TRACE_KEYS}")
    check(set(report["trace"]["skipped"]) == SKIPPED_KEYS, "trace.skipped keys")
    check(set(report["perf_kmem"]) == PERF_KEYS, f"perf_kmem keys {set(report['perf_kmem']) ^ PERF_KEYS}")
    check_books(report, counted)
    t = report["trace"]
    ops = t["replayable_allocs"] + t["replayable_frees"]
    table = report["perf_kmem"]["order_migratetype"]
    check([sum(row) for row in table] == by_order, f"perf table per order {table} vs the file's {by_order}")
    check([sum(row[m] for row in table) for m in range(6)] == by_mt, f"perf table per migratetype vs the file's {by_mt}")

    replays = {r["config"]: r for r in report["replays"]}
    check(list(replays) == ["grouped", "ungrouped", "arm", "cached"], f"configurations in order: {list(replays)}")
    for name, r in replays.items():
        check(set(r) == REPLAY_KEYS, f"{name}: replay keys {set(r) ^ REPLAY_KEYS}")
        check(r["mode"] == "in_process" and r["daemon"] is None, f"{name}: in-process")
        # Per order, per GFP class, per migratetype: every allocation asked once, every refusal once.
        check(r["allocs_by_order"] == by_order, f"{name}: allocations per order {r['allocs_by_order']} vs the file's {by_order}")
        check(sum(r["failures_by_order"]) == r["alloc_failures"], f"{name}: refusals per order")
        check(sum(r["frees_by_order"]) == r["frees"], f"{name}: frees per order")
        check(sum(r["allocs_by_gfp_class"].values()) == t["replayable_allocs"], f"{name}: allocations per GFP class")
        check(sum(r["failures_by_gfp_class"].values()) == r["alloc_failures"], f"{name}: refusals per GFP class")
        check([r["allocs_by_migratetype"].get(m, 0) for m in MIGRATETYPES] == by_mt,
              f"{name}: allocations per migratetype {r['allocs_by_migratetype']} vs the file's {by_mt}")
        check(sum(r["failures_by_migratetype"].values()) == r["alloc_failures"], f"{name}: refusals per migratetype")
        # Fallbacks: each a claim or a steal, by requested type.
        m = r["migrate"]
        check(set(m) == MIGRATE_KEYS, f"{name}: migrate keys {set(m)}")
        check(m["fallbacks"] == m["claims"] + m["steals"], f"{name}: fallbacks = claims + steals: {m}")
        check(sum(m["claims_by_migratetype"].values()) == m["claims"] and sum(m["steals_by_migratetype"].values()) == m["steals"],
              f"{name}: claims and steals by requested type: {m}")
        # The fragmentation index per order over time: --samples points, the last at the end.
        frag = r["fragmentation"]
        check(len(frag) == 6, f"{name}: 6 samples, got {len(frag)}")
        check([s["ops_done"] for s in frag] == sorted(set(s["ops_done"] for s in frag)) and frag[-1]["ops_done"] == ops,
              f"{name}: samples over the replay up to its end: {[s['ops_done'] for s in frag]}")
        check(all(a["trace_seconds"] <= b["trace_seconds"] for a, b in zip(frag, frag[1:])), f"{name}: in trace time")
        check(all(a["fallbacks"] <= b["fallbacks"] for a, b in zip(frag, frag[1:])) and frag[-1]["fallbacks"] == m["fallbacks"],
              f"{name}: fallbacks so far, ending at the total")
        for s in frag:
            check(set(s) == SAMPLE_KEYS and s["zones"], f"{name}: sample keys {set(s)}")
            for z in s["zones"]:
                check(set(z) == ZONE_KEYS and len(z["fragmentation_index"]) == 11, f"{name}: zone sample {z}")
                check(all(-1000 <= i <= 1000 for i in z["fragmentation_index"]), f"{name}: index in thousandths {z}")
                check(z["free_pages"] <= z["managed_pages"], f"{name}: free within managed {z}")
        zones = [z["zone"] for z in frag[-1]["zones"]]
        check(len(re.findall(r"^Node 0, zone ", r["final_buddyinfo"], re.M)) == len(zones), f"{name}: buddyinfo, a line per zone")
        for z in zones:
            check(re.search(r"zone +%s, type +Movable" % z, r["final_pagetypeinfo"]), f"{name}: pagetypeinfo has zone {z}")
        check("Number of blocks type" in r["final_pagetypeinfo"], f"{name}: pagetypeinfo's block counts")
    # Each knob applied as given.
    g, u, a = replays["grouped"], replays["ungrouped"], replays["arm"]
    check(g["page_group_by_mobility"] and not u["page_group_by_mobility"], "mobility=off applied")
    check(g["migrate"]["fallbacks"] > 0, f"a 128 MiB machine with grouping falls back: {g['migrate']}")
    check(u["migrate"]["fallbacks"] == 0, f"no fallbacks without mobility grouping: {u['migrate']}")
    check(re.search(r"^Node 0, zone +Normal +[1-9]\d* +0 +0 +0 +0\s*$", u["final_pagetypeinfo"], re.M),
          f"without grouping every pageblock is Unmovable: {u['final_pagetypeinfo']}")
    check(g["target"].startswith("x86_64 127 MiB") and a["target"].startswith("arm64 256 MiB"), f"targets: {g['target']}, {a['target']}")
    check(g["pcp_requested"] and not a["pcp_requested"] and not a["pcp_active"], "pcp=off applied")
    c = replays["cached"]
    # Thread pages need the per-CPU lists, hence rseq (off in the rseq-off stage).
    check(c["thread_pages_requested"] and c["thread_pages_active"] == c["pcp_active"] and not g["thread_pages_requested"]
          and not g["thread_pages_active"], f"thread_pages=on applied: {c['thread_pages_requested']}, {c['thread_pages_active']}")
    check(a["min_free_kbytes"] >= 8192 - 64 and g["min_free_kbytes"] < 8192, f"min_free_kbytes applied: {a['min_free_kbytes']}")
    check(g["alloc_failures"] > a["alloc_failures"], "the bigger machine refuses fewer")
    print("ok")


CASES = {
    "CliReplayCompareAndExitCodes": cli_replay_compare_and_exit_codes,
    "RecordRestoresTracefsOnFakeTracefs": record_restores_tracefs_on_fake_tracefs,
    "LiveRecordOneSecondAndReplay": live_record_one_second_and_replay,
    "AgreesWithPerfKmemPageStat": agrees_with_perf_kmem_page_stat,
    "DocsCommandsWork": docs_commands_work,
    "RecordProgressOverrunsAndErrors": record_progress_overruns_and_errors,
    "ReportHasEveryFigureAndCompareEveryKnob": report_has_every_figure_and_compare_every_knob,
}
CASES[CASE]()
