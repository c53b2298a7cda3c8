//! The crate's one error type. Each variant carries what the operator needs to act (versions,
//! tables, pids) and its message says how to fix it. `exit_code` maps it to the documented exit
//! codes of `meta-chat-migrate`. No variant ever holds the database password.

use std::time::Duration;

use crate::findings::{Conflict, Findings, NotCreated};
use crate::interrupt::Reason;

/// Exit codes of `meta-chat-migrate` (also in `--help` and the README).
pub mod exit {
    /// Success; for `check`, nothing to report.
    pub const SUCCESS: i32 = 0;
    /// Any error without a code of its own (connection, database, lock, conflict...).
    pub const FAILURE: i32 = 1;
    /// Invalid arguments: a flag, the URL or its source, or a version this build does not know.
    pub const USAGE: i32 = 2;
    /// Rows that a foreign key about to go on would refuse (`--orphans refuse`, `check`).
    pub const ORPHANS: i32 = 3;
    /// `verify`: an assertion failed or could not run.
    pub const VERIFY_FAILED: i32 = 4;
    /// Stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM), as shells do.
    pub const SIGNAL_BASE: i32 = 128;
    /// `check`: a partition window reaches less than `--premake` months ahead, or a DEFAULT
    /// partition holds rows.
    pub const WINDOW: i32 = 5;
    /// `check`: a declared object of an applied version is missing, invalid or of another
    /// shape (`migrate` restores the first two online).
    pub const DRIFT: i32 = 6;
    /// `status --exit-code`: a version is pending, divergent or unknown.
    pub const NOT_CURRENT: i32 = 7;
    /// Stopped by SIGINT (128 + 2).
    pub const SIGINT: i32 = 130;
    /// Stopped by SIGTERM (128 + 15).
    pub const SIGTERM: i32 = 143;
}

