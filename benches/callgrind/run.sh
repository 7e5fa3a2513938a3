#!/usr/bin/env bash
# Instructions per PostMessage in the release `pypes`, counted by valgrind's
# callgrind (this machine's perf has no instruction counter; callgrind's
# count is the same whatever else the machine does). Two runs of the same
# fixed workload, with N1 and N2 messages posted one after another through
# the gRPC API (Python grpcio client, outside the count); the difference
# divided by N2 - N1 is the server's instructions per PostMessage,
# everything else (start, set-up, shutdown) cancelling out.
#   bash benches/callgrind/run.sh [N1] [N2]
# PYPES_BIN=<path> counts another build (e.g. an older release) instead of
# building this tree's.
set -euo pipefail
cd "$(dirname "$0")/../.."
n1="${1:-100}"
n2="${2:-400}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

bin="${PYPES_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -p server --bin pypes
  bin=./target/release/pypes
fi
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "grpcio==1.*" "grpcio-tools==1.*"
mkdir -p "$work/stubs"
"$work/venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work/stubs" --grpc_python_out="$work/stubs" proto/pypes/api/v1/api.proto
touch "$work/stubs/pypes/__init__.py" "$work/stubs/pypes/api/__init__.py" "$work/stubs/pypes/api/v1/__init__.py"

count() {
  local n="$1" dir
  dir="$(mktemp -d -p "$work")"
  mkdir -p "$dir"
  local admin
  admin="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$bin" serve --data-dir "$dir/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --admin-key "$admin" > "$dir/serve.out" 2> "$dir/valgrind.err" &
  local pid=$!
  for _ in $(seq 1 600); do
    grep -q "pypes listening" "$dir/serve.out" 2>/dev/null && break
    sleep 0.2
  done
  local grpc
  grpc="$(grep -o 'grpc=[^ ]*' "$dir/serve.out" | cut -d= -f2)"
  "$work/venv/bin/python" benches/callgrind/post_message.py "$grpc" "$admin" "$work/stubs" "$n" > /dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  # "summary: <Ir>" is the whole process's instruction count.
  grep -h '^summary:' "$dir"/callgrind.out* | awk '{s += $2} END {print s}'
}

# Background work that runs by the clock (the projections' lingering reads,
# the once-a-second view commits, the audit writer) is counted too and grows
# with the run's wall time under valgrind: the figure moves by about ±10 %
# between runs of one binary. So ROUNDS pairs (default 3), and the median.
rounds="${ROUNDS:-3}"
pers=()
for r in $(seq 1 "$rounds"); do
  i1="$(count "$n1")"
  i2="$(count "$n2")"
  pers+=( $(( (i2 - i1) / (n2 - n1) )) )
  echo "# round $r: $n1 messages $i1 instructions, $n2 messages $i2 instructions: $(( (i2 - i1) / (n2 - n1) )) per message"
done
median="$(printf '%s\n' "${pers[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
echo "BENCH callgrind workload=post_message n1=$n1 n2=$n2 rounds=$rounds instructions_per_post_message=$median all=$(IFS=,; echo "${pers[*]}")"
