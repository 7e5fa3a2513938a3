//! Anonymised analytics per Pype per hour and per day, from Clear fields
//! only. No subject or participant id is stored anywhere in this
//! projection: cells are keyed by tenant, Pype and time bucket, and the
//! working state of an open Session holds only its Pype, start time and
//! flags. Answers suppress cells with fewer than `k` Sessions.
//!
//! Tables: `cells`: tenant ‖ pype ‖ granularity ('h'|'d') ‖ bucket start µs
//! → AnalyticsCell; `open`: session → AnalyticsSession (deleted at close).

use eventlog::{EventFilter, RecordedEvent};
use proto::events as pb;
use proto::views::{AnalyticsCell, AnalyticsSession};
use uuid::Uuid;

use crate::cache::RowCache;
use crate::keys::{copy_id, key, uuid_of};
use crate::sessions::{StreamIds, payload};
use crate::{ApplyError, Projection, ReadView, ViewError, WriteView};

pub const NAME: &str = "analytics";
/// Smallest number of Sessions a cell needs to be shown.
pub const DEFAULT_K: u64 = 5;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    fn tag(self) -> u8 {
        match self {
            Granularity::Hour => b'h',
            Granularity::Day => b'd',
        }
    }
    pub fn micros(self) -> i64 {
        match self {
            Granularity::Hour => HOUR,
            Granularity::Day => DAY,
        }
    }
    pub fn bucket(self, at: i64) -> i64 {
        at.div_euclid(self.micros()) * self.micros()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AnalyticsProjection;

/// tenant ‖ pype ‖ granularity ‖ bucket (order-preserving), on the stack.
fn cell_key(tenant: &[u8], pype: &[u8], g: Granularity, bucket: i64) -> [u8; 41] {
    let mut k = [0u8; 41];
    copy_id(&mut k[..16], tenant);
    copy_id(&mut k[16..32], pype);
    k[32] = g.tag();
    k[33..].copy_from_slice(&((bucket as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The cells and open Sessions a page changes, decoded once.
struct Page<'a, 't> {
    w: &'a mut WriteView<'t>,
    cells: RowCache<AnalyticsCell>,
    open: RowCache<AnalyticsSession>,
    streams: StreamIds,
}

/// Updates the hour and the day cell of `at`, counting the Session once
/// per cell it touches.
fn touch(
    cells: &mut RowCache<AnalyticsCell>,
    w: &mut WriteView<'_>,
    s: &mut AnalyticsSession,
    at: i64,
    f: impl Fn(&mut AnalyticsCell),
) -> Result<(), ApplyError> {
    for g in [Granularity::Hour, Granularity::Day] {
        let bucket = g.bucket(at);
        let cell =
            cells.get_or_insert_with(w, &cell_key(&s.tenant_id, &s.pype_id, g, bucket), AnalyticsCell::default)?;
        let last = match g {
            Granularity::Hour => &mut s.last_hour,
            Granularity::Day => &mut s.last_day,
        };
        if *last != bucket {
            *last = bucket;
            cell.sessions += 1;
        }
        f(cell);
    }
    Ok(())
}

impl Projection for AnalyticsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> EventFilter {
        // `subject-` only for the purge acknowledgement: nothing of a subject
        // is stored here.
        EventFilter {
            stream_prefixes: vec![events::Kind::Session.prefix().into(), events::Kind::Subject.prefix().into()],
            event_types: vec![],
        }
    }

    fn apply(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        self.apply_batch(w, &[r]).map_err(|(_, e)| e)
    }

    fn apply_batch(&self, w: &mut WriteView<'_>, events: &[&RecordedEvent]) -> Result<(), (usize, ApplyError)> {
        let mut page =
            Page { w, cells: RowCache::new("cells"), open: RowCache::new("open"), streams: StreamIds::default() };
        for (i, r) in events.iter().enumerate() {
            apply_one(&mut page, r).map_err(|e| (i, e))?;
        }
        let last = events.len().saturating_sub(1);
        page.cells.flush(page.w).map_err(|e| (last, e.into()))?;
        page.open.flush(page.w).map_err(|e| (last, e.into()))
    }
}

fn apply_one(page: &mut Page<'_, '_>, r: &RecordedEvent) -> Result<(), ApplyError> {
    if !events::Kind::Session.owns(&r.stream) {
        return Ok(());
    }
    let Some((tenant, session)) = page.streams.parse(r, events::Kind::Session) else {
        return Err(ApplyError::Poison(format!("{} at {}: stream is not session-<tenant>-<id>", r.stream, r.position)));
    };
    let skey = *session.as_bytes();
    if r.event_type() == events::types::SESSION_STARTED {
        let p: pb::SessionStarted = payload(r)?;
        if uuid_of(&p.pype_id).is_none() {
            return Err(ApplyError::Poison(format!("SessionStarted at {}: pype_id is not a uuid", r.position)));
        }
        // Do-Not-Track / Global Privacy Control: the Session counts in no
        // aggregate (not opened here, so nothing after it counts either).
        if p.do_not_track || p.global_privacy_control {
            return Ok(());
        }
        let mut s = AnalyticsSession {
            tenant_id: tenant.as_bytes().to_vec(),
            pype_id: p.pype_id.to_vec(),
            started_micros: p.at_micros,
            last_hour: i64::MIN,
            last_day: i64::MIN,
            ..AnalyticsSession::default()
        };
        touch(&mut page.cells, page.w, &mut s, p.at_micros, |c| c.started += 1)?;
        page.open.put(&skey, s);
        return Ok(());
    }
    let Some(s) = page.open.get(page.w, &skey)? else { return Ok(()) };
    match r.event_type() {
        events::types::MESSAGE_POSTED => {
            let p: pb::MessagePosted = payload(r)?;
            let kind = pb::ParticipantKind::try_from(p.sender_kind).unwrap_or(pb::ParticipantKind::Unspecified);
            let first = kind == pb::ParticipantKind::Agent && !s.first_response_seen;
            if first {
                s.first_response_seen = true;
            }
            let wait = (p.sent_at_micros - s.started_micros).max(0) as u64;
            touch(&mut page.cells, page.w, s, p.sent_at_micros, |c| {
                match kind {
                    pb::ParticipantKind::EndUser => c.messages_end_user += 1,
                    pb::ParticipantKind::Agent => c.messages_agent += 1,
                    pb::ParticipantKind::Bot => c.messages_bot += 1,
                    pb::ParticipantKind::Unspecified => {}
                }
                if first {
                    c.first_response_count += 1;
                    c.first_response_micros_sum += wait;
                }
            })?;
        }
        events::types::SESSION_BECAME_INACTIVE => {
            let p: pb::SessionStateChanged = payload(r)?;
            touch(&mut page.cells, page.w, s, p.at_micros, |c| c.inactive_periods += 1)?;
        }
        events::types::SESSION_REACTIVATED => {
            let p: pb::SessionStateChanged = payload(r)?;
            touch(&mut page.cells, page.w, s, p.at_micros, |_| {})?;
        }
        events::types::SESSION_CLOSED => {
            let p: pb::SessionStateChanged = payload(r)?;
            let handle = (p.at_micros - s.started_micros).max(0) as u64;
            let timer = p.reason == pb::ChangeReason::Timer as i32;
            touch(&mut page.cells, page.w, s, p.at_micros, |c| {
                if timer {
                    c.closed_by_timer += 1;
                } else {
                    c.closed_by_api += 1;
                }
                c.handle_count += 1;
                c.handle_micros_sum += handle;
            })?;
            page.open.remove(&skey);
        }
        // Restricted processing: the Session counts no further (its end
        // user's data is left out of analytics from here on).
        events::types::SESSION_ERASED | events::types::SESSION_RESTRICTED => page.open.remove(&skey),
        _ => {}
    }
    Ok(())
}

/// One cell of an answer: `None` when it covers fewer than `k` Sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct CellAnswer {
    pub bucket_start_micros: i64,
    pub cell: Option<AnalyticsCell>,
}

/// Cells of a Pype with bucket start in `[from, to)`, small ones suppressed.
pub fn query(
    view: &ReadView,
    tenant: Uuid,
    pype: Uuid,
    g: Granularity,
    from: i64,
    to: i64,
    k: u64,
) -> Result<Vec<CellAnswer>, ViewError> {
    let prefix = key(&[tenant.as_bytes(), pype.as_bytes(), &[g.tag()]]);
    let start = cell_key(tenant.as_bytes(), pype.as_bytes(), g, g.bucket(from));
    let mut out = Vec::new();
    // Cells are few per bucket; the scan stops at the first bucket >= `to`.
    for (kb, v) in view.scan_from("cells", &prefix, &start, false, usize::MAX)? {
        let Some(raw) = kb.get(33..41).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
        let bucket = (u64::from_be_bytes(raw) ^ (1 << 63)) as i64;
        if bucket >= to {
            break;
        }
        let cell = <AnalyticsCell as proto::Message>::decode(v.as_slice())
            .map_err(|e| ViewError::Corrupt { table: "cells".into(), reason: e.to_string() })?;
        out.push(CellAnswer { bucket_start_micros: bucket, cell: (cell.sessions >= k).then_some(cell) });
    }
    Ok(out)
}
