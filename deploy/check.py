"""Checks of deploy/ that schemas cannot make (run by .ci/deploy-check.sh).

- every file kustomization.yaml lists exists, and every manifest is listed;
- Envoy routes gRPC by a ring hash of x-pypes-session-id, then
  x-pypes-pype-id, to the headless Service of the pypes nodes, over HTTP/2
  and TLS, with gRPC health checks;
- the pods' probes hit the server's /readyz and /healthz, every secret a
  pod reads is in the example Secret, and the nodes run with the config the
  ConfigMap carries;
- the Containerfile builds the pypes binary and runs it unprivileged.
"""

import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent
k8s = root / "k8s"
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
for name in listed:
    check((k8s / name).exists(), f"kustomization lists {name}, which does not exist")
for path in k8s.glob("*.yaml"):
    if path.name not in ("kustomization.yaml", "secrets.example.yaml"):
        check(path.name in listed, f"{path.name} is not in kustomization.yaml")

objects = {}
for path in k8s.glob("*.yaml"):
    if path.name == "kustomization.yaml":
        continue
    for d in docs(path):
        objects[(d["kind"], d["metadata"]["name"])] = d

# Envoy.
envoy = yaml.safe_load(objects[("ConfigMap", "envoy-config")]["data"]["envoy.yaml"])
clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
routes = [
    r
    for l in envoy["static_resources"]["listeners"]
    for fc in l["filter_chains"]
    for f in fc["filters"]
    for vh in f["typed_config"]["route_config"]["virtual_hosts"]
    for r in vh["routes"]
]
check(routes, "Envoy has no route")
for r in routes:
    target = r["route"]["cluster"]
    check(target in clusters, f"route to unknown cluster {target}")
    headers = [h["header"]["header_name"] for h in r["route"].get("hash_policy", [])]
    check(headers == ["x-pypes-session-id", "x-pypes-pype-id"], f"hash policy on {headers}")
    check(r["route"]["hash_policy"][0].get("terminal") is True, "the Session id must decide alone when present")
pypes = clusters.get("pypes", {})
check(pypes.get("lb_policy") == "RING_HASH", "the pypes cluster is not a ring hash")
check(pypes.get("type") == "STRICT_DNS", "the pypes cluster must resolve every node (STRICT_DNS)")
address = pypes["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
check(address["address"].startswith("pypes-nodes."), f"Envoy resolves {address['address']}, not the headless Service")
check(address["port_value"] == 50051, "Envoy must reach the nodes' gRPC port")
check("grpc_health_check" in pypes["health_checks"][0], "no gRPC health check")
check("http2_protocol_options" in str(pypes["typed_extension_protocol_options"]), "upstream is not HTTP/2")
check(pypes["transport_socket"]["name"] == "envoy.transport_sockets.tls", "upstream is not TLS")
service = objects[("Service", "pypes-nodes")]
check(service["spec"].get("clusterIP") == "None", "pypes-nodes must be headless")

# Pods.
secret_keys = set(objects[("Secret", "pypes-secrets")]["stringData"])
for name in ("pypes", "pypes-sql-feeder"):
    pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == "pypes-secrets":
            check(ref["key"] in secret_keys, f"{name} reads {ref['key']}, which the example Secret lacks")
    envs = {e["name"] for e in container["env"]}
    for needed in ("PYPES_ROOT_KEY", "PYPES_LOG_URL", "PYPES_KEYS_PROVIDER_URL", "PYPES_LOG_SIGNING_KEY"):
        check(needed in envs, f"{name} lacks {needed}")
    check(container["securityContext"].get("readOnlyRootFilesystem") is True, f"{name} writes its root fs")
    check(pod["securityContext"].get("runAsNonRoot") is True, f"{name} may run as root")
node = objects[("Deployment", "pypes")]["spec"]["template"]["spec"]["containers"][0]
check(node["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is not /readyz")
check(node["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness is not /healthz")
# The TOML itself is parsed by the server's own config code in its tests
# (deploy_config_is_valid in crates/server/src/config.rs).
generated = {g["name"]: g["files"] for g in kustomization.get("configMapGenerator", [])}
check(generated.get("pypes-config") == ["pypes.toml"], "kustomize must make pypes-config from pypes.toml")
toml_text = (k8s / "pypes.toml").read_text()
for needed in ('backend = "postgres"', "cert_file", "key_file"):
    check(needed in toml_text, f"pypes.toml lacks {needed}")

# Containerfile.
containerfile = (root / "container" / "Containerfile").read_text()
check("cargo build --release --locked -p server --bin pypes" in containerfile, "the image does not build pypes")
check("USER 10001" in containerfile, "the image runs as root")
check('ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pypes"]' in containerfile, "no init for signals")

if failures:
    print("deploy/ check failed:", *failures, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"deploy/check.py: {len(objects)} objects, Envoy ring hash, probes, secrets and Containerfile OK")
