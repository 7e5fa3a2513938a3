"""Seeds a running pypes with 10,000 Sessions for the console's load times
(docs/console.md): one tenant, 5 Pypes, 500 end users, 10,000 imported
Sessions over the last 7 days (3 messages each), 20 live ones, a few
erasures and restrictions. Prints the ids as JSON on stdout.

    python seed.py 127.0.0.1:50051 ADMIN_KEY [--tls --ca-cert ca.pem]
"""
import json
import random
import sys
import time
import uuid

from pypes_client import Client, api_pb2 as pb

HOUR = 3_600_000_000


def main() -> None:
    target, admin = sys.argv[1], sys.argv[2]
    tls = "--tls" in sys.argv
    ca = open(sys.argv[sys.argv.index("--ca-cert") + 1], "rb").read() if "--ca-cert" in sys.argv else None
    a = Client(target, admin, tls=tls, ca_cert=ca)
    t = a.tenants.CreateTenant(pb.CreateTenantRequest(name="Load test bank"))
    key = t.api_key
    c = Client(target, key, tls=tls, ca_cert=ca)
    pypes = [c.pypes.CreatePype(pb.CreatePypeRequest(name=f"Queue {i}")).pype_id for i in range(5)]
    users = [
        c.subjects.RegisterSubject(pb.RegisterSubjectRequest(
            username=f"load{i}", email=f"load{i}@example.com", attested_at_least_13=True)).subject_id
        for i in range(500)
    ]
    now = int(time.time() * 1e6)
    rng = random.Random(7)
    agent = str(uuid.uuid4())

    def items():
        for i in range(10_000):
            start = now - rng.randrange(1, 7 * 24) * HOUR - rng.randrange(0, HOUR)
            user = users[i % len(users)]
            msgs = [
                pb.ImportedMessage(sender_id=user if k % 2 == 0 else agent,
                                   sender_kind=pb.PARTICIPANT_KIND_AGENT,
                                   body=f"message {k} of session {i}",
                                   sent_at_micros=start + k * 30_000_000)
                for k in range(3)
            ]
            yield pb.ImportSessionRequest(import_id=f"load-{i}", pype_id=pypes[i % len(pypes)], end_user_id=user,
                                          started_at_micros=start, messages=msgs,
                                          closed_at_micros=start + 600_000_000)

    t0 = time.time()
    r = c.sessions.ImportSessions(items())
    live = []
    for i in range(20):
        s = c.sessions.StartSession(pb.StartSessionRequest(pype_id=pypes[0], end_user_id=users[i]))
        c.sessions.PostMessage(pb.PostMessageRequest(session_id=s.session_id, sender_id=users[i], body=f"live {i}"))
        live.append(s.session_id)
    for u in users[-5:]:
        c.erasure.RequestErasure(pb.RequestErasureRequest(subject_id=u))
    for u in users[-10:-5]:
        c.privacy.RestrictProcessing(pb.SubjectRef(subject_id=u))
    json.dump({"tenant": t.tenant.tenant_id, "key": key, "pype": pypes[0], "session": live[0],
               "imported": r.written, "seconds": round(time.time() - t0, 1)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
