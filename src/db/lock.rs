//! The migration lock: one runner per database at a time, and never a runner racing the
//! leftovers of another.
//!
//! - Key 1 ([`ADVISORY_LOCK_KEYS`]) is a session-level advisory lock on a connection of its
//!   own, outside any transaction, so that it outlives each migration's transaction and the
//!   server releases it when the runner dies. Runners started at once wait for each other.
//! - A keeper thread uses that connection every [`KEEPALIVE_EVERY`]: it checks that the lock is
//!   still held by its session and keeps the connection from looking idle to a proxy or load
//!   balancer. It also polls, for [`BlockerWatch`], which pids the run's connections wait for,
//!   and cancels a step's statement when a transaction holding a lock on one of the step's
//!   tables waits for it (the step would deadlock with it; the step starts over with its locks
//!   taken first). If the connection is lost anyway, the keeper triggers the run's interrupt,
//!   which cancels every statement of the run on the server.
//! - Key 2 ([`WORK_LOCK_KEYS`]) is held *shared* by every connection that does the run's work.
//!   A runner that has just taken key 1 checks that nobody holds key 2: if somebody does, those
//!   are statements of an earlier run that are still executing on the server (a run killed with
//!   SIGKILL, or one that lost its lock). It cancels them and waits for them to end before it
//!   changes anything, so it never mistakes an index still being built for a leftover.
//!
//! How long a runner waits for key 1: with `--lock-wait D`, at most D; without it, as long as
//! the holder is a live runner (its application name is the runner's, and its lock connection
//! is active or was active in the last [`STALE_AFTER`]). A holder that is not a live runner
//! (another program, or a server connection a pooler left holding the lock) is named, and the
//! runner gives up after [`NOT_A_RUNNER_GRACE`].

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use super::{Conn, APPLICATION_NAME};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::interrupt::{Interrupt, Reason};

/// The migration lock (`pg_advisory_lock(int4, int4)`), scoped by PostgreSQL to the current
/// database: runners of different databases never wait for each other.
pub const ADVISORY_LOCK_KEYS: (i32, i32) = (0x6d63_6d67, 1);
/// Held shared by every connection doing a run's work.
pub const WORK_LOCK_KEYS: (i32, i32) = (0x6d63_6d67, 2);

/// How often the keeper checks (and so uses) the lock connection.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(2);
/// A live runner's lock connection is never idle for longer than this.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// How long a runner waits (without `--lock-wait`) for a lock held by a session that is not a
/// live runner, before it gives up naming it.
pub const NOT_A_RUNNER_GRACE: Duration = Duration::from_secs(10);
/// How long a runner waits for an earlier run's statements to end after cancelling them.
pub const LEFTOVER_WAIT: Duration = Duration::from_secs(30);

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1, $2)";
const TRY_LOCK_SHARED: &str = "SELECT pg_try_advisory_lock_shared($1, $2)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1, $2)";
const LOCK_HOLDERS: &str = "SELECT l.pid, a.application_name::text, a.state::text, \
       extract(epoch FROM now() - coalesce(a.state_change, a.backend_start))::float8, \
       coalesce(host(a.client_addr), 'local socket'), left(a.query, 160) \
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted \
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2 \
       AND l.pid <> pg_backend_pid() ORDER BY l.pid";
const HOLDS_LOCK: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
       AND granted AND pid = pg_backend_pid() AND classid = $1::int4::oid \
       AND objid = $2::int4::oid AND objsubid = 2)";
const STEP_PROGRESS: &str =
    "SELECT a.pid, p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total \
     FROM pg_stat_activity a LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid \
     WHERE a.pid = ANY($1) AND a.state = 'active' AND a.wait_event_type IS DISTINCT FROM 'Lock'";

const WAITING_BACKENDS: &str = "SELECT pid, pg_blocking_pids(pid), wait_event \
     FROM pg_stat_activity WHERE pid = ANY($1) AND wait_event_type = 'Lock'";

/// A session holding an advisory lock, as far as this role may see it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub pid: i32,
    /// `None` where this role may not see the session's details.
    pub application_name: Option<String>,
    pub state: Option<String>,
    pub idle_seconds: Option<f64>,
    pub client: Option<String>,
    pub query: Option<String>,
}

impl Holder {
    fn is_runner(&self) -> Option<bool> {
        self.application_name
            .as_deref()
            .map(|a| a.contains(APPLICATION_NAME))
    }

