#!/usr/bin/python3
"""Every ghz config in deploy/ghz, checked against the real daemon the way ghz would run it
(ghz itself is not a Debian package, so it cannot run here):

  1. the lease id goes in with the exact jq command deploy/ghz/README.md gives (and the host is
     rewritten to the test's socket, or to the TCP address, as the README does for TCP);
  2. `call` is resolved through the daemon's server reflection, as ghz does without --proto;
  3. ghz's template actions in `data` ({{.RequestNumber}}, {{.WorkerID}}, ...) are rendered per
     request, array data is used round-robin by request number (ghz's worker.go);
  4. the JSON becomes the request message with protobuf's json_format, and the request is sent;
     every call must be OK, and after each alloc run's free run the lease holds nothing.

Done over the Unix socket and over loopback TCP (--allow_insecure_tcp).

Usage: ghz_configs_test.py SOURCE_DIR PHYSMEMD PHYSMEMCTL   (run by ctest)
"""
import datetime
import glob
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
from google.protobuf import json_format, message_factory

# The shared helpers live in tests/; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import grpc_reflection  # noqa: E402  (tests/grpc_reflection.py)
from physmemd_process import Physmemd, time_scale  # noqa: E402  (tests/physmemd_process.py)

# The alloc runs and the runs that undo them; every config in deploy/ghz must appear here.
PLAN = [
    ("alloc_pages.json", "free_pages.json"),
    ("mixed_alloc.json", "mixed_free.json"),
    ("alloc_pages_bulk.json", "revoke"),
    ("get_zone_info.json", None),
]
REQUESTS_PER_RUN = 12  # a few rounds of every array element
JQ_WITH_LEASE = 'walk(if type == "object" and has("lease_id") then .lease_id = $lease else . end)'
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")


def resolve(channel, call):
    """ghz's call syntax, package.Service.Method or package.Service/Method -> (path, Req, Resp)."""
    m = re.match(r"^([\w.]+)[./](\w+)$", call)
    service, method = m.group(1), m.group(2)
    pool = grpc_reflection.reflect_pool(channel, service)
    md = pool.FindServiceByName(service).methods_by_name[method]
    factory = message_factory.MessageFactory(pool)
    return ("/%s/%s" % (service, method), factory.GetPrototype(md.input_type),
            factory.GetPrototype(md.output_type), md)


# ---- ghz's call template data (runner/call_template_data.go) ----
def render(text, md, worker_id, req_num):
    now = datetime.datetime.now(datetime.timezone.utc)
    ns = time.time_ns()
    data = {
        "WorkerID": worker_id, "RequestNumber": str(req_num),
        "FullyQualifiedName": md.full_name, "MethodName": md.name,
        "ServiceName": md.containing_service.full_name, "InputName": md.input_type.name,
        "OutputName": md.output_type.name, "IsClientStreaming": "false", "IsServerStreaming": "false",
        "Timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "TimestampUnix": str(ns // 10**9),
        "TimestampUnixMilli": str(ns // 10**6), "TimestampUnixNano": str(ns), "UUID": str(uuid.uuid4()),
    }

    def action(m):
        a = m.group(1).strip()
        if a.startswith(".") and a[1:] in data:
            return data[a[1:]]
        if a == "newUUID":
            return str(uuid.uuid4())
        r = re.match(r"^randomString (\d+)$", a)
        if r:
            return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(int(r.group(1)) or 8))
        r = re.match(r"^randomInt (\d+) (\d+)$", a)
        if r:
            return str(random.randrange(int(r.group(1)), int(r.group(2))))
        raise ValueError("template action {{%s}} is not one ghz provides" % a)

    return re.sub(r"\{\{(.*?)\}\}", action, text)


def jq(args, path_or_json):
    p = subprocess.run(["jq"] + args, input=path_or_json, capture_output=True, text=True, timeout=10)
    if p.returncode:
        raise RuntimeError("jq %s: %s" % (args, p.stderr))
    return p.stdout


