#!/usr/bin/env bash
# Runs the official-SDK tests: a venv with valiqor==0.0.21 and arize==8.61.0, then
# tests/sdk/test_sdk.py and tests/sdk/test_arize_sdk.py against freshly built evalgate and
# valiqor-emulator binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-sdk
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "valiqor==0.0.21" "arize==8.61.0"
# Two workspace packages: the service and the emulator (crates/valiqor-emulator).
cargo build --locked --quiet -p evalgate -p valiqor-emulator --bin evalgate --bin valiqor-emulator
EVALGATE_BIN="$PWD/target/debug/evalgate" EMULATOR_BIN="$PWD/target/debug/valiqor-emulator" \
  "$VENV/bin/python" tests/sdk/test_sdk.py
EVALGATE_BIN="$PWD/target/debug/evalgate" EMULATOR_BIN="$PWD/target/debug/valiqor-emulator" \
  "$VENV/bin/python" tests/sdk/test_arize_sdk.py
