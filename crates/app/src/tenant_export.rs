//! A whole tenant out: every Pype, end user, Session, message and upload
//! of a tenant as records (docs/integrations.md, "Exporting a tenant"),
//! for a tenant moving to another provider.
//!
//! The export walks the log's `$all`, filtered to the tenant's streams and
//! to the events that create something, up to the head as it was when the
//! export began (the `as_of` position). A Pype, subject or Session is
//! written once, at the event that created it, as it is now (so an erased
//! end user is erased); a message or upload is written as it was recorded,
//! opened with the tenant's keys. Memory stays bounded whatever the size:
//! one page of the log and a cache of Session restrictions. Every record
//! carries a token that resumes after it; the token holds the `as_of`
//! position and the counts so far, so a resumed export ends with the same
//! `end` record as an unbroken one.

use std::collections::HashMap;
use std::sync::Arc;

use actors::Executed;
use domain::pype::Pype;
use domain::session::{Session, SessionEvent};
use domain::subject::Subject;
use domain::tenant::Tenant;
use eventlog::EventFilter;
use events::types as t;
use events::{Codec, Kind, StreamName};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::feed::FeedMessage;
use crate::media::MediaInfo;
use crate::{App, AppError};

pub const FORMAT: &str = "pypes-tenant-export";
pub const VERSION: u32 = 1;
/// Events read from `$all` at a time.
const PAGE: usize = 256;
/// Sessions whose restriction one export remembers (then forgotten and
/// read again as needed).
const SESSION_CACHE: usize = 50_000;

/// Records written so far (carried in the token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub pypes: u64,
    pub subjects: u64,
    pub sessions: u64,
    pub messages: u64,
    pub media: u64,
}

/// Where an export stands: resumed from, and handed out with every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The last log position the export holds.
    pub as_of: u64,
    /// The position of the last event written (`None`: only the header).
    pub after: Option<u64>,
    pub counts: Counts,
    /// The `end` record was written.
    pub done: bool,
}

impl Token {
    /// `x1-<as_of>-<after or n>-<pypes>-<subjects>-<sessions>-<messages>-<media>-<0|1>`.
    pub fn text(&self) -> String {
        let c = self.counts;
        format!(
            "x1-{}-{}-{}-{}-{}-{}-{}-{}",
            self.as_of,
            self.after.map_or("n".into(), |a| a.to_string()),
            c.pypes,
            c.subjects,
            c.sessions,
            c.messages,
            c.media,
            u8::from(self.done)
        )
    }

    pub fn parse(text: &str) -> Result<Self, AppError> {
        let bad =
            || AppError::invalid("resume_token", "not a token this server issued (resume with the last record's)");
        let parts: Vec<&str> = text.strip_prefix("x1-").ok_or_else(bad)?.split('-').collect();
        let [as_of, after, p, su, se, m, me, done] = parts.as_slice() else { return Err(bad()) };
        let n = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let after = match *after {
            "n" => None,
            a => Some(n(a)?),
        };
        let token = Self {
            as_of: n(as_of)?,
            after,
            counts: Counts { pypes: n(p)?, subjects: n(su)?, sessions: n(se)?, messages: n(m)?, media: n(me)? },
            done: match *done {
                "0" => false,
                "1" => true,
                _ => return Err(bad()),
            },
        };
        if token.after.is_some_and(|a| a > token.as_of) {
            return Err(bad());
        }
        Ok(token)
    }
}

/// One record of a tenant export.
#[derive(Debug, Clone)]
pub enum ExportRecord {
    Header {
        tenant: Uuid,
        tenant_name: String,
        as_of: u64,
        started_at_micros: i64,
    },
    Pype(Uuid, Box<Pype>),
    Subject(Box<Subject>),
    Session(Box<Executed<Session>>),
    Message {
        session: Uuid,
        message: FeedMessage,
    },
    /// An upload; `withheld`: the Session is restricted and the sealed
    /// metadata is left out.
    Media {
        info: Box<MediaInfo>,
        withheld: bool,
    },
    End {
        as_of: u64,
        counts: Counts,
    },
}

/// A record and the token that resumes after it.
#[derive(Debug, Clone)]
pub struct ExportItem {
    pub token: String,
    pub record: ExportRecord,
}

