//! The read side of the gRPC API: `ViewService` (Sessions, messages, the
//! end-user directory and Pype overviews from the read models, sealed
//! fields opened as the answer is made), `AnalyticsService` (cells with
//! small ones suppressed) and `ErasureService`.

use keystore::Keyring;
use projections::{OpenedField, analytics, directory, open_sealed, sessions};
use proto::api as pb;
use proto::views::{SessionState, SubjectState};
use tonic::{Request, Response, Status as GrpcStatus};
use uuid::Uuid;

use domain::session::{Session, SessionCommand};
use domain::subject::{Subject, SubjectCommand};

use crate::api::Handle;
use crate::auth::Caller;
use crate::erasure;
use crate::error::{ApiError, parse_id};

type Reply<T> = Result<Response<T>, GrpcStatus>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn id_text(b: &[u8]) -> String {
    Uuid::from_slice(b).map(|u| u.to_string()).unwrap_or_default()
}

fn page_size(field: &'static str, n: u32, default: usize) -> Result<usize, ApiError> {
    match n {
        0 => Ok(default),
        n @ 1..=500 => Ok(n as usize),
        n => Err(ApiError::invalid(field, format!("{n}; 1 to 500"))),
    }
}

async fn text(
    keyring: &Keyring,
    tenant: Uuid,
    stream: &str,
    field: &str,
    r: Option<&proto::views::SealedRef>,
) -> Result<String, ApiError> {
    Ok(match open_sealed(keyring, tenant, stream, field, r).await.map_err(internal)? {
        OpenedField::Text(t) => t,
        OpenedField::Erased => "[erased]".into(),
    })
}

/// A message's attachments from their sealed list (none once erased).
fn attachments_out(session: Uuid, sealed: Option<zeroize::Zeroizing<Vec<u8>>>) -> Result<Vec<pb::Media>, ApiError> {
    let Some(bytes) = sealed else { return Ok(Vec::new()) };
    let list = events::codec::decode_attachments(&bytes)
        .map_err(|e| ApiError::Internal(format!("a message's attachments do not decode: {e}")))?;
    Ok(list.iter().map(|a| crate::media::attachment_out(session, a)).collect())
}

