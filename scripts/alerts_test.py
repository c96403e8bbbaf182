#!/usr/bin/env python3
"""Tests the chart's PrometheusRule (charts/netscope/templates/prometheusrule.yaml)
with Prometheus itself.

  alerts_test.py --helm HELM --promtool-only
      Renders the rules with the chart's defaults, checks them with
      `promtool check rules`, and runs promtool's rule unit tests: every
      alert stays silent on a healthy cluster's series and fires, with the
      labels it should carry, once its condition held for its `for`.
  alerts_test.py --helm HELM
      The same, then a live run: a real Prometheus (loopback only) scrapes a
      target this script serves, evaluating the rendered rules every second.
      The target first says all is well (no alert may fire), then drives the
      conditions of NetscopeFlowTableOverflow (the agent's overflow counter
      grows), NetscopeAgentMissing (kube-state-metrics' DaemonSet says one
      node has no Ready agent) and NetscopeReportsFailing; each must show as
      ALERTS{alertstate="firing"} within 60 s. Prometheus is stopped and its
      data removed, also on failure.
"""

import argparse
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts/netscope")
NS = "netscope-system"
AGENT_JOB = f"{NS}/netscope-agent"  # the PodMonitor's job
AGG_JOB = "netscope-aggregator"  # the ServiceMonitor's job (the Service)
DS = f'daemonset="netscope-agent",namespace="{NS}"'


def render(helm, extra=()):
    out = subprocess.run(
        [helm, "template", "netscope", CHART, "--namespace", NS, "--set", "prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml", *extra],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAIL: helm template: {out.stderr}")
    return yaml.safe_load(out.stdout)["spec"]["groups"]


def promtool(*args):
    exe = shutil.which("promtool")
    if not exe:
        sys.exit("FAIL: promtool is needed (apt-get install prometheus, or make deps)")
    return subprocess.run([exe, *args], capture_output=True, text=True)


# Series of a cluster that is healthy for the first 10 minutes, then breaks
# in every way the alerts watch for. One sample a minute.
SERIES = [
    (f"kube_daemonset_status_desired_number_scheduled{{{DS}}}", "3x60"),
    (f"kube_daemonset_status_number_ready{{{DS}}}", "3x10 2x50"),
    (f'up{{job="{AGENT_JOB}",instance="10.0.1.1:6060"}}', "1x10 0x50"),
    (f'up{{job="{AGENT_JOB}",instance="10.0.1.2:6060"}}', "1x60"),
    (f'up{{job="{AGG_JOB}",instance="10.244.0.7:9090"}}', "1x10 0x50"),
    (f'netscope_agent_overflow_bytes_total{{job="{AGENT_JOB}",instance="10.0.1.2:6060"}}', "0x10 0+5000x50"),
    (f'netscope_agent_reports_failed_total{{job="{AGENT_JOB}",instance="10.0.1.2:6060"}}', "0x10 0+3x50"),
    (f'netscope_agent_reports_rejected_total{{job="{AGENT_JOB}",instance="10.0.1.2:6060"}}', "0x60"),
    (f'netscope_agent_nat_resolved_total{{job="{AGENT_JOB}",instance="10.0.1.2:6060"}}', "0+100x60"),
    (f'netscope_agent_nat_unresolved_total{{job="{AGENT_JOB}",instance="10.0.1.2:6060"}}', "0+1x10 10+50x50"),
    # $14.4/day, then $1440/day (the default budget is $100/day).
    (f'netscope_cross_zone_cost_microdollars_total{{job="{AGG_JOB}",src_zone="a",dst_zone="b",src_region="r",dst_region="r",side="sending"}}',
     "0+10000x10 100000+1000000x50"),
]
# Each alert's labels once it fires (at 55m: every `for` has passed).
FIRING = {
    "NetscopeAgentMissing": [{"namespace": NS, "daemonset": "netscope-agent", "severity": "warning"}],
    "NetscopeAgentDown": [{"job": AGENT_JOB, "instance": "10.0.1.1:6060", "severity": "warning"}],
    "NetscopeAggregatorDown": [{"job": AGG_JOB, "instance": "10.244.0.7:9090", "severity": "critical"}],
    "NetscopeFlowTableOverflow": [{"instance": "10.0.1.2:6060", "severity": "warning"}],
    "NetscopeReportsFailing": [{"instance": "10.0.1.2:6060", "severity": "warning"}],
    "NetscopeNATUnresolvedHigh": [{"instance": "10.0.1.2:6060", "severity": "warning"}],
    "NetscopeCrossZoneCostOverBudget": [{"severity": "warning"}],
}


def unit_tests(helm, work):
    groups = render(helm)
    names = {r["alert"] for g in groups for r in g["rules"]}
    if names != set(FIRING):
        print(f"FAIL: the rendered alerts {sorted(names)} are not the tested {sorted(FIRING)}", file=sys.stderr)
        return False
    rules = os.path.join(work, "rules.yaml")
    with open(rules, "w") as f:
        yaml.safe_dump({"groups": groups}, f)
    r = promtool("check", "rules", rules)
    print(f"  promtool check rules: {r.stdout.strip()}")
    if r.returncode != 0:
        print(f"FAIL: promtool check rules: {r.stderr}", file=sys.stderr)
        return False
    # Unit tests compare labels only: the annotations' templates were
    # checked above; their text is for people.
    bare = [{"name": g["name"], "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups]
    bare_rules = os.path.join(work, "rules-bare.yaml")
    with open(bare_rules, "w") as f:
        yaml.safe_dump({"groups": bare}, f)
    tests = {
        "rule_files": [bare_rules],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in SERIES],
            "alert_rule_test":
                [{"eval_time": "9m", "alertname": a, "exp_alerts": []} for a in FIRING]
                + [{"eval_time": "55m", "alertname": a, "exp_alerts": [{"exp_labels": l} for l in ls]}
                   for a, ls in FIRING.items()],
        }],
    }
    tfile = os.path.join(work, "rules-test.yaml")
    with open(tfile, "w") as f:
        yaml.safe_dump(tests, f)
    r = promtool("test", "rules", tfile)
    if r.returncode != 0:
        print(f"FAIL: promtool test rules:\n{r.stdout}\n{r.stderr}", file=sys.stderr)
        return False
    print(f"  promtool test rules: {len(FIRING)} alerts silent on healthy series at 9m and firing at 55m: "
          f"{r.stdout.strip().splitlines()[-1]}")
    return True


