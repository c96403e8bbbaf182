#!/usr/bin/env python3
"""The netscope Grafana dashboard, built with Grafana's own dashboard types
(grafana-foundation-sdk, the Python flavour of Grafana's schemas).

  dashboard.py            write charts/netscope/dashboards/netscope.json
  dashboard.py --check    exit 1 unless the committed JSON is exactly what
                          this script builds, and it loads back into the
                          SDK's Dashboard model with every panel and query
  dashboard.py --markdown print the table of panels (what each answers) that
                          docs/deploy.md shows

The queries use only netscope's metrics (docs/metrics.md); prices come from
the aggregator's netscope_cross_zone_price_dollars_per_gigabyte gauge, never from
numbers written into a query. `examples/demo.rs --check-dashboard` runs every
query against a live Prometheus and compares the exact panels (marked
"exact" below) with what the demo computed.
"""

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as mdash
from grafana_foundation_sdk.models import prometheus as mprom

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "charts/netscope/dashboards/netscope.json"

DS = mdash.DataSourceRef(type_val="prometheus", uid="${datasource}")
AGG = 'job=~"$aggregator"'
AGENT = 'job=~"$agent"'
XZ_BYTES = f"netscope_workload_cross_zone_network_traffic_bytes_total{{{AGG}}}"
ALL_BYTES = f"netscope_workload_network_traffic_bytes_total{{{AGG}}}"
COST = f"netscope_cross_zone_cost_microdollars_total{{{AGG}}}"
SVC_XZ_BYTES = f"netscope_service_cross_zone_network_traffic_bytes_total{{{AGG}}}"
AVOIDABLE = f"netscope_service_cross_zone_avoidable_dollars{{{AGG}}}"


def price(side):
    return f'scalar(max(netscope_cross_zone_price_dollars_per_gigabyte{{{AGG},side="{side}"}}))'


def q(ref, expr, legend=None, instant=False, table=False):
    b = gprom.Dataquery().ref_id(ref).expr(expr).datasource(DS)
    if instant:
        b = b.instant()
    else:
        b = b.range()
    if table:
        b = b.format(mprom.PromQueryFormat.TABLE)
    if legend:
        b = b.legend_format(legend)
    return b


# Every panel: (builder, what it answers). The check in examples/demo.rs
# reads the panels' "netscope.check" custom key from the description.
PANELS = []


def panel(kind, title, answers, queries, unit=None, width=12, height=8, exact=None, transform=None):
    b = {"table": gtable.Panel, "stat": gstat.Panel, "timeseries": gts.Panel}[kind]()
    b = b.title(title).description(answers).datasource(DS).span(width).height(height)
    for t in queries:
        b = b.with_target(t)
    if unit:
        b = b.unit(unit)
    if transform:
        b = b.with_transformation(transform)
    PANELS.append((b, title, answers, exact))
    return b


def matrix():
    return mdash.DataTransformerConfig(
        id_val="groupingToMatrix",
        options={"columnField": "dst_zone", "rowField": "src_zone", "valueField": "Value", "emptyValue": "zero"},
    )


