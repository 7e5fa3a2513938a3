"""Starts pypes as the shipped deploy files say, and waits for /readyz
(run by .ci/deploy-check.sh; no container engine or systemd needed):

- pypes.service: its Environment= lines, its EnvironmentFile (a secrets
  file made here as the unit's header says), its ExecStart line;
- container/Containerfile: its ENV lines, its ENTRYPOINT (after tini) and
  CMD, with the secrets and TLS files `docker run` is documented to pass.

Only what a host provides is moved: the binary (the build's `pypes`), the
paths under /etc, /var/lib (into a temporary root) and the ports (free
ones, the addresses as written). Everything else, TLS included, is as
written; a start that the server refuses fails the check with its output.

    python3 deploy/start_check.py target/debug/pypes
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

root = pathlib.Path(__file__).resolve().parent
binary = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug/pypes").resolve()
work = pathlib.Path(tempfile.mkdtemp(prefix="pypes-deploy-"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relocate(value, ports, base):
    """Paths under /etc and /var/lib into the temporary root `base`; ports to free ones."""
    value = re.sub(r"(?<![\w./-])/(etc|var/lib)(?=/|$)", lambda m: f"{base}/{m.group(1)}", value)
    value = value.replace("/usr/local/bin/pypes", str(binary))
    for old, new in ports.items():
        value = re.sub(rf":{old}\b", f":{new}", value)
    return value


def make_tls(directory, cert_name, key_name):
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=deploy check CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign"],
        check=True, capture_output=True)
    csr, ext = directory / "server.csr", directory / "ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", directory / key_name, "-out", csr, "-subj", "/CN=localhost"],
        check=True, capture_output=True)
    subprocess.run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", directory / cert_name, "-days", "2", "-extfile", ext],
        check=True, capture_output=True)
    return ca


def tls_files(env):
    """The certificate and key where the file says they are mounted; None
    when it names none (the server is then expected to refuse, and the
    check fails with its words)."""
    if "PYPES_TLS_CERT" not in env or "PYPES_TLS_KEY" not in env:
        return None
    cert, key = pathlib.Path(env["PYPES_TLS_CERT"]), pathlib.Path(env["PYPES_TLS_KEY"])
    if cert.parent != key.parent:
        sys.exit("certificate and key are expected in one mounted directory")
    return make_tls(cert.parent, cert.name, key.name)


def wait_ready(name, proc, http_addr, ca, out_path):
    host, port = http_addr.rsplit(":", 1)
    host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    scheme = "https" if ca else "http"
    url = f"{scheme}://localhost:{port}/readyz" if host == "127.0.0.1" else f"{scheme}://{host}:{port}/readyz"
    deadline = time.time() + 60
    last = None
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name}: pypes exited with {proc.returncode} before /readyz:\n{out_path.read_text()}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as r:
                if r.status == 200:
                    print(f"{name}: /readyz 200 ({url})")
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.2)
    sys.exit(f"{name}: no /readyz within 60 s ({last}):\n{out_path.read_text()}")


def stop(name, proc):
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit(f"{name}: no clean stop within 30 s of SIGTERM")
    if code != 0:
        sys.exit(f"{name}: stopped with {code}")


def start_and_wait(name, command, env, base):
    """Makes the TLS files the environment names, runs `command` in `base`
    until /readyz answers, stops it with SIGTERM; returns its output."""
    ca = tls_files(env)
    out = base / "pypes.out"
    with open(out, "w") as o:
        proc = subprocess.Popen(command, env=env, stdout=o, stderr=subprocess.STDOUT, cwd=base)
    try:
        wait_ready(name, proc, env["PYPES_HTTP_ADDR"], ca, out)
    finally:
        if proc.poll() is None:
            stop(name, proc)
    return out.read_text()


def secret_hex():
    return os.urandom(32).hex()


def base_env():
    # Nothing of this machine's PYPES_* settings: only what the file gives.
    return {k: v for k, v in os.environ.items() if not k.startswith("PYPES_")}


def systemd_unit():
    base = work / "systemd"
    base.mkdir()
    unit = (root / "pypes.service").read_text()
    service = {}
    env_files, environment = [], {}
    for line in unit.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("["):
            continue
        key, _, value = line.partition("=")
        if key == "Environment":
            for item in shlex.split(value):
                k, _, v = item.partition("=")
                environment[k] = v
        elif key == "EnvironmentFile":
            env_files.append(value.lstrip("-"))
        else:
            service[key] = value
    ports = {}
    for k in ("PYPES_GRPC_ADDR", "PYPES_HTTP_ADDR"):
        if k in environment:
            ports[environment[k].rsplit(":", 1)[1]] = free_port()
    env = base_env()
    for k, v in environment.items():
        env[k] = relocate(v, ports, base)
    # The secrets file, as the unit's header says to write it.
    for f in env_files:
        path = pathlib.Path(relocate(f, ports, base))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"PYPES_ROOT_KEY={secret_hex()}\nPYPES_ADMIN_KEY={secret_hex()}\n")
        os.chmod(path, 0o600)
        for line in path.read_text().splitlines():
            k, _, v = line.partition("=")
            env[k] = v
    # The directories the header says to create (the data directory 0700, empty).
    for p in service.get("ReadWritePaths", "").split():
        d = pathlib.Path(relocate(p, ports, base))
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    command = shlex.split(relocate(service["ExecStart"], ports, base))
    text = start_and_wait("pypes.service", command, env, base)
    if "\x1b[" in text:
        sys.exit("pypes.service: colour codes in the journal's output")


def containerfile():
    base = work / "container"
    base.mkdir()
    text = (root / "container" / "Containerfile").read_text()
    runtime = text.split("\nFROM ")[-1]  # the last stage is the image
    env, entrypoint, cmd = base_env(), None, None
    image_env = {}
    # Continuation lines joined.
    lines = runtime.replace("\\\n", " ").splitlines()
    for line in lines:
        line = line.strip()
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                k, _, v = item.partition("=")
                image_env[k] = v
        elif line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("CMD "):
            cmd = json.loads(line[len("CMD "):])
    if not entrypoint or not cmd:
        sys.exit("Containerfile: no ENTRYPOINT or CMD")
    if "--" in entrypoint:  # tini forwards signals; the process after it is pypes
        entrypoint = entrypoint[entrypoint.index("--") + 1:]
    ports = {}
    for k in ("PYPES_GRPC_ADDR", "PYPES_HTTP_ADDR"):
        if k in image_env:
            ports[image_env[k].rsplit(":", 1)[1]] = free_port()
    for k, v in image_env.items():
        env[k] = relocate(v, ports, base)
    # `docker run` as the image's header documents it: secrets as
    # environment, the TLS files mounted where the image expects them.
    env["PYPES_ROOT_KEY"] = secret_hex()
    env["PYPES_ADMIN_KEY"] = secret_hex()
    pathlib.Path(env["PYPES_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    start_and_wait("Containerfile", [relocate(a, ports, base) for a in entrypoint + cmd], env, base)


try:
    systemd_unit()
    containerfile()
finally:
    shutil.rmtree(work, ignore_errors=True)
print("deploy/: the systemd unit and the image's entrypoint start as written and answer /readyz over TLS")
