"""Checks deploy/monitoring offline (run by .ci/deploy-check.sh):

- alerts.yaml is a Prometheus rule file: groups of rules, each alert with
  an expression, a `for` duration (if any), a severity of page or ticket,
  a summary, a description and a runbook_url pointing at its own section
  of docs/operations.md;
- dashboard.json is a Grafana dashboard: unique panel ids, every target
  on the dashboard's Prometheus data source variable;
- every expression in both parses with Prometheus' grammar
  (@prometheus-io/lezer-promql, from npm), and every metric it names is
  one a running pypes exports (its /metrics is scraped here) or `up`.

    python3 deploy/check_monitoring.py target/debug/pypes

A mistake exits non-zero naming the file, the alert or panel and what is
wrong.
"""

import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

root = pathlib.Path(__file__).resolve().parent
repo = root.parent
monitoring = root / "monitoring"
binary = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug/pypes").resolve()
problems = []


def problem(text):
    problems.append(text)


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


anchors = {
    slug(line.lstrip("#"))
    for line in (repo / "docs" / "operations.md").read_text().splitlines()
    if line.startswith("#")
}

# The rule file.
exprs = []  # (where, expression)
rules = yaml.safe_load((monitoring / "alerts.yaml").read_text())
alerts = set()
for group in rules.get("groups") or problem("alerts.yaml: no groups") or []:
    if not group.get("name"):
        problem("alerts.yaml: a group without a name")
    for rule in group.get("rules") or []:
        name = rule.get("alert") or rule.get("record")
        where = f"alerts.yaml: {name or 'a rule without alert or record'}"
        unknown = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
        if unknown:
            problem(f"{where}: unknown keys {sorted(unknown)}")
        if "expr" not in rule:
            problem(f"{where}: no expr")
            continue
        exprs.append((where, str(rule["expr"])))
        if "alert" not in rule:
            continue
        if name in alerts:
            problem(f"{where}: a second alert of that name")
        alerts.add(name)
        if "for" in rule and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(rule["for"])):
            problem(f"{where}: for: {rule['for']!r} is not a duration")
        if (rule.get("labels") or {}).get("severity") not in ("page", "ticket"):
            problem(f"{where}: labels.severity must be page or ticket")
        notes = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                problem(f"{where}: no annotations.{key}")
        runbook = notes.get("runbook_url", "")
        anchor = runbook.partition("#")[2]
        if not runbook.startswith("docs/operations.md#") or anchor != name.lower():
            problem(f"{where}: runbook_url must be docs/operations.md#{name.lower()}")
        elif anchor not in anchors:
            problem(f"{where}: docs/operations.md has no section {name!r} (what it means, what to do)")

# The dashboard.
dashboard = json.loads((monitoring / "dashboard.json").read_text())
variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
if "datasource" not in variables:
    problem("dashboard.json: no datasource variable (the dashboard must not name a data source of ours)")
ids = set()
for panel in dashboard.get("panels", []):
    where = f"dashboard.json: panel {panel.get('title')!r}"
    if panel.get("id") in ids:
        problem(f"{where}: id {panel.get('id')} used twice")
    ids.add(panel.get("id"))
    if not panel.get("targets"):
        problem(f"{where}: no targets")
    for target in panel.get("targets", []):
        if target.get("datasource", {}).get("uid") != "${datasource}":
            problem(f"{where}: target {target.get('refId')} not on ${{datasource}}")
        # Grafana's variables, as Grafana substitutes them.
        expr = target.get("expr", "").replace("$__rate_interval", "5m").replace("$__interval", "1m")
        exprs.append((where, expr))

# Prometheus' grammar, from npm (pinned in deploy/monitoring/package.json).
with tempfile.TemporaryDirectory() as npm_dir:
    for name in ("package.json", "promql.mjs"):
        (pathlib.Path(npm_dir) / name).write_bytes((monitoring / name).read_bytes())
    subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=npm_dir, check=True)
    parsed = json.loads(subprocess.run(
        ["node", "promql.mjs"], cwd=npm_dir, check=True, capture_output=True, text=True,
        input=json.dumps([e for _, e in exprs])).stdout)

# What a running pypes exports.
with tempfile.TemporaryDirectory() as data:
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", f"{data}/data", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        http = re.search(r"http=(\S+)", line)
        if not http:
            sys.exit(f"pypes did not start: {line!r}")
        deadline = time.time() + 60
        while True:
            try:
                scrape = urllib.request.urlopen(f"http://{http.group(1)}/metrics", timeout=5).read().decode()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
exported = set()
for line in scrape.splitlines():
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()
        exported.add(name)
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
exported.add("up")  # made by Prometheus for every target

for (where, expr), result in zip(exprs, parsed):
    if result["errors"]:
        at = result["errors"][0]
        problem(f"{where}: PromQL does not parse at offset {at}: {expr[max(0, at - 20):at]}⟨here⟩{expr[at:at + 20]}")
    for metric in result["metrics"]:
        if metric not in exported:
            problem(f"{where}: {metric} is not a metric pypes exports")

if problems:
    print("deploy/monitoring:", *problems, sep="\n  ")
    sys.exit(1)
print(f"deploy/monitoring: {len(alerts)} alerts and {len(ids)} panels checked; "
      f"{len(exprs)} expressions parse and name only exported metrics")
