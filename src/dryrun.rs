//! `migrate --dry-run`: what `migrate` would do, read from the catalog and printed before
//! anything runs. The pending versions; per operation and table the partitions, estimated rows,
//! what is already done (a resumed run) and what remains, step by step with the lock each takes
//! and whether `--lock-timeout` bounds it; and the rows each pre-flight rule would refuse.
//!
//! Drift (objects applied versions declare that the catalog lacks) comes first, planned the same
//! way, as `migrate` restores it first. Then the partition work `migrate` does at the end
//! (`crate::partitions::plan_on`): each month it would create, the rows it would move and the
//! locks, or why it would not.
//!
//! It connects, reads and disconnects: no lock (so it never waits behind a running migration),
//! no session state left, and no history table created on an empty database.

use serde::Serialize;

use crate::config::{DbTarget, Settings};
use crate::embedded;
use crate::engine::{self, Action, Item, OpPlan, Step};
use crate::error::Result;
use crate::findings::RuleCount;
use crate::history::{self, Entry};
use crate::migrate::{self, Batch};
use crate::partitions::PartitionsPlan;
use crate::preflight;

/// One batch of consecutive versions with online work, planned.
#[derive(Clone, Debug, Serialize)]
pub struct BatchPlan {
    /// The versions of the batch, in order.
    pub versions: Vec<i64>,
    /// Rows each pre-flight rule would meet (refused under `--orphans refuse`).
    pub preflight: Vec<RuleCount>,
    /// The operations of each phase, planned.
    pub phases: Vec<Vec<OpPlan>>,
    /// Why it could not be planned yet, if so (its tables are created by an earlier version).
    pub not_planned: Option<String>,
}

/// What `migrate --dry-run` reports: what `migrate` would do, read from the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct MigratePlan {
    /// Where the run would connect.
    pub database: DbTarget,
    /// The schema it would migrate.
    pub schema: String,
    /// The version the database is at now; `None` if nothing is applied.
    pub current: Option<i64>,
    /// The version `migrate` would record as applied without running (`--baseline`), if any.
    pub baseline: Option<i64>,
    /// What applied versions declare but the catalog lacks (drift), which `migrate` would
    /// restore online first; `None` when everything is in place.
    pub drift: Option<BatchPlan>,
    /// The versions `migrate` would apply, in order (after the baseline, up to `--target`).
    pub pending: Vec<Entry>,
    /// The batches of pending versions with online work, in order.
    pub online: Vec<BatchPlan>,
    /// `--lock-timeout`, in milliseconds: what bounds each bounded step.
    pub lock_timeout_ms: u128,
    /// How many times a bounded step that hit the lock timeout would be retried.
    pub lock_retries: u32,
    /// Connections that would work the per-partition items (`--jobs`).
    pub jobs: usize,
    /// The monthly partitions `migrate` would create at its end.
    pub partitions: Option<PartitionsPlan>,
    /// Why they are not planned, when they are not.
    pub partitions_not_planned: Option<String>,
}

