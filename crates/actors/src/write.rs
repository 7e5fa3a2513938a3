//! Appends to streams no entity actor owns: end users' auth sessions and
//! login failures (named by keyed hashes, not ids), each node's audit
//! trail (one writer task per node) and process checkpoints. Their events
//! are made by the codec in `events`; their writers bring their own
//! expectation (an exact version, or none for an append-only counter).
//! Entities write through their actors ([`crate::Registry::execute`]);
//! nothing else in the system appends (a tidy test holds that).

use eventlog::{AppendResult, Direction, EventLog, ExpectedVersion, LogError, NewEvent, ReadFrom, RecordedEvent};

/// The last event of `stream` (`None`: the stream does not exist or holds
/// nothing): a process's latest checkpoint.
pub async fn last_event(log: &dyn EventLog, stream: &str) -> Result<Option<RecordedEvent>, LogError> {
    match log.read_stream(stream, ReadFrom::End, Direction::Backward, 1).await {
        Ok(mut page) => Ok(page.pop()),
        Err(LogError::StreamNotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Appends `events` to `stream` if its version is `expected`.
pub async fn append(
    log: &dyn EventLog,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult, LogError> {
    log.append(stream, expected, events).await
}
