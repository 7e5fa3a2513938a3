//! The catalog: what the console lists. Tenants (state, counts), each
//! tenant's Pypes, each end user's privacy state (restriction and consent
//! decisions, no profile field) and every erasure request with its
//! deadline and certification time. Ids, times and counts only: no name
//! (the console reads names from the entities' first events, so when a
//! tenant moves to another region and its events are scavenged here, no
//! view file keeps its name), nothing sealed, nothing personal beyond the
//! pseudonymous subject id. A move's record (`TenantMoveSwitched`) deletes
//! every row of the tenant.
//!
//! Tables (keys fixed-width):
//! - `tenants`: tenant → CatalogTenantRow
//! - `pypes`: tenant ‖ pype → CatalogPypeRow
//! - `privacy`: tenant ‖ subject → PrivacyRow (deleted on the purge)
//! - `erasures`: tenant ‖ subject → ErasureRow (kept after the purge)

use eventlog::{EventFilter, RecordedEvent};
use proto::events as pb;
use proto::views::{CatalogPypeRow, CatalogTenantRow, ErasureRow, PrivacyRow};
use uuid::Uuid;

use crate::keys::{key, uuid_at};
use crate::sessions::{parse_stream, payload};
use crate::{ApplyError, PURGE_EVENT, Projection, ReadView, ViewError, WriteView};

pub const NAME: &str = "catalog";

#[derive(Debug, Clone, Copy)]
pub struct CatalogProjection;

fn not_a_stream(r: &RecordedEvent, kind: events::Kind) -> ApplyError {
    ApplyError::Poison(format!("{} at {}: stream is not {}-<tenant>-<id>", r.stream, r.position, kind.name()))
}

impl CatalogProjection {
    fn tenant_row(w: &mut WriteView<'_>, tenant: Uuid) -> Result<CatalogTenantRow, ApplyError> {
        Ok(w.get_msg::<CatalogTenantRow>("tenants", tenant.as_bytes())?
            .unwrap_or_else(|| CatalogTenantRow { tenant_id: tenant.as_bytes().to_vec(), ..Default::default() }))
    }

    fn tenant_event(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        let (tenant, _) =
            parse_stream(&r.stream, events::Kind::Tenant).ok_or_else(|| not_a_stream(r, events::Kind::Tenant))?;
        let mut row = Self::tenant_row(w, tenant)?;
        match r.event_type() {
            events::types::TENANT_CREATED => {
                row.created_micros = payload::<pb::TenantCreated>(r)?.at_micros;
            }
            events::types::TENANT_CANCELLED => {
                row.cancelled_micros = payload::<pb::TenantCancelled>(r)?.at_micros;
            }
            events::types::TENANT_KEYS_SHREDDED => {
                row.shredded_micros = payload::<pb::TenantKeysShredded>(r)?.at_micros;
            }
            _ => return Ok(()),
        }
        w.put_msg("tenants", tenant.as_bytes(), &row)?;
        Ok(())
    }

