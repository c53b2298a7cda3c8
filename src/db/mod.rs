//! The one place that owns connections and locking (after reshape's `db.rs`):
//!
//! - connecting, with a bounded wait and backoff, because as a compose init step the runner
//!   starts before PostgreSQL accepts connections ([`connect_with_wait`]);
//! - the session settings every runner connection gets, whatever the role or database sets
//!   ([`Conn::setup`]): `application_name`, `search_path` (the schema it migrates),
//!   `lock_timeout`, ISO `DateStyle` (so that what it reads back, partition bounds among it,
//!   parses back exactly), and no `statement_timeout`, `idle_in_transaction_session_timeout`,
//!   `idle_session_timeout` or `transaction_timeout` (a managed service's defaults would cancel a
//!   concurrent index build or close the connection holding the migration lock), plus
//!   `client_connection_check_interval` so that the server ends a dead runner's statements;
//! - every connection registered with the run's `Interrupt`, so that a signal cancels its
//!   statement on the server;
//! - the migration lock ([`lock`]): a session-level advisory lock, kept alive and watched;
//! - refusing a transaction-mode pooler before anything changes (`pooler`);
//! - retrying a step that hit `lock_timeout`, lost a deadlock or gave way before one
//!   ([`retry`]).

pub mod lock;
mod pause;
pub(crate) mod pooler;
pub mod retry;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use postgres::{Client, SimpleQueryMessage};

use crate::config::{DbTarget, Settings, MAX_SERVER_TIMEOUT};
use crate::error::{describe_pg_error, sqlstate, Error, Result};
use crate::interrupt::Registration;
use crate::tls;

pub use lock::{BlockerWatch, Guarded, MigrationLock};
pub use retry::LockPolicy;

/// Takes the migration lock on `first` (the run's first connection, or a new one), after ruling
/// out a transaction-mode pooler and a read-only database, then opens the connection the run
/// works on (ending what an earlier run left running). While it waits for another runner's lock
/// it holds that one connection: the pooler probe's second session is closed first. Changes
/// nothing.
pub(crate) fn lock_database(
    settings: &Settings,
    first: Option<Conn>,
) -> Result<(Conn, MigrationLock)> {
    let mut lock_conn = match first {
        Some(c) => c,
        None => connect_raw_with_wait(settings)?,
    };
    let target = lock_conn.target().clone();
    let mut probe = Some(connect_raw(settings)?);
    if let Some(p) = probe.as_mut() {
        pooler::ensure_own_sessions(&mut lock_conn, p, &target)?;
    }
    lock_conn.setup(settings, settings.lock_timeout)?;
    ensure_writable(&mut lock_conn, &target)?;
    // The probe's session becomes the one the run works on, unless the lock must be waited for:
    // then it is closed first, and the working connection opened once the lock is had.
    let lock = MigrationLock::acquire(lock_conn, settings, &mut || probe = None)?;
    let mut main = match probe {
        Some(p) => p,
        None => connect_after_wait(settings)?,
    };
    main.setup(settings, settings.lock_timeout)?;
    lock::join_work(&mut main)?;
    Ok((main, lock))
}

/// The working connection, opened once the lock is had: a connection limit that the probe's
/// session (just closed, its backend perhaps still exiting) counted against is waited out for a
/// moment; any other failure is final.
fn connect_after_wait(settings: &Settings) -> Result<Conn> {
    let started = Instant::now();
    loop {
        match connect_raw(settings) {
            Err(e)
                if e.sqlstate() == Some("53300") && started.elapsed() < Duration::from_secs(2) =>
            {
                settings.interrupt.sleep(Duration::from_millis(100))?;
            }
            other => return other,
        }
    }
}

pub const APPLICATION_NAME: &str = "meta-chat-migrate";

/// How often the server checks, during a statement, that the runner is still connected
/// (PostgreSQL 14+): a runner killed with SIGKILL leaves no statement running for longer.
pub const CLIENT_CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// SQLSTATEs after which waiting for the server makes no sense: bad credentials, no such
/// database, no such role, no permission, a start-up option (`options=`, `PGOPTIONS`) the server
/// rejects, and a connection limit reached (53300: the slots are the application's, and waiting
/// out a full server at boot only adds one more client to it; the error says what to change).
const PERMANENT_CONNECT_ERRORS: &[&str] = &[
    "28000", "28P01", "3D000", "42501", "42704", "22023", "53300",
];