#[tonic::async_trait]
impl pb::view_service_server::ViewService for Handle {
    async fn get_session_view(&self, request: Request<pb::GetSessionViewRequest>) -> Reply<pb::SessionView> {
        let api = &self.0;
        api.timed("GetSessionView", async {
            let tenant = api.tenant(request.metadata()).await?;
            let session = parse_id("session_id", &request.get_ref().session_id)?;
            let view = api.views.read(sessions::NAME).await?;
            let not_found =
                ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound { what: "session" }));
            let row = sessions::get_session(&view, tenant, session).map_err(internal)?.ok_or(not_found)?;
            let participants = row
                .participants
                .iter()
                .map(|p| pb::Participant {
                    participant_id: id_text(&p.participant_id),
                    kind: p.kind,
                    present: p.present,
                    // Private horizons are the end user's own business.
                    read_up_to: row
                        .horizons
                        .iter()
                        .find(|h| h.participant_id == p.participant_id && !h.private)
                        .map(|h| h.up_to),
                })
                .collect();
            let state = match SessionState::try_from(row.state).unwrap_or(SessionState::Unspecified) {
                SessionState::Active => pb::SessionState::Active,
                SessionState::Inactive => pb::SessionState::Inactive,
                SessionState::Closed => pb::SessionState::Closed,
                SessionState::Unspecified => pb::SessionState::Unspecified,
            };
            Ok(pb::SessionView {
                session_id: session.to_string(),
                pype_id: id_text(&row.pype_id),
                end_user_id: id_text(&row.end_user_id),
                state: state as i32,
                participants,
                started_micros: row.started_micros,
                last_activity_micros: row.last_activity_micros,
                closed_micros: row.closed_micros,
                close_reason: match (state, row.close_reason) {
                    (pb::SessionState::Closed, 2) => "timer".into(),
                    (pb::SessionState::Closed, _) => "api".into(),
                    _ => String::new(),
                },
                message_count: row.messages,
                erased: row.erased,
            })
        })
        .await
    }

    async fn list_messages(&self, request: Request<pb::ListMessagesRequest>) -> Reply<pb::ListMessagesResponse> {
        let api = &self.0;
        api.timed("ListMessages", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let session = parse_id("session_id", &r.session_id)?;
            let size = page_size("page_size", r.page_size, 100)?;
            let view = api.views.read(sessions::NAME).await?;
            let Some(row) = sessions::get_session(&view, tenant, session).map_err(internal)? else {
                return Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound {
                    what: "session",
                })));
            };
            if row.restricted {
                return Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::precondition(
                    "processing of the end user's data is restricted: messages are not listed until it is lifted",
                ))));
            }
            let cursor = sessions::message_cursor(&view, &row, r.after_seq).map_err(internal)?;
            drop(view);
            let rows = sessions::list_messages(api.log.as_ref(), &cursor, size + 1).await.map_err(internal)?;
            let stream = actors::stream_name(events::Kind::Session, tenant, session);
            let mut messages = Vec::with_capacity(rows.len().min(size));
            for m in rows.iter().take(size) {
                let body = text(&api.keyring, tenant, &stream, "body", m.body.as_ref()).await?;
                let device = match &m.device {
                    Some(d) => text(&api.keyring, tenant, &stream, "device", Some(d)).await?,
                    None if m.erased => "[erased]".into(),
                    None => String::new(),
                };
                let attachments = match &m.attachments {
                    Some(a) => attachments_out(
                        session,
                        projections::open_sealed_bytes(&api.keyring, tenant, &stream, "attachments", Some(a))
                            .await
                            .map_err(internal)?,
                    )?,
                    None => Vec::new(),
                };
                messages.push(pb::Message {
                    seq: m.seq,
                    sender_id: id_text(&m.sender_id),
                    sent_at_micros: m.sent_at_micros,
                    erased: m.erased || body == "[erased]",
                    body,
                    device,
                    attachments,
                });
            }
            let next_after_seq = if rows.len() > size { messages.last().map_or(0, |m| m.seq) } else { 0 };
            Ok(pb::ListMessagesResponse { messages, next_after_seq })
        })
        .await
    }

    async fn list_end_users(&self, request: Request<pb::ListEndUsersRequest>) -> Reply<pb::ListEndUsersResponse> {
        let api = &self.0;
        api.timed("ListEndUsers", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let size = page_size("page_size", r.page_size, 100)?;
            let after = match r.page_token.as_str() {
                "" => None,
                t => Some(
                    t.strip_prefix("s")
                        .and_then(|u| Uuid::parse_str(u).ok())
                        .ok_or_else(|| ApiError::invalid("page_token", "not a token this server issued"))?,
                ),
            };
            let view = api.views.read(directory::NAME).await?;
            let rows = directory::list(&view, tenant, after, size + 1).map_err(internal)?;
            drop(view);
            let mut end_users = Vec::with_capacity(rows.len().min(size));
            for row in rows.iter().take(size) {
                let subject = Uuid::from_slice(&row.subject_id).map_err(internal)?;
                let stream = actors::stream_name(events::Kind::Subject, tenant, subject);
                let mut fields = [String::new(), String::new(), String::new()];
                for (slot, name) in fields.iter_mut().zip(directory::FIELDS) {
                    // A restricted subject's profile is stored, not shown.
                    if let Some(r) = row.fields.get(name).filter(|_| !row.restricted) {
                        *slot = text(&api.keyring, tenant, &stream, name, Some(r)).await?;
                    }
                }
                let [username, email, phone] = fields;
                end_users.push(pb::EndUser {
                    subject_id: subject.to_string(),
                    username,
                    email,
                    phone,
                    state: match SubjectState::try_from(row.state).unwrap_or(SubjectState::Unspecified) {
                        SubjectState::Invited => "invited",
                        SubjectState::Active => "active",
                        SubjectState::Deactivated => "deactivated",
                        SubjectState::ErasureRequested => "erasure_requested",
                        SubjectState::Unspecified => "unknown",
                    }
                    .into(),
                    created_micros: row.created_micros,
                });
            }
            let next_page_token = if rows.len() > size {
                end_users.last().map(|u| format!("s{}", u.subject_id)).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(pb::ListEndUsersResponse { end_users, next_page_token })
        })
        .await
    }

    async fn get_pype_overview(&self, request: Request<pb::GetPypeOverviewRequest>) -> Reply<pb::PypeOverview> {
        let api = &self.0;
        api.timed("GetPypeOverview", async {
            let tenant = api.tenant(request.metadata()).await?;
            let pype = parse_id("pype_id", &request.get_ref().pype_id)?;
            if api.registry.read::<domain::pype::Pype>(tenant, pype).await?.state.id.is_none() {
                return Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound {
                    what: "pype",
                })));
            }
            let view = api.views.read(sessions::NAME).await?;
            let o = sessions::pype_overview(&view, tenant, pype).map_err(internal)?.unwrap_or_default();
            Ok(pb::PypeOverview {
                pype_id: pype.to_string(),
                sessions_total: o.sessions_total,
                active: o.active,
                inactive: o.inactive,
                closed: o.closed,
                last_activity_micros: o.last_activity_micros,
            })
        })
        .await
    }
}

