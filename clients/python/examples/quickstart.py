"""Five minutes with pypes from Python: a Pype, an end user, a Session,
messages posted, the Session watched live and the tenant's event feed
followed, all with one tenant API key.

    pip install ./clients/python
    PYPES_API_KEY=pypes_... python examples/quickstart.py 127.0.0.1:50051

Add `--tls` (and `--ca-cert ca.pem` for a private CA) for a server off
loopback. Exits non-zero if anything is not as expected.
"""

import argparse
import os
import queue
import threading
import uuid

from pypes_client import Client, api_pb2 as pb, integration_pb2 as ipb

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("target", help="host:port of the pypes gRPC API")
parser.add_argument("--tls", action="store_true")
parser.add_argument("--ca-cert")
args = parser.parse_args()
key = os.environ["PYPES_API_KEY"]
ca = open(args.ca_cert, "rb").read() if args.ca_cert else None

with Client(args.target, key, tls=args.tls, ca_cert=ca) as client:
    client.wait_ready()

    # 1. A Pype (a branded channel), an agent on it, and an end user.
    pype = client.pypes.CreatePype(pb.CreatePypeRequest(name="Support", description="Quickstart"))
    agent = str(uuid.uuid4())
    client.pypes.AssignMember(
        pb.AssignMemberRequest(pype_id=pype.pype_id, member_id=agent, kind=pb.PARTICIPANT_KIND_AGENT, assigned=True)
    )
    user = client.subjects.RegisterSubject(
        pb.RegisterSubjectRequest(
            username=f"quick.{uuid.uuid4().hex[:8]}", email="quick@example.com", attested_at_least_13=True
        )
    )

    # 2. Follow the tenant's event feed from now, in the background.
    feed_items: "queue.Queue" = queue.Queue()
    feed = client.integration.SubscribeTenantEvents(ipb.SubscribeTenantEventsRequest(), timeout=30)

    def follow_feed():
        try:
            for item in feed:
                feed_items.put(item)
        except Exception as e:  # the stream ends when we cancel it
            feed_items.put(e)

    threading.Thread(target=follow_feed, daemon=True).start()
    first = feed_items.get(timeout=10)
    assert first.WhichOneof("item") == "live", first  # caught up: from here on it is live

    # 3. A Session, watched live while messages are posted.
    session = client.sessions.StartSession(pb.StartSessionRequest(pype_id=pype.pype_id, end_user_id=user.subject_id))
    client.sessions.JoinSession(
        pb.JoinSessionRequest(session_id=session.session_id, participant_id=agent, kind=pb.PARTICIPANT_KIND_AGENT)
    )
    watch = client.sessions.WatchSession(pb.WatchSessionRequest(session_id=session.session_id), timeout=30)
    lines = [(user.subject_id, "Hello, my parcel did not arrive."), (agent, "Sorry! A new one ships today.")]
    for sender, body in lines:
        posted = client.sessions.PostMessage(
            pb.PostMessageRequest(session_id=session.session_id, sender_id=sender, body=body)
        )
        print(f"posted #{posted.seq}: {body!r}")

    watched: "list[str]" = []
    for event in watch:
        if event.WhichOneof("event") == "message":
            watched.append(event.message.body)
            print(f"watched #{event.message.seq}: {event.message.body!r}")
        if len(watched) == len(lines):
            break
    watch.cancel()
    assert watched == [b for _, b in lines], watched

    # 4. The same, as the tenant's integration events (what a CRM or a bot
    #    would consume): position = resume token, event_id = idempotency key.
    fed: "list[str]" = []
    while len(fed) < len(lines):
        item = feed_items.get(timeout=10)
        assert not isinstance(item, Exception), item
        if item.WhichOneof("item") != "event":
            continue
        e = item.event
        print(f"feed: {e.type:<22} position={e.position} session_seq={e.session_seq} id={e.event_id}")
        if e.type == "message.posted":
            fed.append(e.message_posted.body)
    feed.cancel()
    assert fed == [b for _, b in lines], fed
    print("quickstart: OK")
