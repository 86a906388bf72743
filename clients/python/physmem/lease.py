"""Lease: a lease this process owns, kept alive by a background thread over the KeepAlive stream
and revoked when its `with` block ends. The Python twin of clients/physmem_client.h's Lease: the
same renewal rhythm (every ttl/4), the same reconnection (a broken stream is reopened after 50 ms,
doubling up to ttl/20, at most 1 s, and waits for the channel, which retries its connection every
200 ms at most, see client.py: a lease survives a daemon restart of D ms, start-up included,
whenever D < TTL - ttl/4 - 200 ms), the same "gone" rule (a
renewal answered with ttl_ms 0 means the lease expired, was revoked elsewhere, or a daemon without
its journal restarted; later calls then fail fast with NotFoundError). docs/recovery.md says what a
restart does to clients.

Thread-safety: a Lease may be used from several threads; the keep-alive runs on its own thread.
"""
import queue
import threading

import grpc

from physmem.errors import NotFoundError, UnavailableError, from_rpc_error
from physmem.v1 import physmem_pb2

# docs/recovery.md, "What a restart does to clients": renew every ttl/4; reopen a broken stream after
# 50 ms, doubling up to ttl/20 (at most 1 s) while streams keep failing on a daemon that answers.
_RENEW_DIVISOR = 4
_MIN_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0
_BACKOFF_TTL_DIVISOR = 20
# Codes a reconnection cannot cure: not our lease, not authenticated, not served.
_FATAL_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.UNIMPLEMENTED)


