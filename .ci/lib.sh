# Shared by the CI scripts: start a debug `pypes serve` in the background on
# free ports and wait for its listen line. Sets server_pid and grpc.
# Usage: start_pypes <work dir> [extra serve args...]
start_pypes() {
  local work="$1"
  shift
  admin="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  RUST_LOG=warn ./target/debug/pypes serve --data-dir "$work/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --admin-key "$admin" "$@" > "$work/serve.out" &
  server_pid=$!
  for _ in $(seq 1 100); do
    grep -q "pypes listening" "$work/serve.out" 2>/dev/null && break
    sleep 0.1
  done
  grpc="$(grep -o 'grpc=[^ ]*' "$work/serve.out" | cut -d= -f2)"
  [ -n "$grpc" ] || { echo "pypes did not start"; cat "$work/serve.out"; exit 1; }
}

# Fails when the generated code under <dir> differs from what is committed
# (after the caller ran its generator): changed or new files.
# Usage: check_generated <dir> <how to regenerate>
check_generated() {
  local dir="$1" how="$2"
  if ! git diff --quiet -- "$dir" || [ -n "$(git ls-files --others --exclude-standard "$dir")" ]; then
    echo "$dir is stale: run $how and commit it"
    git status --short "$dir"
    exit 1
  fi
}
