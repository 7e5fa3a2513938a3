#!/usr/bin/env bash
# What the console's browser test needs, installed on a fresh machine:
# Debian's chromium (apt) and playwright-core from the lock file (npm ci in
# crates/server/console). Then checks that the uPlot copied into the
# binary's assets is byte for byte the locked package's (the lock file pins
# what ships). The test itself runs in the main `cargo nextest run`
# (crates/server/tests/console.rs) with PYPES_REQUIRE_BROWSER=1.
#
#   bash .ci/console-browser.sh           install (when missing) and check
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q > /dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null
    else
        echo "console-browser: /usr/bin/chromium is missing; install Debian's chromium package (as root: apt-get install chromium)" >&2
        exit 1
    fi
fi
/usr/bin/chromium --version 2>/dev/null

(cd crates/server/console && npm ci --no-audit --no-fund --ignore-scripts > /dev/null)
for f in uPlot.iife.min.js uPlot.min.css; do
    if ! cmp -s "crates/server/console/node_modules/uplot/dist/$f" "crates/server/console/assets/vendor/$f"; then
        echo "console-browser: assets/vendor/$f is not the locked uplot's dist/$f (copy it again: see docs/console.md)" >&2
        exit 1
    fi
done
cmp -s crates/server/console/node_modules/uplot/LICENSE crates/server/console/assets/vendor/uPlot.LICENSE
echo "console-browser: chromium and playwright-core ready; vendored uPlot $(node -p 'require("./crates/server/console/node_modules/uplot/package.json").version') matches the lock file"
