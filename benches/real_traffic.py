#!/usr/bin/env python3
"""Real-traffic overhead of netscope's data path (issue 20, item 1).

Two pods and a node, as network namespaces: each pod's eth0 is a veth whose
host side is in the node namespace, which routes between them, as a CNI
does. netscope runs where it runs on a node: on both directions of both
host-side veths. The traffic is real (iperf3 through the kernel's stack):

  tcp          one TCP stream, pod A -> pod B, throughput
  udp64        UDP, 64-byte IP packets, as fast as iperf3 sends, packets/s received
  udp1400      UDP, 1,400-byte IP packets, packets/s received
  udp64-flows  UDP, 64-byte IP packets over 1,024 5-tuples (8 iperf3 clients
               x 128 streams, each its own source port), packets/s received

under four data paths, interleaved round by round (the order rotates):

  none         nothing attached
  empty        an empty program (returns TC_ACT_UNSPEC) in legacy TC
               (clsact, direct action) on both directions: the cost of
               having any program there
  tcx          the real netscope-agent, --attach-mode tcx
  tc           the real netscope-agent, --attach-mode tc (legacy)

It prints medians over the rounds, each ratio to `none`, and the in-kernel
ns per program run from the kernel's BPF statistics (run_time_ns / run_cnt
of the programs attached to the two veths, via bpftool). Those statistics
need the global sysctl kernel.bpf_stats_enabled: it is set to 1 for the run
and restored to its previous value on exit, failure included. While it is
on, every BPF program on the machine pays for two clock reads per run.

The agent reports to an address where nothing listens (no aggregator): it
drains every second and buffers, so the numbers include the drain but not
the gRPC encoding.

Needs root, iperf3, bpftool, clang (for the empty program) and a built
netscope-agent. Network safety: addresses and routes only inside the three
namespaces it creates (netscope-test-bench-*); every traffic run is bounded
in time; namespaces and processes it started are removed on exit.
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "netscope-test-bench-"
MODES = ["none", "empty", "tcx", "tc"]
TESTS = ["tcp", "udp64", "udp1400", "udp64-flows"]
# IP packet sizes: 20 B IPv4 + 8 B UDP + payload.
UDP_PAYLOAD = {"udp64": 36, "udp1400": 1372, "udp64-flows": 36}
FLOW_CLIENTS, FLOW_STREAMS = 8, 128
BASE_PORT = 5301
EMPTY_C = r"""
/* The floor: a TC program that does nothing. */
__attribute__((section("tc"), used)) int netscope_bench_empty(void *skb)
{
    return -1; /* TC_ACT_UNSPEC */
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""
BPF_PROG_QUERY = 16
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
SYS_BPF = {"x86_64": 321, "aarch64": 280}


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


def tcx_prog_ids(ifname):
    """Ids of the programs attached with TCX to ifname, both directions (run
    inside the interface's network namespace)."""
    import socket

    ifindex = socket.if_nametoindex(ifname)
    libc = ctypes.CDLL(None, use_errno=True)
    ids = []
    for at in (BPF_TCX_INGRESS, BPF_TCX_EGRESS):
        buf = (ctypes.c_uint32 * 64)()
        # union bpf_attr, query: target_ifindex, attach_type, query_flags,
        # attach_flags, prog_ids (u64 pointer), prog_cnt (u32).
        attr = (ctypes.c_uint8 * 64)()
        ctypes.c_uint32.from_buffer(attr, 0).value = ifindex
        ctypes.c_uint32.from_buffer(attr, 4).value = at
        ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(buf)
        ctypes.c_uint32.from_buffer(attr, 24).value = 64
        if libc.syscall(SYS_BPF[os.uname().machine], BPF_PROG_QUERY, attr, 64) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"BPF_PROG_QUERY on {ifname}: {os.strerror(err)}")
        ids += list(buf[: ctypes.c_uint32.from_buffer(attr, 24).value])
    return ids


