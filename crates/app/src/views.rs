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

use crate::error::AppError;

/// How long a read waits for the views to catch up before answering from
/// what they have.
const READ_YOUR_WRITES: Duration = Duration::from_secs(1);

pub struct Views {
    pub runners: Vec<Arc<Runner>>,
    log: Arc<dyn EventLog>,
    /// Views whose file was damaged (or missing) at start and are being
    /// rebuilt from the log: they answer UNAVAILABLE until they reach the
    /// head the log had at start.
    pub rebuilding: Vec<Rebuild>,
}

/// A view rebuilt from the log at start.
#[derive(Debug, Clone)]
pub struct Rebuild {
    pub name: &'static str,
    /// Where the damaged file was moved (kept for inspection); `None` when
    /// the file was missing.
    pub moved_to: Option<std::path::PathBuf>,
    pub reason: String,
    /// The log's head at start: the view serves again from there on.
    pub until: u64,
}

impl Views {
    /// Opens every projection's store and starts its runner; `ready` turns
    /// true when all have reached the head the log had at start. A view
    /// file that does not open, or whose runner cannot start on it, is
    /// moved aside and the view rebuilt from the log in the background;
    /// the server serves everything else meanwhile.
    pub fn start(data_dir: &Path, log: Arc<dyn EventLog>, ready: watch::Sender<bool>) -> anyhow::Result<Arc<Self>> {
        let dir = data_dir.join("views");
        // A data directory that never had views (the first start) is not
        // "missing" them.
        let had_views = dir.exists();
        let mut runners = Vec::new();
        let mut rebuilding = Vec::new();
        let all = projections::all();
        let head = log.head();
        // One read and decode of each new page of `$all` for every view.
        let pages = projections::runner::SharedPages::new(all.iter().map(|p| p.filter()));
        for p in all {
            let name = p.name();
            let path = dir.join(format!("{name}.redb"));
            let existed = path.exists();
            let (store, mut aside) =
                ViewStore::open_or_set_aside(&path).with_context(|| format!("opening {}", path.display()))?;
            let start = |store: ViewStore, p| {
                Runner::start_sharing(
                    p,
                    Arc::new(store),
                    log.clone(),
                    RunnerConfig::default(),
                    tokio::runtime::Handle::current(),
                    pages.clone(),
                )
            };
            let runner = match start(store, p) {
                Ok(runner) => runner,
                Err(e) if aside.is_none() => {
                    // The file opened but its contents do not make sense.
                    let moved = projections::store_set_aside(&path, &e.to_string())
                        .with_context(|| format!("moving {} aside", path.display()))?;
                    aside = Some(moved);
                    let store = ViewStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    let p = projections::all().into_iter().find(|q| q.name() == name).context("no such projection")?;
                    start(store, p).context("starting a projection")?
                }
                Err(e) => return Err(e).context("starting a projection"),
            };
            match aside {
                Some(a) => {
                    tracing::error!(
                        view = name,
                        moved_to = %a.moved_to.display(),
                        reason = %a.reason,
                        until = head,
                        "view store damaged: moved aside, rebuilding it from the log"
                    );
                    rebuilding.push(Rebuild { name, moved_to: Some(a.moved_to), reason: a.reason, until: head });
                }
                None if !existed && had_views => {
                    tracing::warn!(view = name, until = head, "view store missing: rebuilding it from the log");
                    rebuilding.push(Rebuild { name, moved_to: None, reason: "missing".into(), until: head });
                }
                None => {}
            }
            runners.push(runner);
        }
        let views = Arc::new(Self { runners, log: log.clone(), rebuilding });
        let waiting = views.clone();
        tokio::spawn(async move {
            for r in &waiting.runners {
                r.wait_for(head).await;
            }
            for r in &waiting.rebuilding {
                tracing::info!(view = r.name, until = r.until, "view rebuilt from the log");
            }
            tracing::info!(head, "views caught up with the log");
            let _ = ready.send(true);
        });
        Ok(views)
    }

    /// The rebuild still under way for view `name`, if any.
    pub fn rebuild_of(&self, name: &str) -> Option<&Rebuild> {
        let r = self.rebuilding.iter().find(|r| r.name == name)?;
        let runner = self.runner(name)?;
        (runner.status().next_position < r.until).then_some(r)
    }

    pub fn runner(&self, name: &str) -> Option<&Arc<Runner>> {
        self.runners.iter().find(|r| r.name() == name)
    }

    /// A snapshot of projection `name`, after waiting (bounded) for it to
    /// reach the log's current head.
    pub async fn read(&self, name: &str) -> Result<ReadView, AppError> {
        let runner = self.runner(name).ok_or_else(|| AppError::Internal(format!("no projection {name}")))?;
        if let Some(r) = self.rebuild_of(name) {
            return Err(AppError::Unavailable(format!(
                "the {name} view is being rebuilt from the log after its file was found {} (at position {} of {})",
                if r.moved_to.is_some() { "damaged" } else { "missing" },
                runner.status().next_position,
                r.until
            )));
        }
        let head = self.log.head();
        let _ = tokio::time::timeout(READ_YOUR_WRITES, runner.wait_for(head)).await;
        let store = runner.store().clone();
        let view = tokio::task::spawn_blocking(move || store.read())
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| AppError::Internal(e.to_string()))?;
        view.ok_or_else(|| AppError::Unavailable(format!("the {name} view is not built yet")))
    }

    /// An operator's action on a projection: `pause`, `resume`, `skip`
    /// (the event it is stalled on) or `reset` (rebuild beside the serving
    /// generation); what was done.
    pub fn control(&self, name: &str, action: &str) -> Result<String, AppError> {
        let Some(runner) = self.runner(name) else {
            let names: Vec<&str> = self.runners.iter().map(|r| r.name()).collect();
            return Err(AppError::NotFound(format!("no projection {name:?}; there are {}", names.join(", "))));
        };
        let done = match action {
            "pause" => runner.pause().map(|_| "paused".to_string()).map_err(|e| e.to_string()),
            "resume" => runner.resume().map(|_| "resumed".to_string()).map_err(|e| e.to_string()),
            "skip" => runner.skip().map(|p| format!("skipping the event at position {p}")),
            "reset" => {
                runner.reset();
                Ok("rebuilding beside the serving generation; readers switch when it has caught up".to_string())
            }
            other => {
                return Err(AppError::NotFound(format!("no action {other:?}; use pause, resume, skip or reset")));
            }
        };
        match done {
            Ok(m) => {
                tracing::info!(projection = %name, %action, "projection admin action");
                Ok(format!("{name}: {m}"))
            }
            Err(e) => Err(AppError::Conflict(e)),
        }
    }

    pub fn stop(&self) {
        for r in &self.runners {
            r.stop();
        }
    }
}
