#!/usr/bin/env bash
# Build the evalgate image with podman on a machine that cannot pull images, then smoke-test it.
#
#   sudo bash scripts/podman-smoke.sh            # build stand-ins (first run), build, test
#   SMOKE_SKIP_BUILD=1 bash scripts/podman-smoke.sh   # test an image built before
#
# The Dockerfile is used unchanged. Its two base images cannot be pulled here, so this script
# builds local stand-ins under the same names (built once, then reused; SMOKE_REBUILD_BASES=1
# rebuilds them):
#   rust:<RUST_VERSION>-slim-bookworm        Debian bookworm (debootstrap) + gcc + libc6-dev, with
#                                            the host's rustup toolchain <RUST_VERSION> copied in
#   gcr.io/distroless/cc-debian12:nonroot    glibc, libgcc_s, libstdc++, CA certificates, passwd
#                                            with nonroot (65532), no shell: like distroless cc
#
# Needs: root, Debian 12, apt access to Debian's package archive (debootstrap and the builder's
# apt-get), access to the crate registry from inside the build (cargo), rustup with the toolchain
# named in rust-toolchain.toml, curl. podman, buildah, runc and debootstrap are installed when
# missing.
#
# Tests, each against a container on published loopback ports:
#   1. `--demo` with a read-only root filesystem, all capabilities dropped, no-new-privileges:
#      /readyz and /livez answer 200, the API port answers HTTP, the image HEALTHCHECK passes,
#      `podman stop` (SIGTERM) ends it with exit code 0 within the grace period. The image's API
#      listens on 0.0.0.0, so this local trial opts in with EVALGATE__AUTH__ALLOW_UNAUTHENTICATED.
#   2. Kubernetes-like: the config.toml the Helm chart renders (tokens mode, one tenant), mounted
#      read-only, the API key and the tenant's token as secret files laid out the way the kubelet
#      lays out a projected volume (..data symlink), the store on a volume: /readyz answers 200,
#      the SQLite file is created, the API answers 401 without the token and not 401 with it,
#      and after the kubelet-style swap of ..data to a rotated token the new token is accepted
#      and the old one refused, without a restart.
#      (Skipped when helm is not found; `bash .ci/packaging.sh` installs it into .ci/bin/.)
#
# Environment:
#   SMOKE_WORKDIR      scratch dir (default: ${TMPDIR:-/tmp}/evalgate-podman-smoke)
#   SMOKE_IMAGE        image to build and test (default: localhost/evalgate:smoke)
#   SMOKE_API_PORT     published API port on 127.0.0.1 (default: 18080)
#   SMOKE_ADMIN_PORT   published admin port on 127.0.0.1 (default: 19090)
#   SMOKE_CA_BUNDLE    CA bundle mounted into the build for TLS to the crate registry
#                      (default: /etc/ssl/certs/ca-certificates.crt; never copied into the image)
#   DEBIAN_MIRROR      Debian mirror for debootstrap (default: the first from /etc/apt/sources.list*)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WORKDIR="${SMOKE_WORKDIR:-${TMPDIR:-/tmp}/evalgate-podman-smoke}"
IMAGE="${SMOKE_IMAGE:-localhost/evalgate:smoke}"
API_PORT="${SMOKE_API_PORT:-18080}"
ADMIN_PORT="${SMOKE_ADMIN_PORT:-19090}"
CA_BUNDLE="${SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
RUST_VERSION="$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)"
BUILDER_IMAGE="docker.io/library/rust:${RUST_VERSION}-slim-bookworm"
RUNTIME_IMAGE="gcr.io/distroless/cc-debian12:nonroot"
BASE_IMAGE="localhost/evalgate-smoke/bookworm-base:latest"
CONTAINER=evalgate-smoke

log() { printf '==> %s\n' "$*"; }
die() { printf 'podman-smoke: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (podman with runc, debootstrap)"
[ -n "$RUST_VERSION" ] || die "no 'ARG RUST_VERSION=' in Dockerfile"
command -v curl >/dev/null || die "curl is needed"

missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$WORKDIR"
chmod 755 "$WORKDIR"
# crun fails on hybrid cgroups and default rlimits need CAP_SYS_RESOURCE: use runc and lower limits.
cat >"$WORKDIR/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORKDIR/containers.conf"

# --- base images -----------------------------------------------------------------------------

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # deb822 "URIs:" lines and one-line "deb URI suite" entries; the first non-security archive.
  local f files=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && files+=("$f")
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  cat "${files[@]}" \
    | sed -n -e 's/^URIs: *\([^ ]*\).*/\1/p' -e 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' \
    | grep -v security | grep -E '/debian/?$' | head -n1 || true
}

