#!/usr/bin/env bash
# Installs the peers `loadgen peers` compares pypes with, from package
# registries (never vendored), into target/bench/:
#   - the Python `eventsourcing` library (PyPI) with its AES cipher, in a
#     virtualenv (target/bench/venv), with matplotlib for the report's plots;
#   - PostgreSQL is the machine's (initdb/postgres, started per run by
#     loadgen on a throw-away cluster).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/bench
if [ ! -x target/bench/venv/bin/python ]; then
    python3 -m venv target/bench/venv
fi
target/bench/venv/bin/pip install --quiet --disable-pip-version-check "eventsourcing[crypto]==9.5.6" "matplotlib==3.*"
target/bench/venv/bin/python -c "import eventsourcing, eventsourcing.cipher; print('eventsourcing', eventsourcing.__version__ if hasattr(eventsourcing, '__version__') else '9.5.6', 'ready')"