/// Longest range an analytics query may cover: a year of hours.
const MAX_BUCKETS: i64 = 366 * 24;
/// The last microsecond of the year 9999: analytics times lie between the
/// Unix epoch and this, so no bucket arithmetic can overflow.
const MAX_ANALYTICS_MICROS: i64 = 253_402_300_799_999_999;

/// Checks an analytics query's range without arithmetic that can overflow,
/// for any pair of `i64`s a client sends.
pub(crate) fn check_analytics_range(from: i64, to: i64, bucket_micros: i64) -> Result<(), ApiError> {
    let in_range = |t: i64| (0..=MAX_ANALYTICS_MICROS).contains(&t);
    if !in_range(from) {
        return Err(ApiError::invalid("from_micros", format!("{from}; 0 (1970) to {MAX_ANALYTICS_MICROS} (9999)")));
    }
    if !in_range(to) {
        return Err(ApiError::invalid("to_micros", format!("{to}; 0 (1970) to {MAX_ANALYTICS_MICROS} (9999)")));
    }
    if to <= from {
        return Err(ApiError::invalid("to_micros", "must be after from_micros"));
    }
    // Both are in [0, MAX]: the difference cannot overflow.
    if (to - from) / bucket_micros > MAX_BUCKETS {
        return Err(ApiError::invalid("to_micros", format!("the range spans more than {MAX_BUCKETS} buckets")));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::analytics_service_server::AnalyticsService for Handle {
    async fn query_analytics(&self, request: Request<pb::QueryAnalyticsRequest>) -> Reply<pb::QueryAnalyticsResponse> {
        let api = &self.0;
        api.timed("QueryAnalytics", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let pype = parse_id("pype_id", &r.pype_id)?;
            let g = match pb::Granularity::try_from(r.granularity) {
                Ok(pb::Granularity::Hour) => analytics::Granularity::Hour,
                Ok(pb::Granularity::Day) => analytics::Granularity::Day,
                _ => return Err(ApiError::invalid("granularity", "GRANULARITY_HOUR or GRANULARITY_DAY")),
            };
            check_analytics_range(r.from_micros, r.to_micros, g.micros())?;
            if api.registry.read::<domain::pype::Pype>(tenant, pype).await?.state.id.is_none() {
                return Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound {
                    what: "pype",
                })));
            }
            let view = api.views.read(analytics::NAME).await?;
            let cells = analytics::query(&view, tenant, pype, g, r.from_micros, r.to_micros, api.analytics_k)
                .map_err(internal)?;
            let mean = |sum: u64, n: u64| if n == 0 { 0.0 } else { sum as f64 / n as f64 / 1e6 };
            Ok(pb::QueryAnalyticsResponse {
                cells: cells
                    .into_iter()
                    .map(|c| match c.cell {
                        None => pb::AnalyticsCell {
                            bucket_start_micros: c.bucket_start_micros,
                            suppressed: true,
                            ..Default::default()
                        },
                        Some(x) => pb::AnalyticsCell {
                            bucket_start_micros: c.bucket_start_micros,
                            suppressed: false,
                            sessions: x.sessions,
                            started: x.started,
                            closed_by_api: x.closed_by_api,
                            closed_by_timer: x.closed_by_timer,
                            mean_first_response_secs: mean(x.first_response_micros_sum, x.first_response_count),
                            first_responses: x.first_response_count,
                            mean_handle_secs: mean(x.handle_micros_sum, x.handle_count),
                            messages_end_user: x.messages_end_user,
                            messages_agent: x.messages_agent,
                            messages_bot: x.messages_bot,
                            inactive_periods: x.inactive_periods,
                        },
                    })
                    .collect(),
                k: api.analytics_k,
            })
        })
        .await
    }
}

