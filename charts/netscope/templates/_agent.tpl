{{/*
The agent container's securityContext: the chart's (root, the capabilities
of agent.capabilities only, read-only root filesystem, seccompProfile), then
agent.securityContext over it. The agent and the uninstall cleanup use it.
*/}}
{{- define "netscope.agent.securityContext" -}}
{{- $sc := dict }}
{{- if .Values.agent.privileged }}
{{- $_ := set $sc "privileged" true }}
{{- else }}
{{- $_ := set $sc "privileged" false }}
{{- /* The API server refuses allowPrivilegeEscalation=false with CAP_SYS_ADMIN. */}}
{{- if not (has "SYS_ADMIN" .Values.agent.capabilities) }}
{{- $_ := set $sc "allowPrivilegeEscalation" false }}
{{- end }}
{{- /* Root inside the container: Kubernetes grants added capabilities to uid 0 only (no ambient capabilities). */}}
{{- $_ := set $sc "runAsUser" 0 }}
{{- $_ := set $sc "runAsNonRoot" false }}
{{- $_ := set $sc "readOnlyRootFilesystem" true }}
{{- $_ := set $sc "capabilities" (dict "drop" (list "ALL") "add" .Values.agent.capabilities) }}
{{- with .Values.agent.seccompProfile }}
{{- $_ := set $sc "seccompProfile" . }}
{{- end }}
{{- end }}
{{- $sc = mergeOverwrite $sc (deepCopy .Values.agent.securityContext) }}
{{- toYaml $sc }}
{{- end -}}

{{/*
The agent's --pin-root (--no-pin without the bpffs mount: nothing can be
pinned then) and --state-dir, as a YAML list of args.
*/}}
{{- define "netscope.agent.stateArgs" -}}
{{- if .Values.agent.mountBpffs -}}
- {{ printf "--pin-root=%v" .Values.agent.pinRoot | quote }}
{{- else -}}
- --no-pin
{{- end }}
- {{ printf "--state-dir=%v" .Values.agent.stateDir | quote }}
{{- end -}}

{{/* Volume mounts of the node's state: bpffs (pins) and the journal. */}}
{{- define "netscope.agent.stateVolumeMounts" -}}
{{- if .Values.agent.mountBpffs }}
- name: bpffs
  mountPath: /sys/fs/bpf
  mountPropagation: HostToContainer
{{- end }}
- name: state
  mountPath: {{ .Values.agent.stateDir }}
{{- end -}}

{{- define "netscope.agent.stateVolumes" -}}
{{- if .Values.agent.mountBpffs }}
- name: bpffs
  hostPath:
    path: /sys/fs/bpf
    type: DirectoryOrCreate
{{- end }}
- name: state
  hostPath:
    path: {{ .Values.agent.stateDir }}
    type: DirectoryOrCreate
{{- end -}}

{{/*
Refuses agent settings that break pinning or upgrades: a surge (two agents
on one node would drain the same pinned maps and bind the same debug port),
a pin root outside the bpffs mount.
*/}}
{{- define "netscope.agent.validateLifecycle" -}}
{{- if .Values.agent.enabled }}
{{- with .Values.agent.updateStrategy }}
{{- with .rollingUpdate }}
{{- if and (hasKey . "maxSurge") (not (has (toString .maxSurge) (list "0" "0%"))) }}
{{- fail (printf "agent.updateStrategy.rollingUpdate.maxSurge must be 0 (got %v): two agents on one node would drain the same pinned maps and bind the same debug port" .maxSurge) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "/sys/fs/bpf/" .Values.agent.pinRoot) }}
{{- fail (printf "agent.pinRoot must be under /sys/fs/bpf/, the bpffs mount (got %q)" .Values.agent.pinRoot) }}
{{- end }}
{{- end }}
{{- end -}}
