//! Appends to streams no entity actor owns: end users' auth sessions and
//! login failures (named by keyed hashes, not ids), each node's audit
//! trail (one writer task per node) and process checkpoints. Their events
//! are made by the codec in `events`; their writers bring their own
//! expectation (an exact version, or none for an append-only counter).
//! Entities write through their actors ([`crate::Registry::execute`]);
//! nothing else in the system appends (a tidy test holds that), except a
//! tenant's move between regions, which appends the events another
//! region's log stored, as they were ([`append_copied`]).

use eventlog::{
    AppendResult, Direction, EventLog, ExpectedVersion, LogError, NewEvent, ReadFrom, RecordedEvent, StreamAppend,
};

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

/// Appends events another region's log stored (a tenant moving between
/// regions: made by the codec there, sealed as they were), each stream at
/// its expected version, all in one atomic write.
pub async fn append_copied(log: &dyn EventLog, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>, LogError> {
    log.append_multi(appends).await
}
