//! The delivery schedule of one endpoint, as a state machine without
//! clocks or I/O of its own (the driver passes the time in and carries the
//! requests out), so every rule is tested with a simulated clock:
//!
//! - **In order per lane.** Each event belongs to a lane (its Session, or
//!   the tenant's lane for events about no Session). A lane sends its next
//!   event only after the one before it was acknowledged with a 2xx.
//! - **Concurrently across lanes**, at most `max_in_flight` at once.
//! - **Back-off.** A failed event is retried after [`crate::backoff::delay`]
//!   of its failures. A failure that says the endpoint as a whole is unwell
//!   (no connection, a timeout, 429 or 5xx) also holds every lane of the
//!   endpoint until the same time, so a dead endpoint is not hammered by
//!   its lanes; a 4xx other than 429 holds only its own lane.
//! - **Paused** once an event has failed for [`crate::backoff::GIVE_UP_AFTER`]
//!   since its first failure: nothing is sent until the endpoint is resumed
//!   (the events stay queued; resuming starts from the first undelivered).
//! - **Bounded.** At most `max_queued` events wait; [`Schedule::push`]
//!   refuses more and the driver stops reading the feed until some are done.
//! - **Checkpoint.** [`Schedule::checkpoint`] is the highest position at or
//!   below which every event was delivered: the driver records it in the
//!   log and, after a restart, reads the feed after it. Events past it that
//!   were already delivered are sent again (at least once, same event id).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::backoff;

/// A lane: a Session's id, or [`TENANT_LANE`] for events of no Session.
pub type Lane = u128;

/// The lane of events that are about no Session (Pypes, end users).
pub const TENANT_LANE: Lane = 0;

/// An event waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub position: u64,
    pub lane: Lane,
    /// Failed attempts so far.
    pub failures: u32,
    /// When the first attempt failed (µs), if one did.
    pub first_failure_micros: Option<i64>,
    /// Not before this time (µs).
    pub not_before_micros: i64,
}

/// How an attempt ended, as the schedule needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The endpoint as a whole is unwell: no connection, a timeout, 429, 5xx.
    EndpointFailed,
    /// This event was refused (another 4xx).
    EventRefused,
}

impl Outcome {
    /// The outcome of an HTTP status (`None`: no answer at all).
    pub fn of_status(status: Option<u16>) -> Self {
        match status {
            Some(200..=299) => Outcome::Delivered,
            Some(429) | Some(500..) | None => Outcome::EndpointFailed,
            Some(_) => Outcome::EventRefused,
        }
    }
}

/// One endpoint's schedule.
///
/// The lanes' heads that could go are indexed (`fresh`: never failed, in
/// log order; `retrying`: by when their back-off ends), so choosing what
/// to send and when to wake costs the number of events chosen, not the
/// number of lanes.
#[derive(Debug, Clone)]
pub struct Schedule {
    lanes: HashMap<Lane, VecDeque<Pending>>,
    in_flight: HashSet<Lane>,
    /// Positions not yet delivered (queued or in flight), with their lane.
    outstanding: BTreeMap<u64, Lane>,
    /// Heads not in flight that never failed: (position, lane).
    fresh: BTreeSet<(u64, Lane)>,
    /// Heads not in flight that wait for a retry: (not before, position, lane).
    retrying: BTreeSet<(i64, u64, Lane)>,
    /// The highest position pushed or read past (or the checkpoint started
    /// from).
    highest: Option<u64>,
    /// The endpoint as a whole waits until then (µs).
    endpoint_not_before: i64,
    endpoint_failures: u32,
    queued: usize,
    max_queued: usize,
    max_in_flight: usize,
    paused: bool,
    /// Since when the oldest undelivered event failed before a restart:
    /// given to the first event pushed (which is that event again).
    inherited_failure: Option<i64>,
    /// The first retry's delay ([`backoff::FIRST`] unless configured).
    first_retry: std::time::Duration,
}

