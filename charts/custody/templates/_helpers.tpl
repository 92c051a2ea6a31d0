{{/*
Labels on every object the chart renders. Selectors use only
app.kubernetes.io/name, as config/ does, so an install can move between
kustomize and Helm without recreating Deployments.
*/}}
{{- define "custody.labels" -}}
app.kubernetes.io/part-of: custody
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The manager's ServiceAccount as the API server names it. */}}
{{- define "custody.managerUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:custody-manager
{{- end }}

{{- define "custody.gatewayUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:custody-gateway
{{- end }}

{{/* An image reference: repository@digest, or repository:tag (appVersion by default). */}}
{{- define "custody.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
custody.files renders every YAML document of the chart's files matching
.glob (copies of config/, made by hack/sync-chart.sh): namespaced objects
and ServiceAccount subjects move from custody-system to the release
namespace, the chart's labels are added, and .edit (a template name, or
"") may change each document further.
*/}}
{{- define "custody.files" -}}
{{- $root := .root -}}
{{- range $path, $_ := $root.Files.Glob .glob }}
{{- range $doc := regexSplit "(?m)^---[ \\t]*$" ($root.Files.Get $path) -1 }}
{{- $obj := fromYaml $doc }}
{{- if $obj.kind }}
{{- $meta := $obj.metadata }}
{{- if $meta.namespace }}
{{- $_ := set $meta "namespace" $root.Release.Namespace }}
{{- end }}
{{- range $s := $obj.subjects | default list }}
{{- if and (eq $s.kind "ServiceAccount") (eq ($s.namespace | default "") "custody-system") }}
{{- $_ := set $s "namespace" $root.Release.Namespace }}
{{- end }}
{{- end }}
{{- $_ := set $meta "labels" (merge ($meta.labels | default dict) (include "custody.labels" $root | fromYaml)) }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
