#!/usr/bin/env python3
"""The TSan run still fails on a race in a gRPC handler: runs racy_handler_canary (TSan build) with
the TSan options scripts/test.sh gives the server and client tests (inherited through ctest), into
a report directory of its own, and expects tsan_reports.py to exit 1 pointing at the canary's
handler.

Usage: canary_test.py CANARY_BINARY TSAN_REPORTS_PY SUPPRESSIONS
"""
import os
import subprocess
import sys
import tempfile


def main(canary, judge, suppressions):
    with tempfile.TemporaryDirectory(prefix="tsan-canary-") as reports:
        env = dict(os.environ)
        # The options scripts/test.sh gives the server run (inherited), except where the reports
        # go; the ones this test depends on are set whatever was inherited.
        own = ("log_path", "exitcode", "halt_on_error", "suppressions")
        inherited = [o for o in env.get("TSAN_OPTIONS", "").replace(":", " ").split()
                     if o.split("=", 1)[0] not in own]
        env["TSAN_OPTIONS"] = " ".join(inherited + [
            "halt_on_error=0", "exitcode=0", f"suppressions={suppressions}", f"log_path={reports}/tsan"])
        # The canary bounds its own waits (its calls' deadline is 80 s under TSan, scaled by
        # tests/time_scale.h); this timeout only catches a hang beyond them.
        run = subprocess.run(["setarch", os.uname().machine, "-R", canary], env=env,
                             capture_output=True, text=True, timeout=120)
        print(run.stdout, run.stderr)
        if run.returncode != 0:
            print(f"FAIL: the canary itself failed (exit {run.returncode})")
            return 1
        verdict = subprocess.run([sys.executable, judge, "--quiet", reports],
                                 capture_output=True, text=True, timeout=60)
        print(verdict.stdout, verdict.stderr)
        if verdict.returncode != 1:
            print(f"FAIL: tsan_reports.py exited {verdict.returncode}, expected 1 (a race of ours)")
            return 1
        if "--- OURS" not in verdict.stdout or "racy_handler_canary.cc:" not in verdict.stdout:
            print("FAIL: the failing report does not point at the racing handler (racy_handler_canary.cc)")
            return 1
    print("PASS: the race in the handler failed the run")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
