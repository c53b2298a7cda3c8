//! Retrying a step that hit `lock_timeout` (SQLSTATE 55P03) or lost a deadlock (40P01, or
//! [`WOULD_DEADLOCK`]: a step that stopped itself before it would close one) with exponential
//! backoff and jitter (each pause drawn from the upper half of its backoff). Why: a DDL statement
//! waiting in the lock queue blocks every later query on that table, so it must give up quickly
//! and try again later rather than wait; a deadlock aborts one of its transactions, and when it
//! is the runner's, doing the step again is all it takes; jitter keeps several runners or workers
//! from retrying in lockstep. Every pause wakes at once when the run is interrupted.

use std::time::Duration;

use super::lock::BlockerWatch;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::interrupt::Interrupt;

const LOCK_NOT_AVAILABLE: &str = "55P03";
const DEADLOCK_DETECTED: &str = "40P01";
const QUERY_CANCELED: &str = "57014";

/// The SQLSTATE a step raises (in a `DO` block) to stop before taking a lock that would close a
/// deadlock with an application transaction waiting for it: retried like a deadlock.
pub const WOULD_DEADLOCK: &str = "MC001";

/// What an attempt knows of the ones before it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attempt {
    /// 0 for the first.
    pub number: u32,
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
        guard: &[String],
        mut attempt: impl FnMut(Attempt) -> Result<T>,
    ) -> Result<T> {
        let mut blockers: Vec<i32> = Vec::new();
        let mut state = Attempt::default();
        let mut deadlocks = 0;
        for n in 0..=self.retries {
            self.interrupt.check()?;
            // After a deadlock the step takes its strongest locks first: nothing to guard.
            watch.watch(pid, step, if state.after_deadlock { &[] } else { guard });
            state.number = n;
            let outcome = attempt(state);
            let seen = watch.take(pid);
            let err = match outcome {
                Ok(v) => return Ok(v),
                Err(e) if seen.stopped_for_deadlock && e.sqlstate() == Some(QUERY_CANCELED) => {
                    Error::Database {
                        context: step.to_string(),
                        sqlstate: Some(WOULD_DEADLOCK.into()),
                        cause: "a transaction that holds a lock it needs waited for it: stopped before the deadlock; it starts over with its locks taken first".into(),
                    }
                }
                Err(e) => e,
            };
            let deadlock = matches!(err.sqlstate(), Some(DEADLOCK_DETECTED | WOULD_DEADLOCK));
            if !deadlock && err.sqlstate() != Some(LOCK_NOT_AVAILABLE) {
                return Err(err);
            }
            for pid in seen.blockers {
                if !blockers.contains(&pid) {
                    blockers.push(pid);
                }
            }
            deadlocks += u32::from(deadlock);
            state.after_deadlock |= deadlock;
            if n == self.retries {
                break;
            }
            let pause = jitter(backoff(n));
            let why = match &err {
                Error::Database { cause, .. } if deadlock => cause.clone(),
                _ => format!("no lock within {:?}", self.lock_timeout),
            };
            let by = if blockers.is_empty() {
                String::new()
            } else {
                format!(" (blocked by pids {blockers:?})")
            };
            log::warn!(
                "{step}: {why}{by}; retry {} of {} in {:.2}s",
                n + 1,
                self.retries,
                pause.as_secs_f64()
            );
            self.interrupt.sleep(pause)?;
        }
        Err(Error::LockTimeout {
            step: step.to_string(),
            attempts: self.retries + 1,
            lock_timeout: self.lock_timeout,
            deadlocks,
            blockers,
        })
    }
}

/// 250ms, 500ms, 1s, ... capped at 15s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(15))
}

/// A random duration in [d/2, d]: spreads retries of concurrent runners apart.
pub(crate) fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * fastrand::f64())
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
}