/// One connection of a run: the driver's client, its backend pid and server version, and its
/// registration with the run's `Interrupt`. Derefs to the client.
pub struct Conn {
    client: Client,
    pid: i32,
    server_version: i32,
    /// The server it reached.
    target: DbTarget,
    _cancel: Registration,
}

impl Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Conn {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The server it reached (one host of a multi-host URL): what logs and reports name.
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The runner's session settings, overriding whatever the role or database sets (see the
    /// module docs). One round trip, in the simple protocol, which any pooler passes.
    pub fn setup(&mut self, settings: &Settings, lock_timeout: Duration) -> Result<()> {
        let v = self.server_version;
        // A list setting takes identifiers: a quoted literal would be one name, quotes and all.
        let mut sql = format!("SET search_path = {}", quote_ident(&settings.schema));
        let mut sets = vec![
            ("lock_timeout", format!("{}ms", lock_timeout.as_millis())),
            // What the runner reads back from the server (partition bounds printed by
            // `pg_get_expr`) must parse back exactly: ISO prints numeric offsets where other
            // styles print zone abbreviations, some of them ambiguous. The input order stays
            // PostgreSQL's default, and the time zone the session's, so that no migration's
            // literal changes meaning.
            ("DateStyle", "ISO, MDY".into()),
            ("statement_timeout", "0".into()),
            ("idle_in_transaction_session_timeout", "0".into()),
        ];
        if v >= 140000 {
            sets.push(("idle_session_timeout", "0".into()));
            sets.push((
                "client_connection_check_interval",
                format!("{}ms", CLIENT_CONNECTION_CHECK_INTERVAL.as_millis()),
            ));
        }
        if v >= 170000 {
            sets.push(("transaction_timeout", "0".into()));
        }
        for (k, v) in sets {
            sql.push_str(&format!("; SET {k} = {}", quote_literal(&v)));
        }
        self.client
            .batch_execute(&sql)
            .map_err(|e| Error::db("setting the runner's session settings", e))
    }

    /// `SET lock_timeout` for the session; `Duration::ZERO` means wait as long as needed.
    pub fn set_lock_timeout(&mut self, timeout: Duration) -> Result<()> {
        set_lock_timeout(&mut self.client, timeout)
    }
}

/// How often an idle connection of a run is used, so that proxies and load balancers that close
/// idle connections leave it alone (see also [`lock::KEEPALIVE_EVERY`]).
pub const KEEP_IN_USE_EVERY: Duration = Duration::from_secs(2);

/// Uses `conn` every [`KEEP_IN_USE_EVERY`] while `busy()` holds (other threads work meanwhile).
pub fn keep_alive_while(conn: &mut Conn, busy: impl Fn() -> bool) -> Result<()> {
    let mut last = Instant::now();
    while busy() {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= KEEP_IN_USE_EVERY {
            conn.simple_query("SELECT 1")
                .map_err(|e| Error::db("keeping the main connection in use", e))?;
            last = Instant::now();
        }
    }
    Ok(())
}

/// `SET lock_timeout` for the session; `Duration::ZERO` means wait as long as needed.
pub fn set_lock_timeout(client: &mut Client, timeout: Duration) -> Result<()> {
    client
        .batch_execute(&format!("SET lock_timeout = '{}ms'", timeout.as_millis()))
        .map_err(|e| Error::db("setting lock_timeout", e))
}

/// Opens one connection, registered with the run's interrupt, with no session settings yet (a
/// pooler must be ruled out before anything is set on a server connection it may share). It
/// goes to the server the run's first connection reached ([`crate::config::Pin`]).
pub fn connect_raw(settings: &Settings) -> Result<Conn> {
    open(settings, Duration::MAX).map_err(|(err, _)| err)
}

