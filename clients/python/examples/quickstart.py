#!/usr/bin/python3
"""The README's example (clients/python/README.md): a lease kept alive for the length of a `with`
block, a block of pages with contents, an allocation key, a refusal, and the buddyinfo after.

Run against a daemon (the default socket, or PHYSMEM_TARGET=unix:///path/to/physmemd.sock):
    PYTHONPATH=clients/python:build/python /usr/bin/python3 clients/python/examples/quickstart.py
tests/clients/python_client_test.py runs it too.
"""
import physmem

with physmem.Client() as client:
    with client.create_lease(ttl_ms=10000, name="quickstart") as lease:   # kept alive until the end
        page = lease.alloc_pages("GFP_KERNEL|__GFP_ZERO", order=2)        # a block of 4 pages
        print(page)                                                       # pfn, zone, virt_addr
        page.write(b"hello, physmem")
        assert page.read(0, 14) == b"hello, physmem"
        first = lease.alloc_pages("GFP_KERNEL", key="rx-0")
        retry = lease.alloc_pages("GFP_KERNEL", key="rx-0")               # a retry: the same block
        assert retry.replayed and retry.pfn == first.pfn
        lease.free(key="rx-0")
        try:
            lease.alloc_pages("GFP_BOGUS")
        except physmem.InvalidArgumentError as e:
            print(e.code.name, e.message)                                 # says what was wrong
        page.free()
    # the lease was revoked here: anything it still held was freed
    print(client.buddyinfo(), end="")
