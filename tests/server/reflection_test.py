#!/usr/bin/python3
"""Server reflection and health checking, proven with a client that has no proto files: Python's
grpcio sends raw ServerReflectionRequest bytes to the real daemon, reads the service list and the
file descriptors back, builds grpc.health.v1 message classes from what reflection returned (as
grpcurl, ghz and grpc_health_probe do without --proto), and calls Health/Check and Health/Watch
with them.

Checked, over reflection v1alpha and v1 alike: the service list (PhysMem, Health, both reflection
services); physmem.v1.PhysMem and grpc.health.v1.Health described; an unknown symbol NOT_FOUND
inside the stream. Then: Check answers SERVING for "" and for "physmem.v1.PhysMem", NOT_FOUND for an unknown
name; a Watch of "physmem.v1.PhysMem" opened before SIGTERM is told NOT_SERVING when shutdown
begins (before gRPC stops and cancels the stream).

grpcurl would be the natural client, but Debian 12 does not package it (`apt-cache policy grpcurl`
finds nothing), so this script plays its part.

Usage: reflection_test.py PHYSMEMD_BINARY   (run by ctest; prints 'N passed, M failed')
"""
import os
import sys
import tempfile

import grpc
from google.protobuf import message_factory

# The shared helpers live in tests/; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import grpc_reflection  # noqa: E402  (tests/grpc_reflection.py)
from physmemd_process import Physmemd, time_scale  # noqa: E402  (tests/physmemd_process.py)

HEALTH = "grpc.health.v1.Health"
PHYSMEM = "physmem.v1.PhysMem"


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL: %s%s" % (what, (": " + str(detail)) if detail else ""))


def health_classes(channel):
    """HealthCheckRequest and HealthCheckResponse built from reflection's descriptors alone."""
    pool = grpc_reflection.reflect_pool(channel, HEALTH)
    factory = message_factory.MessageFactory(pool)
    request = factory.GetPrototype(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
    response = factory.GetPrototype(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))
    return pool, request, response


def main():
    binary = sys.argv[1]
    c = Checks()
    # Both timeouts only bound a hang; a sanitized daemon answers slower (time_scale()).
    timeout = 10 * time_scale()
    with tempfile.TemporaryDirectory() as d, Physmemd(binary, d, "--mem_mb=64") as daemon:
        channel = grpc.insecure_channel(daemon.unix_target)
        grpc.channel_ready_future(channel).result(timeout=timeout)
        for version, method in (("v1alpha", grpc_reflection.METHOD), ("v1", grpc_reflection.METHOD_V1)):
            replies = grpc_reflection.call(channel, [
                grpc_reflection.field(grpc_reflection.REQ_LIST_SERVICES, b""),
                grpc_reflection.field(grpc_reflection.REQ_FILE_CONTAINING_SYMBOL, PHYSMEM.encode()),
                grpc_reflection.field(grpc_reflection.REQ_FILE_CONTAINING_SYMBOL, b"no.such.Symbol"),
            ], timeout=timeout, method=method)
            c.check(len(replies) == 3, "%s: three reflection replies" % version, len(replies))
            if len(replies) != 3:
                continue
            services = sorted(v.decode() for num, resp in grpc_reflection.fields(replies[0]) if num == 6
                              for n, svc in grpc_reflection.fields(resp) if n == 1
                              for m, v in grpc_reflection.fields(svc) if m == 1)
            c.check(services == sorted([PHYSMEM, HEALTH, "grpc.reflection.v1alpha.ServerReflection",
                                        "grpc.reflection.v1.ServerReflection"]),
                    "%s: lists PhysMem, Health and both reflection services" % version, services)
            c.check(b"AllocPagesBulk" in replies[1] and b"physmem/v1/physmem.proto" in replies[1],
                    "%s: file descriptor for physmem.v1.PhysMem has its methods" % version)
            errors = [dict(grpc_reflection.fields(v)) for num, v in grpc_reflection.fields(replies[2])
                      if num == grpc_reflection.RESP_ERROR]
            # (gRPC's v1alpha says only "Symbol not found."; our v1 names it.)
            c.check(len(errors) == 1 and errors[0].get(1) == 5 and
                    (version == "v1alpha" or b"no.such.Symbol" in errors[0].get(2, b"")),
                    "%s: an unknown symbol is NOT_FOUND inside the stream" % version, errors)
            pool = grpc_reflection.reflect_pool(channel, HEALTH, method=method)
            c.check(pool.FindServiceByName(HEALTH).full_name == HEALTH, "%s: describes %s" % (version, HEALTH))

        pool, request, response = health_classes(channel)
        service = pool.FindServiceByName(HEALTH)
        c.check(sorted(m.name for m in service.methods) == ["Check", "Watch"], "Health described with Check and Watch",
                [m.name for m in service.methods])
        c.check(pool.FindFileContainingSymbol(HEALTH).name == "grpc/health/v1/health.proto",
                "Health's file has the standard name")
        serving = response.ServingStatus.Value("SERVING")
        not_serving = response.ServingStatus.Value("NOT_SERVING")
        check = channel.unary_unary("/%s/Check" % HEALTH, request_serializer=request.SerializeToString,
                                    response_deserializer=response.FromString)
        for name in ("", PHYSMEM):
            reply = check(request(service=name), timeout=timeout)
            c.check(reply.status == serving, "Check(%r) is SERVING" % name, reply)
        try:
            reply = check(request(service="no.such.Service"), timeout=timeout)
            c.check(False, "Check of an unknown service is NOT_FOUND", reply)
        except grpc.RpcError as e:
            c.check(e.code() == grpc.StatusCode.NOT_FOUND, "Check of an unknown service is NOT_FOUND", e.code())

        # Shutdown: a watcher hears NOT_SERVING before gRPC stops (which would only cancel it).
        watch = channel.unary_stream("/%s/Watch" % HEALTH, request_serializer=request.SerializeToString,
                                     response_deserializer=response.FromString)
        stream = watch(request(service=PHYSMEM), timeout=timeout)
        first = next(stream)
        c.check(first.status == serving, "Watch(physmem.v1.PhysMem) starts SERVING", first)
        daemon.process.terminate()
        statuses = []
        try:
            for reply in stream:
                statuses.append(reply.status)
                if reply.status != serving:
                    break
        except grpc.RpcError as e:
            statuses.append(e.code())
        c.check(statuses[:1] == [not_serving], "Watch is told NOT_SERVING once shutdown begins", statuses)
        stream.cancel()
        channel.close()
    print("%d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
