//! Bulk import of historic Sessions (tenants moving from another platform).
//!
//! Each item is one whole Session with its messages and original times,
//! decided by `domain` (`SessionCommand::Import`) and written by its actor
//! as one append: all of it or nothing. The Session's id is derived from
//! the tenant and the caller's `import_id`, so sending an item again (after
//! a broken connection, or a server killed mid-import) finds the Session
//! already there and writes nothing: a re-sent import resumes where the
//! last one stopped. A bad item (unknown Pype or end user, messages out of
//! order, too large) is answered with its reason; the items around it go
//! on. Items run concurrently (their appends share the log's group
//! commits); the answer lists them in the order they came.

use std::sync::Arc;

use domain::session::{ImportedMessage, ParticipantKind, Session, SessionCommand};
use domain::subject::Subject;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::{App, AppError, parse_id};

/// Items imported at once.
const CONCURRENCY: usize = 64;
/// Characters of an `import_id`, at most.
const MAX_IMPORT_ID: usize = 200;

/// A message of an item, as the caller sent it.
#[derive(Debug, Clone)]
pub struct ImportMessage {
    pub sender_id: String,
    /// `None`: a kind the API does not know.
    pub kind: Option<ParticipantKind>,
    pub body: String,
    pub sent_at_micros: i64,
}

/// One historic Session, as the caller sent it.
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub import_id: String,
    pub pype_id: String,
    pub end_user_id: String,
    pub started_at_micros: i64,
    pub messages: Vec<ImportMessage>,
    /// 0: the Session is still open.
    pub closed_at_micros: i64,
}

/// The items of an import as they arrive (`Err`: the stream broke).
pub type ImportStream = mpsc::Receiver<Result<ImportItem, String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    /// Written now.
    Written,
    /// Written by an earlier import with the same `import_id`: nothing written.
    AlreadyImported,
    /// Not written, for `reason`.
    Failed,
}

#[derive(Debug, Clone)]
pub struct ImportResult {
    pub import_id: String,
    pub status: ImportStatus,
    /// The Session's id (also for a failed item whose id could be derived).
    pub session: Option<Uuid>,
    pub messages: u32,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub results: Vec<ImportResult>,
    pub written: u64,
    pub already_imported: u64,
    pub failed: u64,
    pub messages_written: u64,
}

/// The Session id of an import: the same tenant and `import_id` give the same id.
pub fn session_id(tenant: Uuid, import_id: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"pypes import session id\0");
    h.update(tenant.as_bytes());
    h.update(import_id.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl App {
    /// Imports the Sessions of `items` for the caller's tenant.
    pub async fn import_sessions(
        self: &Arc<Self>,
        who: &Credentials,
        mut items: ImportStream,
    ) -> Result<ImportReport, AppError> {
        let tenant = self.tenant(who).await?;
        let mut running = tokio::task::JoinSet::new();
        let mut results: Vec<(usize, ImportResult)> = Vec::new();
        let mut index = 0;
        let mut broke = None;
        loop {
            while running.len() >= CONCURRENCY {
                if let Some(done) = running.join_next().await {
                    results.push(done.map_err(|e| AppError::Internal(format!("an import task failed: {e}")))?);
                }
            }
            let item = match items.recv().await {
                None => break,
                Some(Ok(item)) => item,
                Some(Err(e)) => {
                    broke = Some(e);
                    break;
                }
            };
            let app = self.clone();
            let i = index;
            index += 1;
            running.spawn(async move { (i, app.import_one(tenant, item).await) });
        }
        while let Some(done) = running.join_next().await {
            results.push(done.map_err(|e| AppError::Internal(format!("an import task failed: {e}")))?);
        }
        results.sort_by_key(|(i, _)| *i);
        let mut report = ImportReport::default();
        for (_, r) in results {
            match r.status {
                ImportStatus::Written => {
                    report.written += 1;
                    report.messages_written += u64::from(r.messages);
                }
                ImportStatus::AlreadyImported => report.already_imported += 1,
                ImportStatus::Failed => report.failed += 1,
            }
            report.results.push(r);
        }
        tracing::info!(%tenant, written = report.written, already = report.already_imported, failed = report.failed,
            messages = report.messages_written, "sessions imported");
        if let Some(e) = broke {
            return Err(AppError::Unavailable(format!(
                "the import stream broke after {index} items ({e}); the {} written are kept: send the items again to resume",
                report.written
            )));
        }
        Ok(report)
    }

    async fn import_one(&self, tenant: Uuid, item: ImportItem) -> ImportResult {
        let mut result = ImportResult {
            import_id: item.import_id.clone(),
            status: ImportStatus::Failed,
            session: None,
            messages: item.messages.len() as u32,
            reason: String::new(),
        };
        match self.write_import(tenant, item, &mut result).await {
            Ok(status) => result.status = status,
            Err(e) => {
                let (_, reason) = e.answer();
                result.reason = reason;
            }
        }
        result
    }

    async fn write_import(
        &self,
        tenant: Uuid,
        item: ImportItem,
        result: &mut ImportResult,
    ) -> Result<ImportStatus, AppError> {
        if item.import_id.is_empty() || item.import_id.chars().count() > MAX_IMPORT_ID {
            return Err(AppError::invalid("import_id", format!("1 to {MAX_IMPORT_ID} characters")));
        }
        let session = session_id(tenant, &item.import_id);
        result.session = Some(session);
        let pype_id = parse_id("pype_id", &item.pype_id)?;
        let end_user = parse_id("end_user_id", &item.end_user_id)?;
        let mut messages = Vec::with_capacity(item.messages.len());
        for (i, m) in item.messages.into_iter().enumerate() {
            let sender = parse_id("sender_id", &m.sender_id)
                .map_err(|_| AppError::invalid("messages", format!("messages[{i}].sender_id: not a UUID")))?;
            let Some(kind) = m.kind else {
                return Err(AppError::invalid("messages", format!("messages[{i}].sender_kind: unknown kind")));
            };
            messages.push(ImportedMessage { sender, kind, body: m.body, sent_at_micros: m.sent_at_micros });
        }
        let pype = self.registry.read::<domain::pype::Pype>(tenant, pype_id).await?.into_state();
        if pype.id.is_none() {
            return Err(AppError::invalid("pype_id", "no such Pype in this tenant"));
        }
        let subject = self.registry.read::<Subject>(tenant, end_user).await?;
        if subject.state.id.is_none() {
            return Err(AppError::invalid("end_user_id", "no such end user in this tenant"));
        }
        subject.state.may_start_session()?;
        let command = SessionCommand::Import {
            session,
            tenant,
            pype: pype_id,
            end_user,
            pype_timers: pype.timers,
            started_at_micros: item.started_at_micros,
            messages,
            closed_at_micros: (item.closed_at_micros != 0).then_some(item.closed_at_micros),
        };
        match self.registry.execute::<Session>(tenant, session, command).await {
            Ok(_) => {}
            Err(actors::ActorError::Rejected(domain::Rejection::AlreadyExists { .. })) => {
                return Ok(ImportStatus::AlreadyImported);
            }
            Err(e) => return Err(e.into()),
        }
        // As for a start: an erasure or restriction recorded while this
        // was decided finds the Session now.
        self.settle_new_session(tenant, end_user, session).await?;
        Ok(ImportStatus::Written)
    }
}