/// [`connect_raw`] within `bound` (and the URL's `connect_timeout`), and whether its failure is
/// one that waiting for the server may cure. The first connection of a run, when the URL lists
/// several hosts, tries them in order and pins the run to the first that takes it; an error then
/// pairs each host with its own cause.
fn open(settings: &Settings, bound: Duration) -> std::result::Result<Conn, (Error, Wait)> {
    let final_ = |e: Error| (e, Wait::GiveUp);
    settings.interrupt.check().map_err(|r| final_(r.into()))?;
    let all = settings.connection().map_err(final_)?;
    if let Some(i) = settings.pin.get() {
        return open_host(settings, Some(i), bound);
    }
    if all.hosts == 1 {
        let conn = open_host(settings, None, bound)?;
        settings.pin.set(Some(0));
        return Ok(conn);
    }
    let mut failures = Vec::new();
    for i in 0..all.hosts {
        match open_host(settings, Some(i), bound) {
            Ok(conn) => {
                settings.pin.set(Some(i));
                return Ok(conn);
            }
            Err((Error::Connect { target, cause, .. }, wait)) => {
                failures.push((target, cause, wait))
            }
            Err(other) => return Err(other),
        }
    }
    let wait = if failures.iter().any(|f| f.2 == Wait::Retry) {
        Wait::Retry
    } else {
        Wait::GiveUp
    };
    let cause = failures
        .iter()
        .map(|(t, c, _)| format!("{t}: {c}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err((
        Error::Connect {
            target: all.target.to_string(),
            waited: Duration::ZERO,
            sqlstate: None,
            cause: format!("no host took the connection ({cause})"),
        },
        wait,
    ))
}

/// One connection to host `i` of the URL (all of them when `None`).
fn open_host(
    settings: &Settings,
    i: Option<usize>,
    bound: Duration,
) -> std::result::Result<Conn, (Error, Wait)> {
    let final_ = |e: Error| (e, Wait::GiveUp);
    let conn = match i {
        Some(i) => settings.connection_to(i),
        None => settings.connection(),
    }
    .map_err(final_)?;
    let mut config = conn.config;
    config.application_name(APPLICATION_NAME);
    let connector = tls::connector(&conn.tls).map_err(final_)?;
    let target = conn.target;
    let fail = |e: postgres::Error| {
        let wait = classify(&e);
        let err = Error::Connect {
            target: target.to_string(),
            waited: Duration::ZERO,
            sqlstate: sqlstate(&e).map(str::to_owned),
            cause: describe_pg_error(&e),
        };
        (err, wait)
    };
    let limit = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::MAX)
        .min(bound);
    let mut client = connect_within(settings, &config, &connector, limit)
        .map_err(|e| match e {
            Bounded::Driver(e) => fail(e),
            Bounded::Silent(after) => (
                Error::Connect {
                    target: target.to_string(),
                    waited: Duration::ZERO,
                    sqlstate: None,
                    cause: format!("the server took the connection but did not complete its start-up within {after:?} (connect_timeout): is it PostgreSQL, and is it running?"),
                },
                Wait::Retry,
            ),
            Bounded::Interrupted(r) => final_(r.into()),
        })?;
    let registration = settings
        .interrupt
        .register(client.cancel_token(), connector);
    let (pid, server_version) = identify(&mut client, &target).map_err(|e| match e {
        Identified::Driver(e) => fail(e),
        Identified::Refused(e) => final_(e),
    })?;
    Ok(Conn {
        client,
        pid,
        server_version,
        target,
        _cancel: registration,
    })
}

/// Why [`identify`] refused a connection.
enum Identified {
    Driver(postgres::Error),
    Refused(Error),
}

/// The backend's pid and the server's version; refused when the server sent no row, or the
/// connection took one of the slots kept for superusers (a superuser run gives it back, and
/// fails at once as on any connection limit).
fn identify(client: &mut Client, target: &DbTarget) -> std::result::Result<(i32, i32), Identified> {
    let rows = client.simple_query(IDENTIFY).map_err(Identified::Driver)?;
    let row = first_row(&rows);
    let (pid, server_version) = row
        .and_then(|r| Some((r.get(0)?.parse().ok()?, r.get(1)?.parse().ok()?)))
        .ok_or_else(|| {
            Identified::Refused(Error::Database {
                context: "reading the backend pid".into(),
                sqlstate: None,
                cause: "the server sent no row".into(),
            })
        })?;
    if row.and_then(|r| r.get(2)) == Some("t") {
        return Err(Identified::Refused(Error::Connect {
            target: target.to_string(),
            waited: Duration::ZERO,
            sqlstate: Some("53300".into()),
            cause: "only the connection slots the server reserves for superusers are left (superuser_reserved_connections): the runner, a superuser, leaves them to the DBA".into(),
        }));
    }
    Ok((pid, server_version))
}

