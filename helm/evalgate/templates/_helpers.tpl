{{/*
Named templates of the evalgate chart.

Every template takes the chart's root context (`.`): `.Values` must hold evalgate's values.
A parent chart that has evalgate as a dependency includes the pod-level templates with
evalgate's own context, `.Subcharts.evalgate`:

  {{- $eg := .Subcharts.evalgate }}
  initContainers:
    - {{ include "evalgate.sidecar" (dict "root" $eg "native" true) | nindent 6 | trim }}
  volumes:
    {{- include "evalgate.volumes" $eg | nindent 4 }}

Names and labels use the literal "evalgate" (not .Chart.Name), so they resolve the same from a
parent chart. See docs/kubernetes.md.
*/}}

{{/* Chart name, "evalgate" unless nameOverride is set. */}}
{{- define "evalgate.name" -}}
{{- default "evalgate" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-evalgate, or fullnameOverride. Used for every resource name. */}}
{{- define "evalgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "evalgate.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap holding config.toml. */}}
{{- define "evalgate.configMapName" -}}
{{- printf "%s-config" (include "evalgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the store PVC (created or existing). */}}
{{- define "evalgate.pvcName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- printf "%s-store" (include "evalgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* helm.sh/chart label value. */}}
{{- define "evalgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "evalgate.labels" -}}
helm.sh/chart: {{ include "evalgate.chart" . }}
{{ include "evalgate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "evalgate.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: evalgate
{{- end }}

{{/* Selector labels (stable across upgrades). */}}
{{- define "evalgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evalgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "evalgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "evalgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image tag: image.tag, else the chart's appVersion. */}}
{{- define "evalgate.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Image reference: repository@digest or repository:tag. */}}
{{- define "evalgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "evalgate.imageTag" .) }}
{{- end }}
{{- end }}

{{/* Port number of a "host:port" listen address ("0.0.0.0:8080", "[::]:8080"). */}}
{{- define "evalgate.portOf" -}}
{{- $m := regexFind ":[0-9]{1,5}$" (toString .) }}
{{- if not $m }}
{{- fail (printf "evalgate: cannot read a port from listen address %q (expected host:port)" (toString .)) }}
{{- end }}
{{- trimPrefix ":" $m }}
{{- end }}

{{/* Non-empty when a "host:port" listen address is a loopback address. */}}
{{- define "evalgate.isLoopback" -}}
{{- if regexMatch "^(127\\.|\\[::1\\]:)" (toString .) }}true{{ end }}
{{- end }}

{{/*
The API address: config.server.listen, or when that is empty the mode's default:
0.0.0.0:8080 in standalone mode (the Service reaches the pod IP), 127.0.0.1:8080 in sidecar
mode (the API stays on the pod's loopback).
*/}}
{{- define "evalgate.listen" -}}
{{- $l := toString (.Values.config.server.listen | default "") }}
{{- if $l }}
{{- $l }}
{{- else if eq .Values.mode "sidecar" }}
{{- "127.0.0.1:8080" }}
{{- else }}
{{- "0.0.0.0:8080" }}
{{- end }}
{{- end }}

{{/* Container port of the API (from the API address). */}}
{{- define "evalgate.apiPort" -}}
{{- include "evalgate.portOf" (include "evalgate.listen" .) }}
{{- end }}

{{/*
The Arize listener address, config.arize.listen; empty = Arize off. Unlike config.server.listen
there is no mode default: empty means off, as in evalgate.
*/}}
{{- define "evalgate.arizeListen" -}}
{{- $arize := .Values.config.arize | default dict }}
{{- toString (get $arize "listen" | default "") }}
{{- end }}

{{/* Container port of the Arize tasks API (from config.arize.listen); call only when it is set. */}}
{{- define "evalgate.arizePort" -}}
{{- include "evalgate.portOf" (include "evalgate.arizeListen" .) }}
{{- end }}

{{/* Container port of the admin endpoints (from config.server.admin_listen). */}}
{{- define "evalgate.adminPort" -}}
{{- include "evalgate.portOf" .Values.config.server.admin_listen }}
{{- end }}

{{/* Directory of the store volume: the parent directory of config.store.path. */}}
{{- define "evalgate.storeDir" -}}
{{- $p := toString .Values.config.store.path }}
{{- if not (hasPrefix "/" $p) }}
{{- fail (printf "evalgate: config.store.path must be an absolute path on the store volume (got %q)" $p) }}
{{- end }}
{{- dir $p }}
{{- end }}

{{/*
Milliseconds of a humantime duration such as "20s", "1m30s", "500ms" or "2h".
Accepts the units ms, s, m, h (and their long forms). Fails on anything else.
*/}}
{{- define "evalgate.durationMillis" -}}
{{- $s := toString . | trim }}
{{- if not (regexMatch "^([0-9]+ *[a-z]+ *)+$" $s) }}
{{- fail (printf "evalgate: cannot read the duration %q; set terminationGracePeriodSeconds explicitly" $s) }}
{{- end }}
{{- $units := dict "ms" 1 "msec" 1 "millis" 1 "s" 1000 "sec" 1000 "secs" 1000 "second" 1000 "seconds" 1000 "m" 60000 "min" 60000 "mins" 60000 "minute" 60000 "minutes" 60000 "h" 3600000 "hr" 3600000 "hrs" 3600000 "hour" 3600000 "hours" 3600000 }}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+ *[a-z]+" $s -1 }}
{{- $num := regexFind "^[0-9]+" $part | atoi }}
{{- $unit := regexFind "[a-z]+$" $part }}
{{- if not (hasKey $units $unit) }}
{{- fail (printf "evalgate: unknown unit %q in the duration %q; set terminationGracePeriodSeconds explicitly" $unit $s) }}
{{- end }}
{{- $total = add $total (mul $num (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value (checked against the drain time), or
preStopSleepSeconds + ceil(shutdown_grace_period) + 10.
*/}}
{{- define "evalgate.terminationGracePeriodSeconds" -}}
{{- $graceMs := include "evalgate.durationMillis" .Values.config.server.shutdown_grace_period | atoi }}
{{- $graceS := div (add $graceMs 999) 1000 }}
{{- $drain := add (int .Values.preStopSleepSeconds) $graceS }}
{{- $explicit := int .Values.terminationGracePeriodSeconds }}
{{- if gt $explicit 0 }}
{{- if le $explicit $drain }}
{{- fail (printf "evalgate: terminationGracePeriodSeconds (%d) must be larger than preStopSleepSeconds + config.server.shutdown_grace_period (%d s), or the pod is killed mid-drain" $explicit $drain) }}
{{- end }}
{{- $explicit }}
{{- else }}
{{- add $drain 10 }}
{{- end }}
{{- end }}

{{/* auth.mode, or when empty the mode's default: "tokens" standalone, "none" sidecar. */}}
{{- define "evalgate.authMode" -}}
{{- if .Values.auth.mode }}
{{- .Values.auth.mode }}
{{- else if eq .Values.mode "sidecar" }}
{{- "none" }}
{{- else }}
{{- "tokens" }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the upstream API key; empty in demo mode (the emulator needs none). */}}
{{- define "evalgate.apiKeySecret" -}}
{{- if not .Values.demo }}{{ .Values.secrets.apiKey.existingSecret }}{{ end }}
{{- end }}

{{/*
Name of the Secret holding the Arize key: secrets.arizeApiKey.existingSecret while Arize is on
(config.arize.listen set) and not in demo mode (the demo's Arize emulator needs none); else empty.
*/}}
{{- define "evalgate.arizeKeySecret" -}}
{{- if and (include "evalgate.arizeListen" .) (not .Values.demo) }}{{ .Values.secrets.arizeApiKey.existingSecret }}{{ end }}
{{- end }}

{{/*
Name of the Secret holding the PostgreSQL URL (store.postgres.existingSecret); empty = the SQLite
store. Set, the URL is mounted as <secrets.mountPath>/store-url, config.toml gets
store.url = "file:<secrets.mountPath>/store-url", and the pod gets no store volume.
*/}}
{{- define "evalgate.postgresSecret" -}}
{{- $store := .Values.store | default dict }}
{{- $pg := get $store "postgres" | default dict }}
{{- get $pg "existingSecret" | default "" }}
{{- end }}

{{/* Non-empty in standalone mode with replicaCount > 1: the PodDisruptionBudget and the default topology spread. */}}
{{- define "evalgate.multiReplica" -}}
{{- if and (eq .Values.mode "standalone") (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/*
The pod's topologySpreadConstraints (YAML list; empty = none): topologySpreadConstraints as
given, each without a labelSelector getting the release's pod selector; or, when that list is
empty, the default constraint of topologySpread in standalone mode with replicaCount > 1.
*/}}
{{- define "evalgate.topologySpreadConstraints" -}}
{{- $selector := dict "matchLabels" (include "evalgate.selectorLabels" . | fromYaml) }}
{{- $out := list }}
{{- if .Values.topologySpreadConstraints }}
{{- range $c := .Values.topologySpreadConstraints }}
{{- $c = deepCopy $c }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" $selector }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- else if and .Values.topologySpread.enabled (include "evalgate.multiReplica" .) }}
{{- $ts := .Values.topologySpread }}
{{- $c := dict "maxSkew" (int $ts.maxSkew) "topologyKey" $ts.topologyKey "whenUnsatisfiable" $ts.whenUnsatisfiable "labelSelector" $selector }}
{{- with $ts.matchLabelKeys }}
{{- $_ := set $c "matchLabelKeys" . }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- with $out }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Keys of a tenant's Secret that are mounted, in order: token keys, then the upstream keys. */}}
{{- define "evalgate.tenantKeys" -}}
{{- $keys := concat (.tokenKeys | default list) (compact (list (.valiqorApiKeyKey | default "") (.openaiApiKeyKey | default "") (.arizeApiKeyKey | default ""))) }}
{{- toJson $keys }}
{{- end }}

{{/* The auth and tenant checks of evalgate.validate. */}}
{{- define "evalgate.validateAuth" -}}
{{- $mode := include "evalgate.authMode" . }}
{{- $file := .Values.auth.tenantsFile }}
{{- if and (eq .Values.mode "standalone") (eq $mode "none") (not .Values.auth.allowUnauthenticated) }}
{{- fail "evalgate: standalone mode with auth.mode=none would serve every pod that reaches the Service without authentication, and evalgate refuses to start that way. Use auth.mode=tokens with auth.tenants (Secrets holding bearer tokens), or set auth.allowUnauthenticated=true to accept it (trials only; the NetworkPolicy is then the only gate)" }}
{{- end }}
{{- if and (eq $mode "none") (or .Values.auth.tenants $file.existingConfigMap $file.existingSecret) }}
{{- fail "evalgate: auth.tenants and auth.tenantsFile need auth.mode=tokens (with mode none every caller is tenant \"default\")" }}
{{- end }}
{{- if and $file.existingConfigMap $file.existingSecret }}
{{- fail "evalgate: set auth.tenantsFile.existingConfigMap or auth.tenantsFile.existingSecret, not both" }}
{{- end }}
{{- if and (or $file.existingConfigMap $file.existingSecret) (not $file.key) }}
{{- fail "evalgate: auth.tenantsFile.key must name the tenants file inside the ConfigMap or Secret" }}
{{- end }}
{{- $names := dict }}
{{- range $t := .Values.auth.tenants }}
{{- if hasKey $names $t.name }}
{{- fail (printf "evalgate: auth.tenants lists the tenant %q twice" $t.name) }}
{{- end }}
{{- $_ := set $names $t.name true }}
{{- $keys := include "evalgate.tenantKeys" $t | fromJsonArray }}
{{- if not (or $t.tokenKeys $t.tokenSha256) }}
{{- fail (printf "evalgate: tenant %q has no token: list Secret keys in tokenKeys or digests in tokenSha256" $t.name) }}
{{- end }}
{{- if and $keys (not $t.existingSecret) }}
{{- fail (printf "evalgate: tenant %q names keys (%s) but no existingSecret holding them" $t.name (join ", " $keys)) }}
{{- end }}
{{- if ne (len $keys) (len (uniq $keys)) }}
{{- fail (printf "evalgate: tenant %q uses one key of its Secret twice (%s): each token and each upstream key needs a key of its own" $t.name (join ", " $keys)) }}
{{- end }}
{{- if and (not (kindIs "invalid" $t.burst)) (kindIs "invalid" $t.requestsPerSecond) }}
{{- fail (printf "evalgate: tenant %q sets burst without requestsPerSecond" $t.name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Arize listener checks of evalgate.validate (config.arize.listen, its key, its ports). */}}
{{- define "evalgate.validateArize" -}}
{{- $arize := .Values.config.arize | default dict }}
{{- if hasKey $arize "api_key" }}
{{- fail "evalgate: do not put arize.api_key in config; reference an existing Secret with secrets.arizeApiKey" }}
{{- end }}
{{- $listen := include "evalgate.arizeListen" . }}
{{- if $listen }}
{{- if not (or .Values.demo .Values.secrets.arizeApiKey.existingSecret) }}
{{- fail "evalgate: config.arize.listen is set, so the Arize API key is required. Create a Secret (kubectl create secret generic evalgate-arize --from-literal=api-key=...) and set secrets.arizeApiKey.existingSecret=evalgate-arize (the default; and secrets.arizeApiKey.key if the key is not \"api-key\"), or leave config.arize.listen empty to keep Arize off" }}
{{- end }}
{{- if and .Values.secrets.arizeApiKey.existingSecret (not .Values.secrets.arizeApiKey.key) }}
{{- fail "evalgate: secrets.arizeApiKey.key must name the key inside secrets.arizeApiKey.existingSecret" }}
{{- end }}
{{- $port := include "evalgate.arizePort" . }}
{{- if or (eq $port (include "evalgate.apiPort" .)) (eq $port (include "evalgate.adminPort" .)) }}
{{- fail (printf "evalgate: config.arize.listen (%s) must use a port of its own, not the port of config.server.listen (%s) or config.server.admin_listen (%s)" $listen (include "evalgate.listen" .) (toString .Values.config.server.admin_listen)) }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (not (include "evalgate.isLoopback" $listen)) }}
{{- fail (printf "evalgate: in sidecar mode config.arize.listen must be a loopback address (got %q): the Arize tasks API is for the application in the same pod only. Use 127.0.0.1:<port>, or standalone mode to serve other pods" $listen) }}
{{- end }}
{{- if eq .Values.mode "standalone" }}
{{- if include "evalgate.isLoopback" $listen }}
{{- fail (printf "evalgate: in standalone mode config.arize.listen must not be a loopback address (got %q), or the Service cannot reach it (use 0.0.0.0:<port>, e.g. 0.0.0.0:8081)" $listen) }}
{{- end }}
{{- $svc := .Values.service }}
{{- if or (eq (int $svc.arizePort) (int $svc.port)) (and .Values.metrics.serviceMonitor.enabled (eq (int $svc.arizePort) (int $svc.adminPort))) }}
{{- fail (printf "evalgate: service.arizePort (%d) must differ from service.port%s: a Service port number is used once" (int $svc.arizePort) (ternary " and service.adminPort" "" .Values.metrics.serviceMonitor.enabled)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The store checks of evalgate.validate (SQLite or PostgreSQL; replicas; the PodDisruptionBudget). */}}
{{- define "evalgate.validateStore" -}}
{{- $pg := include "evalgate.postgresSecret" . }}
{{- $store := .Values.config.store | default dict }}
{{- if hasKey $store "url" }}
{{- fail "evalgate: do not put store.url in config: the PostgreSQL URL holds a password. Keep the whole URL in an existing Secret (kubectl create secret generic evalgate-postgres --from-literal=url='postgres://evalgate:<password>@db:5432/evalgate') and set store.postgres.existingSecret=evalgate-postgres" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if eq (toString .name) "EVALGATE__STORE__URL" }}
{{- fail "evalgate: do not set EVALGATE__STORE__URL in extraEnv: it would override the store.url the chart renders, and the chart decides the store volume and the replica checks from store.postgres.existingSecret. Set store.postgres.existingSecret (and store.postgres.key) instead" }}
{{- end }}
{{- end }}
{{- if and $pg (not .Values.store.postgres.key) }}
{{- fail "evalgate: store.postgres.key must name the key inside store.postgres.existingSecret" }}
{{- end }}
{{- if and $pg .Values.persistence.enabled }}
{{- fail "evalgate: persistence.enabled keeps the SQLite store on a PVC, but store.postgres.existingSecret puts the PostgreSQL store in force (config.store.path is ignored, no store volume is mounted): set persistence.enabled=false" }}
{{- end }}
{{- if eq .Values.mode "standalone" }}
{{- if and (gt (int .Values.replicaCount) 1) (not $pg) }}
{{- fail (printf "evalgate: replicaCount > 1 needs the PostgreSQL store (store.postgres.existingSecret): replicas do not share a SQLite file (replicaCount is %d; set it to 1, or point store.postgres.existingSecret at a Secret holding the PostgreSQL URL)" (int .Values.replicaCount)) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (include "evalgate.multiReplica" .) (or (kindIs "float64" $pdb.minAvailable) (kindIs "int64" $pdb.minAvailable) (kindIs "int" $pdb.minAvailable)) }}
{{- if ge (int $pdb.minAvailable) (int .Values.replicaCount) }}
{{- fail (printf "evalgate: podDisruptionBudget.minAvailable (%d) must be below replicaCount (%d), or no node can ever be drained" (int $pdb.minAvailable) (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks that fail the render with a clear message. Included by every template that renders
evalgate's pod parts or ConfigMap.
*/}}
{{- define "evalgate.validate" -}}
{{- if not (or .Values.demo .Values.secrets.apiKey.existingSecret) }}
{{- fail "evalgate: the upstream API key is required. Create a Secret (kubectl create secret generic evalgate-valiqor --from-literal=api-key=...) and set secrets.apiKey.existingSecret=evalgate-valiqor (the default; and secrets.apiKey.key if the key is not \"api-key\"), or set demo=true to try the chart without one." }}
{{- end }}
{{- if and .Values.secrets.apiKey.existingSecret (not .Values.secrets.apiKey.key) }}
{{- fail "evalgate: secrets.apiKey.key must name the key inside secrets.apiKey.existingSecret" }}
{{- end }}
{{- if and .Values.secrets.openaiApiKey.existingSecret (not .Values.secrets.openaiApiKey.key) }}
{{- fail "evalgate: secrets.openaiApiKey.key must name the key inside secrets.openaiApiKey.existingSecret" }}
{{- end }}
{{- if or (hasKey .Values.config "auth") (hasKey .Values.config "tenants") }}
{{- fail "evalgate: do not put auth or tenants in config; the chart renders them from the top-level `auth` values" }}
{{- end }}
{{- $valiqor := .Values.config.valiqor | default dict }}
{{- if or (hasKey $valiqor "api_key") (hasKey $valiqor "openai_api_key") }}
{{- fail "evalgate: do not put valiqor.api_key or valiqor.openai_api_key in config; reference existing Secrets with secrets.apiKey / secrets.openaiApiKey" }}
{{- end }}
{{- if eq (include "evalgate.apiPort" .) (include "evalgate.adminPort" .) }}
{{- fail "evalgate: config.server.listen and config.server.admin_listen must use different ports" }}
{{- end }}
{{- if include "evalgate.isLoopback" .Values.config.server.admin_listen }}
{{- fail "evalgate: config.server.admin_listen must not be a loopback address in a pod: the kubelet probes it on the pod IP (use 0.0.0.0:<port>)" }}
{{- end }}
{{- $_ := include "evalgate.storeDir" . }}
{{- $_ := include "evalgate.terminationGracePeriodSeconds" . }}
{{- include "evalgate.validateAuth" . }}
{{- include "evalgate.validateArize" . }}
{{- $listen := include "evalgate.listen" . }}
{{- if and (eq .Values.mode "sidecar") (not (include "evalgate.isLoopback" $listen)) }}
{{- fail (printf "evalgate: in sidecar mode config.server.listen must be a loopback address (got %q): the API is for the application in the same pod only. Use 127.0.0.1:<port> (or leave it empty for 127.0.0.1:8080), or standalone mode to serve other pods" $listen) }}
{{- end }}
{{- if eq .Values.mode "standalone" }}
{{- if include "evalgate.isLoopback" $listen }}
{{- fail "evalgate: in standalone mode config.server.listen must not be a loopback address, or the Service cannot reach it (use 0.0.0.0:<port>, or leave it empty for 0.0.0.0:8080)" }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- if not .Values.networkPolicy.api.from }}
{{- fail "evalgate: networkPolicy.api.from must list at least one peer (an API nobody can reach is of no use); to admit every pod use [{namespaceSelector: {}}], or set networkPolicy.enabled=false" }}
{{- end }}
{{- end }}
{{- if and .Values.persistence.enabled (not (include "evalgate.postgresSecret" .)) (gt (int .Values.replicaCount) 1) }}
{{- fail "evalgate: persistence.enabled needs replicaCount 1: each pod owns its SQLite store, and a ReadWriteOnce volume cannot be shared. For several replicas use the PostgreSQL store (store.postgres.existingSecret) with persistence.enabled=false" }}
{{- end }}
{{- end }}
{{- include "evalgate.validateStore" . }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
TOML rendering. Helm's toToml writes every YAML number as a float ("512.0"), which evalgate's
strict config parser rejects for integer keys, so the chart renders TOML itself.
------------------------------------------------------------------------------------------ */}}

{{/* One TOML value: string, bool, integer, float or array of those. */}}
{{- define "evalgate.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 $v) (floor $v) }}
{{- printf "%d" (int64 $v) }}
{{- else }}
{{- printf "%v" $v }}
{{- end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}
{{- printf "%d" $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $e := $v }}
{{- $items = append $items (include "evalgate.toml.value" $e) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "invalid" $v }}
{{- fail "evalgate: config values must not be null (leave the key out to keep the default)" }}
{{- else }}
{{- fail (printf "evalgate: cannot render a %s as a TOML value" (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* A TOML table body: plain keys first, then sub-tables. Takes (dict "prefix" "" "map" $m). */}}
{{- define "evalgate.toml.table" -}}
{{- $prefix := .prefix }}
{{- $m := .map }}
{{- $keys := keys $m | sortAlpha }}
{{- range $k := $keys }}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" $k) }}
{{- fail (printf "evalgate: invalid config key %q" $k) }}
{{- end }}
{{- $v := index $m $k }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "evalgate.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := $keys }}
{{- $v := index $m $k }}
{{- if kindIs "map" $v }}
{{- $name := $k }}
{{- if $prefix }}{{ $name = printf "%s.%s" $prefix $k }}{{ end }}
{{- $scalars := false }}
{{- range $sv := values $v }}{{ if not (kindIs "map" $sv) }}{{ $scalars = true }}{{ end }}{{ end }}
{{- /* A table holding only sub-tables needs no header of its own. */}}
{{- if or $scalars (empty $v) }}
{{ printf "\n[%s]" $name }}
{{- end }}
{{- include "evalgate.toml.table" (dict "prefix" $name "map" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The effective config.toml: .Values.config plus the secret references managed by the chart.
*/}}
{{- define "evalgate.configToml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $server := get $cfg "server" | default dict }}
{{- $_ := set $server "listen" (include "evalgate.listen" .) }}
{{- $_ := set $cfg "server" $server }}
{{- $valiqor := get $cfg "valiqor" | default dict }}
{{- $dir := trimSuffix "/" .Values.secrets.mountPath }}
{{- if include "evalgate.apiKeySecret" . }}
{{- $_ := set $valiqor "api_key" (printf "file:%s/api-key" $dir) }}
{{- end }}
{{- if .Values.secrets.openaiApiKey.existingSecret }}
{{- $_ := set $valiqor "openai_api_key" (printf "file:%s/openai-api-key" $dir) }}
{{- end }}
{{- $_ := set $cfg "valiqor" $valiqor }}
{{- if include "evalgate.arizeKeySecret" . }}
{{- $arize := get $cfg "arize" | default dict }}
{{- $_ := set $arize "api_key" (printf "file:%s/arize-api-key" $dir) }}
{{- $_ := set $cfg "arize" $arize }}
{{- end }}
{{- if include "evalgate.postgresSecret" . }}
{{- $store := get $cfg "store" | default dict }}
{{- $_ := set $store "url" (printf "file:%s/store-url" $dir) }}
{{- $_ := set $cfg "store" $store }}
{{- end }}
{{- $auth := dict "mode" (include "evalgate.authMode" .) "allow_unauthenticated" .Values.auth.allowUnauthenticated }}
{{- if or .Values.auth.tenantsFile.existingConfigMap .Values.auth.tenantsFile.existingSecret }}
{{- $_ := set $auth "tenants_file" (printf "%s/tenants.toml" $dir) }}
{{- end }}
{{- $_ := set $cfg "auth" $auth }}
{{- printf "# evalgate config.toml, rendered by the evalgate Helm chart from .Values.config and\n# .Values.auth. Reference for every key: config/default.toml. Secrets are file: references to\n# the Secret mounts under %s." $dir }}
{{- include "evalgate.toml.table" (dict "prefix" "" "map" $cfg) }}
{{- /* [[tenants]] come last: after an array-of-tables header every key belongs to it. */}}
{{- range $t := .Values.auth.tenants }}
{{- $tdir := printf "%s/tenants/%s" $dir $t.name }}
{{- $tokens := list }}
{{- range $k := $t.tokenKeys | default list }}
{{- $tokens = append $tokens (printf "file:%s/%s" $tdir $k) }}
{{- end }}
{{- range $h := $t.tokenSha256 | default list }}
{{- $tokens = append $tokens (printf "sha256:%s" $h) }}
{{- end }}
{{ printf "\n[[tenants]]" }}
name = {{ include "evalgate.toml.value" $t.name }}
tokens = {{ include "evalgate.toml.value" $tokens }}
{{- with $t.valiqorApiKeyKey }}
valiqor_api_key = {{ include "evalgate.toml.value" (printf "file:%s/%s" $tdir .) }}
{{- end }}
{{- with $t.openaiApiKeyKey }}
openai_api_key = {{ include "evalgate.toml.value" (printf "file:%s/%s" $tdir .) }}
{{- end }}
{{- with $t.arizeApiKeyKey }}
arize_api_key = {{ include "evalgate.toml.value" (printf "file:%s/%s" $tdir .) }}
{{- end }}
{{- range $pair := list (list "requestsPerSecond" "requests_per_second") (list "burst" "burst") (list "maxActiveJobs" "max_active_jobs") }}
{{- $v := index $t (index $pair 0) }}
{{- if not (kindIs "invalid" $v) }}
{{ index $pair 1 }} = {{ include "evalgate.toml.value" $v }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}

{{/* ---------------------------------------------------------------------------------------
Pod parts. These are what a parent chart includes to run evalgate inside its own pod.
------------------------------------------------------------------------------------------ */}}

{{/* Pod annotations: checksum/config rolls the pod when config.toml changes. */}}
{{- define "evalgate.podAnnotations" -}}
checksum/config: {{ include "evalgate.configToml" . | sha256sum }}
{{- end }}

{{/* The evalgate container (a map; put it in a containers / initContainers list). */}}
{{- define "evalgate.container" -}}
{{- include "evalgate.validate" . -}}
name: evalgate
image: {{ include "evalgate.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if or .Values.demo .Values.extraArgs }}
args:
  {{- if .Values.demo }}
  - --demo
  {{- end }}
  {{- range .Values.extraArgs }}
  - {{ . | quote }}
  {{- end }}
{{- end }}
env:
  # config.toml from the ConfigMap.
  - name: EVALGATE_CONFIG
    value: /etc/evalgate/config.toml
  # The image sets these three for `docker run`; environment beats the config file, so they
  # are pinned to the config values here to keep config.toml authoritative.
  - name: EVALGATE__SERVER__LISTEN
    value: {{ include "evalgate.listen" . | quote }}
  - name: EVALGATE__SERVER__ADMIN_LISTEN
    value: {{ .Values.config.server.admin_listen | toString | quote }}
  - name: EVALGATE__STORE__PATH
    value: {{ .Values.config.store.path | toString | quote }}
  {{- with include "evalgate.arizeListen" . }}
  # The Arize tasks API listener (config.arize.listen), pinned the same way.
  - name: EVALGATE__ARIZE__LISTEN
    value: {{ . | quote }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  - name: http
    containerPort: {{ include "evalgate.apiPort" . }}
    protocol: TCP
  - name: admin
    containerPort: {{ include "evalgate.adminPort" . }}
    protocol: TCP
  {{- if include "evalgate.arizeListen" . }}
  - name: arize
    containerPort: {{ include "evalgate.arizePort" . }}
    protocol: TCP
  {{- end }}
{{- with .Values.probes.startup }}
{{- if .enabled }}
startupProbe:
  httpGet:
    path: /livez
    port: admin
  periodSeconds: {{ .periodSeconds }}
  timeoutSeconds: {{ .timeoutSeconds }}
  failureThreshold: {{ .failureThreshold }}
{{- end }}
{{- end }}
{{- with .Values.probes.liveness }}
{{- if .enabled }}
livenessProbe:
  httpGet:
    path: /livez
    port: admin
  periodSeconds: {{ .periodSeconds }}
  timeoutSeconds: {{ .timeoutSeconds }}
  failureThreshold: {{ .failureThreshold }}
{{- end }}
{{- end }}
{{- with .Values.probes.readiness }}
{{- if .enabled }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: {{ .periodSeconds }}
  timeoutSeconds: {{ .timeoutSeconds }}
  failureThreshold: {{ .failureThreshold }}
{{- end }}
{{- end }}
{{- if gt (int .Values.preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .Values.preStopSleepSeconds }}
{{- end }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: evalgate-config
    mountPath: /etc/evalgate
    readOnly: true
  {{- if not (include "evalgate.postgresSecret" .) }}
  # The SQLite store (config.store.path); none with the PostgreSQL store.
  - name: evalgate-store
    mountPath: {{ include "evalgate.storeDir" . }}
  {{- end }}
  - name: evalgate-tmp
    mountPath: /tmp
  {{- if include "evalgate.hasSecrets" . }}
  - name: evalgate-secrets
    mountPath: {{ trimSuffix "/" .Values.secrets.mountPath }}
    readOnly: true
  {{- end }}
{{- end }}

{{/*
The evalgate container as a sidecar. Takes (dict "root" $ctx "native" bool):
  native=true:  put it under initContainers (restartPolicy: Always; Kubernetes >= 1.29). It
                starts before the app containers (which wait for its startup probe) and stops
                after them.
  native=false: put it under containers (classic sidecar, any Kubernetes version).
*/}}
{{- define "evalgate.sidecar" -}}
{{- include "evalgate.container" .root }}
{{- if .native }}
restartPolicy: Always
{{- end }}
{{- end }}

{{/* Non-empty when at least one secret is mounted. */}}
{{- define "evalgate.hasSecrets" -}}
{{- $file := .Values.auth.tenantsFile }}
{{- if or (include "evalgate.apiKeySecret" .) .Values.secrets.openaiApiKey.existingSecret (include "evalgate.arizeKeySecret" .) (include "evalgate.postgresSecret" .) .Values.extraSecretMounts $file.existingConfigMap $file.existingSecret }}true{{ end }}
{{- range .Values.auth.tenants }}{{ if .existingSecret }}true{{ end }}{{ end }}
{{- end }}

{{/* The pod volumes evalgate's container mounts (list items). */}}
{{- define "evalgate.volumes" -}}
- name: evalgate-config
  configMap:
    name: {{ include "evalgate.configMapName" . }}
{{- if not (include "evalgate.postgresSecret" .) }}
- name: evalgate-store
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "evalgate.pvcName" . }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.storeEmptyDir.sizeLimit }}
  {{- end }}
{{- end }}
- name: evalgate-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if include "evalgate.hasSecrets" . }}
- name: evalgate-secrets
  projected:
    # 0444: readable by the evalgate user without relying on the pod's fsGroup.
    defaultMode: 292
    sources:
      {{- with include "evalgate.apiKeySecret" . }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $.Values.secrets.apiKey.key }}
              path: api-key
      {{- end }}
      {{- with .Values.secrets.openaiApiKey }}
      {{- if .existingSecret }}
      - secret:
          name: {{ .existingSecret }}
          items:
            - key: {{ .key }}
              path: openai-api-key
      {{- end }}
      {{- end }}
      {{- with include "evalgate.arizeKeySecret" . }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $.Values.secrets.arizeApiKey.key }}
              path: arize-api-key
      {{- end }}
      {{- with include "evalgate.postgresSecret" . }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $.Values.store.postgres.key }}
              path: store-url
      {{- end }}
      {{- /* Each tenant's keys under tenants/<name>/ (evalgate re-reads them when the kubelet updates the Secret). */}}
      {{- range $t := .Values.auth.tenants }}
      {{- if $t.existingSecret }}
      - secret:
          name: {{ $t.existingSecret }}
          items:
            {{- range $k := include "evalgate.tenantKeys" $t | fromJsonArray }}
            - key: {{ $k }}
              path: tenants/{{ $t.name }}/{{ $k }}
            {{- end }}
      {{- end }}
      {{- end }}
      {{- with .Values.auth.tenantsFile }}
      {{- if .existingConfigMap }}
      - configMap:
          name: {{ .existingConfigMap }}
          items:
            - key: {{ .key }}
              path: tenants.toml
      {{- else if .existingSecret }}
      - secret:
          name: {{ .existingSecret }}
          items:
            - key: {{ .key }}
              path: tenants.toml
      {{- end }}
      {{- end }}
      {{- range .Values.extraSecretMounts }}
      - secret:
          name: {{ .secretName }}
          {{- if hasKey . "optional" }}
          optional: {{ .optional }}
          {{- end }}
          items:
            {{- range .items }}
            - key: {{ .key }}
              path: {{ .path }}
            {{- end }}
      {{- end }}
{{- end }}
{{- end }}
