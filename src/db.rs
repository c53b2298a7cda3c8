//! The one place that owns connections and locking (after reshape's `db.rs`):
//!
//! - connecting, with a bounded wait and backoff, because as a compose init step the runner
//!   starts before PostgreSQL accepts connections;
//! - the session settings every runner connection gets (`application_name`, `lock_timeout`);
//! - the session-level advisory lock that serialises runners (app replicas booting at once, the
//!   init container), taken on a connection with no open transaction so that it outlives each
//!   migration's transaction and is released by PostgreSQL if the process dies;
//! - retrying a step that hit `lock_timeout` (SQLSTATE 55P03) with exponential backoff and
//!   jitter (each pause drawn from the upper half of its backoff). Why: a DDL statement waiting in the lock queue blocks every later query on that
//!   table, so it must give up quickly and try again later rather than wait, and jitter keeps
//!   several runners or workers from retrying in lockstep;
//! - [`BlockerWatch`], a side connection that names the pids a runner connection is waiting for,
//!   so that waits are explained while they happen and in the final error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::config::{DbTarget, Settings};
use crate::error::{describe_pg_error, sqlstate, Error, Result};
use crate::tls;

pub const APPLICATION_NAME: &str = "meta-chat-migrate";

/// The advisory lock key pair (`pg_advisory_lock(int4, int4)`), scoped by PostgreSQL to the
/// current database: runners of different databases never wait for each other.
pub const ADVISORY_LOCK_KEYS: (i32, i32) = (0x6d63_6d67, 1);

const TRY_ADVISORY_LOCK: &str = "SELECT pg_try_advisory_lock($1, $2)";
const ADVISORY_UNLOCK: &str = "SELECT pg_advisory_unlock($1, $2)";
const ADVISORY_LOCK_HOLDER: &str = "SELECT pid FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2";
const WAITING_BACKENDS: &str = "SELECT pid, pg_blocking_pids(pid), wait_event \
     FROM pg_stat_activity WHERE pid = ANY($1) AND wait_event_type = 'Lock'";

/// SQLSTATEs after which waiting for the server makes no sense: bad credentials, no such
/// database, no such role.
const PERMANENT_CONNECT_ERRORS: &[&str] = &["28000", "28P01", "3D000", "42501"];
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Opens one connection with the runner's session settings.
pub fn connect_once(settings: &Settings) -> Result<Client> {
    let (mut config, tls) = settings.connection()?;
    let target = DbTarget::of(&config);
    config.application_name(APPLICATION_NAME);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    let mut client = config
        .connect(tls::connector(&tls)?)
        .map_err(|e| Error::Connect {
            target: target.to_string(),
            waited: Duration::ZERO,
            sqlstate: sqlstate(&e).map(str::to_owned),
            cause: describe_pg_error(&e),
        })?;
    set_lock_timeout(&mut client, settings.lock_timeout)?;
    Ok(client)
}

/// `SET lock_timeout` for the session; `Duration::ZERO` means wait as long as needed.
pub fn set_lock_timeout(client: &mut Client, timeout: Duration) -> Result<()> {
    client
        .batch_execute(&format!("SET lock_timeout = '{}ms'", timeout.as_millis()))
        .map_err(|e| Error::db("setting lock_timeout", e))
}

