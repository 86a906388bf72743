#!/usr/bin/python3
"""physmem_trace replay --map_every=N --map_dir=DIR on the committed compiler-workload sample:
one picture after every N ops and one at the end, named <configuration>-<ops>.png, each a PNG of
the same size; the machine changes over the replay (first and last pictures differ); the same
with --per_cpu (pictures drawn from several replay threads at once); a missing directory or a
daemon replay is refused with the reason, exit 1.

Usage: replay_maps_test.py PHYSMEM_TRACE SOURCE_DIR   (run by ctest)
"""
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arena_picture as ap  # noqa: E402

EVERY = 20000


def main():
    tool, source = sys.argv[1], sys.argv[2]
    sample = os.path.join(source, "tests", "trace", "testdata", "compile_sample.txt.gz")
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    for extra in ([], ["--per_cpu"]):
        with tempfile.TemporaryDirectory(prefix="replay-maps-") as tmp:
            r = subprocess.run([tool, "replay", "--trace=" + sample, "--mem_mb=512", "--json=-", "--map_every=%d" % EVERY,
                                "--map_dir=" + tmp] + extra, capture_output=True, text=True, timeout=600)
            check(r.returncode == 0, "%s replay exits 0 (%d: %s)" % (extra, r.returncode, r.stderr[-500:]))
            if r.returncode != 0:
                continue
            ops = json.loads(r.stdout)["replays"][0]["fragmentation"][-1]["ops_done"]
            want = ["replay-%012d.png" % n for n in range(EVERY, ops, EVERY)] + ["replay-%012d.png" % ops]
            got = sorted(os.listdir(tmp))
            check(got == want, "%s pictures after every %d of %d ops and at the end: %s" % (extra, EVERY, ops, got))
            check("%d pictures of the arena in %s" % (len(want), tmp) in r.stderr, "%s the count is reported" % extra)
            images = [ap.read_png(os.path.join(tmp, f)) for f in got]
            check(len({(i.width, i.height) for i in images}) == 1, "%s every picture has one size" % extra)
            check(images[0].rows != images[-1].rows, "%s the arena changes over the replay" % extra)
    with tempfile.TemporaryDirectory(prefix="replay-maps-") as tmp:
        missing = os.path.join(tmp, "nope")
        for args, reason in [(["--map_dir=" + missing], "is not an existing directory"),
                             (["--map_dir=" + tmp, "--daemon=unix:" + os.path.join(tmp, "x.sock")], "draws in-process replays")]:
            r = subprocess.run([tool, "replay", "--trace=" + sample, "--map_every=100"] + args, capture_output=True, text=True,
                               timeout=600)
            check(r.returncode == 1 and reason in r.stderr, "%s: exit 1, %r (%d: %s)" % (args[-1], reason, r.returncode,
                                                                                        r.stderr.strip()[-300:]))
        check(os.listdir(tmp) == [], "nothing written by refused runs")
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