    fn pype_event(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        let (tenant, pype) =
            parse_stream(&r.stream, events::Kind::Pype).ok_or_else(|| not_a_stream(r, events::Kind::Pype))?;
        let k = key(&[tenant.as_bytes(), pype.as_bytes()]);
        match r.event_type() {
            events::types::PYPE_CREATED => {
                let e: pb::PypeCreated = payload(r)?;
                let row = CatalogPypeRow {
                    pype_id: pype.as_bytes().to_vec(),
                    tenant_id: tenant.as_bytes().to_vec(),
                    created_micros: e.at_micros,
                    archived_micros: 0,
                };
                if w.get("pypes", &k)?.is_none() {
                    let mut t = Self::tenant_row(w, tenant)?;
                    t.pypes += 1;
                    w.put_msg("tenants", tenant.as_bytes(), &t)?;
                }
                w.put_msg("pypes", &k, &row)?;
            }
            events::types::PYPE_ARCHIVED => {
                if let Some(mut row) = w.get_msg::<CatalogPypeRow>("pypes", &k)? {
                    row.archived_micros = payload::<pb::PypeArchived>(r)?.at_micros;
                    w.put_msg("pypes", &k, &row)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The tenant moved to another region: nothing of it stays listed here.
    fn moved(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        if r.event_type() != events::types::TENANT_MOVE_SWITCHED {
            return Ok(());
        }
        let Some(tenant) = events::stream::moved_tenant(&r.stream) else {
            return Err(ApplyError::Poison(format!("{} at {}: not a move record's stream", r.stream, r.position)));
        };
        w.delete("tenants", tenant.as_bytes())?;
        for table in ["pypes", "privacy", "erasures"] {
            for (k, _) in w.scan_prefix(table, tenant.as_bytes())? {
                w.delete(table, &k)?;
            }
        }
        Ok(())
    }

    fn subject_event(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        let (tenant, subject) =
            parse_stream(&r.stream, events::Kind::Subject).ok_or_else(|| not_a_stream(r, events::Kind::Subject))?;
        let k = key(&[tenant.as_bytes(), subject.as_bytes()]);
        let ty = r.event_type();
        match ty {
            events::types::SUBJECT_REGISTERED | events::types::SUBJECT_INVITED if w.get("privacy", &k)?.is_none() => {
                let mut t = Self::tenant_row(w, tenant)?;
                t.subjects += 1;
                w.put_msg("tenants", tenant.as_bytes(), &t)?;
                let row = PrivacyRow { subject_id: subject.as_bytes().to_vec(), ..Default::default() };
                w.put_msg("privacy", &k, &row)?;
            }
            events::types::SUBJECT_ERASURE_REQUESTED => {
                let e: pb::SubjectErasureRequested = payload(r)?;
                let row = ErasureRow {
                    subject_id: subject.as_bytes().to_vec(),
                    request_id: e.request_id.to_vec(),
                    requested_micros: e.at_micros,
                    due_micros: e.due_micros,
                    certified_micros: 0,
                };
                w.put_msg("erasures", &k, &row)?;
            }
            events::types::SUBJECT_ERASURE_CERTIFIED => {
                if let Some(mut row) = w.get_msg::<ErasureRow>("erasures", &k)? {
                    row.certified_micros = r.recorded_at_micros;
                    w.put_msg("erasures", &k, &row)?;
                }
            }
            PURGE_EVENT if w.get("privacy", &k)?.is_some() => {
                w.delete("privacy", &k)?;
                let mut t = Self::tenant_row(w, tenant)?;
                t.subjects = t.subjects.saturating_sub(1);
                w.put_msg("tenants", tenant.as_bytes(), &t)?;
            }
            events::types::SUBJECT_PROCESSING_RESTRICTED
            | events::types::SUBJECT_RESTRICTION_LIFTED
            | events::types::CONSENT_GRANTED
            | events::types::CONSENT_WITHDRAWN => {
                let Some(mut row) = w.get_msg::<PrivacyRow>("privacy", &k)? else { return Ok(()) };
                match ty {
                    events::types::SUBJECT_PROCESSING_RESTRICTED => {
                        row.restricted_micros = payload::<pb::RestrictionChanged>(r)?.at_micros.max(1);
                    }
                    events::types::SUBJECT_RESTRICTION_LIFTED => row.restricted_micros = 0,
                    events::types::CONSENT_GRANTED => {
                        row.consents.insert(payload::<pb::ConsentGranted>(r)?.purpose, 1);
                    }
                    _ => {
                        row.consents.insert(payload::<pb::ConsentWithdrawn>(r)?.purpose, 0);
                    }
                }
                w.put_msg("privacy", &k, &row)?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            stream_prefixes: vec![
                events::Kind::Tenant.prefix().into(),
                events::Kind::Pype.prefix().into(),
                events::Kind::Subject.prefix().into(),
                events::stream::MOVED_PREFIX.into(),
            ],
            event_types: vec![],
        }
    }

    fn apply(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        if r.stream.starts_with(events::Kind::Tenant.prefix()) {
            self.tenant_event(w, r)
        } else if r.stream.starts_with(events::Kind::Pype.prefix()) {
            self.pype_event(w, r)
        } else if r.stream.starts_with(events::stream::MOVED_PREFIX) {
            self.moved(w, r)
        } else {
            self.subject_event(w, r)
        }
    }
}

fn decode<M: proto::Message + Default>(table: &str, v: &[u8]) -> Result<M, ViewError> {
    M::decode(v).map_err(|e| ViewError::Corrupt { table: table.into(), reason: e.to_string() })
}

/// Tenants in id order after `after`, at most `limit`.
pub fn tenants(view: &ReadView, after: Option<Uuid>, limit: usize) -> Result<Vec<CatalogTenantRow>, ViewError> {
    let after_key = after.map(|a| a.as_bytes().to_vec());
    view.scan("tenants", &[], after_key.as_deref(), limit)?.iter().map(|(_, v)| decode("tenants", v)).collect()
}

pub fn tenant(view: &ReadView, tenant: Uuid) -> Result<Option<CatalogTenantRow>, ViewError> {
    view.get_msg("tenants", tenant.as_bytes())
}

/// A tenant's Pypes in id order after `after`, at most `limit`.
pub fn pypes(
    view: &ReadView,
    tenant: Uuid,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<CatalogPypeRow>, ViewError> {
    let after_key = after.map(|a| key(&[tenant.as_bytes(), a.as_bytes()]));
    view.scan("pypes", tenant.as_bytes(), after_key.as_deref(), limit)?
        .iter()
        .map(|(_, v)| decode("pypes", v))
        .collect()
}

/// A tenant's erasure requests (newest first).
pub fn erasures(view: &ReadView, tenant: Uuid) -> Result<Vec<ErasureRow>, ViewError> {
    let mut rows: Vec<ErasureRow> = view
        .scan("erasures", tenant.as_bytes(), None, usize::MAX)?
        .iter()
        .map(|(_, v)| decode("erasures", v))
        .collect::<Result<_, _>>()?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.requested_micros));
    Ok(rows)
}

/// Erasure requests not certified yet, of every tenant, oldest due first:
/// (tenant, row). A scan of the requests ever made (few next to Sessions).
pub fn open_erasures(view: &ReadView) -> Result<Vec<(Uuid, ErasureRow)>, ViewError> {
    let mut out = Vec::new();
    for (k, v) in view.scan("erasures", &[], None, usize::MAX)? {
        let row: ErasureRow = decode("erasures", &v)?;
        if row.certified_micros == 0
            && let Some(tenant) = uuid_at(&k, 0)
        {
            out.push((tenant, row));
        }
    }
    out.sort_by_key(|(_, r)| r.due_micros);
    Ok(out)
}

/// What a tenant's end users' privacy rows add up to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrivacySummary {
    /// Subjects whose processing is restricted now, with since when.
    pub restricted: Vec<(Uuid, i64)>,
    /// Purpose → (granted, withdrawn): each subject's latest decision.
    pub consents: std::collections::BTreeMap<String, (u64, u64)>,
    /// End users with a privacy row (not purged).
    pub subjects: u64,
}

pub fn privacy(view: &ReadView, tenant: Uuid) -> Result<PrivacySummary, ViewError> {
    let mut s = PrivacySummary::default();
    for (k, v) in view.scan("privacy", tenant.as_bytes(), None, usize::MAX)? {
        let row: PrivacyRow = decode("privacy", &v)?;
        s.subjects += 1;
        if row.restricted_micros != 0
            && let Some(subject) = uuid_at(&k, 16)
        {
            s.restricted.push((subject, row.restricted_micros));
        }
        for (purpose, granted) in row.consents {
            let c = s.consents.entry(purpose).or_default();
            if granted == 1 { c.0 += 1 } else { c.1 += 1 }
        }
    }
    Ok(s)
}
