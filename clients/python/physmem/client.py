"""Client: a connection to physmemd and every call of proto/physmem/v1/physmem.proto, taking the
lease id where the call needs one (so leases made elsewhere, e.g. by `physmemctl lease create`,
work too); Lease binds its own id. Every failure raises a PhysmemError with the gRPC code and the
daemon's message (physmem.errors). The Python twin of clients/physmem_client.h's Client.

Units: pages of the emulated target (page_size bytes), orders (log2 of a block's pages), bytes for
page contents, milliseconds for TTLs; client-side timeouts are in seconds, as everywhere in gRPC
Python. Thread-safety: a Client may be shared by threads (gRPC's channel and stub are).
"""
import os
import stat

import grpc

from physmem.default_socket import default_target
from physmem.errors import (FailedPreconditionError, InvalidArgumentError, OutOfRangeError, PermissionDeniedError,
                            UnavailableError, from_rpc_error)
from physmem.lease import Lease
from physmem.page import PageHandle
from physmem.v1 import physmem_pb2, physmem_pb2_grpc, target_pb2

# The daemon's --max_message_bytes default: a large bulk reply or a 4 MiB ReadPages exceeds gRPC's
# 4 MiB receive default.
_MAX_MESSAGE_BYTES = 64 << 20

def _runs_request(lease_id, pfns):
    """FreePagesBulkRequest of order-0 pfns as runs of consecutive pfns."""
    req = physmem_pb2.FreePagesBulkRequest(lease_id=lease_id)
    ordered = sorted(pfns)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            req.run.add(pfn=ordered[start], count=i - start)
            start = i
    return req


# Allocation.zone's names, for the Zone enum of packed bulk replies.
_ZONE_NAMES = {target_pb2.ZONE_DMA: "DMA", target_pb2.ZONE_DMA32: "DMA32", target_pb2.ZONE_NORMAL: "Normal",
               target_pb2.ZONE_HIGHMEM: "HighMem"}


def _unix_socket_problem(target):
    """Why a unix: target cannot work, before gRPC's vaguer 'failed to connect'; None if unknown."""
    if not target.startswith("unix:"):
        return None
    path = target[len("unix://"):] if target.startswith("unix://") else target[len("unix:"):]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such socket file (is physmemd running, and serving --unix_socket=%s?)" % path
    except OSError:
        return None  # let gRPC say what it finds
    if not stat.S_ISSOCK(st.st_mode):
        return "%s is not a socket" % path
    if not os.access(path, os.R_OK | os.W_OK):
        return ("permission denied (connecting needs write access to the socket; the daemon makes it mode "
                "0660 by default: owner and group)")
    return None


