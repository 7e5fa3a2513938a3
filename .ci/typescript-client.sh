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
# Every service of the API has its client on connect()'s result.
(cd clients/typescript && node -e '
const { connect } = require("./dist/src");
const c = connect("127.0.0.1:1", "key");
const lower = (n) => n[0].toLowerCase() + n.slice(1);
const defs = ["api", "integration", "region"].flatMap((m) =>
  Object.entries(require("./dist/src/gen/pypes/api/v1/" + m)).filter(([n]) => n.endsWith("ServiceDefinition")));
const missing = defs.filter(([, d]) => !Object.values(c).some((client) =>
  typeof client === "object" && Object.keys(d.methods).every((m) => typeof client[lower(m)] === "function" || typeof client[m] === "function")));
c.close();
if (missing.length) { console.error("connect() has no client for", missing.map(([n]) => n)); process.exit(1); }
console.log(`typescript client: ${defs.length} services, each a client of connect()`);
')

cargo build --quiet -p server --bin pypes
start_pypes "$work"
key="$(cd clients/typescript && node -e '
const { connect } = require("./dist/src");
const c = connect(process.argv[1], process.argv[2]);
c.tenants.createTenant({ name: "TypeScript quickstart" }).then((t) => { console.log(t.apiKey); c.close(); },
  (e) => { console.error(e); process.exit(1); });
' "$grpc" "$admin")"
(cd clients/typescript && PYPES_API_KEY="$key" node dist/examples/quickstart.js "$grpc")
