#!/usr/bin/env bash
# The S3-compatible blob store against a real S3 API: installs moto (an
# S3 server in Python, from PyPI) into a throw-away virtualenv, starts it on
# a free loopback port, runs the blob store conformance suite on it
# (crates/media/tests/s3.rs), then starts a pypes built with the `s3`
# feature on `media.store = "s3"` and runs `pypes demo` (which uploads a
# picture and fetches it back) and checks the blob is in the bucket.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.*"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(cd "$work" && exec "$work/venv/bin/moto_server" -H 127.0.0.1 -p "$port") > "$work/moto.log" 2>&1 &
pids+=($!)
endpoint="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -s -o /dev/null "$endpoint" && break
  sleep 0.1
done
curl -sf -X PUT "$endpoint/pypes-test" -o /dev/null || { echo "moto did not start"; cat "$work/moto.log"; exit 1; }

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
cargo clippy -p media --features s3 --all-targets -- -D warnings
PYPES_TEST_S3_ENDPOINT="$endpoint" cargo nextest run -p media --features s3 --test s3 --no-fail-fast

cargo build --quiet -p server --features s3 --bin pypes
cat > "$work/pypes.toml" <<TOML
[media]
store = "s3"
[media.s3]
bucket = "pypes-test"
endpoint = "$endpoint"
region = "us-east-1"
prefix = "e2e/"
allow_http = true
TOML
. .ci/lib.sh
start_pypes "$work" --config "$work/pypes.toml"
pids+=("$server_pid")
./target/debug/pypes demo --grpc "http://$grpc" --admin-key "$admin" | tee "$work/demo.out"
grep -q "SHA-256 matches" "$work/demo.out"
listing="$(curl -sf "$endpoint/pypes-test?list-type=2&prefix=e2e/")"
echo "$listing" | grep -q '\.blob</Key>' || { echo "no blob in the bucket: $listing"; exit 1; }
[ ! -d "$work/data/blobs" ] || [ -z "$(find "$work/data/blobs" -name '*.blob')" ] || { echo "blobs on local disk with the s3 store"; exit 1; }
echo "s3: conformance suite and the demo against moto passed"
