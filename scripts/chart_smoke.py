#!/usr/bin/env python3
"""Runs the chart's rendered command lines with the real binaries.

From a `helm template` rendering it takes the aggregator's args, the agent's
args, env and capabilities, and runs both, as the cluster would, inside a
network namespace this script creates (a "node"), with a second namespace as
a "pod" joined by a veth whose node side is named like a CNI's (eni...):

  - the aggregator with exactly the rendered args (mounted-file paths moved
    to a temporary directory, and --topology added, since there is no API
    server here);
  - the agent with exactly the rendered args and env, under the rendered
    capability set only (setpriv --bounding-set, --no-new-privs), as uid 0;
  - the aggregator Service's DNS name resolves to the node's loopback
    (/etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts);
  - TLS material is made with openssl for the rendered server name.

It asserts that the aggregator and the agent both become ready (probing the
rendered probe paths and ports, as the kubelet would: the aggregator's on its
plain HTTP port, without a client certificate even under mutual TLS), that
pod traffic reaches the aggregator as counted reports, read where the
chart's scrapers read them (and as a flow log line when flow logs are on),
and that the agent exits 0 on SIGTERM within the rendered
terminationGracePeriodSeconds.

Then the release's lifecycle on that node (issue 15):

  - upgrade: the agent is stopped with SIGTERM (its pinned programs must
    stay attached and its pins stay in place), pod traffic is sent while no
    agent runs, and the agent of the upgrade rendering (a new image tag)
    starts; every byte between the pod and its node, before, during and
    after the upgrade, must be counted exactly, against nftables counters
    in the pod's namespace;
  - uninstall: the agent is stopped (what the pre-delete hook Job does by
    deleting the DaemonSet), then the cleanup DaemonSet's init container
    runs with its rendered args, capabilities and mounts, twice (it must be
    idempotent); nothing of netscope may be left attached to the pod's link
    (TCX: BPF_PROG_QUERY on both directions; legacy TC: the filters) or
    pinned under the chart's pin root.

The hostPath volumes are emulated: the node's bpffs mount is a directory of
this run in the host's bpffs (/sys/fs/bpf/netscope-test-helm-*), bind-mounted
at /sys/fs/bpf in the agent's mount namespace, so the rendered --pin-root is
used as is; other hostPaths (the journal) are directories of this run.

Needs root, iproute2, openssl, curl and the built binaries. Network safety:
addresses and routes only inside the two namespaces it creates; traffic is
a bounded ping between them; both namespaces and the hosts file are removed
on exit, and stale ones (netscope-test-helm-*) are swept at start, as are
this script's bpffs directories.
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

PREFIX = "netscope-test-helm-"


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


def sweep():
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)
            print(f"  swept stale namespace {name}")
    if os.path.isdir("/etc/netns"):
        for d in os.listdir("/etc/netns"):
            if d.startswith(PREFIX):
                shutil.rmtree(os.path.join("/etc/netns", d), ignore_errors=True)
    if os.path.isdir(BPFFS):
        for d in os.listdir(BPFFS):
            if d.startswith(PREFIX):
                shutil.rmtree(os.path.join(BPFFS, d), ignore_errors=True)
                print(f"  swept stale bpffs directory {d}")


BPFFS = "/sys/fs/bpf"
# BPF_PROG_QUERY and the TCX attach types (include/uapi/linux/bpf.h).
BPF_PROG_QUERY = 16
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
SYS_BPF = {"x86_64": 321, "aarch64": 280}


def tcx_count(ifname):
    """Programs attached with TCX to ifname, per direction (run inside the
    interface's network namespace)."""
    ifindex = socket_if_nametoindex(ifname)
    libc = ctypes.CDLL(None, use_errno=True)
    nr = SYS_BPF[os.uname().machine]
    counts = {}
    for name, at in (("ingress", BPF_TCX_INGRESS), ("egress", BPF_TCX_EGRESS)):
        # union bpf_attr, query: target_ifindex, attach_type, query_flags,
        # attach_flags, prog_ids (u64), prog_cnt (u32), ... 64 bytes in all.
        attr = (ctypes.c_uint8 * 64)()
        ctypes.c_uint32.from_buffer(attr, 0).value = ifindex
        ctypes.c_uint32.from_buffer(attr, 4).value = at
        if libc.syscall(nr, BPF_PROG_QUERY, attr, 64) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"BPF_PROG_QUERY {name} on {ifname}: {os.strerror(err)}")
        counts[name] = ctypes.c_uint32.from_buffer(attr, 24).value
    return counts


