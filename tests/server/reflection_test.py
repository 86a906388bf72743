#!/usr/bin/python3
"""Server reflection, proven with a client that has no proto files: Python's grpcio sends raw
ServerReflectionRequest bytes to the real daemon and reads the service list and the file
descriptor of physmem.v1.PhysMem back, as grpcurl and ghz do.

Usage: reflection_test.py PHYSMEMD_BINARY   (run by ctest; prints '1 passed, 0 failed')
"""
import os
import subprocess
import sys
import tempfile
import time

import grpc


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, payload):  # a length-delimited protobuf field
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "physmemd.sock")
        log = open(os.path.join(d, "log"), "w")
        daemon = subprocess.Popen([binary, "--unix_socket=" + sock, "--arena=ordinary", "--mem_mb=64",
                                   "--metrics_listen=127.0.0.1:0"],
                                  stdout=log, stderr=log)
        try:
            for _ in range(200):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            channel = grpc.insecure_channel("unix://" + sock)
            grpc.channel_ready_future(channel).result(timeout=10)
            call = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=lambda b: b, response_deserializer=lambda b: b)
            # ServerReflectionRequest: list_services = 7, file_containing_symbol = 4.
            requests = [field(7, b""), field(4, b"physmem.v1.PhysMem")]
            replies = list(call(iter(requests), timeout=10))
            failures = []
            if len(replies) != 2:
                failures.append("expected 2 replies, got %d" % len(replies))
            else:
                if b"physmem.v1.PhysMem" not in replies[0]:
                    failures.append("service list lacks physmem.v1.PhysMem")
                if b"grpc.health.v1.Health" not in replies[0]:
                    failures.append("service list lacks grpc.health.v1.Health")
                if b"AllocPagesBulk" not in replies[1] or b"physmem/v1/physmem.proto" not in replies[1]:
                    failures.append("file descriptor for physmem.v1.PhysMem lacks its methods")
            for f in failures:
                print("FAIL:", f)
            print("%d passed, %d failed" % (0 if failures else 1, 1 if failures else 0))
            return 1 if failures else 0
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
