"""The README's quick start, run as a newcomer would paste it, so that it cannot drift from what
the programs do: the block of physmemctl commands under "From another terminal" in README.md,
each line run by bash from the repository root (so `./build/...` resolves) against a daemon this
test starts, with no --target:

  1. as root, with PHYSMEM_TARGET naming the test daemon's socket (the README's way to reach a
     daemon elsewhere; root's default socket, /run/physmemd/physmemd.sock, may be a real one);
  2. as an ordinary user (uid 65534, when this test runs as root), with nothing set at all: the
     daemon, started with its default --unix_socket, and physmemctl must meet on that user's
     default socket (server/default_socket.h), as the README promises.

Every line must exit 0; the block's lease must be gone at the end (the README revokes it).
Usage: readme_quickstart_test.py SOURCE_DIR BUILD_DIR
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from physmemd_process import Physmemd, time_scale  # noqa: E402

NOBODY = 65534


def quickstart_block(readme):
    """The sh block that follows the "From another terminal" paragraph."""
    m = re.search(r"From another terminal[^\n]*\n\n```sh\n(.*?)```", readme, re.S)
    if not m:
        raise SystemExit("FAIL: README.md has no quick-start block after 'From another terminal'")
    return m.group(1)


def run_block(block, source, env, user=None):
    """Runs the block in one bash (so L=$(...) carries over), stopping at the first failing line;
    returns (exit status, output)."""
    script = "set -e -o pipefail\ncd %s\n%s" % (source, block)
    argv = ["bash", "-c", script]
    if user is not None:
        argv = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + argv
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60 * time_scale())
    return p.returncode, p.stdout + p.stderr


def check_output(out, failures, who):
    # buddyinfo in /proc/buddyinfo's format, the lease created and revoked, the allocation shown.
    if not re.search(r"^Node 0, zone +\w+( +\d+){11} *$", out, re.M):
        failures.append("%s: no buddyinfo line in:\n%s" % (who, out))
    if not re.search(r"pages_freed=8\b", out):
        failures.append("%s: the revoke did not free the order-3 block:\n%s" % (who, out))


def main():
    source, build = sys.argv[1:3]
    readme = open(os.path.join(source, "README.md")).read()
    block = quickstart_block(readme)
    physmemd = os.path.join(build, "physmemd")
    failures = []
    base_env = {k: v for k, v in os.environ.items() if k not in ("PHYSMEM_TARGET", "XDG_RUNTIME_DIR")}

    # 1. PHYSMEM_TARGET names the daemon.
    with tempfile.TemporaryDirectory() as d:
        with Physmemd(physmemd, d) as daemon:
            env = dict(base_env, PHYSMEM_TARGET=daemon.unix_target)
            rc, out = run_block(block, source, env)
            if rc != 0:
                failures.append("with PHYSMEM_TARGET: exit %d:\n%s" % (rc, out))
            else:
                check_output(out, failures, "with PHYSMEM_TARGET")
                print("ok: the quick start with PHYSMEM_TARGET")

    # 2. An ordinary user, nothing set: the per-user default socket on both sides.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        print("SKIP: the ordinary-user run needs root (to become uid %d) and setpriv" % NOBODY)
    else:
        user_dir = "/tmp/physmemd-%d" % NOBODY
        # The checkout may sit below a directory uid 65534 cannot enter (/root): the block runs in a
        # copy of the layout it needs (./build/physmemctl) that the user can reach.
        play = tempfile.mkdtemp(prefix="physmemd-quickstart-")
        os.chmod(play, 0o755)
        os.makedirs(os.path.join(play, "build"))
        for prog in ("physmemd", "physmemctl"):
            shutil.copy2(os.path.join(build, prog), os.path.join(play, "build", prog))
            os.chmod(os.path.join(play, "build", prog), 0o755)
        os.chmod(os.path.join(play, "build"), 0o755)
        if os.path.exists(os.path.join(user_dir, "physmemd.sock")):
            failures.append("%s/physmemd.sock exists already: another daemon of uid %d? (not touched)"
                            % (user_dir, NOBODY))
        else:
            log_path = tempfile.mktemp(prefix="physmemd-quickstart-", suffix=".log")
            with open(log_path, "w") as log:
                os.chmod(log_path, 0o666)
                daemon = subprocess.Popen(
                    ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                     os.path.join(play, "build", "physmemd"), "--arena=ordinary", "--metrics_listen="],
                    env=base_env, stdout=log, stderr=log)
            try:
                deadline = time.monotonic() + 20 * time_scale()
                while time.monotonic() < deadline and "event=started" not in open(log_path).read():
                    if daemon.poll() is not None:
                        break
                    time.sleep(0.05)
                text = open(log_path).read()
                if "event=started" not in text:
                    failures.append("the uid %d daemon did not start:\n%s" % (NOBODY, text))
                elif "unix=%s/physmemd.sock" % user_dir not in text:
                    failures.append("the uid %d daemon is not on %s/physmemd.sock:\n%s" % (NOBODY, user_dir, text))
                else:
                    rc, out = run_block(block, play, base_env, user=NOBODY)
                    if rc != 0:
                        failures.append("as uid %d with no target: exit %d:\n%s" % (NOBODY, rc, out))
                    else:
                        check_output(out, failures, "as uid %d" % NOBODY)
                        print("ok: the quick start as uid %d, daemon and CLI on the user's default socket" % NOBODY)
            finally:
                daemon.terminate()
                try:
                    daemon.wait(timeout=10 * time_scale())
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                os.unlink(log_path)
                shutil.rmtree(user_dir, ignore_errors=True)
        shutil.rmtree(play, ignore_errors=True)

    for f in failures:
        print("FAIL:", f)
    print("%d failed" % len(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
