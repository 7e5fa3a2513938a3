"""A customer system in Python talking to pypes over gRPC (grpcio).

Run by .ci/run against a freshly started server:
    python client.py <grpc host:port> <admin key> <stubs dir>
Creates a tenant, a Pype with an agent, an end user and a Session, exchanges
messages both ways, watches them arrive, and checks that bad input gets
INVALID_ARGUMENT naming the field. Exits non-zero on any surprise.
"""

import hashlib
import sys
import time
import uuid

addr, admin_key, stubs = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from pypes.api.v1 import api_pb2 as pb  # noqa: E402
from pypes.api.v1 import api_pb2_grpc as rpc  # noqa: E402
from pypes.api.v1 import integration_pb2 as ipb  # noqa: E402
from pypes.api.v1 import integration_pb2_grpc as irpc  # noqa: E402


def auth(key, session_id=None):
    # Behind the Envoy of deploy/k8s, x-pypes-session-id pins a Session's
    # calls to one node (docs/scaling.md); a single server ignores it.
    routing = [("x-pypes-session-id", session_id)] if session_id else []
    return [("authorization", f"Bearer {key}")] + routing


channel = grpc.insecure_channel(addr)
grpc.channel_ready_future(channel).result(timeout=10)
tenants = rpc.TenantServiceStub(channel)
pypes = rpc.PypeServiceStub(channel)
subjects = rpc.SubjectServiceStub(channel)
sessions = rpc.SessionServiceStub(channel)

created = tenants.CreateTenant(pb.CreateTenantRequest(name="Python Airline"), metadata=auth(admin_key))
key = created.api_key
print(f"tenant {created.tenant.name!r} {created.tenant.tenant_id}")

pype = pypes.CreatePype(pb.CreatePypeRequest(name="Rebooking", description="Flight changes"), metadata=auth(key))
agent = str(uuid.uuid4())
pypes.AssignMember(
    pb.AssignMemberRequest(pype_id=pype.pype_id, member_id=agent, kind=pb.PARTICIPANT_KIND_AGENT, assigned=True),
    metadata=auth(key),
)
user = subjects.RegisterSubject(
    pb.RegisterSubjectRequest(username="py.traveller", email="traveller@example.com", date_of_birth="1985-03-02"),
    metadata=auth(key),
)
print(f"pype {pype.name!r}, end user {user.username!r} ({user.subject_id})")

session = sessions.StartSession(pb.StartSessionRequest(pype_id=pype.pype_id, end_user_id=user.subject_id), metadata=auth(key))
sessions.JoinSession(
    pb.JoinSessionRequest(session_id=session.session_id, participant_id=agent, kind=pb.PARTICIPANT_KIND_AGENT),
    metadata=auth(key),
)
lines = [
    (user.subject_id, "My flight was cancelled, can you rebook me?"),
    (agent, "Of course: tomorrow 9:40, seat 12A. Confirmed."),
    (user.subject_id, "Perfect, thank you!"),
]
for sender, body in lines:
    r = sessions.PostMessage(
        pb.PostMessageRequest(session_id=session.session_id, sender_id=sender, body=body, device="python"),
        metadata=auth(key, session.session_id),
    )
    print(f"posted #{r.seq}")

watched = []
for ev in sessions.WatchSession(pb.WatchSessionRequest(session_id=session.session_id), metadata=auth(key), timeout=10):
    if ev.WhichOneof("event") == "message":
        watched.append(ev.message.body)
        print(f"watched #{ev.message.seq}: {ev.message.body!r}")
    if len(watched) == len(lines):
        break
assert watched == [b for _, b in lines], watched

# The tenant's event feed: every message of the tenant, with its resume
# token, from the start until the feed says it is live.
feed = irpc.IntegrationServiceStub(channel).SubscribeTenantEvents(
    ipb.SubscribeTenantEventsRequest(from_start=True, types=["message.posted"]), metadata=auth(key), timeout=20
)
fed, token = [], None
for item in feed:
    kind = item.WhichOneof("item")
    if kind == "event":
        e = item.event
        assert e.type == "message.posted" and e.session_id == session.session_id and e.session_seq > 0, e
        assert token is None or e.position > token, (token, e.position)
        fed.append(e.message_posted.body)
        token = e.position
    elif kind == "live":
        break
feed.cancel()
assert fed == [b for _, b in lines], fed
print(f"tenant feed: {len(fed)} message.posted events, resume token {token}")

