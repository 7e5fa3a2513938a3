#!/usr/bin/env bash
# Offline checks of deploy/ (no container engine or cluster here):
# every Kubernetes manifest against the API schemas bundled in
# kubernetes-validate (PyPI), strictly (unknown fields refused); the Envoy
# configuration for what the routing relies on; the Containerfile for the
# build it must do; then the unit and the image's entrypoint are started.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0" "PyYAML==6.*"

manifests=(deploy/k8s/namespace.yaml deploy/k8s/secrets.example.yaml \
           deploy/k8s/postgres.yaml deploy/k8s/pypes.yaml deploy/k8s/envoy.yaml)
"$work/venv/bin/kubernetes-validate" --strict --kubernetes-version 1.31.0 "${manifests[@]}"
"$work/venv/bin/python" deploy/check.py
# The systemd unit's ExecStart and the image's entrypoint, started with
# their environment as written (TLS from the files they name), must answer
# /readyz (the debug binary .ci/run built just before).
python3 deploy/start_check.py target/debug/pypes
# The Grafana dashboard and the Prometheus alert rules: Prometheus' PromQL
# grammar (npm) and the metrics a running pypes exports.
"$work/venv/bin/python" deploy/check_monitoring.py target/debug/pypes
echo "deploy/: manifests, Envoy routing, Containerfile, unit and image starts, dashboard and alerts checked"
