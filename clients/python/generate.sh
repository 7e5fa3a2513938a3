#!/usr/bin/env bash
# Regenerates the Python modules and their type stubs from proto/ into
# src/pypes/api/v1 with pinned generators (grpcio-tools for the messages
# and stubs, mypy-protobuf for the .pyi type stubs). CI runs it and fails
# if the committed files differ (.ci/python-client.sh).
set -euo pipefail
cd "$(dirname "$0")"
py="${PYTHON:-python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements-generate.txt
rm -rf src/pypes
mkdir -p src/pypes/api/v1
PATH="$venv/bin:$PATH" "$venv/bin/python" -m grpc_tools.protoc -I ../../proto \
    --python_out=src --grpc_python_out=src --mypy_out=src --mypy_grpc_out=src \
    ../../proto/pypes/api/v1/api.proto ../../proto/pypes/api/v1/integration.proto ../../proto/pypes/api/v1/region.proto
for d in src/pypes src/pypes/api src/pypes/api/v1; do
    printf '"""Generated from proto/ by clients/python/generate.sh; do not edit."""\n' > "$d/__init__.py"
done
touch src/pypes/py.typed
