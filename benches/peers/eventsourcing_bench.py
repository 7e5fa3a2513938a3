"""The Python `eventsourcing` library (PyPI) as a peer of pypes' event log:
SQLite persistence (WAL, synchronous=FULL: every committed save is
fsync'd, as pypes fsyncs every acknowledged append) with the library's
AES-GCM cipher, 256-byte event payloads.

    python eventsourcing_bench.py DIR SECONDS MODE [BATCH]

MODE "single": one aggregate with one new event per save (one durable
transaction per event). MODE "batched": BATCH aggregates per save (one
transaction for all). Prints one line `BENCH eventsourcing_sqlite ...`
and writes nothing else to stdout.
"""

import os
import sqlite3
import sys
import time

from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate, event

directory, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
dbfile = os.path.join(directory, f"eventsourcing-{mode}.sqlite")
for suffix in ("", "-wal", "-shm"):
    if os.path.exists(dbfile + suffix):
        os.remove(dbfile + suffix)


class Session(Aggregate):
    @event("Started")
    def __init__(self, payload: str):
        self.payload = payload


os.environ.update(
    {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": dbfile,
        "CIPHER_TOPIC": "eventsourcing.cipher:AESCipher",
        "CIPHER_KEY": AESCipher.create_key(num_bytes=32),
        "COMPRESSOR_TOPIC": "",
    }
)
app = Application()
payload = "0123456789abcdef" * 16  # 256 bytes of text (the JSON transcoder takes no bytes)
# Warm-up (and proof the store works) before the clock starts.
app.save(Session(payload))

latencies = []
events = 0
started = time.perf_counter()
deadline = started + seconds
while time.perf_counter() < deadline:
    aggregates = [Session(payload) for _ in range(batch)]
    t0 = time.perf_counter()
    app.save(*aggregates)
    latencies.append(time.perf_counter() - t0)
    events += batch
elapsed = time.perf_counter() - started

# The durability actually in force, read from the database file.
with sqlite3.connect(dbfile) as c:
    journal = c.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[c.execute("PRAGMA synchronous").fetchone()[0]]

latencies.sort()


def pct(p):
    return int(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6)


print(
    f"BENCH eventsourcing_sqlite mode={mode} batch={batch} events_per_s={events / elapsed:.0f} "
    f"saves={len(latencies)} p50_us={pct(0.5)} p95_us={pct(0.95)} p99_us={pct(0.99)} p999_us={pct(0.999)} "
    f"journal={journal} synchronous={synchronous} cipher=AES-GCM"
)
