#!/usr/bin/env python3
"""Checks for charts/netscope and docker/, run by scripts/helm-test.sh.

Modes:
  helm_check.py [--k8s-version V] [--help-text BIN=FILE ...] [--known-flags F] RENDERED.yaml
      Validates every manifest against the Kubernetes schemas (strict) and
      asserts how the chart's pieces fit together (labels, ports, paths,
      flags, privileges).
  helm_check.py --write-known-flags F --help-text BIN=FILE ...
      Writes the flag list that is used when the binaries are not built.
  helm_check.py --dockerfiles AGENT.Dockerfile AGGREGATOR.Dockerfile
      Checks the Dockerfiles' structure.

Every failed assertion is printed; the exit status is 1 if any failed.
"""

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict

import yaml

AGENT = "netscope-agent"
AGGREGATOR = "netscope-aggregator"
AGENT_CAPS = {"BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"}
VALUES = {}  # the values file the manifests were rendered with ({} for the defaults)


class Checker:
    def __init__(self, label):
        self.label = label
        self.failures = []
        self.passed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  FAIL [{self.label}] {what}", file=sys.stderr)
        return cond

    def done(self):
        print(f"  [{self.label}] {self.passed} passed, {len(self.failures)} failed")
        return not self.failures


# --- flags -------------------------------------------------------------------

FLAG_RE = re.compile(r"^\s+(?:-(\w), )?(--[a-z0-9][a-z0-9-]*)")
ENV_RE = re.compile(r"\[env: ([A-Z0-9_]+)=")


def parse_help(text):
    """Flags (long and short) and environment variables named by a clap --help."""
    flags, envs = set(), set()
    for line in text.splitlines():
        m = FLAG_RE.match(line)
        if m:
            flags.add(m.group(2))
            if m.group(1):
                flags.add("-" + m.group(1))
        for e in ENV_RE.findall(line):
            envs.add(e)
    return flags, envs


def read_known_flags(path):
    known = defaultdict(lambda: (set(), set()))
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith("-"):
                known[parts[0]][0].add(parts[1])
            elif len(parts) == 3 and parts[1] == "env":
                known[parts[0]][1].add(parts[2])
            else:
                raise SystemExit(f"{path}:{n}: cannot parse {line!r}")
    return dict(known)


def write_known_flags(path, helps):
    lines = [
        "# Flags and environment variables of the netscope binaries, from their --help.",
        "# scripts/helm-test.sh checks the chart against the built binaries when",
        "# target/debug has them, and against this list otherwise. Regenerate with",
        "#   python3 scripts/helm_check.py --write-known-flags charts/netscope/ci/known-flags.txt \\",
        "#     --help-text netscope-agent=<(target/debug/netscope-agent --help) \\",
        "#     --help-text netscope-aggregator=<(target/debug/netscope-aggregator --help)",
    ]
    for binary in sorted(helps):
        flags, envs = helps[binary]
        lines += [f"{binary} {f}" for f in sorted(flags)]
        lines += [f"{binary} env {e}" for e in sorted(envs)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def load_flag_sources(help_texts, known_path):
    """The flags to check against: --help of the built binaries where given,
    the committed list for the others. Also compares the two."""
    known = read_known_flags(known_path) if known_path else {}
    out, ok = {}, True
    for binary in (AGENT, AGGREGATOR):
        if binary in help_texts:
            flags, envs = help_texts[binary]
            out[binary] = (flags, envs)
            print(f"  flags of {binary}: from the built binary's --help ({len(flags)} flags)")
            if binary in known:
                kf, ke = known[binary]
                gone = sorted((kf - flags) | {"env " + e for e in ke - envs})
                new = sorted((flags - kf) | {"env " + e for e in envs - ke})
                if gone:
                    print(f"  FAIL known-flags.txt lists {binary} flags the binary no longer has: {gone}; "
                          "regenerate it (see its header)", file=sys.stderr)
                    ok = False
                if new:
                    print(f"  note: {binary} has flags not in known-flags.txt: {new}; consider regenerating it")
        elif binary in known:
            out[binary] = known[binary]
            print(f"  flags of {binary}: from {os.path.relpath(known_path)} (binary not built)")
        else:
            raise SystemExit(f"no flag source for {binary}")
    return out, ok


# --- manifests ---------------------------------------------------------------

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def validate_schemas(docs, version, c):
    import kubernetes_validate

    for d in docs:
        kn = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            print(f"  schema: SKIP {kn}: {d['kind']} is a prometheus-operator CRD; kubernetes-validate "
                  f"has only the built-in Kubernetes schemas. Its fields are checked below instead.")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
            c.check(True, "")
            print(f"  schema: ok {kn} (Kubernetes {version}, strict)")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            c.check(False, f"{kn} is not valid Kubernetes {version}: {e.message} at {path}")
        except kubernetes_validate.SchemaNotFoundError as e:
            c.check(False, f"{kn}: no schema for {d.get('apiVersion')} {d.get('kind')} in Kubernetes {version} ({e})")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, c):
    found = by_kind(docs, kind)
    c.check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else None


def args_of(container):
    """--flag=value args as {flag: value}; bare flags map to True."""
    out = {}
    args = list(container.get("command", [])[1:]) + list(container.get("args", []))
    for a in args:
        if not a.startswith("-"):
            continue
        k, eq, v = a.partition("=")
        out[k] = v if eq else True
    return out


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def mount_for(container, pod_spec, file_path):
    """The volume whose mount directory holds file_path, and the file name."""
    d, name = os.path.split(file_path)
    for m in container.get("volumeMounts", []):
        if m["mountPath"].rstrip("/") == d:
            vol = next((v for v in pod_spec.get("volumes", []) if v["name"] == m["name"]), None)
            return m, vol, name
    return None, None, name


def check_flags(binary, container, sources, c):
    flags, envs = sources[binary]
    for a in list(container.get("args", [])) + list(container.get("command", [])[1:]):
        if a.startswith("-"):
            flag = a.split("=", 1)[0]
            c.check(flag in flags, f"{binary}: the chart passes {flag}, which `{binary} --help` does not list")
    for e in container.get("env", []):
        if e["name"] in ("RUST_LOG", "RUST_BACKTRACE"):
            continue
        c.check(e["name"] in envs, f"{binary}: the chart sets env {e['name']}, which `{binary} --help` does not read")


def check_probe(probe, path, port_name, c, what):
    """An httpGet probe of path on the named port, in plain HTTP."""
    if not c.check(probe is not None, f"{what}: no probe"):
        return
    g = probe.get("httpGet")
    if not c.check(g is not None, f"{what}: must be an httpGet probe, is {sorted(set(probe) & {'tcpSocket', 'exec', 'grpc'})}"):
        return
    c.check(g.get("path") == path, f"{what}: httpGet path {g.get('path')!r}, want {path}")
    c.check(g.get("port") == port_name, f"{what}: httpGet port {g.get('port')!r}, want {port_name}")
    c.check(g.get("scheme", "HTTP") == "HTTP", f"{what}: scheme {g.get('scheme')}, want HTTP (the plain port)")


PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def check_port_names(ports, what, c):
    """Kubernetes port names are IANA service names: at most 15 characters,
    lower-case letters, digits and '-', at least one letter; unique. The
    OpenAPI schemas do not say so, the API server does."""
    names = [p.get("name") for p in ports]
    for n in names:
        c.check(n is not None and len(n) <= 15 and PORT_NAME_RE.match(n) is not None and "--" not in n
                and re.search(r"[a-z]", n) is not None, f"{what}: port name {n!r} is not a valid IANA service name")
    c.check(len(set(names)) == len(names), f"{what}: duplicate port names {names}")


# The aggregator's container port names: gRPC (+ HTTP, TLS when on), and the
# plain HTTP port for probes and scrapers (--http-listen-addr).
AGG_GRPC, AGG_HTTP = "grpc", "http-metrics"


def check_chart(docs, sources, c):
    ds = by_kind(docs, "DaemonSet")
    dep = by_kind(docs, "Deployment")
    svc = [x for x in by_kind(docs, "Service") if not is_headless(x)]
    headless = [x for x in by_kind(docs, "Service") if is_headless(x)]
    c.check(len(ds) <= 1 and len(dep) <= 1 and len(svc) <= 1 and len(headless) <= 1,
            "at most one DaemonSet, Deployment, Service and headless Service")
    ds, dep, svc = (ds[0] if ds else None), (dep[0] if dep else None), (svc[0] if svc else None)
    headless = headless[0] if headless else None
    tls_on = False

    # Namespaced objects carry the release namespace.
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            c.check(d["metadata"].get("namespace") == "netscope-system",
                    f"{d['kind']}/{d['metadata']['name']}: namespace {d['metadata'].get('namespace')!r}")

    agg_args = {}
    if dep:
        spec = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        c.check(selector_matches(dep["spec"]["selector"]["matchLabels"], labels),
                "Deployment selector does not match its pod labels")
        (ctr,) = spec["containers"]
        agg_args = args_of(ctr)
        check_flags(AGGREGATOR, ctr, sources, c)
        listen = agg_args.get("--listen-addr", ":8080")
        check_port_names(ctr.get("ports", []), "aggregator container", c)
        cports = {p["name"]: p for p in ctr.get("ports", [])}
        c.check(set(cports) == {AGG_GRPC, AGG_HTTP},
                f"aggregator container ports {sorted(cports)}, want {sorted([AGG_GRPC, AGG_HTTP])}")
        gport, hport = cports.get(AGG_GRPC, {}), cports.get(AGG_HTTP, {})
        c.check(gport.get("containerPort") == port_of(listen),
                f"aggregator containerPort {AGG_GRPC} {gport.get('containerPort')} != --listen-addr {listen}")
        # The plain HTTP port: always on, whatever TLS says, and the one the
        # probes, annotations and ServiceMonitor use.
        http_listen = agg_args.get("--http-listen-addr")
        if c.check(isinstance(http_listen, str) and http_listen != "",
                   "aggregator: --http-listen-addr must always be passed (probes and scrapers use the plain port)"):
            c.check(hport.get("containerPort") == port_of(http_listen),
                    f"aggregator containerPort {AGG_HTTP} {hport.get('containerPort')} != --http-listen-addr {http_listen}")
            c.check(port_of(http_listen) != port_of(listen),
                    f"--http-listen-addr {http_listen} and --listen-addr {listen} must be different ports")
        tls_on = "--tls-cert" in agg_args
        check_probe(ctr.get("livenessProbe"), "/healthz", AGG_HTTP, c, "aggregator liveness")
        check_probe(ctr.get("readinessProbe"), "/readyz", AGG_HTTP, c, "aggregator readiness")
        # Non-root.
        psc, csc = spec.get("securityContext", {}), ctr.get("securityContext", {})
        c.check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "aggregator must run as non-root")
        c.check(csc.get("allowPrivilegeEscalation") is False, "aggregator: allowPrivilegeEscalation must be false")
        c.check("ALL" in csc.get("capabilities", {}).get("drop", []), "aggregator: drop ALL capabilities")
        # Prometheus annotations point at the plain HTTP port.
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") == "true":
            c.check(ann.get("prometheus.io/port") == str(hport.get("containerPort")),
                    f"aggregator prometheus.io/port {ann.get('prometheus.io/port')}, want the {AGG_HTTP} port "
                    f"{hport.get('containerPort')}")
            c.check(ann.get("prometheus.io/scheme", "http") == "http",
                    f"aggregator prometheus.io/scheme {ann.get('prometheus.io/scheme')}: the plain port is http")
            c.check(ann.get("prometheus.io/path") == "/metrics", "aggregator prometheus.io/path")
        # RBAC: the pod's ServiceAccount can get/list/watch what the resolver watches.
        sa_name = spec.get("serviceAccountName")
        sas = [s["metadata"]["name"] for s in by_kind(docs, "ServiceAccount")]
        external_rbac = by_kind(docs, "ClusterRole") == [] and VALUES.get("aggregator", {}).get("rbac", {}).get("create") is False
        if external_rbac:
            print(f"  note: rbac.create=false: ServiceAccount {sa_name!r} and its permissions are the user's")
        else:
            c.check(sa_name in sas, f"aggregator ServiceAccount {sa_name!r} is not rendered ({sas})")
        crb = None if external_rbac else one(docs, "ClusterRoleBinding", c)
        cr = None if external_rbac else one(docs, "ClusterRole", c)
        if crb and cr:
            c.check(crb["roleRef"]["name"] == cr["metadata"]["name"], "ClusterRoleBinding does not bind the ClusterRole")
            c.check({"kind": "ServiceAccount", "name": sa_name, "namespace": "netscope-system"} in crb["subjects"],
                    "ClusterRoleBinding subject is not the aggregator's ServiceAccount")
            granted = set()
            for r in cr["rules"]:
                for g in r["apiGroups"]:
                    for res in r["resources"]:
                        for v in r["verbs"]:
                            granted.add((g, res, v))
            for g, res in [("", "pods"), ("", "nodes"), ("", "services"), ("networking.k8s.io", "servicecidrs"), ("discovery.k8s.io", "endpointslices")]:
                for v in ("get", "list", "watch"):
                    c.check((g, res, v) in granted, f"ClusterRole lacks {v} on {g or 'core'}/{res}")
            c.check(not any(v in ("create", "update", "patch", "delete", "*") for _, _, v in granted),
                    "ClusterRole must be read-only")
        # Custom endpoints: a directory mount of the ConfigMap, no subPath.
        if "--custom-endpoints" in agg_args:
            path = agg_args["--custom-endpoints"]
            m, vol, fname = mount_for(ctr, spec, path)
            if c.check(vol is not None and "configMap" in vol, f"--custom-endpoints {path} is not in a ConfigMap mount"):
                c.check("subPath" not in m, "custom endpoints mounted with subPath: the kubelet would never update it")
                cm_name = vol["configMap"]["name"]
                cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name]
                if cms:
                    data = cms[0].get("data", {})
                    c.check(fname in data, f"ConfigMap {cm_name} has no key {fname}")
                    check_custom_endpoints(data.get(fname, ""), c)
                else:
                    print(f"  note: custom endpoints ConfigMap {cm_name} is not rendered (existingConfigMap)")
        if tls_on:
            for flag, key in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-client-ca", "ca.crt")]:
                if flag in agg_args:
                    m, vol, fname = mount_for(ctr, spec, agg_args[flag])
                    c.check(vol is not None and "secret" in vol, f"aggregator {flag} is not in a Secret mount")
                    c.check(fname == key, f"aggregator {flag} file {fname}, want {key}")
        if "--agent-selector" in agg_args and ds:
            sel = dict(kv.split("=", 1) for kv in agg_args["--agent-selector"].split(","))
            c.check(selector_matches(sel, ds["spec"]["template"]["metadata"]["labels"]),
                    f"--agent-selector {agg_args['--agent-selector']} does not select the agent pods")

    if svc and dep:
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        c.check(selector_matches(svc["spec"]["selector"], pod_labels), "Service selector does not select aggregator pods")
        sports = svc["spec"]["ports"]
        check_port_names(sports, "aggregator Service", c)
        nums = [(p["port"], p.get("protocol", "TCP")) for p in sports]
        c.check(len(set(nums)) == len(nums), f"aggregator Service: duplicate port numbers {nums}")
        cports = {p["name"]: p for p in dep["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
        # Each Service port (named like the container port it targets) reaches that container port.
        for want in (AGG_GRPC, AGG_HTTP):
            sp = next((p for p in sports if p["name"] == want), None)
            if c.check(sp is not None, f"aggregator Service has no port named {want}") and want in cports:
                cp = cports[want]
                c.check(sp.get("targetPort") in (cp["name"], cp["containerPort"]),
                        f"Service port {want} targets {sp.get('targetPort')!r}, not the container port {want}")

    if ds:
        spec = ds["spec"]["template"]["spec"]
        labels = ds["spec"]["template"]["metadata"]["labels"]
        c.check(selector_matches(ds["spec"]["selector"]["matchLabels"], labels), "DaemonSet selector does not match its pods")
        c.check(spec.get("hostNetwork") is True, "agent must use hostNetwork")
        c.check(spec.get("dnsPolicy") == "ClusterFirstWithHostNet",
                "agent on the host network needs dnsPolicy ClusterFirstWithHostNet to resolve the aggregator Service")
        c.check(spec.get("terminationGracePeriodSeconds", 30) >= 15,
                "agent terminationGracePeriodSeconds must leave room for the 5 s final flush")
        (ctr,) = spec["containers"]
        a = args_of(ctr)
        check_flags(AGENT, ctr, sources, c)
        env = {e["name"]: e for e in ctr.get("env", [])}
        c.check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
                "agent NODE_NAME must come from the downward API's spec.nodeName")
        sc = ctr.get("securityContext", {})
        if sc.get("privileged"):
            print("  note: agent runs privileged")
            c.check(sc.get("allowPrivilegeEscalation") is not False,
                    "agent: allowPrivilegeEscalation=false with privileged is refused by the API server")
        else:
            caps = sc.get("capabilities", {})
            c.check("ALL" in caps.get("drop", []), "agent: drop ALL capabilities first")
            c.check(AGENT_CAPS <= set(caps.get("add", [])), f"agent needs capabilities {sorted(AGENT_CAPS)}, has {caps.get('add')}")
            # The API server's rule (ValidateSecurityContext): no
            # allowPrivilegeEscalation=false with privileged or CAP_SYS_ADMIN.
            c.check(not (sc.get("allowPrivilegeEscalation") is False and "SYS_ADMIN" in caps.get("add", [])),
                    "agent: allowPrivilegeEscalation=false with CAP_SYS_ADMIN is refused by the API server")
            c.check(sc.get("runAsUser") == 0, "agent with capabilities must run as uid 0 (Kubernetes has no ambient capabilities)")
        (port,) = ctr["ports"]
        c.check(port["containerPort"] == port_of(a.get("--debug-addr", ":6060")), "agent containerPort != --debug-addr")
        check_probe(ctr.get("livenessProbe"), "/healthz", port["name"], c, "agent liveness")
        check_probe(ctr.get("readinessProbe"), "/readyz", port["name"], c, "agent readiness")
        ann = ds["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") == "true":
            c.check(ann.get("prometheus.io/port") == str(port["containerPort"]), "agent prometheus.io/port")
        mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
        if "/sys/fs/bpf" in mounts:
            vol = next(v for v in spec["volumes"] if v["name"] == mounts["/sys/fs/bpf"]["name"])
            c.check(vol.get("hostPath", {}).get("path") == "/sys/fs/bpf", "bpffs mount is not the host's /sys/fs/bpf")
        # Pinned state and the journal outlive the agent (docs/deploy.md,
        # "Upgrades and restarts"): both on the host.
        pin_root = a.get("--pin-root")
        if "--no-pin" in a:
            print("  note: agent --no-pin: restarts and upgrades leave a gap")
            c.check("/sys/fs/bpf" not in mounts and pin_root is None,
                    "agent --no-pin with the bpffs mounted or a --pin-root: the chart pins whenever it can")
        elif c.check(isinstance(pin_root, str) and pin_root.startswith("/sys/fs/bpf/"),
                     f"agent --pin-root {pin_root!r} must be under /sys/fs/bpf/"):
            c.check("/sys/fs/bpf" in mounts, "agent --pin-root needs the host's bpffs mounted at /sys/fs/bpf")
        state = a.get("--state-dir")
        if c.check(isinstance(state, str) and state.startswith("/"), f"agent --state-dir {state!r} must be an absolute path"):
            m = mounts.get(state)
            vol = next((v for v in spec.get("volumes", []) if m and v["name"] == m["name"]), None)
            c.check(vol is not None and vol.get("hostPath", {}).get("path") == state
                    and vol["hostPath"].get("type") == "DirectoryOrCreate",
                    f"agent --state-dir {state} must be a hostPath of the same path (DirectoryOrCreate): the journal "
                    f"must outlive the pod")
        # Never two agents on one node: they would drain the same pinned
        # maps and bind the same debug port.
        us = ds["spec"].get("updateStrategy", {})
        surge = us.get("rollingUpdate", {}).get("maxSurge", 0)
        c.check(str(surge) in ("0", "0%"), f"agent updateStrategy maxSurge {surge!r}: must be 0")
        c.check({"operator": "Exists"} in spec.get("tolerations", []),
                "agent must tolerate every taint (operator: Exists) to run on all nodes")
        c.check(spec.get("automountServiceAccountToken") is False, "agent needs no API token")
        # The endpoint is the aggregator Service; with several replicas the
        # headless one (every agent must see every replica's address).
        ep = a.get("--server-endpoint", "netscope-aggregator:8080")
        target = headless if multi_aggregator(docs) else svc
        if target:
            host, port_s = ep.rsplit(":", 1)
            want = f"{target['metadata']['name']}.{target['metadata']['namespace']}.svc.cluster.local"
            c.check(host == want, f"--server-endpoint host {host}, want the Service {want}")
            grpc_sp = next((p["port"] for p in target["spec"]["ports"] if p["name"] == AGG_GRPC), None)
            c.check(int(port_s) == grpc_sp, f"--server-endpoint port {port_s} != the Service's {AGG_GRPC} port {grpc_sp}")
        # TLS on one side only never works.
        c.check(("--tls-ca" in a) == tls_on, "TLS must be on for both the agent and the aggregator or for neither")
        c.check(("--tls-cert" in a) == ("--tls-client-ca" in agg_args), "mutual TLS must be on for both or neither")
        for flag, key in [("--tls-ca", "ca.crt"), ("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")]:
            if flag in a:
                m, vol, fname = mount_for(ctr, spec, a[flag])
                c.check(vol is not None and "secret" in vol, f"agent {flag} is not in a Secret mount")
                c.check(fname == key, f"agent {flag} file {fname}, want {key}")
        if "--service-cidrs" in a:
            cidrs = a["--service-cidrs"].split(",")
            c.check(len(cidrs) <= 8, "the agent takes at most 8 Service CIDRs")
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=True)
                except ValueError as e:
                    c.check(False, f"--service-cidrs {cidr}: {e}")
            c.check(agg_args.get("--service-cidrs") == a["--service-cidrs"] or not dep,
                    "agent and aggregator must get the same --service-cidrs")

    for sm in by_kind(docs, "ServiceMonitor"):
        c.check(svc is not None, "ServiceMonitor without the aggregator Service")
        if svc:
            c.check(selector_matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
                    "ServiceMonitor selector does not select the aggregator Service")
            names = {p["name"] for p in svc["spec"]["ports"]}
            tls_cfg = VALUES.get("aggregator", {}).get("serviceMonitor", {}).get("tlsConfig")
            for ep in sm["spec"]["endpoints"]:
                c.check(ep["port"] in names, f"ServiceMonitor port {ep['port']} is not a Service port name {names}")
                c.check(ep.get("path") == "/metrics", "ServiceMonitor path must be /metrics")
                if tls_on and tls_cfg:
                    # Opt-in: scraping the TLS port with the user's tlsConfig.
                    c.check(ep["port"] == AGG_GRPC and ep.get("scheme") == "https" and ep.get("tlsConfig") == tls_cfg,
                            f"ServiceMonitor with serviceMonitor.tlsConfig must scrape {AGG_GRPC} over https with it, "
                            f"scrapes {ep['port']} over {ep.get('scheme')}")
                else:
                    c.check(ep["port"] == AGG_HTTP and ep.get("scheme") == "http" and "tlsConfig" not in ep,
                            f"ServiceMonitor must scrape the plain port {AGG_HTTP} over http, scrapes {ep['port']} "
                            f"over {ep.get('scheme')}{' with a tlsConfig' if 'tlsConfig' in ep else ''}")
            c.check(svc["metadata"]["namespace"] in sm["spec"].get("namespaceSelector", {}).get("matchNames", []),
                    "ServiceMonitor namespaceSelector misses the release namespace")


