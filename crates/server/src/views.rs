//! The projections the server runs: one runner per projection over
//! `<data>/views/<name>.redb`, readiness once every view has caught up with
//! the log as it was at start, and reads that wait for the views to reach
//! the log's head as of the call (so a client reads its own writes).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eventlog::EventLog;
use projections::{ReadView, Runner, RunnerConfig, ViewStore};
use tokio::sync::watch;

use crate::error::ApiError;

/// How long a read waits for the views to catch up before answering from
/// what they have.
const READ_YOUR_WRITES: Duration = Duration::from_secs(1);

pub struct Views {
    pub runners: Vec<Arc<Runner>>,
    log: Arc<dyn EventLog>,
}

impl Views {
    /// Opens every projection's store and starts its runner; `ready` turns
    /// true when all have reached the head the log had at start.
    pub fn start(data_dir: &Path, log: Arc<dyn EventLog>, ready: watch::Sender<bool>) -> anyhow::Result<Arc<Self>> {
        let dir = data_dir.join("views");
        let mut runners = Vec::new();
        let all = projections::all();
        // One read and decode of each new page of `$all` for every view.
        let pages = projections::runner::SharedPages::new(all.iter().map(|p| p.filter()));
        for p in all {
            let path = dir.join(format!("{}.redb", p.name()));
            let store = Arc::new(ViewStore::open(&path).with_context(|| format!("opening {}", path.display()))?);
            let runner = Runner::start_sharing(
                p,
                store,
                log.clone(),
                RunnerConfig::default(),
                tokio::runtime::Handle::current(),
                pages.clone(),
            )
            .context("starting a projection")?;
            runners.push(runner);
        }
        let views = Arc::new(Self { runners, log: log.clone() });
        let head = log.head();
        let waiting = views.clone();
        tokio::spawn(async move {
            for r in &waiting.runners {
                r.wait_for(head).await;
            }
            tracing::info!(head, "views caught up with the log");
            let _ = ready.send(true);
        });
        Ok(views)
    }

    pub fn runner(&self, name: &str) -> Option<&Arc<Runner>> {
        self.runners.iter().find(|r| r.name() == name)
    }

    /// A snapshot of projection `name`, after waiting (bounded) for it to
    /// reach the log's current head.
    pub async fn read(&self, name: &str) -> Result<ReadView, ApiError> {
        let runner = self.runner(name).ok_or_else(|| ApiError::Internal(format!("no projection {name}")))?;
        let head = self.log.head();
        let _ = tokio::time::timeout(READ_YOUR_WRITES, runner.wait_for(head)).await;
        let store = runner.store().clone();
        let view = tokio::task::spawn_blocking(move || store.read())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        view.ok_or_else(|| ApiError::Unavailable(format!("the {name} view is not built yet")))
    }

    pub fn stop(&self) {
        for r in &self.runners {
            r.stop();
        }
    }
}
