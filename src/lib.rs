//! # meta-chat-migrations
//!
//! The PostgreSQL schema of the meta-chat platform: its versioned migrations, embedded with
//! refinery's `embed_migrations!`, and the runner that applies them safely under live traffic,
//! from application boot (several replicas at once) or as a container init step.
//!
//! At application boot:
//!
//! ```no_run
//! let report = meta_chat_migrations::migrate(&meta_chat_migrations::Settings::from_env()?)?;
//! println!("schema at version {:?}", report.to);
//! # Ok::<(), meta_chat_migrations::Error>(())
//! ```
//!
//! The API is the functions below ([`migrate`], [`migrate_async`], [`plan`], [`status`],
//! [`check`], [`verify`], [`partitions`]), [`Settings`], [`Error`], [`Interrupt`] and the
//! reports they return. Inside, one module per concept: `config` (what a run is given), `db`
//! (connections, the migration lock, `lock_timeout` and retries), `embedded` (the migrations and
//! what they declare), `history` (applied vs embedded), `engine` (the online work: its operation
//! kinds in `engine/ops/`, one file each, and the monthly partitions), `catalog` (the catalog
//! facts every part shares), `sql` (identifiers and names), `preflight` (rows an operation
//! would refuse), `adopt` (databases migrated by something else), `sources` (where the database
//! comes from), `tls`, `migrate`, `dryrun`, `check`, `verify`, `partitions`, `interrupt`,
//! `findings` (plain data errors and reports share) and `error`.
#![warn(missing_docs)]

/// The crate's modules: private, but public with the `internals` feature, which only the
/// project's own tests and benchmarks turn on (a dev-dependency on itself) to reach what an
/// application never needs.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            #[doc(hidden)]
            #[allow(missing_docs)]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            mod $name;
        )*
    };
}

internal!(
    adopt, blocking, boot, catalog, check, config, conninfo, db, dryrun, embedded, engine, error,
    findings, history, interrupt, migrate, partitions, pgpass, preflight, schema, service, sources,
    sql, tls, verify,
);

/// The command line of `meta-chat-migrate` (the binary's, behind the default `cli` feature):
/// not part of the library's API.
#[cfg(feature = "cli")]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod cli;

pub use blocking::migrate_async;
pub use check::{CheckReport, OpStatus, PartitionLayout};
pub use config::{DbTarget, OrphanPolicy, Settings, DEFAULT_DATABASE_URL};
pub use dryrun::{BatchPlan, MigratePlan};
pub use engine::partitions::{HelperCheck, MonthPlan, MonthRows, Window};
pub use engine::{Item, OpPlan, OpReport, Step};
pub use error::{exit, Error, Result};
pub use findings::{Conflict, Findings, NotCreated, RuleCount};
pub use history::{Entry, Status};
pub use interrupt::{Interrupt, Reason};
pub use migrate::MigrateReport;
pub use partitions::{Created, Outside, PartitionsPlan, PartitionsReport};
pub use preflight::Resolved;
pub use verify::{Assertion, VerifyReport};

/// This build's version and commit, as `--version` and the first log line of a run say it:
/// `0.1.0 (commit 0123456789ab)`, `, dirty` when built from a tree that differs from it.
pub const VERSION: &str = env!("MCM_VERSION");

/// Applies pending migrations online, then keeps the monthly partitions ahead (see the README).
/// Blocking; safe to call from anywhere, also from inside a tokio runtime (the work then runs on
/// a thread of its own while this one waits): from async code prefer [`migrate_async`].
pub fn migrate(settings: &Settings) -> Result<MigrateReport> {
    blocking::off_runtime(|| migrate::migrate(settings))
}

/// `migrate` with the documented defaults for everything but the URL.
pub fn migrate_url(database_url: &str) -> Result<MigrateReport> {
    migrate(&Settings::new(database_url))
}

/// `status`: applied, pending, divergent and unknown versions. Creates nothing.
pub fn status(settings: &Settings) -> Result<history::Status> {
    blocking::off_runtime(|| {
        let settings = &settings.for_run();
        let mut conn = schema::connect_platform(settings)?;
        history::status(conn.client())
    })
}

/// `check`: orphan counts, constraint status and partition layout. Read-only.
pub fn check(settings: &Settings) -> Result<check::CheckReport> {
    blocking::off_runtime(|| {
        let settings = &settings.for_run();
        let mut conn = schema::connect_platform(settings)?;
        check::check(
            conn.client(),
            &settings.schema,
            settings.premake,
            settings.as_of.as_deref(),
        )
    })
}

/// `verify`: the spec's seven assertions and this crate's own, inside a transaction that is
/// rolled back.
pub fn verify(settings: &Settings) -> Result<verify::VerifyReport> {
    blocking::off_runtime(|| {
        let settings = &settings.for_run();
        let mut conn = schema::connect_platform(settings)?;
        // Its assertions write (inside a transaction that is rolled back): a standby cannot run
        // them, and saying so beats "5 of 10 assertions failed".
        let target = conn.target().clone();
        db::ensure_writable(&mut conn, &target).map_err(|e| match e {
            Error::ReadOnly { target, why } => Error::ReadOnly {
                target,
                why: format!("verify writes (in a transaction it rolls back), so it needs the primary: {why}"),
            },
            other => other,
        })?;
        verify::ensure_migrated(conn.client(), &settings.schema)?;
        verify::verify(conn.client(), &settings.schema)
    })
}

/// `migrate --dry-run`: what `migrate` would do, read from the catalog. Changes nothing and never
/// waits for the migration lock.
pub fn plan(settings: &Settings) -> Result<dryrun::MigratePlan> {
    blocking::off_runtime(|| dryrun::plan(settings))
}

/// `partitions`: every monthly table has a partition from the current month through
/// `settings.premake` months ahead, created online under the migration lock.
pub fn partitions(settings: &Settings) -> Result<partitions::PartitionsReport> {
    blocking::off_runtime(|| partitions::run(settings))
}
