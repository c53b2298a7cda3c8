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
//! Modules, one concept each: [`config`] (what a run is given), [`db`] (connections, the
//! migration lock, `lock_timeout` and retries), [`embedded`] (the migrations), [`history`]
//! (applied vs embedded), [`plan`] (what each version declares), [`engine`] (the online work),
//! [`catalog`] (every catalog query), [`sql`] (identifiers and statements), [`preflight`]
//! (rows a key would refuse), [`adopt`] (databases migrated by something else), [`sources`]
//! (where the database comes from), [`tls`], [`migrate`], [`dryrun`], [`check`], [`verify`],
//! [`interrupt`] and [`error`].

pub mod adopt;
pub(crate) mod blocking;
pub mod catalog;
pub mod check;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub(crate) mod conninfo;
pub mod db;
pub mod dryrun;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod findings;
pub mod history;
pub mod interrupt;
pub mod migrate;
pub mod partitions;
pub(crate) mod pgpass;
pub mod plan;
pub mod preflight;
pub(crate) mod schema;
pub mod sources;
pub mod sql;
pub mod tls;
pub mod verify;

pub use blocking::migrate_async;
pub use config::{OrphanPolicy, Settings, DEFAULT_DATABASE_URL};
pub use error::{exit, Error, Result};
pub use interrupt::{Interrupt, Reason};
pub use migrate::MigrateReport;

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
        let mut conn = db::connect_with_wait(settings)?;
        history::status(&mut conn)
    })
}

/// `check`: orphan counts, constraint status and partition layout. Read-only.
pub fn check(settings: &Settings) -> Result<check::CheckReport> {
    blocking::off_runtime(|| {
        let mut conn = db::connect_with_wait(settings)?;
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
        let mut conn = db::connect_with_wait(settings)?;
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
