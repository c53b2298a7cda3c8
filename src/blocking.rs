//! Where the runner's synchronous work runs. The postgres crate blocks on a small tokio runtime
//! of its own, and tokio panics ("Cannot start a runtime from within a runtime") when that
//! happens on a thread that is already inside a runtime: an application calling
//! [`crate::migrate`] from an async task. So every public entry point goes through
//! `off_runtime`, which runs the work on a thread of its own in that case, and async
//! applications get [`migrate_async`], which does not block their worker thread at all.

use crate::error::{Error, Result};
use crate::interrupt::{Interrupt, Reason};
use crate::migrate::MigrateReport;
use crate::Settings;

/// Runs `work` on this thread, or, when this thread is inside a tokio runtime, on a scoped
/// thread of its own (this thread waits for it: from an async task, prefer [`migrate_async`]).
pub(crate) fn off_runtime<T: Send>(work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(outcome) => outcome,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Stops the run when the future of [`migrate_async`] is dropped before it finished (a
/// shutdown, a `timeout`): the run's statements are cancelled on the server and the migration
/// lock released, as on SIGTERM.
struct StopOnDrop(Option<Interrupt>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(interrupt) = self.0.take() {
            interrupt.trigger(Reason::Requested);
        }
    }
}

/// [`crate::migrate`] for async applications: the run goes to tokio's blocking pool, so no
/// worker thread waits for it. Dropping the future stops the run (its statements are cancelled
/// on the server, the lock released). Must be called inside a tokio runtime.
///
/// ```no_run
/// # async fn boot() -> Result<(), meta_chat_migrations::Error> {
/// let report = meta_chat_migrations::migrate_async(meta_chat_migrations::Settings::from_env()?).await?;
/// # Ok(()) }
/// ```
pub async fn migrate_async(mut settings: Settings) -> Result<MigrateReport> {
    // The run's own handle: the application's still stops it, and a dropped future stops only
    // this run (a later one with the same settings goes).
    settings.interrupt = settings.interrupt.child();
    let mut guard = StopOnDrop(Some(settings.interrupt.clone()));
    let outcome = tokio::task::spawn_blocking(move || crate::migrate::migrate(&settings)).await;
    guard.0 = None;
    outcome.map_err(|e| Error::Task {
        cause: e.to_string(),
    })?
}
