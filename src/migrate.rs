//! `migrate`: the order of work. Connect (waiting for the server), take the migration lock,
//! compare the history with the embedded migrations, then apply the pending versions in order,
//! each in its own transaction with its history row.
//!
//! First the boot check ([`crate::boot`]): one read-only query on the first connection, and no
//! lock, when there is nothing to do. Otherwise that connection takes the lock.
//!
//! Consecutive pending versions that declare online work (their migration file's
//! [`Declaration`]) form a batch: their
//! declarations are checked against the catalog and their pre-flight rules run before anything
//! of the batch changes, then the engine runs phase by phase (the operations of one phase, across
//! the batch's versions, share one queue), and then refinery applies each version, whose SQL
//! finds everything in place and only records itself.

use postgres::Client;
use refinery::Target;
use serde::Serialize;

use crate::adopt;
use crate::catalog;
use crate::catalog::Reader;
use crate::config::{DbTarget, Settings};
use crate::db::{self, BlockerWatch, Conn, LockPolicy, MigrationLock};
use crate::embedded;
use crate::embedded::DECLARATIONS;
use crate::engine::ops::{self, Declaration, Operation, Rule};
use crate::engine::{self, OpReport};
use crate::error::{Error, Result};
use crate::history::{self, Entry, Status};
use crate::preflight::{self, Resolved};
use crate::sql::Relation;

/// What a `migrate` run did.
#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    /// Where the run connected.
    pub database: DbTarget,
    /// The schema it migrated.
    pub schema: String,
    /// The version the database was at before this run.
    pub from: Option<i64>,
    /// The version it is at now.
    pub to: Option<i64>,
    /// The version recorded as applied without running (`--baseline`), if any.
    pub baseline: Option<i64>,
    /// The versions this run applied, in order (not those recorded by `--baseline`).
    pub applied: Vec<Entry>,
    /// What `--orphans archive` or `delete` did before the foreign keys went on; empty if
    /// there was nothing to resolve.
    pub orphans_resolved: Vec<Resolved>,
    /// The online operations of the pending versions, in the order they ran.
    pub online: Vec<OpReport>,
    /// Declared objects of applied versions that were not in place (dropped, left invalid) and
    /// were restored online before anything else.
    pub restored: Vec<OpReport>,
    /// Why drift found could not be restored (an object of another shape, rows it would refuse,
    /// a lock not had): the run still succeeds, and `check` exits 6 (or 3) until it is fixed.
    pub drift_error: Option<String>,
    /// The partition window, kept at the end of a run that leaves the latest version.
    pub partitions: Option<crate::partitions::PartitionsReport>,
    /// Why the months ahead were not created, when that failed after the migrations were
    /// applied: the run still succeeds (the schema is at its version; an init container must
    /// not keep the application from starting), and `partitions` or `check` (exit 5) say more.
    pub partitions_error: Option<String>,
    /// True when one read-only query found nothing to do (the boot fast path: every version
    /// applied, every declared object and the months ahead in place): no lock was taken, and
    /// `partitions` is `None`.
    pub up_to_date: bool,
}

impl MigrateReport {
    /// The report of a run that starts at version `at` and has done nothing yet.
    fn starting_at(settings: &Settings, database: DbTarget, at: Option<i64>) -> MigrateReport {
        MigrateReport {
            database,
            schema: settings.schema.clone(),
            from: at,
            to: at,
            baseline: None,
            applied: Vec::new(),
            orphans_resolved: Vec::new(),
            online: Vec::new(),
            restored: Vec::new(),
            drift_error: None,
            partitions: None,
            partitions_error: None,
            up_to_date: false,
        }
    }

    /// The report of a run whose boot check found nothing to do.
    fn up_to_date(settings: &Settings, database: DbTarget) -> MigrateReport {
        MigrateReport {
            up_to_date: true,
            ..MigrateReport::starting_at(settings, database, Some(embedded::latest()))
        }
    }

    /// The report of the online operation `id` (a constraint or index name).
    pub fn op(&self, id: &str) -> Option<&OpReport> {
        self.online.iter().find(|r| r.id == id)
    }
}

/// Does everything `meta-chat-migrate migrate` does. Safe to call from every replica of an
/// application at boot: runners serialise on an advisory lock and apply each version once.
pub fn migrate(settings: &Settings) -> Result<MigrateReport> {
    migrate_keeping(settings, &mut None)
}

