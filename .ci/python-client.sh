#!/usr/bin/env bash
# The API from Python: the client package in clients/python is regenerated
# from proto/ with its pinned generators (and must equal what is committed),
# installed with pip into a throw-away virtualenv, type-checked with mypy
# against its .pyi stubs, and run against the pypes binary started on free
# ports over a fresh data directory: the quickstart (a Session posted to,
# watched live, and the tenant feed followed) and clients/python/client.py.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
. .ci/lib.sh

# The committed generated code is what the generators make from proto/.
bash clients/python/generate.sh > /dev/null
check_generated clients/python/src clients/python/generate.sh

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check ./clients/python "mypy==1.*"
"$work/venv/bin/python" -m mypy clients/python/examples/quickstart.py

# Every service of the API has its stub on Client.
"$work/venv/bin/python" - <<'PY'
import inspect
from pypes.api.v1 import api_pb2_grpc, integration_pb2_grpc, region_pb2_grpc
from pypes_client import Client
c = Client("127.0.0.1:1", "key")
have = {type(v) for v in vars(c).values()}
stubs = [cls for m in (api_pb2_grpc, integration_pb2_grpc, region_pb2_grpc)
         for name, cls in inspect.getmembers(m, inspect.isclass) if name.endswith("ServiceStub")]
missing = sorted(s.__name__ for s in stubs if s not in have)
assert not missing, f"pypes_client.Client has no stub for {missing}"
print(f"python client: {len(stubs)} services, each a Client attribute")
PY

cargo build --quiet -p server --bin pypes
start_pypes "$work"
key="$("$work/venv/bin/python" - "$grpc" "$admin" <<'PY'
import sys
from pypes_client import Client, api_pb2 as pb
with Client(sys.argv[1], sys.argv[2]) as c:
    c.wait_ready()
    print(c.tenants.CreateTenant(pb.CreateTenantRequest(name="Quickstart")).api_key)
PY
)"
PYPES_API_KEY="$key" "$work/venv/bin/python" clients/python/examples/quickstart.py "$grpc"
"$work/venv/bin/python" clients/python/client.py "$grpc" "$admin" clients/python/src
