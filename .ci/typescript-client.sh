#!/usr/bin/env bash
# The API from TypeScript/Node: clients/typescript is installed from the
# lock file (npm ci), regenerated from proto/ with its pinned ts-proto (and
# must equal what is committed), compiled with tsc in strict mode, and its
# quickstart (a Session posted to, watched live, and the tenant feed
# followed) run against the pypes binary on free ports over a fresh data
# directory.
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

(cd clients/typescript && npm ci --no-audit --no-fund --ignore-scripts > /dev/null)
bash clients/typescript/generate.sh
check_generated clients/typescript/src clients/typescript/generate.sh
(cd clients/typescript && npx tsc -p .)

cargo build --quiet -p server --bin pypes
start_pypes "$work"
key="$(cd clients/typescript && node -e '
const { connect } = require("./dist/src");
const c = connect(process.argv[1], process.argv[2]);
c.tenants.createTenant({ name: "TypeScript quickstart" }).then((t) => { console.log(t.apiKey); c.close(); },
  (e) => { console.error(e); process.exit(1); });
' "$grpc" "$admin")"
(cd clients/typescript && PYPES_API_KEY="$key" node dist/examples/quickstart.js "$grpc")