/// [`migrate`], leaving in `done` what a failed run applied and did before its error (the
/// versions, the drift restored, the online operations finished), for `migrate --json`.
pub(crate) fn migrate_keeping(
    settings: &Settings,
    done: &mut Option<MigrateReport>,
) -> Result<MigrateReport> {
    let settings = &settings.for_run();
    let target = settings.target()?;
    validate(settings)?;
    log::info!(
        "meta-chat-migrate {}: migrating schema {} of {target}",
        crate::VERSION,
        settings.schema
    );
    let outcome = db::connect_raw_with_wait(settings).and_then(|mut first| {
        let target = first.target().clone();
        if crate::boot::nothing_to_do(settings, &mut first)? {
            log::info!(
                "nothing to do: {target} is at version {}, with every declared object and the months ahead in place",
                embedded::latest()
            );
            return Ok(MigrateReport::up_to_date(settings, target));
        }
        let (mut main, lock) = crate::schema::lock_platform(settings, Some(first))?;
        let outcome =
            migrate_locked(settings, &mut main, &lock, target, done).map_err(|e| lock.explain(e));
        lock.release();
        outcome
    });
    // An interrupted run says why it stopped, whichever of its statements failed first.
    match (outcome, settings.interrupt.reason()) {
        (Err(_), Some(reason)) => Err(Error::interrupted(reason)),
        (other, _) => other,
    }
}

/// Runs one declaration's pre-flight and online operations under the migration lock, exactly as
/// `migrate` runs those of a pending version, without recording any version: how the tests run
/// an operation kind that no platform version declares yet through the same lifecycle as the
/// others. Not part of the library's API.
#[cfg(feature = "internals")]
pub fn apply_declaration(
    settings: &Settings,
    d: &'static Declaration,
) -> Result<(Vec<Resolved>, Vec<OpReport>)> {
    let (mut main, lock) = crate::schema::lock_platform(settings, None)?;
    let batch = Batch {
        versions: Vec::new(),
        plans: vec![d],
    };
    let outcome = run_online(settings, &mut main, &lock, &batch).map_err(|e| lock.explain(e));
    lock.release();
    outcome
}

