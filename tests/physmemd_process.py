"""The real physmemd as a child process for the Python tests: on a Unix socket in a directory the
test owns (and optionally loopback TCP), waited for until it has logged its "started" line, and
stopped (SIGTERM, then SIGKILL) when the `with` block ends. The Python twin of
tests/daemon_process.h.

Time: real-time waits (the daemon starting and stopping, a log line appearing) are bounded by
time_scale() times their normal-build value, the twin of tests/time_scale.h: a sanitized daemon on
a loaded 2-core machine runs 5-20x slower. A test that needs a lease to expire passes
lease_clock=True: the daemon is then physmemd_test_hooks (tests/server/physmemd_test_main.cc, built
next to physmemd), whose lease clock runs ahead of CLOCK_MONOTONIC by an offset kept in a file;
advance_lease_clock() moves it, and the leases whose deadline it passes expire at the reaper's
next pass (wait_for_log counts their event=lease_expired lines).

Who uses it: tests/server/reflection_test.py, tests/clients/loadgen_test.py,
tests/deploy/ghz_configs_test.py, tests/deploy/prometheus_e2e_test.py,
tests/deploy/deploy_files_test.py, which put tests/ on sys.path. Thread-safety: one owner thread.
"""
import mmap
import os
import re
import struct
import subprocess
import time

# The lease clock file: one signed 64-bit nanosecond offset in native byte order (the int64_t
# physmemd_test_hooks maps).
_CLOCK_OFFSET = struct.Struct("=q")


def time_scale():
    """How much slower than the normal build the daemon under test runs: PHYSMEM_TEST_TIME_SCALE
    (scripts/test.sh sets 5 for ASan, 20 for TSan), else 1. Scales timeouts of real-time waits
    only; tests assert on events, never on how fast they come."""
    try:
        scale = int(os.environ.get("PHYSMEM_TEST_TIME_SCALE", ""))
    except ValueError:
        return 1
    return scale if scale > 0 else 1


class Physmemd:
    """`with Physmemd(binary, directory, "--mem_mb=64") as d:` d.sock, d.unix_target, d.tcp_port.

    `timeout_s`: how long a normal build may take to start (scaled by time_scale()).
    `lease_clock`: run physmemd_test_hooks with a lease clock the test advances
    (advance_lease_clock)."""

    def __init__(self, binary, directory, *flags, tcp=False, timeout_s=20, lease_clock=False):
        self.sock = os.path.join(directory, "physmemd.sock")
        self.unix_target = "unix://" + self.sock
        self.log_path = os.path.join(directory, "physmemd.log")
        self.env = None
        self.clock_path = None
        if lease_clock:
            binary = os.path.join(os.path.dirname(binary), "physmemd_test_hooks")
            self.clock_path = os.path.join(directory, "lease_clock")
            with open(self.clock_path, "wb") as f:
                f.write(_CLOCK_OFFSET.pack(0))
            self.env = dict(os.environ, PHYSMEM_TEST_LEASE_CLOCK=self.clock_path)
        # Metrics on a free port (the default 9464 would collide between daemons); a test's own
        # --metrics_listen comes later and wins.
        self.argv = [binary, "--unix_socket=" + self.sock, "--arena=ordinary", "--metrics_listen=127.0.0.1:0"]
        if tcp:
            self.argv += ["--tcp=127.0.0.1:0", "--allow_insecure_tcp"]
        self.argv += list(flags)
        self.timeout_s = timeout_s * time_scale()
        self.process = None
        self.tcp_port = 0
        self.started_line = ""

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def log_count(self, needle):
        return self.log().count(needle)

    def wait_for_log(self, needle, n=1, timeout_s=10):
        """Waits (up to timeout_s * time_scale()) until the log holds `n` lines with `needle`."""
        deadline = time.monotonic() + timeout_s * time_scale()
        while time.monotonic() < deadline:
            if self.log_count(needle) >= n:
                return True
            time.sleep(0.02)
        return self.log_count(needle) >= n

    def advance_lease_clock(self, ms):
        """Moves the daemon's lease clock `ms` forward (lease_clock=True only): every lease whose
        deadline is then past has expired (Find answers NOT_FOUND at once; the reaper frees it and
        logs event=lease_expired within 20 ms). Only the test writes the offset, and an aligned
        8-byte store is one store, so the daemon never reads half of it."""
        if self.clock_path is None:
            raise RuntimeError("advance_lease_clock needs Physmemd(..., lease_clock=True)")
        with open(self.clock_path, "r+b") as f, mmap.mmap(f.fileno(), _CLOCK_OFFSET.size) as m:
            (offset,) = _CLOCK_OFFSET.unpack_from(m, 0)
            m[0:_CLOCK_OFFSET.size] = _CLOCK_OFFSET.pack(offset + int(ms) * 1000000)

    def start(self):
        """Starts the daemon and waits until it has logged its started line; raises RuntimeError
        (with the log) if it exits or does not start in time."""
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            started = re.search(r"event=started .*", self.log())
            if started:
                self.started_line = started.group(0)
                tcp = re.search(r" tcp=(\d+)", self.started_line)
                self.tcp_port = int(tcp.group(1)) if tcp else 0
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("physmemd did not start (%s):\n%s" % (" ".join(self.argv), self.log()))

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10 * time_scale())
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5 * time_scale())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