def main():
    source, physmemd, physmemctl = sys.argv[1:4]
    failures, passed = [], 0

    def check(ok, what):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(what)
            print("FAIL:", what, flush=True)

    ghz_dir = os.path.join(source, "deploy/ghz")
    shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ghz_dir, "*.json")))
    planned = sorted([a for a, _ in PLAN] + [b for _, b in PLAN if b and b.endswith(".json")])
    check(shipped == planned, "every shipped config is in the test's plan: %s vs %s" % (shipped, planned))
    # root's default socket (server/default_socket.h), which the shipped configs point at.
    default_socket = re.search(r'kSystemSocket\[\] = "([^"]+)"',
                               open(os.path.join(source, "server/default_socket.h")).read()).group(1)
    configs = {}
    for name in shipped:
        text = open(os.path.join(ghz_dir, name)).read()
        cfg = json.loads(text)
        configs[name] = text
        for key in ("call", "host", "insecure", "concurrency", "data"):
            check(key in cfg, "%s has %s" % (name, key))
        check(("total" in cfg) != ("duration" in cfg), "%s has exactly one of total and duration" % name)
        for key in ("duration", "timeout"):
            if key in cfg:
                check(bool(GO_DURATION.match(cfg[key])), "%s: %s %r is a Go duration" % (name, key, cfg[key]))
        check(cfg.get("host") == "unix://" + default_socket,
              "%s dials the daemon's default socket unix://%s" % (name, default_socket))
        check(isinstance(cfg["data"], (dict, list)) and cfg["data"] != [], "%s: data is an object or a non-empty array" % name)

    # Every timeout below only bounds a hang: a sanitized daemon on a loaded machine answers 5-20x
    # slower (time_scale()). physmemctl gets a deadline scaled likewise; the leases it creates live
    # for 10 minutes, longer than any run.
    wait_s = 10 * time_scale()
    ctl_timeout = "--timeout_ms=%d" % (2000 * time_scale())
    with tempfile.TemporaryDirectory() as d:
        with Physmemd(physmemd, d, "--mem_mb=512", "--metrics_listen=", tcp=True) as daemon:
            sock, tcp_port = daemon.sock, daemon.tcp_port
            for transport, host, ctl_target in [("unix", "unix://" + sock, "unix://" + sock),
                                                 ("tcp", "127.0.0.1:%d" % tcp_port, "127.0.0.1:%d" % tcp_port)]:
                ctl = [physmemctl, "--target=" + ctl_target, ctl_timeout]
                lease = subprocess.run(ctl + ["lease", "create", "--ttl_ms=600000", "--name=ghz"], capture_output=True,
                                       text=True, timeout=wait_s).stdout.strip()
                channel = grpc.insecure_channel(host)
                grpc.channel_ready_future(channel).result(timeout=wait_s)
                for run, undo in PLAN:
                    for name in [run] + ([undo] if undo and undo.endswith(".json") else []):
                        # The README's commands: the lease with jq, and the host rewritten with jq.
                        text = jq(["--arg", "lease", lease, JQ_WITH_LEASE], configs[name])
                        text = jq(['.host = "%s"' % host], text)
                        cfg = json.loads(text)
                        path, req_cls, resp_cls, md = resolve(channel, cfg["call"])
                        stub = channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                                   response_deserializer=resp_cls.FromString)
                        items = cfg["data"] if isinstance(cfg["data"], list) else [cfg["data"]]
                        n = min(cfg.get("total", REQUESTS_PER_RUN), REQUESTS_PER_RUN)
                        ok = 0
                        for req_num in range(n):
                            item = items[req_num % len(items)]  # ghz: inputs[reqNum % len]
                            rendered = render(json.dumps(item), md, "g0c%d" % (req_num % 4), req_num)
                            req = json_format.Parse(rendered, req_cls())
                            try:
                                reply = stub(req, timeout=wait_s)
                            except grpc.RpcError as e:
                                check(False, "%s %s request %d: %s %s" % (transport, name, req_num, e.code(), e.details()))
                                break
                            if md.name == "AllocPages":
                                check(reply.key == "%s%d" % (item["key"][0], req_num) and not reply.replayed
                                      and reply.order == item["order"],
                                      "%s %s: reply %s" % (transport, name, json_format.MessageToJson(reply)))
                            if md.name == "FreePages":
                                check(reply.pages_freed >= 1, "%s %s frees pages" % (transport, name))
                            if md.name == "AllocPagesBulk":
                                check(len(reply.pfn) == item["count"], "%s %s: %d pages" % (transport, name, len(reply.pfn)))
                            if md.name == "GetZoneInfo":
                                check("Normal" in reply.buddyinfo, "%s %s: buddyinfo" % (transport, name))
                            ok += 1
                        check(ok == n, "%s %s: %d of %d requests OK" % (transport, name, ok, n))
                        print("%s %s: %d requests via %s OK" % (transport, name, ok, cfg["call"]), flush=True)
                    if undo == "revoke":
                        subprocess.run(ctl + ["lease", "revoke", lease], capture_output=True, timeout=wait_s)
                        lease = subprocess.run(ctl + ["lease", "create", "--ttl_ms=600000", "--name=ghz"],
                                               capture_output=True, text=True, timeout=wait_s).stdout.strip()
                    elif undo:
                        got = subprocess.run(ctl + ["lease", "get", lease], capture_output=True, text=True, timeout=wait_s)
                        check("pages_held=0" in got.stdout, "%s: after %s and %s the lease holds nothing: %s" %
                              (transport, run, undo, got.stdout.strip()))
                channel.close()
            # The flag-only commands of the README: their -d data, with $LEASE as the shell expands it.
            ctl = [physmemctl, "--target=unix://" + sock, ctl_timeout]
            lease = subprocess.run(ctl + ["lease", "create", "--ttl_ms=600000", "--name=ghz-cli"], capture_output=True,
                                   text=True, timeout=wait_s).stdout.strip()
            readme = open(os.path.join(ghz_dir, "README.md")).read().replace("\\\n", " ")
            commands = re.findall(r"ghz --insecure --call=(\S+) .*?-d (\"(?:[^\"\\]|\\.)*\"|'[^']*')", readme)
            check(len(commands) >= 3, "README has flag-only ghz commands: %d" % len(commands))
            channel = grpc.insecure_channel("unix://" + sock)
            for call, quoted in commands:
                data = quoted[1:-1]
                if quoted[0] == '"':
                    data = data.replace('\\"', '"').replace("$LEASE", lease)
                path, req_cls, resp_cls, md = resolve(channel, call)
                stub = channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                           response_deserializer=resp_cls.FromString)
                try:
                    for req_num in range(3):
                        stub(json_format.Parse(render(data, md, "g0c0", req_num), req_cls()), timeout=wait_s)
                    check(True, "README command " + call)
                except grpc.RpcError as e:
                    check(False, "README command %s -d %s: %s %s" % (call, data, e.code(), e.details()))
            got = subprocess.run(ctl + ["lease", "get", lease], capture_output=True, text=True, timeout=wait_s)
            check("pages_held=0" in got.stdout, "README commands: alloc then free leave nothing: " + got.stdout)
            channel.close()
            v = subprocess.run([physmemctl, "--target=unix://" + sock, ctl_timeout, "validate"], capture_output=True,
                               text=True, timeout=wait_s)
            check(v.returncode == 0, "validate after the runs: " + v.stdout + v.stderr)
    print("%d passed, %d failed" % (passed, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
