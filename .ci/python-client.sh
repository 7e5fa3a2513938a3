#!/usr/bin/env bash
# The API from another language: installs grpcio from PyPI into a throw-away
# virtualenv, generates stubs from proto/, starts the pypes binary on free
# ports over a fresh data directory, and runs clients/python/client.py.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "grpcio==1.*" "grpcio-tools==1.*"
mkdir -p "$work/stubs"
"$work/venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work/stubs" --grpc_python_out="$work/stubs" proto/pypes/api/v1/api.proto
touch "$work/stubs/pypes/__init__.py" "$work/stubs/pypes/api/__init__.py" "$work/stubs/pypes/api/v1/__init__.py"

cargo build --quiet -p server --bin pypes
. .ci/lib.sh
start_pypes "$work"
"$work/venv/bin/python" clients/python/client.py "$grpc" "$admin" "$work/stubs"
