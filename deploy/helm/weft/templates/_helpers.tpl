{{/*
Names, labels and the values checks of the weft chart.
*/}}

{{- define "weft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The LeaderWorkerSet's name, and so the prefix of its pods and of its headless
Service: "weft" for release weft, "<release>-weft" otherwise. Kept to 40
characters: LWS names pods <name>-<group>-<index>.
*/}}
{{- define "weft.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "weft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of the pods (no version: a chart bump alone must not roll them). */}}
{{- define "weft.podLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Pods of this LeaderWorkerSet (the label its controller sets). */}}
{{- define "weft.lwsSelector" -}}
leaderworkerset.sigs.k8s.io/name: {{ include "weft.fullname" . }}
{{- end -}}

{{/* The coordinators: index 0 of every group. */}}
{{- define "weft.coordinatorSelector" -}}
{{ include "weft.lwsSelector" . }}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- end -}}

{{- define "weft.etcd.name" -}}
{{- printf "%s-etcd" (include "weft.fullname" .) -}}
{{- end -}}

{{- define "weft.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "weft.fullname" .) -}}
{{- end -}}

{{- define "weft.etcd.selector" -}}
{{ include "weft.podLabels" . }}
app.kubernetes.io/component: etcd
{{- end -}}

{{/* "true" when this release deploys its own etcd. */}}
{{- define "weft.etcd.internal" -}}
{{- if and .Values.etcd.enabled (empty .Values.etcd.externalEndpoints) -}}true{{- end -}}
{{- end -}}

{{/* The etcd endpoints the weft pods get (comma-separated), or "". */}}
{{- define "weft.etcd.endpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- if .Values.etcd.externalEndpoints -}}
{{- join "," .Values.etcd.externalEndpoints -}}
{{- else -}}
{{- printf "%s://%s:2379" (ternary "https" "http" .Values.etcd.tls.enabled) (include "weft.etcd.name" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The etcd flags of the coordinator and the workers, one per line, each
"--flag=value". The prefix ends in the group's leader address so that the
groups (LWS replicas) never share rank keys.
*/}}
{{- define "weft.etcd.flags" -}}
{{- if .Values.etcd.enabled }}
--etcd-endpoints={{ include "weft.etcd.endpoints" . }}
--etcd-prefix={{ .Values.etcd.prefix | trimSuffix "/" }}/$(LWS_LEADER_ADDRESS)
--etcd-lease-ttl-s={{ .Values.etcd.leaseTtlS }}
{{- if .Values.etcd.tls.enabled }}
--etcd-ca=/etc/weft/etcd-tls/ca.crt
--etcd-cert=/etc/weft/etcd-tls/tls.crt
--etcd-key=/etc/weft/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* The cluster TLS flags shared by the coordinator and the workers. */}}
{{- define "weft.tls.flags" -}}
{{- if .Values.tls.enabled }}
--tls-cert=/etc/weft/tls/tls.crt
--tls-key=/etc/weft/tls/tls.key
--tls-ca=/etc/weft/tls/ca.crt
{{- end }}
{{- end -}}

{{/* The etcd client certificate volume of the weft pods. */}}
{{- define "weft.etcd.clientVolume" -}}
{{- if and .Values.etcd.enabled .Values.etcd.tls.enabled -}}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.clientSecret }}
    defaultMode: 0400
{{- end -}}
{{- end -}}

{{- define "weft.etcd.clientMount" -}}
{{- if and .Values.etcd.enabled .Values.etcd.tls.enabled -}}
- name: etcd-tls
  mountPath: /etc/weft/etcd-tls
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "weft.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "weft.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "weft.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/*
Checks across values that the schema cannot express. Included by every
template, so `helm template` and `helm install` stop with the message.
*/}}
{{- define "weft.validate" -}}
{{- $v := .Values -}}
{{- if lt (int $v.tp) 1 -}}
{{- fail (printf "tp must be at least 1 (got %v): a group is tp ranks plus its coordinator" $v.tp) -}}
{{- end -}}
{{- if lt (int $v.replicas) 1 -}}
{{- fail (printf "replicas must be at least 1 (got %v)" $v.replicas) -}}
{{- end -}}
{{- if le (int $v.coordinator.terminationGracePeriodSeconds) (int $v.coordinator.drainGraceS) -}}
{{- fail (printf "coordinator.terminationGracePeriodSeconds (%v) must exceed coordinator.drainGraceS (%v): otherwise the kubelet kills a coordinator while it drains" $v.coordinator.terminationGracePeriodSeconds $v.coordinator.drainGraceS) -}}
{{- end -}}
{{- if not (has $v.device (list "cpu" "cuda")) -}}
{{- fail (printf "device must be cpu or cuda (got %q)" $v.device) -}}
{{- end -}}
{{- if not (has $v.model.shardSource (list "local" "stream")) -}}
{{- fail (printf "model.shardSource must be local or stream (got %q)" $v.model.shardSource) -}}
{{- end -}}
{{- $_ := required "model.pvcName is required: the PVC holding the checkpoint" $v.model.pvcName -}}
{{- $_ := required "model.path is required: the checkpoint folder in the pods" $v.model.path -}}
{{- $_ := required "apiKeys.secretName is required: API keys come from a mounted Secret, never inline" $v.apiKeys.secretName -}}
{{- if $v.tls.enabled -}}
{{- $_ := required "tls.coordinatorSecret is required with tls.enabled" $v.tls.coordinatorSecret -}}
{{- if not $v.tls.workerVolume -}}
{{- $_ := required "tls.workerSecret (or tls.workerVolume) is required with tls.enabled" $v.tls.workerSecret -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.etcd.enabled) $v.etcd.externalEndpoints -}}
{{- fail "etcd.externalEndpoints is set but etcd.enabled is false: set etcd.enabled=true to use the external etcd, or clear etcd.externalEndpoints" -}}
{{- end -}}
{{- if $v.etcd.enabled -}}
{{- if lt (int $v.etcd.leaseTtlS) 1 -}}
{{- fail (printf "etcd.leaseTtlS must be at least 1 (got %v)" $v.etcd.leaseTtlS) -}}
{{- end -}}
{{- if $v.etcd.tls.enabled -}}
{{- $_ := required "etcd.tls.clientSecret is required with etcd.tls.enabled" $v.etcd.tls.clientSecret -}}
{{- end -}}
{{- range $v.etcd.externalEndpoints -}}
{{- if and $v.etcd.tls.enabled (not (hasPrefix "https://" .)) -}}
{{- fail (printf "etcd.externalEndpoints: %q is not https:// but etcd.tls.enabled is true" .) -}}
{{- end -}}
{{- if and (not $v.etcd.tls.enabled) (not (hasPrefix "http://" .)) -}}
{{- fail (printf "etcd.externalEndpoints: %q must be http://host:port (or https:// with etcd.tls.enabled)" .) -}}
{{- end -}}
{{- end -}}
{{- if include "weft.etcd.internal" . -}}
{{- if or (lt (int $v.etcd.replicas) 1) (eq (mod (int $v.etcd.replicas) 2) 0) -}}
{{- fail (printf "etcd.replicas must be odd (1, 3, 5; got %v): an even member count adds no fault tolerance" $v.etcd.replicas) -}}
{{- end -}}
{{- if $v.etcd.tls.enabled -}}
{{- $_ := required "etcd.tls.serverSecret is required with etcd.tls.enabled" $v.etcd.tls.serverSecret -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
