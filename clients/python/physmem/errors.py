"""Exceptions of the physmem client: every failed call raises a PhysmemError that carries the gRPC
status code (`.code`, a grpc.StatusCode) and the daemon's message (`.message`, which says what was
wrong), as the C++ client's absl::Status does. Common codes have their own subclass, so callers can
write `except physmem.NotFoundError:`; `except physmem.PhysmemError as e: e.code` catches them all.
"""
import grpc


class PhysmemError(Exception):
    """A refused or failed call: `.code` (grpc.StatusCode) and `.message` (str)."""

    code = grpc.StatusCode.UNKNOWN  # subclasses fix theirs; instances may carry any code

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return "%s: %s" % (self.code.name, self.message)


class InvalidArgumentError(PhysmemError):
    """Malformed request: bad GFP mask, order, alignment, address, count, TTL, key."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(PhysmemError):
    """No such lease (never existed, expired or revoked), or no allocation with that key."""
    code = grpc.StatusCode.NOT_FOUND


class PermissionDeniedError(PhysmemError):
    """The lease belongs to another identity, or the block to another lease."""
    code = grpc.StatusCode.PERMISSION_DENIED


class OutOfRangeError(PhysmemError):
    """A pfn or address in a hole or beyond RAM; a page I/O range past its block."""
    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPreconditionError(PhysmemError):
    """Double free, inside another block, still kmapped; HIGHMEM to get_free_pages."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExistsError(PhysmemError):
    """A live lease of this identity has that name already (names are unique per identity unless the daemon runs with --nounique_lease_names)."""
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(PhysmemError):
    """No memory within the deadline, or a quota or limit (the message names it)."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(PhysmemError):
    """The call's deadline passed (e.g. while it waited for memory)."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(PhysmemError):
    """The daemon is not there (no socket, not running, stopping)."""
    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, NotFoundError, PermissionDeniedError, OutOfRangeError,
                                      FailedPreconditionError, AlreadyExistsError, ResourceExhaustedError,
                                      DeadlineExceededError, UnavailableError)}


def error_for(code, message):
    """The exception for a status: its subclass if it has one, else a PhysmemError with the code."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else PhysmemError(message, code)


def from_rpc_error(err):
    """Converts a grpc.RpcError raised by a stub call (grpc's own codes included)."""
    return error_for(err.code(), err.details() or "")


def status_code(number):
    """grpc.StatusCode for a google.rpc.Code number (FreeResult.code in bulk-free replies)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