impl Schedule {
    /// A schedule that starts after `checkpoint` (`None`: nothing delivered
    /// yet).
    pub fn new(checkpoint: Option<u64>, max_in_flight: usize, max_queued: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            in_flight: HashSet::new(),
            outstanding: BTreeMap::new(),
            fresh: BTreeSet::new(),
            retrying: BTreeSet::new(),
            highest: checkpoint,
            endpoint_not_before: i64::MIN,
            endpoint_failures: 0,
            queued: 0,
            max_queued: max_queued.max(1),
            max_in_flight: max_in_flight.max(1),
            paused: false,
            inherited_failure: None,
            first_retry: backoff::FIRST,
        }
    }

    /// Retries start after `first` instead of [`backoff::FIRST`].
    pub fn with_first_retry(mut self, first: std::time::Duration) -> Self {
        self.first_retry = first;
        self
    }

    /// After a restart: the oldest undelivered event (the first pushed)
    /// has been failing since `micros`, so its 72 hours go on from there.
    pub fn inherit_failure(&mut self, micros: Option<i64>) {
        self.inherited_failure = micros;
    }

    /// Since when the oldest undelivered event fails (for the checkpoint).
    pub fn failing_since(&self) -> Option<i64> {
        // The oldest undelivered event is the head of its lane.
        let (&oldest, lane) = self.outstanding.first_key_value()?;
        self.lanes
            .get(lane)
            .and_then(|q| q.front())
            .filter(|p| p.position == oldest)
            .and_then(|p| p.first_failure_micros)
            .or(self.inherited_failure)
    }

    /// Indexes the head of `lane` as one that could go (it is not in flight).
    fn index_head(&mut self, lane: Lane) {
        if let Some(h) = self.lanes.get(&lane).and_then(|q| q.front()) {
            if h.not_before_micros == i64::MIN {
                self.fresh.insert((h.position, lane));
            } else {
                self.retrying.insert((h.not_before_micros, h.position, lane));
            }
        }
    }

    /// Queues an event; `false` (and nothing queued) when the schedule is
    /// full. Positions must increase.
    pub fn push(&mut self, position: u64, lane: Lane) -> bool {
        if self.queued >= self.max_queued {
            return false;
        }
        debug_assert!(self.highest.is_none_or(|h| position > h), "positions increase");
        let queue = self.lanes.entry(lane).or_default();
        let was_empty = queue.is_empty();
        queue.push_back(Pending {
            position,
            lane,
            failures: 0,
            first_failure_micros: self.inherited_failure.take(),
            not_before_micros: i64::MIN,
        });
        if was_empty && !self.in_flight.contains(&lane) {
            self.index_head(lane);
        }
        self.outstanding.insert(position, lane);
        self.highest = Some(position);
        self.queued += 1;
        true
    }

    /// Every event up to `position` was read: those not pushed were not
    /// for this endpoint, so the checkpoint may pass them once nothing
    /// before them waits (a quiet endpoint on a busy log keeps up with the
    /// log). Positions at or below the highest seen are ignored.
    pub fn read_through(&mut self, position: u64) {
        if self.highest.is_none_or(|h| position > h) {
            self.highest = Some(position);
        }
    }

    /// The highest position pushed or read through.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// How many more events fit.
    pub fn room(&self) -> usize {
        self.max_queued - self.queued
    }

    /// Whether another event fits.
    pub fn has_room(&self) -> bool {
        self.queued < self.max_queued
    }

    /// The events to send now: the heads of lanes not in flight whose time
    /// has come, oldest first, up to the in-flight limit. They are in
    /// flight until [`Schedule::complete`].
    pub fn ready(&mut self, now_micros: i64) -> Vec<Pending> {
        let room = self.max_in_flight.saturating_sub(self.in_flight.len());
        if self.paused || now_micros < self.endpoint_not_before || room == 0 {
            return Vec::new();
        }
        // The oldest heads first (by position), so no lane starves another:
        // every retry that is due, and the oldest fresh heads.
        let mut out: Vec<(u64, Lane, bool)> = self
            .retrying
            .iter()
            .take_while(|(due, _, _)| *due <= now_micros)
            .map(|&(_, position, lane)| (position, lane, true))
            .collect();
        out.extend(self.fresh.iter().take(room).map(|&(position, lane)| (position, lane, false)));
        out.sort_unstable_by_key(|(position, _, _)| *position);
        out.truncate(room);
        let mut ready = Vec::with_capacity(out.len());
        for (position, lane, retry) in out {
            let Some(head) = self.lanes.get(&lane).and_then(|q| q.front()) else { continue };
            if retry {
                self.retrying.remove(&(head.not_before_micros, position, lane));
            } else {
                self.fresh.remove(&(position, lane));
            }
            ready.push(head.clone());
            self.in_flight.insert(lane);
        }
        ready
    }

    /// When something could next be sent (`None`: nothing waits, or paused).
    pub fn next_due(&self) -> Option<i64> {
        if self.paused {
            return None;
        }
        let fresh = (!self.fresh.is_empty()).then_some(i64::MIN);
        let retry = self.retrying.first().map(|(due, _, _)| *due);
        let due = match (fresh, retry) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(due.max(self.endpoint_not_before))
    }

    /// Records how the attempt at the head of `lane` ended, at `now_micros`,
    /// with `unit` a random number in [0, 1) for the jitter.
    pub fn complete(&mut self, lane: Lane, outcome: Outcome, now_micros: i64, unit: f64) {
        if !self.in_flight.remove(&lane) {
            return; // not in flight: nothing to complete
        }
        let Some(queue) = self.lanes.get_mut(&lane) else { return };
        let Some(head) = queue.front_mut() else { return };
        match outcome {
            Outcome::Delivered => {
                let position = head.position;
                queue.pop_front();
                if queue.is_empty() {
                    self.lanes.remove(&lane);
                }
                self.outstanding.remove(&position);
                self.queued -= 1;
                self.endpoint_failures = 0;
                self.endpoint_not_before = i64::MIN;
            }
            Outcome::EndpointFailed | Outcome::EventRefused => {
                head.failures += 1;
                let first = *head.first_failure_micros.get_or_insert(now_micros);
                let wait = backoff::delay_from(self.first_retry, head.failures, unit).as_micros() as i64;
                head.not_before_micros = now_micros.saturating_add(wait).max(i64::MIN + 1);
                if outcome == Outcome::EndpointFailed {
                    self.endpoint_failures += 1;
                    let wait = backoff::delay_from(self.first_retry, self.endpoint_failures, unit).as_micros() as i64;
                    self.endpoint_not_before = self.endpoint_not_before.max(now_micros.saturating_add(wait));
                }
                let failing_for = std::time::Duration::from_micros(now_micros.saturating_sub(first).max(0) as u64);
                if !backoff::keep_trying(failing_for) {
                    self.paused = true;
                }
            }
        }
        self.index_head(lane);
    }

    /// Every event at or below this position was delivered.
    pub fn checkpoint(&self) -> Option<u64> {
        match self.outstanding.first_key_value() {
            Some((&p, _)) => p.checked_sub(1),
            None => self.highest,
        }
    }

    /// Paused: an event failed for longer than the retry window.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pauses the schedule (it was paused before a restart, or elsewhere).
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Resumes a paused schedule: the failures are forgotten and every
    /// queued event may go at once.
    pub fn resume(&mut self) {
        self.paused = false;
        self.inherited_failure = None;
        self.endpoint_failures = 0;
        self.endpoint_not_before = i64::MIN;
        for q in self.lanes.values_mut() {
            for p in q.iter_mut() {
                p.failures = 0;
                p.first_failure_micros = None;
                p.not_before_micros = i64::MIN;
            }
        }
        self.retrying.clear();
        self.fresh.clear();
        let idle: Vec<Lane> = self.lanes.keys().filter(|l| !self.in_flight.contains(l)).copied().collect();
        for lane in idle {
            self.index_head(lane);
        }
    }

    /// Events queued or in flight.
    pub fn queued(&self) -> usize {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    /// Delivers whatever is ready at `now` with `outcome` for every lane
    /// `fail` names and `Delivered` otherwise; returns what was attempted.
    fn step(s: &mut Schedule, now: i64, fail: impl Fn(&Pending) -> Option<Outcome>) -> Vec<Pending> {
        let ready = s.ready(now);
        for p in &ready {
            s.complete(p.lane, fail(p).unwrap_or(Outcome::Delivered), now, 0.0);
        }
        ready
    }

    #[test]
    fn in_order_per_lane_and_concurrent_across_lanes() {
        let mut s = Schedule::new(None, 8, 1000);
        for (pos, lane) in [(1, 7), (2, 8), (3, 7), (4, 9), (5, 8), (6, 7)] {
            assert!(s.push(pos, lane));
        }
        // One per lane at a time.
        let first: Vec<u64> = s.ready(0).iter().map(|p| p.position).collect();
        assert_eq!(first, [1, 2, 4]);
        assert!(s.ready(0).is_empty(), "nothing more while those are in flight");
        s.complete(7, Outcome::Delivered, 0, 0.0);
        assert_eq!(s.ready(0).iter().map(|p| p.position).collect::<Vec<_>>(), [3]);
        assert_eq!(s.checkpoint(), Some(1));
        s.complete(8, Outcome::Delivered, 0, 0.0);
        s.complete(9, Outcome::Delivered, 0, 0.0);
        s.complete(7, Outcome::Delivered, 0, 0.0);
        assert_eq!(s.checkpoint(), Some(4));
        let rest: Vec<u64> = s.ready(0).iter().map(|p| p.position).collect();
        assert_eq!(rest, [5, 6]);
        s.complete(7, Outcome::Delivered, 0, 0.0);
        assert_eq!(s.checkpoint(), Some(4), "5 is still in flight");
        s.complete(8, Outcome::Delivered, 0, 0.0);
        assert_eq!((s.checkpoint(), s.queued()), (Some(6), 0));
    }

    #[test]
    fn a_refused_event_holds_its_lane_only_and_a_dead_endpoint_holds_all() {
        let mut s = Schedule::new(Some(10), 8, 1000);
        for (pos, lane) in [(11, 1), (12, 2), (13, 1), (14, 2)] {
            s.push(pos, lane);
        }
        // Lane 1's event is refused (400): lane 2 goes on, lane 1 waits.
        let tried = step(&mut s, 0, |p| (p.lane == 1).then_some(Outcome::EventRefused));
        assert_eq!(tried.len(), 2);
        assert_eq!(step(&mut s, 0, |_| None).iter().map(|p| p.position).collect::<Vec<_>>(), [14]);
        assert_eq!(s.checkpoint(), Some(10), "11 is not delivered: the checkpoint stays before it");
        assert!(s.ready(2 * SEC).is_empty(), "lane 1 waits out its back-off");
        assert_eq!(step(&mut s, 5 * SEC, |_| None).iter().map(|p| p.position).collect::<Vec<_>>(), [11]);
        assert_eq!(step(&mut s, 5 * SEC, |_| None).iter().map(|p| p.position).collect::<Vec<_>>(), [13]);
        assert_eq!(s.checkpoint(), Some(14));

        // The endpoint is down (no answer): every lane waits.
        s.push(15, 1);
        s.push(16, 2);
        let tried = step(&mut s, 10 * SEC, |_| Some(Outcome::EndpointFailed));
        assert_eq!(tried.len(), 2, "both lanes were tried at once");
        s.push(17, 3);
        assert!(s.ready(10 * SEC).is_empty(), "a new lane also waits for the endpoint");
        // The second failure of the endpoint doubles its wait (5 s at the
        // low end of the jitter) over the first one (2.5 s).
        assert_eq!(s.next_due(), Some(10 * SEC + 5 * SEC));
        // A success anywhere says the endpoint is up: the others go again
        // as their own back-off allows.
        let mut s = Schedule::new(None, 8, 10);
        s.push(1, 1);
        s.push(2, 2);
        let r = s.ready(0);
        s.complete(r[0].lane, Outcome::EndpointFailed, 0, 0.0);
        s.complete(r[1].lane, Outcome::Delivered, 0, 0.0);
        s.push(3, 3);
        assert_eq!(s.ready(0).iter().map(|p| p.position).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn a_receiver_down_for_a_day_gets_everything_in_order_and_one_down_for_72_hours_pauses() {
        // Simulated clock: the receiver is down from t = 0 to t = 24 h.
        let mut s = Schedule::new(None, 4, 1000);
        for pos in 1..=6u64 {
            s.push(pos, pos as u128 % 2);
        }
        let mut now = 0;
        let mut delivered = Vec::new();
        let mut attempts = 0;
        while s.queued() > 0 {
            let up = now >= 24 * 3600 * SEC;
            for p in s.ready(now) {
                attempts += 1;
                let outcome = if up { Outcome::Delivered } else { Outcome::EndpointFailed };
                if up {
                    delivered.push(p.position);
                }
                s.complete(p.lane, outcome, now, 0.5);
            }
            now = s.next_due().unwrap_or(now).max(now + 1);
        }
        assert!(!s.paused());
        let lane0: Vec<u64> = delivered.iter().copied().filter(|p| p % 2 == 0).collect();
        let lane1: Vec<u64> = delivered.iter().copied().filter(|p| p % 2 == 1).collect();
        assert_eq!((lane0, lane1), (vec![2, 4, 6], vec![1, 3, 5]));
        assert!(attempts < 200, "{attempts} attempts: the back-off spaces them");
        assert_eq!(s.checkpoint(), Some(6));

        // Down for good: paused after 72 hours, not before.
        let mut s = Schedule::new(None, 4, 1000);
        s.push(1, 5);
        let mut now = 0;
        let mut last_attempt = 0;
        while !s.paused() {
            for p in s.ready(now) {
                s.complete(p.lane, Outcome::EndpointFailed, now, 0.0);
                last_attempt = now;
            }
            now = s.next_due().map_or(now + SEC, |d| d.max(now + 1));
            assert!(now < 80 * 3600 * SEC, "never paused");
        }
        assert!(last_attempt >= 72 * 3600 * SEC, "paused after {} h", last_attempt / 3600 / SEC);
        assert!(s.ready(now + 3600 * SEC).is_empty() && s.next_due().is_none());
        assert_eq!(s.checkpoint(), Some(0), "position 1 is not delivered");
        // Resumed: it goes at once, and on success the checkpoint moves.
        s.resume();
        let p = s.ready(now);
        assert_eq!(p.len(), 1);
        s.complete(5, Outcome::Delivered, now, 0.0);
        assert_eq!(s.checkpoint(), Some(1));
    }

    #[test]
    fn a_failure_window_survives_a_restart() {
        let mut s = Schedule::new(Some(4), 2, 10);
        s.push(5, 1);
        let p = s.ready(0);
        s.complete(p[0].lane, Outcome::EndpointFailed, 0, 0.0);
        assert_eq!((s.checkpoint(), s.failing_since()), (Some(4), Some(0)));
        // Restarted 71 h later from what was recorded: one more failure
        // 2 h after that pauses it (73 h since the first).
        let mut s = Schedule::new(Some(4), 2, 10);
        s.inherit_failure(Some(0));
        s.push(5, 1);
        s.push(6, 2);
        let now = 73 * 3600 * SEC;
        for p in s.ready(now) {
            s.complete(p.lane, Outcome::EndpointFailed, now, 0.0);
        }
        assert!(s.paused(), "the window went on from before the restart");
    }

    #[test]
    fn the_queue_is_bounded_and_outcomes_follow_the_status() {
        let mut s = Schedule::new(None, 2, 3);
        assert!(s.push(1, 1) && s.push(2, 2) && s.push(3, 3));
        assert!(!s.push(4, 4) && !s.has_room());
        let ready = s.ready(0);
        assert_eq!(ready.len(), 2, "at most two in flight");
        s.complete(ready[0].lane, Outcome::Delivered, 0, 0.0);
        assert!(s.has_room() && s.push(4, 4));
        assert_eq!(Outcome::of_status(Some(204)), Outcome::Delivered);
        assert_eq!(Outcome::of_status(Some(429)), Outcome::EndpointFailed);
        assert_eq!(Outcome::of_status(Some(503)), Outcome::EndpointFailed);
        assert_eq!(Outcome::of_status(None), Outcome::EndpointFailed);
        assert_eq!(Outcome::of_status(Some(400)), Outcome::EventRefused);
        assert_eq!(Outcome::of_status(Some(302)), Outcome::EventRefused);
    }

    /// The indexed schedule against the plain scan it replaces: random
    /// pushes, sends, outcomes, pauses and resumes over a simulated clock;
    /// after every step both agree on what goes, when to wake, the
    /// checkpoint and since when the oldest event fails.
    #[test]
    fn the_index_chooses_what_a_scan_of_every_lane_would() {
        /// A queued event as the model keeps it: (position, failures,
        /// first failure, not before).
        type Head = (u64, u32, Option<i64>, i64);
        /// The reference: the same rules over a plain list of lanes.
        #[derive(Default)]
        struct Model {
            lanes: BTreeMap<Lane, VecDeque<Head>>,
            in_flight: BTreeSet<Lane>,
        }
        impl Model {
            fn due(&self, endpoint_not_before: i64, now: i64, room: usize) -> Vec<u64> {
                if now < endpoint_not_before {
                    return Vec::new();
                }
                let mut heads: Vec<u64> = self
                    .lanes
                    .iter()
                    .filter(|(l, _)| !self.in_flight.contains(l))
                    .filter_map(|(_, q)| q.front().filter(|h| h.3 <= now).map(|h| h.0))
                    .collect();
                heads.sort_unstable();
                heads.truncate(room);
                heads
            }
            fn next_due(&self, endpoint_not_before: i64) -> Option<i64> {
                self.lanes
                    .iter()
                    .filter(|(l, _)| !self.in_flight.contains(l))
                    .filter_map(|(_, q)| q.front().map(|h| h.3.max(endpoint_not_before)))
                    .min()
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let mut s = Schedule::new(None, 1 + next(6) as usize, 1 + next(40) as usize)
                .with_first_retry(std::time::Duration::from_millis(100));
            let mut m = Model::default();
            let (mut now, mut position) = (0i64, 0u64);
            for _ in 0..300 {
                match next(10) {
                    0..=3 => {
                        position += 1 + next(3);
                        let lane = next(8) as u128;
                        if s.push(position, lane) {
                            m.lanes.entry(lane).or_default().push_back((position, 0, None, i64::MIN));
                        }
                    }
                    4 | 5 => {
                        let room = s.max_in_flight - s.in_flight.len();
                        let want = if s.paused { Vec::new() } else { m.due(s.endpoint_not_before, now, room) };
                        let got: Vec<u64> = s.ready(now).iter().map(|p| p.position).collect();
                        assert_eq!(got, want, "round {round}: what goes at {now}");
                        for p in got {
                            let lane =
                                m.lanes.iter().find(|(_, q)| q.front().is_some_and(|h| h.0 == p)).map(|(l, _)| *l);
                            m.in_flight.extend(lane);
                        }
                    }
                    6 | 7 => {
                        let Some(&lane) = m.in_flight.iter().nth(next(8) as usize % m.in_flight.len().max(1)) else {
                            continue;
                        };
                        let outcome =
                            [Outcome::Delivered, Outcome::Delivered, Outcome::EndpointFailed, Outcome::EventRefused]
                                [next(4) as usize];
                        s.complete(lane, outcome, now, 0.5);
                        m.in_flight.remove(&lane);
                        // The model follows the schedule's own record of the head.
                        let q = m.lanes.get_mut(&lane).expect("lane");
                        if outcome == Outcome::Delivered {
                            q.pop_front();
                            if q.is_empty() {
                                m.lanes.remove(&lane);
                            }
                        } else {
                            let h = s.lanes[&lane].front().expect("head");
                            *q.front_mut().expect("head") =
                                (h.position, h.failures, h.first_failure_micros, h.not_before_micros);
                        }
                    }
                    8 => now += next(400_000) as i64,
                    _ => {
                        if next(4) == 0 {
                            s.resume();
                            for q in m.lanes.values_mut() {
                                for e in q.iter_mut() {
                                    *e = (e.0, 0, None, i64::MIN);
                                }
                            }
                        }
                    }
                }
                let want_next = if s.paused { None } else { m.next_due(s.endpoint_not_before) };
                assert_eq!(s.next_due(), want_next, "round {round}: next due");
                let oldest = m.lanes.values().filter_map(|q| q.front()).min_by_key(|h| h.0);
                let want_checkpoint = match oldest {
                    Some(h) => h.0.checked_sub(1),
                    None => s.highest,
                };
                assert_eq!(s.checkpoint(), want_checkpoint, "round {round}: checkpoint");
                assert_eq!(s.failing_since(), oldest.and_then(|h| h.2), "round {round}: failing since");
                assert_eq!(s.queued(), m.lanes.values().map(|q| q.len()).sum::<usize>());
            }
        }
    }

    #[test]
    fn reading_past_other_events_moves_the_checkpoint_only_when_nothing_waits() {
        let mut s = Schedule::new(Some(10), 8, 100);
        s.read_through(50);
        assert_eq!(s.checkpoint(), Some(50), "nothing queued: everything read is done");
        assert!(s.push(60, 1));
        s.read_through(90);
        assert_eq!(s.checkpoint(), Some(59), "the queued event holds the checkpoint");
        s.read_through(70);
        assert_eq!(s.highest(), Some(90), "reading through an older position changes nothing");
        let r = s.ready(0);
        s.complete(r[0].lane, Outcome::Delivered, 0, 0.0);
        assert_eq!(s.checkpoint(), Some(90));
        assert!(s.push(91, 2));
    }
}
