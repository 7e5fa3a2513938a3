# Recipes mirror CI (.ci/run): CI runs the same commands.

# Formatting and lints, as CI checks them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# All tests (the README's test command).
test:
    cargo nextest run --workspace --no-fail-fast

# The server's gRPC integration tests with the server on PostgreSQL (event
# log and key store on a throw-away cluster per test), as CI runs them.
test-postgres:
    PYPES_TEST_BACKEND=postgres cargo nextest run -p server --no-fail-fast --test grpc --test isolation --test auth --test media

# Regenerate docs/api.md from the comments in proto/pypes/api/v1.
api-docs:
    UPDATE_API_DOCS=1 cargo nextest run -p proto --test api_reference

# Everything CI runs.
ci:
    bash .ci/run

# Load generator: the event log's append and read benchmarks and the key
# store's seal/open/shred/rotate benchmarks, each with a same-run baseline.
# Pass e.g. `just bench --seconds 5` (given to log-append).
bench *ARGS:
    cargo build --release -p benches
    ./target/release/loadgen log-append {{ARGS}}
    ./target/release/loadgen log-read
    ./target/release/loadgen seal

# Media upload/download MiB/s against a plain file copy (starts target/release/pypes).
bench-media *ARGS:
    cargo build --release -p server -p benches
    ./target/release/loadgen media {{ARGS}}

# Webhook delivery to 100 local endpoints beside the messaging scenario,
# against the scenario alone (e.g. `just bench-webhooks --rate 3000`).
bench-webhooks *ARGS:
    cargo build --release -p server -p benches
    ./target/release/loadgen webhooks {{ARGS}}

# pypes beside the event stores people pick instead (installs the peers
# from PyPI and crates.io), then the table and plots in docs/benchmarks.md
# from the JSON.
bench-peers *ARGS:
    bash benches/peers/run.sh {{ARGS}}

# The S3 blob store against moto (as CI runs it).
s3:
    bash .ci/s3.sh

# One cargo-fuzz target for SECONDS (stable toolchain: RUSTC_BOOTSTRAP, as
# docs/fuzzing.md says; `cargo install cargo-fuzz --locked` first), e.g.
# `just fuzz key_store 600`. Targets: log_frame stored_event key_store
# media_blob config_file api_request.
fuzz TARGET SECONDS="60":
    bash .ci/fuzz.sh {{SECONDS}} {{TARGET}}

# Every fuzz target for SECONDS each (CI runs 30).
fuzz-all SECONDS="60":
    bash .ci/fuzz.sh {{SECONDS}}

# Server instructions per PostMessage, counted by valgrind's callgrind
# (repeatable where wall time is not). Pass e.g. `just bench-instructions 100 400`.
bench-instructions *ARGS:
    bash benches/callgrind/run.sh {{ARGS}}
