//! Catch-up subscription to `$all` for any backend: reads pages from a
//! checkpoint until it reaches the committed head, reports "caught up", then
//! waits for the head to move. Because it reads by position and the head only
//! moves past durable, readable events, the switch from catching up to live
//! can neither skip nor repeat an event.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use crate::{EventFilter, EventLog, LogError, RecordedEvent, Result};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeFrom {
    /// From the first event of the log.
    Start,
    /// After this global position (a projection's checkpoint).
    After(u64),
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionMessage {
    Event(RecordedEvent),
    /// Every event up to the committed head has been delivered; the
    /// subscription is live from `position`.
    CaughtUp {
        position: u64,
    },
    /// While live, the head ran more than the threshold ahead of the
    /// subscriber; it is catching up again from `position`.
    FellBehind {
        position: u64,
        head: u64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct SubscriptionOptions {
    /// Events read per `$all` page.
    pub page_size: usize,
    /// How far the head may run ahead of a live subscriber before it is
    /// reported as fallen behind.
    pub fall_behind_threshold: u64,
    /// While live, wait this long after a commit before reading, so one
    /// read covers the commits that follow it (many subscribers of a busy
    /// log read far less often, for this much latency). Zero: read at once.
    pub coalesce: std::time::Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self { page_size: 512, fall_behind_threshold: 10_000, coalesce: std::time::Duration::ZERO }
    }
}

/// A catch-up subscription; pull events with [`Subscription::next`].
pub struct Subscription {
    log: Arc<dyn EventLog>,
    filter: EventFilter,
    options: SubscriptionOptions,
    next_position: u64,
    buffer: VecDeque<RecordedEvent>,
    live: bool,
    head: watch::Receiver<u64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("next_position", &self.next_position)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// Subscribes to `$all` from `from`, keeping only events that pass `filter`
/// (applied by the backend while reading).
pub fn subscribe_all(
    log: Arc<dyn EventLog>,
    from: SubscribeFrom,
    filter: EventFilter,
    options: SubscriptionOptions,
) -> Subscription {
    let next_position = match from {
        SubscribeFrom::Start => 0,
        SubscribeFrom::After(p) => p.saturating_add(1),
    };
    let head = log.watch_head();
    Subscription {
        log,
        filter,
        options: SubscriptionOptions { page_size: options.page_size.max(1), ..options },
        next_position,
        buffer: VecDeque::new(),
        live: false,
        head,
    }
}

impl Subscription {
    /// The next event or state change. Waits while live and nothing is new.
    pub async fn next(&mut self) -> Result<SubscriptionMessage> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(SubscriptionMessage::Event(event));
            }
            // Mark the current head as seen before comparing, so that a
            // commit after this line wakes `changed()` below.
            let head = *self.head.borrow_and_update();
            if self.live && head > self.next_position.saturating_add(self.options.fall_behind_threshold) {
                self.live = false;
                return Ok(SubscriptionMessage::FellBehind { position: self.next_position, head });
            }
            if self.next_position < head {
                let page = self.log.read_all(self.next_position, self.options.page_size, &self.filter).await?;
                debug_assert!(page.next_position >= self.next_position);
                self.next_position = page.next_position.max(self.next_position);
                self.buffer.extend(page.events);
                continue;
            }
            if !self.live {
                self.live = true;
                return Ok(SubscriptionMessage::CaughtUp { position: self.next_position });
            }
            if self.head.changed().await.is_err() {
                return Err(LogError::Closed);
            }
            if !self.options.coalesce.is_zero() {
                tokio::time::sleep(self.options.coalesce).await;
            }
        }
    }

    /// Events read from the log and not yet returned: 0 means the next
    /// [`Subscription::next`] reads (or waits), so everything below
    /// [`Subscription::next_position`] has been returned.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The position the subscription reads next.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }
}