impl Handle {
    /// The tenant a privacy call (erasure, export, rectification, ...) acts
    /// for: the key's, or (admin key, privacy officer) the request's
    /// `tenant_id`.
    async fn privacy_tenant(&self, metadata: &tonic::metadata::MetadataMap, tenant_id: &str) -> Result<Uuid, ApiError> {
        match self.0.caller(metadata).await? {
            Caller::Tenant(t) => {
                if !tenant_id.is_empty() && parse_id("tenant_id", tenant_id)? != t {
                    return Err(ApiError::Forbidden("tenant_id is not the tenant of the API key".into()));
                }
                Ok(t)
            }
            Caller::Admin => parse_id("tenant_id", tenant_id),
            Caller::Staff { id, role } => {
                let tenant = parse_id("tenant_id", tenant_id)?;
                self.0.staff_may(id, role, Some(tenant)).await?;
                Ok(tenant)
            }
        }
    }

    fn erasure_out(&self, subject: Uuid, s: erasure::Status) -> pb::ErasureStatus {
        pb::ErasureStatus {
            request_id: s.request.to_string(),
            subject_id: subject.to_string(),
            step: s.step.into(),
            requested_micros: s.requested_micros,
            due_micros: s.due_micros,
            certificate: s.certificate,
            signature: s.signature,
            signing_public_key: self.0.erasures.public_key_hex(),
        }
    }
}

