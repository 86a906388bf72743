#!/usr/bin/python3
"""The deployment kit agrees with the daemon it deploys.

Parses every YAML and JSON file in deploy/ and checks:
  * metric names used by dashboards and alert rules are in docs/metrics.md, and, with the daemon
    binary, in a real scrape of it;
  * ports and paths (metrics 9464, gRPC TCP 7070, the socket /run/physmemd/physmemd.sock) match
    physmemd's flag defaults in server/daemon_main.cc and server/default_socket.h and each other across compose, Prometheus, Grafana,
    Kubernetes, systemd and the Dockerfile;
  * every daemon flag the kit passes exists (ABSL_FLAG in server/daemon_main.cc), and every loadgen flag
    in clients/physmem_loadgen.cc;
  * compose and Kubernetes use the same image tag, the project version; volumes and mounts line
    up (Grafana provisioning, dashboards path, Prometheus rule files, socket and hugepages);
  * the Kubernetes objects are well formed (selectors match labels, hugepages requests equal
    limits, Service target ports name container ports, the ServiceMonitor finds the Service);
  * dashboards have what Grafana needs (uid, title, panels with datasource/targets/gridPos,
    variables job/instance/zone), every query filters by the variables, and they are exactly
    what deploy/grafana/make_dashboards.py writes;
  * crash safety: each deployment keeps its arena and journal on a file system that outlives the
    daemon, and the daemon run with the systemd unit's and compose's flags keeps a lease with its
    pages across kill -9 and restart;
  * the systemd unit passes `systemd-analyze verify`; the Kubernetes Prometheus config passes
    `promtool check config` (with static targets in place of Kubernetes discovery, which Debian's
    promtool is built without); the Dockerfile's runtime packages cover the libraries the built
    programs link (ldd + dpkg -S).

Usage: deploy_files_test.py SOURCE_DIR [PHYSMEMD PHYSMEMCTL PHYSMEM_LOADGEN]   (run by ctest)
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

# The shared helpers live in tests/; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from physmemd_process import time_scale  # noqa: E402  (tests/physmemd_process.py)

FAILURES = []
PASSED = [0]


def check(ok, what):
    if ok:
        PASSED[0] += 1
    else:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)
    return ok


def flags_of(source_file):
    """{name: default text} of the ABSL_FLAGs a program defines."""
    text = open(source_file).read()
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"ABSL_FLAG\(\s*[\w:]+\s*,\s*(\w+)\s*,\s*(.*?),\s*\n?\s*\"", text)}


def flag_args(args):
    """{flag: value} of --flag=value arguments."""
    out = {}
    for a in args:
        m = re.match(r"^--(\w+)(?:=(.*))?$", a)
        check(bool(m), "argument %r is a --flag=value" % a)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def port_of(hostport):
    return int(hostport.rsplit(":", 1)[1])


def metric_names(expr):
    names = set(re.findall(r"\b((?:physmem|grpc_server|process)_[a-z_]+)\b", expr))
    if re.search(r"\bup\b", expr):
        names.add("up")
    return names


def base_metric(name, histograms):
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def crash_safe_run(physmemd, physmemctl, given, tmp, where):
    """Starts physmemd with a deployment's flags (socket, metrics and the arena's and journal's
    directory moved into this test's reach; the file names kept), makes a lease holding a block,
    kills the daemon with SIGKILL and starts it again: the lease must be recovered with its
    pages. The /dev/shm files are removed afterwards."""
    shm = "/dev/shm/physmemd-deploy-test-%d-%s-" % (os.getpid(), where)
    args = dict(given)
    args.update({"unix_socket": os.path.join(tmp, where + ".sock"), "metrics_listen": "", "mem_mb": "64"})
    for f in ("arena_path", "journal_path"):
        if args.get(f):
            args[f] = shm + os.path.basename(args[f])
    argv = [physmemd] + ["--%s=%s" % (k, v) if v is not None else "--" + k for k, v in args.items()]
    log = os.path.join(tmp, where + ".log")
    ctl = [physmemctl, "--target=unix://" + args["unix_socket"]]
    scale = time_scale()

    def start():
        p = subprocess.Popen(argv, stdout=open(log, "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20 * scale
        while time.monotonic() < deadline and p.poll() is None:
            if open(log).read().count("event=started") > start.count:
                start.count += 1
                return p
            time.sleep(0.05)
        return p
    start.count = 0

    p = start()
    try:
        if not check(p.poll() is None and start.count == 1, "%s flags: the daemon starts (%s)" % (where, open(log).read())):
            return
        r = subprocess.run(ctl + ["lease", "create", "--ttl_ms=600000", "--name=deploy-" + where],
                           capture_output=True, text=True, timeout=30 * scale)
        a = subprocess.run(ctl + ["alloc", "deploy-" + where, "--order=2"], capture_output=True, text=True,
                           timeout=30 * scale)
        check(r.returncode == 0 and a.returncode == 0, "%s flags: a lease holding a block (%s %s)" % (where, r.stderr, a.stderr))
        p.kill()
        p.wait(timeout=10 * scale)
        p = start()
        check(start.count == 2 and "event=recovered leases=1 " in open(log).read(),
              "%s flags: after kill -9 the daemon recovers the lease from its journal (%s)" % (where, open(log).read()))
        g = subprocess.run(ctl + ["lease", "get", "deploy-" + where], capture_output=True, text=True, timeout=30 * scale)
        check(g.returncode == 0 and "pages_held=4" in g.stdout,
              "%s flags: the lease is there with its 4 pages: %s%s" % (where, g.stdout, g.stderr))
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=10 * scale)
        for path in glob.glob(shm + "*"):
            os.remove(path)


def main():
    source = sys.argv[1]
    binaries = sys.argv[2:5] if len(sys.argv) >= 5 else None
    deploy = os.path.join(source, "deploy")

    # ---- every YAML/JSON file parses ----
    docs = {}
    for path in sorted(glob.glob(os.path.join(deploy, "**", "*"), recursive=True)):
        rel = os.path.relpath(path, source)
        try:
            if path.endswith((".yaml", ".yml")):
                docs[rel] = [d for d in yaml.safe_load_all(open(path)) if d is not None]
            elif path.endswith(".json"):
                docs[rel] = [json.load(open(path))]
            else:
                continue
            check(len(docs[rel]) > 0, "%s has content" % rel)
        except Exception as e:
            check(False, "%s parses: %s" % (rel, e))
    check(len(docs) >= 15, "deploy/ has its YAML/JSON files: %d" % len(docs))

    # ---- the daemon's contract ----
    daemon_flags = flags_of(os.path.join(source, "server/daemon_main.cc"))
    loadgen_flags = flags_of(os.path.join(source, "clients/physmem_loadgen.cc"))
    check("metrics_listen" in daemon_flags and "unix_socket" in daemon_flags, "server/daemon_main.cc defines the flags")
    metrics_port = port_of(daemon_flags.get("metrics_listen", '":0"').strip('"'))
    # The flag's default is computed (server/default_socket.h): the system socket for root, which
    # is how the kit runs the daemon.
    socket_path = re.search(r'kSystemSocket\[\] = "([^"]+)"',
                            open(os.path.join(source, "server/default_socket.h")).read()).group(1)
    check("DefaultDaemonSocket()" in daemon_flags.get("unix_socket", ""), "--unix_socket defaults to DefaultDaemonSocket()")
    check(metrics_port == 9464, "the daemon's default metrics port is 9464 (docs/metrics.md)")
    check(socket_path == "/run/physmemd/physmemd.sock", "the daemon's default socket")
    grpc_port = 7070  # the TCP port the kit documents (the daemon has no TCP by default)
    version = re.search(r"project\(physmemd VERSION ([\d.]+)", open(os.path.join(source, "CMakeLists.txt")).read()).group(1)
    image = "physmemd:" + version
    doc_metrics = set(re.findall(r"^\| `([a-z_:]+)` \|", open(os.path.join(source, "docs/metrics.md")).read(), re.M))
    histograms = {"physmem_alloc_wait_duration_seconds", "grpc_server_handling_seconds"}
    check(histograms <= doc_metrics, "docs/metrics.md lists the histograms")

    def daemon_args_ok(args, where):
        given = flag_args(args)
        for f in given:
            check(f in daemon_flags, "%s: physmemd has flag --%s" % (where, f))
        return given

    # ---- metric names in dashboards and rules ----
    used = {}
    dash_paths = sorted(p for p in docs if p.startswith("deploy/grafana/dashboards/"))
    check(len(dash_paths) >= 2, "at least two dashboards")
    for p in dash_paths:
        d = docs[p][0]
        for key in ("uid", "title", "panels", "templating", "schemaVersion"):
            check(key in d, "%s has %s" % (p, key))
        names = [v["name"] for v in d["templating"]["list"]]
        for v in ("datasource", "job", "instance", "zone"):
            check(v in names, "%s has variable $%s" % (p, v))
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                for n in metric_names(q):
                    used.setdefault(n, set()).add(p)
            if v["type"] == "datasource":
                ds_default = v["current"]["value"]
        ids = [panel["id"] for panel in d["panels"]]
        check(len(ids) == len(set(ids)), "%s: panel ids unique" % p)
        kinds = set()
        for panel in d["panels"]:
            gp = panel.get("gridPos", {})
            check(all(k in gp for k in "hwxy") and gp["x"] + gp["w"] <= 24, "%s: '%s' has a gridPos within 24 columns" %
                  (p, panel["title"]))
            if panel["type"] == "row":
                continue
            kinds.add(panel["type"])
            check(panel.get("datasource", {}).get("uid") == "${datasource}", "%s: '%s' uses $datasource" % (p, panel["title"]))
            check(len(panel.get("targets", [])) > 0, "%s: '%s' has targets" % (p, panel["title"]))
            for t in panel.get("targets", []):
                e = t["expr"]
                check('job=~"$job"' in e and 'instance=~"$instance"' in e, "%s: '%s' %s filters by $job and $instance" %
                      (p, panel["title"], t["refId"]))
                if re.search(r"physmem_(zone_|buddyinfo|pcp_|alloc_|free_pages_total|free_total)", e):
                    check('zone=~"$zone"' in e, "%s: '%s' %s filters by $zone" % (p, panel["title"], t["refId"]))
                for n in metric_names(e):
                    used.setdefault(n, set()).add(p)
        if "buddy" in p:
            check("heatmap" in kinds or "bargauge" in kinds, "%s: free blocks per order as a heatmap or bar gauge" % p)
    rules_path = "deploy/prometheus/physmemd.rules.yml"
    alerts = [r for g in docs[rules_path][0]["groups"] for r in g["rules"]]
    check({a["alert"] for a in alerts} >= {"PhysmemDaemonDown", "PhysmemZoneBelowLowWatermark",
                                            "PhysmemHighOrderAllocationFailures", "PhysmemLeaseExpiryStorm",
                                            "PhysmemJournalFailing"},
          "the five alerts exist")
    for a in alerts:
        check("severity" in a.get("labels", {}) and "summary" in a.get("annotations", {}),
              "%s has a severity and a summary" % a["alert"])
        for n in metric_names(a["expr"]):
            used.setdefault(n, set()).add(rules_path)
    for n, where in sorted(used.items()):
        check(n == "up" or base_metric(n, histograms) in doc_metrics,
              "metric %s (used in %s) is in docs/metrics.md" % (n, sorted(where)))

    with tempfile.TemporaryDirectory() as tmp:
        # Dashboards are what make_dashboards.py writes.
        gen = os.path.join(tmp, "dash")
        os.mkdir(gen)
        subprocess.run([sys.executable, os.path.join(deploy, "grafana/make_dashboards.py"), gen], check=True)
        for f in sorted(os.listdir(gen)):
            check(open(os.path.join(gen, f)).read() == open(os.path.join(deploy, "grafana/dashboards", f)).read(),
                  "dashboards/%s is what make_dashboards.py writes (re-run it)" % f)
        check(sorted(os.listdir(gen)) == sorted(os.path.basename(p) for p in dash_paths),
              "make_dashboards.py writes every shipped dashboard")

        # A real scrape: every metric the kit uses is exported (with the binaries).
        if binaries:
            physmemd, physmemctl, loadgen = binaries
            sock = os.path.join(tmp, "s.sock")
            log = os.path.join(tmp, "log")
            p = subprocess.Popen([physmemd, "--unix_socket=" + sock, "--arena=ordinary", "--mem_mb=64",
                                  "--metrics_listen=127.0.0.1:0"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
            # Timeouts only bound a hang: a sanitized daemon on a loaded machine is 5-20x slower.
            scale = time_scale()
            try:
                port = None
                deadline = time.monotonic() + 10 * scale
                while time.monotonic() < deadline and p.poll() is None:
                    m = re.search(r"event=started .*metrics=(\d+)", open(log).read())
                    if m:
                        port = int(m.group(1))
                        break
                    time.sleep(0.05)
                check(port is not None, "physmemd logs metrics=<port> in its started line")
                if port:
                    # Some calls first, so that call-driven families have series.
                    subprocess.run([loadgen, "--target=unix://" + sock, "--scenario=mixed", "--duration=1s",
                                    "--timeout_ms=%d" % (10000 * scale)], capture_output=True, timeout=30 * scale)
                    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                                  timeout=10 * scale).read().decode()
                    exported = set(re.findall(r"^# TYPE (\w+) ", body, re.M))
                    for n in sorted(used):
                        if n != "up":
                            check(base_metric(n, histograms) in exported, "metric %s is in a real scrape" % n)
            finally:
                p.terminate()
                p.wait(timeout=10 * scale)

        # ---- compose ----
        compose = docs["deploy/compose.yaml"][0]
        svc = compose["services"]
        check({"physmemd", "prometheus", "grafana"} <= set(svc), "compose has physmemd, prometheus and grafana")
        pd = svc["physmemd"]
        check(pd.get("image") == image, "compose physmemd image is %s" % image)
        check(pd["build"]["dockerfile"] == "deploy/container/Dockerfile" and
              os.path.isfile(os.path.join(deploy, pd["build"]["context"], pd["build"]["dockerfile"])),
              "compose builds deploy/container/Dockerfile")
        cargs = daemon_args_ok(pd["command"], "compose physmemd")
        check(port_of(cargs.get("metrics_listen", ":0")) == metrics_port and
              cargs["metrics_listen"].startswith("0.0.0.0:"), "compose: metrics on 0.0.0.0:9464 (reachable by Prometheus)")
        check(cargs.get("unix_socket") == socket_path, "compose: the default socket path")
        check("127.0.0.1:%d:%d" % (metrics_port, metrics_port) in pd.get("ports", []), "compose publishes 9464 on loopback")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in pd["volumes"]}
        check(mounts.get(os.path.dirname(socket_path)) == "physmemd-run", "compose: the socket directory is a volume")
        # Crash-safe: arena + journal on the host's tmpfs, which outlives the container.
        state_dir = os.path.dirname(cargs.get("arena_path") or "/none/x")
        check(mounts.get(state_dir, "").startswith("/dev/shm/"),
              "compose: --arena_path is on a bind of the host's /dev/shm (survives a container restart)")
        check(cargs.get("journal") in ("on", "auto") and not cargs.get("journal_path"),
              "compose: the journal is on, beside the arena")
        init = svc.get("physmemd-state", {})
        check(str(init.get("user")) == "0:0" and "chown 10001:10001 " + state_dir in " ".join(init.get("entrypoint", [])) and
              mounts[state_dir] + ":" + state_dir in init.get("volumes", []),
              "compose: a root one-shot hands the state directory to uid 10001")
        check(pd.get("depends_on", {}).get("physmemd-state", {}).get("condition") == "service_completed_successfully",
              "compose: the daemon starts after the state directory is its own")
        lg = svc.get("loadgen")
        if lg:
            check(lg["image"] == image, "compose loadgen uses the same image")
            for f in flag_args(lg["command"]):
                check(f in loadgen_flags, "compose loadgen: physmem_loadgen has flag --%s" % f)
            check("physmemd-run:" + os.path.dirname(socket_path) in lg["volumes"], "compose loadgen shares the socket")
        prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["prometheus"]["volumes"]}
        check(prom_mounts.get("/etc/prometheus") == "./prometheus", "compose mounts deploy/prometheus at /etc/prometheus")
        check("--config.file=/etc/prometheus/prometheus.yml" in svc["prometheus"]["command"], "compose: Prometheus config path")
        prom_port = port_of([a for a in svc["prometheus"]["command"] if a.startswith("--web.listen-address=")][0])
        graf_mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["grafana"]["volumes"]}
        for target, src in graf_mounts.items():
            check(os.path.isdir(os.path.join(deploy, src)), "compose grafana mount %s exists" % src)
        provider = docs["deploy/grafana/provisioning/dashboards/physmemd.yaml"][0]["providers"][0]
        check(graf_mounts.get(provider["options"]["path"]) == "./grafana/dashboards",
              "the dashboard provider's path is where compose mounts deploy/grafana/dashboards")
        check(graf_mounts.get("/etc/grafana/provisioning/datasources") == "./grafana/provisioning/datasources",
              "compose mounts the datasource provisioning")
        home = svc["grafana"].get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home:
            check(os.path.relpath(home, provider["options"]["path"]) in [os.path.basename(p) for p in dash_paths],
                  "Grafana's home dashboard is a shipped one")
        ds = docs["deploy/grafana/provisioning/datasources/physmemd.yaml"][0]["datasources"][0]
        check(ds["type"] == "prometheus" and ds["url"] == "http://prometheus:%d" % prom_port,
              "the datasource points at compose's prometheus service")
        check(ds["uid"] == ds_default, "dashboards default to the provisioned datasource uid")

        # ---- Prometheus configs ----
        prom = docs["deploy/prometheus/prometheus.yml"][0]
        job = [j for j in prom["scrape_configs"] if j["job_name"] == "physmemd"]
        check(len(job) == 1, "prometheus.yml has job physmemd")
        targets = [t for sc in job[0]["static_configs"] for t in sc["targets"]]
        check(targets == ["physmemd:%d" % metrics_port], "prometheus.yml scrapes the compose service on 9464")
        for rf in prom["rule_files"]:
            check(os.path.isfile(os.path.join(deploy, "prometheus", rf)), "rule file %s exists" % rf)
        check(ds.get("jsonData", {}).get("timeInterval") == job[0].get("scrape_interval"),
              "Grafana's timeInterval equals the scrape interval ($__rate_interval)")
        kprom = docs["deploy/prometheus/prometheus-kubernetes.yml"][0]
        kjob = kprom["scrape_configs"][0]
        check(kjob["job_name"] == "physmemd", "Kubernetes Prometheus job is physmemd")
        promtool = shutil.which("promtool")
        if check(promtool is not None, "promtool installed"):
            # Debian's promtool lacks Kubernetes discovery: check the rest with static targets.
            for sc in kprom["scrape_configs"]:
                sc.pop("kubernetes_sd_configs", None)
                sc["static_configs"] = [{"targets": ["127.0.0.1:%d" % metrics_port]}]
            kp = os.path.join(tmp, "prometheus-kubernetes.yml")
            yaml.safe_dump(kprom, open(kp, "w"))
            shutil.copy(os.path.join(deploy, "prometheus/physmemd.rules.yml"), tmp)
            r = subprocess.run([promtool, "check", "config", kp], capture_output=True, text=True)
            check(r.returncode == 0, "promtool check config prometheus-kubernetes.yml (static targets): " + r.stdout + r.stderr)

        # ---- Kubernetes ----
        k8s = {}
        patches = {p: ds_[0] for p, ds_ in docs.items() if p.startswith("deploy/kubernetes/") and p.endswith("-patch.yaml")}
        for p, ds_ in docs.items():
            if p.startswith("deploy/kubernetes/") and p not in patches:
                for obj in ds_:
                    check("apiVersion" in obj and "kind" in obj and "name" in obj.get("metadata", {}),
                          "%s: object has apiVersion, kind, metadata.name" % p)
                    k8s[(obj["kind"], obj["metadata"]["name"])] = obj
        dsn = k8s.get(("DaemonSet", "physmemd"))
        if check(dsn is not None, "a DaemonSet physmemd"):
            tpl = dsn["spec"]["template"]
            labels = tpl["metadata"]["labels"]
            check(dsn["spec"]["selector"]["matchLabels"].items() <= labels.items(), "DaemonSet selector matches its pods")
            ann = tpl["metadata"]["annotations"]
            check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(metrics_port),
                  "scrape annotations name port 9464")
            c = [c for c in tpl["spec"]["containers"] if c["name"] == "physmemd"][0]
            check(c["image"] == image, "DaemonSet image is %s" % image)
            kargs = daemon_args_ok(c["args"], "DaemonSet")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            check(ports.get("metrics") == metrics_port == port_of(kargs.get("metrics_listen", ":0")),
                  "DaemonSet metrics port 9464 = --metrics_listen")
            check("tcp" not in kargs and "allow_insecure_tcp" not in kargs and "grpc" not in ports,
                  "DaemonSet: no TCP by default (the node's Unix socket only)")
            probe = c.get("readinessProbe", {}).get("exec", {}).get("command", [])
            check(probe[:1] == ["/usr/local/bin/physmemctl"] and "--target=unix://" + socket_path in probe,
                  "DaemonSet: readiness asks the daemon on its socket")
            res = c["resources"]
            check(res["requests"].get("hugepages-2Mi") and res["requests"]["hugepages-2Mi"] == res["limits"].get("hugepages-2Mi"),
                  "hugepages-2Mi requested = limit")
            check("memory" in res["requests"] or "cpu" in res["requests"], "hugepages come with a cpu or memory request")
            mib = int(re.match(r"(\d+)Mi", res["requests"]["hugepages-2Mi"]).group(1))
            check(int(kargs.get("mem_mb", "0")) <= mib, "--mem_mb fits in the hugepages request")
            vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for m in c["volumeMounts"] + [m for ic in tpl["spec"].get("initContainers", []) for m in ic["volumeMounts"]]:
                check(m["name"] in vols, "volume %s is defined" % m["name"])
            sock_dir = os.path.dirname(kargs.get("unix_socket", ""))
            check(kargs.get("unix_socket") == socket_path and vols[mounts[sock_dir]].get("hostPath", {}).get("path") == sock_dir,
                  "the socket directory is a hostPath at the same path")
            arena_dir = os.path.dirname(kargs.get("arena_path", "/x/y"))
            check(vols.get(mounts.get(arena_dir, ""), {}).get("emptyDir", {}).get("medium", "").startswith("HugePages"),
                  "--arena_path is on the hugepages emptyDir")
            # The journal (hugetlbfs cannot hold it) on a memory emptyDir: both live as long as the
            # pod, so a container restart after a crash recovers.
            journal_dir = os.path.dirname(kargs.get("journal_path") or "/none/x")
            check(kargs.get("journal") in ("on", "auto") and
                  vols.get(mounts.get(journal_dir, ""), {}).get("emptyDir", {}).get("medium") == "Memory",
                  "DaemonSet: the journal is on, on a memory emptyDir")
            # TCP only with mutual TLS, from the example patch.
            patch = patches.get("deploy/kubernetes/examples/tcp-mtls-patch.yaml")
            if check(patch is not None, "deploy/kubernetes/examples/tcp-mtls-patch.yaml exists"):
                pspec = patch["spec"]["template"]["spec"]
                pc = [x for x in pspec["containers"] if x["name"] == "physmemd"][0]
                pargs = daemon_args_ok(pc["args"], "tcp-mtls-patch")
                check({k: v for k, v in pargs.items() if k not in ("tcp", "tls_cert", "tls_key", "tls_client_ca")} == kargs,
                      "the mTLS patch repeats the DaemonSet's flags (args is replaced whole)")
                check("allow_insecure_tcp" not in pargs and all(pargs.get(f) for f in ("tls_cert", "tls_key", "tls_client_ca")),
                      "the mTLS patch serves TCP with mutual TLS only")
                tls_mount = [m for m in pc["volumeMounts"] if m["mountPath"] == os.path.dirname(pargs.get("tls_cert", "/x/y"))]
                pvols = {v["name"]: v for v in pspec["volumes"]}
                check(len(tls_mount) == 1 and "secret" in pvols.get(tls_mount[0]["name"], {}) and
                      all(os.path.dirname(pargs[f]) == tls_mount[0]["mountPath"] for f in ("tls_key", "tls_client_ca")),
                      "the mTLS patch's certificates come from a Secret")
                pports = {x["name"]: x["containerPort"] for x in pc["ports"]}
                check(pports.get("grpc") == grpc_port == port_of(pargs.get("tcp", ":0")), "the mTLS patch: port grpc 7070 = --tcp")
                ports.update(pports)
            run_group = tpl["spec"]["securityContext"].get("runAsGroup")
        for (kind, name), svc_ in k8s.items():
            if kind != "Service":
                continue
            check(svc_["spec"]["selector"].items() <= labels.items(), "Service %s selects the daemon pods" % name)
            for sp in svc_["spec"]["ports"]:
                check(sp["targetPort"] in ports and (sp["port"] == ports[sp["targetPort"]]),
                      "Service %s port %s targets the container port of the same number" % (name, sp["name"]))
        hl = k8s.get(("Service", "physmemd"), {})
        check(hl.get("spec", {}).get("clusterIP") == "None", "Service physmemd is headless")
        check(k8s.get(("Service", "physmemd-local"), {}).get("spec", {}).get("internalTrafficPolicy") == "Local",
              "Service physmemd-local (examples, with the mTLS patch) routes to the caller's node only")
        check(all(sp["name"] != "grpc" for sp in hl.get("spec", {}).get("ports", [])),
              "Service physmemd has no gRPC port (TCP is off by default)")
        sm = k8s.get(("ServiceMonitor", "physmemd"))
        if check(sm is not None, "a ServiceMonitor"):
            check(sm["spec"]["selector"]["matchLabels"].items() <= hl["metadata"]["labels"].items(),
                  "the ServiceMonitor selects Service physmemd")
            check(all(e["port"] in [p["name"] for p in hl["spec"]["ports"]] for e in sm["spec"]["endpoints"]),
                  "the ServiceMonitor scrapes a named port of the Service")
        client = k8s.get(("Pod", "physmemd-client-example"))
        if check(client is not None, "deploy/kubernetes/examples has the client pod"):
            cvol = [v for v in client["spec"]["volumes"] if "hostPath" in v][0]
            check(cvol["hostPath"]["path"] == os.path.dirname(socket_path), "the client example mounts the socket directory")
            check(run_group in client["spec"]["securityContext"].get("supplementalGroups", []),
                  "the client example joins the daemon's group")

        # ---- systemd ----
        unit = open(os.path.join(deploy, "systemd/physmemd.service")).read()
        exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S).group(1).replace("\\\n", " ").split()
        uargs = daemon_args_ok(exec_start[1:], "systemd ExecStart")
        check(os.path.dirname(uargs.get("unix_socket", "")) == "/run/" + re.search(r"^RuntimeDirectory=(\S+)", unit, re.M).group(1),
              "systemd: the socket is in RuntimeDirectory")
        check(port_of(uargs.get("metrics_listen", ":0")) == metrics_port, "systemd: metrics on 9464")
        check((uargs.get("arena_path") or "").startswith("/dev/shm/") and uargs.get("journal") in ("on", "auto"),
              "systemd: a file-backed arena in /dev/shm with its journal (Restart=on-failure recovers)")
        check(re.search(r"^Restart=on-failure$", unit, re.M) is not None, "systemd: Restart=on-failure")
        check(re.search(r"^RemoveIPC=yes", unit, re.M) is None,
              "systemd: no RemoveIPC=yes (it deletes the user's /dev/shm files whenever the unit stops)")
        check(re.search(r"^User=physmemd$", unit, re.M) is not None and
              "u physmemd" in open(os.path.join(deploy, "systemd/physmemd.sysusers.conf")).read(),
              "systemd: dedicated user physmemd, created by sysusers")
        sa = shutil.which("systemd-analyze")
        if check(sa is not None, "systemd-analyze installed"):
            exe = os.path.abspath(binaries[0]) if binaries else "/bin/true"
            u = os.path.join(tmp, "physmemd.service")
            open(u, "w").write(unit.replace(exec_start[0], exe))
            r = subprocess.run([sa, "verify", u], capture_output=True, text=True)
            check(r.returncode == 0 and not r.stderr.strip(), "systemd-analyze verify physmemd.service: " + r.stderr)

        # ---- crash safety for real: the daemon with the unit's and compose's arena and journal
        # flags (paths moved to this test's /dev/shm files) survives kill -9 with its lease ----
        if binaries:
            for where, given in (("systemd", uargs), ("compose", cargs)):
                crash_safe_run(binaries[0], binaries[1], given, tmp, where)

        # ---- Dockerfile ----
        dockerfile = open(os.path.join(deploy, "container/Dockerfile")).read()
        check("FROM debian:12 AS build" in dockerfile and "scripts/install-deps.sh" in dockerfile,
              "the image builds on Debian 12 with scripts/install-deps.sh")
        check("-t %s" % image in dockerfile, "the Dockerfile documents the tag %s" % image)
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
        dargs = daemon_args_ok(cmd, "Dockerfile CMD")
        check(dargs.get("unix_socket") == socket_path and port_of(dargs.get("metrics_listen", ":0")) == metrics_port,
              "Dockerfile CMD: default socket, metrics on 9464")
        check(re.search(r"^EXPOSE .*\b%d\b.*\b%d\b" % (metrics_port, grpc_port), dockerfile, re.M) is not None,
              "Dockerfile exposes 9464 and 7070")
        if binaries:
            runtime = re.search(r"FROM debian:12-slim(.*)", dockerfile, re.S).group(1)
            libs = set()
            for b in binaries:
                for line in subprocess.run(["ldd", b], capture_output=True, text=True).stdout.splitlines():
                    m = re.search(r"=> (/\S+)", line)
                    if m:
                        libs.update({m.group(1), os.path.realpath(m.group(1))})
            # One dpkg -S for all of them (it is slow per call); paths no package owns are skipped.
            r = subprocess.run(["dpkg", "-S"] + sorted(libs), capture_output=True, text=True)
            needed = {line.split(":")[0] for line in r.stdout.splitlines() if ": /" in line}
            check(len(needed) >= 5, "ldd + dpkg -S found the runtime packages: %s" % sorted(needed))
            base = {"libc6", "libgcc-s1", "libstdc++6"}  # in debian:12-slim already
            for pkg in sorted(needed - base):
                check(re.search(r"\b%s\b" % re.escape(pkg), runtime) is not None,
                      "the runtime image installs %s (linked by the programs)" % pkg)

    print("%d passed, %d failed" % (PASSED[0], len(FAILURES)))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
