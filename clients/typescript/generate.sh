#!/usr/bin/env bash
# Regenerates src/gen from proto/ with ts-proto (from npm, pinned in
# package-lock.json) driven by the protoc that grpcio-tools ships (from
# PyPI, pinned here: no protoc download is needed). CI runs it and fails if
# the committed files differ (.ci/typescript-client.sh).
set -euo pipefail
cd "$(dirname "$0")"
[ -x node_modules/.bin/protoc-gen-ts_proto ] || npm ci --no-audit --no-fund --ignore-scripts > /dev/null
py="${PYTHON:-python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "grpcio-tools==1.85.1"
rm -rf src/gen
mkdir -p src/gen
"$venv/bin/python" -m grpc_tools.protoc -I ../../proto \
    --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
    --ts_proto_out=src/gen \
    --ts_proto_opt=outputServices=nice-grpc,outputServices=generic-definitions,useExactTypes=false,esModuleInterop=true,env=node,useOptionals=messages,forceLong=string \
    ../../proto/pypes/api/v1/api.proto ../../proto/pypes/api/v1/integration.proto ../../proto/pypes/api/v1/region.proto
