#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for SECONDS each (all of them, or
# those named), from the committed seed corpora (fuzz/corpus/<target>),
# with the stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# -Z flags; docs/fuzzing.md). New inputs go to a scratch corpus, so the
# committed seeds only change by hand. A crash fails the run and leaves
# the input in target/fuzz/artifacts/<target>/.
#   bash .ci/fuzz.sh 30                 # every target, 30 s each
#   bash .ci/fuzz.sh 600 key_store      # one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(log_frame stored_event key_store media_blob config_file api_request)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build --target-dir ../target/fuzz
for t in "${targets[@]}"; do
    scratch="../target/fuzz/corpus/$t"
    log="../target/fuzz/$t.log"
    mkdir -p "$scratch" "../target/fuzz/artifacts/$t"
    echo "== fuzz $t for ${seconds}s"
    status=0
    extra=()
    # api_request's world (an in-memory log, actors, views) keeps what each
    # input wrote, so libFuzzer's leak heuristic ran a full LeakSanitizer
    # scan after almost every input (45 % of the time; docs/fuzzing.md).
    # LeakSanitizer's own check at exit is off too: the last world's view
    # runner threads are still running when a run of -runs=N ends, and
    # their start closures are reported as leaks of an empty input.
    asan="${ASAN_OPTIONS:-}"
    if [ "$t" = api_request ]; then extra=(-detect_leaks=0); asan="${asan:+$asan,}detect_leaks=0"; fi
    ASAN_OPTIONS="$asan" cargo fuzz run --target-dir ../target/fuzz "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${extra[@]}" \
        -artifact_prefix="../target/fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
    grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "fuzz target $t FAILED (exit $status; the input is in target/fuzz/artifacts/$t/)"
        exit 1
    fi
done
