"""physmem: the Python client of physmemd (proto/physmem/v1/physmem.proto).

    import physmem
    with physmem.Client() as c, c.create_lease(ttl_ms=10000, name="demo") as lease:
        page = lease.alloc_pages("GFP_KERNEL|__GFP_ZERO", order=2)   # 4 pages
        page.write(b"hello")
        assert page.read(0, 5) == b"hello"
        page.free()
    # the lease was kept alive inside the block and revoked at its end

Two directories make this package: the hand-written layer (clients/python/physmem: Client, Lease,
PageHandle, errors) and the stubs generated at build time from proto/ (build/python/physmem/v1:
physmem_pb2, physmem_pb2_grpc, target_pb2). Put both on the path:
    PYTHONPATH=clients/python:build/python /usr/bin/python3 ...
pkgutil.extend_path below adds every `physmem` directory found on sys.path to this package's
__path__, so `physmem.v1.physmem_pb2` (the name the generated code itself imports, after the
protos' import paths) resolves inside the build tree, while this __init__ stays the package's.
"""
import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

try:
    from physmem.v1 import physmem_pb2, physmem_pb2_grpc, target_pb2  # noqa: F401  (generated)
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("physmem.v1"):
        raise
    raise ImportError(
        "physmem: the generated stubs (physmem.v1.physmem_pb2) are not on sys.path: build them "
        "(ninja -C build physmem_python) and add the build tree's python directory, e.g. "
        "PYTHONPATH=clients/python:build/python") from e

from physmem.client import Client  # noqa: E402
from physmem.default_socket import default_target, user_socket_path  # noqa: E402
from physmem.errors import (  # noqa: E402
    AlreadyExistsError, DeadlineExceededError, FailedPreconditionError, InvalidArgumentError, NotFoundError,
    OutOfRangeError, PermissionDeniedError, PhysmemError, ResourceExhaustedError, UnavailableError, status_code)
from physmem.lease import Lease  # noqa: E402
from physmem.page import PageHandle  # noqa: E402

__all__ = ["Client", "Lease", "PageHandle", "PhysmemError", "InvalidArgumentError", "NotFoundError",
           "PermissionDeniedError", "OutOfRangeError", "FailedPreconditionError", "AlreadyExistsError",
           "ResourceExhaustedError", "DeadlineExceededError", "UnavailableError", "status_code", "default_target",
           "user_socket_path", "physmem_pb2", "physmem_pb2_grpc", "target_pb2"]
