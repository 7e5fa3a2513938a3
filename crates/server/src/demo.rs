//! `pypes demo`: a whole scenario against a running server over gRPC,
//! printed as it happens: a tenant, a Pype with an agent, an end user, a
//! Session with messages both ways (watched live), the idle timer turning
//! it inactive, a message reviving it, and the close.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Client, refused};
use anyhow::Context;
use proto::api as pb;
use tonic::Request;
use tonic::metadata::MetadataValue;

fn authed<T>(key: &str, msg: T) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {key}"))?);
    Ok(r)
}

fn state_name(s: i32) -> &'static str {
    match pb::SessionState::try_from(s) {
        Ok(pb::SessionState::Active) => "active",
        Ok(pb::SessionState::Inactive) => "inactive",
        Ok(pb::SessionState::Closed) => "closed",
        _ => "?",
    }
}

pub async fn run(client: &Client, admin_key: &str) -> anyhow::Result<()> {
    let channel = client.connect().await?;
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let mut pypes = pb::pype_service_client::PypeServiceClient::new(channel.clone());
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let mut sessions = pb::session_service_client::SessionServiceClient::new(channel.clone());

    let created = tenants
        .create_tenant(authed(
            admin_key,
            pb::CreateTenantRequest { name: "Acme Bank (demo)".into(), ..Default::default() },
        )?)
        .await
        .map_err(|s| refused("creating the tenant", &s))?
        .into_inner();
    let tenant = created.tenant.unwrap_or_default();
    let key = created.api_key;
    println!("1. tenant {:?} created ({}); it got an API key", tenant.name, tenant.tenant_id);

    let agent = uuid::Uuid::now_v7().to_string();
    let pype = pypes
        .create_pype(authed(
            &key,
            pb::CreatePypeRequest {
                name: "Card support".into(),
                description: "Lost and stolen cards".into(),
                timers: Some(pb::Timers { inactive_after_secs: 5, close_after_secs: 3600 }),
            },
        )?)
        .await?
        .into_inner();
    pypes
        .assign_member(authed(
            &key,
            pb::AssignMemberRequest {
                pype_id: pype.pype_id.clone(),
                member_id: agent.clone(),
                kind: pb::ParticipantKind::Agent as i32,
                assigned: true,
            },
        )?)
        .await?;
    println!(
        "2. pype {:?} created ({}); agent {agent} assigned; sessions go inactive after 5 s idle",
        pype.name, pype.pype_id
    );

    let user = subjects
        .register_subject(authed(
            &key,
            pb::RegisterSubjectRequest {
                username: format!("ada-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
                email: "ada@example.com".into(),
                phone: "+4915112345678".into(),
                date_of_birth: "1990-05-17".into(),
                attested_at_least_13: false,
                password: "correct horse battery staple".into(),
            },
        )?)
        .await?
        .into_inner();
    println!(
        "3. end user {:?} registered ({}); their email, phone and password hash are sealed in the log",
        user.username, user.subject_id
    );
    let mut logins = pb::end_user_auth_service_client::EndUserAuthServiceClient::new(channel.clone());
    let wrong = logins
        .login(authed(&key, pb::LoginRequest { username: user.username.clone(), password: "guess".repeat(2) })?)
        .await;
    let login = logins
        .login(authed(
            &key,
            pb::LoginRequest { username: user.username.clone(), password: "correct horse battery staple".into() },
        )?)
        .await?
        .into_inner();
    let info =
        logins.introspect(authed(&key, pb::IntrospectRequest { token: login.token.clone() })?).await?.into_inner();
    println!(
        "   login with a wrong password: {}; with the right one: a token for {} (idle timeout {} s)",
        wrong.map_or_else(
            |e| format!("{} ({})", crate::client::code_name(e.code()), e.message()),
            |_| "accepted?!".into()
        ),
        info.subject_id,
        (info.idle_expires_at_micros - info.created_at_micros) / 1_000_000
    );

    let session = sessions
        .start_session(authed(
            &key,
            pb::StartSessionRequest {
                pype_id: pype.pype_id.clone(),
                end_user_id: user.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    println!("4. session {} started ({})", session.session_id, state_name(session.state));

    let mut watch = sessions
        .watch_session(authed(
            &key,
            pb::WatchSessionRequest { session_id: session.session_id.clone(), from_version: 0 },
        )?)
        .await?
        .into_inner();
    let (user_id, agent_id) = (user.subject_id.clone(), agent.clone());
    let watcher = tokio::spawn(async move {
        while let Ok(Some(ev)) = watch.message().await {
            let line = match ev.event {
                Some(pb::session_event::Event::Started(_)) => "started".to_string(),
                Some(pb::session_event::Event::Joined(p)) => {
                    format!("{} joined", who(&p.participant_id, &user_id, &agent_id))
                }
                Some(pb::session_event::Event::Left(p)) => {
                    format!("{} left", who(&p.participant_id, &user_id, &agent_id))
                }
                Some(pb::session_event::Event::Message(m)) => {
                    let with = match m.attachments.len() {
                        0 => String::new(),
                        n => format!(" with {n} attachment(s)"),
                    };
                    format!("#{} {}: {:?}{with}", m.seq, who(&m.sender_id, &user_id, &agent_id), m.body)
                }
                Some(pb::session_event::Event::MediaUploaded(m)) => {
                    format!(
                        "{} uploaded {} ({} bytes)",
                        who(&m.uploader_id, &user_id, &agent_id),
                        m.content_type,
                        m.size
                    )
                }
                Some(pb::session_event::Event::ReadHorizon(h)) => {
                    format!("{} has read up to #{}", who(&h.participant_id, &user_id, &agent_id), h.up_to)
                }
                Some(pb::session_event::Event::StateChanged(s)) => {
                    format!("now {} (by {})", state_name(s.state), s.reason)
                }
                Some(pb::session_event::Event::Restriction(r)) => {
                    if r.restricted {
                        "processing restricted".into()
                    } else {
                        "restriction lifted".into()
                    }
                }
                Some(pb::session_event::Event::Location(l)) => {
                    format!("{} shared a location: {}", who(&l.participant_id, &user_id, &agent_id), l.location)
                }
                None => "?".into(),
            };
            println!("   watch v{}: {line}", ev.version);
        }
    });

    sessions
        .join_session(authed(
            &key,
            pb::JoinSessionRequest {
                session_id: session.session_id.clone(),
                participant_id: agent.clone(),
                kind: pb::ParticipantKind::Agent as i32,
            },
        )?)
        .await?;
    let exchange = [
        (&user.subject_id, "Hi, my card was stolen this morning.", "iPhone 15"),
        (&agent, "I'm sorry to hear that. I have blocked the card ending 4242.", ""),
        (&user.subject_id, "Thank you! Can you send a new one?", "iPhone 15"),
        (&agent, "Done: it arrives within 3 working days.", ""),
    ];
    for (sender, body, device) in exchange {
        let r = sessions
            .post_message(authed(
                &key,
                pb::PostMessageRequest {
                    session_id: session.session_id.clone(),
                    sender_id: sender.clone(),
                    body: body.into(),
                    device: device.into(),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        println!("5. posted message #{} (durable when acknowledged)", r.seq);
    }
    sessions
        .advance_read_horizon(authed(
            &key,
            pb::AdvanceReadHorizonRequest {
                session_id: session.session_id.clone(),
                participant_id: user.subject_id.clone(),
                up_to: 4,
                private: false,
            },
        )?)
        .await?;

    println!("6. waiting 7 s: the session's idle timer (5 s) makes it inactive");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let s = sessions
        .get_session(authed(&key, pb::GetSessionRequest { session_id: session.session_id.clone() })?)
        .await?
        .into_inner();
    println!("   session is {}", state_name(s.state));
    let r = sessions
        .post_message(authed(
            &key,
            pb::PostMessageRequest {
                session_id: session.session_id.clone(),
                sender_id: user.subject_id.clone(),
                body: "One more thing: thanks!".into(),
                device: "iPhone 15".into(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    println!("7. a new message (#{}) makes it {} again", r.seq, state_name(r.state));
    send_picture(&channel, &key, &session.session_id, &user.subject_id).await?;
    let closed = sessions
        .close_session(authed(&key, pb::CloseSessionRequest { session_id: session.session_id.clone() })?)
        .await?
        .into_inner();
    println!("9. session closed: {}", state_name(closed.state));
    let refused = sessions
        .post_message(authed(
            &key,
            pb::PostMessageRequest {
                session_id: session.session_id.clone(),
                sender_id: agent.clone(),
                body: "hello?".into(),
                device: String::new(),
                ..Default::default()
            },
        )?)
        .await;
    match refused {
        Err(status) => {
            println!(
                "10. writing to the closed session is refused: {} ({})",
                crate::client::code_name(status.code()),
                status.message()
            )
        }
        Ok(_) => anyhow::bail!("a closed session accepted a message"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.abort();
    println!("demo finished");
    Ok(())
}

/// The end user sends a picture: uploaded in chunks, attached to a
/// message, fetched back whole and by range.
async fn send_picture(channel: &tonic::transport::Channel, key: &str, session: &str, user: &str) -> anyhow::Result<()> {
    use sha2::Digest;
    let picture = demo_png(48, 48);
    let digest = sha2::Sha256::digest(&picture).to_vec();
    let start = pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Start(pb::UploadStart {
            session_id: session.into(),
            uploader_id: user.into(),
            content_type: "image/png".into(),
            size: picture.len() as u64,
            sha256: digest.clone(),
            file_name: "receipt.png".into(),
        })),
    };
    let chunks = picture.chunks(2048).scan(0u64, |offset, data| {
        let chunk = pb::UploadChunk { offset: *offset, data: bytes::Bytes::copy_from_slice(data) };
        *offset += data.len() as u64;
        Some(pb::UploadMediaRequest { part: Some(pb::upload_media_request::Part::Chunk(chunk)) })
    });
    let messages: Vec<pb::UploadMediaRequest> = std::iter::once(start).chain(chunks).collect();
    let mut media = pb::media_service_client::MediaServiceClient::new(channel.clone());
    let uploaded = media
        .upload_media(authed(key, tokio_stream::iter(messages))?)
        .await
        .context("uploading the picture")?
        .into_inner();
    let mut sessions = pb::session_service_client::SessionServiceClient::new(channel.clone());
    let posted = sessions
        .post_message(authed(
            key,
            pb::PostMessageRequest {
                session_id: session.into(),
                sender_id: user.into(),
                body: "Here is the receipt.".into(),
                attachment_ids: vec![uploaded.media_id.clone()],
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    println!(
        "8. the end user uploaded a picture ({} bytes, encrypted under its own key) and sent it as message #{}",
        uploaded.size, posted.seq
    );
    let fetch = |offset: u64, length: u64| pb::DownloadMediaRequest {
        session_id: session.into(),
        media_id: uploaded.media_id.clone(),
        participant_id: user.into(),
        offset,
        length,
    };
    let mut back = Vec::new();
    let mut stream = media.download_media(authed(key, fetch(0, 0))?).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        back.extend_from_slice(&chunk.data);
    }
    let same = sha2::Sha256::digest(&back).to_vec() == digest;
    println!("   fetched it back: {} bytes, SHA-256 {}", back.len(), if same { "matches" } else { "DIFFERS" });
    anyhow::ensure!(same, "the picture came back different");
    let mut head = Vec::new();
    let mut stream = media.download_media(authed(key, fetch(1, 3))?).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        head.extend_from_slice(&chunk.data);
    }
    println!("   a range read of bytes 1..4 gives {:?} (the PNG signature)", String::from_utf8_lossy(&head));
    Ok(())
}

/// A small PNG (an RGB gradient), made here so the demo needs no file.
fn demo_png(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            raw.extend_from_slice(&[(x * 255 / width) as u8, (y * 255 / height) as u8, 160]);
        }
    }
    // zlib with stored (uncompressed) deflate blocks.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn who<'a>(id: &str, user: &str, agent: &str) -> &'a str {
    if id == user {
        "end user"
    } else if id == agent {
        "agent"
    } else {
        "someone"
    }
}

/// How a client command prints what it got: for people (aligned, RFC
/// 3339 times) or as one JSON object (`--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

fn when(micros: i64) -> serde_json::Value {
    if micros == 0 { serde_json::Value::Null } else { serde_json::Value::String(audit::time::time_text(micros)) }
}

/// Prints `fields` aligned (`name:  value`), or as one JSON object.
fn print_record(output: Output, fields: &[(&str, serde_json::Value)]) {
    match output {
        Output::Json => {
            let object: serde_json::Map<String, serde_json::Value> =
                fields.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
            println!("{}", serde_json::Value::Object(object));
        }
        Output::Text => {
            let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
            for (k, v) in fields {
                let text = match v {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(items) if items.is_empty() => "-".to_string(),
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                println!("{:<width$} {text}", format!("{k}:"));
            }
        }
    }
}

/// A signed certificate (JSON) and its signature written beside it:
/// `<file>` and `<file>.sig`.
fn write_certificate(path: &std::path::Path, certificate: &str, signature: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(path, certificate).with_context(|| format!("writing {}", path.display()))?;
    let sig = PathBuf::from(format!("{}.sig", path.display()));
    std::fs::write(&sig, format!("{}\n", signature.trim())).with_context(|| format!("writing {}", sig.display()))?;
    Ok(sig)
}

/// A certificate (compact JSON, as signed) indented for people.
fn pretty(certificate: &str) -> String {
    serde_json::from_str::<serde_json::Value>(certificate)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| certificate.to_string())
}

/// What `pypes erase` asks for.
#[derive(Debug, Clone)]
pub struct EraseRequest<'a> {
    pub tenant: &'a str,
    pub subject: &'a str,
    /// Only read the status.
    pub status_only: bool,
    /// Wait for the certificate.
    pub wait: bool,
    pub out: Option<&'a std::path::Path>,
    pub output: Output,
}

/// `pypes erase`: requests the erasure of a subject (admin key), or shows
/// its status; waits for the certificate unless told not to, and prints it.
pub async fn erase(client: &Client, admin_key: &str, req: EraseRequest<'_>) -> anyhow::Result<()> {
    let channel = client.connect().await?;
    let mut erasures = pb::erasure_service_client::ErasureServiceClient::new(channel);
    let get = pb::GetErasureRequest { subject_id: req.subject.into(), tenant_id: req.tenant.into() };
    let mut status = if req.status_only {
        erasures
            .get_erasure(authed(admin_key, get.clone())?)
            .await
            .map_err(|s| refused("reading the erasure's status", &s))?
    } else {
        let r = pb::RequestErasureRequest { subject_id: req.subject.into(), tenant_id: req.tenant.into() };
        erasures.request_erasure(authed(admin_key, r)?).await.map_err(|s| refused("the erasure request", &s))?
    }
    .into_inner();
    let started = std::time::Instant::now();
    if req.wait && !req.status_only {
        while status.step != "certified" {
            if started.elapsed() > Duration::from_secs(120) {
                anyhow::bail!(
                    "no certificate after 2 minutes (step {}); the server keeps going: check with --status",
                    status.step
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = erasures
                .get_erasure(authed(admin_key, get.clone())?)
                .await
                .map_err(|s| refused("reading the erasure's status", &s))?
                .into_inner();
        }
    }
    let mut written = serde_json::Value::Null;
    if let Some(path) = req.out {
        if status.certificate.is_empty() {
            anyhow::bail!(
                "no certificate yet (step {}), so nothing was written to {}; wait for it (without --no-wait) \
                 or ask again with --status",
                status.step,
                path.display()
            );
        }
        write_certificate(path, &status.certificate, &status.signature)?;
        written = path.display().to_string().into();
    }
    let certificate = match req.output {
        Output::Json => serde_json::from_str(&status.certificate).unwrap_or(serde_json::Value::Null),
        Output::Text => serde_json::Value::Null,
    };
    print_record(
        req.output,
        &[
            ("request", status.request_id.clone().into()),
            ("subject", status.subject_id.clone().into()),
            ("tenant", req.tenant.into()),
            ("step", status.step.clone().into()),
            ("requested", when(status.requested_micros)),
            ("due", when(status.due_micros)),
            ("certificate_file", written.clone()),
            ("certificate", certificate),
            (
                "signature",
                if status.signature.is_empty() { serde_json::Value::Null } else { status.signature.clone().into() },
            ),
            (
                "public_key",
                if status.signing_public_key.is_empty() {
                    serde_json::Value::Null
                } else {
                    status.signing_public_key.clone().into()
                },
            ),
        ],
    );
    if req.output == Output::Text && !status.certificate.is_empty() {
        println!("{}", pretty(&status.certificate));
        if let Some(path) = req.out {
            println!("check it with: pypes erase --verify {}", path.display());
        }
    }
    Ok(())
}

/// `pypes export`: streams a subject's export to a file (created 0600:
/// it is personal data) or stdout.
pub async fn export(
    client: &Client,
    admin_key: &str,
    tenant: &str,
    subject: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let channel = client.connect().await?;
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(channel);
    let mut stream = privacy
        .export_subject(authed(
            admin_key,
            pb::ExportSubjectRequest { subject_id: subject.into(), tenant_id: tenant.into() },
        )?)
        .await
        .map_err(|s| refused("the export", &s))?
        .into_inner();
    // Written next to the target and renamed at the end: an export that
    // breaks off leaves no half file under the name asked for.
    let partial = out.map(|p| PathBuf::from(format!("{}.partial", p.display())));
    let mut sink: Box<dyn Write> = match &partial {
        Some(p) => Box::new(std::io::BufWriter::new(crate::client::create_private(p)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut bytes = 0u64;
    let mut complete = false;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = stream.message().await.map_err(|s| refused("the export", &s))? {
            bytes += chunk.data.len() as u64;
            complete = chunk.data.ends_with(b"}\n");
            sink.write_all(&chunk.data)?;
        }
        sink.flush()?;
        if !complete {
            anyhow::bail!("the export ended early after {bytes} bytes (see the server log)");
        }
        Ok(())
    }
    .await;
    drop(sink);
    if let Err(e) = result {
        if let Some(p) = &partial {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    if let (Some(p), Some(out)) = (&partial, out) {
        std::fs::rename(p, out).with_context(|| format!("renaming {} to {}", p.display(), out.display()))?;
        eprintln!("exported {bytes} bytes to {} (mode 0600: it is personal data)", out.display());
    }
    Ok(())
}

/// What `pypes privacy` asks for.
pub enum PrivacyAction {
    Rectify { email: Option<String>, phone: Option<String>, date_of_birth: Option<String> },
    Restrict,
    Lift,
    Grant { purpose: String, policy_version: String },
    Withdraw { purpose: String },
}

/// `pypes privacy ...`: one privacy request for a subject, then its state.
pub async fn privacy(
    client: &Client,
    admin_key: &str,
    tenant: &str,
    subject: &str,
    action: PrivacyAction,
    output: Output,
) -> anyhow::Result<()> {
    let channel = client.connect().await?;
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(channel);
    let r = pb::SubjectRef { subject_id: subject.into(), tenant_id: tenant.into() };
    let consent = |purpose: String, policy_version: String| pb::ConsentRequest {
        subject_id: subject.into(),
        tenant_id: tenant.into(),
        purpose,
        policy_version,
    };
    let (what, got) = match action {
        PrivacyAction::Rectify { email, phone, date_of_birth } => (
            "rectified",
            privacy
                .rectify_subject(authed(
                    admin_key,
                    pb::RectifySubjectRequest {
                        subject_id: subject.into(),
                        tenant_id: tenant.into(),
                        email,
                        phone,
                        date_of_birth,
                    },
                )?)
                .await,
        ),
        PrivacyAction::Restrict => ("processing restricted", privacy.restrict_processing(authed(admin_key, r)?).await),
        PrivacyAction::Lift => ("restriction lifted", privacy.lift_restriction(authed(admin_key, r)?).await),
        PrivacyAction::Grant { purpose, policy_version } => {
            ("consent granted", privacy.grant_consent(authed(admin_key, consent(purpose, policy_version))?).await)
        }
        PrivacyAction::Withdraw { purpose } => {
            ("consent withdrawn", privacy.withdraw_consent(authed(admin_key, consent(purpose, String::new()))?).await)
        }
    };
    let s = got.map_err(|e| refused(&format!("the privacy request ({what})"), &e))?.into_inner();
    let consents: Vec<serde_json::Value> = s
        .consents
        .iter()
        .map(|c| match output {
            Output::Json => serde_json::json!({
                "purpose": c.purpose, "granted": c.granted, "policy_version": c.policy_version
            }),
            Output::Text => format!(
                "{} {} (policy {})",
                c.purpose,
                if c.granted { "granted" } else { "withdrawn" },
                c.policy_version
            )
            .into(),
        })
        .collect();
    print_record(
        output,
        &[
            ("done", what.into()),
            ("subject", s.subject_id.clone().into()),
            ("tenant", tenant.into()),
            (
                "status",
                match pb::SubjectStatus::try_from(s.status) {
                    Ok(pb::SubjectStatus::Active) => "active",
                    Ok(pb::SubjectStatus::Invited) => "invited",
                    Ok(pb::SubjectStatus::Deactivated) => "deactivated",
                    _ => "unknown",
                }
                .into(),
            ),
            ("restricted", s.restricted.into()),
            ("consents", serde_json::Value::Array(consents)),
        ],
    );
    Ok(())
}

/// `pypes tenant cancel|offboarding`.
pub async fn offboarding(
    client: &Client,
    admin_key: &str,
    tenant: &str,
    cancel: bool,
    out: Option<&std::path::Path>,
    output: Output,
) -> anyhow::Result<()> {
    let channel = client.connect().await?;
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel);
    let req = pb::CancelTenantRequest { tenant_id: tenant.into() };
    let o = if cancel {
        tenants.cancel_tenant(authed(admin_key, req)?).await.map_err(|s| refused("cancelling the tenant", &s))?
    } else {
        tenants
            .get_offboarding(authed(admin_key, req)?)
            .await
            .map_err(|s| refused("reading the tenant's offboarding", &s))?
    }
    .into_inner();
    let mut written = serde_json::Value::Null;
    if let Some(p) = out {
        if o.certificate.is_empty() {
            anyhow::bail!(
                "tenant {tenant}: no offboarding certificate yet (the KEK is shredded {}), so nothing was \
                 written to {}; ask again after that",
                if o.shred_due_micros == 0 {
                    "once the tenant is cancelled and its grace period ends".to_string()
                } else {
                    format!("at {}", audit::time::time_text(o.shred_due_micros))
                },
                p.display()
            );
        }
        write_certificate(p, &o.certificate, &o.signature)?;
        written = p.display().to_string().into();
    }
    print_record(
        output,
        &[
            ("tenant", o.tenant_id.clone().into()),
            ("cancelled", when(o.cancelled_at_micros)),
            ("kek_shred_due", when(o.shred_due_micros)),
            ("kek_shredded", when(o.shredded_at_micros)),
            ("certificate_file", written),
            (
                "certificate",
                match output {
                    Output::Json => serde_json::from_str(&o.certificate).unwrap_or(serde_json::Value::Null),
                    Output::Text => serde_json::Value::Null,
                },
            ),
        ],
    );
    if output == Output::Text && !o.certificate.is_empty() {
        println!("{}", pretty(&o.certificate));
    }
    Ok(())
}

/// What `pypes staff` and `pypes tenant revoke-key` do (incident
/// containment, docs/incident-response.md).
#[derive(Debug, Clone)]
pub enum Containment {
    /// Every staff member and the live break-glass grants.
    ListStaff,
    /// A staff member's key stops working and their grants end.
    DisableStaff { staff: String },
    /// A break-glass grant ends now.
    CloseGrant { grant: String },
    /// A tenant's API key stops working (on every node within 5 s).
    RevokeKey { tenant: String, key_id: String },
}

/// Runs a containment step with the admin key and prints what it did.
pub async fn contain(client: &Client, admin_key: &str, step: Containment, output: Output) -> anyhow::Result<()> {
    let channel = client.connect().await?;
    let mut staff = pb::staff_service_client::StaffServiceClient::new(channel.clone());
    let member = |m: &pb::StaffMember| {
        serde_json::json!({
            "staff_id": m.staff_id,
            "role": pb::StaffRole::try_from(m.role).map_or("unknown".to_string(), |r| {
                r.as_str_name().trim_start_matches("STAFF_ROLE_").to_lowercase()
            }),
            "disabled": m.disabled,
        })
    };
    let grant = |g: &pb::BreakGlassGrant| {
        serde_json::json!({
            "grant_id": g.grant_id,
            "staff_id": g.staff_id,
            "tenant_id": g.tenant_id,
            "expires": audit::time::time_text(g.expires_micros),
            "live": g.live,
        })
    };
    match step {
        Containment::ListStaff => {
            let l = staff
                .list_staff(authed(admin_key, pb::ListStaffRequest {})?)
                .await
                .map_err(|s| refused("listing the staff", &s))?
                .into_inner();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({
                        "staff": l.staff.iter().map(member).collect::<Vec<_>>(),
                        "live_grants": l.live_grants.iter().map(grant).collect::<Vec<_>>(),
                    })
                ),
                Output::Text => {
                    println!("{:<38} {:<16} DISABLED", "STAFF", "ROLE");
                    for m in &l.staff {
                        let j = member(m);
                        println!("{:<38} {:<16} {}", m.staff_id, j["role"].as_str().unwrap_or("-"), m.disabled);
                    }
                    println!("\n{} live break-glass grants", l.live_grants.len());
                    for g in &l.live_grants {
                        println!(
                            "  grant {} staff {} tenant {} until {}",
                            g.grant_id,
                            g.staff_id,
                            g.tenant_id,
                            audit::time::time_text(g.expires_micros)
                        );
                    }
                }
            }
        }
        Containment::DisableStaff { staff: id } => {
            let m = staff
                .disable_staff(authed(admin_key, pb::StaffRef { staff_id: id })?)
                .await
                .map_err(|s| refused("disabling the staff member", &s))?
                .into_inner();
            let j = member(&m);
            print_record(output, &[("staff_id", j["staff_id"].clone()), ("disabled", j["disabled"].clone())]);
        }
        Containment::CloseGrant { grant: id } => {
            let g = staff
                .close_break_glass(authed(admin_key, pb::CloseBreakGlassRequest { grant_id: id })?)
                .await
                .map_err(|s| refused("closing the grant", &s))?
                .into_inner();
            let j = grant(&g);
            print_record(output, &[("grant_id", j["grant_id"].clone()), ("live", j["live"].clone())]);
        }
        Containment::RevokeKey { tenant, key_id } => {
            pb::tenant_service_client::TenantServiceClient::new(channel)
                .revoke_api_key(authed(
                    admin_key,
                    pb::RevokeApiKeyRequest { api_key_id: key_id.clone(), tenant_id: tenant.clone() },
                )?)
                .await
                .map_err(|s| refused("revoking the key", &s))?;
            print_record(
                output,
                &[("tenant_id", tenant.into()), ("api_key_id", key_id.into()), ("revoked", true.into())],
            );
        }
    }
    Ok(())
}

/// Where `pypes tenant move` sends the tenant, and how it reaches there.
pub struct MoveTarget<'a> {
    pub client: &'a Client,
    pub admin_key: &'a str,
    pub region: &'a str,
}

/// What `pypes tenant move` does: moves a tenant from the region the
/// `from` node serves to `to` (docs/residency.md): freeze, copy, verify,
/// switch and shred, adopt. Run again after any failure, it goes on.
pub async fn move_tenant(
    from: &Client,
    from_key: &str,
    to: MoveTarget<'_>,
    tenant: &str,
    out: Option<&std::path::Path>,
    output: Output,
) -> anyhow::Result<()> {
    const MAX_MESSAGE: usize = 16 << 20;
    let mut old = pb::region_service_client::RegionServiceClient::new(from.connect().await?)
        .max_decoding_message_size(MAX_MESSAGE);
    let mut new = pb::region_service_client::RegionServiceClient::new(to.client.connect().await?)
        .max_decoding_message_size(MAX_MESSAGE);
    let tenant_ref = || pb::MoveRef { tenant_id: tenant.into() };
    let begin = pb::BeginMoveRequest { tenant_id: tenant.into(), to_region: to.region.into() };
    let placement = old
        .begin_move(authed(from_key, begin)?)
        .await
        .map_err(|s| refused("freezing the tenant in its old region", &s))?
        .into_inner();
    let switched = placement.region == to.region && placement.moving_to.is_empty();
    let mut written = pb::MoveWritten::default();
    let mut copies = 0;
    let digest = loop {
        if !switched {
            copies += 1;
            let w = copy_tenant(&mut old, from_key, &mut new, to.admin_key, tenant).await?;
            written.events_written += w.events_written;
            written.events_present = w.events_present;
            written.keys_added += w.keys_added;
            written.blobs_written += w.blobs_written;
            if output == Output::Text {
                eprintln!(
                    "copy {copies}: {} events written ({} there already), {} keys, {} blobs",
                    w.events_written, w.events_present, w.keys_added, w.blobs_written
                );
            }
        }
        let theirs = new
            .move_digest(authed(to.admin_key, tenant_ref())?)
            .await
            .map_err(|s| refused("reading the new region's digest", &s))?
            .into_inner();
        if switched {
            break theirs;
        }
        let ours = old
            .move_digest(authed(from_key, tenant_ref())?)
            .await
            .map_err(|s| refused("reading the old region's digest", &s))?
            .into_inner();
        if ours.digest == theirs.digest {
            break theirs;
        }
        if copies == 3 {
            anyhow::bail!(
                "tenant {tenant}: after 3 copies the regions still differ (old: {} events, {} keys, {} blobs; new: {} \
                 events, {} keys, {} blobs); nothing was switched or destroyed; see both servers' logs",
                ours.events,
                ours.keys,
                ours.blobs,
                theirs.events,
                theirs.keys,
                theirs.blobs
            );
        }
    };
    let finish = pb::FinishMoveRequest { tenant_id: tenant.into(), destination_digest: digest.digest.clone() };
    let done = old
        .finish_move(authed(from_key, finish)?)
        .await
        .map_err(|s| refused("switching and shredding in the old region", &s))?
        .into_inner();
    let adopt = pb::AdoptMoveRequest { tenant_id: tenant.into(), undelivered: done.undelivered.clone() };
    let adopted = new
        .adopt_move(authed(to.admin_key, adopt)?)
        .await
        .map_err(|s| refused("adopting the tenant in the new region", &s))?
        .into_inner();
    let mut file = serde_json::Value::Null;
    if let Some(p) = out {
        write_certificate(p, &done.certificate, &done.signature)?;
        file = p.display().to_string().into();
    }
    print_record(
        output,
        &[
            ("tenant", tenant.into()),
            ("region", done.to_region.clone().into()),
            ("copies", copies.into()),
            ("events", digest.events.into()),
            ("events_written", written.events_written.into()),
            ("keys", digest.keys.into()),
            ("keys_shredded", digest.keys_shredded.into()),
            ("blobs", digest.blobs.into()),
            ("digest", digest.digest.clone().into()),
            ("webhooks_handed_over", adopted.webhooks.into()),
            ("erasures_resumed", adopted.erasures_resumed.into()),
            ("certificate_file", file),
            (
                "certificate",
                match output {
                    Output::Json => serde_json::from_str(&done.certificate).unwrap_or(serde_json::Value::Null),
                    Output::Text => serde_json::Value::Null,
                },
            ),
        ],
    );
    if output == Output::Text {
        println!("{}", pretty(&done.certificate));
    }
    Ok(())
}

/// One copy: the old region's parts relayed to the new region as they come.
async fn copy_tenant(
    old: &mut pb::region_service_client::RegionServiceClient<tonic::transport::Channel>,
    from_key: &str,
    new: &mut pb::region_service_client::RegionServiceClient<tonic::transport::Channel>,
    to_key: &str,
    tenant: &str,
) -> anyhow::Result<pb::MoveWritten> {
    let mut parts = old
        .read_move(authed(from_key, pb::MoveRef { tenant_id: tenant.into() })?)
        .await
        .map_err(|s| refused("reading the tenant from its old region", &s))?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::MovePart>(4);
    let relay = async move {
        while let Some(p) = parts.message().await? {
            if tx.send(p).await.is_err() {
                break;
            }
        }
        Ok::<(), tonic::Status>(())
    };
    let write = new.write_move(authed(to_key, tokio_stream::wrappers::ReceiverStream::new(rx))?);
    let (relayed, written) = tokio::join!(relay, write);
    let written = written.map_err(|s| refused("writing the tenant into its new region", &s))?;
    relayed.map_err(|s| refused("reading the tenant from its old region (the copy stopped; run again)", &s))?;
    Ok(written.into_inner())
}
