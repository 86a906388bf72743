#!/usr/bin/python3
"""The Python client (clients/python, package physmem) against the real daemon: leases (create,
info, revoke, the `with` block revoking on exit, the keep-alive holding a lease past its TTL,
noticing a revoke made elsewhere, reconnecting after its connection breaks, and surviving the
daemon's kill -9 and restart on its journal), alloc/free single
and bulk, allocation keys, page contents, refusals (the exception's code and message, and the
Validate census unchanged after each), the import path, the default-target rule, and the README's
example (clients/python/examples/quickstart.py, run as a user would).

Time: leases that must live have TTLs of ten minutes; the keep-alive tests need a TTL to pass in
real time, so theirs are short but scaled by time_scale(), as is every wait's bound; waits are for
events (renewal counts, the lease gone), never fixed sleeps.

Usage: python_client_test.py PHYSMEMD_BINARY [GENERATED_DIR [TEST_NAME...]]   (run by ctest;
GENERATED_DIR is the build tree's python/ with physmem/v1/*_pb2*.py, default: python/ beside the
binary; TEST_NAMEs as unittest takes them, e.g. KeepAliveAcrossRestartTest, default: all; or
`--except CLASS...`: every test but those classes'. ctest runs the restart tests as their own
entry so that their waiting overlaps the rest)
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

# The shared helpers live in tests/; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.dirname(TESTS)
PACKAGE_DIR = os.path.join(SOURCE, "clients", "python")
sys.path.insert(0, TESTS)
from physmemd_process import Physmemd, time_scale  # noqa: E402  (tests/physmemd_process.py)

PHYSMEMD = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ""
GENERATED = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(os.path.dirname(PHYSMEMD), "python")
sys.path[0:0] = [PACKAGE_DIR, GENERATED]
import grpc  # noqa: E402
import physmem  # noqa: E402

LONG_TTL_MS = 600000  # leases that must live through the test

_daemon = None
_dir = None


def setUpModule():
    global _daemon, _dir
    _dir = tempfile.TemporaryDirectory()
    _daemon = Physmemd(PHYSMEMD, _dir.name, "--mem_mb=64").start()


def tearDownModule():
    _daemon.stop()
    _dir.cleanup()


def wait_until(predicate, timeout_s):
    """True once predicate() holds, polling; False after timeout_s * time_scale()."""
    deadline = time.monotonic() + timeout_s * time_scale()
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class DaemonTest(unittest.TestCase):
    def setUp(self):
        self.client = physmem.Client(_daemon.unix_target, timeout=10 * time_scale(), connect_timeout=10 * time_scale())
        self.page_size = self.client.page_size
        self.census = self.client.validate()

    def tearDown(self):
        # Every test ends its leases: the daemon is back where the test found it.
        self.assertEqual(self.client.validate(), self.census)
        self.client.close()

    def assertRefused(self, exc_class, fn, *args, contains="", **kwargs):
        """fn(...) raises exc_class with its code and a message, and changes nothing."""
        before = self.client.validate()
        with self.assertRaises(exc_class) as cm:
            fn(*args, **kwargs)
        e = cm.exception
        self.assertIsInstance(e, physmem.PhysmemError)
        self.assertIsInstance(e.code, grpc.StatusCode)
        self.assertEqual(e.code, exc_class.code)
        self.assertTrue(e.message, "refusal without a message")
        self.assertIn(contains, e.message)
        self.assertEqual(self.client.validate(), before, "a refused call changed the census: %s" % e)
        return e


class LeaseTest(DaemonTest):
    def test_create_info_list_revoke(self):
        lease = self.client.create_lease(ttl_ms=LONG_TTL_MS, name="py-lease", quota=64, keepalive=False)
        info = lease.info()
        self.assertEqual((info.lease_id, info.name, info.granted_ttl_ms, info.page_quota),
                         (lease.id, "py-lease", LONG_TTL_MS, 64))
        self.assertTrue(0 < info.ttl_ms <= LONG_TTL_MS)
        self.assertTrue(info.identity.startswith("uid:"), info.identity)
        self.assertIn(lease.id, [l.lease_id for l in self.client.list_leases()])
        self.assertGreater(lease.renew(), 0)
        lease.alloc_pages("GFP_KERNEL", order=1)
        self.assertEqual(self.client.validate().leases, self.census.leases + 1)
        self.assertEqual(lease.revoke(), 2)
        self.assertTrue(lease.gone)
        self.assertRefused(physmem.NotFoundError, self.client.get_lease, lease.id)
        # Known gone: fails fast, without a call.
        self.assertRefused(physmem.NotFoundError, lease.alloc_pages, "GFP_KERNEL")
        self.assertRefused(physmem.NotFoundError, lease.revoke)

    def test_with_block_revokes_on_exit(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS, name="py-with") as lease:
            lease.alloc_pages("GFP_KERNEL", order=3)
            self.assertEqual(self.client.validate().allocated_pages, self.census.allocated_pages + 8)
        self.assertTrue(lease.gone)
        self.assertRefused(physmem.NotFoundError, self.client.get_lease, lease.id)
        self.assertEqual(self.client.validate(), self.census)
        # An exception leaving the block still revokes, and is not masked.
        with self.assertRaises(ValueError):
            with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease2:
                lease2.alloc_pages("GFP_KERNEL", order=0)
                raise ValueError("boom")
        self.assertRefused(physmem.NotFoundError, self.client.get_lease, lease2.id)

    def test_keepalive_holds_lease_past_its_ttl(self):
        ttl_ms = 1000 * time_scale()
        start = time.monotonic()
        with self.client.create_lease(ttl_ms=ttl_ms, name="py-keepalive") as lease:
            page = lease.alloc_pages("GFP_KERNEL")
            # Renewals every ttl/4: wait for 1.5 TTLs to have passed and the renewals to show it.
            self.assertTrue(wait_until(lambda: time.monotonic() - start > 1.5 * ttl_ms / 1000.0 and lease.renewals >= 4,
                                       10 * ttl_ms / 1000.0), "renewals: %d" % lease.renewals)
            info = lease.info()
            self.assertGreater(info.ttl_ms, 0)
            self.assertEqual(info.pages_held, 1)
            self.assertIsNone(lease.keepalive_error)
            self.assertEqual(page.free(), 1)

    def test_keepalive_notices_revoke_elsewhere(self):
        with self.client.create_lease(ttl_ms=1000 * time_scale()) as lease:
            self.assertEqual(self.client.revoke_lease(lease.id), 0)
            # The next renewal (within ttl/4) is answered with ttl 0.
            self.assertTrue(wait_until(lambda: lease.gone, 10), "the keep-alive never saw the revoke")
            e = self.assertRefused(physmem.NotFoundError, lease.alloc_pages, "GFP_KERNEL")
            self.assertIn("no longer exists", e.message)
        # The with exit found it gone and stayed quiet.

    def test_keepalive_reconnects_after_the_connection_breaks(self):
        with UnixProxy(os.path.join(_dir.name, "proxy.sock"), _daemon.sock) as proxy, \
                physmem.Client("unix://" + proxy.path, timeout=10 * time_scale()) as via_proxy:
            with via_proxy.create_lease(ttl_ms=3000 * time_scale(), name="py-reconnect") as lease:
                self.assertTrue(wait_until(lambda: lease.renewals >= 1, 10))
                proxy.break_all()
                renewals = lease.renewals
                # Renewals after the break came on a new connection: the stream was re-opened.
                self.assertTrue(wait_until(lambda: lease.renewals >= renewals + 2, 20),
                                "no renewals after the break (error: %s)" % lease.keepalive_error)
                self.assertGreaterEqual(proxy.accepted, 2)
                self.assertFalse(lease.gone)
                self.assertGreater(self.client.get_lease(lease.id).ttl_ms, 0)

    def test_attach_and_release(self):
        lease = self.client.create_lease(ttl_ms=LONG_TTL_MS, keepalive=False)
        self.assertEqual(lease.release(), lease.id)
        with self.client.attach_lease(lease.id, revoke_on_exit=True) as attached:
            self.assertEqual(attached.granted_ttl_ms, LONG_TTL_MS)
        self.assertRefused(physmem.NotFoundError, self.client.attach_lease, lease.id)


class AllocFreeTest(DaemonTest):
    def test_alloc_and_free_one_block(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            page = lease.alloc_pages("GFP_KERNEL", order=2)
            self.assertEqual((page.order, page.pages, page.size), (2, 4, 4 * self.page_size))
            self.assertEqual(page.pfn % 4, 0)
            self.assertEqual(page.phys_addr, page.pfn * self.page_size)
            self.assertIn(page.zone, ("DMA", "DMA32", "Normal"))
            self.assertEqual(lease.page_address(page.pfn), page.virt_addr)
            self.assertEqual(lease.info().pages_held, 4)
            self.assertEqual(self.client.validate().allocated_pages, self.census.allocated_pages + 4)
            self.assertEqual(page.free(), 4)
            self.assertFalse(page.owns)
            self.assertEqual(self.client.validate().allocated_pages, self.census.allocated_pages)
            # A second free through the handle is refused here; by pfn, by the daemon.
            self.assertRefused(physmem.FailedPreconditionError, page.free)
            self.assertRefused(physmem.FailedPreconditionError, lease.free, page.pfn, 2)

    def test_address_forms_and_zone_modifiers(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            page = lease.get_free_pages("GFP_KERNEL", order=1)
            self.assertNotEqual(page.address, 0)
            self.assertEqual(lease.free(addr=page.address, order=1), 2)
            dma = lease.alloc_pages("GFP_KERNEL|__GFP_DMA")
            self.assertEqual(dma.zone, "DMA")
            with lease.alloc_pages(0xcc0 | 0x4) as dma32:  # GFP_KERNEL|__GFP_DMA32 as a number
                self.assertEqual(dma32.zone, "DMA32")
            self.assertFalse(dma32.owns)  # the with block freed it
            self.assertEqual(lease.info().pages_held, 1)

    def test_bulk(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            pages = lease.alloc_bulk("GFP_KERNEL", 32)
            self.assertEqual(len(pages), 32)
            self.assertEqual(len({p.pfn for p in pages}), 32)
            self.assertTrue(all(p.order == 0 and p.zone in ("DMA", "DMA32", "Normal") for p in pages))
            self.assertEqual(self.client.validate().allocated_pages, self.census.allocated_pages + 32)
            r = lease.free_bulk(pages)
            self.assertEqual((r.pages_freed, r.blocks_freed, len(r.refused)), (32, 32, 0))
            self.assertFalse(any(p.owns for p in pages))
            # A refused block in a bulk free is reported, and changes nothing.
            keep = lease.alloc_pages("GFP_KERNEL", order=1)
            before = self.client.validate()
            r = lease.free_bulk([pages[0].pfn, (keep.pfn + 1, 0)])
            self.assertEqual((r.pages_freed, r.blocks_freed), (0, 0))
            self.assertEqual([physmem.status_code(x.code) for x in r.refused],
                             [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION])
            self.assertTrue(all(x.message for x in r.refused))
            self.assertEqual(self.client.validate(), before)
            self.assertEqual(lease.free_bulk([(keep.pfn, 1)]).pages_freed, 2)

    def test_zone_info_and_buddyinfo(self):
        zones = {z.zone: z for z in self.client.zone_info()}
        self.assertIn("Normal", zones)
        self.assertEqual(sum(z.free_pages for z in zones.values()), self.census.free_pages)
        self.assertRegex(self.client.buddyinfo(), r"^Node 0, zone +DMA ")


class KeyTest(DaemonTest):
    def test_key_replays_the_same_block(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            first = lease.alloc_pages("GFP_KERNEL", order=1, key="rx-ring-0")
            self.assertFalse(first.replayed)
            self.assertEqual(first.key, "rx-ring-0")
            census = self.client.validate()
            again = lease.alloc_pages("GFP_KERNEL", order=1, key="rx-ring-0")
            self.assertTrue(again.replayed)
            self.assertEqual((again.pfn, again.order, again.zone), (first.pfn, first.order, first.zone))
            self.assertEqual(self.client.validate(), census, "a replay allocated again")
            self.assertEqual(lease.free(key="rx-ring-0"), 2)
            self.assertRefused(physmem.NotFoundError, lease.free, key="rx-ring-0", contains="rx-ring-0")


class ContentsTest(DaemonTest):
    def test_write_then_read_back(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            page = lease.alloc_pages("GFP_KERNEL", order=1)
            data = os.urandom(page.size)
            self.assertEqual(page.write(data), len(data))
            self.assertEqual(page.read(), data)
            # Across the block's two pages, addressed from its second page.
            self.assertEqual(lease.write(page.pfn, self.page_size - 3, b"abcdef"), 6)
            self.assertEqual(lease.read(page.pfn + 1, 0, 3), b"def")
            self.assertEqual(page.read(self.page_size - 3, 6), b"abcdef")
            self.assertRefused(physmem.OutOfRangeError, page.read, page.size - 1, 2)

    def test_gfp_zero_page_reads_zero(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            # Dirty a page and free it: the per-CPU list hands the hot page back next.
            dirty = lease.alloc_pages("GFP_KERNEL")
            dirty.write(b"\xff" * self.page_size)
            dirty.free()
            zeroed = lease.alloc_pages("GFP_KERNEL|__GFP_ZERO")
            self.assertEqual(zeroed.read(), bytes(self.page_size))
            self.assertEqual(lease.get_zeroed_page("GFP_KERNEL").read(), bytes(self.page_size))


class RefusalTest(DaemonTest):
    def test_refusals_carry_code_and_message_and_change_nothing(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            page = lease.alloc_pages("GFP_KERNEL", order=1)
            self.assertRefused(physmem.InvalidArgumentError, lease.alloc_pages, "GFP_BOGUS", contains="GFP_BOGUS")
            self.assertRefused(physmem.InvalidArgumentError, lease.alloc_pages, "GFP_KERNEL|__GFP_DMA|__GFP_DMA32")
            self.assertRefused(physmem.InvalidArgumentError, lease.alloc_pages, "GFP_KERNEL", order=11)
            self.assertRefused(physmem.InvalidArgumentError, lease.free, page.pfn + 1, 1)  # misaligned
            self.assertRefused(physmem.FailedPreconditionError, lease.get_free_pages, "GFP_HIGHUSER")
            self.assertRefused(physmem.InvalidArgumentError, self.client.create_lease, ttl_ms=1)
            self.assertRefused(physmem.InvalidArgumentError, lease.read, page.pfn, 0, 0)
            unknown = lease.id ^ 0x5a5a5a5a
            self.assertRefused(physmem.NotFoundError, self.client.alloc_pages, unknown, "GFP_KERNEL")
            self.assertRefused(physmem.NotFoundError, self.client.revoke_lease, unknown)
            self.assertRefused(physmem.NotFoundError, self.client.read, unknown, page.pfn, 0, 1)
            self.assertEqual(page.free(), 2)

    def test_no_daemon_is_unavailable_with_the_reason(self):
        with self.assertRaises(physmem.UnavailableError) as cm:
            physmem.Client("unix://" + os.path.join(_dir.name, "nobody.sock"))
        self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertIn("no such socket file", cm.exception.message)


class PackagingTest(unittest.TestCase):
    def test_default_target_mirrors_default_socket_h(self):
        system = os.path.exists(physmem.default_socket.SYSTEM_SOCKET)
        with mock.patch.dict(os.environ, {"PHYSMEM_TARGET": "host:7070"}):
            self.assertEqual(physmem.default_target(), "host:7070")
        with mock.patch.dict(os.environ, {"PHYSMEM_TARGET": "", "XDG_RUNTIME_DIR": "/run/user/1234"}):
            self.assertEqual(physmem.user_socket_path(), "/run/user/1234/physmemd.sock")
            if not system:
                self.assertEqual(physmem.default_target(), "unix:///run/user/1234/physmemd.sock")
        with mock.patch.dict(os.environ, {"PHYSMEM_TARGET": ""}):
            os.environ.pop("XDG_RUNTIME_DIR", None)
            self.assertEqual(physmem.user_socket_path(), "/tmp/physmemd-%d/physmemd.sock" % os.getuid())

    def test_errors_map_codes_to_subclasses(self):
        e = physmem.errors.error_for(grpc.StatusCode.ALREADY_EXISTS, "name taken")
        self.assertIsInstance(e, physmem.AlreadyExistsError)
        self.assertEqual((e.code, e.message, str(e)), (grpc.StatusCode.ALREADY_EXISTS, "name taken",
                                                       "ALREADY_EXISTS: name taken"))
        e = physmem.errors.error_for(grpc.StatusCode.ABORTED, "why")
        self.assertIs(type(e), physmem.PhysmemError)
        self.assertEqual(e.code, grpc.StatusCode.ABORTED)
        self.assertEqual(physmem.status_code(9), grpc.StatusCode.FAILED_PRECONDITION)

    def test_import_in_either_path_order_and_a_clear_error_without_stubs(self):
        code = "import physmem; print(physmem.Client.__module__, physmem.physmem_pb2.__file__)"
        for path in ([PACKAGE_DIR, GENERATED], [GENERATED, PACKAGE_DIR]):
            out = run_python(["-c", code], path)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertTrue(out.stdout.startswith("physmem.client " + GENERATED), out.stdout)
        out = run_python(["-c", code], [PACKAGE_DIR])
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("PYTHONPATH=clients/python:build/python", out.stderr)


class ExampleTest(DaemonTest):
    def test_readme_example_runs(self):
        example = os.path.join(PACKAGE_DIR, "examples", "quickstart.py")
        with open(example) as f:
            code = f.read()
        with open(os.path.join(PACKAGE_DIR, "README.md")) as f:
            self.assertIn(code[code.index("import physmem"):], f.read(), "README's example differs from quickstart.py")
        out = run_python([example], [PACKAGE_DIR, GENERATED], PHYSMEM_TARGET=_daemon.unix_target)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("INVALID_ARGUMENT", out.stdout)
        self.assertIn("Node 0, zone   Normal", out.stdout)


class KeepAliveAcrossRestartTest(unittest.TestCase):
    """A lease kept alive by the Python client survives the daemon's kill -9 and restart on its
    journal (file-backed arena in /dev/shm, removed afterwards) when the restart is shorter than
    the TTL: the issue's cases, 2 s across 1 s and 6 s across 3 s, both scaled by time_scale(). The
    kill comes just before a renewal is due, when the lease has the least time left."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.arena = "/dev/shm/physmemd-py-keepalive-restart-%d" % os.getpid()
        self.flags = ("--target=i386", "--mem_mb=64", "--arena_path=" + self.arena)

    def tearDown(self):
        self.dir.cleanup()
        for name in os.listdir("/dev/shm"):
            path = os.path.join("/dev/shm", name)
            if path.startswith(self.arena):
                os.remove(path)

    def test_lease_survives_a_kill_and_restart_shorter_than_its_ttl(self):
        for ttl_s, down_s in ((2, 1), (6, 3)):
            with self.subTest(ttl_s=ttl_s, down_s=down_s):
                if ttl_s > 2 and time_scale() > 1:
                    # The same code paths as the 2 s case; scaled for a sanitizer it would wait
                    # minutes for renewals and check nothing new. The normal build runs it.
                    self.skipTest("6 s across 3 s runs on the normal build only (time scale %d)" % time_scale())
                self.survives(ttl_s * time_scale(), down_s * time_scale())

    def survives(self, ttl_s, down_s):
        daemon = Physmemd(PHYSMEMD, self.dir.name, *self.flags).start()
        try:
            with physmem.Client(daemon.unix_target, timeout=10 * time_scale()) as client:
                with client.create_lease(ttl_ms=int(ttl_s * 1000), name="py-restart") as lease:
                    page = lease.alloc_pages("GFP_KERNEL", order=1)
                    lease.write(page.pfn, 8, b"survives")
                    self.assertTrue(wait_until(lambda: lease.renewals >= 2, 10))
                    # Just before the next renewal (every ttl/4): the least time left.
                    for _ in range(10):
                        seen = lease.renewals
                        self.assertTrue(wait_until(lambda: lease.renewals > seen, 10))
                        count = lease.renewals
                        time.sleep(0.9 * ttl_s / 4)
                        if lease.renewals == count:
                            break
                    daemon.process.kill()
                    daemon.process.wait(timeout=10 * time_scale())
                    time.sleep(down_s)
                    daemon = Physmemd(PHYSMEMD, self.dir.name, *self.flags).start()
                    self.assertTrue(daemon.wait_for_log("event=recovered"), daemon.log())
                    self.assertTrue(wait_until(lambda: lease.renewals > count, 20),
                                    "no renewal after the restart (error: %s)\n%s" % (lease.keepalive_error, daemon.log()))
                    self.assertFalse(lease.gone)
                    self.assertEqual(daemon.log_count("event=lease_expired"), 0, daemon.log())
                    info = client.get_lease(lease.id)
                    self.assertEqual(info.pages_held, 2)
                    self.assertEqual(lease.read(page.pfn, 8, 8), b"survives")
                    self.assertEqual(page.free(), 2)
        finally:
            daemon.stop()

def run_python(args, path, **env):
    env = dict(os.environ, PYTHONPATH=":".join(path), PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True, timeout=60 * time_scale())


class UnixProxy:
    """A Unix-socket relay to the daemon whose connections the test can cut (break_all): the
    daemon sees the relay's uid, so the identity stays the same across reconnections."""

    def __init__(self, path, upstream):
        self.path = path
        self.upstream = upstream
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(16)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return  # closed
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
            with self._lock:
                self._conns += [down, up]
                self.accepted += 1
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def break_all(self):
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the pumps' recv
            except OSError:
                pass
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._listener.close()
        self.break_all()
        return False


if __name__ == "__main__":
    if not PHYSMEMD:
        sys.exit(__doc__)
    if sys.argv[3:4] == ["--except"]:
        excluded = set(sys.argv[4:])
        module = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
        suite = unittest.TestSuite(c for c in module if not any(type(t).__name__ in excluded for t in c))
        sys.exit(0 if unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful() else 1)
    unittest.main(argv=[sys.argv[0], "-v"] + sys.argv[3:])
