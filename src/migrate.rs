//! `migrate`: the order of work. Connect (waiting for the server), take the advisory lock,
//! compare the history with the embedded migrations, then apply each pending version in its own
//! transaction (the migration and its history row commit together). Before the first tenant FK
//! version, the orphan pre-flight; before each tenant FK version, the online restore, so the
//! versioned SQL finds everything in place.

use postgres::Client;
use refinery::Target;
use serde::Serialize;

use crate::adopt;
use crate::config::{DbTarget, Settings};
use crate::db::{self, BlockerWatch, Conn, LockPolicy, MigrationLock};
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
    /// The version recorded as applied without running (`--baseline`), if any.
    pub baseline: Option<i64>,
    pub applied: Vec<Entry>,
    pub orphans_resolved: Vec<Resolved>,
    pub online: Vec<OnlineReport>,
}

/// Does everything `meta-chat-migrate migrate` does. Safe to call from every replica of an
/// application at boot: runners serialise on an advisory lock and apply each version once.
pub fn migrate(settings: &Settings) -> Result<MigrateReport> {
    let target = settings.target()?;
    ensure_known("--target", settings.target)?;
    ensure_known("--baseline", settings.baseline)?;
    if settings.jobs == 0 {
        return Err(Error::Usage {
            what: "--jobs",
            value: "0".into(),
            reason: "at least one connection is needed".into(),
        });
    }
    log::info!(
        "meta-chat-migrate {}: migrating schema {} of {target}",
        env!("CARGO_PKG_VERSION"),
        settings.schema
    );
    let outcome = lock_database(settings, &target).and_then(|(mut main, lock)| {
        let outcome =
            migrate_locked(settings, &mut main, &lock, target).map_err(|e| lock.explain(e));
        lock.release();
        outcome
    });
    // An interrupted run says why it stopped, whichever of its statements failed first.
    match (outcome, settings.interrupt.reason()) {
        (Err(_), Some(reason)) => Err(Error::interrupted(reason)),
        (other, _) => other,
    }
}

/// Connects (waiting for the server), refuses a transaction-mode pooler and a read-only
/// database, takes the migration lock (ending what an earlier run left running), and checks
/// that the platform lives in the schema this run migrates. Changes nothing.
pub(crate) fn lock_database(
    settings: &Settings,
    target: &DbTarget,
) -> Result<(Conn, MigrationLock)> {
    let mut main = db::connect_raw_with_wait(settings)?;
    let mut lock_conn = db::connect_raw(settings)?;
    db::pooler::ensure_own_sessions(&mut main, &mut lock_conn, target)?;
    main.setup(settings, settings.lock_timeout)?;
    lock_conn.setup(settings, settings.lock_timeout)?;
    db::ensure_writable(&mut main, target)?;
    let lock = MigrationLock::acquire(lock_conn, settings)?;
    db::lock::join_work(&mut main)?;
    crate::schema::ensure_platform_here(&mut main, &settings.schema)?;
    Ok((main, lock))
}

