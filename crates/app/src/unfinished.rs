//! What a previous run left unfinished, found at start by **one** filtered
//! read of the subjects' streams (the erasure and restriction processes
//! both keep their progress there): erasures requested and not certified,
//! restriction changes with no `SubjectRestrictionApplied` after them.

use std::collections::HashMap;

use eventlog::{EventFilter, EventLog};
use uuid::Uuid;

use crate::AppError;

/// (tenant, subject) pairs with a process to resume, in order.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub erasures: Vec<(Uuid, Uuid)>,
    pub restrictions: Vec<(Uuid, Uuid)>,
}

/// Reads the log up to its head as of the call.
pub async fn scan(log: &dyn EventLog) -> Result<Unfinished, AppError> {
    use events::types as ty;
    let filter = EventFilter {
        stream_prefixes: vec![events::Kind::Subject.prefix().into()],
        event_types: vec![
            ty::SUBJECT_ERASURE_REQUESTED.into(),
            ty::SUBJECT_ERASURE_CERTIFIED.into(),
            ty::SUBJECT_PROCESSING_RESTRICTED.into(),
            ty::SUBJECT_RESTRICTION_LIFTED.into(),
            ty::SUBJECT_RESTRICTION_APPLIED.into(),
        ],
    };
    // The last event of each kind decides: open or done.
    let mut erasures: HashMap<(Uuid, Uuid), bool> = HashMap::new();
    let mut restrictions: HashMap<(Uuid, Uuid), bool> = HashMap::new();
    let (mut from, head) = (0, log.head());
    while from < head {
        let page = log.read_all(from, 4096, &filter).await?;
        for r in &page.events {
            let Some(n) = events::StreamName::parse_as(&r.stream, events::Kind::Subject) else { continue };
            let key = (n.tenant, n.id);
            match r.event_type() {
                ty::SUBJECT_ERASURE_REQUESTED => erasures.insert(key, true),
                ty::SUBJECT_ERASURE_CERTIFIED => erasures.insert(key, false),
                ty::SUBJECT_RESTRICTION_APPLIED => restrictions.insert(key, false),
                _ => restrictions.insert(key, true),
            };
        }
        if page.next_position <= from {
            break;
        }
        from = page.next_position;
    }
    let open = |m: HashMap<(Uuid, Uuid), bool>| {
        let mut v: Vec<(Uuid, Uuid)> = m.into_iter().filter(|(_, o)| *o).map(|(k, _)| k).collect();
        v.sort();
        v
    };
    Ok(Unfinished { erasures: open(erasures), restrictions: open(restrictions) })
}
