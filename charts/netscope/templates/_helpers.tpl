{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "netscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped prefix of every resource name. */}}
{{- define "netscope.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "netscope.agent.fullname" -}}
{{- printf "%s-agent" (include "netscope.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "netscope.aggregator.fullname" -}}
{{- printf "%s-aggregator" (include "netscope.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "netscope.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: netscope
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Agent selector labels. app.kubernetes.io/name is what the aggregator's
--agent-selector matches (see netscope.agent.selectorString).
*/}}
{{- define "netscope.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.agent.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netscope.agent.labels" -}}
{{ include "netscope.commonLabels" . }}
{{ include "netscope.agent.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{/*
The label selector the aggregator passes to --agent-selector: the agent
pods' name and instance labels, so two releases in one cluster do not count
each other's agents.
*/}}
{{- define "netscope.agent.selectorString" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" .Values.agent.name .Release.Name -}}
{{- end -}}

{{- define "netscope.aggregator.selectorLabels" -}}
app.kubernetes.io/name: netscope-aggregator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netscope.aggregator.labels" -}}
{{ include "netscope.commonLabels" . }}
{{ include "netscope.aggregator.selectorLabels" . }}
app.kubernetes.io/component: aggregator
{{- end -}}

{{- define "netscope.aggregator.serviceAccountName" -}}
{{- if .Values.aggregator.serviceAccount.create -}}
{{- default (include "netscope.aggregator.fullname" .) .Values.aggregator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.aggregator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
image: repository:tag, the tag defaulting to the chart's appVersion, or
repository@digest when image.digest is set. global.imageRegistry replaces
the repository's registry host (its first path element when that has a dot
or a colon, or is "localhost"), or is prefixed when it has none.
*/}}
{{- define "netscope.image" -}}
{{- $repo := .image.repository -}}
{{- with .root.Values.global.imageRegistry -}}
{{- $parts := splitList "/" $repo -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repo = join "/" (rest $parts) -}}
{{- end -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "netscope.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "netscope.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The agent's --debug-addr: ADDRESS:PORT, an IPv6 address in brackets. */}}
{{- define "netscope.agent.debugAddr" -}}
{{- $a := .Values.agent.debugAddress -}}
{{- if contains ":" $a -}}
{{- printf "[%s]:%d" (trimAll "[]" $a) (int .Values.agent.debugPort) -}}
{{- else -}}
{{- printf "%s:%d" $a (int .Values.agent.debugPort) -}}
{{- end -}}
{{- end -}}

{{/* PromQL matchers of the agents' and the aggregator's series, for the rules. */}}
{{- define "netscope.rules.agentSelector" -}}
{{- default (printf "job=\"%s/%s\"" .Release.Namespace (include "netscope.agent.fullname" .)) .Values.prometheusRule.agentSelector -}}
{{- end -}}
{{- define "netscope.rules.aggregatorSelector" -}}
{{- default (printf "job=\"%s\"" (include "netscope.aggregator.fullname" .)) .Values.prometheusRule.aggregatorSelector -}}
{{- end -}}
{{- define "netscope.rules.daemonSetSelector" -}}
{{- default (printf "daemonset=\"%s\",namespace=\"%s\"" (include "netscope.agent.fullname" .) .Release.Namespace) .Values.prometheusRule.daemonSetSelector -}}
{{- end -}}

{{/* The aggregator Service's in-cluster DNS name. */}}
{{- define "netscope.aggregator.host" -}}
{{- printf "%s.%s.svc.%s" (include "netscope.aggregator.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* "true" when more than one aggregator may run (replicas > 1 or the HPA). */}}
{{- define "netscope.aggregator.multi" -}}
{{- if or .Values.aggregator.autoscaling.enabled (gt (int .Values.aggregator.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* The headless Service's in-cluster DNS name: one A/AAAA record per ready replica. */}}
{{- define "netscope.aggregator.headlessHost" -}}
{{- printf "%s-headless.%s.svc.%s" (include "netscope.aggregator.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The address agents report to: the headless Service when several replicas
may run (each agent picks one replica), else the Service. */}}
{{- define "netscope.agent.serverEndpoint" -}}
{{- if .Values.agent.serverEndpoint -}}
{{- .Values.agent.serverEndpoint -}}
{{- else if include "netscope.aggregator.multi" . -}}
{{- printf "%s:%d" (include "netscope.aggregator.headlessHost" .) (int .Values.aggregator.port) -}}
{{- else -}}
{{- printf "%s:%d" (include "netscope.aggregator.host" .) (int .Values.aggregator.service.port) -}}
{{- end -}}
{{- end -}}

{{/* Name of the custom-endpoints ConfigMap. */}}
{{- define "netscope.customEndpoints.configMapName" -}}
{{- default (printf "%s-custom-endpoints" (include "netscope.aggregator.fullname" .)) .Values.aggregator.customEndpoints.existingConfigMap -}}
{{- end -}}

{{/* Fails rendering on inconsistent TLS settings. */}}
{{- define "netscope.validateTLS" -}}
{{- if .Values.tls.enabled -}}
{{- if and .Values.aggregator.enabled (not .Values.tls.aggregatorSecret) -}}
{{- fail "tls.enabled needs tls.aggregatorSecret (a Secret with tls.crt and tls.key)" -}}
{{- end -}}
{{- if and .Values.agent.enabled (not .Values.tls.agentSecret) -}}
{{- fail "tls.enabled needs tls.agentSecret (a Secret with ca.crt)" -}}
{{- end -}}
{{- else if .Values.tls.mutual -}}
{{- fail "tls.mutual needs tls.enabled" -}}
{{- end -}}
{{- end -}}

{{/*
Fails rendering when the aggregator's plain HTTP port collides with its gRPC
port: in the pod (both are bound by the one process) or in the Service
(two ports with one number).
*/}}
{{- define "netscope.validatePorts" -}}
{{- $a := .Values.aggregator -}}
{{- if eq (int $a.httpPort) (int $a.port) -}}
{{- fail (printf "aggregator.httpPort (%d) must differ from aggregator.port (%d), the gRPC port: the aggregator binds both" (int $a.httpPort) (int $a.port)) -}}
{{- end -}}
{{- if eq (int $a.httpPort) (int $a.service.port) -}}
{{- fail (printf "aggregator.httpPort (%d) must differ from aggregator.service.port (%d): the Service exposes both ports, and one number cannot name two" (int $a.httpPort) (int $a.service.port)) -}}
{{- end -}}
{{- end -}}