    /// `Some(false)` when it is certainly not a live runner; `None` when this role cannot tell.
    pub fn is_live_runner(&self) -> Option<bool> {
        let runner = self.is_runner()?;
        let recent = self.state.as_deref() == Some("active")
            || self
                .idle_seconds
                .is_some_and(|s| s < STALE_AFTER.as_secs_f64());
        Some(runner && recent)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        match (&self.application_name, &self.state) {
            (Some(app), Some(state)) => write!(
                f,
                " (application_name '{app}', client {}, {state} for {:.0}s)",
                self.client.as_deref().unwrap_or("?"),
                self.idle_seconds.unwrap_or(0.0)
            ),
            _ => write!(f, " (this role may not see its details)"),
        }
    }
}

fn holders(client: &mut Client, keys: (i32, i32)) -> Result<Vec<Holder>> {
    Ok(client
        .query(LOCK_HOLDERS, &[&keys.0, &keys.1])
        .map_err(|e| Error::db("looking up the holders of the migration lock", e))?
        .into_iter()
        .map(|r| Holder {
            pid: r.get(0),
            application_name: r.get(1),
            state: r.get(2),
            idle_seconds: r.get(3),
            client: r.get(4),
            query: r.get(5),
        })
        .collect())
}

fn try_lock(client: &mut Client, sql: &str, keys: (i32, i32)) -> Result<bool> {
    client
        .query_one(sql, &[&keys.0, &keys.1])
        .map(|r| r.get(0))
        .map_err(|e| Error::db("taking the migration advisory lock", e))
}

/// Takes the work lock shared on a connection that does a run's work (see the module docs).
pub fn join_work(conn: &mut Conn) -> Result<()> {
    if try_lock(conn, TRY_LOCK_SHARED, WORK_LOCK_KEYS)? {
        return Ok(());
    }
    Err(Error::interrupted(Reason::LockLost(
        "another runner holds this database's work lock".into(),
    )))
}

/// What `pg_stat_progress_create_index` says of one backend, as a phrase.
fn progress_text(row: &postgres::Row) -> String {
    let phase: Option<String> = row.get(1);
    let Some(phase) = phase else {
        return "still scanning (PostgreSQL reports no progress for this statement)".into();
    };
    let part = |done: Option<i64>, total: Option<i64>, unit: &str| match (done, total) {
        (Some(d), Some(t)) if t > 0 => Some(format!(
            ", {d} of {t} {unit} ({:.0}%)",
            100.0 * d as f64 / t as f64
        )),
        _ => None,
    };
    let detail = part(row.get(2), row.get(3), "blocks")
        .or_else(|| part(row.get(4), row.get(5), "tuples"))
        .unwrap_or_default();
    format!("{phase}{detail}")
}

#[derive(Default)]
struct Waiting {
    step: String,
    /// When the step started.
    started: Option<Instant>,
    last_progress: Option<Instant>,
    /// When it was first seen waiting for a lock.
    since: Option<Instant>,
    last_logged: Option<Instant>,
    blockers: Vec<i32>,
    /// Tables on which a transaction waiting for this step while holding a conflicting lock
    /// would deadlock with it: the keeper stops the step's statement when it sees one.
    guard: Vec<Guarded>,
    /// The keeper stopped the step's statement for such a transaction.
    stopped_for_deadlock: bool,
}

/// What a watch saw of one step.
#[derive(Debug, Default)]
pub struct Seen {
    /// The pids it waited for.
    pub blockers: Vec<i32>,
    /// Whether the keeper stopped its statement, because a transaction holding a lock on a
    /// guarded table waited for it (the step would have deadlocked with it).
    pub stopped_for_deadlock: bool,
}

/// A table a step locks, as `regclass` text, with the `pg_locks` modes that conflict with the
/// lock the step takes on it: only a transaction that holds one of those can close a deadlock
/// with the step, or make the step's lock queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guarded {
    /// The table, as `regclass` text.
    pub relation: String,
    /// The conflicting `pg_locks.mode` names, comma-separated.
    pub conflicting: String,
}

/// `guard` as the two arrays ($1, $2) the queries below take.
pub(crate) fn guard_params(guard: &[Guarded]) -> (Vec<&str>, Vec<&str>) {
    guard
        .iter()
        .map(|g| (g.relation.as_str(), g.conflicting.as_str()))
        .unzip()
}

