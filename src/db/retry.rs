//! Retrying a step that hit `lock_timeout` (SQLSTATE 55P03), lost a deadlock (40P01), or gave way
//! before it would wait where it should not ([`WOULD_DEADLOCK`], [`STEPPED_ASIDE`],
//! [`LONG_HOLDER`]), with exponential backoff and jitter (each pause drawn from the upper half of
//! its backoff). Why: a DDL statement waiting in the lock queue blocks every later query on that
//! table, so it must give up quickly and try again later rather than wait; a deadlock aborts one
//! of its transactions, and when it is the runner's, doing the step again is all it takes;
//! jitter keeps several runners or workers from retrying in lockstep. Every pause wakes at once
//! when the run is interrupted. The checks a guarded step makes before it waits are here too
//! (`ensure_no_long_holder`, `ensure_none_waiting`).

use std::time::Duration;

use super::lock::{guard_params, BlockerWatch, Guarded};
use super::pause::{backoff, jitter};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::interrupt::Interrupt;

const LOCK_NOT_AVAILABLE: &str = "55P03";
const DEADLOCK_DETECTED: &str = "40P01";
const QUERY_CANCELED: &str = "57014";

/// A step stopped before taking a lock that would close a deadlock with an application
/// transaction waiting for it: retried like a deadlock (the next attempt takes its strongest
/// locks first).
pub const WOULD_DEADLOCK: &str = "MC001";

/// A lock taken while the step held others waited longer than
/// [`SHORT_WAIT`]: the step gave way (and is retried as it was).
pub const STEPPED_ASIDE: &str = "MC002";

/// A transaction has held a lock on a table the step guards for long: the step did not start
/// (its locks would queue behind that transaction and block everyone behind them), and is
/// retried after a pause.
pub const LONG_HOLDER: &str = "MC003";

/// How long a lock taken while a step holds others may wait (a step's statement marked
/// `short_wait`): well below PostgreSQL's `deadlock_timeout` (1 s by default), so that a
/// deadlock it would close is broken by the step giving up before any application transaction
/// detects it.
pub const SHORT_WAIT: Duration = Duration::from_millis(100);

/// How long a transaction may have held a lock on a guarded table before a guarded step waits,
/// unqueued, for it to end.
pub const LONG_HOLDER_AFTER: Duration = Duration::from_secs(1);

/// What an attempt knows of the ones before it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attempt {
    /// Whether an earlier attempt lost a deadlock or stopped before one.
    pub after_deadlock: bool,
}

/// How DDL steps wait for locks: each attempt waits at most `lock_timeout`, then backs off.
#[derive(Clone, Debug)]
pub struct LockPolicy {
    pub lock_timeout: Duration,
    pub retries: u32,
    pub interrupt: Interrupt,
}

impl LockPolicy {
    pub fn of(settings: &Settings) -> LockPolicy {
        LockPolicy {
            lock_timeout: settings.lock_timeout,
            retries: settings.lock_retries,
            interrupt: settings.interrupt.clone(),
        }
    }

    /// Runs `attempt` (which must do its own transaction, if any) and retries it while it fails
    /// with SQLSTATE 55P03 (`lock_timeout`), 40P01 (a deadlock it lost) or [`WOULD_DEADLOCK`].
    /// `pid` is the backend running it, for naming the blockers.
    pub fn run<T>(
        &self,
        step: &str,
        pid: i32,
        watch: &BlockerWatch,
        attempt: impl FnMut(Attempt) -> Result<T>,
    ) -> Result<T> {
        self.run_guarded(step, pid, watch, &[], attempt)
    }

    /// [`Self::run`], with the keeper stopping an attempt as soon as a transaction holding a
    /// lock on one of `guard` waits for it (it would deadlock with the step's lock upgrade):
    /// such an attempt counts as a deadlock.
    pub fn run_guarded<T>(
        &self,
        step: &str,
        pid: i32,
        watch: &BlockerWatch,
        guard: &[Guarded],
        mut attempt: impl FnMut(Attempt) -> Result<T>,
    ) -> Result<T> {
        let mut tally = Tally::default();
        let mut state = Attempt::default();
        for n in 0..=self.retries {
            self.interrupt.check()?;
            // After a deadlock the step takes its strongest locks first: nothing to guard.
            watch.watch(pid, step, if state.after_deadlock { &[] } else { guard });
            let outcome = attempt(state);
            let seen = watch.take(pid);
            let err = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => as_stopped(e, step, seen.stopped_for_deadlock),
            };
            let deadlock = matches!(err.sqlstate(), Some(DEADLOCK_DETECTED | WOULD_DEADLOCK));
            let waited = matches!(
                err.sqlstate(),
                Some(LOCK_NOT_AVAILABLE | STEPPED_ASIDE | LONG_HOLDER)
            );
            if !deadlock && !waited {
                return Err(err);
            }
            state.after_deadlock |= deadlock;
            let why = tally.record(&err, seen.blockers, deadlock, self.lock_timeout);
            if n == self.retries {
                break;
            }
            let pause = jitter(backoff(n));
            log::warn!(
                "{step}: {why}{}; retry {} of {} in {:.2}s",
                tally.by(),
                n + 1,
                self.retries,
                pause.as_secs_f64()
            );
            self.interrupt.sleep(pause)?;
        }
        Err(tally.gave_up(step, self.retries + 1))
    }
}

