//! `migrate`: the order of work. Connect (waiting for the server), take the advisory lock,
//! compare the history with the embedded migrations, then apply each pending version in its own
//! transaction (the migration and its history row commit together). Before the first tenant FK
//! version, the orphan pre-flight; before each tenant FK version, the online restore, so the
//! versioned SQL finds everything in place.

use postgres::Client;
use refinery::Target;
use serde::Serialize;

use crate::config::{DbTarget, Settings};
use crate::db::{self, BlockerWatch, LockPolicy};
use crate::embedded;
use crate::error::{Error, Result};
use crate::history::{self, Entry};
use crate::online::{self, OnlineReport};
use crate::orphans::{self, Resolved};
use crate::tenant_fk::{self, TenantFk};

#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    pub database: DbTarget,
    /// The version the database was at before this run.
    pub from: Option<i64>,
    /// The version it is at now.
    pub to: Option<i64>,
    pub applied: Vec<Entry>,
    pub orphans_resolved: Vec<Resolved>,
    pub online: Vec<OnlineReport>,
}

/// Does everything `meta-chat-migrate migrate` does. Safe to call from every replica of an
/// application at boot: runners serialise on an advisory lock and apply each version once.
pub fn migrate(settings: &Settings) -> Result<MigrateReport> {
    let target = settings.target()?;
    if let Some(v) = settings.target {
        let known = embedded::migrations();
        if !known.iter().any(|m| m.version() == v) {
            return Err(Error::UnknownTarget {
                version: v,
                known: known
                    .iter()
                    .map(|m| m.version().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    if settings.jobs == 0 {
        return Err(Error::Usage {
            what: "--jobs",
            value: "0".into(),
            reason: "at least one connection is needed".into(),
        });
    }
    log::info!(
        "meta-chat-migrate {}: migrating {target}",
        env!("CARGO_PKG_VERSION")
    );
    let mut client = db::connect_with_wait(settings)?;
    db::acquire_advisory_lock(&mut client)?;
    let outcome = migrate_locked(settings, &mut client, target);
    // Also released by the server when the connection closes; explicit for a clean log.
    let _ = db::release_advisory_lock(&mut client);
    outcome
}

fn migrate_locked(
    settings: &Settings,
    client: &mut Client,
    database: DbTarget,
) -> Result<MigrateReport> {
    let status = history::status(client)?;
    status.ensure_consistent()?;
    let from = status.current();
    let pending: Vec<Entry> = status
        .pending
        .iter()
        .filter(|e| settings.target.is_none_or(|t| e.version <= t))
        .cloned()
        .collect();
    if let (Some(first), Some(current)) = (pending.first(), from) {
        if first.version < current {
            return Err(Error::Inconsistent {
                what: "the migration history".into(),
                detail: format!(
                    "version {} ({}) is not applied but the later version {current} is; restore the history table or apply it by hand",
                    first.version, first.name
                ),
            });
        }
    }
    let mut report = MigrateReport {
        database,
        from,
        to: from,
        applied: Vec::new(),
        orphans_resolved: Vec::new(),
        online: Vec::new(),
    };
    if pending.is_empty() {
        log::info!(
            "database is at version {}: nothing to apply",
            from.map_or("none".into(), |v| v.to_string())
        );
        return Ok(report);
    }

    let watch = BlockerWatch::start(settings)?;
    let pid = db::backend_pid(client)?;
    let policy = LockPolicy::of(settings);
    let pending_fks: Vec<&TenantFk> = pending
        .iter()
        .filter_map(|e| tenant_fk::for_version(e.version))
        .collect();
    let mut restored = false;

    for entry in &pending {
        if tenant_fk::for_version(entry.version).is_some() && !restored {
            // Before the first tenant FK version: the orphan pre-flight for every pending one,
            // then their online restore in one pass, so each versioned migration only records.
            let unfinished: Vec<&TenantFk> = pending_fks
                .iter()
                .copied()
                .filter(|fk| !online::constraint_exists_validated(client, fk).unwrap_or(false))
                .collect();
            report.orphans_resolved = orphans::preflight(client, settings.orphans, &unfinished)?;
            report.online = online::restore(settings, client, &watch, &pending_fks)?;
            restored = true;
        }
        apply_one(client, pid, &watch, policy, entry)?;
        report.applied.push(entry.clone());
        report.to = Some(entry.version);
    }
    log::info!(
        "database is at version {} ({} migration(s) applied)",
        report.to.unwrap_or_default(),
        report.applied.len()
    );
    Ok(report)
}

/// Applies one version with refinery: its SQL and its history row in one transaction, retried
/// when it hits `lock_timeout`.
fn apply_one(
    client: &mut Client,
    pid: i32,
    watch: &BlockerWatch,
    policy: LockPolicy,
    entry: &Entry,
) -> Result<()> {
    let step = format!("migration {} ({})", entry.version, entry.name);
    log::info!("applying {step}");
    policy.run(&step, pid, Some(watch), || {
        embedded::runner()
            .set_target(Target::Version(entry.version))
            .set_grouped(true)
            .run(client)
            .map(|_| ())
            .map_err(Error::from)
    })
}
