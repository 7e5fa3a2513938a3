"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from a
stopped server's data directory and the shipped config files. Run by hand
after a format change (docs/fuzzing.md); the seeds are committed.

    python3 fuzz/seeds.py /path/to/stopped/data-dir
"""

import hashlib
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent
data = pathlib.Path(sys.argv[1])
corpus = root / "corpus"


def put(target: str, blob: bytes) -> None:
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(blob).hexdigest()).write_bytes(blob)


# The log's segments: 4 KiB windows (log_frame), and the same behind an odd
# selector byte (stored_event reads frames then).
for seg in sorted((data / "log").glob("**/*")):
    if not seg.is_file() or seg.stat().st_size == 0:
        continue
    raw = seg.read_bytes()
    for at in range(0, min(len(raw), 64 * 4096), 4096):
        window = raw[at : at + 4096]
        put("log_frame", window)
        put("stored_event", b"\x01" + window)

# Key store and provider files, each behind every selector (the target's
# template store has about as many files; a kind lands in each slot).
key_files = [p for p in sorted(data.glob("keys/**/*")) + sorted(data.glob("provider/**/*")) if p.is_file() and p.stat().st_size > 0]
for i in range(8):
    for p in key_files[:24]:
        put("key_store", bytes([i]) + p.read_bytes()[:8192])

# Media blobs: the header and the first chunk's bytes.
for p in sorted(data.glob("blobs/**/*")):
    if p.is_file():
        put("media_blob", p.read_bytes()[: 88 + 16 + 4096])

# Config files: what deploy/ and the docs ship.
repo = root.parent
for p in [repo / "deploy/k8s/pypes.toml", *sorted((repo / "docs").glob("*.toml"))]:
    if p.exists():
        put("config_file", p.read_bytes())
for md in sorted((repo / "docs").glob("*.md")) + [repo / "README.md"]:
    text = md.read_text()
    for block in text.split("```toml")[1:]:
        put("config_file", block.split("```")[0].encode())

for t in sorted(corpus.iterdir()):
    print(t.name, len(list(t.iterdir())))

# API requests: one well-formed request per RPC the target knows (its
# selector first), from the Python client's generated messages when they
# are importable (pip install ./clients/python).
try:
    from pypes_client import api_pb2 as pb
except ImportError:
    pb = None
if pb is not None:
    requests = [
        pb.PostMessageRequest(body="hello", device="iPhone 15"),
        pb.StartSessionRequest(),
        pb.RegisterSubjectRequest(username="ann", email="ann@example.com", attested_at_least_13=True),
        pb.CreatePypeRequest(name="Support", description="help"),
        pb.ListMessagesRequest(page_size=10),
        pb.AdvanceReadHorizonRequest(up_to=1),
        pb.SubjectRef(),
        pb.SetRetentionRequest(retention_days=30),
        pb.QueryAnalyticsRequest(),
        pb.LoginRequest(username="ann", password="correct horse battery"),
        pb.GetSessionViewRequest(),
        pb.GetErasureRequest(),
        pb.CreateTenantRequest(name="Acme"),
        pb.ExportSubjectRequest(),
        pb.CloseSessionRequest(),
        pb.RectifySubjectRequest(),
    ]
    for selector, message in enumerate(requests):
        put("api_request", bytes([selector]) + message.SerializeToString())
        put("api_request", bytes([selector | 0x80]) + message.SerializeToString())
    print("api_request", len(list((corpus / "api_request").iterdir())))