/// The backend's pid, the server's version, and whether this connection took one of the slots
/// kept for superusers (`superuser_reserved_connections`, and `reserved_connections` from 16):
/// a superuser run gives such a slot back.
/// Run before the session's settings are made, so a role's or database's short
/// `statement_timeout` or `transaction_timeout` (17+) is lifted for it first (`SET LOCAL`, in the
/// implicit transaction of the one simple query: nothing outlives it, also behind a pooler).
const IDENTIFY: &str = "SET LOCAL statement_timeout = 0; \
     DO $$ BEGIN IF current_setting('transaction_timeout', true) IS NOT NULL THEN \
       SET LOCAL transaction_timeout = 0; END IF; END $$; \
     SELECT pg_backend_pid(), current_setting('server_version_num'), \
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
       AND (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') \
           > current_setting('max_connections')::int \
             - current_setting('superuser_reserved_connections')::int \
             - coalesce(current_setting('reserved_connections', true)::int, 0)";

enum Bounded {
    Driver(postgres::Error),
    /// No answer within the bound.
    Silent(Duration),
    Interrupted(crate::interrupt::Reason),
}

/// The driver's connect (TCP, TLS, start-up, authentication), which bounds only the TCP part,
/// bounded as a whole by `limit`: it runs on a thread of its own, and a connection that has not
/// completed by then is given up (its thread ends when the server closes the connection: a
/// PostgreSQL server does so after `authentication_timeout`). An interrupt ends the wait too.
fn connect_within(
    settings: &Settings,
    config: &postgres::Config,
    connector: &tokio_postgres_rustls::MakeRustlsConnect,
    limit: Duration,
) -> std::result::Result<Client, Bounded> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (config, connector) = (config.clone(), connector.clone());
    std::thread::Builder::new()
        .name("mcm-connect".into())
        .spawn(move || {
            let _ = tx.send(config.connect(connector));
        })
        .map_err(|_| Bounded::Silent(Duration::ZERO))?;
    let started = Instant::now();
    loop {
        if let Some(r) = settings.interrupt.reason() {
            return Err(Bounded::Interrupted(r));
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Bounded::Silent(limit));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(r) => return r.map_err(Bounded::Driver),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Bounded::Silent(started.elapsed()))
            }
        }
    }
}

/// Whether a failed connection attempt is worth repeating within `--wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The server is not up yet (connection refused, a name not resolving yet, a timeout,
    /// 57P03 "the database system is starting up", too many connections for now, ...).
    Retry,
    /// Configuration: waiting would not fix it (see [`classify`]).
    GiveUp,
}

/// The explicit line between "not up yet" and "configured wrong". Given up at once: bad or
/// missing credentials, an unknown role or database, no permission (the SQLSTATEs of
/// [`PERMANENT_CONNECT_ERRORS`]); the driver's own configuration errors (no password to send);
/// TLS that cannot be had (the server does not offer it, a certificate that does not verify or
/// does not match the host, a client certificate refused). Everything else is waited for.
pub(crate) fn classify(err: &postgres::Error) -> Wait {
    if let Some(code) = sqlstate(err) {
        return if PERMANENT_CONNECT_ERRORS.contains(&code) {
            Wait::GiveUp
        } else {
            Wait::Retry
        };
    }
    let text = describe_pg_error(err);
    let tls_refused = text.starts_with("error performing TLS handshake")
        && !is_transient_io(std::error::Error::source(err));
    // target_session_attrs=read-write and a standby: the driver's own error, not the server's.
    let read_only = text.contains("database does not allow writes");
    if text.starts_with("invalid configuration")
        || text.starts_with("authentication error")
        || tls_refused
        || read_only
    {
        Wait::GiveUp
    } else {
        Wait::Retry
    }
}

/// A TLS failure that is the connection dropping (a server going down mid-handshake), not
/// TLS refusing.
fn is_transient_io(source: Option<&(dyn std::error::Error + 'static)>) -> bool {
    use std::io::ErrorKind::*;
    source
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe | TimedOut
            )
        })
}

/// The first data row of a simple-protocol result.
pub(crate) fn first_row(messages: &[SimpleQueryMessage]) -> Option<&postgres::SimpleQueryRow> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    })
}