#[tonic::async_trait]
impl pb::erasure_service_server::ErasureService for Handle {
    async fn request_erasure(&self, request: Request<pb::RequestErasureRequest>) -> Reply<pb::ErasureStatus> {
        let api = &self.0;
        api.timed("RequestErasure", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            let status = api.erasures.request(tenant, subject).await?;
            api.auth.revoke_subject(tenant, subject);
            api.record_subject("privacy.erasure_requested", tenant, subject, "").await?;
            Ok(self.erasure_out(subject, status))
        })
        .await
    }

    async fn get_erasure(&self, request: Request<pb::GetErasureRequest>) -> Reply<pb::ErasureStatus> {
        let api = &self.0;
        api.timed("GetErasure", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            match api.erasures.status(tenant, subject).await? {
                Some(s) => Ok(self.erasure_out(subject, s)),
                None => Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound {
                    what: "erasure request",
                }))),
            }
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::privacy_service_server::PrivacyService for Handle {
    type ExportSubjectStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ExportChunk, GrpcStatus>>;

    async fn export_subject(&self, request: Request<pb::ExportSubjectRequest>) -> Reply<Self::ExportSubjectStream> {
        let api = self.0.clone();
        let started = std::time::Instant::now();
        let setup = crate::api::in_method("ExportSubject", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            api.registry
                .read::<domain::subject::Subject>(tenant, subject)
                .await?
                .state
                .require_exists()
                .map_err(|r| ApiError::Actor(actors::ActorError::Rejected(r)))?;
            let view = api.views.read(sessions::NAME).await?;
            let sessions = sessions::sessions_of_end_user(&view, tenant, subject).map_err(internal)?;
            drop(view);
            api.record_subject("privacy.export", tenant, subject, "").await?;
            Ok::<_, ApiError>((tenant, subject, sessions))
        });
        let (tenant, subject, sessions) = match setup.await {
            Ok(v) => v,
            Err(e) => {
                let status = GrpcStatus::from(e);
                api.note_refusal("ExportSubject", status.code()).await;
                api.metrics.observe("ExportSubject", status.code(), started.elapsed());
                return Err(status);
            }
        };
        // One chunk in flight at most: the reader's pace sets the export's.
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(1);
        let writer_api = api.clone();
        tokio::spawn(async move {
            let mut sink = crate::export::Sink::new(out_tx);
            let now = eventlog::Clock::now_micros(&eventlog::SystemClock);
            let result = crate::export::write(
                writer_api.log.as_ref(),
                &writer_api.keyring,
                tenant,
                subject,
                &sessions,
                now,
                &mut sink,
            )
            .await;
            if let Err(e) = result {
                tracing::warn!(%tenant, %subject, error = %e, "export stopped");
                sink.fail(e).await;
            }
        });
        api.metrics.observe("ExportSubject", tonic::Code::Ok, started.elapsed());
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(out_rx)))
    }

    async fn rectify_subject(&self, request: Request<pb::RectifySubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("RectifySubject", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            let birth = match &r.date_of_birth {
                Some(d) => Some(crate::api::birth_in(d, false)?),
                None => None,
            };
            let cmd = SubjectCommand::Rectify { email: r.email.clone(), phone: r.phone.clone(), birth };
            let done = api.registry.execute::<Subject>(tenant, subject, cmd).await?;
            let fields: Vec<&str> =
                [("email", r.email.is_some()), ("phone", r.phone.is_some()), ("birth", r.date_of_birth.is_some())]
                    .into_iter()
                    .filter_map(|(f, on)| on.then_some(f))
                    .collect();
            self.0.record_subject("privacy.rectify", tenant, subject, fields.join("+")).await?;
            Ok(crate::api::subject_out(&done.state))
        })
        .await
    }

    async fn restrict_processing(&self, request: Request<pb::SubjectRef>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("RestrictProcessing", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            Ok(crate::api::subject_out(&self.set_restriction(tenant, subject, true).await?))
        })
        .await
    }

    async fn lift_restriction(&self, request: Request<pb::SubjectRef>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("LiftRestriction", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            Ok(crate::api::subject_out(&self.set_restriction(tenant, subject, false).await?))
        })
        .await
    }

    async fn grant_consent(&self, request: Request<pb::ConsentRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("GrantConsent", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            let cmd =
                SubjectCommand::GrantConsent { purpose: r.purpose.clone(), policy_version: r.policy_version.clone() };
            let done = api.registry.execute::<Subject>(tenant, subject, cmd).await?;
            self.0.record_subject("privacy.consent_granted", tenant, subject, r.purpose.clone()).await?;
            Ok(crate::api::subject_out(&done.state))
        })
        .await
    }

    async fn withdraw_consent(&self, request: Request<pb::ConsentRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("WithdrawConsent", async {
            let r = request.get_ref();
            let tenant = self.privacy_tenant(request.metadata(), &r.tenant_id).await?;
            let subject = parse_id("subject_id", &r.subject_id)?;
            let cmd = SubjectCommand::WithdrawConsent { purpose: r.purpose.clone() };
            let done = api.registry.execute::<Subject>(tenant, subject, cmd).await?;
            let mut detail = r.purpose.clone();
            if r.purpose == "geolocation" {
                // Collection has stopped (the withdrawal is recorded); what
                // was collected becomes unreadable.
                let target = keystore::ShredTarget::Subject { subject, group: Some(keystore::Group::Geo) };
                let report = api.keyring.shred(tenant, target).await?;
                detail = format!("{detail} geo_keys_shredded={}", report.keys.len());
                // A location whose consent check ran just before the
                // withdrawal may still be sealing under a new geo key:
                // shred again once such calls are done.
                let keyring = api.keyring.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    if let Err(e) = keyring.shred(tenant, target).await {
                        tracing::error!(%tenant, %subject, error = %e, "second geo shred after consent withdrawal");
                    }
                });
            }
            self.0.record_subject("privacy.consent_withdrawn", tenant, subject, detail).await?;
            Ok(crate::api::subject_out(&done.state))
        })
        .await
    }
}

