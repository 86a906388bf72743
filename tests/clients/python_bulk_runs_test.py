"""The Python client's bulk calls in the run form (issue #15 part 1) against the real daemon:
alloc_bulk asks for runs and expands them into PageHandles whose addresses agree with the daemon's
page_address() (lowmem, and highmem without an address), free_bulk sends order-0 pages as runs and
frees them all, a refused run (a page no longer the lease's: all or nothing on the daemon) falls
back to the per-block form, which frees the rest and names the bad page, and the daemon refuses a
malformed run request (overlap, count 0) with the census unchanged.

Usage: python_bulk_runs_test.py PHYSMEMD_BINARY [GENERATED_DIR]   (run by ctest; GENERATED_DIR is
the build tree's python/ with physmem/v1/*_pb2*.py, default: python/ beside the binary)
"""
import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
from physmemd_process import Physmemd, time_scale  # noqa: E402  (tests/physmemd_process.py)

PHYSMEMD = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ""
GENERATED = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(os.path.dirname(PHYSMEMD), "python")
sys.path[0:0] = [os.path.join(SOURCE, "clients", "python"), GENERATED]
import grpc  # noqa: E402
import physmem  # noqa: E402
from physmem.v1 import physmem_pb2  # noqa: E402

LONG_TTL_MS = 600000

_daemon = None
_dir = None


def setUpModule():
    global _daemon, _dir
    _dir = tempfile.TemporaryDirectory()
    # i386 with 1 GiB: lowmem ends at MAXMEM (887.99 MiB), HighMem above it.
    _daemon = Physmemd(PHYSMEMD, _dir.name, "--target=i386", "--mem_mb=1024").start()


def tearDownModule():
    _daemon.stop()
    _dir.cleanup()


class BulkRunsTest(unittest.TestCase):
    def setUp(self):
        self.client = physmem.Client(_daemon.unix_target, timeout=10 * time_scale(), connect_timeout=10 * time_scale())
        self.census = self.client.validate()

    def tearDown(self):
        self.assertEqual(self.client.validate(), self.census)
        self.client.close()

    def check_pages(self, lease, pages, zone):
        self.assertEqual(len({p.pfn for p in pages}), len(pages))
        for p in pages:
            self.assertEqual((p.order, p.zone), (0, zone))
            self.assertEqual(p.phys_addr, p.pfn * self.client.page_size)
            self.assertEqual(p.address, lease.page_address(p.pfn))

    def test_alloc_bulk_expands_runs_and_free_bulk_returns_them(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            low = lease.alloc_bulk("GFP_KERNEL", 500)
            self.assertEqual(len(low), 500)
            self.check_pages(lease, low, "Normal")
            high = lease.alloc_bulk("GFP_HIGHUSER", 200)
            self.assertEqual(len(high), 200)
            self.check_pages(lease, high, "HighMem")
            self.assertTrue(all(p.address == 0 for p in high))
            self.assertEqual(self.client.validate().allocated_pages, self.census.allocated_pages + 700)
            r = lease.free_bulk(low + high)
            self.assertEqual((r.pages_freed, r.blocks_freed, len(r.refused)), (700, 700, 0))
            self.assertFalse(any(p.owns for p in low + high))
            self.assertEqual(self.client.validate().allocated_pages, self.census.allocated_pages)

    def test_a_refused_run_falls_back_to_per_block_frees(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            pages = lease.alloc_bulk("GFP_KERNEL", 32)
            gone = pages[5].pfn
            self.assertEqual(lease.free(pfn=gone), 1)
            r = lease.free_bulk(pages)
            self.assertEqual((r.pages_freed, r.blocks_freed), (31, 31))
            self.assertEqual([(x.pfn, physmem.status_code(x.code)) for x in r.refused],
                             [(gone, grpc.StatusCode.FAILED_PRECONDITION)])

    def test_the_daemon_refuses_bad_runs_and_changes_nothing(self):
        with self.client.create_lease(ttl_ms=LONG_TTL_MS) as lease:
            pages = lease.alloc_bulk("GFP_KERNEL", 8)
            first = min(p.pfn for p in pages)
            before = self.client.validate()
            for runs, says in (([(first, 2), (first + 1, 1)], "overlap"), ([(first, 0)], "count 0")):
                req = physmem_pb2.FreePagesBulkRequest(lease_id=lease.id)
                for pfn, count in runs:
                    req.run.add(pfn=pfn, count=count)
                with self.assertRaises(grpc.RpcError) as cm:
                    self.client.stub.FreePagesBulk(req, timeout=10 * time_scale())
                self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn(says, cm.exception.details())
                self.assertEqual(self.client.validate(), before)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