try:
    sessions.PostMessage(pb.PostMessageRequest(session_id="not-a-uuid", sender_id=agent, body="x"), metadata=auth(key))
    raise SystemExit("bad input was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
    assert e.details().startswith("session_id"), e.details()
    print(f"bad input refused: {e.code().name} {e.details()!r}")

# Media: a 2.5 MiB file in 256 KiB chunks, attached to a message, fetched by range.
media = rpc.MediaServiceStub(channel)
pdf = b"%PDF-1.7 boarding pass " + bytes((i * 31 + 7) % 251 for i in range(2_621_440 - 23))
digest = hashlib.sha256(pdf).digest()


def upload_parts():
    yield pb.UploadMediaRequest(
        start=pb.UploadStart(
            session_id=session.session_id,
            uploader_id=agent,
            content_type="application/pdf",
            size=len(pdf),
            sha256=digest,
            file_name="boarding-pass.pdf",
        )
    )
    for at in range(0, len(pdf), 262_144):
        yield pb.UploadMediaRequest(chunk=pb.UploadChunk(offset=at, data=pdf[at : at + 262_144]))


uploaded = media.UploadMedia(upload_parts(), metadata=auth(key))
assert uploaded.size == len(pdf) and uploaded.sha256 == digest, uploaded
sessions.PostMessage(
    pb.PostMessageRequest(
        session_id=session.session_id, sender_id=agent, body="Your boarding pass", attachment_ids=[uploaded.media_id]
    ),
    metadata=auth(key),
)
got = b"".join(
    c.data
    for c in media.DownloadMedia(
        pb.DownloadMediaRequest(session_id=session.session_id, media_id=uploaded.media_id), metadata=auth(key)
    )
)
assert hashlib.sha256(got).digest() == digest
part = b"".join(
    c.data
    for c in media.DownloadMedia(
        pb.DownloadMediaRequest(session_id=session.session_id, media_id=uploaded.media_id, offset=1_048_570, length=12),
        metadata=auth(key),
    )
)
assert part == pdf[1_048_570:1_048_582], part
try:
    list(media.DownloadMedia(
        pb.DownloadMediaRequest(session_id=session.session_id, media_id=uploaded.media_id, offset=len(pdf) + 1),
        metadata=auth(key),
    ))
    raise SystemExit("a range past the end was served")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.OUT_OF_RANGE, e.code()
print(f"media {uploaded.media_id}: {len(pdf)} bytes up and back, a 12-byte range across a chunk boundary, sha256 ok")
lines.append((agent, "Your boarding pass"))

closed = sessions.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), metadata=auth(key))
assert closed.state == pb.SESSION_STATE_CLOSED

# The read models, analytics and the erasure process.
views = rpc.ViewServiceStub(channel)
msgs = views.ListMessages(pb.ListMessagesRequest(session_id=session.session_id), metadata=auth(key)).messages
assert [m.body for m in msgs] == [b for _, b in lines], msgs
overview = views.GetPypeOverview(pb.GetPypeOverviewRequest(pype_id=pype.pype_id), metadata=auth(key))
assert overview.sessions_total == 1 and overview.closed == 1, overview
print(f"view: {len(msgs)} messages; Pype overview: {overview.sessions_total} Session(s), {overview.closed} closed")
now = int(time.time() * 1e6)
cells = rpc.AnalyticsServiceStub(channel).QueryAnalytics(
    pb.QueryAnalyticsRequest(
        pype_id=pype.pype_id, granularity=pb.GRANULARITY_DAY, from_micros=now - 86_400_000_000, to_micros=now + 86_400_000_000
    ),
    metadata=auth(key),
)
assert cells.cells and all(c.suppressed for c in cells.cells), cells
print(f"analytics: {len(cells.cells)} cell(s), suppressed below k={cells.k}")
erasure = rpc.ErasureServiceStub(channel)
status = erasure.RequestErasure(pb.RequestErasureRequest(subject_id=user.subject_id), metadata=auth(key))
for _ in range(300):
    if status.step == "certified":
        break
    time.sleep(0.02)
    status = erasure.GetErasure(pb.GetErasureRequest(subject_id=user.subject_id), metadata=auth(key))
assert status.step == "certified", status
assert '"format":"pypes-erasure-certificate/v1"' in status.certificate, status.certificate
msgs = views.ListMessages(pb.ListMessagesRequest(session_id=session.session_id), metadata=auth(key)).messages
assert all(m.body == "[erased]" for m in msgs), msgs
try:
    list(media.DownloadMedia(
        pb.DownloadMediaRequest(session_id=session.session_id, media_id=uploaded.media_id), metadata=auth(key)
    ))
    raise SystemExit("erased media was served")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.code()
print(f"erasure {status.request_id}: certified; messages now read {msgs[0].body!r}; the file is gone")
print("python client: OK")
