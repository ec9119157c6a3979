#!/usr/bin/env bash
# Upstream polls of one Arize task run (the Arize emulator's run lasts RUN_SECONDS, 600 by default),
# with the official SDK (arize==8.61.0, `wait_for_run` defaults: poll every 5 s, timeout 600 s):
#   a  1 SDK watcher directly against Arize (the baseline)
#   b  1 SDK watcher through evalgate
#   c  WATCHERS (100) SDK watchers, threads, through evalgate on the same run
#   d  a managed run: POST /v1/jobs {"kind": "arize_task_run"}, GET /v1/jobs/{id}?wait= until it ends
# The scenarios run in parallel, each with its own emulator, evalgate (store in a temp dir) and
# counting proxy, all on loopback ports chosen by the OS; the whole run takes RUN_SECONDS plus
# about a minute. benches/arize_polls.py explains what is counted and how. Prints a Markdown table.
#
#   bash benches/arize_polls.sh                              # the full 10-minute measurement
#   RUN_SECONDS=20 WATCHERS=10 bash benches/arize_polls.sh   # a quick trial of the harness
#
# Environment: PYTHON (a python with arize==8.61.0; default: .venv-sdk, made as tests/sdk/run.sh
# makes it), SKIP_BUILD=1 (use the binaries in target/debug as they are), SCENARIOS ("a b c d"),
# RUN_SECONDS (600), WATCHERS (100). Per-scenario output, JSON results and the emulator and
# evalgate logs are kept in target/arize-polls/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS=${RUN_SECONDS:-600}
WATCHERS=${WATCHERS:-100}
SCENARIOS=${SCENARIOS:-a b c d}

if [ -z "${PYTHON:-}" ]; then
  VENV=.venv-sdk
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "arize==8.61.0"
  PYTHON="$VENV/bin/python"
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --locked --quiet -p evalgate -p valiqor-emulator --bin evalgate --bin valiqor-emulator
fi
export EVALGATE_BIN="$PWD/target/debug/evalgate" EMULATOR_BIN="$PWD/target/debug/valiqor-emulator"

OUT="target/arize-polls/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
# Each scenario is a session of its own (setsid), bounded by `timeout`, which signals its whole
# process group: the python driver with its emulator and evalgate.
LIMIT=$((RUN_SECONDS + 420))
declare -A PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "${PIDS[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for s in $SCENARIOS; do
  setsid timeout -k 30 "$LIMIT" "$PYTHON" benches/arize_polls.py run --scenario "$s" \
    --run-seconds "$RUN_SECONDS" --watchers "$WATCHERS" --out "$OUT/$s.json" --logs "$OUT/logs" \
    >"$OUT/$s.out" 2>&1 &
  PIDS[$s]=$!
done
echo "scenarios ${SCENARIOS} running (about $((RUN_SECONDS / 60 + 1)) min); output in $OUT" >&2

failed=""
for s in $SCENARIOS; do
  if ! wait "${PIDS[$s]}"; then
    failed="$failed $s"
    echo "--- scenario $s failed; the end of its output:" >&2
    tail -n 20 "$OUT/$s.out" >&2
  fi
  unset "PIDS[$s]"
done

results=()
for s in $SCENARIOS; do
  [ -s "$OUT/$s.json" ] && results+=("$OUT/$s.json")
done
status=0
if [ ${#results[@]} -gt 0 ]; then
  "$PYTHON" benches/arize_polls.py table "${results[@]}" | tee "$OUT/table.md" || status=1
fi
if [ -n "$failed" ]; then
  echo "failed:$failed" >&2
  status=1
fi
exit "$status"