pub fn plan(settings: &Settings) -> Result<MigratePlan> {
    let settings = &settings.for_run();
    migrate::validate(settings)?;
    let database = settings.target()?;
    let mut conn = crate::schema::connect_platform(settings)?;
    let c = conn.client();
    let status = history::status(c)?;
    status.ensure_consistent()?;
    let (baseline, pending) = migrate::pending(settings, c, &status)?;
    let drifted = migrate::drifted(c, &settings.schema, &status)?;
    let drift = if drifted.is_empty() {
        None
    } else {
        let batch = Batch {
            versions: Vec::new(),
            plans: drifted.iter().map(|(d, _)| *d).collect(),
        };
        Some(plan_batch(c, settings, &batch)?)
    };
    let mut online = Vec::new();
    for (i, batch) in migrate::batches(&pending).iter().enumerate() {
        if !batch.online() {
            continue;
        }
        match plan_batch(c, settings, batch) {
            Ok(p) => online.push(p),
            // After versions that have not run, the catalog is not yet the one it will run on
            // (the tables are not partitioned, say): what migrate finds then decides.
            Err(e) if i > 0 => online.push(BatchPlan {
                versions: batch.versions.iter().map(|e| e.version).collect(),
                preflight: Vec::new(),
                phases: Vec::new(),
                not_planned: Some(format!(
                    "planned once the versions before it have run (on today's catalog: {e})"
                )),
            }),
            Err(e) => return Err(e),
        }
    }
    let ends_latest = settings.target.is_none_or(|t| t == embedded::latest());
    let (partitions, partitions_not_planned) = if settings.skip_partitions || !ends_latest {
        (None, Some("migrate would not keep them (--skip-partitions, or a --target before the latest version)".to_string()))
    } else if !monthly_tables_partitioned(c, &settings.schema)? {
        (None, Some("the monthly tables are not partitioned yet: they are planned once the versions before it have run".to_string()))
    } else {
        (Some(crate::partitions::plan_on(c, settings)?), None)
    };
    Ok(MigratePlan {
        database,
        schema: settings.schema.clone(),
        current: status.current(),
        baseline,
        drift,
        pending,
        online,
        lock_timeout_ms: settings.lock_timeout.as_millis(),
        lock_retries: settings.lock_retries,
        jobs: settings.jobs,
        partitions,
        partitions_not_planned,
    })
}

fn monthly_tables_partitioned(c: &mut postgres::Client, schema: &str) -> Result<bool> {
    for t in crate::embedded::MONTHLY {
        let rel = crate::sql::Relation::new(schema, t);
        if crate::catalog::relation(c, &rel)?.is_none_or(|r| r.kind != 'p') {
            return Ok(false);
        }
    }
    Ok(true)
}

fn plan_batch(c: &mut postgres::Client, settings: &Settings, batch: &Batch) -> Result<BatchPlan> {
    let versions = batch.versions.iter().map(|e| e.version).collect();
    if !migrate::tables_exist(c, &settings.schema, batch)? {
        return Ok(BatchPlan {
            versions,
            preflight: Vec::new(),
            phases: Vec::new(),
            not_planned: Some(
                "its tables do not exist yet: it is planned once the versions before it have run"
                    .into(),
            ),
        });
    }
    let rules = migrate::rules_to_run(c, &settings.schema, batch)?;
    let mut preflight = Vec::new();
    for rule in rules {
        preflight.push(preflight::count(c, rule, &settings.schema)?);
    }
    let mut phases = Vec::new();
    for k in 0..batch.phases() {
        phases.push(engine::plan(c, &settings.schema, &batch.phase(k))?);
    }
    Ok(BatchPlan {
        versions,
        preflight,
        phases,
        not_planned: None,
    })
}

