//! Reads from the read models (projections): a Session's summary, its
//! messages (sealed fields opened as the answer is made), the end-user
//! directory, a Pype's overview and analytics with small cells suppressed.

use domain::session::Attachment;
use keystore::Keyring;
use projections::{OpenedField, analytics, directory, open_sealed, sessions};
use proto::views::{PypeOverviewRow, SessionRow, SubjectState};
use uuid::Uuid;

use crate::auth::Credentials;
use crate::sessions::page_size;
use crate::{App, AppError, parse_id};

fn internal(e: impl std::fmt::Display) -> AppError {
    AppError::internal("reading a view", e)
}

async fn text(
    keyring: &Keyring,
    tenant: Uuid,
    stream: &str,
    field: &str,
    r: Option<&proto::views::SealedRef>,
) -> Result<String, AppError> {
    Ok(match open_sealed(keyring, tenant, stream, field, r).await.map_err(internal)? {
        OpenedField::Text(t) => t,
        OpenedField::Erased => "[erased]".into(),
    })
}

/// A message as listed.
pub struct Message {
    pub seq: u64,
    pub sender: Vec<u8>,
    pub sent_at_micros: i64,
    pub erased: bool,
    pub body: String,
    pub device: String,
    pub attachments: Vec<Attachment>,
}

/// An end user as the directory lists them (a restricted one's profile
/// stays empty).
pub struct EndUser {
    pub subject: Uuid,
    pub username: String,
    pub email: String,
    pub phone: String,
    pub state: &'static str,
    pub created_micros: i64,
}

/// An analytics answer: the cells and the smallest count shown.
pub struct Analytics {
    pub cells: Vec<analytics::CellAnswer>,
    pub k: u64,
}

/// Longest range an analytics query may cover: a year of hours.
const MAX_BUCKETS: i64 = 366 * 24;
/// The last microsecond of the year 9999: analytics times lie between the
/// Unix epoch and this, so no bucket arithmetic can overflow.
pub const MAX_ANALYTICS_MICROS: i64 = 253_402_300_799_999_999;

/// Checks an analytics query's range without arithmetic that can overflow,
/// for any pair of `i64`s a client sends.
pub fn check_analytics_range(from: i64, to: i64, bucket_micros: i64) -> Result<(), AppError> {
    let in_range = |t: i64| (0..=MAX_ANALYTICS_MICROS).contains(&t);
    if !in_range(from) {
        return Err(AppError::invalid("from_micros", format!("{from}; 0 (1970) to {MAX_ANALYTICS_MICROS} (9999)")));
    }
    if !in_range(to) {
        return Err(AppError::invalid("to_micros", format!("{to}; 0 (1970) to {MAX_ANALYTICS_MICROS} (9999)")));
    }
    if to <= from {
        return Err(AppError::invalid("to_micros", "must be after from_micros"));
    }
    // Both are in [0, MAX]: the difference cannot overflow.
    if (to - from) / bucket_micros > MAX_BUCKETS {
        return Err(AppError::invalid("to_micros", format!("the range spans more than {MAX_BUCKETS} buckets")));
    }
    Ok(())
}

impl App {
    pub async fn get_session_view(&self, who: &Credentials, session_id: &str) -> Result<(Uuid, SessionRow), AppError> {
        let tenant = self.tenant_about(who, crate::call::Object::Session, session_id).await?;
        let session = parse_id("session_id", session_id)?;
        let view = self.views.read(sessions::NAME).await?;
        let row = sessions::get_session(&view, tenant, session).map_err(internal)?;
        Ok((session, row.ok_or_else(|| AppError::not_found("session"))?))
    }

    /// A page of a Session's messages after `after_seq`; the seq to ask
    /// after next (0: the last page).
    pub async fn list_messages(
        &self,
        who: &Credentials,
        session_id: &str,
        after_seq: u64,
        page_size_wanted: u32,
    ) -> Result<(Vec<Message>, u64), AppError> {
        let tenant = self.tenant_about(who, crate::call::Object::Session, session_id).await?;
        let session = parse_id("session_id", session_id)?;
        let size = page_size("page_size", page_size_wanted, 100)?;
        let view = self.views.read(sessions::NAME).await?;
        let Some(row) = sessions::get_session(&view, tenant, session).map_err(internal)? else {
            return Err(AppError::not_found("session"));
        };
        if row.restricted {
            return Err(AppError::rejected(domain::Rejection::precondition(
                "processing of the end user's data is restricted: messages are not listed until it is lifted",
            )));
        }
        let cursor = sessions::message_cursor(&view, &row, after_seq).map_err(internal)?;
        drop(view);
        let rows = sessions::list_messages(self.log.as_ref(), &cursor, size + 1).await.map_err(internal)?;
        let stream = events::stream_name(events::Kind::Session, tenant, session);
        let mut messages = Vec::with_capacity(rows.len().min(size));
        for m in rows.iter().take(size) {
            let body = text(&self.keyring, tenant, &stream, "body", m.body.as_ref()).await?;
            let device = match &m.device {
                Some(d) => text(&self.keyring, tenant, &stream, "device", Some(d)).await?,
                None if m.erased => "[erased]".into(),
                None => String::new(),
            };
            let attachments = match &m.attachments {
                Some(a) => {
                    match projections::open_sealed_bytes(&self.keyring, tenant, &stream, "attachments", Some(a))
                        .await
                        .map_err(internal)?
                    {
                        Some(bytes) => events::codec::decode_attachments(&bytes)
                            .map_err(|e| AppError::Internal(format!("a message's attachments do not decode: {e}")))?,
                        None => Vec::new(),
                    }
                }
                None => Vec::new(),
            };
            messages.push(Message {
                seq: m.seq,
                sender: m.sender_id.to_vec(),
                sent_at_micros: m.sent_at_micros,
                erased: m.erased || body == "[erased]",
                body,
                device,
                attachments,
            });
        }
        let next_after_seq = if rows.len() > size { messages.last().map_or(0, |m| m.seq) } else { 0 };
        Ok((messages, next_after_seq))
    }

