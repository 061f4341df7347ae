{{/* Chart name, truncated to a DNS label. */}}
{{- define "hostforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name appended unless it already contains it. */}}
{{- define "hostforge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hostforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hostforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hostforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hostforge.labels" -}}
helm.sh/chart: {{ include "hostforge.chart" . }}
{{ include "hostforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "hostforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hostforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hostforge.leaseName" -}}
{{- default (include "hostforge.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "hostforge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator config file. Empty optional keys are left out so the operator's
own defaults apply; clusterName is required.
*/}}
{{- define "hostforge.config" -}}
{{- $c := .Values.config -}}
clusterName: {{ required "config.clusterName is required: the name written as the hostforge.io/cluster tag on every machine (a DNS label)" $c.clusterName | quote }}
providers:
{{- range $c.providers }}
  - name: {{ .name | quote }}
    type: {{ .type | quote }}
    region: {{ .region | quote }}
    {{- with .endpointUrl }}
    endpointUrl: {{ . | quote }}
    {{- end }}
    {{- with .assumeRoleArn }}
    assumeRoleArn: {{ . | quote }}
    {{- end }}
    {{- with .interruptionQueue }}
    interruptionQueue: {{ . | quote }}
    {{- end }}
    {{- with .policy }}
    policy: {{ toJson . }}
    {{- end }}
{{- end }}
{{- range $key := list "defaultProvider" "imageCacheTtl" "gcGracePeriod" "pollInterval" "sweepInterval" "fullSweepInterval" "capacityCooldown" "spotNoticeInterval" "launchValidationRetry" "statusCheckInterval" "selectorRefreshInterval" }}
{{- with index $c $key }}
{{ $key }}: {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq (toString $c.validateLaunches) "false" }}
validateLaunches: false
{{- end }}
{{- with $c.maxKubeRequestsInFlight }}
maxKubeRequestsInFlight: {{ . | int }}
{{- end }}
{{- with $c.maxConcurrentReconciles }}
maxConcurrentReconciles: {{ . | int }}
{{- end }}
{{- with $c.clusterId }}
clusterId: {{ . | quote }}
{{- end }}
{{- with $c.orphanCollection }}
{{- if or .dryRun .maxShare .minimum }}
orphanCollection:
  dryRun: {{ .dryRun | default false }}
  {{- with .maxShare }}
  maxShare: {{ . | int }}
  {{- end }}
  {{- with .minimum }}
  minimum: {{ . | int }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}