class Client:
    """A connection to physmemd.

    target: "unix:///path/to/physmemd.sock" or "host:port"; None = the default (physmem.default_socket:
        $PHYSMEM_TARGET, else the system socket if it exists, else this user's socket).
    timeout: deadline of each call, seconds. alloc_timeout: of the allocating calls, seconds (a
        mask that may block waits for memory up to min(this, the daemon's --max_alloc_wait_ms)).
    connect_timeout: how long the constructor waits for the channel to be ready, seconds.
    credentials: grpc.ChannelCredentials for a TLS listener (grpc.ssl_channel_credentials(...));
        None = plaintext, which a unix: target always is.
    Raises UnavailableError, saying why when it can tell, if the daemon is not there."""

    def __init__(self, target=None, timeout=2.0, alloc_timeout=10.0, connect_timeout=2.0, credentials=None):
        self.target = target or default_target()
        self.timeout = timeout
        self.alloc_timeout = alloc_timeout
        problem = _unix_socket_problem(self.target)
        if problem:
            raise UnavailableError("cannot connect to physmemd at %s: %s" % (self.target, problem))
        # Reconnection every 50 ms growing to at most 200 ms (gRPC's default: 1 s growing to 2 min):
        # after a daemon restart a lease's keep-alive must get through well within the TTL, and a
        # call made while the channel waits out its backoff fails without trying (lease.py).
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 200)]
        if credentials is None:
            self.channel = grpc.insecure_channel(self.target, options=options)
        else:
            self.channel = grpc.secure_channel(self.target, credentials, options=options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise UnavailableError("cannot connect to physmemd at %s within %g s: is the daemon running and "
                                   "serving there?" % (self.target, connect_timeout)) from None
        self.stub = physmem_pb2_grpc.PhysMemStub(self.channel)  # the raw stub, for anything not wrapped
        self._page_size = None

    def close(self):
        """Closes the channel. Leases still open lose their keep-alive and expire one TTL later."""
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _call(self, rpc, request, timeout=None):
        try:
            return rpc(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # ---- the machine ----

    def target_info(self):
        """GetTarget: profile (page_size, zones, ...), memory map, arena (physmem_pb2.GetTargetResponse)."""
        return self._call(self.stub.GetTarget, physmem_pb2.GetTargetRequest())

    @property
    def page_size(self):
        """The emulated target's page size in bytes (asked once)."""
        if self._page_size is None:
            self._page_size = self.target_info().profile.page_size
        return self._page_size

    def zone_info(self):
        """GetZoneInfo: /proc/zoneinfo in structured form, one ZoneInfo per zone (pages)."""
        return list(self._call(self.stub.GetZoneInfo, physmem_pb2.GetZoneInfoRequest()).zones)

    def buddyinfo(self):
        """The exact /proc/buddyinfo text: free blocks per order, per zone."""
        return self._call(self.stub.GetZoneInfo, physmem_pb2.GetZoneInfoRequest()).buddyinfo

    def validate(self):
        """Validate: runs the allocator's invariant checker; returns the census (pages, leases) as
        physmem_pb2.ValidateResponse. A refused call leaves it unchanged."""
        return self._call(self.stub.Validate, physmem_pb2.ValidateRequest())

    # ---- leases ----

    def create_lease(self, ttl_ms=10000, name="", quota=0, keepalive=True):
        """CreateLease -> Lease. ttl_ms: time to live in ms (the daemon allows [--min_lease_ttl_ms,
        --max_lease_ttl_ms]); quota: most pages held at once (0 = the daemon's default); name: free
        text, at most 64 bytes. With keepalive, renewal starts at once (so the lease cannot lapse
        before a `with` block begins) and runs until revoke(), release() or the block's end."""
        req = physmem_pb2.CreateLeaseRequest(ttl_ms=ttl_ms, page_quota=quota, name=name)
        r = self._call(self.stub.CreateLease, req)
        lease = Lease(self, r.lease_id, r.granted_ttl_ms, r.page_quota, name, keepalive=keepalive)
        if keepalive:
            lease.start_keepalive()
        return lease

    def attach_lease(self, lease_id, keepalive=False, revoke_on_exit=False):
        """Takes charge of an existing lease of this identity (checked with GetLease: NotFoundError,
        PermissionDeniedError). By default the `with` exit neither renews nor revokes it."""
        info = self.get_lease(lease_id)
        return Lease(self, lease_id, info.granted_ttl_ms, info.page_quota, info.name, keepalive=keepalive,
                     revoke_on_exit=revoke_on_exit)

    def get_lease(self, lease_id):
        """GetLease: remaining ttl_ms, pages_held, holdings (physmem_pb2.LeaseInfo)."""
        return self._call(self.stub.GetLease, physmem_pb2.GetLeaseRequest(lease_id=lease_id))

    def list_leases(self):
        """This identity's leases: [physmem_pb2.LeaseInfo]."""
        return list(self._call(self.stub.ListLeases, physmem_pb2.ListLeasesRequest()).leases)

    def renew_lease(self, lease_id):
        """RenewLease: renews for the full TTL; returns the ttl_ms. NotFoundError if it is gone."""
        return self._call(self.stub.RenewLease, physmem_pb2.KeepAliveRequest(lease_id=lease_id)).ttl_ms

    def revoke_lease(self, lease_id):
        """RevokeLease: ends the lease now; returns the pages that freed."""
        return self._call(self.stub.RevokeLease, physmem_pb2.RevokeLeaseRequest(lease_id=lease_id)).pages_freed

    # ---- allocation ----

    def alloc_pages(self, lease_id, gfp, order=0, key="", form="pfn", timeout=None):
        """A block of 2**order pages -> PageHandle.

        gfp: the kernel's spelling ("GFP_KERNEL|__GFP_ZERO", "0xcc0") or an int mask.
        key: optional, unique in the lease: a retry returns the same block (.replayed True).
        form: "pfn" (AllocPages, alloc_pages()), "address" (GetFreePages, __get_free_pages();
            FailedPreconditionError with __GFP_HIGHMEM) or "zeroed" (GetZeroedPage, order 0).
        timeout: seconds, default alloc_timeout; a blocking mask waits for memory within it, then
            raises ResourceExhaustedError."""
        rpcs = {"pfn": self.stub.AllocPages, "address": self.stub.GetFreePages, "zeroed": self.stub.GetZeroedPage}
        if form not in rpcs:
            raise InvalidArgumentError("form %r: expected 'pfn', 'address' or 'zeroed'" % (form,))
        req = physmem_pb2.AllocPagesRequest(lease_id=lease_id, order=order, key=key)
        _set_gfp(req, gfp)
        a = self._call(rpcs[form], req, self.alloc_timeout if timeout is None else timeout)
        return PageHandle.from_allocation(self, lease_id, a)

    def alloc_bulk(self, lease_id, gfp, count):
        """alloc_pages_bulk(gfp, count): up to `count` order-0 pages without waiting -> [PageHandle]
        (fewer if that is all there is; ResourceExhaustedError only if none)."""
        # runs: the pages as runs of consecutive pfns (issue #15); a daemon before it ignores the
        # field and sends the per-page arrays, so both are read.
        req = physmem_pb2.AllocPagesBulkRequest(lease_id=lease_id, count=count, runs=True)
        _set_gfp(req, gfp)
        r = self._call(self.stub.AllocPagesBulk, req, self.alloc_timeout)
        pages = [PageHandle(self, lease_id, pfn, 0, _ZONE_NAMES.get(zone, "zone-%d" % zone), phys, virt, off)
                 for pfn, zone, phys, virt, off in zip(r.pfn, r.zone, r.phys_addr, r.virt_addr, r.arena_offset)]
        page_size = 1 << r.page_shift
        for run in r.run:
            zone = _ZONE_NAMES.get(run.zone, "zone-%d" % run.zone)
            pages.extend(PageHandle(self, lease_id, run.pfn + i, 0, zone, run.phys_addr + i * page_size,
                                    run.virt_addr + i * page_size if run.virt_addr else 0,
                                    run.arena_offset + i * page_size)
                         for i in range(run.count))
        return pages

    def free(self, lease_id, pfn=None, order=0, key=None, addr=None):
        """Frees one block: by pfn and order (__free_pages), by the key it was allocated with, or by
        direct-map address and order (free_pages; addr 0 does nothing). Returns the pages freed."""
        if sum(x is not None for x in (pfn, key, addr)) != 1:
            raise InvalidArgumentError("free: give exactly one of pfn, key, addr")
        if addr is not None:
            req = physmem_pb2.FreePagesByAddressRequest(lease_id=lease_id, addr=addr, order=order)
            return self._call(self.stub.FreePagesByAddress, req).pages_freed
        if key is not None:
            req = physmem_pb2.FreePagesRequest(lease_id=lease_id, key=key)
        else:
            req = physmem_pb2.FreePagesRequest(lease_id=lease_id, pfn=pfn, order=order)
        return self._call(self.stub.FreePages, req).pages_freed

    def free_bulk(self, lease_id, blocks):
        """Frees many blocks of one lease in one call. blocks: PageHandles, pfns (order 0) or
        (pfn, order) pairs. Handles own nothing afterwards. Returns physmem_pb2.FreePagesBulkResponse:
        pages_freed, blocks_freed, and `refused` (pfn, code, message: each changed nothing; code is a
        number, physmem.errors.status_code() names it)."""
        pfns, orders, handles = [], [], []
        for b in blocks:
            if isinstance(b, PageHandle):
                if b.lease_id != lease_id:
                    raise InvalidArgumentError("free_bulk: pfn %#x belongs to lease %d, not %d"
                                               % (b.pfn, b.lease_id, lease_id))
                handles.append(b)
                pfns.append(b.pfn)
                orders.append(b.order)
            elif isinstance(b, tuple):
                pfns.append(b[0])
                orders.append(b[1])
            else:
                pfns.append(b)
                orders.append(0)
        for h in handles:
            h._disown()
        if pfns and not any(orders):
            # Order-0 pages go as runs of consecutive pfns, all or nothing on the daemon; if it
            # refuses them (a bad page, or a daemon before issue #15), the per-block form below
            # frees what it can and names each refused block, as before.
            try:
                return self._call(self.stub.FreePagesBulk, _runs_request(lease_id, pfns), self.alloc_timeout)
            except (InvalidArgumentError, OutOfRangeError, FailedPreconditionError, PermissionDeniedError):
                pass
        req = physmem_pb2.FreePagesBulkRequest(lease_id=lease_id, pfn=pfns, order=orders)
        return self._call(self.stub.FreePagesBulk, req, self.alloc_timeout)

    # ---- addresses and contents ----

    def page_address(self, lease_id, pfn):
        """page_address(pfn): the emulated kernel virtual address, 0 for an unmapped highmem page."""
        return self._call(self.stub.PageAddress, physmem_pb2.PageAddressRequest(lease_id=lease_id, pfn=pfn)).virt_addr

    def kmap(self, lease_id, pfn):
        """kmap(pfn) of a page the lease owns: its virtual address. ResourceExhaustedError when the
        kmap window is full."""
        return self._call(self.stub.Kmap, physmem_pb2.KmapRequest(lease_id=lease_id, pfn=pfn)).virt_addr

    def kunmap(self, lease_id, pfn):
        self._call(self.stub.Kunmap, physmem_pb2.KmapRequest(lease_id=lease_id, pfn=pfn))

    def read(self, lease_id, pfn, offset, length):
        """ReadPages: `length` bytes (1..--max_page_io_bytes, 4 MiB by default) starting `offset`
        bytes after the start of page `pfn`, all inside one block the lease holds -> bytes."""
        req = physmem_pb2.ReadPagesRequest(lease_id=lease_id, pfn=pfn, offset=offset, length=length)
        return self._call(self.stub.ReadPages, req).data

    def write(self, lease_id, pfn, offset, data):
        """WritePages: copies `data` (bytes) to `offset` bytes after the start of page `pfn`, inside
        one block the lease holds; returns the bytes written."""
        req = physmem_pb2.WritePagesRequest(lease_id=lease_id, pfn=pfn, offset=offset, data=bytes(data))
        return self._call(self.stub.WritePages, req).bytes_written


def _set_gfp(req, gfp):
    # The proto takes the mask as text or as a number, exactly one of the two.
    if isinstance(gfp, int):
        req.gfp_mask = gfp
    else:
        req.gfp = gfp