    /// A page of the tenant's end users; the next page's token.
    pub async fn list_end_users(
        &self,
        who: &Credentials,
        page_size_wanted: u32,
        page_token: &str,
    ) -> Result<(Vec<EndUser>, String), AppError> {
        let tenant = self.tenant(who).await?;
        let size = page_size("page_size", page_size_wanted, 100)?;
        let after = match page_token {
            "" => None,
            t => Some(
                t.strip_prefix("s")
                    .and_then(|u| Uuid::parse_str(u).ok())
                    .ok_or_else(|| AppError::invalid("page_token", "not a token this server issued"))?,
            ),
        };
        let view = self.views.read(directory::NAME).await?;
        let rows = directory::list(&view, tenant, after, size + 1).map_err(internal)?;
        drop(view);
        let mut end_users = Vec::with_capacity(rows.len().min(size));
        for row in rows.iter().take(size) {
            let subject = Uuid::from_slice(&row.subject_id).map_err(internal)?;
            let stream = events::stream_name(events::Kind::Subject, tenant, subject);
            let mut fields = [String::new(), String::new(), String::new()];
            for (slot, name) in fields.iter_mut().zip(directory::FIELDS) {
                // A restricted subject's profile is stored, not shown.
                if let Some(r) = row.fields.get(name).filter(|_| !row.restricted) {
                    *slot = text(&self.keyring, tenant, &stream, name, Some(r)).await?;
                }
            }
            let [username, email, phone] = fields;
            end_users.push(EndUser {
                subject,
                username,
                email,
                phone,
                state: match SubjectState::try_from(row.state).unwrap_or(SubjectState::Unspecified) {
                    SubjectState::Invited => "invited",
                    SubjectState::Active => "active",
                    SubjectState::Deactivated => "deactivated",
                    SubjectState::ErasureRequested => "erasure_requested",
                    SubjectState::Unspecified => "unknown",
                },
                created_micros: row.created_micros,
            });
        }
        let next = if rows.len() > size { end_users.last().map(|u| format!("s{}", u.subject)) } else { None };
        Ok((end_users, next.unwrap_or_default()))
    }

    pub async fn get_pype_overview(
        &self,
        who: &Credentials,
        pype_id: &str,
    ) -> Result<(Uuid, PypeOverviewRow), AppError> {
        let tenant = self.tenant(who).await?;
        let pype = parse_id("pype_id", pype_id)?;
        self.pype_of(tenant, pype).await?;
        let view = self.views.read(sessions::NAME).await?;
        Ok((pype, sessions::pype_overview(&view, tenant, pype).map_err(internal)?.unwrap_or_default()))
    }

    pub async fn query_analytics(
        &self,
        who: &Credentials,
        pype_id: &str,
        granularity: Option<analytics::Granularity>,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Analytics, AppError> {
        let tenant = self.tenant(who).await?;
        let pype = parse_id("pype_id", pype_id)?;
        let g = granularity.ok_or_else(|| AppError::invalid("granularity", "GRANULARITY_HOUR or GRANULARITY_DAY"))?;
        check_analytics_range(from_micros, to_micros, g.micros())?;
        self.pype_of(tenant, pype).await?;
        let view = self.views.read(analytics::NAME).await?;
        let cells =
            analytics::query(&view, tenant, pype, g, from_micros, to_micros, self.analytics_k).map_err(internal)?;
        Ok(Analytics { cells, k: self.analytics_k })
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
                Err(AppError::Invalid { field, .. }) => prop_assert!(field == "from_micros" || field == "to_micros"),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn the_reported_extremes_are_invalid_argument() {
        for (from, to) in [(i64::MIN, i64::MAX), (i64::MIN, 0), (0, i64::MAX), (i64::MIN, i64::MIN + 3_600_000_000)] {
            assert!(
                matches!(check_analytics_range(from, to, 3_600_000_000), Err(AppError::Invalid { .. })),
                "{from} {to}"
            );
        }
        assert!(check_analytics_range(0, 3_600_000_000, 3_600_000_000).is_ok());
    }
}
