//! The end-user directory of each tenant: one row per subject with its
//! state and its profile fields (username, email, phone) sealed as in the
//! log. Table `subjects`: tenant ‖ subject → SubjectRow. An erased
//! subject's row is deleted on the purge event.

use eventlog::{EventFilter, RecordedEvent};
use proto::views::{SubjectRow, SubjectState};
use uuid::Uuid;

use crate::keys::{key, sealed_ref};
use crate::sessions::parse_stream;
use crate::{ApplyError, PURGE_EVENT, Projection, ReadView, ViewError, WriteView};

pub const NAME: &str = "directory";

/// The profile fields the directory shows.
pub const FIELDS: [&str; 3] = ["username", "email", "phone"];

#[derive(Debug, Clone, Copy)]
pub struct DirectoryProjection;

impl Projection for DirectoryProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> EventFilter {
        EventFilter { stream_prefixes: vec![events::Kind::Subject.prefix().into()], event_types: vec![] }
    }

    fn apply(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        let Some((tenant, subject)) = parse_stream(&r.stream, events::Kind::Subject) else {
            return Err(ApplyError::Poison(format!(
                "{} at {}: stream is not subject-<tenant>-<id>",
                r.stream, r.position
            )));
        };
        let k = key(&[tenant.as_bytes(), subject.as_bytes()]);
        if r.event_type() == PURGE_EVENT {
            w.delete("subjects", &k)?;
            return Ok(());
        }
        let mut row = w.get_msg::<SubjectRow>("subjects", &k)?.unwrap_or_else(|| SubjectRow {
            subject_id: subject.as_bytes().to_vec(),
            tenant_id: tenant.as_bytes().to_vec(),
            created_micros: r.recorded_at_micros,
            ..SubjectRow::default()
        });
        let state = match r.event_type() {
            events::types::SUBJECT_REGISTERED
            | events::types::SUBJECT_ONBOARDED
            | events::types::SUBJECT_REACTIVATED => Some(SubjectState::Active),
            events::types::SUBJECT_INVITED => Some(SubjectState::Invited),
            events::types::SUBJECT_DEACTIVATED => Some(SubjectState::Deactivated),
            events::types::SUBJECT_ERASURE_REQUESTED => Some(SubjectState::ErasureRequested),
            events::types::SUBJECT_RECTIFIED => None,
            events::types::SUBJECT_PROCESSING_RESTRICTED => {
                row.restricted = true;
                None
            }
            events::types::SUBJECT_RESTRICTION_LIFTED => {
                row.restricted = false;
                None
            }
            _ => return Ok(()),
        };
        if let Some(state) = state
            && row.state != SubjectState::ErasureRequested as i32
        {
            row.state = state as i32;
        }
        for f in &r.event.sealed_fields {
            if FIELDS.contains(&f.field.as_str()) {
                row.fields.insert(f.field.clone(), sealed_ref(r.id(), f));
            }
        }
        w.put_msg("subjects", &k, &row)?;
        Ok(())
    }
}

/// Subjects of a tenant in id order after `after`, at most `limit`.
pub fn list(view: &ReadView, tenant: Uuid, after: Option<Uuid>, limit: usize) -> Result<Vec<SubjectRow>, ViewError> {
    let after_key = after.map(|a| key(&[tenant.as_bytes(), a.as_bytes()]));
    view.scan("subjects", tenant.as_bytes(), after_key.as_deref(), limit)?
        .into_iter()
        .map(|(_, v)| {
            <SubjectRow as proto::Message>::decode(v.as_slice())
                .map_err(|e| ViewError::Corrupt { table: "subjects".into(), reason: e.to_string() })
        })
        .collect()
}

pub fn get(view: &ReadView, tenant: Uuid, subject: Uuid) -> Result<Option<SubjectRow>, ViewError> {
    view.get_msg("subjects", &key(&[tenant.as_bytes(), subject.as_bytes()]))
}