class Target:
    """A scrape target whose metrics the test changes: the agent's, and
    kube-state-metrics' DaemonSet gauges."""

    def __init__(self):
        self.lock = threading.Lock()
        self.broken = False
        self.overflow = 0
        self.failed = 0

    def agent(self):
        with self.lock:
            if self.broken:
                self.overflow += 4096
                self.failed += 1
            return (f"netscope_agent_overflow_bytes_total {self.overflow}\n"
                    f"netscope_agent_reports_failed_total {self.failed}\n"
                    "netscope_agent_reports_rejected_total 0\n")

    def ksm(self):
        with self.lock:
            ready = 2 if self.broken else 3
        return (f"kube_daemonset_status_desired_number_scheduled{{{DS}}} 3\n"
                f"kube_daemonset_status_number_ready{{{DS}}} {ready}\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prom, q):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def live(helm, work):
    fast = ["--set", "prometheusRule.forDurations.NetscopeAgentMissing=3s",
            "--set", "prometheusRule.forDurations.NetscopeReportsFailing=3s"]
    groups = render(helm, fast)
    rules = os.path.join(work, "live-rules.yaml")
    with open(rules, "w") as f:
        yaml.safe_dump({"groups": [dict(g, interval="1s") for g in groups]}, f)
    target = Target()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (target.agent() if self.path == "/agent/metrics" else target.ksm()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tport, pport = srv.server_address[1], free_port()
    prom = f"127.0.0.1:{pport}"
    cfg = os.path.join(work, "prometheus.yml")
    with open(cfg, "w") as f:
        yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [
                {"job_name": AGENT_JOB, "metrics_path": "/agent/metrics",
                 "static_configs": [{"targets": [f"127.0.0.1:{tport}"]}]},
                {"job_name": "kube-state-metrics", "honor_labels": True, "metrics_path": "/ksm/metrics",
                 "static_configs": [{"targets": [f"127.0.0.1:{tport}"]}]},
            ],
        }, f)
    log = open(os.path.join(work, "prometheus.log"), "w")
    p = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={work}/data",
                          f"--web.listen-address={prom}"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    ok = True
    try:
        watched = ["NetscopeFlowTableOverflow", "NetscopeAgentMissing", "NetscopeReportsFailing"]
        # Healthy: Prometheus scrapes and evaluates, nothing fires.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if query(prom, f'up{{job="{AGENT_JOB}"}} == 1') and query(prom, 'up{job="kube-state-metrics"} == 1'):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            print(f"FAIL: Prometheus never scraped the target (log: {log.name})", file=sys.stderr)
            return False
        time.sleep(6)  # several 1 s evaluations, beyond the 3 s `for`: a false alarm would show now
        firing = query(prom, 'ALERTS{alertstate="firing"}')
        names = sorted({a["metric"]["alertname"] for a in firing} & set(watched))
        print(f"  live: healthy target, firing among {watched}: {names or 'none'}")
        ok &= not names
        # Break it.
        with target.lock:
            target.broken = True
        t0 = time.time()
        pending = set(watched)
        while pending and time.time() < t0 + 60:
            for a in sorted(pending):
                if query(prom, f'ALERTS{{alertname="{a}",alertstate="firing"}}'):
                    print(f"  live: {a} firing {time.time() - t0:.0f} s after its condition began")
                    pending.discard(a)
            time.sleep(0.5)
        for a in sorted(pending):
            print(f"FAIL: live: {a} did not fire within 60 s", file=sys.stderr)
        ok &= not pending
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        srv.shutdown()
        log.close()
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--promtool-only", action="store_true")
    o = ap.parse_args()
    work = tempfile.mkdtemp(prefix="netscope-alerts-")
    try:
        ok = unit_tests(o.helm, work)
        if ok and not o.promtool_only:
            ok = live(o.helm, work)
    finally:
        if os.environ.get("NETSCOPE_KEEP_ALERTS_WORK"):
            print(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("  alerts: ok" if ok else "  alerts: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