impl App {
    /// Starts (or resumes) the export of the caller's tenant.
    pub async fn export_tenant(
        self: &Arc<Self>,
        who: &Credentials,
        resume_token: &str,
    ) -> Result<mpsc::Receiver<Result<ExportItem, AppError>>, AppError> {
        let tenant = self.tenant(who).await?;
        // A whole tenant out is a bulk export: durable in the audit trail
        // (and seen by the access alerts) before the first record leaves.
        let detail = if resume_token.is_empty() { "start" } else { "resume" };
        self.audit
            .record(
                audit::Record::new("privacy.tenant_export", crate::call::current_actor(), "ok")
                    .tenant(tenant)
                    .detail(detail),
            )
            .await?;
        let head = *self.log.watch_head().borrow();
        let (token, header) = match resume_token {
            "" => {
                let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
                let as_of = head.saturating_sub(1);
                let header = ExportRecord::Header {
                    tenant,
                    tenant_name: t.name,
                    as_of,
                    started_at_micros: self.clock.now_micros(),
                };
                (Token { as_of, after: None, counts: Counts::default(), done: false }, Some(header))
            }
            text => {
                let token = Token::parse(text)?;
                if token.as_of >= head.max(1) {
                    return Err(AppError::invalid("resume_token", "it names log positions this log does not have"));
                }
                (token, None)
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move { me.run_export(tenant, token, header, tx).await });
        Ok(rx)
    }

    async fn run_export(
        self: Arc<Self>,
        tenant: Uuid,
        mut token: Token,
        header: Option<ExportRecord>,
        tx: mpsc::Sender<Result<ExportItem, AppError>>,
    ) {
        let send = |token: Token, record: ExportRecord| {
            let tx = tx.clone();
            let stall = self.feed_limits.stall;
            async move {
                let item = ExportItem { token: token.text(), record };
                match tokio::time::timeout(stall, tx.send(Ok(item))).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(None),
                    Err(_) => Err(Some(AppError::TooMany(format!(
                        "the export's reader read nothing for {} s; resume with the last token received",
                        stall.as_secs()
                    )))),
                }
            }
        };
        let fail = |e: AppError| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Err(e)).await;
            }
        };
        if let Some(h) = header
            && let Err(e) = send(token, h).await
        {
            if let Some(e) = e {
                fail(e).await;
            }
            return;
        }
        if !token.done {
            let filter = EventFilter {
                stream_prefixes: [Kind::Pype, Kind::Subject, Kind::Session]
                    .iter()
                    .map(|k| k.tenant_prefix(tenant))
                    .collect(),
                event_types: [
                    t::PYPE_CREATED,
                    t::SUBJECT_REGISTERED,
                    t::SUBJECT_INVITED,
                    t::SESSION_STARTED,
                    t::MESSAGE_POSTED,
                    t::MEDIA_UPLOADED,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            };
            let mut restricted: HashMap<Uuid, bool> = HashMap::new();
            let mut from = token.after.map_or(0, |a| a + 1);
            'pages: while from <= token.as_of {
                let page = match self.log.read_all(from, PAGE, &filter).await {
                    Ok(page) => page,
                    Err(e) => return fail(e.into()).await,
                };
                for r in &page.events {
                    if r.position > token.as_of {
                        break 'pages;
                    }
                    let record = match self.export_record(tenant, r, &mut restricted, &mut token.counts).await {
                        Ok(Some(record)) => record,
                        Ok(None) => continue,
                        Err(e) => return fail(e).await,
                    };
                    token.after = Some(r.position);
                    if let Err(e) = send(token, record).await {
                        if let Some(e) = e {
                            fail(e).await;
                        }
                        return;
                    }
                }
                if page.next_position <= from {
                    break;
                }
                from = page.next_position;
            }
            token.done = true;
        }
        let end = ExportRecord::End { as_of: token.as_of, counts: token.counts };
        if let Err(Some(e)) = send(token, end).await {
            fail(e).await;
        }
    }

    /// The record a creating event of the tenant stands for.
    async fn export_record(
        &self,
        tenant: Uuid,
        r: &eventlog::RecordedEvent,
        restricted: &mut HashMap<Uuid, bool>,
        counts: &mut Counts,
    ) -> Result<Option<ExportRecord>, AppError> {
        let Some(name) = StreamName::parse(&r.stream).filter(|n| n.tenant == tenant) else { return Ok(None) };
        Ok(Some(match (name.kind, r.event_type()) {
            (Kind::Pype, t::PYPE_CREATED) => {
                counts.pypes += 1;
                ExportRecord::Pype(name.id, Box::new(self.registry.read::<Pype>(tenant, name.id).await?.into_state()))
            }
            (Kind::Subject, t::SUBJECT_REGISTERED | t::SUBJECT_INVITED) => {
                counts.subjects += 1;
                ExportRecord::Subject(Box::new(self.registry.read::<Subject>(tenant, name.id).await?.into_state()))
            }
            (Kind::Session, t::SESSION_STARTED) => {
                counts.sessions += 1;
                let s = self.registry.read::<Session>(tenant, name.id).await?;
                remember(restricted, name.id, s.state.restricted);
                ExportRecord::Session(Box::new(s))
            }
            (Kind::Session, _) => {
                let withheld = match restricted.get(&name.id) {
                    Some(r) => *r,
                    None => {
                        let r = self.registry.read::<Session>(tenant, name.id).await?.state.restricted;
                        remember(restricted, name.id, r);
                        r
                    }
                };
                match <Session as Codec>::decode(r, &self.keyring).await? {
                    SessionEvent::MessagePosted { seq, sender, sent_at_micros, body, device, attachments } => {
                        counts.messages += 1;
                        let message =
                            FeedMessage::new(seq, sender, sent_at_micros, body, device, attachments, withheld);
                        ExportRecord::Message { session: name.id, message }
                    }
                    SessionEvent::MediaUploaded { media, mut meta } => {
                        counts.media += 1;
                        if withheld {
                            meta.content_type.clear();
                            meta.sha256.clear();
                            meta.file_name = None;
                        }
                        ExportRecord::Media { info: Box::new(MediaInfo { session: name.id, media, meta }), withheld }
                    }
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        }))
    }
}

fn remember(cache: &mut HashMap<Uuid, bool>, session: Uuid, restricted: bool) {
    if cache.len() >= SESSION_CACHE {
        cache.clear();
    }
    cache.insert(session, restricted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_a_foreign_one_is_refused() {
        let t = Token {
            as_of: 900,
            after: Some(17),
            counts: Counts { pypes: 1, subjects: 2, sessions: 3, messages: 4, media: 5 },
            done: false,
        };
        assert_eq!(Token::parse(&t.text()).unwrap(), t);
        let start = Token { after: None, done: true, ..t };
        assert_eq!(Token::parse(&start.text()).unwrap(), start);
        for bad in [
            "",
            "x1",
            "x1-1-2-3",
            "x2-900-17-1-2-3-4-5-0",
            "x1-900-901-1-2-3-4-5-0",
            "x1-900-17-1-2-3-4-5-7",
            "x1--17-1-2-3-4-5-0",
        ] {
            let e = Token::parse(bad).unwrap_err();
            assert!(e.to_string().contains("resume_token"), "{bad}: {e}");
        }
    }
}
