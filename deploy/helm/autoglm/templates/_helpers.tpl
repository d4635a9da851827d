{{/* Names and labels. */}}
{{- define "autoglm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "autoglm.fullname" -}}
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

{{- define "autoglm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autoglm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "autoglm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "autoglm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "autoglm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "autoglm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the pepper and admin key: the user's, or the chart's. */}}
{{- define "autoglm.secretName" -}}
{{- default (printf "%s-secrets" (include "autoglm.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "autoglm.databaseSecretName" -}}
{{- default (printf "%s-secrets" (include "autoglm.fullname" .)) .Values.postgresql.existingSecret }}
{{- end }}

{{- define "autoglm.redisSecretName" -}}
{{- default (printf "%s-secrets" (include "autoglm.fullname" .)) .Values.redis.existingSecret }}
{{- end }}

{{- define "autoglm.hasDatabase" -}}
{{- if or .Values.postgresql.url .Values.postgresql.existingSecret }}true{{ end }}
{{- end }}

{{- define "autoglm.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* Whether more than one gateway pod can run at once. */}}
{{- define "autoglm.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* Refuse values that would make replicas disagree (checked once, by the Deployment). */}}
{{- define "autoglm.validate" -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.keyPepper) }}
{{- fail "set secrets.keyPepper, or secrets.existingSecret naming a Secret with the pepper: every replica must hash keys with the same pepper" }}
{{- end }}
{{- if include "autoglm.multiReplica" . }}
{{- if not (include "autoglm.hasDatabase" .) }}
{{- fail "more than one replica needs an external PostgreSQL: set postgresql.url or postgresql.existingSecret" }}
{{- end }}
{{- if and (not .Values.auditKeys.existingSecret) (not .Values.auditKeys.allowPerPodKeys) }}
{{- fail "more than one replica needs shared audit keys: set auditKeys.existingSecret (or auditKeys.allowPerPodKeys: true)" }}
{{- end }}
{{- end }}
{{- range $k := list "host" "port" "data_dir" "models" "grpc_port" "admin_key" "key_pepper" "database_url" "redis_url" }}
{{- if hasKey $.Values.settings $k }}
{{- fail (printf "settings.%s is set by the chart; see values.yaml for where it goes" $k) }}
{{- end }}
{{- end }}
{{- end }}
