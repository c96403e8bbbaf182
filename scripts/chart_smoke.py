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

Needs root, iproute2, openssl, curl and the built binaries. Network safety:
addresses and routes only inside the two namespaces it creates; traffic is
a bounded ping between them; both namespaces and the hosts file are removed
on exit, and stale ones (netscope-test-helm-*) are swept at start.
"""

import argparse
import os
import re
import shutil
import signal
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


class Smoke:
    def __init__(self, rendered, bindir, label):
        self.label = label
        self.bindir = bindir
        docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
        self.ds = next(d for d in docs if d["kind"] == "DaemonSet")
        self.dep = next(d for d in docs if d["kind"] == "Deployment")
        self.svc = next(d for d in docs if d["kind"] == "Service")
        self.cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        tag = f"{os.getpid()}-{label}"[:40]
        self.node_ns = f"{PREFIX}node-{tag}"
        self.pod_ns = f"{PREFIX}pod-{tag}"
        self.tmp = tempfile.mkdtemp(prefix="netscope-helm-smoke-")
        self.procs = []
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
            out.append(a)
        return out

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
            agent_args = [a.replace(f"--server-endpoint={endpoint}", f"--server-endpoint={host}:{listen_port}") for a in agent_args]
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
        sc = gctr.get("securityContext", {})
        env = dict(os.environ)
        for e in gctr.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[e["name"]] = "smoke-node"
        if sc.get("privileged"):
            wrap = []
            print(f"  note [{self.label}] agent is privileged: run with every capability")
        else:
            caps = sc["capabilities"]["add"]
            wrap = ["setpriv", "--bounding-set=-all," + ",".join("+" + c.lower() for c in caps)]
            if sc.get("allowPrivilegeEscalation") is False:
                wrap.append("--no-new-privs")
            wrap.append("--")
            print(f"  [{self.label}] agent capabilities: {caps} (bounding set), uid {sc.get('runAsUser')}")
        agent_cmd = [f"{self.bindir}/netscope-agent", *self.remap(agent_args, aspec, gctr, "agent")]
        agent = self.spawn("agent", ["ip", "netns", "exec", self.node_ns, *wrap, *agent_cmd], env=env)
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
        mode = re.search(r"iface=eni0smoke .*mode=(\w+)", self.log("agent"))
        print(f"  [{self.label}] attach mode used: {mode.group(1) if mode else '?'}")
        # Pod traffic, bounded: 20 pings at 0.1 s, each waiting at most 1 s.
        sh("ip", "netns", "exec", self.pod_ns, "ping", "-c", "20", "-i", "0.1", "-W", "1", "10.77.0.1", check=False)
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

        agent_log = "agent"
        tc_filters = lambda: sh("ip", "netns", "exec", self.node_ns, "tc", "filter", "show", "dev", "eni0smoke", "ingress",
                                check=False).stdout
        if mode and mode.group(1) == "tc":
            # Legacy TC filters outlive a killed agent (TCX links do not).
            # The next agent must take its stale filter over; it recognises
            # it by the program name in the filter dump (no CAP_SYS_ADMIN).
            agent.kill()
            agent.wait()
            self.check("netscope" in tc_filters(), "after SIGKILL the legacy TC filter is still on the link (the case to recover from)")
            agent_log = "agent-restarted"
            agent = self.spawn(agent_log, ["ip", "netns", "exec", self.node_ns, *wrap, *agent_cmd], env=env)
            ok = self.wait("agent ready", lambda: self.curl(f"http://127.0.0.1:{dport}{rpath}") == "200", 20)
            self.check(ok and self.wait("attach", attached, 10),
                       "a restarted agent takes over the stale filter and attaches again")
        # SIGTERM: detach, final drain and report, exit 0, within the grace period.
        grace = aspec.get("terminationGracePeriodSeconds", 30)
        t0 = time.time()
        agent.send_signal(signal.SIGTERM)
        try:
            rc = agent.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.time() - t0
        self.check(rc == 0, f"agent exits 0 on SIGTERM (rc {rc}, {took:.1f}s; grace {grace}s)")
        if rc != 0:
            print(self.log(agent_log)[-3000:], file=sys.stderr)
        self.check("netscope" not in tc_filters(), "no netscope tc filter is left on the pod's link after shutdown")

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
        if not self.failures:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"  [{self.label}] logs kept in {self.tmp}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("rendered", nargs="+", help="LABEL=FILE")
    o = ap.parse_args()
    if os.geteuid() != 0:
        print("chart-smoke: SKIPPED: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    # A SIGTERM (make interrupted, CI timeout) unwinds through the cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("chart-smoke: terminated"))
    sweep()
    total_pass = total_fail = 0
    for spec in o.rendered:
        label, _, path = spec.partition("=")
        print(f"  == smoke run of the '{label}' rendering")
        s = Smoke(path, o.bindir, label)
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