impl Handle {
    /// Restricts (or lifts the restriction of) a subject and marks each of
    /// their Sessions, so the Sessions refuse new processing and analytics
    /// stop counting them.
    async fn set_restriction(&self, tenant: Uuid, subject: Uuid, restrict: bool) -> Result<Subject, ApiError> {
        let api = &self.0;
        let cmd = if restrict { SubjectCommand::Restrict } else { SubjectCommand::LiftRestriction };
        let done = api.registry.execute::<Subject>(tenant, subject, cmd).await?;
        let view = api.views.read(sessions::NAME).await?;
        let ids = sessions::sessions_of_end_user(&view, tenant, subject).map_err(internal)?;
        drop(view);
        let cmd = if restrict { SessionCommand::Restrict } else { SessionCommand::LiftRestriction };
        for s in &ids {
            match api.registry.execute::<Session>(tenant, *s, cmd.clone()).await {
                Ok(_) | Err(actors::ActorError::Rejected(domain::Rejection::NotFound { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if restrict {
            api.auth.revoke_subject(tenant, subject);
        }
        let action = if restrict { "privacy.restrict" } else { "privacy.lift_restriction" };
        self.0.record_subject(action, tenant, subject, format!("sessions={}", ids.len())).await?;
        Ok(done.state)
    }
}

#[cfg(test)]
mod range_tests {
    //! Regression: `from_micros = i64::MIN, to_micros = i64::MAX` overflowed
    //! the span check (a panic in debug builds, OK with 0 cells in release),
    //! and a narrow range near `i64::MIN` overflowed the bucket arithmetic.
    use super::*;
    use proptest::prelude::*;

    const EXTREMES: [i64; 9] =
        [i64::MIN, i64::MIN + 1, -1, 0, 1, MAX_ANALYTICS_MICROS, i64::MAX - 1, i64::MAX, 3_600_000_000];

    fn any_time() -> impl Strategy<Value = i64> {
        prop_oneof![any::<i64>(), prop::sample::select(EXTREMES.to_vec()), 0..=MAX_ANALYTICS_MICROS]
    }

    proptest! {
        #[test]
        fn any_pair_is_answered_without_overflow(from in any_time(), to in any_time(), hourly in any::<bool>()) {
            let g = if hourly { 3_600_000_000 } else { 86_400_000_000 };
            match check_analytics_range(from, to, g) {
                Ok(()) => {
                    prop_assert!(0 <= from && from < to && to <= MAX_ANALYTICS_MICROS);
                    // What the query then computes stays in range.
                    prop_assert!(from.checked_div(g).and_then(|b| b.checked_mul(g)).is_some());
                    prop_assert!((to - from) / g <= MAX_BUCKETS);
                }
                Err(ApiError::Invalid { field, .. }) => prop_assert!(field == "from_micros" || field == "to_micros"),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn the_reported_extremes_are_invalid_argument() {
        for (from, to) in [(i64::MIN, i64::MAX), (i64::MIN, 0), (0, i64::MAX), (i64::MIN, i64::MIN + 3_600_000_000)] {
            assert!(
                matches!(check_analytics_range(from, to, 3_600_000_000), Err(ApiError::Invalid { .. })),
                "{from} {to}"
            );
        }
        assert!(check_analytics_range(0, 3_600_000_000, 3_600_000_000).is_ok());
    }
}