/// One connection with the runner's session settings.
pub fn connect_once(settings: &Settings) -> Result<Conn> {
    let mut conn = connect_raw(settings)?;
    conn.setup(settings, settings.lock_timeout)?;
    Ok(conn)
}

/// Connects, retrying with backoff until `settings.connect_wait` has passed, and applies the
/// session settings. Configuration errors (`classify`: credentials, an unknown database or
/// role, TLS) fail at once: waiting would not fix them.
pub fn connect_with_wait(settings: &Settings) -> Result<Conn> {
    let mut conn = connect_raw_with_wait(settings)?;
    conn.setup(settings, settings.lock_timeout)?;
    Ok(conn)
}

/// [`connect_with_wait`] without the session settings. The first connection of a run: it
/// chooses the server every later connection of the run goes to. Each attempt is bounded by the
/// URL's `connect_timeout` and by what is left of `--wait`; attempts go on, with backoff, until
/// `--wait` has passed.
pub fn connect_raw_with_wait(settings: &Settings) -> Result<Conn> {
    validate(settings)?;
    let connection = settings.connection()?;
    if !connection.ignored.is_empty() {
        log::warn!(
            "ignoring {} in the URL: Prisma's settings for its own connection pool, not for a migration run",
            connection.ignored.join(", ")
        );
    }
    settings.pin.set(None);
    let target: DbTarget = connection.target;
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    let mut last_logged: Option<Instant> = None;
    loop {
        attempt += 1;
        // One attempt is bounded by connect_timeout; with --wait, also by what is left of it.
        let bound = match settings.connect_wait {
            w if w.is_zero() => Duration::MAX,
            w => w
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
        };
        match open(settings, bound) {
            Ok(conn) => {
                if attempt > 1 || connection.hosts > 1 {
                    log::info!(
                        "connected to {} after {:.1}s ({attempt} attempt(s))",
                        conn.target(),
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(conn);
            }
            Err((
                Error::Connect {
                    sqlstate, cause, ..
                },
                wait,
            )) => {
                let waited = started.elapsed();
                if wait == Wait::GiveUp || waited >= settings.connect_wait {
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
                let left = settings.connect_wait.saturating_sub(waited);
                settings.interrupt.sleep(pause::jitter(delay).min(left))?;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err((other, _)) => return Err(other),
        }
    }
}

/// Settings that would only fail later, on the server, fail here as usage errors.
fn validate(settings: &Settings) -> Result<()> {
    if settings.lock_timeout > MAX_SERVER_TIMEOUT {
        return Err(Error::Usage {
            what: "--lock-timeout",
            value: format!("{:?}", settings.lock_timeout),
            reason: format!("PostgreSQL takes at most {:?}", MAX_SERVER_TIMEOUT),
        });
    }
    if settings.schema.is_empty() || settings.schema.len() > 63 {
        return Err(Error::Usage {
            what: "--schema",
            value: settings.schema.chars().take(80).collect(),
            reason: "a schema name has 1 to 63 bytes".into(),
        });
    }
    Ok(())
}

const WRITABLE: &str = "SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only')";

/// Refuses a standby or a read-only session before anything else, saying which it is.
pub fn ensure_writable(conn: &mut Conn, target: &DbTarget) -> Result<()> {
    let rows = conn
        .simple_query(WRITABLE)
        .map_err(|e| Error::db("checking that the database is writable", e))?;
    let row = first_row(&rows);
    let in_recovery = row.and_then(|r| r.get(0)) == Some("true");
    let read_only = row.and_then(|r| r.get(1)) == Some("on");
    let why = if in_recovery {
        "the server is a standby in recovery (pg_is_in_recovery() is true): point the URL at the primary"
    } else if read_only {
        "its sessions start read-only (default_transaction_read_only is on for this role or database): use a role and database that may write, or clear that setting"
    } else {
        return Ok(());
    };
    Err(Error::ReadOnly {
        target: target.to_string(),
        why: why.into(),
    })
}

/// Quotes an identifier for SQL: `"name"`, with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL: `'text'` with inner quotes doubled, or `E'...'` with
/// backslashes doubled too when it holds one, so that it reads the same whatever
/// `standard_conforming_strings` is.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("tenantId"), "\"tenantId\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
    }
}