fn ensure_known(flag: &'static str, version: Option<i64>) -> Result<()> {
    let Some(v) = version else { return Ok(()) };
    let known = embedded::migrations();
    if known.iter().any(|m| m.version() == v) {
        return Ok(());
    }
    Err(Error::UnknownVersionArg {
        flag,
        version: v,
        known: known
            .iter()
            .map(|m| m.version().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// For a database without history: `None` if it is empty (a fresh install), the baseline to
/// record if it has the schema and `--baseline` matches it, an error that says what was found
/// otherwise. Changes nothing.
fn adoption(settings: &Settings, client: &mut Client) -> Result<Option<i64>> {
    let found = adopt::inspect(client)?;
    if !found.has_schema() {
        return match settings.baseline {
            Some(_) => Err(Error::Inconsistent {
                what: "--baseline".into(),
                detail:
                    "the database has none of the platform's tables: run migrate without --baseline"
                        .into(),
            }),
            None => Ok(None),
        };
    }
    match settings.baseline {
        None => Err(Error::NeedsBaseline {
            found: found.to_string(),
            advice: match found.best_baseline() {
                Some(v) => format!("it matches version {v}: run `meta-chat-migrate migrate --baseline {v}` to record the versions up to it as applied without running them, then apply the rest"),
                None => "no version of this build matches it; bring it to one of them by hand first".into(),
            },
        }),
        Some(v) => match found.mismatch(v) {
            Some(reason) => Err(Error::BaselineMismatch {
                version: v,
                reason,
                found: found.to_string(),
            }),
            None => Ok(Some(v)),
        },
    }
}

fn migrate_locked(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    database: DbTarget,
) -> Result<MigrateReport> {
    let client = main.client();
    let status = history::status(client)?;
    status.ensure_consistent()?;
    let from = status.current();
    let baseline = if status.applied.is_empty() {
        adoption(settings, client)?
    } else if settings.baseline.is_some() {
        return Err(Error::Inconsistent {
            what: "--baseline".into(),
            detail: format!(
                "the database already has a migration history (at version {}); --baseline is only for a database with none",
                from.unwrap_or_default()
            ),
        });
    } else {
        None
    };
    let pending: Vec<Entry> = status
        .pending
        .iter()
        .filter(|e| baseline.is_none_or(|b| e.version > b))
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
        baseline,
        applied: Vec::new(),
        orphans_resolved: Vec::new(),
        online: Vec::new(),
    };
    let pending_fks: Vec<&TenantFk> = pending
        .iter()
        .filter_map(|e| tenant_fk::for_version(e.version))
        .collect();
    let mut preflight_done = false;
    // Where the tables already exist, the orphan pre-flight comes before any change (a refusal
    // then changes nothing, not even a baseline); on a fresh database it comes once the tables
    // exist, before the first tenant FK version.
    if !pending_fks.is_empty() && all_tables_exist(client, &pending_fks)? {
        report.orphans_resolved = preflight(settings, client, &pending_fks)?;
        preflight_done = true;
    }
    if let Some(b) = baseline {
        embedded::runner()
            .set_target(Target::FakeVersion(b))
            .run(client)
            .map_err(Error::from)?;
        log::info!("recorded the versions up to {b} as applied (baseline), without running them");
        report.to = Some(b);
    }
    if pending.is_empty() {
        log::info!(
            "database is at version {}: nothing to apply",
            report.to.map_or("none".into(), |v| v.to_string())
        );
        return Ok(report);
    }

    let watch = lock.watch();
    let pid = main.pid();
    let policy = LockPolicy::of(settings);
    let mut restored = false;
    for entry in &pending {
        if tenant_fk::for_version(entry.version).is_some() && !restored {
            // Before the first tenant FK version: their online restore in one pass, so each
            // versioned migration then only records itself.
            if !preflight_done {
                report.orphans_resolved = preflight(settings, main.client(), &pending_fks)?;
                preflight_done = true;
            }
            report.online = online::restore(settings, main, watch, &pending_fks)?;
            restored = true;
        }
        apply_one(main.client(), pid, watch, &policy, entry)?;
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

fn all_tables_exist(client: &mut Client, fks: &[&TenantFk]) -> Result<bool> {
    for table in fks.iter().map(|fk| fk.table).chain(["tenants"]) {
        if !adopt::table_exists(client, table)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The orphan pre-flight for the FKs not already in place.
fn preflight(settings: &Settings, client: &mut Client, fks: &[&TenantFk]) -> Result<Vec<Resolved>> {
    let mut unfinished = Vec::new();
    for fk in fks {
        if !online::constraint_exists_validated(client, fk)? {
            unfinished.push(*fk);
        }
    }
    orphans::preflight(client, settings.orphans, &unfinished)
}

/// Applies one version with refinery: its SQL and its history row in one transaction, retried
/// when it hits `lock_timeout`.
fn apply_one(
    client: &mut Client,
    pid: i32,
    watch: &BlockerWatch,
    policy: &LockPolicy,
    entry: &Entry,
) -> Result<()> {
    let step = format!("migration {} ({})", entry.version, entry.name);
    log::info!("applying {step}");
    policy.run(&step, pid, watch, || {
        embedded::runner()
            .set_target(Target::Version(entry.version))
            .set_grouped(true)
            .run(client)
            .map(|_| ())
            .map_err(Error::from)
    })
}