/// Flags that name versions or counts this build cannot take.
pub(crate) fn validate(settings: &Settings) -> Result<()> {
    ensure_known("--target", settings.target)?;
    ensure_known("--baseline", settings.baseline)?;
    if settings.jobs == 0 {
        return Err(Error::Usage {
            what: "--jobs",
            value: "0".into(),
            reason: "at least one connection is needed".into(),
        });
    }
    Ok(())
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
    let found = adopt::inspect(client, &settings.schema)?;
    if !found.has_schema() {
        return match settings.baseline {
            Some(v) => Err(Error::BaselineNotApplicable {
                version: v,
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

/// The baseline to record (if any) and the versions to apply, in order. Read-only.
pub(crate) fn pending(
    settings: &Settings,
    client: &mut Client,
    status: &Status,
) -> Result<(Option<i64>, Vec<Entry>)> {
    let from = status.current();
    let baseline = if status.applied.is_empty() {
        adoption(settings, client)?
    } else if let Some(v) = settings.baseline {
        return Err(Error::BaselineNotApplicable {
            version: v,
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
            return Err(Error::HistoryGap {
                version: first.version,
                name: first.name.clone(),
                later: current,
            });
        }
    }
    Ok((baseline, pending))
}

/// Consecutive pending versions, grouped: a run of versions with online work, or one without.
pub(crate) struct Batch {
    pub versions: Vec<Entry>,
    pub plans: Vec<&'static Declaration>,
}

impl Batch {
    pub fn online(&self) -> bool {
        !self.plans.is_empty()
    }

    /// The operations of phase `k` across the batch's versions.
    pub fn phase(&self, k: usize) -> Vec<&'static dyn Operation> {
        self.plans
            .iter()
            .filter_map(|p| p.phases.get(k))
            .flat_map(|ops| ops.iter().copied())
            .collect()
    }

    pub fn phases(&self) -> usize {
        self.plans.iter().map(|p| p.phases.len()).max().unwrap_or(0)
    }

    /// Every table the batch's operations and rules touch.
    fn tables(&self) -> Vec<&'static str> {
        let mut t: Vec<&'static str> = self
            .plans
            .iter()
            .flat_map(|p| {
                p.phases
                    .iter()
                    .flat_map(|ops| ops.iter().map(|o| o.table()))
            })
            .chain(
                self.plans
                    .iter()
                    .flat_map(|p| p.rules.iter().filter_map(|r| r.op.references())),
            )
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

pub(crate) fn batches(pending: &[Entry]) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for entry in pending {
        let plan = embedded::declaration(entry.version);
        match (out.last_mut(), plan) {
            (Some(b), Some(p)) if b.online() => {
                b.versions.push(entry.clone());
                b.plans.push(p);
            }
            _ => out.push(Batch {
                versions: vec![entry.clone()],
                plans: plan.into_iter().collect(),
            }),
        }
    }
    out
}

pub(crate) fn tables_exist(c: &mut Client, schema: &str, batch: &Batch) -> Result<bool> {
    for t in batch.tables() {
        if !catalog::table_exists(c, &Relation::new(schema, t))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The layout each version expects, then every declaration against the catalog (conflicts are
/// refused), then the rules whose foreign key is not in place yet. Read-only.
pub(crate) fn rules_to_run(
    c: &mut Client,
    schema: &str,
    batch: &Batch,
) -> Result<Vec<&'static Rule>> {
    for p in &batch.plans {
        for t in p.partitioned {
            let rel = Relation::new(schema, *t);
            if catalog::relation(c, &rel)?.is_some_and(|r| r.kind != 'p') {
                return Err(Error::Layout {
                    table: t.to_string(),
                    detail: format!("it is not partitioned, but version {} expects the monthly partitions of {}", p.version, embedded::PARTITIONED),
                });
            }
        }
    }
    let mut rules = Vec::new();
    for k in 0..batch.phases() {
        let plans = engine::plan(c, schema, &batch.phase(k))?;
        engine::ensure_no_conflicts(&plans)?;
        for p in batch.plans.iter() {
            for rule in p.rules {
                let fk_done = plans
                    .iter()
                    .any(|op| op.op.id() == rule.op.id() && op.is_done());
                let fk_here = plans.iter().any(|op| op.op.id() == rule.op.id());
                if fk_here && !fk_done && !rules.contains(rule) {
                    rules.push(*rule);
                }
            }
        }
    }
    Ok(rules)
}

fn check_and_preflight(
    settings: &Settings,
    c: &mut Client,
    batch: &Batch,
) -> Result<Vec<Resolved>> {
    let rules = rules_to_run(c, &settings.schema, batch)?;
    preflight::run(c, settings.orphans, &rules, &settings.schema)
}

fn migrate_locked(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    database: DbTarget,
    done: &mut Option<MigrateReport>,
) -> Result<MigrateReport> {
    let status = history::status(main.client())?;
    status.ensure_consistent()?;
    let (baseline, pending) = pending(settings, main.client(), &status)?;
    let report = done.insert(MigrateReport {
        baseline,
        ..MigrateReport::starting_at(settings, database, status.current())
    });
    restore_drift(settings, main, lock, &status, report)?;
    apply_pending(settings, main, lock, &pending, report)?;
    log::info!(
        "database is at version {} ({} migration(s) applied)",
        report.to.map_or("none".into(), |v| v.to_string()),
        report.applied.len()
    );
    if report.to == Some(embedded::latest()) && !settings.skip_partitions {
        keep_window(settings, main, lock, report)?;
    }
    Ok(done.take().expect("the report of this run"))
}

/// The declarations of applied versions with an operation not in place as declared (dropped,
/// left invalid, of another shape), found with one query.
pub(crate) fn drifted(
    c: &mut dyn Reader,
    schema: &str,
    status: &Status,
) -> Result<Vec<(&'static Declaration, Vec<&'static dyn Operation>)>> {
    let applied: Vec<&'static Declaration> = DECLARATIONS
        .iter()
        .copied()
        .filter(|d| status.is_applied(d.version))
        .collect();
    let ops: Vec<&'static dyn Operation> = applied.iter().flat_map(|d| d.ops()).collect();
    let in_place = ops::in_place(c, schema, &ops)?;
    Ok(applied
        .into_iter()
        .filter_map(|d| {
            let missing: Vec<&'static dyn Operation> = d
                .ops()
                .filter(|op| {
                    let i = ops.iter().position(|o| o.id() == op.id());
                    i.is_none_or(|i| !in_place[i])
                })
                .collect();
            (!missing.is_empty()).then_some((d, missing))
        })
        .collect())
}

/// Restores online, with the same engine and pre-flight as a pending version, what
/// [`drifted`] finds. What cannot be restored (an object of another shape, rows the object
/// would refuse, a lock not had) is a warning: the versions are applied, and `check` exits 6
/// (or 3) until someone fixes it.
fn restore_drift(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    status: &Status,
    report: &mut MigrateReport,
) -> Result<()> {
    let drifted = drifted(main.client(), &settings.schema, status)?;
    if drifted.is_empty() {
        return Ok(());
    }
    for (d, ops) in &drifted {
        for op in ops {
            log::warn!(
                "drift: {} {} on {} (version {}, applied) is not in place as declared: restoring it online",
                op.kind(),
                op.id(),
                op.table(),
                d.version
            );
        }
    }
    let batch = Batch {
        versions: Vec::new(),
        plans: drifted.iter().map(|(d, _)| *d).collect(),
    };
    match run_online(settings, main, lock, &batch) {
        Ok((resolved, reports)) => {
            report.orphans_resolved.extend(resolved);
            for r in reports.iter().filter(|r| !r.actions.is_empty()) {
                log::info!("drift: restored {} {} on {}", r.kind, r.id, r.table);
            }
            report.restored = reports;
            Ok(())
        }
        Err(e)
            if matches!(e, Error::Interrupted { .. }) || settings.interrupt.reason().is_some() =>
        {
            Err(e)
        }
        Err(e) => {
            log::warn!("drift: not restored: {e}; `check` exits 6 (or 3) until it is");
            report.drift_error = Some(e.to_string());
            Ok(())
        }
    }
}

/// The pending versions: the first batch's checks and pre-flight before any change (a refusal
/// then changes nothing, not even a baseline), the baseline, then each batch.
fn apply_pending(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    pending: &[Entry],
    report: &mut MigrateReport,
) -> Result<()> {
    let batches = batches(pending);
    let mut prechecked = false;
    if let Some(first) = batches.first().filter(|b| b.online()) {
        if tables_exist(main.client(), &settings.schema, first)? {
            report.orphans_resolved = check_and_preflight(settings, main.client(), first)?;
            prechecked = true;
        }
    }
    if let Some(b) = report.baseline {
        embedded::runner()
            .set_target(Target::FakeVersion(b))
            .run(main.client())
            .map_err(Error::from)?;
        log::info!("recorded the versions up to {b} as applied (baseline), without running them");
        report.to = Some(b);
    }
    for (i, batch) in batches.iter().enumerate() {
        if batch.online() {
            if !(i == 0 && prechecked) {
                let resolved = check_and_preflight(settings, main.client(), batch)?;
                report.orphans_resolved.extend(resolved);
            }
            report
                .online
                .extend(run_phases(settings, main, lock, batch)?);
        }
        let policy = LockPolicy::of(settings);
        for entry in &batch.versions {
            apply_one(main, lock.watch(), &policy, entry)?;
            report.applied.push(entry.clone());
            report.to = Some(entry.version);
        }
    }
    Ok(())
}

/// A batch's checks and pre-flight, then its online phases.
fn run_online(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    batch: &Batch,
) -> Result<(Vec<Resolved>, Vec<OpReport>)> {
    let resolved = check_and_preflight(settings, main.client(), batch)?;
    Ok((resolved, run_phases(settings, main, lock, batch)?))
}

fn run_phases(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    batch: &Batch,
) -> Result<Vec<OpReport>> {
    let mut out = Vec::new();
    for k in 0..batch.phases() {
        let plans = engine::plan(main.client(), &settings.schema, &batch.phase(k))?;
        out.extend(engine::run(settings, main, lock.watch(), plans)?);
    }
    Ok(out)
}

/// The monthly window, at the end of a run that leaves the latest version. Its failures are
/// warnings (see [`MigrateReport::partitions_error`]), but an interruption stops the run.
fn keep_window(
    settings: &Settings,
    main: &mut Conn,
    lock: &MigrationLock,
    report: &mut MigrateReport,
) -> Result<()> {
    match crate::partitions::maintain(settings, main, lock.watch()) {
        Ok(p) => {
            if let Err(e) = p.clone().into_result() {
                log::warn!("the migrations are applied, but not every month ahead was created: {e} (check exits 5 until then)");
                report.partitions_error = Some(e.to_string());
            }
            report.partitions = Some(p);
        }
        Err(e @ Error::Interrupted { .. }) => return Err(e),
        Err(e) if settings.interrupt.reason().is_some() => return Err(e),
        Err(e) => {
            log::warn!("the migrations are applied, but the monthly partitions ahead were not created: {e}; run `meta-chat-migrate partitions` (check exits 5 until then)");
            report.partitions_error = Some(e.to_string());
        }
    }
    Ok(())
}

/// Applies one version with refinery: its SQL and its history row in one transaction, retried
/// when it hits `lock_timeout`.
fn apply_one(
    main: &mut Conn,
    watch: &BlockerWatch,
    policy: &LockPolicy,
    entry: &Entry,
) -> Result<()> {
    let step = format!("migration {} ({})", entry.version, entry.name);
    log::info!("applying {step}");
    let pid = main.pid();
    policy.run(&step, pid, watch, |_| {
        embedded::runner()
            .set_target(Target::Version(entry.version))
            .set_grouped(true)
            .run(main.client())
            .map(|_| ())
            .map_err(Error::from)
    })
}