class Bench:
    def __init__(self, o):
        self.o = o
        tag = str(os.getpid())
        self.node, self.pa, self.pb = (f"{PREFIX}{n}-{tag}" for n in ("node", "a", "b"))
        self.host = {"a": "nsbha", "b": "nsbhb"}
        self.tmp = tempfile.mkdtemp(prefix="netscope-bench-")
        self.procs = []
        self.stats_was = None

    # --- set-up ------------------------------------------------------------------

    def setup(self):
        n = self.node
        for ns in (self.node, self.pa, self.pb):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for pod, ns, net in (("a", self.pa, 1), ("b", self.pb, 2)):
            h = self.host[pod]
            sh("ip", "-n", n, "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", n, "addr", "add", f"10.201.{net}.1/24", "dev", h)
            sh("ip", "-n", ns, "addr", "add", f"10.201.{net}.2/24", "dev", "eth0")
            sh("ip", "-n", n, "link", "set", h, "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"10.201.{net}.1")
        sh("ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        for i in range(FLOW_CLIENTS):
            self.spawn(f"iperf3-server-{i}", ["ip", "netns", "exec", self.pb, "iperf3", "-s", "-p", str(BASE_PORT + i)])
        # The empty program.
        with open(f"{self.tmp}/empty.c", "w") as f:
            f.write(EMPTY_C)
        sh("clang", "-O2", "-target", "bpf", "-c", f"{self.tmp}/empty.c", "-o", f"{self.tmp}/empty.o")
        deadline = time.time() + 10
        while time.time() < deadline:
            if all(self.port_open(BASE_PORT + i) for i in range(FLOW_CLIENTS)):
                return
            time.sleep(0.1)
        raise SystemExit("bench: the iperf3 servers did not start")

    def port_open(self, port):
        out = sh("ip", "netns", "exec", self.pb, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        return bool(out.strip())

    def spawn(self, name, cmd):
        log = open(f"{self.tmp}/{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # --- data paths --------------------------------------------------------------

    def attach(self, mode):
        """Attaches `mode`'s data path; returns what detach needs."""
        if mode == "none":
            return None
        if mode == "empty":
            for h in self.host.values():
                sh("ip", "netns", "exec", self.node, "tc", "qdisc", "replace", "dev", h, "clsact")
                for d in ("ingress", "egress"):
                    sh("ip", "netns", "exec", self.node, "tc", "filter", "add", "dev", h, d,
                       "bpf", "da", "obj", f"{self.tmp}/empty.o", "sec", "tc")
            return None
        agent = self.spawn(f"agent-{mode}", [
            "ip", "netns", "exec", self.node, self.o.agent,
            "--node-name=bench-node", "--server-endpoint=127.0.0.1:9", f"--attach-mode={mode}",
            "--interface-prefixes=nsbh", "--debug-addr=127.0.0.1:6061", "--collection-interval=1s",
            "--no-pin", f"--state-dir={self.tmp}/state",
        ])
        deadline = time.time() + 30
        while time.time() < deadline:
            body = sh("ip", "netns", "exec", self.node, "curl", "-s", "--max-time", "2",
                      "http://127.0.0.1:6061/metrics", check=False).stdout
            m = re.search(r"^netscope_agent_interfaces_attached (\d+)", body, re.M)
            if m and int(m.group(1)) >= 2 and len(self.prog_ids(mode)) == 4:
                return agent
            if agent.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"bench: the agent did not attach in {mode} mode; see {self.tmp}/agent-{mode}.log")

    def detach(self, mode, handle):
        if handle is not None:
            self.stop(handle)
        # Legacy TC leaves the clsact qdisc (the agent removes only its
        # filters): take it away so that `none` is really nothing.
        for h in self.host.values():
            sh("ip", "netns", "exec", self.node, "tc", "qdisc", "del", "dev", h, "clsact", check=False)
        left = self.prog_ids("tcx") + self.prog_ids("tc")
        if left:
            raise SystemExit(f"bench: programs {left} still attached after the {mode} run")

    def prog_ids(self, mode):
        ids = []
        for h in self.host.values():
            if mode == "tcx":
                out = sh("ip", "netns", "exec", self.node, sys.executable, os.path.abspath(__file__),
                         "--tcx-ids", h).stdout
                ids += json.loads(out)
            else:
                for d in ("ingress", "egress"):
                    out = sh("ip", "netns", "exec", self.node, "tc", "filter", "show", "dev", h, d, check=False).stdout
                    ids += [int(x) for x in re.findall(r"\bid (\d+)", out)]
        return ids

    def bpf_stats(self, ids):
        ns = cnt = 0
        for i in ids:
            info = json.loads(sh("bpftool", "prog", "show", "id", str(i), "--json").stdout)
            ns += info.get("run_time_ns", 0)
            cnt += info.get("run_cnt", 0)
        return ns, cnt

    # --- traffic -----------------------------------------------------------------

    def iperf(self, test):
        secs = str(self.o.seconds)
        client = ["ip", "netns", "exec", self.pa, "iperf3", "-c", "10.201.2.2", "-t", secs, "-J"]
        if test == "tcp":
            out = json.loads(sh(*client, "-p", str(BASE_PORT), timeout=self.o.seconds + 30).stdout)
            return out["end"]["sum_received"]["bits_per_second"] / 1e9
        udp = ["-u", "-b", "0", "-l", str(UDP_PAYLOAD[test])]
        if test != "udp64-flows":
            out = json.loads(sh(*client, "-p", str(BASE_PORT), *udp, timeout=self.o.seconds + 30).stdout)
            return received_pps(out) / 1e3
        ps = [subprocess.Popen([*client, "-p", str(BASE_PORT + i), *udp, "-P", str(FLOW_STREAMS)],
                               stdout=subprocess.PIPE, text=True) for i in range(FLOW_CLIENTS)]
        total = 0.0
        for p in ps:
            out, _ = p.communicate(timeout=self.o.seconds + 60)
            total += received_pps(json.loads(out))
        return total / 1e3

    # --- the run -----------------------------------------------------------------

    def run(self):
        self.stats_was = sh("sysctl", "-n", "kernel.bpf_stats_enabled").stdout.strip()
        sh("sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1")
        results = {m: {t: [] for t in TESTS} for m in MODES}
        nsrun = {m: {t: [] for t in TESTS} for m in MODES}
        for r in range(self.o.rounds):
            order = MODES[r % len(MODES):] + MODES[: r % len(MODES)]
            for mode in order:
                handle = self.attach(mode)
                ids = [] if mode == "none" else self.prog_ids("tcx" if mode == "tcx" else "tc")
                for test in TESTS:
                    before = self.bpf_stats(ids)
                    v = self.iperf(test)
                    after = self.bpf_stats(ids)
                    results[mode][test].append(v)
                    if ids and after[1] > before[1]:
                        nsrun[mode][test].append((after[0] - before[0]) / (after[1] - before[1]))
                self.detach(mode, handle)
                print(f"  round {r + 1}/{self.o.rounds} {mode:<5} " +
                      "  ".join(f"{t} {results[mode][t][-1]:.2f}" for t in TESTS), flush=True)
        return results, nsrun

    def cleanup(self):
        for p in self.procs:
            self.stop(p)
        if self.stats_was is not None:
            sh("sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={self.stats_was}", check=False)
        for ns in (self.pa, self.pb, self.node):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def received_pps(out):
    s = out["end"]["sum"]
    return (s["packets"] - s["lost_packets"]) / s["seconds"]


def report(results, nsrun, o):
    unit = {"tcp": "Gbit/s", "udp64": "kpps", "udp1400": "kpps", "udp64-flows": "kpps"}
    print(f"\n== real traffic through the host-side veths: median of {o.rounds} rounds of {o.seconds} s ==")
    print(f"{'test':<12} {'data path':<6} {'median':>10} {'unit':<7} {'vs none':>8} {'vs empty':>9} {'ns/run':>8}")
    for t in TESTS:
        base = statistics.median(results["none"][t])
        empty = statistics.median(results["empty"][t])
        for m in MODES:
            v = statistics.median(results[m][t])
            ns = f"{statistics.median(nsrun[m][t]):.0f}" if nsrun[m][t] else "-"
            print(f"{t:<12} {m:<6} {v:>10.2f} {unit[t]:<7} {v / base:>8.3f} {v / empty:>9.3f} {ns:>8}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", default="target/release/netscope-agent", help="the netscope-agent binary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3, help="length of each traffic run")
    ap.add_argument("--tcx-ids", metavar="IFNAME", help=argparse.SUPPRESS)
    o = ap.parse_args()
    if o.tcx_ids:
        print(json.dumps(tcx_prog_ids(o.tcx_ids)))
        return 0
    if os.geteuid() != 0:
        print("real_traffic: SKIPPED: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "bpftool", "clang", "tc", "curl", "ss"):
        if shutil.which(tool) is None:
            raise SystemExit(f"real_traffic: {tool} is needed (make deps)")
    if not os.access(o.agent, os.X_OK):
        raise SystemExit(f"real_traffic: no agent binary at {o.agent} (cargo build --release -p netscope-agent)")
    o.agent = os.path.abspath(o.agent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("real_traffic: terminated"))
    b = Bench(o)
    try:
        b.setup()
        results, nsrun = b.run()
    finally:
        b.cleanup()
    report(results, nsrun, o)
    return 0


if __name__ == "__main__":
    sys.exit(main())