impl MigratePlan {
    /// The plan as text, one line per fact.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "dry run (nothing is changed): schema {} of {}, at version {}",
            self.schema,
            self.database,
            self.current.map_or("none".into(), |v| v.to_string())
        )];
        if let Some(b) = self.baseline {
            out.push(format!(
                "would record the versions up to {b} as applied (baseline)"
            ));
        }
        if let Some(d) = &self.drift {
            self.batch_lines(d, &mut out);
        }
        if self.pending.is_empty() {
            out.push("nothing to apply".into());
        }
        for e in &self.pending {
            out.push(format!("pending {} {}", e.version, e.name));
        }
        for batch in &self.online {
            self.batch_lines(batch, &mut out);
        }
        match (&self.partitions, &self.partitions_not_planned) {
            (Some(p), _) => {
                out.push("then the monthly partitions:".into());
                out.extend(p.lines().into_iter().skip(1).map(|l| format!("  {l}")));
            }
            (None, Some(why)) => out.push(format!("monthly partitions not planned: {why}")),
            (None, None) => {}
        }
        out
    }

    fn batch_lines(&self, batch: &BatchPlan, out: &mut Vec<String>) {
        let versions: Vec<String> = batch.versions.iter().map(|v| v.to_string()).collect();
        out.push(if versions.is_empty() {
            "drift: what applied versions declare is not all in place; restored online first:"
                .to_string()
        } else {
            format!("online work before {}:", versions.join(", "))
        });
        if let Some(why) = &batch.not_planned {
            out.push(format!("  not planned: {why}"));
            return;
        }
        for r in &batch.preflight {
            out.push(format!(
                "  pre-flight {}: {} {} {}{}",
                r.rule,
                r.count,
                r.table,
                r.what,
                if r.count > 0 {
                    format!(
                        " (sample ids: {}): refused unless --orphans archive or delete",
                        r.sample_ids.join(", ")
                    )
                } else {
                    String::new()
                }
            ));
        }
        for (k, phase) in batch.phases.iter().enumerate() {
            out.push(format!("  phase {}:", k + 1));
            for op in phase {
                self.op_lines(op, out);
            }
        }
    }

    fn bound(&self, bounded: bool) -> String {
        if bounded {
            format!(
                "bounded by --lock-timeout {}ms, {} retries",
                self.lock_timeout_ms, self.lock_retries
            )
        } else {
            "waits as long as needed; never blocks reads or writes".to_string()
        }
    }

    fn op_lines(&self, op: &OpPlan, out: &mut Vec<String>) {
        out.push(format!(
            "    {} {} on {}: {} partition(s), ~{} rows; {} done, {} to do{}",
            op.kind,
            op.id,
            op.table.plain(),
            op.partitions,
            op.estimated_rows,
            op.leaves_done,
            op.items.len(),
            if op.is_done() { " (in place)" } else { "" }
        ));
        for c in &op.conflicts {
            out.push(format!(
                "      CONFLICT: {} is {}, expected {}",
                c.object, c.found, c.expected
            ));
        }
        self.step_lines(&format!("first, on {}", op.table.plain()), &op.before, out);
        for items in group(&op.items) {
            let mut names: Vec<String> = items
                .iter()
                .take(6)
                .map(|i| format!("{} (~{} rows)", i.relation.plain(), i.estimated_rows))
                .collect();
            if items.len() > 6 {
                names.push(format!("and {} more", items.len() - 6));
            }
            let what = if op.partitioned {
                "partition(s)"
            } else {
                "table"
            };
            out.push(format!(
                "      {} {what}: {}",
                items.len(),
                names.join(", ")
            ));
            // The first item's steps stand for the group, its relation named generically.
            let first = items[0];
            let generic: Vec<Step> = first
                .steps
                .iter()
                .map(|s| {
                    let mut g = s.clone();
                    g.locks = g.locks.replace(&first.relation.plain(), "<partition>");
                    g
                })
                .collect();
            self.step_lines("each", &generic, out);
        }
        self.step_lines(&format!("then, on {}", op.table.plain()), &op.after, out);
    }

    fn step_lines(&self, label: &str, steps: &[Step], out: &mut Vec<String>) {
        if steps.is_empty() {
            return;
        }
        out.push(format!("      {label}:"));
        for s in steps {
            out.push(format!(
                "        {}: {} [{}]",
                s.action.name(),
                s.locks,
                self.bound(s.bounded)
            ));
        }
    }
}

/// Items with the same sequence of step actions, in order of first appearance.
fn group(items: &[Item]) -> Vec<Vec<&Item>> {
    let mut groups: Vec<(Vec<Action>, Vec<&Item>)> = Vec::new();
    for item in items {
        let sig: Vec<Action> = item.steps.iter().map(|s| s.action).collect();
        match groups.iter_mut().find(|(g, _)| *g == sig) {
            Some((_, members)) => members.push(item),
            None => groups.push((sig, vec![item])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}
