"""gRPC server reflection from Python with no proto files: just enough of the protobuf wire format
to build ServerReflectionRequest bytes and read the replies, and a DescriptorPool built from the
file descriptors the server returns (as grpcurl and ghz do without --proto).

Who uses it: tests/server/reflection_test.py (raw requests and replies) and
tests/deploy/ghz_configs_test.py (resolving ghz's `call` to request and response classes). The
test scripts find it by putting tests/ on sys.path. Needs Debian's python3-grpcio and
python3-protobuf (run under /usr/bin/python3). Thread-safety: plain functions, no shared state.
"""
from google.protobuf import descriptor_pb2, descriptor_pool

METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# v1: the same messages under another package name (physmemd serves both, server/server_reflection.h).
METHOD_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
# Field numbers of ServerReflectionRequest and ServerReflectionResponse (reflection.proto).
REQ_FILE_CONTAINING_SYMBOL = 4
REQ_LIST_SERVICES = 7
RESP_FILE_DESCRIPTOR = 4
RESP_ERROR = 7


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, payload):
    """A length-delimited protobuf field (wire type 2)."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def fields(buf):
    """(field number, value) of each field of a serialized message; value is an int or bytes."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            ln, i = read_varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        yield num, v


def call(channel, requests, timeout=10, method=METHOD):
    """Sends serialized ServerReflectionRequests on one stream; the serialized replies, in order."""
    stream = channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return list(stream(iter(requests), timeout=timeout))


def reflect_pool(channel, symbol, method=METHOD):
    """A DescriptorPool with the file that defines `symbol` and its dependencies, from reflection."""
    files = []
    for reply in call(channel, [field(REQ_FILE_CONTAINING_SYMBOL, symbol.encode())], method=method):
        for num, v in fields(reply):
            if num == RESP_ERROR:
                raise RuntimeError("reflection error for %s: %r" % (symbol, v))
            if num == RESP_FILE_DESCRIPTOR:  # { repeated bytes file_descriptor_proto = 1; }
                files += [descriptor_pb2.FileDescriptorProto.FromString(b) for n, b in fields(v) if n == 1]
    pool, added = descriptor_pool.DescriptorPool(), set()
    while len(added) < len(files):
        progress = False
        for f in files:
            if f.name not in added and all(d in added for d in f.dependency):
                pool.Add(f)
                added.add(f.name)
                progress = True
        if not progress:
            raise RuntimeError("reflection did not return the dependencies of %s" % [f.name for f in files])
    return pool
