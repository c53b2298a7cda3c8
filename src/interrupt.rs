//! Stopping a run, from outside (SIGTERM, SIGINT, or an application shutting down) or from
//! inside (the connection holding the migration lock was lost). Why it exists: a process that
//! dies leaves its statements running on the server (a concurrent index build, a validation
//! queued behind a lock), and a rerun then races them. So every connection of a run registers
//! its cancel token here, and [`Interrupt::trigger`] sends the server a cancel request for each
//! of them; every wait of the runner (backoff, lock polling, waiting for the server) sleeps
//! through `Interrupt::sleep`, which wakes at once.
//!
//! A cancel request that reaches a backend between two statements is ignored by the server, so
//! the cancels are sent again a few times over the first second, and no new statement starts once
//! the interrupt is triggered (every execution point checks `Interrupt::check`).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::CancelToken;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why a run was stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A signal; the number gives the process's exit code (128 + signal).
    Signal {
        /// The signal's name, e.g. `SIGTERM`.
        name: &'static str,
        /// The signal's number, e.g. 15 for SIGTERM.
        number: i32,
    },
    /// The connection that held the migration lock was lost: another runner may take it now.
    LockLost(String),
    /// [`Interrupt::trigger`] called by the embedding application.
    Requested,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Signal { name, .. } => write!(f, "{name}"),
            Reason::LockLost(why) => write!(f, "the migration lock was lost ({why})"),
            Reason::Requested => write!(f, "a request of the application"),
        }
    }
}

/// A handle that stops a run. Cheap to clone; clones share the state. [`crate::Settings`]
/// carries one, so an application can keep a clone and trigger it on shutdown.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<Inner>);

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    reason: Option<Reason>,
    next_id: u64,
    connections: HashMap<u64, (CancelToken, MakeRustlsConnect)>,
    /// Handles of single runs started from this one ([`Interrupt::child`]): a trigger here
    /// reaches them, theirs does not come back.
    children: Vec<std::sync::Weak<Inner>>,
}

/// When the cancels are sent after a trigger (the first at once).
const CANCEL_AGAIN_AFTER: [Duration; 3] = [
    Duration::from_millis(150),
    Duration::from_millis(400),
    Duration::from_millis(900),
];

impl Interrupt {
    /// A handle not triggered yet, with no connection registered.
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Stops the run: records `reason` (the first one wins), wakes every wait, and cancels the
    /// statement of every registered connection on the server.
    pub fn trigger(&self, reason: Reason) {
        let children: Vec<Interrupt> = {
            let mut state = self.0.state.lock().unwrap();
            if state.reason.is_some() {
                return;
            }
            state.reason = Some(reason.clone());
            state
                .children
                .drain(..)
                .filter_map(|w| w.upgrade().map(Interrupt))
                .collect()
        };
        for child in children {
            child.trigger(reason.clone());
        }
        self.0.wake.notify_all();
        let this = self.clone();
        std::thread::spawn(move || {
            this.cancel_all();
            for pause in CANCEL_AGAIN_AFTER {
                std::thread::sleep(pause);
                this.cancel_all();
            }
        });
    }

    fn cancel_all(&self) {
        let targets: Vec<(CancelToken, MakeRustlsConnect)> = self
            .0
            .state
            .lock()
            .unwrap()
            .connections
            .values()
            .cloned()
            .collect();
        let senders: Vec<_> = targets
            .into_iter()
            .map(|(token, tls)| std::thread::spawn(move || token.cancel_query(tls)))
            .collect();
        for s in senders {
            let _ = s.join();
        }
    }

    /// A handle for one run started from this one: triggering this one stops the run (at once if
    /// it is triggered already), while stopping the run (a dropped `migrate_async` future) leaves
    /// this one as it was, so that the application's next run can go.
    pub(crate) fn child(&self) -> Interrupt {
        let child = Interrupt::new();
        let reason = {
            let mut state = self.0.state.lock().unwrap();
            state.children.retain(|w| w.strong_count() > 0);
            state.children.push(Arc::downgrade(&child.0));
            state.reason.clone()
        };
        if let Some(r) = reason {
            child.trigger(r);
        }
        child
    }

    /// Why the run was stopped (the first trigger's reason); `None` while not triggered.
    pub fn reason(&self) -> Option<Reason> {
        self.0.state.lock().unwrap().reason.clone()
    }

    /// `Err(reason)` once triggered: called before every statement of a run (`?` turns it into
    /// `Error::Interrupted`).
    pub(crate) fn check(&self) -> Result<(), Reason> {
        match self.reason() {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }

    /// Sleeps for `d`, or less if the run is interrupted meanwhile (then `Err`).
    pub(crate) fn sleep(&self, d: Duration) -> Result<(), Reason> {
        let state = self.0.state.lock().unwrap();
        let (state, _) = self
            .0
            .wake
            .wait_timeout_while(state, d, |s| s.reason.is_none())
            .unwrap();
        match &state.reason {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Registers a connection, so that a trigger cancels its statement; unregistered when the
    /// returned value is dropped.
    pub(crate) fn register(&self, token: CancelToken, tls: MakeRustlsConnect) -> Registration {
        let mut state = self.0.state.lock().unwrap();
        let id = state.next_id;
        state.next_id += 1;
        state.connections.insert(id, (token, tls));
        Registration {
            interrupt: self.clone(),
            id,
        }
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interrupt({:?})", self.reason())
    }
}

pub(crate) struct Registration {
    interrupt: Interrupt,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut state) = self.interrupt.0.state.lock() {
            state.connections.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_trigger_wakes_a_sleep_at_once_and_the_first_reason_wins() {
        let i = Interrupt::new();
        let j = i.clone();
        let started = Instant::now();
        let sleeper = std::thread::spawn(move || j.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        i.trigger(Reason::Requested);
        i.trigger(Reason::LockLost("x".into()));
        assert_eq!(sleeper.join().unwrap(), Err(Reason::Requested));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(i.reason(), Some(Reason::Requested));
        assert!(i.check().is_err());
    }

    #[test]
    fn an_untriggered_sleep_sleeps() {
        let i = Interrupt::new();
        assert!(i.sleep(Duration::from_millis(10)).is_ok());
        assert!(i.check().is_ok());
    }
}
