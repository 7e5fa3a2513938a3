//! The peers `loadgen peers` reaches over gRPC, each in its own process on
//! loopback:
//!
//! - `umadb`: UmaDB's server (`cargo install umadb`, by
//!   `benches/peers/install.sh`), a "stream" being a tag; appends carry
//!   no condition (like `ExpectedVersion::Any` on the other systems), a
//!   whole-stream read is a `Read` of the events with the stream's tag;
//! - `pypes_grpc`: the `pypes` server on a fresh data directory, a stream
//!   being a Session: an append is `PostMessage` (authentication, the
//!   Session actor, AES-256-GCM under the Session's key, a durable append,
//!   the reply), a whole-stream read is `ListMessages` paged to the end.
//!
//! The UmaDB client is written here from UmaDB's published protocol
//! (`umadb.v1.DCB`, in the `umadb-proto` crate) with prost derives: its own
//! client crate is built on a tonic release the workspace does not use.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use proto::api as pb;
use tonic::transport::Channel;

use crate::peers_common::Appender;

/// `umadb.v1` messages (only the fields this client uses; prost skips the
/// others when decoding).
mod uma {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(string, tag = "1")]
        pub event_type: String,
        #[prost(string, repeated, tag = "2")]
        pub tags: Vec<String>,
        #[prost(bytes = "vec", tag = "3")]
        pub data: Vec<u8>,
        #[prost(string, tag = "4")]
        pub uuid: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SequencedEvent {
        #[prost(uint64, tag = "1")]
        pub position: u64,
        #[prost(message, optional, tag = "2")]
        pub event: Option<Event>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryItem {
        #[prost(string, repeated, tag = "1")]
        pub types: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub tags: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Query {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<QueryItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadRequest {
        #[prost(message, optional, tag = "1")]
        pub query: Option<Query>,
        #[prost(uint64, optional, tag = "2")]
        pub start: Option<u64>,
        #[prost(bool, optional, tag = "3")]
        pub backwards: Option<bool>,
        #[prost(uint32, optional, tag = "4")]
        pub limit: Option<u32>,
        #[prost(uint32, optional, tag = "6")]
        pub batch_size: Option<u32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadResponse {
        #[prost(message, repeated, tag = "1")]
        pub events: Vec<SequencedEvent>,
        #[prost(uint64, optional, tag = "2")]
        pub head: Option<u64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AppendRequest {
        #[prost(message, repeated, tag = "1")]
        pub events: Vec<Event>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AppendResponse {
        #[prost(uint64, tag = "1")]
        pub position: u64,
    }
}

/// Connections per gRPC peer: the clients are spread over them (one
/// HTTP/2 connection would cap the streams in flight).
pub(crate) const CONNECTIONS: usize = 8;

async fn channels(url: &str) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        out.push(Channel::from_shared(url.to_string())?.tcp_nodelay(true).connect().await?);
    }
    Ok(out)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// UmaDB's server on a fresh database under `dir`.
pub(crate) struct UmaDb {
    proc: crate::apibench::Proc,
}

impl UmaDb {
    pub(crate) async fn start(binary: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--db-path"])
            .arg(dir.join("uma.db"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let proc = crate::apibench::Proc::adopt(child, url.clone());
        for _ in 0..300 {
            if let Ok(ch) = Channel::from_shared(url.clone())?.connect().await {
                // Answering a read means the database is open.
                let mut grpc = tonic::client::Grpc::new(ch);
                if grpc.ready().await.is_ok() {
                    let request = uma::ReadRequest { limit: Some(1), ..Default::default() };
                    if grpc
                        .server_streaming(
                            tonic::Request::new(request),
                            path(READ),
                            codec::<uma::ReadRequest, uma::ReadResponse>(),
                        )
                        .await
                        .is_ok()
                    {
                        return Ok(Self { proc });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("UmaDB at {url} did not answer within 30 s")
    }

    pub(crate) async fn client(&self) -> Result<UmaAppender> {
        Ok(UmaAppender { channels: channels(&self.proc.addr).await? })
    }
}

const READ: &str = "/umadb.v1.DCB/Read";
const APPEND: &str = "/umadb.v1.DCB/Append";

fn path(path: &'static str) -> tonic::codegen::http::uri::PathAndQuery {
    tonic::codegen::http::uri::PathAndQuery::from_static(path)
}

fn codec<Req, Resp>() -> tonic::codec::ProstCodec<Req, Resp>
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    tonic::codec::ProstCodec::default()
}

pub(crate) struct UmaAppender {
    channels: Vec<Channel>,
}

impl UmaAppender {
    async fn append_events(&self, client: usize, events: Vec<uma::Event>) -> Result<u64> {
        let mut grpc = tonic::client::Grpc::new(self.channels[client % self.channels.len()].clone());
        grpc.ready().await?;
        let r = grpc
            .unary(tonic::Request::new(uma::AppendRequest { events }), path(APPEND), codec::<_, uma::AppendResponse>())
            .await?;
        Ok(r.into_inner().position)
    }

    /// Reads events matching `query` (all events when `None`) from
    /// `start`, in batches of `batch`; returns how many.
    pub(crate) async fn read_count(&self, client: usize, query: Option<uma::Query>, batch: u32) -> Result<usize> {
        let mut grpc = tonic::client::Grpc::new(self.channels[client % self.channels.len()].clone());
        grpc.ready().await?;
        let request = uma::ReadRequest { query, batch_size: Some(batch), ..Default::default() };
        let mut stream = grpc
            .server_streaming(tonic::Request::new(request), path(READ), codec::<_, uma::ReadResponse>())
            .await?
            .into_inner();
        let mut n = 0;
        while let Some(page) = stream.message().await? {
            n += page.events.len();
        }
        Ok(n)
    }
}

fn uma_event(stream: usize, payload: &[u8]) -> uma::Event {
    uma::Event {
        event_type: "Posted".into(),
        tags: vec![format!("session-{stream}")],
        data: payload.to_vec(),
        uuid: uuid::Uuid::now_v7().to_string(),
    }
}

impl Appender for UmaAppender {
    fn append(&self, writer: usize, stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let event = uma_event(stream, payload);
        Box::pin(async move {
            self.append_events(writer, vec![event]).await?;
            Ok(())
        })
    }

    fn read(&self, reader: usize, stream: usize) -> eventlog::BoxFuture<'_, Result<usize>> {
        let query =
            uma::Query { items: vec![uma::QueryItem { types: Vec::new(), tags: vec![format!("session-{stream}")] }] };
        Box::pin(async move { self.read_count(reader, Some(query), 1000).await })
    }

    fn seed(&self, streams: usize, per_stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let payload = payload.to_vec();
        Box::pin(async move {
            for s in 0..streams {
                self.append_events(0, (0..per_stream).map(|_| uma_event(s, &payload)).collect()).await?;
            }
            Ok(())
        })
    }
}

/// The pypes server (the release `pypes` next to `loadgen`) on a fresh
/// data directory, with `streams` Sessions of one end user.
pub(crate) struct PypesGrpc {
    _proc: crate::apibench::Proc,
    channels: Vec<Channel>,
    world: Arc<crate::apibench::World>,
}

impl PypesGrpc {
    pub(crate) async fn start(dir: &Path, streams: usize) -> Result<Self> {
        let proc = crate::apibench::start_pypes(dir, streams * 2 + 100)?;
        proc.ready().await?;
        let channels = channels(&proc.addr).await?;
        let world = Arc::new(crate::apibench::world(channels[0].clone(), streams, 64).await?);
        let me = Self { _proc: proc, channels, world };
        // Each Session's first message makes its content key: not measured.
        me.seed(streams, 1, &[b'x'; 256]).await?;
        Ok(me)
    }

    async fn post(&self, client: usize, stream: usize, body: String) -> Result<()> {
        let mut c =
            pb::session_service_client::SessionServiceClient::new(self.channels[client % self.channels.len()].clone());
        c.post_message(crate::apibench::authed(
            &self.world.key,
            pb::PostMessageRequest {
                session_id: self.world.sessions[stream % self.world.sessions.len()].clone(),
                sender_id: self.world.user.clone(),
                body,
                ..Default::default()
            },
        ))
        .await?;
        Ok(())
    }
}

/// A message body of `payload`'s length (the API takes text).
fn body_of(payload: &[u8]) -> String {
    payload.iter().map(|b| char::from(b'a' + b % 26)).collect()
}

impl Appender for PypesGrpc {
    fn append(&self, writer: usize, stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let body = body_of(payload);
        Box::pin(self.post(writer, stream, body))
    }

    fn read(&self, reader: usize, stream: usize) -> eventlog::BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut c =
                pb::view_service_client::ViewServiceClient::new(self.channels[reader % self.channels.len()].clone());
            let session = self.world.sessions[stream % self.world.sessions.len()].clone();
            let (mut after, mut n) = (0, 0);
            loop {
                let page = c
                    .list_messages(crate::apibench::authed(
                        &self.world.key,
                        pb::ListMessagesRequest { session_id: session.clone(), after_seq: after, page_size: 500 },
                    ))
                    .await?
                    .into_inner();
                n += page.messages.len();
                if page.next_after_seq == 0 {
                    return Ok(n);
                }
                after = page.next_after_seq;
            }
        })
    }

    fn seed(&self, streams: usize, per_stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let body = body_of(payload);
        Box::pin(async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let total = streams * per_stream;
            let workers = (0..64).map(|w| {
                let (next, body) = (next.clone(), body.clone());
                async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            return Ok::<_, anyhow::Error>(());
                        }
                        self.post(w, i % streams, body.clone()).await?;
                    }
                }
            });
            for r in futures::future::join_all(workers).await {
                r?;
            }
            Ok(())
        })
    }
}

/// The messaging scenario: end users and agents talking in `sessions`
/// Sessions over pypes' gRPC API. Setup (not measured): a tenant, a Pype
/// with 20 agents, 1,000 end users (at most one per Session), the Sessions (end user `i % 1000`,
/// agent `i % 20` joined), one message each. Then `clients` loops each
/// pick a Session (seeded) and play a turn: the end user posts (with its
/// device), the agent replies, the agent's read horizon moves to the
/// reply. Measured: messages per second and the latency of each post;
/// alternating with rounds of a bare tonic echo of the same body from as
/// many clients (the same-run baseline; `ratio` = messages/s ÷ echo/s).
pub(crate) async fn messaging(
    work: &Path,
    sessions: usize,
    clients: usize,
    o: &crate::peers_common::Options,
) -> Result<(
    crate::peers_common::Round,
    crate::peers_common::Round,
    Vec<crate::peers_common::Round>,
    Vec<crate::peers_common::Round>,
)> {
    use crate::apibench::authed;
    use crate::peers_common::median;
    // 1,000 end users (fewer for fewer Sessions), 20 agents.
    let users_n = sessions.clamp(1, 1000);
    const AGENTS: usize = 20;
    let proc = crate::apibench::start_pypes(&work.join("pypes-messaging"), sessions * 2 + 100)?;
    proc.ready().await?;
    let chans = channels(&proc.addr).await?;
    let started = std::time::Instant::now();
    let mut pypes = pb::pype_service_client::PypeServiceClient::new(chans[0].clone());
    let (key, pype) = crate::apibench::tenant_with_pype(&chans[0], "Messaging").await?;
    let agents: Vec<String> = (0..AGENTS).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for a in &agents {
        pypes
            .assign_member(authed(
                &key,
                pb::AssignMemberRequest {
                    pype_id: pype.clone(),
                    member_id: a.clone(),
                    kind: pb::ParticipantKind::Agent as i32,
                    assigned: true,
                },
            ))
            .await?;
    }
    // End users, then Sessions (joined by their agent, one message each), 64 at a time.
    let users: Vec<String> = parallel(users_n, 64, |i| {
        let (ch, key) = (chans[i % chans.len()].clone(), key.clone());
        async move {
            let mut c = pb::subject_service_client::SubjectServiceClient::new(ch);
            let r = c
                .register_subject(authed(
                    &key,
                    pb::RegisterSubjectRequest {
                        username: format!("user{i}"),
                        email: format!("user{i}@example.com"),
                        attested_at_least_13: true,
                        ..Default::default()
                    },
                ))
                .await?;
            Ok(r.into_inner().subject_id)
        }
    })
    .await?;
    let ids: Vec<String> = parallel(sessions, 64, |i| {
        let (ch, key, pype, user, agent) = (
            chans[i % chans.len()].clone(),
            key.clone(),
            pype.clone(),
            users[i % users_n].clone(),
            agents[i % AGENTS].clone(),
        );
        async move {
            let mut c = pb::session_service_client::SessionServiceClient::new(ch);
            let id = c
                .start_session(authed(
                    &key,
                    pb::StartSessionRequest {
                        pype_id: pype,
                        end_user_id: user.clone(),
                        timers: None,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .session_id;
            c.join_session(authed(
                &key,
                pb::JoinSessionRequest {
                    session_id: id.clone(),
                    participant_id: agent,
                    kind: pb::ParticipantKind::Agent as i32,
                },
            ))
            .await?;
            c.post_message(authed(
                &key,
                pb::PostMessageRequest {
                    session_id: id.clone(),
                    sender_id: user,
                    body: "Hello".into(),
                    ..Default::default()
                },
            ))
            .await?;
            Ok(id)
        }
    })
    .await?;
    println!(
        "# messaging: {users_n} end users, {AGENTS} agents, {} Sessions ready in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let mut echo_cmd = Command::new(std::env::current_exe()?);
    echo_cmd.arg("echo-server");
    let echo_proc = crate::apibench::spawn(echo_cmd, "echo=")?;
    let echo_chans = channels(&echo_proc.addr).await?;
    let world = Arc::new((key, ids, users, agents));
    let body = "x".repeat(256);
    let (mut talk, mut echo) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        // The echo baseline.
        let (echo_body, echo_chans2) = (body.clone().into_bytes(), echo_chans.clone());
        let r = timed_loops(clients, o, move |c, _| {
            let (ch, payload) = (echo_chans2[c % echo_chans2.len()].clone(), echo_body.clone());
            async move {
                let t0 = std::time::Instant::now();
                proto::bench::echo_service_client::EchoServiceClient::new(ch)
                    .echo(proto::bench::EchoRequest { payload })
                    .await?;
                Ok(vec![t0.elapsed()])
            }
        })
        .await?;
        echo.push(r);
        let (chans2, world2, body2) = (chans.clone(), world.clone(), body.clone());
        let r = timed_loops(clients, o, move |c, pick| {
            let (ch, w, body) = (chans2[c % chans2.len()].clone(), world2.clone(), body2.clone());
            async move {
                let (key, ids, users, agents) = &*w;
                let s = (pick as usize) % ids.len();
                let mut c = pb::session_service_client::SessionServiceClient::new(ch);
                let t0 = std::time::Instant::now();
                c.post_message(authed(
                    key,
                    pb::PostMessageRequest {
                        session_id: ids[s].clone(),
                        sender_id: users[s % users_n].clone(),
                        body: body.clone(),
                        device: "iPhone 15, iOS 18".into(),
                        ..Default::default()
                    },
                ))
                .await?;
                let user_took = t0.elapsed();
                let t1 = std::time::Instant::now();
                let reply = c
                    .post_message(authed(
                        key,
                        pb::PostMessageRequest {
                            session_id: ids[s].clone(),
                            sender_id: agents[s % AGENTS].clone(),
                            body,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                let agent_took = t1.elapsed();
                c.advance_read_horizon(authed(
                    key,
                    pb::AdvanceReadHorizonRequest {
                        session_id: ids[s].clone(),
                        participant_id: agents[s % AGENTS].clone(),
                        up_to: reply.seq,
                        private: false,
                    },
                ))
                .await?;
                Ok(vec![user_took, agent_took])
            }
        })
        .await?;
        talk.push(r);
    }
    Ok((median(&talk), median(&echo), talk, echo))
}

/// Runs `n` jobs, `width` at a time, keeping their results in order.
async fn parallel<T, F, Fut>(n: usize, width: usize, job: F) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    use futures::stream::{StreamExt, TryStreamExt};
    futures::stream::iter((0..n).map(job)).buffered(width).try_collect().await
}

/// `clients` loops of `op(client, seeded pick)` for the warm-up and the
/// measured seconds; each op returns the latencies it measured (one per
/// counted event). Returns events/s and their percentiles.
async fn timed_loops<F, Fut>(
    clients: usize,
    o: &crate::peers_common::Options,
    op: F,
) -> Result<crate::peers_common::Round>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send,
{
    let start = std::time::Instant::now() + Duration::from_secs_f64(o.warmup);
    let end = start + Duration::from_secs_f64(o.seconds);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let op = op.clone();
        let mut rng = o.seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tasks.push(tokio::spawn(async move {
            let mut h = crate::peers_common::histogram()?;
            loop {
                let now = std::time::Instant::now();
                if now >= end {
                    return Ok::<_, anyhow::Error>(h);
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let took = op(c, rng).await?;
                if now >= start {
                    for t in took {
                        h.record((t.as_micros() as u64).max(1))?;
                    }
                }
            }
        }));
    }
    let mut all = crate::peers_common::histogram()?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(crate::peers_common::round_of(&all, Duration::from_secs_f64(o.seconds)))
}

/// A bare tonic unary echo server (`loadgen echo-server`, its own process):
/// the ceiling of any unary gRPC append on this machine with this client.
/// Its "append" echoes the 256-byte payload; it stores nothing.
pub(crate) struct Echo {
    _proc: crate::apibench::Proc,
    channels: Vec<Channel>,
}

impl Echo {
    pub(crate) async fn start() -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("echo-server");
        let proc = crate::apibench::spawn(cmd, "echo=")?;
        let channels = channels(&proc.addr).await?;
        Ok(Self { _proc: proc, channels })
    }
}

impl Appender for Echo {
    fn append(&self, writer: usize, _stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let payload = payload.to_vec();
        let ch = self.channels[writer % self.channels.len()].clone();
        Box::pin(async move {
            proto::bench::echo_service_client::EchoServiceClient::new(ch)
                .echo(proto::bench::EchoRequest { payload })
                .await?;
            Ok(())
        })
    }

    fn read(&self, _reader: usize, _stream: usize) -> eventlog::BoxFuture<'_, Result<usize>> {
        Box::pin(async { anyhow::bail!("the echo baseline has no reads") })
    }

    fn seed(&self, _streams: usize, _per_stream: usize, _payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
