{{/* Chart name, overridable. */}}
{{- define "tars-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every object. Truncated to 52 characters so that suffixes such as
"-metrics" or "-gateway" keep names within the 63-character DNS label limit.
*/}}
{{- define "tars-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tars-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tars-operator.labels" -}}
helm.sh/chart: {{ include "tars-operator.chart" . }}
app.kubernetes.io/name: {{ include "tars-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tars
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the operator pods; immutable once installed, so keep them minimal. */}}
{{- define "tars-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tars-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tars-operator.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "tars-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "tars-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tars-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest pins the image. */}}
{{- define "tars-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Checks that span several values, which values.schema.json cannot express with a clear message.
Included by the Deployment so that `helm template` and `helm install` both stop on them.
*/}}
{{- define "tars-operator.validate" -}}
{{- $op := .Values.operator }}
{{- if and (gt (int $op.replicas) 1) (not $op.peering.enabled) }}
{{- fail (printf "operator.replicas is %d but operator.peering.enabled is false: without peering every replica would reconcile the same objects; enable peering or set operator.replicas to 1" (int $op.replicas)) }}
{{- end }}
{{- if eq (int $op.healthPort) (int $op.metricsPort) }}
{{- fail (printf "operator.healthPort and operator.metricsPort are both %d: they must differ" (int $op.healthPort)) }}
{{- end }}
{{- if and (gt (int $op.podDisruptionBudget.minAvailable) 0) (ge (int $op.podDisruptionBudget.minAvailable) (int $op.replicas)) (gt (int $op.replicas) 1) $op.podDisruptionBudget.enabled }}
{{- fail (printf "operator.podDisruptionBudget.minAvailable (%d) must be below operator.replicas (%d), or no operator pod could ever be evicted" (int $op.podDisruptionBudget.minAvailable) (int $op.replicas)) }}
{{- end }}
{{- end }}
