// Five minutes with pypes from TypeScript: a Pype, an end user, a Session,
// messages posted, the Session watched live and the tenant's event feed
// followed, all with one tenant API key.
//
//   cd clients/typescript && npm ci && npm run build
//   PYPES_API_KEY=pypes_... node dist/examples/quickstart.js 127.0.0.1:50051
//
// Exits non-zero if anything is not as expected.

import { randomUUID } from "node:crypto";
import { ClientError, Status, api, connect } from "../src";

async function main(): Promise<void> {
  const target = process.argv[2];
  const key = process.env.PYPES_API_KEY;
  if (!target || !key) throw new Error("usage: PYPES_API_KEY=... node quickstart.js host:port");
  const c = connect(target, key);
  const stop = new AbortController();
  try {
    // 1. A Pype, an agent on it, and an end user.
    const pype = await c.pypes.createPype({ name: "Support" });
    const agent = randomUUID();
    await c.pypes.assignMember({
      pypeId: pype.pypeId,
      memberId: agent,
      kind: api.ParticipantKind.PARTICIPANT_KIND_AGENT,
      assigned: true,
    });
    const user = await c.subjects.registerSubject({
      username: `ts.${randomUUID().slice(0, 8)}`,
      email: "ts@example.com",
      attestedAtLeast13: true,
    });

    // 2. Follow the tenant's event feed from now, in the background.
    const fed: string[] = [];
    let markLive: () => void = () => {};
    const live = new Promise<void>((resolve) => (markLive = resolve));
    const following = (async () => {
      for await (const item of c.integration.subscribeTenantEvents({}, { signal: stop.signal })) {
        if (item.live) markLive();
        const e = item.event;
        if (!e) continue;
        console.log(`feed: ${e.type.padEnd(22)} position=${e.position} session_seq=${e.sessionSeq} id=${e.eventId}`);
        if (e.type === "message.posted") fed.push(e.messagePosted?.body ?? "");
      }
    })().catch((err) => {
      if (!stop.signal.aborted) throw err;
    });
    await live;

    // 3. A Session, watched live while messages are posted.
    const session = await c.sessions.startSession({ pypeId: pype.pypeId, endUserId: user.subjectId });
    await c.sessions.joinSession({
      sessionId: session.sessionId,
      participantId: agent,
      kind: api.ParticipantKind.PARTICIPANT_KIND_AGENT,
    });
    const lines: [string, string][] = [
      [user.subjectId, "Hello, my parcel did not arrive."],
      [agent, "Sorry! A new one ships today."],
    ];
    const watched: string[] = [];
    const watching = (async () => {
      for await (const event of c.sessions.watchSession({ sessionId: session.sessionId }, { signal: stop.signal })) {
        if (!event.message) continue;
        watched.push(event.message.body);
        console.log(`watched #${event.message.seq}: ${JSON.stringify(event.message.body)}`);
        if (watched.length === lines.length) return;
      }
    })();
    for (const [senderId, body] of lines) {
      const posted = await c.sessions.postMessage({ sessionId: session.sessionId, senderId, body });
      console.log(`posted #${posted.seq}: ${JSON.stringify(body)}`);
    }

    // 4. Both streams deliver both messages, in order.
    const want = lines.map(([, body]) => body);
    await Promise.race([watching, new Promise((_, no) => setTimeout(() => no(new Error("watch timed out")), 10_000))]);
    const deadline = Date.now() + 10_000;
    while (fed.length < want.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (JSON.stringify(watched) !== JSON.stringify(want)) throw new Error(`watched ${JSON.stringify(watched)}`);
    if (JSON.stringify(fed) !== JSON.stringify(want)) throw new Error(`feed ${JSON.stringify(fed)}`);

    // 5. Bad input is refused with a status naming the field.
    try {
      await c.sessions.postMessage({ sessionId: "not-a-uuid", senderId: agent, body: "x" });
      throw new Error("bad input was accepted");
    } catch (err) {
      if (!(err instanceof ClientError) || err.code !== Status.INVALID_ARGUMENT || !err.details.startsWith("session_id"))
        throw err;
      console.log(`bad input refused: INVALID_ARGUMENT ${JSON.stringify(err.details)}`);
    }
    stop.abort();
    await following;
    console.log("quickstart: OK");
  } finally {
    stop.abort();
    c.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