build_base() {
  local mirror rootfs="$WORKDIR/rootfs"
  mirror="$(debian_mirror)"
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*; set DEBIAN_MIRROR"
  log "debootstrap bookworm from $mirror (about a minute)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$WORKDIR/debootstrap.log"
  tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null 2>&1
}

# Stand-in for the official Rust image: same env layout (RUSTUP_HOME, CARGO_HOME, PATH).
build_builder_standin() {
  local sysroot toolchain
  sysroot="$(rustup run "$RUST_VERSION" rustc --print sysroot)" \
    || die "rustup has no toolchain $RUST_VERSION (rustup toolchain install $RUST_VERSION)"
  toolchain="$(basename "$sysroot")"   # e.g. 1.95.0-x86_64-unknown-linux-gnu
  log "builder stand-in $BUILDER_IMAGE from $sysroot"
  mkdir -p "$WORKDIR/builder"
  cat >"$WORKDIR/builder/Containerfile" <<EOF
FROM $BASE_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$RUST_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /usr/local/rustup/toolchains/$toolchain /usr/local/cargo/bin \\
 && tar -C /toolchain --exclude=./share/doc -cf - . | tar -C /usr/local/rustup/toolchains/$toolchain -xf - \\
 && for b in cargo rustc rustdoc; do ln -s /usr/local/rustup/toolchains/$toolchain/bin/\$b /usr/local/cargo/bin/\$b; done \\
 && cargo --version && rustc --version
EOF
  podman build --pull=never --format docker -v "$sysroot:/toolchain:ro" \
    -t "$BUILDER_IMAGE" "$WORKDIR/builder" >"$WORKDIR/builder.log" 2>&1 \
    || { tail -n 30 "$WORKDIR/builder.log"; die "builder stand-in failed"; }
}

# Stand-in for distroless cc (nonroot): the runtime files only, no shell, no package manager.
build_runtime_standin() {
  local rootfs="$WORKDIR/rootfs" dl="$WORKDIR/distroless" lib=usr/lib/x86_64-linux-gnu f
  log "runtime stand-in $RUNTIME_IMAGE"
  rm -rf "$dl"
  mkdir -p "$dl/$lib" "$dl/usr/lib64" "$dl/etc/ssl/certs" "$dl/tmp" "$dl/home/nonroot" "$dl/var/lib"
  ln -s usr/lib "$dl/lib"
  ln -s usr/lib64 "$dl/lib64"
  cp -a "$rootfs/usr/lib64/ld-linux-x86-64.so.2" "$dl/usr/lib64/"
  for f in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 \
    libgcc_s.so.1 'libstdc++.so.6*' libz.so.1 'libz.so.1.*'; do
    # shellcheck disable=SC2086 # the patterns are globs on purpose
    cp -a "$rootfs/$lib/"$f "$dl/$lib/"
  done
  cp -a "$rootfs/etc/ssl/certs/ca-certificates.crt" "$dl/etc/ssl/certs/"
  cp -a "$rootfs/etc/nsswitch.conf" "$dl/etc/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dl/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$dl/etc/group"
  chmod 1777 "$dl/tmp"
  chown 65532:65532 "$dl/home/nonroot"
  tar -C "$dl" -c . | podman import \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - "$RUNTIME_IMAGE" >/dev/null 2>&1
}

if [ "${SMOKE_SKIP_BUILD:-0}" != 1 ]; then
  if [ "${SMOKE_REBUILD_BASES:-0}" = 1 ] || ! podman image exists "$BASE_IMAGE" || [ ! -d "$WORKDIR/rootfs" ]; then
    build_base
  fi
  if [ "${SMOKE_REBUILD_BASES:-0}" = 1 ] || ! podman image exists "$BUILDER_IMAGE"; then
    build_builder_standin
  fi
  if [ "${SMOKE_REBUILD_BASES:-0}" = 1 ] || ! podman image exists "$RUNTIME_IMAGE"; then
    build_runtime_standin
  fi

  # --- the image ---------------------------------------------------------------------------
  [ -f "$CA_BUNDLE" ] || die "CA bundle $CA_BUNDLE not found (set SMOKE_CA_BUNDLE)"
  log "podman build $IMAGE (the first build compiles every dependency: several minutes)"
  start=$(date +%s)
  # --format docker: OCI images drop HEALTHCHECK. The CA bundle is a build-time mount only.
  podman build --pull=never --format docker \
    -v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$IMAGE" -f Dockerfile . >"$WORKDIR/build.log" 2>&1 \
    || { tail -n 40 "$WORKDIR/build.log"; die "podman build failed (log: $WORKDIR/build.log)"; }
  log "built in $(( $(date +%s) - start )) s"