/// Everything that can stop a command: each message says what happened and how to go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL cannot be parsed, or one of its parameters is unknown or invalid.
    #[error("invalid database URL: {reason}; expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=...]")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },

    /// Where the database comes from is ambiguous or unreadable (two sources of one level, a
    /// `*_FILE` that cannot be read). Names flags, variables and paths, never their content.
    #[error("{reason}")]
    Source {
        /// What is ambiguous or unreadable, naming the sources.
        reason: String,
    },

    /// A flag or setting has a value this runner cannot take.
    #[error("invalid value {value:?} for {what}: {reason}")]
    Usage {
        /// The flag, e.g. `--jobs`.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// No connection within `--wait` (`Settings::connect_wait`), or a failure that waiting
    /// cannot cure (bad password, no such database).
    #[error("could not connect to {target}{}: {cause}; {}", after_waiting(*.waited), connect_advice(.sqlstate.as_deref(), .cause))]
    Connect {
        /// Where it tried to connect (host, port and database; never user or password).
        target: String,
        /// How long it kept trying.
        waited: Duration,
        /// The server's SQLSTATE, when it answered with one (bad password, no such database).
        sqlstate: Option<String>,
        /// The last failure, on one line.
        cause: String,
    },

    /// A statement or query failed.
    #[error("{context}: {cause}{}", db_advice(.sqlstate.as_deref()))]
    Database {
        /// What the runner was doing, e.g. `reading the migration history`.
        context: String,
        /// The server's SQLSTATE, when the server sent one.
        sqlstate: Option<String>,
        /// The server's or driver's message on one line, with SQLSTATE, detail and hint.
        cause: String,
    },

    /// A step did not get its locks in any of its attempts (lock timeouts, deadlocks, or giving
    /// way to the application's transactions).
    #[error("{step}: gave up after {attempts} attempts ({last}){}; blocking pids: {}; end those sessions or retry when they finish (raise --lock-timeout or --lock-retries to wait longer)", fmt_deadlocks(*.deadlocks), fmt_pids(.blockers))]
    LockTimeout {
        /// The step: its id (`operation:schema.table:action`) or `migration V (name)`.
        step: String,
        /// Attempts made: `--lock-retries` + 1.
        attempts: u32,
        /// Why the last attempt gave way.
        last: String,
        /// The SQLSTATE of the last attempt (55P03 for `lock_timeout`, 40P01 for a deadlock).
        sqlstate: Option<String>,
        /// Attempts that ended in a deadlock, lost or avoided.
        deadlocks: u32,
        /// Pids of the sessions seen blocking it; empty if none was seen.
        blockers: Vec<i32>,
    },

    /// Rows that would violate a foreign key about to go on (`--orphans refuse`).
    #[error("{0}")]
    Orphans(Findings),

    /// The history holds a version that this build does not embed.
    #[error("the database has applied migration {version} ({name}) that this build of meta-chat-migrations does not know; run a newer meta-chat-migrate (or the one that applied it)")]
    UnknownVersion {
        /// The unknown version.
        version: i64,
        /// Its name, as the history records it.
        name: String,
    },

    /// An applied migration differs (checksum or name) from the one this build embeds.
    #[error("applied migration {version} ({name}) differs from the embedded one (checksum {applied_checksum} in the database, {embedded_checksum} embedded); applied migrations are history and must not be edited: restore the original file and fix forward with a new version")]
    Divergent {
        /// The applied version.
        version: i64,
        /// Its name, as the history records it.
        name: String,
        /// The checksum recorded in the history.
        applied_checksum: String,
        /// The checksum of the embedded migration.
        embedded_checksum: u64,
    },

    /// `--target` or `--baseline` names a version this build does not embed.
    #[error("{flag} {version} is not a migration of this build; known versions: {known}")]
    UnknownVersionArg {
        /// `--target` or `--baseline`.
        flag: &'static str,
        /// The version given.
        version: i64,
        /// The versions this build embeds, comma-separated.
        known: String,
    },

    /// The database has the platform's tables but no migration history, and no
    /// `--baseline` was given.
    #[error(
        "this database has the platform's schema but no migration history ({found}); {advice}"
    )]
    NeedsBaseline {
        /// What the database holds: the platform's tables, their keys, Prisma's history.
        found: String,
        /// The `--baseline` that matches it, or what to do when none does.
        advice: String,
    },

    /// The database does not match the version given to `--baseline`.
    #[error("--baseline {version} does not match this database: {reason} (found {found}); nothing was changed")]
    BaselineMismatch {
        /// The version given to `--baseline`.
        version: i64,
        /// What differs from that version.
        reason: String,
        /// What the database holds: the platform's tables, their keys, Prisma's history.
        found: String,
    },

    /// `--baseline` on a database that already has a history, or has none of the
    /// platform's tables.
    #[error("--baseline {version}: {detail}")]
    BaselineNotApplicable {
        /// The version given to `--baseline`.
        version: i64,
        /// Why it does not apply.
        detail: String,
    },

    /// A version is pending while a later one is applied.
    #[error("the migration history is not in the state the runner expects: version {version} ({name}) is not applied but the later version {later} is; restore the history table or apply it by hand")]
    HistoryGap {
        /// The version not applied.
        version: i64,
        /// Its name.
        name: String,
        /// The current version, later than it.
        later: i64,
    },

    /// A table is not in the state the runner expects (not partitioned, partitions that
    /// are not whole months, ...).
    #[error("table {table} is not in the state the runner expects: {detail}; nothing was changed")]
    Layout {
        /// The table concerned.
        table: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A table that a command or an operation needs does not exist.
    #[error("table {table} does not exist, but {needed_by} needs it: run `meta-chat-migrate migrate` (or check --schema)")]
    MissingTable {
        /// The table, as `schema.name`.
        table: String,
        /// What needs it: an operation's id, `check` or the partition window.
        needed_by: String,
    },

    /// Objects of a declared name that are not what is declared; refused before any change.
    #[error("{}; drop or rename what is in the way, then run migrate again; nothing was changed", fmt_conflicts(.conflicts))]
    Conflict {
        /// Every object in the way.
        conflicts: Vec<Conflict>,
    },

    /// A validation met violating rows that appeared after the pre-flight counted.
    #[error("{step}: {cause}; rows that violate it appeared after the pre-flight: run migrate again (with --orphans archive or delete to clean them)")]
    NewViolations {
        /// The validation step's id.
        step: String,
        /// The server's error.
        cause: String,
    },

    /// An operation is not in place once its run is over (e.g. a partition added during it).
    #[error("{op} is not in place after the run (left: {}); a partition was probably added during the run: run migrate again", .remaining.join(", "))]
    NotInPlace {
        /// The operation's id.
        op: String,
        /// Up to five steps or conflicts left.
        remaining: Vec<String>,
    },

    /// Some `verify` assertions failed or could not run (after the report).
    #[error("{failed} of {total} validation assertions failed or could not run: {names}")]
    VerifyFailed {
        /// How many assertions failed or could not run.
        failed: usize,
        /// How many assertions there are.
        total: usize,
        /// Which ones: `TEST n`, comma-separated.
        names: String,
    },

    /// `verify` on a schema without the platform's tables: nothing to assert on.
    #[error("verify: schema {schema} has no {missing}: the database is not migrated (run migrate first), or the platform lives in another schema (pass --schema)")]
    NotMigrated {
        /// The schema verified.
        schema: String,
        /// The tables it lacks, comma-separated.
        missing: String,
    },

    /// An error of refinery with no database error behind it.
    #[error("refinery: {0}")]
    Refinery(String),

    /// The run was stopped: by a signal, by the application, or because the connection holding
    /// the migration lock was lost.
    #[error("{}", interrupted_message(.reason))]
    Interrupted {
        /// Why it was stopped.
        reason: Reason,
    },

    /// The database cannot be written: a standby in recovery, or sessions that start
    /// read-only.
    #[error("{target} is read-only: {why}; nothing was changed")]
    ReadOnly {
        /// Where the run connected.
        target: String,
        /// Which of the two, and what to do.
        why: String,
    },

    /// The URL reaches the server through a pooler in transaction or statement mode.
    #[error("{target} is reached through a connection pooler in transaction or statement mode ({evidence}); a migration needs a session of its own for its advisory lock and settings: use a direct URL or a session-pooled one (PgBouncer pool_mode = session; Prisma: the directUrl); nothing was changed")]
    TransactionPooler {
        /// Where the run connected.
        target: String,
        /// What showed it, e.g. two connections served by one server process.
        evidence: String,
    },

    /// Gave up waiting for the migration lock, which another session holds.
    #[error("the migration lock of this database is held by {holder}; gave up after waiting {}s ({why}); nothing was changed", .waited.as_secs())]
    LockWait {
        /// The session holding it: its pid and, where visible, application and state.
        holder: String,
        /// How long this run waited.
        waited: Duration,
        /// Why it gave up: `--lock-wait` elapsed, a holder that is not a runner, or sessions
        /// that did not end.
        why: String,
    },

    /// The schema to migrate does not exist, or the platform lives in another schema.
    #[error("schema {schema}: {detail}; nothing was changed")]
    Schema {
        /// The schema the run was given (`--schema`).
        schema: String,
        /// What is wrong, and which schema holds the platform if another does.
        detail: String,
    },

    /// Creating the months ahead would move more rows out of DEFAULT partitions
    /// than `--max-moved-rows`.
    #[error("moving {total} rows out of the DEFAULT partition of {table} ({months}) would make every write into it wait for about {} (and every read too where transactions read it and then write it), then every read for the attach: that is above --max-moved-rows {limit}, so those months are not created: rerun at a quiet time with a --max-moved-rows above {total} (rows of a month that has begun keep arriving) to accept that wait", fmt_wait(*.seconds))]
    TooManyRowsToMove {
        /// The table whose months they are.
        table: String,
        /// The months and their rows.
        months: String,
        /// Rows in all.
        total: i64,
        /// `--max-moved-rows`.
        limit: u64,
        /// The estimated wait, in seconds.
        seconds: f64,
    },

    /// Months of the partition window that a run did not create (the others were created).
    #[error("monthly partitions not created: {}; fix what is named, then run partitions again (the months not named here were created)", .not_created.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("; "))]
    PartitionsIncomplete {
        /// The months (or whole tables) not created, and why.
        not_created: Vec<NotCreated>,
    },

    /// The blocking task of [`crate::migrate_async`] did not return (its runtime shut down, or
    /// it panicked).
    #[error("the migration task did not finish: {cause}; run migrate again")]
    Task {
        /// Why it did not return, as the runtime reports it.
        cause: String,
    },
}