/// An attempt the blocker watch stopped before a deadlock (its statement cancelled) is that,
/// not a cancel.
fn as_stopped(err: Error, step: &str, stopped_for_deadlock: bool) -> Error {
    if !(stopped_for_deadlock && err.sqlstate() == Some(QUERY_CANCELED)) {
        return err;
    }
    Error::Database {
        context: step.to_string(),
        sqlstate: Some(WOULD_DEADLOCK.into()),
        cause: "a transaction that holds a lock it needs waited for it: stopped before the deadlock; it starts over with its locks taken first".into(),
    }
}

/// What the attempts of one step met: who blocked them, how many deadlocks, the last reason.
#[derive(Default)]
struct Tally {
    blockers: Vec<i32>,
    deadlocks: u32,
    last: String,
    last_sqlstate: Option<String>,
}

impl Tally {
    /// Records an attempt that gave way; its reason.
    fn record(
        &mut self,
        err: &Error,
        seen: Vec<i32>,
        deadlock: bool,
        lock_timeout: Duration,
    ) -> String {
        for pid in seen {
            if !self.blockers.contains(&pid) {
                self.blockers.push(pid);
            }
        }
        self.deadlocks += u32::from(deadlock);
        self.last = reason(err, lock_timeout);
        self.last_sqlstate = err.sqlstate().map(str::to_owned);
        self.last.clone()
    }

    /// ` (blocked by pids [..])`, or nothing.
    fn by(&self) -> String {
        match self.blockers.is_empty() {
            true => String::new(),
            false => format!(" (blocked by pids {:?})", self.blockers),
        }
    }

    fn gave_up(self, step: &str, attempts: u32) -> Error {
        Error::LockTimeout {
            step: step.to_string(),
            attempts,
            last: self.last,
            sqlstate: self.last_sqlstate,
            deadlocks: self.deadlocks,
            blockers: self.blockers,
        }
    }
}

/// Why an attempt gave way, for the log and the final error.
fn reason(err: &Error, lock_timeout: Duration) -> String {
    match (err.sqlstate(), err) {
        (Some(LOCK_NOT_AVAILABLE), _) => format!("no lock within {lock_timeout:?}"),
        (_, Error::Database { cause, .. }) => cause
            .split_once(": ")
            .filter(|(code, _)| code.starts_with("SQLSTATE"))
            .map_or(cause.clone(), |(_, rest)| rest.to_string()),
        (_, other) => other.to_string(),
    }
}

fn gave_way(step: &str, code: &str, cause: String) -> Error {
    Error::Database {
        context: step.to_string(),
        sqlstate: Some(code.to_string()),
        cause,
    }
}

/// [`LONG_HOLDER`] when a transaction other than this session's has held a lock on one of
/// `guard` (`regclass` texts) for longer than [`LONG_HOLDER_AFTER`]. Takes no lock.
/// The holder is noted in `watch` as a blocker of step session `me`.
pub(crate) fn ensure_no_long_holder(
    client: &mut postgres::Client,
    (watch, me): (&BlockerWatch, i32),
    step: &str,
    guard: &[Guarded],
) -> Result<()> {
    let secs = LONG_HOLDER_AFTER.as_secs_f64();
    let (rels, modes) = guard_params(guard);
    let row = client
        .query_opt(super::lock::LONG_HOLDER, &[&rels, &modes, &secs])
        .map_err(|e| Error::db(step, e))?;
    match row {
        None => Ok(()),
        Some(r) => Err({
            watch.saw(me, r.get(0));
            gave_way(
            step,
            LONG_HOLDER,
            format!(
                "pid {} has held a lock on {} for {:.0}s: waiting, without queueing, for its transaction to end (the step's locks would queue behind it and stop everyone behind them)",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, f64>(2)
            ),
        )
        }),
    }
}

/// [`WOULD_DEADLOCK`] when a transaction holding a lock on one of `guard` waits for this one:
/// taking another lock now could close a deadlock whose victim would be that transaction.
pub(crate) fn ensure_none_waiting(
    tx: &mut postgres::Transaction<'_>,
    step: &str,
    guard: &[Guarded],
) -> Result<()> {
    if guard.is_empty() {
        return Ok(());
    }
    let (rels, modes) = guard_params(guard);
    let row = tx
        .query_opt(super::lock::WAITS_FOR, &[&rels, &modes])
        .map_err(|e| Error::db(step, e))?;
    match row {
        None => Ok(()),
        Some(r) => Err(gave_way(
            step,
            WOULD_DEADLOCK,
            format!(
                "pid {}, which holds a lock on {}, waits for this step: taking another lock now could deadlock with it, so the step starts over with its locks taken first",
                r.get::<_, i32>(0),
                r.get::<_, String>(1)
            ),
        )),
    }
}

/// A lock that waited past its short wait (55P03) as [`STEPPED_ASIDE`].
pub(crate) fn stepped_aside(err: Error, step: &str) -> Error {
    if err.sqlstate() != Some(LOCK_NOT_AVAILABLE) {
        return err;
    }
    gave_way(
        step,
        STEPPED_ASIDE,
        format!(
            "a lock taken while holding others waited over {}ms: gave way rather than make others wait behind it",
            SHORT_WAIT.as_millis()
        ),
    )
}