class Lease:
    """A lease: `id`, `granted_ttl_ms`, `page_quota` (pages), `name`.

    Made by Client.create_lease() (keep-alive on, revoked on exit) or Client.attach_lease().
    `with client.create_lease(ttl_ms=10000) as lease:` keeps it alive inside the block and revokes
    it (freeing every page it holds) at the end. Without `with`, call revoke() or release()."""

    def __init__(self, client, lease_id, granted_ttl_ms, page_quota, name="", keepalive=True,
                 revoke_on_exit=True):
        self._client = client
        self.id = lease_id
        self.granted_ttl_ms = granted_ttl_ms
        self.page_quota = page_quota
        self.name = name
        self._keepalive = keepalive
        self._revoke_on_exit = revoke_on_exit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._call = None          # the live KeepAlive stream, to cancel it on stop
        self._renewals = 0
        self._error = None         # the stream's last error, None while healthy
        self._gone = None          # why the lease is known to be gone, None while it lives
        self._backoff = _MIN_BACKOFF_S

    # ---- liveness ----

    @property
    def gone(self):
        """True once the lease is known to be gone (ttl 0 from the keep-alive, or revoked here)."""
        return self._gone is not None

    @property
    def renewals(self):
        """Renewals answered with a live TTL so far."""
        with self._lock:
            return self._renewals

    @property
    def keepalive_error(self):
        """The keep-alive stream's last error (a PhysmemError), None while healthy or not running."""
        with self._lock:
            return self._error

    def _check_alive(self):
        if self._gone is not None:
            raise NotFoundError(self._gone)

    def _mark_gone(self, why):
        with self._lock:
            if self._gone is None:
                self._gone = why

    # ---- lifetime ----

    def __enter__(self):
        if self._keepalive:
            self.start_keepalive()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop_keepalive()
        if self._revoke_on_exit and not self.gone:
            try:
                self.revoke()
            except NotFoundError:
                pass  # it expired or was revoked elsewhere: the end we wanted
            except Exception:
                if exc_type is None:
                    raise  # else the block's own exception matters more
        return False

    def revoke(self):
        """Revokes now (the keep-alive stops first); returns the pages that freed. NotFoundError if
        the lease is already gone."""
        self.stop_keepalive()
        self._check_alive()
        pages = self._client.revoke_lease(self.id)
        self._mark_gone("lease %d was revoked by this client" % self.id)
        return pages

    def release(self):
        """Leaves the lease to the daemon: stops the keep-alive, and the `with` exit will not revoke
        it, so it expires one TTL after its last renewal. Returns the id."""
        self._revoke_on_exit = False
        self.stop_keepalive()
        return self.id

    def info(self):
        """GetLease: remaining ttl_ms, pages_held, holdings by zone and order (physmem_pb2.LeaseInfo)."""
        self._check_alive()
        return self._client.get_lease(self.id)

    def renew(self):
        """One unary renewal (RenewLease); returns the new ttl_ms."""
        self._check_alive()
        return self._client.renew_lease(self.id)

    # ---- keep-alive ----

    def start_keepalive(self):
        """Starts the keep-alive thread unless it runs already or the lease is gone."""
        with self._lock:
            if self._gone is not None or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop.clear()
            # A daemon thread: a Lease left open must not keep the interpreter from exiting (the
            # daemon then lets the lease expire one TTL later).
            self._thread = threading.Thread(target=self._keepalive_loop, name="physmem-keepalive-%d" % self.id,
                                            daemon=True)
            self._thread.start()

    def stop_keepalive(self):
        """Stops the keep-alive thread and waits for it (idempotent)."""
        self._stop.set()
        with self._lock:
            call, thread = self._call, self._thread
        if call is not None:
            call.cancel()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _keepalive_loop(self):
        self._backoff = _MIN_BACKOFF_S
        while self._keepalive_stream():
            if self._stop.wait(self._backoff):
                return
            cap = min(max(_MIN_BACKOFF_S, self.granted_ttl_ms / 1000.0 / _BACKOFF_TTL_DIVISOR), _MAX_BACKOFF_S)
            self._backoff = min(self._backoff * 2, cap)

    def _keepalive_stream(self):
        """Runs one KeepAlive stream until it breaks (True: retry after the backoff), or the lease
        is gone or the keep-alive stopped (False)."""
        # gRPC Python sends a stream's requests from an iterator on its own thread: a queue lets
        # this thread write one request per answer, as the C++ client does (write, read, sleep).
        requests = queue.Queue()

        def request_iterator():
            while True:
                req = requests.get()
                if req is None:
                    return  # half-close
                yield req

        with self._lock:
            if self._stop.is_set():
                return False
            # wait_for_ready: while the daemon is away the stream waits for the channel to
            # connect (it retries at least every 200 ms, client.py) instead of failing at once; a
            # pending call also keeps gRPC Python polling the channel, without which a new
            # connection's handshake sat unread for seconds. stop_keepalive() cancels it.
            call = self._client.stub.KeepAlive(request_iterator(), wait_for_ready=True)
            self._call = call
        req = physmem_pb2.KeepAliveRequest(lease_id=self.id)
        try:
            while True:
                requests.put(req)
                resp = next(call)
                if resp.ttl_ms <= 0:
                    self._mark_gone("lease %d no longer exists: the keep-alive was answered with ttl_ms 0 (it "
                                    "expired, was revoked, or the daemon restarted)" % self.id)
                    return False
                with self._lock:
                    self._renewals += 1
                    self._error = None
                self._backoff = _MIN_BACKOFF_S
                if self._stop.wait(max(resp.ttl_ms // _RENEW_DIVISOR, 1) / 1000.0):
                    return False
        except StopIteration:
            error = UnavailableError("the KeepAlive stream closed without an answer")
        except grpc.RpcError as e:
            error = from_rpc_error(e)
        finally:
            requests.put(None)  # ends the request iterator, so gRPC's sending thread exits
            call.cancel()       # no-op once the stream has ended
            with self._lock:
                self._call = None
        if self._stop.is_set():
            return False
        with self._lock:
            self._error = error
        return error.code not in _FATAL_CODES

    # ---- the lease's calls: Client's, with this lease's id ----

    def alloc_pages(self, gfp, order=0, key="", form="pfn", timeout=None):
        """alloc_pages(gfp, order): a block of 2**order pages -> PageHandle. See Client.alloc_pages."""
        self._check_alive()
        return self._client.alloc_pages(self.id, gfp, order, key=key, form=form, timeout=timeout)

    def get_free_pages(self, gfp, order=0, key="", timeout=None):
        """__get_free_pages(gfp, order): the same, for callers that want `.address`."""
        return self.alloc_pages(gfp, order, key=key, form="address", timeout=timeout)

    def get_zeroed_page(self, gfp, key="", timeout=None):
        """get_zeroed_page(gfp): one zeroed page."""
        return self.alloc_pages(gfp, 0, key=key, form="zeroed", timeout=timeout)

    def alloc_bulk(self, gfp, count):
        """alloc_pages_bulk(gfp, count): up to `count` order-0 pages, maybe fewer -> [PageHandle]."""
        self._check_alive()
        return self._client.alloc_bulk(self.id, gfp, count)

    def free(self, pfn=None, order=0, key=None, addr=None):
        """Frees by pfn and order, by key, or by direct-map address; returns the pages freed."""
        self._check_alive()
        return self._client.free(self.id, pfn, order, key=key, addr=addr)

    def free_bulk(self, blocks):
        """Frees many blocks in one call; returns physmem_pb2.FreePagesBulkResponse."""
        self._check_alive()
        return self._client.free_bulk(self.id, blocks)

    def read(self, pfn, offset, length):
        """`length` bytes from `offset` bytes after the start of page `pfn`."""
        self._check_alive()
        return self._client.read(self.id, pfn, offset, length)

    def write(self, pfn, offset, data):
        """Writes `data` at `offset` bytes after the start of page `pfn`; returns bytes written."""
        self._check_alive()
        return self._client.write(self.id, pfn, offset, data)

    def page_address(self, pfn):
        """page_address(pfn): the emulated kernel virtual address, 0 for unmapped highmem."""
        self._check_alive()
        return self._client.page_address(self.id, pfn)

    def kmap(self, pfn):
        """kmap(pfn): the page's virtual address (a kmap window slot for highmem)."""
        self._check_alive()
        return self._client.kmap(self.id, pfn)

    def kunmap(self, pfn):
        self._check_alive()
        self._client.kunmap(self.id, pfn)

    def __repr__(self):
        return "Lease(id=%d, granted_ttl_ms=%d, name=%r%s)" % (self.id, self.granted_ttl_ms, self.name,
                                                               ", gone" if self.gone else "")