/// A transaction that holds a conflicting lock on one of the guarded tables ($1, $2: see
/// [`guard_params`]) and waits for this session: (pid, the table). Shared by a step's own check
/// ([`crate::db::retry`]) and, in the form below, the keeper's.
pub(crate) const WAITS_FOR: &str = "SELECT l.pid, l.relation::regclass::text FROM pg_locks l \
       JOIN unnest($1::text[], $2::text[]) AS g(rel, modes) \
         ON l.relation = g.rel::regclass AND l.mode = ANY (string_to_array(g.modes, ',')) \
     WHERE l.granted AND l.locktype = 'relation' \
       AND l.pid <> pg_backend_pid() AND pg_backend_pid() = ANY (pg_blocking_pids(l.pid)) LIMIT 1";

/// [`WAITS_FOR`] asked for session $3, whose statement is cancelled if so.
const STOP_BEFORE_DEADLOCK: &str = "SELECT pg_cancel_backend($3) FROM pg_locks l \
       JOIN unnest($1::text[], $2::text[]) AS g(rel, modes) \
         ON l.relation = g.rel::regclass AND l.mode = ANY (string_to_array(g.modes, ',')) \
     WHERE l.granted AND l.locktype = 'relation' \
       AND l.pid <> $3 AND $3 = ANY (pg_blocking_pids(l.pid)) LIMIT 1";

/// The transaction of another session that has held a conflicting lock on one of the guarded
/// tables ($1, $2) for more than $3 seconds: (pid, the table, seconds).
pub(crate) const LONG_HOLDER: &str = "SELECT a.pid, l.relation::regclass::text, \
       extract(epoch FROM now() - a.xact_start)::float8 FROM pg_locks l \
       JOIN unnest($1::text[], $2::text[]) AS g(rel, modes) \
         ON l.relation = g.rel::regclass AND l.mode = ANY (string_to_array(g.modes, ',')) \
       JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.granted AND l.locktype = 'relation' \
       AND l.pid <> pg_backend_pid() AND a.xact_start < now() - make_interval(secs => $3) \
     ORDER BY a.xact_start LIMIT 1";

/// Which of the run's connections wait for a lock, and for which pids: steps register here,
/// and the lock's keeper thread polls `pg_blocking_pids`, logs long waits, and remembers the
/// blockers for errors.
#[derive(Clone)]
pub struct BlockerWatch {
    watched: Arc<Mutex<HashMap<i32, Waiting>>>,
    /// How often a step that runs long logs its progress (`--progress-every`).
    progress_every: Duration,
}

impl Default for BlockerWatch {
    fn default() -> Self {
        BlockerWatch::new(crate::config::DEFAULT_PROGRESS_EVERY)
    }
}