/// Connects, retrying with backoff until `settings.connect_wait` has passed. Bad credentials
/// and a missing database fail at once: waiting would not fix them.
pub fn connect_with_wait(settings: &Settings) -> Result<Client> {
    let target: DbTarget = settings.target()?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    let mut last_logged: Option<Instant> = None;
    loop {
        attempt += 1;
        match connect_once(settings) {
            Ok(client) => {
                if attempt > 1 {
                    log::info!(
                        "connected to {target} after {:.1}s ({attempt} attempts)",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(client);
            }
            Err(Error::Connect {
                sqlstate, cause, ..
            }) => {
                let permanent = sqlstate
                    .as_deref()
                    .is_some_and(|code| PERMANENT_CONNECT_ERRORS.contains(&code));
                let waited = started.elapsed();
                if permanent || waited + delay > settings.connect_wait {
                    return Err(Error::Connect {
                        target: target.to_string(),
                        waited,
                        sqlstate,
                        cause,
                    });
                }
                if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    log::info!(
                        "waiting for {target} to accept connections ({:.1}s so far, up to {:?}): {cause}",
                        waited.as_secs_f64(),
                        settings.connect_wait
                    );
                    last_logged = Some(Instant::now());
                }
                std::thread::sleep(jitter(delay));
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(other) => return Err(other),
        }
    }
}

/// The backend pid of a connection.
pub fn backend_pid(client: &mut Client) -> Result<i32> {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .map(|r| r.get(0))
        .map_err(|e| Error::db("reading backend pid", e))
}

/// Takes the runners' session-level advisory lock, waiting (and saying who holds it) while
/// another runner has it. Must be called outside any transaction.
pub fn acquire_advisory_lock(client: &mut Client) -> Result<()> {
    let (k1, k2) = ADVISORY_LOCK_KEYS;
    let started = Instant::now();
    let mut last_logged: Option<Instant> = None;
    let mut delay = Duration::from_millis(50);
    loop {
        let got: bool = client
            .query_one(TRY_ADVISORY_LOCK, &[&k1, &k2])
            .map_err(|e| Error::db("taking the migration advisory lock", e))?
            .get(0);
        if got {
            if last_logged.is_some() {
                log::info!(
                    "took the migration lock after waiting {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            let holder: Option<i32> = client
                .query_opt(ADVISORY_LOCK_HOLDER, &[&k1, &k2])
                .map_err(|e| Error::db("looking up the migration lock holder", e))?
                .map(|r| r.get(0));
            match holder {
                Some(pid) => log::info!(
                    "another runner (pid {pid}) holds the migration lock on this database; waiting for it to finish"
                ),
                None => log::info!("the migration lock is taken; waiting"),
            }
            last_logged = Some(Instant::now());
        }
        std::thread::sleep(jitter(delay));
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

pub fn release_advisory_lock(client: &mut Client) -> Result<()> {
    let (k1, k2) = ADVISORY_LOCK_KEYS;
    client
        .query_one(ADVISORY_UNLOCK, &[&k1, &k2])
        .map(|_| ())
        .map_err(|e| Error::db("releasing the migration advisory lock", e))
}

/// How DDL steps wait for locks: each attempt waits at most `lock_timeout`, then backs off.
#[derive(Clone, Copy, Debug)]
pub struct LockPolicy {
    pub lock_timeout: Duration,
    pub retries: u32,
}

impl LockPolicy {
    pub fn of(settings: &Settings) -> LockPolicy {
        LockPolicy {
            lock_timeout: settings.lock_timeout,
            retries: settings.lock_retries,
        }
    }

    /// Runs `attempt` (which must do its own transaction, if any) and retries it while it fails
    /// with SQLSTATE 55P03 (`lock_timeout`). `pid` is the backend running it, for naming the blockers.
    pub fn run<T>(
        &self,
        step: &str,
        pid: i32,
        watch: &BlockerWatch,
        mut attempt: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let mut blockers: Vec<i32> = Vec::new();
        for n in 0..=self.retries {
            watch.watch(pid, step);
            let outcome = attempt();
            let seen = watch.take(pid);
            match outcome {
                Ok(v) => return Ok(v),
                Err(e) if e.sqlstate() == Some(LOCK_NOT_AVAILABLE) => {
                    for pid in seen {
                        if !blockers.contains(&pid) {
                            blockers.push(pid);
                        }
                    }
                    if n == self.retries {
                        break;
                    }
                    let pause = jitter(backoff(n));
                    log::warn!(
                        "{step}: no lock within {:?} (blocked by pids {:?}); retry {} of {} in {:.2}s",
                        self.lock_timeout,
                        blockers,
                        n + 1,
                        self.retries,
                        pause.as_secs_f64()
                    );
                    std::thread::sleep(pause);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::LockTimeout {
            step: step.to_string(),
            attempts: self.retries + 1,
            lock_timeout: self.lock_timeout,
            blockers,
        })
    }
}

/// 250ms, 500ms, 1s, ... capped at 15s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(15))
}

/// A random duration in [d/2, d]: spreads retries of concurrent runners apart.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * fastrand::f64())
}

#[derive(Default)]
struct Waiting {
    step: String,
    since: Option<Instant>,
    last_logged: Option<Instant>,
    blockers: Vec<i32>,
}

/// A background connection that polls which runner connections wait for a lock and which pids
/// they wait for (`pg_blocking_pids`), logs long waits, and remembers the blockers for errors.
pub struct BlockerWatch {
    watched: Arc<Mutex<HashMap<i32, Waiting>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(200);
const REPORT_AFTER: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl BlockerWatch {
    pub fn start(settings: &Settings) -> Result<BlockerWatch> {
        let mut client = connect_once(settings)?;
        let watched: Arc<Mutex<HashMap<i32, Waiting>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (watched.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                let pids: Vec<i32> = w.lock().unwrap().keys().copied().collect();
                if pids.is_empty() {
                    continue;
                }
                let Ok(rows) = client.query(WAITING_BACKENDS, &[&pids]) else {
                    continue;
                };
                let mut map = w.lock().unwrap();
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
            }
        });
        Ok(BlockerWatch {
            watched,
            stop,
            handle: Some(handle),
        })
    }

    /// Starts watching `pid`, which is about to run `step`.
    pub fn watch(&self, pid: i32, step: &str) {
        self.watched.lock().unwrap().insert(
            pid,
            Waiting {
                step: step.to_string(),
                ..Waiting::default()
            },
        );
    }

    /// Stops watching `pid` and returns the blockers seen while it was watched.
    pub fn take(&self, pid: i32) -> Vec<i32> {
        self.watched
            .lock()
            .unwrap()
            .remove(&pid)
            .map(|w| w.blockers)
            .unwrap_or_default()
    }
}

impl Drop for BlockerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Quotes an identifier for SQL: `"name"`, with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(1000));
        assert_eq!(backoff(30), Duration::from_secs(15));
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("tenantId"), "\"tenantId\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