def socket_if_nametoindex(ifname):
    return socket.if_nametoindex(ifname)


def parse_secs(d):
    """Seconds of a humantime duration such as 10s, 1m30s, 500ms."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)\s*([a-z]+)", d))


class Smoke:
    def __init__(self, rendered, bindir, label, upgrade=None):
        self.label = label
        self.bindir = bindir
        docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
        hook = lambda d: "helm.sh/hook" in d["metadata"].get("annotations", {})
        self.hooks = [d for d in docs if hook(d)]
        docs = [d for d in docs if not hook(d)]
        self.ds = next(d for d in docs if d["kind"] == "DaemonSet")
        self.upgrade_ds = None
        if upgrade:
            udocs = [d for d in yaml.safe_load_all(open(upgrade)) if d]
            self.upgrade_ds = next(d for d in udocs if d["kind"] == "DaemonSet" and not hook(d))
            # Helm runs the hooks of the release's last revision.
            self.hooks = [d for d in udocs if hook(d)]
        self.dep = next(d for d in docs if d["kind"] == "Deployment")
        self.svc = next(d for d in docs if d["kind"] == "Service")
        self.cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        tag = f"{os.getpid()}-{label}"[:40]
        self.node_ns = f"{PREFIX}node-{tag}"
        self.pod_ns = f"{PREFIX}pod-{tag}"
        self.tmp = tempfile.mkdtemp(prefix="netscope-helm-smoke-")
        # The node's bpffs: a directory of this run in the host's.
        self.bpffs = f"{BPFFS}/{PREFIX}{tag}"
        self.procs = []
        # Rendered args replaced as a cluster would map them (Service port
        # -> container port).
        self.arg_fixes = {}
        self.failures = []
        self.passed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
            print(f"  ok [{self.label}] {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL [{self.label}] {what}", file=sys.stderr)
        return cond

    # --- set-up ----------------------------------------------------------------

    def netns(self):
        n, p = self.node_ns, self.pod_ns
        sh("ip", "netns", "add", n)
        sh("ip", "netns", "add", p)
        sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", p, "link", "set", "lo", "up")
        # Node side named like the AWS VPC CNI's, pod side eth0.
        sh("ip", "-n", n, "link", "add", "eni0smoke", "type", "veth", "peer", "name", "eth0", "netns", p)
        sh("ip", "-n", n, "addr", "add", "10.77.0.1/30", "dev", "eni0smoke")
        sh("ip", "-n", p, "addr", "add", "10.77.0.2/30", "dev", "eth0")
        sh("ip", "-n", n, "link", "set", "eni0smoke", "up")
        sh("ip", "-n", p, "link", "set", "eth0", "up")
        # The reference: IPv4 bytes between the pod and its node, as the
        # pod's stack sends and receives them (L3 length, like netscope).
        nft = """table inet netscope_smoke {
  chain out { type filter hook output priority 0; oifname "eth0" ip daddr 10.77.0.1 counter; }
  chain in { type filter hook input priority 0; iifname "eth0" ip saddr 10.77.0.1 counter; }
}
"""
        subprocess.run(["ip", "netns", "exec", p, "nft", "-f", "-"], input=nft, text=True, check=True)
        os.makedirs(self.bpffs)

    def hosts(self, names):
        d = f"/etc/netns/{self.node_ns}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/hosts", "w") as f:
            f.write("127.0.0.1 localhost " + " ".join(sorted(names)) + "\n::1 localhost\n")

    def certs(self, server_names):
        d = self.tmp
        ssl = lambda *a: sh("openssl", *a, cwd=d)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=netscope-helm-smoke-ca", "-days", "1")
        san = ",".join(f"DNS:{n}" for n in sorted(server_names))
        for who, eku in (("server", "serverAuth"), ("client", "clientAuth")):
            ssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN=netscope-{who}")
            with open(f"{d}/{who}.ext", "w") as f:
                f.write(f"basicConstraints=CA:FALSE\nextendedKeyUsage={eku}\n" + (f"subjectAltName={san}\n" if who == "server" else ""))
            ssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{who}.crt", "-days", "1", "-extfile", f"{who}.ext")
        # The Secrets' layouts (kubernetes.io/tls + ca.crt), as the chart mounts them.
        for who, src in (("aggregator", "server"), ("agent", "client")):
            os.makedirs(f"{d}/{who}-tls")
            shutil.copy(f"{d}/{src}.crt", f"{d}/{who}-tls/tls.crt")
            shutil.copy(f"{d}/{src}.key", f"{d}/{who}-tls/tls.key")
            shutil.copy(f"{d}/ca.crt", f"{d}/{who}-tls/ca.crt")

    # --- helpers ---------------------------------------------------------------

    def remap(self, args, spec, container, who):
        """Moves paths under the container's volume mounts to where this run
        keeps the same files."""
        mounts = {}
        for m in container.get("volumeMounts", []):
            vol = next(v for v in spec.get("volumes", []) if v["name"] == m["name"])
            if "secret" in vol:
                mounts[m["mountPath"]] = f"{self.tmp}/{who}-tls"
            elif "hostPath" in vol and m["mountPath"] != BPFFS:
                # A host directory (the journal): one of this run's.
                d = f"{self.tmp}/host-{vol['name']}"
                os.makedirs(d, exist_ok=True)
                mounts[m["mountPath"]] = d
            elif "configMap" in vol:
                cm = self.cms[vol["configMap"]["name"]]
                d = f"{self.tmp}/cm-{vol['configMap']['name']}"
                os.makedirs(d, exist_ok=True)
                for k, v in cm["data"].items():
                    with open(f"{d}/{k}", "w") as f:
                        f.write(v)
                mounts[m["mountPath"]] = d
        out = []
        for a in args:
            for src, dst in mounts.items():
                a = a.replace(src + "/", dst + "/")
                if a.endswith("=" + src):
                    a = a[: -len(src)] + dst
            out.append(a)
        return out

    def in_node(self, spec, container, cmd):
        """cmd in the node's network namespace, with the pod spec's bpffs
        hostPath emulated: this run's bpffs directory at /sys/fs/bpf.

        `ip netns exec` mounts a fresh sysfs over /sys, without the host's
        bpffs, and a bind mount cannot reach back into the host's mount
        namespace. So this does what it does by hand: enter the network
        namespace, unshare the mount namespace (a copy that still holds the
        host's bpffs), park this run's bpffs directory, mount the fresh
        sysfs, bind the parked directory at /sys/fs/bpf and the netns' hosts
        file at /etc/hosts. Pins made there are in the host's bpffs and
        outlive the process, as on a node."""
        bpf = any(m["mountPath"] == BPFFS for m in container.get("volumeMounts", []))
        if not bpf:
            return ["ip", "netns", "exec", self.node_ns, *cmd]
        stage = f"{self.tmp}/bpffs-stage"
        os.makedirs(stage, exist_ok=True)
        hosts = f"/etc/netns/{self.node_ns}/hosts"
        script = ('set -e; mount --bind "$0" "$1"; umount -l /sys; mount -t sysfs sysfs /sys; '
                  'mount --bind "$1" /sys/fs/bpf; mount --bind "$2" /etc/hosts; shift 2; exec "$@"')
        return ["nsenter", f"--net=/run/netns/{self.node_ns}", "unshare", "--mount", "--propagation", "slave",
                "sh", "-c", script, self.bpffs, stage, hosts, *cmd]

    def spawn(self, name, cmd, env=None):
        log = open(f"{self.tmp}/{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append((name, p))
        return p

    def curl(self, url, extra=(), timeout=3):
        r = sh("ip", "netns", "exec", self.node_ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
               "--max-time", str(timeout), *extra, url, check=False)
        return r.stdout.strip()

    def fetch(self, url, extra=()):
        return sh("ip", "netns", "exec", self.node_ns, "curl", "-s", "--max-time", "3", *extra, url, check=False).stdout

    def wait(self, what, fn, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if fn():
                return True
            time.sleep(0.25)
        return False

    def log(self, name):
        try:
            return open(f"{self.tmp}/{name}.log").read()
        except OSError:
            return ""

    # --- the run ---------------------------------------------------------------

    def run(self):
        dspec = self.dep["spec"]["template"]["spec"]
        (actr,) = dspec["containers"]
        aspec = self.ds["spec"]["template"]["spec"]
        (gctr,) = aspec["containers"]
        agg_args = list(actr["args"])
        agent_args = list(gctr["args"])
        endpoint = next(a.split("=", 1)[1] for a in agent_args if a.startswith("--server-endpoint="))
        host = endpoint.rsplit(":", 1)[0]
        sni = next((a.split("=", 1)[1] for a in agent_args if a.startswith("--tls-server-name=")), host)
        tls = any(a.startswith("--tls-cert=") for a in agg_args)
        mtls = any(a.startswith("--tls-client-ca=") for a in agg_args)
        listen_port = int(next((a for a in agg_args if a.startswith("--listen-addr=")), "--listen-addr=:8080").rsplit(":", 1)[1])
        http_arg = next((a for a in agg_args if a.startswith("--http-listen-addr=")), None)
        if not self.check(http_arg is not None, "the aggregator is given --http-listen-addr (the plain port)"):
            return
        http_port = int(http_arg.rsplit(":", 1)[1])
        svc_port = next(p["port"] for p in self.svc["spec"]["ports"] if p["name"] == "grpc")
        self.check(int(endpoint.rsplit(":", 1)[1]) == svc_port, "the agent's endpoint port is the Service's port")
        if svc_port != listen_port:
            # kube-proxy would map the Service port to the container port;
            # there is none here, so the agent is pointed at the latter.
            self.arg_fixes[f"--server-endpoint={endpoint}"] = f"--server-endpoint={host}:{listen_port}"
            agent_args = [self.arg_fixes.get(a, a) for a in agent_args]
            print(f"  [{self.label}] Service port {svc_port} -> container port {listen_port}: the agent is given the latter")

        self.netns()
        self.hosts({host, sni})
        self.certs({host, sni})
        topo = f"{self.tmp}/topology.yaml"
        with open(topo, "w") as f:
            yaml.safe_dump({
                "nodes": [{"name": "smoke-node", "zone": "zone-a", "ips": ["10.77.0.1", "127.0.0.1"]}],  # 127.0.0.1: the agent reaches the aggregator over loopback here
                "pods": [{"name": "smoke-pod", "namespace": "smoke", "node": "smoke-node", "ips": ["10.77.0.2"]}],
            }, f)

        # The aggregator: the rendered args, files moved, plus --topology.
        agg_cmd = [f"{self.bindir}/netscope-aggregator", *self.remap(agg_args, dspec, actr, "aggregator"), f"--topology={topo}"]
        # The Service port maps to the container port; in the namespace the
        # agent reaches the container port directly, so they must agree here.
        self.spawn("aggregator", ["ip", "netns", "exec", self.node_ns, *agg_cmd])
        curl_tls = []
        scheme = "http"
        if tls:
            scheme = "https"
            curl_tls = ["--cacert", f"{self.tmp}/ca.crt", "--resolve", f"{sni}:{listen_port}:127.0.0.1"]
            if mtls:
                curl_tls += ["--cert", f"{self.tmp}/client.crt", "--key", f"{self.tmp}/client.key"]
        agg_host = sni if tls else "127.0.0.1"
        cports = {p["name"]: p["containerPort"] for p in actr["ports"]}
        # The probes as the kubelet runs them: plain curl, no certificate,
        # to the port and path (and scheme) the chart renders.
        probes = {}
        for kind in ("readinessProbe", "livenessProbe"):
            g = actr[kind].get("httpGet")
            if not self.check(g is not None, f"the aggregator's {kind} is an httpGet probe"):
                return
            port = cports.get(g["port"], g["port"])
            probes[kind] = f"{g.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{g['path']}"
        self.check(probes["readinessProbe"].startswith(f"http://127.0.0.1:{http_port}/"),
                   f"the readiness probe is on the plain port {http_port}: {probes['readinessProbe']}")
        ok = self.wait("aggregator ready", lambda: self.curl(probes["readinessProbe"]) == "200", 20)
        if not self.check(ok, f"aggregator answers 200 to its readiness probe {probes['readinessProbe']}, "
                              "without a client certificate, with the rendered args"):
            print(self.log("aggregator")[-3000:], file=sys.stderr)
            return
        self.check(self.curl(probes["livenessProbe"]) == "200",
                   f"aggregator answers 200 to its liveness probe {probes['livenessProbe']}")
        # The main port still serves HTTP too, over TLS when on.
        self.check(self.curl(f"{scheme}://{agg_host}:{listen_port}/readyz", curl_tls) == "200",
                   f"the main port answers {scheme}://...:{listen_port}/readyz" + (" with a client certificate" if mtls else ""))
        if mtls:
            no_cert = [a for a in curl_tls if a not in ("--cert", "--key", f"{self.tmp}/client.crt", f"{self.tmp}/client.key")]
            code = self.curl(f"https://{agg_host}:{listen_port}/healthz", no_cert)
            self.check(code != "200", f"with mutual TLS the main port refuses a client without a certificate (got "
                                      f"{code or 'no answer'}), so probes and scrapers need the plain port")

        # The agent: rendered args and env, the rendered capabilities only.
        agent_cmd, env = self.container_cmd(aspec, gctr, "agent")
        agent = self.spawn("agent", agent_cmd, env=env)
        dport = gctr["ports"][0]["containerPort"]
        rpath = gctr["readinessProbe"]["httpGet"]["path"]
        lpath = gctr["livenessProbe"]["httpGet"]["path"]
        ok = self.wait("agent ready", lambda: self.curl(f"http://127.0.0.1:{dport}{rpath}") == "200", 20)
        if not self.check(ok, f"agent answers 200 on :{dport}{rpath} under the rendered capabilities"):
            print(self.log("agent")[-4000:], file=sys.stderr)
            return
        self.check(self.curl(f"http://127.0.0.1:{dport}{lpath}") == "200", f"agent answers 200 on :{dport}{lpath}")
        def attached():
            m = re.search(r"^netscope_agent_interfaces_attached (\d+)", self.fetch(f"http://127.0.0.1:{dport}/metrics"), re.M)
            return m is not None and int(m.group(1)) >= 1

        self.check(self.wait("attach", attached, 10), "the agent attached to the pod's link (netscope_agent_interfaces_attached >= 1)")
        mode = "tc" if "netscope" in self.tc_filters("ingress") else "tcx"
        print(f"  [{self.label}] attach mode used: {mode}")
        # Pod traffic, bounded: 20 pings at 0.1 s, each waiting at most 1 s.
        self.ping(20)
        # Where the chart's scrape annotations point (the plain port, no
        # certificate), else the main port.
        ann = self.dep["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in ann:
            metrics_url = f"{ann.get('prometheus.io/scheme', 'http')}://127.0.0.1:{ann['prometheus.io/port']}{ann.get('prometheus.io/path', '/metrics')}"
            metrics_tls = []
        else:
            metrics_url, metrics_tls = f"{scheme}://{agg_host}:{listen_port}/metrics", curl_tls
        print(f"  [{self.label}] reading metrics from {metrics_url}")

        def counted():
            m = re.search(r'^netscope_aggregator_reports_total\{[^}]*result="counted"[^}]*\} (\d+)', self.fetch(metrics_url, metrics_tls), re.M)
            return m is not None and int(m.group(1)) >= 1

        interval = next((a.split("=", 1)[1] for a in agent_args if a.startswith("--collection-interval=")), "10s")
        ok = self.wait("report", counted, 40)
        if not self.check(ok, f"the aggregator counted the agent's report (collection interval {interval})"):
            print(self.log("agent")[-4000:], file=sys.stderr)
            print(self.log("aggregator")[-2000:], file=sys.stderr)
        body = self.fetch(metrics_url, metrics_tls)
        self.check(re.search(r'^pod_network_traffic_bytes_total\{[^}]*src_pod="smoke-pod"', body, re.M) is not None,
                   "pod_network_traffic_bytes_total has the pod's traffic")
        if "--enable-flow-logs" in agg_args:
            self.check(self.wait("flow log", lambda: '"src_ip":"10.77.0.2"' in self.log("aggregator").replace(" ", ""), 10),
                       "a JSON flow log line for the pod's traffic is on the aggregator's stdout")

        grace = aspec.get("terminationGracePeriodSeconds", 30)
        ready = lambda: self.wait("agent ready", lambda: self.curl(f"http://127.0.0.1:{dport}{rpath}") == "200", 20) \
            and self.wait("attach", attached, 10)
        agent_log = "agent"
        if mode == "tc":
            # A killed agent's legacy TC filter stays on the link. The next
            # agent must take it over in place; it recognises it by the
            # program name in the filter dump (no CAP_SYS_ADMIN). Traffic
            # sent while no agent runs is counted by the pinned program.
            agent.kill()
            agent.wait()
            self.check("netscope" in self.tc_filters("ingress"),
                       "after SIGKILL the legacy TC filter is still on the link (the case to recover from)")
            self.ping(10)
            agent_log = "agent-restarted"
            agent = self.spawn(agent_log, agent_cmd, env=env)
            self.check(ready(), "a restarted agent takes over the stale filter and attaches again")

        # --- upgrade ------------------------------------------------------
        if self.upgrade_ds is None:
            agent = self.stop(agent, agent_log, grace)
            return
        uspec = self.upgrade_ds["spec"]["template"]["spec"]
        (uctr,) = uspec["containers"]
        self.check(uctr["image"] != gctr["image"], f"the upgrade rendering runs a new image ({gctr['image']} -> {uctr['image']})")
        self.check(self.stop(agent, agent_log, grace), "SIGTERM before the upgrade")
        self.check(self.attached_count(mode) >= 2,
                   f"after SIGTERM the programs stay attached on both directions of the pod's link ({mode}: {self.attached_desc(mode)})")
        pins = self.pins()
        self.check(len(pins) > 0, f"after SIGTERM the pins stay under the chart's pin root {self.pin_root()}: {len(pins)} entries")
        # Traffic while no agent runs (the image pull of a real upgrade).
        self.ping(20)
        up_cmd, up_env = self.container_cmd(uspec, uctr, "agent")
        agent_log = "agent-upgraded"
        agent = self.spawn(agent_log, up_cmd, env=up_env)
        self.check(ready(), "the upgraded agent becomes ready and attached")
        self.check(self.attached_count(mode) == 2,
                   f"after the upgrade exactly one netscope program per direction ({mode}: {self.attached_desc(mode)})")
        self.ping(20)
        want = self.nft_counters()
        got = {}

        def exact():
            got.update(self.counted_bytes(metrics_url, metrics_tls))
            return got == want

        secs = parse_secs(interval)
        ok = self.wait("exact", exact, 4 * secs + 15)
        self.check(ok, f"every byte between pod and node, before, during (no agent) and after the upgrade, counted "
                       f"exactly: netscope {got}, nftables {want}")
        if not ok:
            print(self.log(agent_log)[-3000:], file=sys.stderr)

        # --- uninstall ----------------------------------------------------
        # The pre-delete hook Job deletes the agent DaemonSet and waits for
        # its pods to end: SIGTERM.
        self.check(self.stop(agent, agent_log, grace), "SIGTERM at uninstall (the hook Job deletes the agent DaemonSet)")
        cleanup_ds = next((d for d in self.hooks if d["kind"] == "DaemonSet"), None)
        if not self.check(cleanup_ds is not None, "the chart renders an uninstall cleanup DaemonSet (pre-delete hook)"):
            return
        cspec = cleanup_ds["spec"]["template"]["spec"]
        (cctr,) = cspec["initContainers"]
        self.check(cctr["image"] == uctr["image"], "the cleanup runs the agent's image")
        for run in (1, 2):
            cmd, cenv = self.container_cmd(cspec, cctr, "agent")
            log = f"cleanup-{run}"
            p = self.spawn(log, cmd, env=cenv)
            try:
                rc = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = None
            if not self.check(rc == 0, f"cleanup run {run} ({' '.join(cctr['args'])}) exits 0 (rc {rc})"):
                print(self.log(log)[-3000:], file=sys.stderr)
        self.check(self.attached_count("tcx") == 0 and self.attached_count("tc") == 0,
                   f"after the uninstall nothing of netscope is attached to the pod's link (tcx: {self.attached_desc('tcx')}; "
                   f"tc: {self.attached_desc('tc')})")
        left = self.pins()
        self.check(not left, f"after the uninstall nothing is pinned under the chart's pin root {self.pin_root()}: {left[:5]}")
        journal = [f for d in self.host_dirs() for f in os.listdir(d)]
        self.check(not journal, f"after the uninstall the journal directory is empty: {journal[:5]}")

    # --- lifecycle helpers -----------------------------------------------------

    def container_cmd(self, spec, container, who):
        """The container's command line as the kubelet would run it here:
        its args (mounted paths moved) and env, under its capability set
        only, in the node's namespaces with its bpffs mount."""
        sc = container.get("securityContext", {})
        env = dict(os.environ)
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[e["name"]] = "smoke-node"
        if sc.get("privileged"):
            wrap = []
            print(f"  note [{self.label}] {container['name']} is privileged: run with every capability")
        else:
            caps = sc["capabilities"]["add"]
            wrap = ["setpriv", "--bounding-set=-all," + ",".join("+" + c.lower() for c in caps)]
            if sc.get("allowPrivilegeEscalation") is False:
                wrap.append("--no-new-privs")
            wrap.append("--")
            print(f"  [{self.label}] {container['name']} capabilities: {caps} (bounding set), uid {sc.get('runAsUser')}")
        args = [self.arg_fixes.get(a, a) for a in container["args"]]
        cmd = [f"{self.bindir}/netscope-agent", *self.remap(args, spec, container, who)]
        return self.in_node(spec, container, [*wrap, *cmd]), env

    def stop(self, agent, log, grace):
        """SIGTERM, as the kubelet sends it; True when the agent exits 0
        within the grace period."""
        t0 = time.time()
        agent.send_signal(signal.SIGTERM)
        try:
            rc = agent.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
            rc = None
        took = time.time() - t0
        ok = self.check(rc == 0, f"agent exits 0 on SIGTERM (rc {rc}, {took:.1f}s; grace {grace}s)")
        if not ok:
            print(self.log(log)[-3000:], file=sys.stderr)
        return ok

    def ping(self, n):
        # Bounded: n pings at 0.1 s, each waiting at most 1 s.
        sh("ip", "netns", "exec", self.pod_ns, "ping", "-q", "-c", str(n), "-i", "0.1", "-W", "1", "10.77.0.1", check=False)

    def tc_filters(self, direction):
        return sh("ip", "netns", "exec", self.node_ns, "tc", "filter", "show", "dev", "eni0smoke", direction,
                  check=False).stdout

    def tcx(self):
        out = sh("ip", "netns", "exec", self.node_ns, sys.executable, os.path.abspath(__file__), "--tcx-count", "eni0smoke")
        return json.loads(out.stdout)

    def attached_count(self, mode):
        if mode == "tcx":
            return sum(self.tcx().values())
        return sum("netscope" in self.tc_filters(d) for d in ("ingress", "egress"))

    def attached_desc(self, mode):
        if mode == "tcx":
            return ", ".join(f"{k} {v}" for k, v in self.tcx().items())
        return ", ".join(f"{d} {'netscope filter' if 'netscope' in self.tc_filters(d) else 'none'}" for d in ("ingress", "egress"))

    def pin_root(self):
        (ctr,) = self.ds["spec"]["template"]["spec"]["containers"]
        return next(a.split("=", 1)[1] for a in ctr["args"] if a.startswith("--pin-root="))

    def pins(self):
        root = self.pin_root()
        host = self.bpffs + root[len(BPFFS):]
        found = []
        for d, dirs, files in os.walk(host):
            found += [os.path.join(d, x)[len(self.bpffs):] for x in dirs + files]
        return found

    def host_dirs(self):
        return [os.path.join(self.tmp, d) for d in os.listdir(self.tmp) if d.startswith("host-")]

    def nft_counters(self):
        out = sh("ip", "netns", "exec", self.pod_ns, "nft", "-j", "list", "table", "inet", "netscope_smoke").stdout
        got = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            c = next(e["counter"] for e in rule["expr"] if "counter" in e)
            got[rule["chain"]] = c["bytes"]
        return {("smoke-pod", "smoke-node"): got["out"], ("smoke-node", "smoke-pod"): got["in"]}

    def counted_bytes(self, url, tls):
        got = {}
        for m in re.finditer(r'^pod_network_traffic_bytes_total\{([^}]*)\} (\S+)', self.fetch(url, tls), re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = (labels.get("src_pod"), labels.get("dst_pod"))
            got[key] = got.get(key, 0) + int(float(m.group(2)))
        return got

    def cleanup(self):
        for name, p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in (self.pod_ns, self.node_ns):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(f"/etc/netns/{self.node_ns}", ignore_errors=True)
        shutil.rmtree(self.bpffs, ignore_errors=True)
        if not self.failures:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"  [{self.label}] logs kept in {self.tmp}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir")
    ap.add_argument("--tcx-count", metavar="IFNAME", help=argparse.SUPPRESS)
    ap.add_argument("rendered", nargs="*", help="LABEL=FILE[,UPGRADE_FILE]: a rendering, and the same release "
                    "upgraded to a new build (then the upgrade and the uninstall are played too)")
    o = ap.parse_args()
    if o.tcx_count:
        print(json.dumps(tcx_count(o.tcx_count)))
        return 0
    if not o.bindir or not o.rendered:
        ap.error("--bindir and at least one rendering are required")
    if os.geteuid() != 0:
        print("chart-smoke: SKIPPED: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    # A SIGTERM (make interrupted, CI timeout) unwinds through the cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("chart-smoke: terminated"))
    sweep()
    total_pass = total_fail = 0
    for spec in o.rendered:
        label, _, paths = spec.partition("=")
        path, _, upgrade = paths.partition(",")
        print(f"  == smoke run of the '{label}' rendering" + (", upgrade and uninstall" if upgrade else ""))
        s = Smoke(path, o.bindir, label, upgrade or None)
        try:
            s.run()
        except Exception as e:  # a set-up step failed: report it as a failure
            s.check(False, f"smoke run crashed: {e!r}")
        finally:
            s.cleanup()
        total_pass += s.passed
        total_fail += len(s.failures)
    print(f"  chart-smoke: {total_pass} passed, {total_fail} failed")
    return 1 if total_fail else 0


if __name__ == "__main__":
    sys.exit(main())
