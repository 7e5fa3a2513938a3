# Recipes mirror CI (.ci/run): CI runs the same commands.

# Formatting and lints, as CI checks them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# All tests (the README's test command).
test:
    cargo nextest run --workspace --no-fail-fast

# Everything CI runs.
ci:
    bash .ci/run

# Load generator: append and read benchmarks of the event log, with their
# same-run baselines. Pass e.g. `just bench --seconds 5`.
bench *ARGS:
    cargo build --release -p benches
    ./target/release/loadgen log-append {{ARGS}}
    ./target/release/loadgen log-read

# Fuzz the file log's record decoder (needs nightly and cargo-fuzz; not in CI).
fuzz SECONDS="60":
    cd crates/eventlog/fuzz && cargo +nightly fuzz run frame_decode -- -max_total_time={{SECONDS}}
