//! The worker pool: up to `--jobs` connections of their own, each taking the next item from
//! one shared queue, stopping at the first error. Worker sessions hold the work lock shared (see
//! [`crate::db::lock`]) and have `lock_timeout = 0`: the steps whose locks would block writes
//! set their own bound. When the role's or the server's connection limit leaves fewer
//! connections, the pool goes on with those it got; with none at all, on the main connection.
//! Meanwhile the main connection is kept in use, so that a proxy that closes idle connections
//! leaves it alone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use postgres::Client;

use crate::config::Settings;
use crate::db::{self, Conn};
use crate::error::{Error, Result};

/// Runs `work` for every item; see the module docs.
pub(crate) fn for_each<T: Sync>(
    settings: &Settings,
    main: &mut Conn,
    items: &[T],
    work: impl Fn(&mut Client, i32, &T) -> Result<()> + Sync,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut workers = open_workers(settings, settings.jobs.clamp(1, items.len()))?;
    if workers.is_empty() {
        log::warn!("no connection left for workers (the connection limit is reached): doing the online work on the main connection, one item at a time; lower --jobs or raise the role's CONNECTION LIMIT to avoid this");
        main.set_lock_timeout(Duration::ZERO)?;
        let pid = main.pid();
        let outcome = items
            .iter()
            .try_for_each(|item| work(main.client(), pid, item));
        main.set_lock_timeout(settings.lock_timeout)?;
        return outcome;
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        first_error.lock().unwrap().get_or_insert(e);
    };
    std::thread::scope(|scope| {
        let mut running = Vec::new();
        for conn in workers.iter_mut() {
            let (next, failed, fail, work) = (&next, &failed, &fail, &work);
            running.push(scope.spawn(move || {
                let pid = conn.pid();
                while !failed.load(Ordering::Relaxed) {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if let Err(e) = work(conn.client(), pid, item) {
                        fail(e);
                    }
                }
            }));
        }
        if let Err(e) = db::keep_alive_while(main, || running.iter().any(|h| !h.is_finished())) {
            fail(e);
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Up to `wanted` worker connections; fewer when the connection limit says so.
fn open_workers(settings: &Settings, wanted: usize) -> Result<Vec<Conn>> {
    let mut workers = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        let mut conn = match db::connect_once(settings) {
            Ok(c) => c,
            Err(e) if e.sqlstate() == Some("53300") => {
                log::warn!(
                    "opened {} of {wanted} worker connection(s): {e}",
                    workers.len()
                );
                break;
            }
            Err(e) => return Err(e),
        };
        conn.set_lock_timeout(Duration::ZERO)?;
        db::lock::join_work(&mut conn)?;
        workers.push(conn);
    }
    Ok(workers)
}