fi

podman image exists "$IMAGE" || die "no image $IMAGE"
log "image: $(podman image inspect --format '{{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}' "$IMAGE")"

# --- smoke tests -----------------------------------------------------------------------------

cleanup() { podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1 || true; }
# Also drop a container left behind by an interrupted run.
trap cleanup EXIT
failures=0
ok() { printf 'ok      %s\n' "$*"; }
bad() { printf 'FAILED  %s\n' "$*"; failures=$((failures + 1)); }

# wait_200 URL SECONDS: poll until URL answers 200.
wait_200() {
  local url="$1" deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" = 200 ] && return 0
    if [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" != true ]; then
      return 1
    fi
    sleep 0.5
  done
  return 1
}

hardening=(--read-only --cap-drop=ALL --security-opt=no-new-privileges)
ports=(-p "127.0.0.1:$API_PORT:8080" -p "127.0.0.1:$ADMIN_PORT:9090")

log "test 1: --demo (read-only root, no capabilities)"
cleanup
# podman's stderr (healthcheck timers need systemd, absent in many build containers) goes to a log.
podman run -d --name "$CONTAINER" "${hardening[@]}" "${ports[@]}" \
  -e EVALGATE__AUTH__ALLOW_UNAUTHENTICATED=true "$IMAGE" --demo >/dev/null 2>>"$WORKDIR/podman.log"
if wait_200 "http://127.0.0.1:$ADMIN_PORT/readyz" 60; then ok "/readyz 200 on 127.0.0.1:$ADMIN_PORT"; else bad "/readyz did not answer 200"; fi
if wait_200 "http://127.0.0.1:$ADMIN_PORT/livez" 5; then ok "/livez 200"; else bad "/livez did not answer 200"; fi
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$API_PORT/" || true)"
if [ "$code" != 000 ]; then ok "API port answers HTTP (GET / -> $code)"; else bad "API port does not answer"; fi
if podman healthcheck run "$CONTAINER" >/dev/null 2>&1; then ok "image HEALTHCHECK (evalgate healthcheck .../livez)"; else bad "image HEALTHCHECK failed"; fi
user="$(podman inspect --format '{{.Config.User}}' "$CONTAINER")"
if [ "$user" = "65532:65532" ]; then ok "runs as 65532:65532"; else bad "user is '$user'"; fi
start=$(date +%s)
podman stop -t 30 "$CONTAINER" >/dev/null 2>>"$WORKDIR/podman.log"
took=$(( $(date +%s) - start ))
exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
if [ "$exit_code" = 0 ] && [ "$took" -lt 30 ]; then ok "SIGTERM: exit 0 after ${took} s"; else bad "SIGTERM: exit $exit_code after ${took} s"; fi
if [ "$failures" -gt 0 ]; then podman logs "$CONTAINER" 2>&1 | tail -n 20; fi

HELM="$(command -v helm || true)"
if [ -z "$HELM" ] && [ -x "$ROOT/.ci/bin/helm" ]; then HELM="$ROOT/.ci/bin/helm"; fi
if [ -n "$HELM" ]; then
  log "test 2: config.toml from the Helm chart, tenant token, secret files, store volume"
  k8s="$WORKDIR/k8s"
  secrets="$k8s/secrets"
  old_token=vq_smoke_tenant_token_0123456789
  new_token=vq_smoke_tenant_token_rotated_42
  rm -rf "$k8s"; mkdir -p "$secrets/..v1/tenants/smoke" "$k8s/store"
  # The kubelet's layout of a projected volume: files in a timestamped directory, ..data
  # pointing at it, and top-level entries pointing through ..data.
  printf 'smoke-test-key\n' >"$secrets/..v1/api-key"
  printf '%s\n' "$old_token" >"$secrets/..v1/tenants/smoke/token"
  ln -s ..v1 "$secrets/..data"
  ln -s ..data/api-key "$secrets/api-key"
  ln -s ..data/tenants "$secrets/tenants"
  chmod -R a+rX "$secrets"
  chown 65532:65532 "$k8s/store"
  "$HELM" template evalgate helm/evalgate --show-only templates/configmap.yaml \
    --set 'auth.tenants[0].name=smoke' --set 'auth.tenants[0].existingSecret=evalgate-smoke' \
    --set 'auth.tenants[0].tokenKeys[0]=token' >"$k8s/configmap.yaml"
  # The ConfigMap's config.toml block (4-space indented under "config.toml: |").
  sed -n '/^  config.toml: |/,$p' "$k8s/configmap.yaml" | tail -n +2 | sed 's/^    //' >"$k8s/config.toml"
  cleanup
  podman run -d --name "$CONTAINER" "${hardening[@]}" "${ports[@]}" \
    -e EVALGATE_CONFIG=/etc/evalgate/config.toml \
    -v "$k8s/config.toml:/etc/evalgate/config.toml:ro" \
    -v "$k8s/secrets:/var/run/secrets/evalgate:ro" \
    -v "$k8s/store:/var/lib/evalgate" \
    "$IMAGE" >/dev/null 2>>"$WORKDIR/podman.log"
  if wait_200 "http://127.0.0.1:$ADMIN_PORT/readyz" 60; then ok "/readyz 200 with the chart's config"; else bad "/readyz did not answer 200 with the chart's config"; fi
  if [ -f "$k8s/store/evalgate.db" ]; then ok "store created on the volume (evalgate.db)"; else bad "no evalgate.db on the store volume"; fi
  # api_status TOKEN: HTTP status of GET /v1/jobs with that bearer token ("" = no header).
  api_status() {
    local auth=()
    [ -n "$1" ] && auth=(-H "Authorization: Bearer $1")
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${auth[@]}" "http://127.0.0.1:$API_PORT/v1/jobs" || true
  }
  code="$(api_status "")"
  if [ "$code" = 401 ]; then ok "API without a token -> 401"; else bad "API without a token -> $code, want 401"; fi
  code="$(api_status "$old_token")"
  if [ "$code" != 401 ] && [ "$code" != 000 ]; then ok "API with the tenant's token -> $code"; else bad "API with the tenant's token -> $code"; fi
  # Rotate the way the kubelet does after a Secret update: new directory, atomic ..data swap.
  mkdir -p "$secrets/..v2/tenants/smoke"
  cp "$secrets/..v1/api-key" "$secrets/..v2/api-key"
  printf '%s\n' "$new_token" >"$secrets/..v2/tenants/smoke/token"
  chmod -R a+rX "$secrets/..v2"
  ln -s ..v2 "$secrets/..data_tmp" && mv -T "$secrets/..data_tmp" "$secrets/..data" && rm -rf "$secrets/..v1"
  deadline=$(( $(date +%s) + 30 ))
  while [ "$(api_status "$new_token")" = 401 ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
  code="$(api_status "$new_token")"; old_code="$(api_status "$old_token")"
  if [ "$code" != 401 ] && [ "$code" != 000 ] && [ "$old_code" = 401 ]; then
    ok "rotated token accepted and the old one refused without a restart"
  else
    bad "after rotation: new token -> $code, old token -> $old_code (want not 401, 401)"
  fi
  if podman exec "$CONTAINER" /usr/local/bin/evalgate check-config >"$k8s/check-config.txt" 2>&1 \
    && ! grep -q -e smoke-test-key -e "$new_token" "$k8s/check-config.txt"; then
    ok "check-config accepts it and masks the key and the token"
  else
    bad "check-config: $(head -c 400 "$k8s/check-config.txt")"
  fi
  podman stop -t 30 "$CONTAINER" >/dev/null 2>>"$WORKDIR/podman.log"
  if [ "$failures" -gt 0 ]; then podman logs "$CONTAINER" 2>&1 | tail -n 20; fi
else
  log "test 2 skipped: no helm (run bash .ci/packaging.sh once to install it into .ci/bin/)"
fi

echo
if [ "$failures" -gt 0 ]; then die "$failures smoke test(s) failed"; fi
log "podman smoke test passed ($IMAGE)"
