"""The real physmemd as a child process for the Python tests: on a Unix socket in a directory the
test owns (and optionally loopback TCP), waited for until it has logged its "started" line, and
stopped (SIGTERM, then SIGKILL) when the `with` block ends. The Python twin of
tests/daemon_process.h.

Who uses it: tests/server/reflection_test.py, tests/clients/loadgen_test.py,
tests/deploy/ghz_configs_test.py, which put tests/ on sys.path. Thread-safety: one owner thread.
"""
import os
import re
import subprocess
import time


class Physmemd:
    """`with Physmemd(binary, directory, "--mem_mb=64") as d:` d.sock, d.unix_target, d.tcp_port."""

    def __init__(self, binary, directory, *flags, tcp=False, timeout_s=20):
        self.sock = os.path.join(directory, "physmemd.sock")
        self.unix_target = "unix://" + self.sock
        self.log_path = os.path.join(directory, "physmemd.log")
        # Metrics on a free port (the default 9464 would collide between daemons); a test's own
        # --metrics_listen comes later and wins.
        self.argv = [binary, "--unix_socket=" + self.sock, "--arena=ordinary", "--metrics_listen=127.0.0.1:0"]
        if tcp:
            self.argv += ["--tcp=127.0.0.1:0", "--allow_insecure_tcp"]
        self.argv += list(flags)
        self.timeout_s = timeout_s
        self.process = None
        self.tcp_port = 0

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def __enter__(self):
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            started = re.search(r"event=started .*", self.log())
            if started:
                tcp = re.search(r" tcp=(\d+)", started.group(0))
                self.tcp_port = int(tcp.group(1)) if tcp else 0
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("physmemd did not start (%s):\n%s" % (" ".join(self.argv), self.log()))

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return False