/// What to do about a failed statement, where the SQLSTATE says: a lock not had within
/// `lock_timeout` outside the retried steps (a pre-flight count, a dry run's read).
fn db_advice(sqlstate: Option<&str>) -> &'static str {
    match sqlstate {
        Some("55P03") => "; another session holds a lock this statement needs (pg_blocking_pids names it): retry when it ends, or raise --lock-timeout",
        _ => "",
    }
}

/// ` after waiting 60s`, or nothing for an error that was not waited on.
fn after_waiting(waited: Duration) -> String {
    if waited < Duration::from_secs(1) {
        return String::new();
    }
    format!(" after waiting {}s", waited.as_secs_f64().round())
}

fn connect_advice(sqlstate: Option<&str>, cause: &str) -> &'static str {
    match sqlstate {
        Some("53300") => "the server's or the role's connection limit is reached: a run needs two connections (the lock's and one to work on; --jobs adds workers only while slots are free), so end idle sessions or raise max_connections or the role's CONNECTION LIMIT",
        Some("28P01") => "check the user and password (URL, PGPASSWORD, PGPASSWORD_FILE or the password file)",
        Some("28000") => "check the user, and for cert authentication sslcert and sslkey",
        Some("3D000") => "check the database name",
        _ if cause.contains("password missing") => "the server asks for a password and none was given: put it in the URL, PGPASSWORD, PGPASSWORD_FILE or ~/.pgpass (mode 0600)",
        _ if cause.contains("does not support TLS") => "the server does not offer TLS: turn on ssl on the server, or lower sslmode",
        _ if cause.contains("TLS handshake") => "check sslmode, sslrootcert and the server's certificate (verify-full checks the host name against it, verify-ca does not)",
        _ => "check that PostgreSQL is up and the URL is right, or raise --wait",
    }
}