def check_custom_endpoints(text, c):
    """The same rules the aggregator applies (netscope::resolve::custom)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        c.check(False, f"custom endpoints file is not YAML: {e}")
        return
    if not c.check(isinstance(doc, dict) and set(doc) == {"endpoints"}, "custom endpoints file must be {endpoints: [...]}"):
        return
    seen_ips, seen_cidrs = set(), set()
    for i, ep in enumerate(doc["endpoints"]):
        c.check(set(ep) <= {"name", "namespace", "zone", "region", "ips", "cidrs"}, f"endpoint {i}: unknown fields {set(ep)}")
        c.check(bool(ep.get("name")) and bool(ep.get("zone")), f"endpoint {i}: name and zone are required")
        c.check(bool(ep.get("ips")) or bool(ep.get("cidrs")), f"endpoint {i}: needs ips or cidrs")
        for ip in ep.get("ips", []):
            try:
                a = ipaddress.ip_address(ip)
                c.check(a not in seen_ips, f"endpoint {i}: {ip} claimed twice")
                seen_ips.add(a)
            except ValueError as e:
                c.check(False, f"endpoint {i}: {e}")
        for cidr in ep.get("cidrs", []):
            try:
                n = ipaddress.ip_network(cidr, strict=True)
                c.check(n not in seen_cidrs, f"endpoint {i}: {cidr} claimed twice")
                seen_cidrs.add(n)
            except ValueError as e:
                c.check(False, f"endpoint {i}: {e}")


# --- Dockerfiles -------------------------------------------------------------

def stages(path):
    from dockerfile_parse import DockerfileParser

    p = DockerfileParser(path=path)
    out, args = [], {}
    for ins in p.structure:
        if ins["instruction"] == "ARG" and not out:
            k, _, v = ins["value"].partition("=")
            args[k.strip()] = v.strip()
        if ins["instruction"] == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ins["value"])
            out.append({"from": base, "raw": ins["value"], "ins": []})
        elif out:
            out[-1]["ins"].append(ins)
        elif ins["instruction"] not in ("ARG", "COMMENT"):
            raise SystemExit(f"{path}: {ins['instruction']} before the first FROM")
    return p, out


def apt_packages(stage):
    pkgs = set()
    for ins in stage["ins"]:
        if ins["instruction"] == "RUN":
            for m in re.finditer(r"apt-get install ([^&;|]*)", ins["value"]):
                pkgs |= {w for w in m.group(1).replace("\\", " ").split() if not w.startswith("-")}
    return pkgs


def check_dockerfile(path, binary, c, repo):
    """The images: a pinned Rust toolchain stage, a build stage whose base is
    the BUILDER build arg (the toolchain by default, a local image without a
    registry) that builds with cargo --release --locked or takes a staged
    rootfs, and a FROM scratch runtime with the binary, the libraries ldd
    names (docker/rootfs.sh), OCI labels with version and revision."""
    p, st = stages(path)
    c.check(len(st) == 3, f"{path}: toolchain, build and runtime stages expected, found {len(st)}")
    if len(st) < 3:
        return
    tool, build, final = st[0], st[1], st[-1]
    c.check(re.match(r"^(docker\.io/library/)?rust:[0-9.]+(-slim)?-bookworm AS toolchain$", tool["from"]) is not None,
            f"{path}: the toolchain stage must be a pinned rust:<version>-bookworm image AS toolchain, is {tool['from']}")
    c.check(build["raw"] == "${BUILDER} AS build" and build["from"] == "toolchain AS build",
            f"{path}: the build stage must be FROM ${{BUILDER}} AS build, BUILDER defaulting to toolchain "
            f"(is {build['raw']}, i.e. {build['from']})")
    c.check(final["from"] == "scratch", f"{path}: the runtime must be FROM scratch (nothing but the binary and its libraries), is {final['from']}")
    bpk = apt_packages(tool)
    need_build = {"pkg-config"} | ({"clang", "libelf-dev", "zlib1g-dev", "make"} if binary == AGENT else set())
    c.check(need_build <= bpk, f"{path}: toolchain stage lacks {sorted(need_build - bpk)}")
    runs = " ".join(i["value"] for i in build["ins"] if i["instruction"] == "RUN")
    c.check(f"-p {binary}" in runs and "--locked" in runs and "--release" in runs,
            f"{path}: build must run cargo build --release --locked -p {binary}")
    c.check(f"docker/rootfs.sh target/release/{binary} /rootfs" in runs and "prebuilt/rootfs /rootfs" in runs,
            f"{path}: build must lay out /rootfs with docker/rootfs.sh, or take a staged prebuilt/rootfs")
    for s in st:
        for i in s["ins"]:
            if i["instruction"] == "RUN" and "apt-get install" in i["value"]:
                c.check("--no-install-recommends" in i["value"], f"{path}: apt-get install without --no-install-recommends")
                c.check("apt-get update" in i["value"], f"{path}: apt-get install without apt-get update in the same RUN")
                c.check("rm -rf /var/lib/apt/lists" in i["value"], f"{path}: apt lists not removed in the same RUN")
    c.check(os.access(os.path.join(repo, "docker/rootfs.sh"), os.X_OK), "docker/rootfs.sh is missing or not executable")
    # The Dockerfile's own ignore file lets through what the build uses.
    ignore = path + ".dockerignore"
    if c.check(os.path.exists(ignore), f"{path}: no {os.path.basename(ignore)} (the context would include target/)"):
        rules = [l.strip() for l in open(ignore) if l.strip() and not l.startswith("#")]
        c.check(rules[:1] == ["*"], f"{ignore}: should start by excluding everything")
        for src in ("Cargo.toml", "Cargo.lock", "netscope", "netscope-bpf", "bins", "docker/rootfs.sh"):
            c.check("!" + src in rules, f"{ignore}: {src} is not let through")
    copies = [i["value"] for i in final["ins"] if i["instruction"] == "COPY"]
    c.check(copies == ["--from=build /rootfs/ /"], f"{path}: the runtime must be exactly the build's /rootfs, copies {copies}")
    labels = " ".join(i["value"] for i in final["ins"] if i["instruction"] == "LABEL")
    for key in ("title", "source", "licenses", "version", "revision"):
        c.check(f"org.opencontainers.image.{key}=" in labels, f"{path}: no org.opencontainers.image.{key} label")
    c.check('image.version="${VERSION}"' in labels and 'image.revision="${REVISION}"' in labels,
            f"{path}: the version and revision labels must come from the VERSION and REVISION build args")
    ep = [i["value"] for i in final["ins"] if i["instruction"] == "ENTRYPOINT"]
    c.check(ep == [f'["/usr/local/bin/{binary}"]'], f"{path}: ENTRYPOINT must be exec form running /usr/local/bin/{binary}")
    user = [i["value"].strip() for i in final["ins"] if i["instruction"] == "USER"]
    if binary == AGGREGATOR:
        c.check(bool(user) and user[-1].split(":")[0] == "65532",
                f"{path}: aggregator must run as uid 65532 (the chart's runAsUser), USER is {user}")
    else:
        c.check(not user or user[-1].split(":")[0] in ("0", "root"),
                f"{path}: agent runs as root (its capabilities apply to uid 0 only)")
    print(f"  {path}: stages {[s['from'] for s in st]}")


# --- production pieces: strategy, ServiceAccounts, prometheus-operator, -----
# --- NetworkPolicy, dashboard ----------------------------------------------

ALERTS = {"NetscopeAgentMissing", "NetscopeAgentDown", "NetscopeAggregatorDown", "NetscopeFlowTableOverflow",
          "NetscopeReportsFailing", "NetscopeNATUnresolvedHigh", "NetscopeCrossZoneCostOverBudget"}


def pod_template(docs, kind):
    w = by_kind(docs, kind)
    return (w[0]["spec"]["template"], w[0]) if w else (None, None)


def is_headless(svc):
    return svc["spec"].get("clusterIP") == "None"


def multi_aggregator(docs):
    """More than one aggregator may run: replicas > 1 or an HPA."""
    dep = by_kind(docs, "Deployment")
    return bool(by_kind(docs, "HorizontalPodAutoscaler")) or bool(dep and dep[0]["spec"].get("replicas", 1) > 1)


def check_replicas(docs, dep, c):
    """Several aggregators: agents on the headless Service, a rolling update
    one pod at a time, a PDB, an HPA that targets the Deployment."""
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    strategy = dep["spec"].get("strategy", {})
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    headless = [x for x in by_kind(docs, "Service") if is_headless(x)]
    if not multi_aggregator(docs):
        # One aggregator behind a virtual IP: never two side by side.
        c.check(strategy.get("type") == "Recreate",
                f"aggregator strategy {strategy}: one replica must be Recreate (a rolling update runs two behind one address)")
        return
    ru = strategy.get("rollingUpdate", {})
    c.check(strategy.get("type") == "RollingUpdate" and ru.get("maxSurge") == 1 and ru.get("maxUnavailable") == 0,
            f"aggregator strategy {strategy}: several replicas roll one pod at a time (maxSurge 1, maxUnavailable 0)")
    if c.check(len(headless) == 1, "several aggregator replicas need the headless Service for the agents"):
        h = headless[0]
        c.check(selector_matches(h["spec"]["selector"], pod_labels), "headless Service does not select aggregator pods")
        c.check(h["spec"].get("publishNotReadyAddresses", False) is False,
                "headless Service must not publish not-ready pods (agents would move to a starting replica)")
        c.check([(p["name"], p.get("targetPort")) for p in h["spec"]["ports"]] == [(AGG_GRPC, AGG_GRPC)],
                f"headless Service ports {h['spec']['ports']}: only {AGG_GRPC}")
        for sm in by_kind(docs, "ServiceMonitor"):
            c.check(not selector_matches(sm["spec"]["selector"]["matchLabels"], h["metadata"]["labels"]),
                    "the ServiceMonitor also selects the headless Service: every replica would be scraped twice")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if VALUES.get("aggregator", {}).get("podDisruptionBudget", {}).get("enabled", True):
        if c.check(len(pdbs) == 1, "several aggregator replicas need a PodDisruptionBudget"):
            pdb = pdbs[0]["spec"]
            c.check(pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb,
                    f"aggregator PDB {pdb}: maxUnavailable 1")
            c.check(selector_matches(pdb["selector"]["matchLabels"], pod_labels), "PDB does not select aggregator pods")
    for hpa in hpas:
        spec = hpa["spec"]
        ref = spec["scaleTargetRef"]
        c.check((ref.get("apiVersion"), ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"]),
                f"HPA scales {ref}, not the aggregator Deployment")
        c.check("replicas" not in dep["spec"], "with an HPA the Deployment must not set replicas (every apply would reset it)")
        c.check(1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"], f"HPA min {spec.get('minReplicas')} max {spec['maxReplicas']}")
        cpu = [m for m in spec.get("metrics", []) if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
        c.check(len(cpu) == 1 and cpu[0]["resource"]["target"]["type"] == "Utilization",
                f"HPA metrics {spec.get('metrics')}: CPU utilisation")
        req = dep["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("requests", {})
        c.check("cpu" in req, "HPA on CPU utilisation without a CPU request on the aggregator")
    print(f"  replicas: {dep['spec'].get('replicas', 'HPA')}, strategy {strategy.get('type')}, "
          f"headless {[h['metadata']['name'] for h in headless]}, PDB {len(pdbs)}, HPA {len(hpas)}")


def check_production(docs, c, promtool="promtool"):
    ns = "netscope-system"
    dep_t, dep = pod_template(docs, "Deployment")
    ds_t, ds = pod_template(docs, "DaemonSet")
    svc = next((x for x in by_kind(docs, "Service") if not is_headless(x)), None)
    sas = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    pr_values = VALUES.get("prometheusRule", {})

    if dep:
        check_replicas(docs, dep, c)
    if ds:
        spec = ds_t["spec"]
        sa = spec.get("serviceAccountName")
        c.check(sa is not None and sa != "default" or not VALUES.get("agent", {}).get("serviceAccount", {}).get("create", True),
                f"agent serviceAccountName {sa!r}: the chart's own ServiceAccount by default")
        if VALUES.get("agent", {}).get("serviceAccount", {}).get("create", True):
            c.check(sa in sas, f"agent ServiceAccount {sa} is not rendered ({sorted(sas)})")
        (ctr,) = spec["containers"]
        a = args_of(ctr)
        host = a.get("--debug-addr", ":6060").rsplit(":", 1)[0].strip("[]")
        for probe in ("livenessProbe", "readinessProbe"):
            g = ctr.get(probe, {}).get("httpGet", {})
            if host:
                c.check(g.get("host") == host, f"agent {probe}: --debug-addr binds {host}, the probe asks {g.get('host')!r}")
            else:
                c.check("host" not in g, f"agent {probe}: host {g.get('host')!r} with --debug-addr on every address")
        # Overrides land in the container.
        want_sc = VALUES.get("agent", {}).get("securityContext", {})
        for k, v in want_sc.items():
            c.check(ctr.get("securityContext", {}).get(k) == v, f"agent securityContext.{k}: agent.securityContext not applied")
        vols = {v["name"] for v in spec.get("volumes", [])}
        for m in ctr.get("volumeMounts", []):
            c.check(m["name"] in vols, f"agent volumeMount {m['name']} has no volume")

    for pm in by_kind(docs, "PodMonitor"):
        if not c.check(ds is not None, "PodMonitor without the agent DaemonSet"):
            continue
        c.check(selector_matches(pm["spec"]["selector"]["matchLabels"], ds_t["metadata"]["labels"]),
                "PodMonitor selector does not select the agent pods")
        c.check(ns in pm["spec"].get("namespaceSelector", {}).get("matchNames", []),
                "PodMonitor namespaceSelector misses the release namespace")
        ports = {p["name"] for p in ds_t["spec"]["containers"][0].get("ports", [])}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            c.check(ep.get("port") in ports, f"PodMonitor port {ep.get('port')} is not an agent container port {ports}")
            c.check(ep.get("path") == "/metrics", "PodMonitor path must be /metrics")
        want = VALUES.get("agent", {}).get("podMonitor", {})
        for k in ("relabelings", "metricRelabelings"):
            if want.get(k):
                c.check(pm["spec"]["podMetricsEndpoints"][0].get(k) == want[k], f"PodMonitor {k} not applied")
        if want.get("sampleLimit"):
            c.check(pm["spec"].get("sampleLimit") == want["sampleLimit"], "PodMonitor sampleLimit not applied")
    for sm in by_kind(docs, "ServiceMonitor"):
        want = VALUES.get("aggregator", {}).get("serviceMonitor", {})
        for k in ("relabelings", "metricRelabelings"):
            if want.get(k):
                c.check(sm["spec"]["endpoints"][0].get(k) == want[k], f"ServiceMonitor {k} not applied")
        if want.get("sampleLimit"):
            c.check(sm["spec"].get("sampleLimit") == want["sampleLimit"], "ServiceMonitor sampleLimit not applied")

    for pr in by_kind(docs, "PrometheusRule"):
        rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        names = {r["alert"] for r in rules}
        c.check(names == ALERTS - set(pr_values.get("disabled", [])),
                f"PrometheusRule alerts {sorted(names)}, want {sorted(ALERTS - set(pr_values.get('disabled', [])))}")
        for r in rules:
            c.check(r.get("labels", {}).get("severity") in ("warning", "critical"), f"{r['alert']}: no severity")
            c.check(bool(r.get("annotations", {}).get("summary")), f"{r['alert']}: no summary")
        # The default selectors are the jobs the chart's monitors produce.
        pms, sms = by_kind(docs, "PodMonitor"), by_kind(docs, "ServiceMonitor")
        exprs = " ".join(r["expr"] for r in rules)
        if pms and not pr_values.get("agentSelector"):
            job = f'job="{ns}/{pms[0]["metadata"]["name"]}"'
            c.check(job in exprs, f"PrometheusRule: the agents' alerts do not select the PodMonitor's {job}")
        if sms and svc and not pr_values.get("aggregatorSelector"):
            job = f'job="{svc["metadata"]["name"]}"'
            c.check(job in exprs, f"PrometheusRule: the aggregator's alerts do not select the ServiceMonitor's {job}")
        # promtool, Prometheus' own parser and checker.
        exe = shutil.which(promtool)
        if c.check(exe is not None, "promtool is needed to check the PrometheusRule (apt-get install prometheus)"):
            import tempfile
            with tempfile.NamedTemporaryFile("w", suffix=".rules.yaml", delete=False) as f:
                yaml.safe_dump({"groups": pr["spec"]["groups"]}, f)
            r = subprocess.run([exe, "check", "rules", f.name], capture_output=True, text=True)
            os.unlink(f.name)
            c.check(r.returncode == 0, f"promtool check rules: {r.stdout.strip()} {r.stderr.strip()}")
            if r.returncode == 0:
                print(f"  promtool check rules: {len(rules)} rules ok")

    for np in by_kind(docs, "NetworkPolicy"):
        if not c.check(dep is not None, "NetworkPolicy without the aggregator"):
            continue
        c.check(selector_matches(np["spec"]["podSelector"]["matchLabels"], dep_t["metadata"]["labels"]),
                "NetworkPolicy does not select the aggregator pods")
        c.check(np["spec"].get("policyTypes") == ["Ingress"], "NetworkPolicy: Ingress only")
        cports = {p["name"] for p in dep_t["spec"]["containers"][0].get("ports", [])}
        grpc_rules, http_rules = [], []
        for rule in np["spec"].get("ingress", []):
            pnames = {p.get("port") for p in rule.get("ports", [])}
            c.check(pnames <= cports, f"NetworkPolicy ports {pnames} are not aggregator container ports {cports}")
            c.check(bool(rule.get("from")), f"NetworkPolicy rule for {pnames} admits everyone")
            if AGG_GRPC in pnames:
                grpc_rules.append(rule)
            if AGG_HTTP in pnames:
                http_rules.append(rule)
        if ds:
            c.check(any(selector_matches(f.get("podSelector", {}).get("matchLabels", {"x": "y"}), ds_t["metadata"]["labels"])
                        for r in grpc_rules for f in r["from"]),
                    "NetworkPolicy: the gRPC port does not admit the agent pods")
            c.check(any("ipBlock" in f for r in grpc_rules for f in r["from"]),
                    "NetworkPolicy: the gRPC port admits no node addresses (the agents are on the host network)")
        for r in grpc_rules:
            for f in r["from"]:
                if "ipBlock" in f:
                    net = ipaddress.ip_network(f["ipBlock"]["cidr"], strict=True)
                    for e in f["ipBlock"].get("except", []):
                        c.check(ipaddress.ip_network(e, strict=True).subnet_of(net),
                                f"NetworkPolicy except {e} is not inside {net}")
        c.check(bool(http_rules), "NetworkPolicy: nobody may scrape the plain HTTP port")

    for cm in by_kind(docs, "ConfigMap"):
        if not cm["metadata"]["name"].endswith("-dashboard"):
            continue
        d = VALUES.get("dashboard", {})
        label, value = d.get("label", "grafana_dashboard"), d.get("labelValue", "1")
        c.check(cm["metadata"]["labels"].get(label) == value, f"dashboard ConfigMap lacks the sidecar label {label}={value}")
        import json
        (key,) = cm["data"]
        try:
            dash = json.loads(cm["data"][key])
            c.check(len(dash.get("panels", [])) > 0, "dashboard ConfigMap: no panels")
        except ValueError as e:
            c.check(False, f"dashboard ConfigMap {key} is not JSON: {e}")


# --- main --------------------------------------------------------------------

def is_hook(d):
    return "helm.sh/hook" in d.get("metadata", {}).get("annotations", {})


def check_uninstall_hooks(hooks, docs, sources, c):
    """The uninstall cleanup (docs/deploy.md, "Uninstalling"): pre-delete
    hooks that stop every agent, then run `netscope-agent --cleanup` on
    every node the agents ran on, and a Job Helm waits on until every node
    has done so."""
    ds = next(iter(by_kind(docs, "DaemonSet")), None)
    enabled = VALUES.get("agent", {}).get("cleanupOnUninstall", {}).get("enabled", True)
    if ds is None or not enabled:
        c.check(not hooks, f"hooks rendered without the agent or with cleanupOnUninstall off: "
                           f"{[d['kind'] + '/' + d['metadata']['name'] for d in hooks]}")
        return
    weight = lambda d: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    for d in hooks:
        ann = d["metadata"]["annotations"]
        kn = f"{d['kind']}/{d['metadata']['name']}"
        c.check(ann["helm.sh/hook"] == "pre-delete", f"{kn}: hook {ann['helm.sh/hook']!r}, want pre-delete")
        c.check("before-hook-creation" in ann.get("helm.sh/hook-delete-policy", ""),
                f"{kn}: a retried uninstall must replace it (hook-delete-policy before-hook-creation)")
    jobs = by_kind(hooks, "Job")
    cds = by_kind(hooks, "DaemonSet")
    if not (c.check(len(cds) == 1, f"one cleanup DaemonSet hook, found {len(cds)}")
            and c.check(len(jobs) == 2, f"two hook Jobs (stop the agents, wait for the cleanup), found {len(jobs)}")):
        return
    (cds,) = cds
    agent = ds["metadata"]["name"]
    kargs = lambda j: j["spec"]["template"]["spec"]["containers"][0].get("args", [])
    stop = next((j for j in jobs if kargs(j)[:3] == ["delete", "daemonset", agent]), None)
    wait = next((j for j in jobs if kargs(j)[:3] == ["rollout", "status", f"daemonset/{cds['metadata']['name']}"]), None)
    if not (c.check(stop is not None, f"a hook Job deletes the agent DaemonSet {agent}: {[kargs(j) for j in jobs]}")
            and c.check(wait is not None, f"a hook Job waits for the rollout of the cleanup DaemonSet "
                                          f"{cds['metadata']['name']}: {[kargs(j) for j in jobs]}")):
        return
    sa = kargs(stop)
    c.check("--cascade=foreground" in sa and "--wait=true" in sa,
            f"the stop Job must wait until the agent pods are gone (--cascade=foreground --wait=true): {sa}")
    c.check(any(a.startswith("--timeout=") for a in sa) and any(a.startswith("--timeout=") for a in kargs(wait)),
            "both hook Jobs bound their wait (--timeout)")
    # Order: RBAC, stop the agents, clean every node, wait for it.
    rbac = [d for d in hooks if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    c.check(all(weight(d) < weight(stop) for d in rbac) and weight(stop) < weight(cds) < weight(wait),
            f"hook order must be RBAC < stop agents < cleanup DaemonSet < wait: weights "
            f"{[(d['kind'], weight(d)) for d in rbac]}, stop {weight(stop)}, cleanup {weight(cds)}, wait {weight(wait)}")
    # The Jobs may do exactly that.
    job_sa = stop["spec"]["template"]["spec"].get("serviceAccountName")
    c.check(wait["spec"]["template"]["spec"].get("serviceAccountName") == job_sa, "both Jobs run as the hook ServiceAccount")
    c.check(any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == job_sa for d in rbac),
            f"the hook ServiceAccount {job_sa!r} is a hook itself (created first)")
    granted = set()
    for r in (d for d in rbac if d["kind"] == "Role"):
        for rule in r["rules"]:
            for res in rule["resources"]:
                for v in rule["verbs"]:
                    names = rule.get("resourceNames") or ["*"]
                    for n in names:
                        granted.add((tuple(rule["apiGroups"]), res, v, n))
    c.check((("apps",), "daemonsets", "delete", agent) in granted,
            f"the hook Role may delete the agent DaemonSet {agent}")
    c.check(not any(v == "delete" and n != agent for _, _, v, n in granted),
            "the hook Role may delete nothing but the agent DaemonSet")
    for v in ("get", "list", "watch"):
        c.check((("apps",), "daemonsets", v, "*") in granted, f"the hook Role lacks {v} on daemonsets")
    rbs = [d for d in rbac if d["kind"] == "RoleBinding"]
    c.check(any({"kind": "ServiceAccount", "name": job_sa, "namespace": "netscope-system"} in rb["subjects"] for rb in rbs),
            "a hook RoleBinding binds the hook Role to the Jobs' ServiceAccount")
    for j in jobs:
        jsc = j["spec"]["template"]["spec"].get("securityContext", {})
        c.check(jsc.get("runAsNonRoot") is True, f"Job/{j['metadata']['name']} runs as non-root")
        c.check(j["spec"]["template"]["spec"].get("restartPolicy") in ("Never", "OnFailure"), "Job restartPolicy")
    # The cleanup DaemonSet: every node the agents run on, with the agent's
    # image, capabilities, host mounts, pin root and state directory.
    aspec, cspec = ds["spec"]["template"]["spec"], cds["spec"]["template"]["spec"]
    (actr,) = aspec["containers"]
    inits = cspec.get("initContainers", [])
    if not c.check(len(inits) == 1, "the cleanup DaemonSet has one init container (the cleanup)"):
        return
    (ictr,) = inits
    ia, aa = args_of(ictr), args_of(actr)
    check_flags(AGENT, ictr, sources, c)
    c.check(ia.get("--cleanup") is True, f"the cleanup init container runs --cleanup: {ictr.get('args')}")
    for flag in ("--pin-root", "--no-pin", "--state-dir"):
        c.check(ia.get(flag) == aa.get(flag), f"cleanup {flag} {ia.get(flag)!r} != the agent's {aa.get(flag)!r}")
    c.check(ictr["image"] == actr["image"], "the cleanup runs the agent's image")
    c.check(ictr.get("securityContext") == actr.get("securityContext"),
            "the cleanup runs with the agent's securityContext (capabilities)")
    c.check(cspec.get("hostNetwork") is True, "the cleanup is on the host network (the node's interfaces)")
    for key in ("nodeSelector", "tolerations", "affinity"):
        c.check(cspec.get(key) == aspec.get(key), f"the cleanup's {key} differs from the agent's: it must reach every agent node")
    amounts = {m["mountPath"]: m["name"] for m in actr.get("volumeMounts", [])}
    imounts = {m["mountPath"]: m["name"] for m in ictr.get("volumeMounts", [])}
    avols = {v["name"]: v for v in aspec.get("volumes", [])}
    cvols = {v["name"]: v for v in cspec.get("volumes", [])}
    for path in ("/sys/fs/bpf", aa.get("--state-dir")):
        if path in amounts:
            c.check(path in imounts and cvols.get(imounts[path], {}).get("hostPath") == avols[amounts[path]].get("hostPath"),
                    f"the cleanup mounts the agent's hostPath at {path}")
    # Its pods must not count as agents for the aggregator.
    labels = cds["spec"]["template"]["metadata"]["labels"]
    agent_sel = ds["spec"]["selector"]["matchLabels"]
    c.check(not selector_matches(agent_sel, labels), "cleanup pods carry the agent's selector labels")
    c.check(selector_matches(cds["spec"]["selector"]["matchLabels"], labels), "cleanup DaemonSet selector matches its pods")
    c.check(len(cspec.get("containers", [])) == 1, "the cleanup DaemonSet has one main container (keeps the pod Ready)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered", nargs="?")
    ap.add_argument("--k8s-version", default="1.34.0")
    ap.add_argument("--values-name", default="?")
    ap.add_argument("--values-file")
    ap.add_argument("--help-text", action="append", default=[], metavar="BIN=FILE")
    ap.add_argument("--known-flags")
    ap.add_argument("--write-known-flags")
    ap.add_argument("--dockerfiles", nargs=2, metavar=("AGENT", "AGGREGATOR"))
    o = ap.parse_args()

    helps = {}
    for h in o.help_text:
        b, _, f = h.partition("=")
        with open(f) as fh:
            helps[b] = parse_help(fh.read())
        if not helps[b][0]:
            raise SystemExit(f"no flags found in the help text of {b} ({f})")

    if o.write_known_flags:
        write_known_flags(o.write_known_flags, helps)
        print(f"wrote {o.write_known_flags}")
        return 0

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if o.dockerfiles:
        c = Checker("dockerfiles")
        check_dockerfile(o.dockerfiles[0], AGENT, c, repo)
        check_dockerfile(o.dockerfiles[1], AGGREGATOR, c, repo)
        return 0 if c.done() else 1

    c = Checker(o.values_name)
    if o.values_file:
        with open(o.values_file) as f:
            VALUES.update(yaml.safe_load(f) or {})
    sources, flags_ok = load_flag_sources(helps, o.known_flags)
    c.check(flags_ok, "the flag list is stale")
    docs = load_docs(o.rendered)
    c.check(len(docs) > 0, "nothing rendered")
    print(f"  rendered: {', '.join(d['kind'] + '/' + d['metadata']['name'] for d in docs)}")
    validate_schemas(docs, o.k8s_version, c)
    hooks = [d for d in docs if is_hook(d)]
    docs = [d for d in docs if not is_hook(d)]
    check_chart(docs, sources, c)
    check_production(docs, c)
    check_uninstall_hooks(hooks, docs, sources, c)
    return 0 if c.done() else 1


if __name__ == "__main__":
    sys.exit(main())