def build():
    PANELS.clear()
    d = (
        gdash.Dashboard("netscope: cross-zone traffic and cost")
        .uid("netscope-cross-zone")
        .description("Pod traffic between availability zones, what it costs, who sends it, and whether the agents see all of it.")
        .tags(["netscope", "network", "cost"])
        .editable()
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("utc")
        .with_variable(
            gdash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(
            gdash.QueryVariable("aggregator").label("Aggregator job").datasource(DS)
            .query("label_values(netscope_aggregator_reports_total, job)")
            .refresh(mdash.VariableRefresh.ON_DASHBOARD_LOAD)
            .multi(True).include_all(True).all_value(".*")
        )
        .with_variable(
            gdash.QueryVariable("agent").label("Agent job").datasource(DS)
            .query("label_values(netscope_agent_flows_drained_total, job)")
            .refresh(mdash.VariableRefresh.ON_DASHBOARD_LOAD)
            .multi(True).include_all(True).all_value(".*")
        )
    )

    d = d.with_row(gdash.Row("Zones"))
    d = d.with_panel(panel(
        "table", "Zone-to-zone bytes since the aggregator started",
        "Bytes from each zone (rows) to each zone (columns), same-zone included, as the aggregator's counters hold them now (they restart with it).",
        [q("A", f"sum by (src_zone, dst_zone) (netscope_zone_network_traffic_bytes_total{{{AGG}}})", instant=True, table=True)],
        unit="decbytes", exact="zone_matrix", transform=matrix()))
    d = d.with_panel(panel(
        "table", "Zone-to-zone bytes in the time range",
        "The same matrix for the dashboard's time range (Prometheus' increase(), extrapolated at the range's edges).",
        [q("A", f"sum by (src_zone, dst_zone) (increase(netscope_zone_network_traffic_bytes_total{{{AGG}}}[$__range]))", instant=True, table=True)],
        unit="decbytes", transform=matrix()))
    d = d.with_panel(panel(
        "stat", "Cross-zone share",
        "Which fraction of all pod traffic crosses zones (both zones known and different), over the time range.",
        [q("A", f"sum(rate({XZ_BYTES}[$__range])) / sum(rate({ALL_BYTES}[$__range]))", instant=True)],
        unit="percentunit", width=6))
    d = d.with_panel(panel(
        "stat", "Cross-zone GB per day",
        "Cross-zone traffic at the time range's average rate, in GB (10^9 bytes) per day.",
        [q("A", f"sum(rate({XZ_BYTES}[$__range])) * 86400 / 1e9", instant=True)],
        unit="decgbytes", width=6))
    d = d.with_panel(panel(
        "timeseries", "Cross-zone traffic over time",
        "Cross-zone bytes per second, by source and destination zone.",
        [q("A", f"sum by (src_zone, dst_zone) (rate({XZ_BYTES}[$__rate_interval]))", legend="{{src_zone}} -> {{dst_zone}}")],
        unit="Bps"))

    d = d.with_row(gdash.Row("Cost"))
    d = d.with_panel(panel(
        "stat", "Cost per day, by billing side",
        "Inter-AZ transfer cost at the time range's average rate, in dollars per day, for the sending and the receiving side.",
        [q("A", f"sum by (side) (rate({COST}[$__range])) * 86400 / 1e6", legend="{{side}}", instant=True)],
        unit="currencyUSD", width=6))
    d = d.with_panel(panel(
        "stat", "Cost per 30 days, by billing side",
        "The same, projected to 30 days.",
        [q("A", f"sum by (side) (rate({COST}[$__range])) * 86400 * 30 / 1e6", legend="{{side}}", instant=True)],
        unit="currencyUSD", width=6))
    d = d.with_panel(panel(
        "table", "Cost since the aggregator started, by zone pair and side",
        "Dollars the cross-zone bytes counted so far cost, per source zone, destination zone and billing side (exact: the counter is floor(bytes x price) in microdollars).",
        [q("A", f"sum by (src_zone, dst_zone, side) ({COST}) / 1e6", instant=True, table=True)],
        unit="currencyUSD", exact="cost_by_zone_side"))
    d = d.with_panel(panel(
        "stat", "Cost since the aggregator started, by billing side",
        "Total dollars so far for each billing side.",
        [q("A", f"sum by (side) ({COST}) / 1e6", legend="{{side}}", instant=True)],
        unit="currencyUSD", width=6, exact="cost_by_side"))
    d = d.with_panel(panel(
        "timeseries", "Cost rate over time",
        "Dollars per day at each moment's rate, by billing side.",
        [q("A", f"sum by (side) (rate({COST}[$__rate_interval])) * 86400 / 1e6", legend="{{side}}")],
        unit="currencyUSD", width=18))

    d = d.with_row(gdash.Row("Services"))
    d = d.with_panel(panel(
        "table", "Services by avoidable cross-zone cost (ESTIMATE)",
        "ESTIMATE, not a measurement. Per Service, the dollars of its cross-zone bytes since the aggregator started (measured), and of those that in-zone routing (trafficDistribution: PreferClose) would have kept in the client's zone, wherever the Service has ready endpoints there. Assumes those endpoints absorb their zone's load and the request mix stays the same.",
        [q("A", f"sort_desc(sum by (service_namespace, service) (netscope_service_cross_zone_avoidable_dollars{{{AGG}}}))", instant=True, table=True),
         q("B", f"sum by (service_namespace, service) (netscope_service_cross_zone_dollars{{{AGG}}})", instant=True, table=True)],
        unit="currencyUSD"))
    d = d.with_panel(panel(
        "stat", "Avoidable Service cost per 30 days (ESTIMATE)",
        "ESTIMATE, not a measurement: how fast the avoidable dollars of the table grew over the time range, projected to 30 days. Same assumptions as the table.",
        [q("A", f"sum(rate({AVOIDABLE}[$__range])) * 86400 * 30", instant=True)],
        unit="currencyUSD", width=6))
    d = d.with_panel(panel(
        "timeseries", "Service traffic across zones",
        "Bytes per second attributed to each Service (requests and replies) between two different known zones.",
        [q("A", f"sum by (service_namespace, service) (rate({SVC_XZ_BYTES}[$__rate_interval]))", legend="{{service_namespace}}/{{service}}")],
        unit="Bps", width=18))

    d = d.with_row(gdash.Row("Who"))
    d = d.with_panel(panel(
        "table", "Top cross-zone talkers by workload (GB/day)",
        "The ten workload pairs that send the most bytes across zones, at the time range's average rate.",
        [q("A", f"topk(10, sum by (src_namespace, src_workload, dst_namespace, dst_workload) (rate({XZ_BYTES}[$__range]))) * 86400 / 1e9", instant=True, table=True)],
        unit="decgbytes"))
    d = d.with_panel(panel(
        "table", "Top cross-zone talkers by namespace (GB/day)",
        "The ten namespace pairs that send the most bytes across zones.",
        [q("A", f"topk(10, sum by (src_namespace, dst_namespace) (rate({XZ_BYTES}[$__range]))) * 86400 / 1e9", instant=True, table=True)],
        unit="decgbytes"))
    d = d.with_panel(panel(
        "table", "Cost per namespace ($/day)",
        "What each namespace's cross-zone traffic costs per day: the sending side for what it sends (A), the receiving side for what it receives (B), at the aggregator's configured prices.",
        [q("A", f"sum by (src_namespace) (rate({XZ_BYTES}[$__range])) * 86400 / 1e9 * {price('sending')}", instant=True, table=True),
         q("B", f"sum by (dst_namespace) (rate({XZ_BYTES}[$__range])) * 86400 / 1e9 * {price('receiving')}", instant=True, table=True)],
        unit="currencyUSD"))
    d = d.with_panel(panel(
        "table", "Cost per workload ($/day)",
        "The same per workload: sending side (A) and receiving side (B).",
        [q("A", f"sum by (src_namespace, src_workload) (rate({XZ_BYTES}[$__range])) * 86400 / 1e9 * {price('sending')}", instant=True, table=True),
         q("B", f"sum by (dst_namespace, dst_workload) (rate({XZ_BYTES}[$__range])) * 86400 / 1e9 * {price('receiving')}", instant=True, table=True)],
        unit="currencyUSD"))

    d = d.with_row(gdash.Row("Agents"))
    d = d.with_panel(panel(
        "timeseries", "Attached pod links per node",
        "How many pod interfaces each agent has its program on; a node at 0 with pods on it is not measured.",
        [q("A", f"sum by (instance) (netscope_agent_interfaces_attached{{{AGENT}}})", legend="{{instance}}")],
        width=8))
    d = d.with_panel(panel(
        "timeseries", "Flow table fill",
        "Flows in the last drained table over its capacity (agent.maxFlows); at 1 new flows overflow.",
        [q("A", f"max by (instance) (netscope_agent_flow_table_fill_ratio{{{AGENT}}})", legend="{{instance}}")],
        unit="percentunit", width=8))
    d = d.with_panel(panel(
        "timeseries", "Overflow",
        "Bytes per second counted without pod labels because the flow table was full.",
        [q("A", f"sum by (instance) (rate(netscope_agent_overflow_bytes_total{{{AGENT}}}[$__rate_interval]))", legend="{{instance}}")],
        unit="Bps", width=8))
    d = d.with_panel(panel(
        "timeseries", "Report failures",
        "Reports per second that failed to reach the aggregator (A) or that it rejected (B); the agent buffers and resends.",
        [q("A", f"sum by (instance) (rate(netscope_agent_reports_failed_total{{{AGENT}}}[$__rate_interval]))", legend="failed {{instance}}"),
         q("B", f"sum by (instance) (rate(netscope_agent_reports_rejected_total{{{AGENT}}}[$__rate_interval]))", legend="rejected {{instance}}")],
        unit="reqps"))
    d = d.with_panel(panel(
        "timeseries", "Service NAT unresolved share",
        "Of the Service (ClusterIP) flows, the share whose conntrack entry was gone: those bytes stay on the Service, not the backend pod.",
        [q("A", f"sum by (instance) (rate(netscope_agent_nat_unresolved_total{{{AGENT}}}[$__rate_interval])) / (sum by (instance) (rate(netscope_agent_nat_resolved_total{{{AGENT}}}[$__rate_interval])) + sum by (instance) (rate(netscope_agent_nat_unresolved_total{{{AGENT}}}[$__rate_interval])))", legend="{{instance}}")],
        unit="percentunit"))
    return d


def render():
    built = build().build()
    # Mark the panels the live check compares exactly.
    text = json.dumps(built, cls=JSONEncoder, sort_keys=True, indent=2)
    obj = json.loads(text)
    exact = {title: e for _, title, _, e in PANELS if e}
    for i, p in enumerate(obj["panels"], start=1):
        p["id"] = i  # the SDK leaves ids to Grafana; unique ones keep links stable
        if p.get("options", {}) is None:
            del p["options"]
        if p.get("title") in exact:
            p["netscopeExact"] = exact[p["title"]]
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"


def validate(text):
    """Loads the JSON back into the SDK's Dashboard model: every panel and
    query must survive with its expression."""
    obj = json.loads(text)
    model = mdash.Dashboard.from_json(obj)
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    exprs = [t["expr"] for p in obj["panels"] for t in p.get("targets", [])]
    again_exprs = [t["expr"] for p in again["panels"] for t in p.get("targets", [])]
    problems = []
    if exprs != again_exprs:
        problems.append("queries changed when loaded into the SDK model")
    if not exprs:
        problems.append("no queries")
    for p in obj["panels"]:
        if p["type"] == "row":
            continue
        if not p.get("targets"):
            problems.append(f"panel {p['title']!r} has no query")
        if not p.get("description"):
            problems.append(f"panel {p['title']!r} does not say what it answers")
        for t in p.get("targets", []):
            if "0.01" in t["expr"] or "0.02" in t["expr"]:
                problems.append(f"panel {p['title']!r} hard-codes a price: {t['expr']}")
    return problems, len(exprs)


def main():
    text = render()
    if "--markdown" in sys.argv:
        print("| Panel | What it answers |\n| --- | --- |")
        for _, title, answers, exact in PANELS:
            print(f"| {title} | {answers}{' Checked exactly against the demo.' if exact else ''} |")
        return 0
    problems, n = validate(text)
    if "--check" in sys.argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"FAIL: {OUT.relative_to(ROOT)} is not what scripts/dashboard.py builds: run it", file=sys.stderr)
            return 1
        if problems:
            print("FAIL: " + "; ".join(problems), file=sys.stderr)
            return 1
        print(f"  {OUT.relative_to(ROOT)}: up to date, {len(PANELS)} panels, {n} queries, loads into the SDK model")
        return 0
    if problems:
        print("FAIL: " + "; ".join(problems), file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(PANELS)} panels, {n} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
