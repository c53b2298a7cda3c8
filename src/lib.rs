//! # meta-chat-migrations
//!
//! The PostgreSQL schema of the meta-chat platform: its versioned migrations, embedded with
//! refinery's `embed_migrations!`, and the runner that applies them safely under live traffic,
//! from application boot (several replicas at once) or as a container init step.
//!
//! At application boot:
//!
//! ```no_run
//! let report = meta_chat_migrations::migrate(&meta_chat_migrations::Settings::from_env())?;
//! println!("schema at version {:?}", report.to);
//! # Ok::<(), meta_chat_migrations::Error>(())
//! ```
//!
//! Modules, one concept each: [`config`] (what a run is given), [`db`] (connections, advisory
//! lock, `lock_timeout` and retries), [`embedded`] (the migrations), [`history`] (applied vs
//! embedded), [`adopt`] (databases migrated by something else), [`tenant_fk`] (the two restored constraints), [`tls`] (sslmode), [`orphans`] (pre-flight and
//! policies), [`online`] (the non-blocking restore), [`migrate`], [`check`], [`verify`] (the
//! spec's seven assertions) and [`error`].

pub mod adopt;
pub mod check;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub(crate) mod conninfo;
pub mod db;
pub mod embedded;
pub mod error;
pub mod history;
pub mod interrupt;
pub mod migrate;
pub mod online;
pub mod orphans;
pub(crate) mod schema;
pub mod tenant_fk;
pub mod tls;
pub mod verify;

pub use config::{OrphanPolicy, Settings, DEFAULT_DATABASE_URL};
pub use error::{exit, Error, Result};
pub use interrupt::{Interrupt, Reason};
pub use migrate::{migrate, MigrateReport};

/// `migrate` with the documented defaults for everything but the URL.
pub fn migrate_url(database_url: &str) -> Result<MigrateReport> {
    migrate(&Settings::new(database_url))
}

/// `status`: applied, pending, divergent and unknown versions. Creates nothing.
pub fn status(settings: &Settings) -> Result<history::Status> {
    let mut conn = db::connect_with_wait(settings)?;
    history::status(&mut conn)
}

/// `check`: orphan counts, constraint status and partition layout. Read-only.
pub fn check(settings: &Settings) -> Result<check::CheckReport> {
    let mut conn = db::connect_with_wait(settings)?;
    check::check(conn.client())
}

/// `verify`: the spec's seven assertions, inside a transaction that is rolled back.
pub fn verify(settings: &Settings) -> Result<verify::VerifyReport> {
    let mut conn = db::connect_with_wait(settings)?;
    verify::verify(&mut conn)
}
