"""PageHandle: one allocated block (2**order pages) of a lease, with its addresses, and its page
contents over RPC. The Python twin of clients/physmem_client.h's PageHandle, except that Python has
no destructor to rely on: free() it, or use it as a context manager (`with lease.alloc_pages(...)
as page:` frees the block on exit)."""
from physmem.errors import FailedPreconditionError, NotFoundError


class PageHandle:
    """A block: `pfn`, `order`, `zone` ("DMA", "DMA32", "Normal", "HighMem"), `phys_addr` (emulated
    physical address, bytes), `virt_addr` / `address` (emulated kernel virtual address; 0 for an
    unmapped highmem page), `arena_offset` (bytes into the arena), `key`, `replayed` (a retry
    with the same key returned this earlier block), `lease_id`.

    Not thread-safe: one owner, like the C++ handle. The values stay readable after free()."""

    def __init__(self, client, lease_id, pfn, order, zone, phys_addr, virt_addr, arena_offset,
                 key="", replayed=False):
        self._client = client
        self.lease_id = lease_id
        self.pfn = pfn
        self.order = order
        self.zone = zone
        self.phys_addr = phys_addr
        self.virt_addr = virt_addr
        self.arena_offset = arena_offset
        self.key = key
        self.replayed = replayed
        self._owns = True

    @classmethod
    def from_allocation(cls, client, lease_id, a):
        """From an Allocation reply (physmem_pb2.Allocation)."""
        return cls(client, lease_id, a.pfn, a.order, a.zone, a.phys_addr, a.virt_addr, a.arena_offset,
                   a.key, a.replayed)

    @property
    def address(self):
        """The emulated kernel virtual address, as __get_free_pages() returns it (0 for highmem)."""
        return self.virt_addr

    @property
    def pages(self):
        """Pages in the block: 2**order."""
        return 1 << self.order

    @property
    def size(self):
        """Bytes in the block: page size << order (asks the daemon for the page size once)."""
        return self._client.page_size << self.order

    @property
    def owns(self):
        """True until free() or release(): the handle still stands for an allocated block."""
        return self._owns

    def read(self, offset=0, length=None):
        """`length` bytes (default: to the end of the block) from `offset` bytes into the block."""
        if length is None:
            length = self.size - offset
        return self._client.read(self.lease_id, self.pfn, offset, length)

    def write(self, data, offset=0):
        """Writes `data` (bytes) `offset` bytes into the block; returns the bytes written."""
        return self._client.write(self.lease_id, self.pfn, offset, data)

    def free(self):
        """__free_pages() now; returns the pages freed. The handle owns nothing afterwards, even on
        error (a refused free changed nothing, and a retry would not help).
        FailedPreconditionError if it was already freed or released; NotFoundError if its lease has
        ended (which freed the block)."""
        if not self._owns:
            raise FailedPreconditionError("the handle of pfn %#x no longer owns its block (freed or released)"
                                          % self.pfn)
        self._owns = False
        return self._client.free(self.lease_id, self.pfn, self.order)

    def release(self):
        """Gives the block up without freeing it: it stays allocated until freed by pfn or key, or
        until the lease ends."""
        self._owns = False

    def _disown(self):
        self._owns = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._owns:
            try:
                self.free()
            except NotFoundError:
                pass  # the lease ended first: that freed the block
        return False

    def __repr__(self):
        return "PageHandle(lease=%d, pfn=%#x, order=%d, zone=%s, virt_addr=%#x%s)" % (
            self.lease_id, self.pfn, self.order, self.zone, self.virt_addr,
            ", key=%r" % self.key if self.key else "")