const REPORT_AFTER: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl BlockerWatch {
    pub fn new(progress_every: Duration) -> BlockerWatch {
        BlockerWatch {
            watched: Arc::default(),
            progress_every,
        }
    }

    /// Starts watching `pid`, which is about to run `step`; `guard` names the tables on which a
    /// transaction waiting for it while holding a lock would deadlock with it (see [`Seen`]).
    pub fn watch(&self, pid: i32, step: &str, guard: &[Guarded]) {
        self.watched.lock().unwrap().insert(
            pid,
            Waiting {
                step: step.to_string(),
                started: Some(Instant::now()),
                guard: guard.to_vec(),
                ..Waiting::default()
            },
        );
    }

    /// Notes `blocker` as one of the sessions watched step `pid` gave way to (found by a check of
    /// the step's own rather than by the keeper).
    pub fn saw(&self, pid: i32, blocker: i32) {
        if let Some(w) = self.watched.lock().unwrap().get_mut(&pid) {
            if !w.blockers.contains(&blocker) {
                w.blockers.push(blocker);
            }
        }
    }

    /// Stops watching `pid` and returns what was seen while it was watched.
    pub fn take(&self, pid: i32) -> Seen {
        self.watched
            .lock()
            .unwrap()
            .remove(&pid)
            .map(|w| Seen {
                blockers: w.blockers,
                stopped_for_deadlock: w.stopped_for_deadlock,
            })
            .unwrap_or_default()
    }

    /// Stops each guarded step that a transaction holding a lock on a guarded table waits for.
    /// The map stays locked meanwhile, so that the step cannot finish and start another
    /// statement between the check and the cancel (a cancel that reaches an idle session is
    /// ignored by the server).
    fn poll_guards(&self, client: &mut Client) {
        let mut map = self.watched.lock().unwrap();
        for (pid, w) in map.iter_mut() {
            if w.guard.is_empty() || w.stopped_for_deadlock {
                continue;
            }
            // A failed check (a guarded table renamed meanwhile) stops nothing: the step's own
            // checks still hold. It is not the lock connection failing either.
            let (rels, modes) = guard_params(&w.guard);
            match client.query(STOP_BEFORE_DEADLOCK, &[&rels, &modes, pid]) {
                Ok(rows) if !rows.is_empty() => {
                    log::info!(
                        "{}: a transaction that holds a lock on a table it needs waits for it: stopping it before it deadlocks",
                        w.step
                    );
                    w.stopped_for_deadlock = true;
                }
                Ok(_) => {}
                Err(e) => log::debug!("{}: the deadlock guard's check failed: {e}", w.step),
            }
        }
    }

    /// One poll: which watched pids wait for a lock, and for whom; then the progress of the
    /// steps that run long.
    fn poll(&self, client: &mut Client) -> std::result::Result<(), postgres::Error> {
        let pids: Vec<i32> = self.watched.lock().unwrap().keys().copied().collect();
        if pids.is_empty() {
            return Ok(());
        }
        self.poll_waits(client, &pids)?;
        self.poll_guards(client);
        self.poll_progress(client)
    }

    /// Logs, every `progress_every`, what each step running that long is doing: for an index
    /// build its phase and blocks or tuples done (`pg_stat_progress_create_index`), otherwise
    /// that it is still running. A step waiting for a lock is logged by [`Self::poll_waits`].
    fn poll_progress(&self, client: &mut Client) -> std::result::Result<(), postgres::Error> {
        let every = self.progress_every;
        let due: Vec<i32> = self
            .watched
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, w)| {
                w.started.is_some_and(|t| t.elapsed() >= every)
                    && w.last_progress.is_none_or(|t| t.elapsed() >= every)
            })
            .map(|(pid, _)| *pid)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let rows = client.query(STEP_PROGRESS, &[&due])?;
        let mut map = self.watched.lock().unwrap();
        for row in rows {
            let Some(entry) = map.get_mut(&row.get::<_, i32>(0)) else {
                continue;
            };
            let running = entry.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            log::info!(
                "{}: running {running:.1}s; {}",
                entry.step,
                progress_text(&row)
            );
            entry.last_progress = Some(Instant::now());
        }
        Ok(())
    }

    fn poll_waits(
        &self,
        client: &mut Client,
        pids: &[i32],
    ) -> std::result::Result<(), postgres::Error> {
        let rows = client.query(WAITING_BACKENDS, &[&pids])?;
        let mut map = self.watched.lock().unwrap();
        for row in rows {
            let pid: i32 = row.get(0);
            let blockers: Vec<i32> = row.get(1);
            let event: Option<String> = row.get(2);
            let Some(entry) = map.get_mut(&pid) else {
                continue;
            };
            let since = *entry.since.get_or_insert_with(Instant::now);
            for b in &blockers {
                if !entry.blockers.contains(b) {
                    entry.blockers.push(*b);
                }
            }
            let due = entry
                .last_logged
                .is_none_or(|t| t.elapsed() >= REPORT_EVERY);
            if since.elapsed() >= REPORT_AFTER && due && !blockers.is_empty() {
                let what = match event.as_deref() {
                    Some("virtualxid") => "for older transactions to finish",
                    _ => "for a lock",
                };
                log::info!(
                    "{}: waiting {:.1}s {what}, held by pids {:?}",
                    entry.step,
                    since.elapsed().as_secs_f64(),
                    blockers
                );
                entry.last_logged = Some(Instant::now());
            }
        }
        Ok(())
    }
}

