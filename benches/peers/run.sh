#!/usr/bin/env bash
# Everything of `loadgen peers` on a fresh machine, in one command:
# installs the peers (install.sh), builds pypes and the load generator,
# runs every workload (arguments go to `loadgen peers`), then writes the
# table and plots of docs/benchmarks.md from the run's JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash benches/peers/install.sh
cargo build --release -p server -p benches
./target/release/loadgen peers --out target/bench/peers.json "$@"
target/bench/venv/bin/python benches/report.py target/bench/peers.json
