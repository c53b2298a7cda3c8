//! Applying the schema at application boot, in a tokio application.
//!
//! Every replica may call this at once: runners serialise on an advisory lock, so each version
//! is applied exactly once and the others wait, then find nothing to do. The postgres crate is
//! synchronous (it runs its own small runtime): `migrate_async` runs it on tokio's blocking pool,
//! so no worker thread waits, and dropping its future (a shutdown) stops the run cleanly.
//!
//!     DATABASE_URL=postgres://postgres@localhost:5432/postgres cargo run --example app_boot

use meta_chat_migrations::{OrphanPolicy, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let mut settings = Settings::from_env()?;
    // At boot, never clean data on the application's behalf: refuse (the default) and let an
    // operator decide with `meta-chat-migrate check` and `migrate --orphans ...`.
    settings.orphans = OrphanPolicy::Refuse;

    let report = meta_chat_migrations::migrate_async(settings).await?;
    log::info!(
        "schema of {} at version {:?} ({} applied now)",
        report.database,
        report.to,
        report.applied.len()
    );

    // ... build the application's pool and start serving here.
    Ok(())
}