fn fmt_conflicts(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("{} is {}, expected {}", c.object, c.found, c.expected))
        .collect::<Vec<_>>()
        .join("; ")
}

fn interrupted_message(reason: &Reason) -> String {
    match reason {
        Reason::LockLost(why) => format!("lost the migration lock ({why}): every statement of this run was cancelled so that no other runner races it; run migrate again to finish"),
        other => format!("interrupted by {other}: every statement of this run was cancelled on the server and the migration lock released; run migrate again to finish"),
    }
}

/// A wait of a second or more in seconds with one decimal, a shorter one in milliseconds.
fn fmt_wait(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{:.0} ms", (seconds * 1000.0).max(1.0))
    }
}

fn fmt_deadlocks(n: u32) -> String {
    match n {
        0 => String::new(),
        n => format!("; {n} of them stopped by a deadlock, lost or avoided"),
    }
}

fn fmt_pids(pids: &[i32]) -> String {
    if pids.is_empty() {
        "none seen (the lock was held only briefly)".into()
    } else {
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Error {
    /// The code `meta-chat-migrate` exits with for this error (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidUrl { .. }
            | Error::Source { .. }
            | Error::Usage { .. }
            | Error::UnknownVersionArg { .. } => exit::USAGE,
            Error::Orphans(_) => exit::ORPHANS,
            Error::VerifyFailed { .. } | Error::NotMigrated { .. } => exit::VERIFY_FAILED,
            Error::Interrupted {
                reason: Reason::Signal { number, .. },
            } => exit::SIGNAL_BASE + number,
            _ => exit::FAILURE,
        }
    }

    pub(crate) fn interrupted(reason: Reason) -> Error {
        Error::Interrupted { reason }
    }

    /// A database error without a driver error behind it.
    pub(crate) fn db_message(context: impl Into<String>, cause: impl Into<String>) -> Error {
        Error::Database {
            context: context.into(),
            sqlstate: None,
            cause: cause.into(),
        }
    }

    /// Wraps a driver error with what the runner was doing. The driver's message is flattened
    /// to one line with its SQLSTATE, detail and hint.
    pub fn db(context: impl Into<String>, err: postgres::Error) -> Error {
        Error::Database {
            context: context.into(),
            sqlstate: sqlstate(&err).map(str::to_owned),
            cause: describe_pg_error(&err),
        }
    }

    /// The variant's name in kebab case: the `kind` of a `--json` error, stable for scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid-url",
            Error::Source { .. } => "source",
            Error::Usage { .. } => "usage",
            Error::Connect { .. } => "connect",
            Error::Database { .. } => "database",
            Error::LockTimeout { .. } => "lock-timeout",
            Error::Orphans(_) => "orphans",
            Error::UnknownVersion { .. } => "unknown-version",
            Error::Divergent { .. } => "divergent",
            Error::UnknownVersionArg { .. } => "unknown-version-arg",
            Error::NeedsBaseline { .. } => "needs-baseline",
            Error::BaselineMismatch { .. } => "baseline-mismatch",
            Error::BaselineNotApplicable { .. } => "baseline-not-applicable",
            Error::HistoryGap { .. } => "history-gap",
            Error::Layout { .. } => "layout",
            Error::MissingTable { .. } => "missing-table",
            Error::Conflict { .. } => "conflict",
            Error::NewViolations { .. } => "new-violations",
            Error::NotInPlace { .. } => "not-in-place",
            Error::VerifyFailed { .. } => "verify-failed",
            Error::Refinery(_) => "refinery",
            Error::Interrupted { .. } => "interrupted",
            Error::ReadOnly { .. } => "read-only",
            Error::TransactionPooler { .. } => "transaction-pooler",
            Error::LockWait { .. } => "lock-wait",
            Error::Schema { .. } => "schema",
            Error::NotMigrated { .. } => "not-migrated",
            Error::TooManyRowsToMove { .. } => "too-many-rows-to-move",
            Error::PartitionsIncomplete { .. } => "partitions-incomplete",
            Error::Task { .. } => "task",
        }
    }

    /// False for the errors that follow a report already printed (`verify`'s failed
    /// assertions, the months `partitions` did not create), so that `--json` prints one
    /// document, never two.
    pub fn report_not_printed(&self) -> bool {
        !matches!(
            self,
            Error::VerifyFailed { .. } | Error::PartitionsIncomplete { .. }
        )
    }

    /// The SQLSTATE of the underlying database error, where there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database { sqlstate, .. }
            | Error::Connect { sqlstate, .. }
            | Error::LockTimeout { sqlstate, .. } => sqlstate.as_deref(),
            Error::NewViolations { .. } => Some("23503"),
            _ => None,
        }
    }
}