/// The held migration lock, with its keeper thread. Released by [`MigrationLock::release`] or
/// when dropped.
pub struct MigrationLock {
    watch: BlockerWatch,
    shared: Arc<(Mutex<KeeperState>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

/// What the run and the keeper tell each other.
#[derive(Default)]
struct KeeperState {
    stop: bool,
    /// Checks asked for by [`MigrationLock::lost`], and answered.
    asked: u64,
    answered: u64,
    lost: Option<String>,
}

const POLL: Duration = Duration::from_millis(200);

impl MigrationLock {
    /// Takes the migration lock on `conn` (waiting as the module docs say), ends what an earlier
    /// run left running, and starts the keeper.
    pub fn acquire(
        mut conn: Conn,
        settings: &Settings,
        on_wait: &mut dyn FnMut(),
    ) -> Result<MigrationLock> {
        wait_for_lock(&mut conn, settings, on_wait)?;
        end_leftovers(&mut conn, &settings.interrupt)?;
        let watch = BlockerWatch::new(settings.progress_every);
        let shared: Arc<(Mutex<KeeperState>, Condvar)> = Arc::default();
        let handle = {
            let (watch, shared, interrupt) =
                (watch.clone(), shared.clone(), settings.interrupt.clone());
            std::thread::spawn(move || keep(conn, &watch, &shared, &interrupt))
        };
        Ok(MigrationLock {
            watch,
            shared,
            handle: Some(handle),
        })
    }

    pub fn watch(&self) -> &BlockerWatch {
        &self.watch
    }

    /// Whether the lock was lost, checked on the server now (within a few seconds): a run that
    /// failed may have failed because another runner took the lock and cancelled its work.
    pub fn lost(&self) -> Option<String> {
        let (state, wake) = &*self.shared;
        let mut s = state.lock().unwrap();
        s.asked += 1;
        let asked = s.asked;
        wake.notify_all();
        let (s, _) = wake
            .wait_timeout_while(s, Duration::from_secs(5), |s| {
                s.answered < asked && s.lost.is_none()
            })
            .unwrap();
        s.lost.clone()
    }

    /// Turns the error a run failed with into "the lock was lost" when that is what happened.
    pub fn explain(&self, err: Error) -> Error {
        if matches!(err, Error::Interrupted { .. }) {
            return err;
        }
        match self.lost() {
            Some(why) => {
                log::warn!("the run failed after losing the migration lock: {err}");
                Error::interrupted(Reason::LockLost(why))
            }
            None => err,
        }
    }

    /// Unlocks and closes the lock connection.
    pub fn release(mut self) {
        self.stop_keeper();
    }

    fn stop_keeper(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap().stop = true;
        wake.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        self.stop_keeper();
    }
}

/// Whether this session still holds key 1, on the server.
fn still_held(conn: &mut Conn) -> std::result::Result<(), String> {
    let (k1, k2) = ADVISORY_LOCK_KEYS;
    match conn.query_one(HOLDS_LOCK, &[&k1, &k2]) {
        Ok(row) if row.get::<_, bool>(0) => Ok(()),
        Ok(_) => Err("the server no longer lists it as held by the runner's session".into()),
        Err(e) => Err(crate::error::describe_pg_error(&e)),
    }
}

/// The keeper: polls the blocker watch, checks the lock every [`KEEPALIVE_EVERY`] and when
/// asked, and on losing it triggers the interrupt. Unlocks when stopped.
fn keep(
    mut conn: Conn,
    watch: &BlockerWatch,
    shared: &(Mutex<KeeperState>, Condvar),
    interrupt: &Interrupt,
) {
    let (state, wake) = shared;
    let mut last_check = Instant::now();
    loop {
        let asked = {
            let s = state.lock().unwrap();
            let (s, _) = wake
                .wait_timeout_while(s, POLL, |s| !s.stop && s.asked == s.answered)
                .unwrap();
            if s.stop {
                break;
            }
            s.asked
        };
        let mut outcome = watch.poll(&mut conn).map_err(|e| e.to_string());
        let due = last_check.elapsed() >= KEEPALIVE_EVERY || asked > state.lock().unwrap().answered;
        if outcome.is_ok() && due {
            last_check = Instant::now();
            outcome = still_held(&mut conn);
        }
        let mut s = state.lock().unwrap();
        if due {
            s.answered = asked;
        }
        if let Err(why) = outcome {
            log::error!("lost the migration lock: {why}; stopping this run's statements");
            s.lost = Some(why.clone());
            wake.notify_all();
            drop(s);
            interrupt.trigger(Reason::LockLost(why));
            return;
        }
        wake.notify_all();
    }
    let (k1, k2) = ADVISORY_LOCK_KEYS;
    if let Err(e) = conn.query_one(UNLOCK, &[&k1, &k2]) {
        log::debug!("releasing the migration lock: {e} (the server releases it with the session)");
    }
}

/// Waits for key 1 as the module docs say.
/// Takes key 1, waiting for its holder as the module docs say; `on_wait` runs once, when it
/// first has to wait.
fn wait_for_lock(conn: &mut Conn, settings: &Settings, on_wait: &mut dyn FnMut()) -> Result<()> {
    let started = Instant::now();
    let mut delay = FIRST_DELAY;
    let mut last_logged: Option<Instant> = None;
    let mut not_a_runner_since: Option<Instant> = None;
    loop {
        settings.interrupt.check()?;
        if try_lock(conn, TRY_LOCK, ADVISORY_LOCK_KEYS)? {
            if last_logged.is_some() {
                log::info!(
                    "took the migration lock after waiting {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if let Some(holder) = holders(conn, ADVISORY_LOCK_KEYS)?.into_iter().next() {
            let live = holder.is_live_runner();
            let waited = started.elapsed();
            let give_up = match settings.lock_wait {
                Some(limit) => (waited >= limit).then(|| format!("--lock-wait {limit:?}")),
                None if live == Some(false) => {
                    let since = *not_a_runner_since.get_or_insert_with(Instant::now);
                    (since.elapsed() >= NOT_A_RUNNER_GRACE).then(|| not_a_runner(&holder))
                }
                None => {
                    not_a_runner_since = None;
                    None
                }
            };
            if let Some(why) = give_up {
                return Err(Error::LockWait {
                    holder: holder.to_string(),
                    waited,
                    why,
                });
            }
            if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                match live {
                    Some(true) => log::info!("another runner ({holder}) holds the migration lock on this database; waiting for it to finish"),
                    Some(false) => log::warn!("the migration lock on this database is held by {holder}, which is not a live meta-chat-migrate runner; waiting {}s at most", NOT_A_RUNNER_GRACE.as_secs()),
                    None => log::info!("the migration lock on this database is held by {holder}; waiting"),
                }
                last_logged = Some(Instant::now());
            }
        }
        if delay == FIRST_DELAY {
            on_wait();
        }
        settings.interrupt.sleep(super::pause::jitter(delay))?;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

const FIRST_DELAY: Duration = Duration::from_millis(50);

fn not_a_runner(holder: &Holder) -> String {
    let what = if holder.is_runner() == Some(true) {
        format!("it is a meta-chat-migrate session that has been idle for over {}s, so no live runner holds it: most likely a server connection of a transaction-mode pooler, left holding the lock", STALE_AFTER.as_secs())
    } else {
        "it is not a meta-chat-migrate runner".to_string()
    };
    format!(
        "{what}; if nothing should hold it, end that session with SELECT pg_terminate_backend({}), or pass --lock-wait to wait for it",
        holder.pid
    )
}

/// Ends what an earlier run left executing on the server (holders of key 2), before this run
/// changes anything.
fn end_leftovers(conn: &mut Conn, interrupt: &Interrupt) -> Result<()> {
    let started = Instant::now();
    let mut cancelled: Vec<i32> = Vec::new();
    loop {
        if try_lock(conn, TRY_LOCK, WORK_LOCK_KEYS)? {
            conn.query_one(UNLOCK, &[&WORK_LOCK_KEYS.0, &WORK_LOCK_KEYS.1])
                .map_err(|e| Error::db("probing the work lock", e))?;
            if !cancelled.is_empty() {
                log::info!(
                    "the earlier run's statements ended after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        let left = holders(conn, WORK_LOCK_KEYS)?;
        let fresh: Vec<&Holder> = left
            .iter()
            .filter(|h| !cancelled.contains(&h.pid))
            .collect();
        for h in fresh {
            log::warn!(
                "an earlier run's work is still executing on the server: {h}{}; cancelling it (this run redoes what it was doing)",
                h.query.as_deref().map(|q| format!(": {q}")).unwrap_or_default()
            );
            if let Err(e) = conn.query_one("SELECT pg_cancel_backend($1)", &[&h.pid]) {
                log::warn!(
                    "could not cancel pid {}: {}",
                    h.pid,
                    crate::error::describe_pg_error(&e)
                );
            }
            cancelled.push(h.pid);
        }
        if started.elapsed() >= LEFTOVER_WAIT {
            let pids: Vec<String> = left.iter().map(|h| h.pid.to_string()).collect();
            return Err(Error::LockWait {
                holder: format!("the earlier run's sessions {}", pids.join(", ")),
                waited: started.elapsed(),
                why: format!("their statements did not end after being cancelled; end them with SELECT pg_terminate_backend(pid) for pids {}", pids.join(", ")),
            });
        }
        interrupt.sleep(POLL)?;
    }
}
