#!/usr/bin/python3
"""Server reflection, proven with a client that has no proto files: Python's grpcio sends raw
ServerReflectionRequest bytes to the real daemon and reads the service list and the file
descriptor of physmem.v1.PhysMem back, as grpcurl and ghz do.

Usage: reflection_test.py PHYSMEMD_BINARY   (run by ctest; prints '1 passed, 0 failed')
"""
import os
import sys
import tempfile

import grpc

# The shared helpers live in tests/; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import grpc_reflection  # noqa: E402  (tests/grpc_reflection.py)
from physmemd_process import Physmemd, time_scale  # noqa: E402  (tests/physmemd_process.py)


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as d, Physmemd(binary, d, "--mem_mb=64") as daemon:
        channel = grpc.insecure_channel(daemon.unix_target)
        # Both timeouts only bound a hang; a sanitized daemon answers slower (time_scale()).
        grpc.channel_ready_future(channel).result(timeout=10 * time_scale())
        replies = grpc_reflection.call(channel, [
            grpc_reflection.field(grpc_reflection.REQ_LIST_SERVICES, b""),
            grpc_reflection.field(grpc_reflection.REQ_FILE_CONTAINING_SYMBOL, b"physmem.v1.PhysMem"),
        ], timeout=10 * time_scale())
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


if __name__ == "__main__":
    sys.exit(main())