/// One line: `SQLSTATE XXXXX: message (detail: ..., hint: ...)` for server errors, the driver's
/// own text (with its source chain) otherwise.
pub fn describe_pg_error(err: &postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = format!("SQLSTATE {}: {}", db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            s.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!(" (hint: {hint})"));
        }
        return s.replace('\n', " ");
    }
    let mut s = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s.replace('\n', " ")
}

/// The SQLSTATE of a driver error, if the server sent one.
pub fn sqlstate(err: &postgres::Error) -> Option<&str> {
    err.as_db_error().map(|db| db.code().code())
}

impl From<Reason> for Error {
    fn from(reason: Reason) -> Self {
        Error::Interrupted { reason }
    }
}

impl From<refinery::Error> for Error {
    /// Keeps the SQLSTATE of a database error inside refinery's error, so that a migration that
    /// hit `lock_timeout` can be retried like any other step.
    fn from(err: refinery::Error) -> Self {
        let context = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            if let Some(pg) = cause.downcast_ref::<postgres::Error>() {
                return Error::Database {
                    context,
                    sqlstate: sqlstate(pg).map(str::to_owned),
                    cause: describe_pg_error(pg),
                };
            }
            source = cause.source();
        }
        Error::Refinery(context)
    }
}

/// The crate's `Result`: its error is [`Error`] unless another is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;
