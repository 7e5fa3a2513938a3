//! Test hooks in production code, compiled only with the `test-hooks`
//! feature (the test builds turn it on; release builds leave it out).
//!
//! `PYPES_CRASH_AT=<process>:<step>` aborts the process right after that
//! step (no cleanup, like a power cut), so a test can prove a process
//! completes after a restart; `PYPES_CRASH_AT=<process>:<step>:<n>` aborts
//! at the step's `n`-th pass.

/// A step of `process` (its `n`-th pass, for steps that repeat).
#[cfg(feature = "test-hooks")]
pub fn crash_point(process: &str, step: &str, n: usize) {
    let Ok(v) = std::env::var("PYPES_CRASH_AT") else { return };
    let mut parts = v.split(':');
    let (p, s, at) = (parts.next(), parts.next(), parts.next().and_then(|n| n.parse::<usize>().ok()));
    if p == Some(process) && s == Some(step) && at.is_none_or(|at| at == n) {
        tracing::error!(process, step, n, "PYPES_CRASH_AT: aborting the process");
        std::process::abort();
    }
}

/// Without the `test-hooks` feature: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn crash_point(_process: &str, _step: &str, _n: usize) {}
