"""The client side of benches/callgrind/run.sh: sets up a tenant, a Pype, an
end user and one Session, then posts N messages one after another (no
concurrency: the count per message does not depend on scheduling).
    python post_message.py <grpc host:port> <admin key> <stubs dir> <N>
"""
import sys

addr, admin, stubs, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, stubs)
import grpc  # noqa: E402
from pypes.api.v1 import api_pb2 as pb, api_pb2_grpc as rpc  # noqa: E402

ch = grpc.insecure_channel(addr)
grpc.channel_ready_future(ch).result(timeout=120)
md = lambda k: [("authorization", f"Bearer {k}")]  # noqa: E731
t = rpc.TenantServiceStub(ch).CreateTenant(pb.CreateTenantRequest(name="Count Co"), metadata=md(admin), timeout=120)
key = t.api_key
p = rpc.PypeServiceStub(ch).CreatePype(pb.CreatePypeRequest(name="Help"), metadata=md(key), timeout=120)
u = rpc.SubjectServiceStub(ch).RegisterSubject(
    pb.RegisterSubjectRequest(username="counter", email="c@example.com", attested_at_least_13=True),
    metadata=md(key), timeout=120)
sessions = rpc.SessionServiceStub(ch)
s = sessions.StartSession(pb.StartSessionRequest(pype_id=p.pype_id, end_user_id=u.subject_id), metadata=md(key), timeout=120)
body = "x" * 256
for i in range(n):
    sessions.PostMessage(pb.PostMessageRequest(session_id=s.session_id, sender_id=u.subject_id, body=body),
                         metadata=md(key), timeout=120)
print(f"posted {n}")
