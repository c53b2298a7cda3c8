//! The online engine: versions declare operations in their migration files ([`ops`]); the
//! engine plans each from the catalog (only what is not done), refuses conflicts before anything
//! changes, runs the steps that must come first on the main connection, the per-partition items
//! of all operations of a phase on one queue worked by `--jobs` connections (largest partitions
//! first, by the catalog's estimates), then the parent steps, and finally re-plans every
//! operation to check that nothing is left. There is no progress table: a run killed at any
//! point is finished by the next, which plans from what the catalog holds.
//!
//! Every statement goes through [`step::StepCtx::run`] and its two lock rules. Operation kinds
//! are one file each under [`ops`]; the monthly partitions are [`partitions`].

pub mod ops;
pub mod partitions;
pub(crate) mod pool;
pub mod step;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::catalog::Reader;
use serde::Serialize;

use crate::catalog::{self, Caps, Node};
use crate::config::Settings;
use crate::db::{BlockerWatch, Conn, LockPolicy};
use crate::error::{Error, Result};
pub use crate::findings::Conflict;
use crate::sql::{choose_name, Relation};
use ops::Operation;
use step::StepCtx;
pub use step::{Action, Step};

/// One leaf (or plain table) and the steps it still needs.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    /// Its oid in `pg_class` (not serialized).
    #[serde(skip)]
    pub oid: u32,
    /// The leaf partition (or the plain table).
    pub relation: Relation,
    /// Its rows as the catalog estimates them (`reltuples`; 0 if never analyzed).
    pub estimated_rows: i64,
    /// The steps it still needs, in the order they run.
    pub steps: Vec<Step>,
}

/// What an operation still needs, planned from the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct OpPlan {
    #[serde(skip)]
    pub(crate) op: &'static dyn Operation,
    /// The operation's stable id: the constraint or index name.
    pub id: &'static str,
    /// `foreign key`, `index`, `unique index` or `check`.
    pub kind: &'static str,
    /// The table it is on (the root of its partition tree).
    pub table: Relation,
    /// Whether that table is partitioned.
    pub partitioned: bool,
    /// Leaf partitions (1 for a table that is not partitioned).
    pub partitions: usize,
    /// Rows of all its leaves, as the catalog estimates them (`reltuples`).
    pub estimated_rows: i64,
    /// Leaves with nothing left to do.
    pub leaves_done: usize,
    /// Steps on the main connection before the per-partition items (e.g. the parent's index
    /// `ON ONLY`, or the parent's constraint NOT VALID).
    pub before: Vec<Step>,
    /// The leaves that still need steps, worked by the `--jobs` connections.
    pub items: Vec<Item>,
    /// Steps on the main connection after the items (e.g. the parent's adoption or validation).
    pub after: Vec<Step>,
    /// Objects of a declared name that are not what is declared: the run refuses before any
    /// change while there is one.
    pub conflicts: Vec<Conflict>,
    /// The constraint goes on the parent NOT VALID first (PostgreSQL 18+, fresh start).
    pub parent_not_valid: bool,
}

impl OpPlan {
    pub(crate) fn new(op: &'static dyn Operation, nodes: &[Node]) -> OpPlan {
        let leaves: Vec<&Node> = nodes.iter().filter(|n| n.is_leaf()).collect();
        OpPlan {
            op,
            id: op.id(),
            kind: op.kind(),
            table: nodes[0].rel.clone(),
            partitioned: !nodes[0].is_leaf(),
            partitions: leaves.len(),
            estimated_rows: leaves.iter().map(|n| n.estimated_rows).sum(),
            leaves_done: 0,
            before: Vec::new(),
            items: Vec::new(),
            after: Vec::new(),
            conflicts: Vec::new(),
            parent_not_valid: false,
        }
    }

    pub(crate) fn push_item(&mut self, node: &Node, steps: Vec<Step>) {
        if steps.is_empty() {
            self.leaves_done += 1;
        } else {
            self.items.push(Item {
                oid: node.oid,
                relation: node.rel.clone(),
                estimated_rows: node.estimated_rows,
                steps,
            });
        }
    }

    /// `valid`, `CONFLICT`, or what the kind calls what is left (`MISSING`, `NOT VALID`,
    /// `INVALID`, `INCOMPLETE`).
    pub fn state(&self) -> &'static str {
        if !self.conflicts.is_empty() {
            "CONFLICT"
        } else if self.is_done() {
            "valid"
        } else {
            self.op.state(self)
        }
    }

    /// Whether nothing is left: no conflict and no step to run.
    pub fn is_done(&self) -> bool {
        self.conflicts.is_empty()
            && self.before.is_empty()
            && self.items.is_empty()
            && self.after.is_empty()
    }

    /// Every step left: `before`, then the items' steps, then `after`.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.before
            .iter()
            .chain(self.items.iter().flat_map(|i| &i.steps))
            .chain(&self.after)
    }
}

/// Planning state shared by the operations of one plan: the schema, what the server can do, and
/// the relation names taken (including those this plan chose).
pub struct Planner {
    pub schema: String,
    pub caps: Caps,
    taken: BTreeSet<(String, String)>,
    loaded: BTreeSet<String>,
}

impl Planner {
    pub fn new(c: &mut dyn Reader, schema: &str) -> Result<Planner> {
        Ok(Planner {
            schema: schema.to_string(),
            caps: Caps::read(c)?,
            taken: BTreeSet::new(),
            loaded: BTreeSet::new(),
        })
    }

    fn load_names(&mut self, c: &mut dyn Reader, nodes: &[Node]) -> Result<()> {
        let missing: Vec<String> = nodes
            .iter()
            .map(|n| n.rel.schema.as_str().to_string())
            .filter(|s| !self.loaded.contains(s))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            self.taken.extend(catalog::names_in(c, &missing)?);
            self.loaded.extend(missing);
        }
        Ok(())
    }

    /// A free name on `node` from `base` (`(name1, name2, label)` of PostgreSQL's
    /// `makeObjectName`), chosen as PostgreSQL chooses it; `reuse` is a name this plan frees
    /// first (an INVALID leftover it drops).
    pub(crate) fn choose_name(
        &mut self,
        base: (String, String, &'static str),
        node: &Node,
        reuse: Option<&Relation>,
    ) -> Relation {
        let schema = node.rel.schema.as_str().to_string();
        if let Some(r) = reuse {
            return r.clone();
        }
        let (table, columns, label) = base;
        let name = choose_name(&table, &columns, label, |n| {
            self.taken.contains(&(schema.clone(), n.to_string()))
        });
        self.taken.insert((schema.clone(), name.clone()));
        Relation::new(schema, name)
    }
}

/// Plans one operation. Read-only.
pub(crate) fn plan_op(
    c: &mut dyn Reader,
    planner: &mut Planner,
    op: &'static dyn Operation,
) -> Result<OpPlan> {
    let table = Relation::new(&planner.schema, op.table());
    let nodes = catalog::tree(c, &table)?.ok_or_else(|| Error::MissingTable {
        table: table.plain(),
        needed_by: op.id().to_string(),
    })?;
    planner.load_names(c, &nodes)?;
    op.plan(c, planner, &nodes)
}

/// Plans every operation of `ops` with one planner. Read-only.
pub(crate) fn plan(
    c: &mut dyn Reader,
    schema: &str,
    ops: &[&'static dyn Operation],
) -> Result<Vec<OpPlan>> {
    let mut planner = Planner::new(c, schema)?;
    ops.iter().map(|op| plan_op(c, &mut planner, *op)).collect()
}

/// The plans of one declaration's operations, read from the catalog (read-only), for the
/// tests' lifecycle of an operation kind. Not part of the library's API.
#[cfg(feature = "internals")]
pub fn plan_declaration(
    c: &mut dyn Reader,
    schema: &str,
    d: &'static ops::Declaration,
) -> Result<Vec<OpPlan>> {
    let ops: Vec<&'static dyn Operation> = d.ops().collect();
    plan(c, schema, &ops)
}

/// Refuses, naming every one, when an object of a declared name is not what is declared.
pub(crate) fn ensure_no_conflicts(plans: &[OpPlan]) -> Result<()> {
    let conflicts: Vec<Conflict> = plans.iter().flat_map(|p| p.conflicts.clone()).collect();
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(Error::Conflict { conflicts })
}

/// What one operation did.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// The operation's stable id: the constraint or index name.
    pub id: String,
    /// `foreign key`, `index`, `unique index` or `check`.
    pub kind: String,
    /// The table it is on, as `schema.name`.
    pub table: String,
    /// Leaf partitions (1 for a table that is not partitioned).
    pub partitions: usize,
    /// Rows of all its leaves when it was planned, as the catalog estimated them (`reltuples`).
    pub estimated_rows: i64,
    /// Leaves that needed nothing (a resumed run).
    pub already_done: usize,
    /// Whether the constraint went on the parent NOT VALID first (PostgreSQL 18+, fresh start).
    pub parent_not_valid: bool,
    /// Steps run, by action (`add-not-valid`, `validate`, `build`, ...).
    pub actions: BTreeMap<String, usize>,
}

impl OpReport {
    /// How many steps of `action` ran.
    pub fn count(&self, action: Action) -> usize {
        self.actions.get(action.name()).copied().unwrap_or(0)
    }
}

/// The leaves of a phase, merged across operations: one queue, a leaf's steps together, the
/// largest first (so that the workers do not end on one big partition while the others idle).
struct Merged {
    relation: Relation,
    estimated_rows: i64,
    steps: Vec<(usize, Step)>,
}

fn merge(plans: &[OpPlan]) -> Vec<Merged> {
    let mut out: Vec<Merged> = Vec::new();
    let mut by_oid: BTreeMap<u32, usize> = BTreeMap::new();
    for (p, plan) in plans.iter().enumerate() {
        for item in &plan.items {
            let at = *by_oid.entry(item.oid).or_insert_with(|| {
                out.push(Merged {
                    relation: item.relation.clone(),
                    estimated_rows: item.estimated_rows,
                    steps: Vec::new(),
                });
                out.len() - 1
            });
            out[at]
                .steps
                .extend(item.steps.iter().map(|s| (p, s.clone())));
        }
    }
    // Largest first; the sort is stable, so equal estimates keep the plans' order.
    out.sort_by_key(|m| std::cmp::Reverse(m.estimated_rows));
    out
}

/// Runs a phase's plans (see the module docs) and checks the end state.
pub(crate) fn run(
    settings: &Settings,
    main: &mut Conn,
    watch: &BlockerWatch,
    plans: Vec<OpPlan>,
) -> Result<Vec<OpReport>> {
    ensure_no_conflicts(&plans)?;
    let started = Instant::now();
    let phase = Phase {
        settings,
        watch,
        policy: LockPolicy::of(settings),
        counts: Mutex::new(vec![BTreeMap::new(); plans.len()]),
        progress: Mutex::new(started),
        plans: &plans,
    };
    let mut spacing = Spacing::default();
    for plan in &plans {
        announce(plan, settings.jobs);
    }
    phase.on_main(main, |p| &p.before, &mut spacing)?;
    phase.items(main)?;
    phase.on_main(main, |p| &p.after, &mut spacing)?;
    let reports = finish(
        main,
        settings,
        &plans,
        started,
        phase.counts.into_inner().unwrap(),
    )?;
    log::debug!(
        "online work of this phase finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(reports)
}

/// A phase while it runs: its plans, how to run steps, and what ran, per plan and action.
struct Phase<'a> {
    settings: &'a Settings,
    watch: &'a BlockerWatch,
    policy: LockPolicy,
    plans: &'a [OpPlan],
    counts: Mutex<Vec<BTreeMap<String, usize>>>,
    /// When a partition's line was last logged at `info` (the others go to `debug`).
    progress: Mutex<Instant>,
}

impl Phase<'_> {
    fn tally(&self, p: usize, a: Action) {
        *self.counts.lock().unwrap()[p]
            .entry(a.name().into())
            .or_default() += 1;
    }

    /// `info` for a partition finished `--progress-every` after the last such line, so that a
    /// long phase shows it is moving; `debug` for the others.
    fn level_of_progress(&self) -> log::Level {
        let mut last = self.progress.lock().unwrap();
        if last.elapsed() < self.settings.progress_every {
            return log::Level::Debug;
        }
        *last = Instant::now();
        log::Level::Info
    }

    fn ctx(&self, pid: i32) -> StepCtx<'_> {
        StepCtx {
            pid,
            watch: self.watch,
            policy: &self.policy,
        }
    }

    /// The steps `which` picks of every plan, in order, on the main connection.
    fn on_main(
        &self,
        main: &mut Conn,
        which: impl Fn(&OpPlan) -> &Vec<Step>,
        spacing: &mut Spacing,
    ) -> Result<()> {
        let ctx = self.ctx(main.pid());
        for (p, plan) in self.plans.iter().enumerate() {
            for s in which(plan) {
                spacing.before(s, &self.policy)?;
                ctx.run(main.client(), s)?;
                self.tally(p, s.action);
            }
        }
        Ok(())
    }

    /// Every partition's steps, merged across the plans, on the pool.
    fn items(&self, main: &mut Conn) -> Result<()> {
        let items = merge(self.plans);
        let done = AtomicUsize::new(0);
        pool::for_each(self.settings, main, &items, |client, pid, item| {
            let ctx = self.ctx(pid);
            let t = Instant::now();
            for (p, s) in &item.steps {
                ctx.run(client, s).map_err(|e| explain_step_error(e, s))?;
                self.tally(*p, s.action);
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            log::log!(
                self.level_of_progress(),
                "{} ({n} of {}), ~{} rows: {} in {:.2}s",
                item.relation.plain(),
                items.len(),
                item.estimated_rows,
                describe_steps(self.plans, &item.steps),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        })
        .inspect_err(|_| {
            log::error!("the online work stopped at the first error; the next run resumes it")
        })
    }
}

/// A pause between two steps of the main connection whose locks block writes: the writes that
/// queued behind the first get through before the second takes its locks, so that no insert
/// waits for two of them in a row (the parent adoptions of messages and api_logs both take
/// ACCESS EXCLUSIVE on tenants, which every insert's key check needs).
#[derive(Default)]
struct Spacing {
    last: Option<Instant>,
}

const SPACING: std::time::Duration = std::time::Duration::from_millis(150);

impl Spacing {
    fn before(&mut self, step: &Step, policy: &LockPolicy) -> Result<()> {
        if !step.bounded {
            return Ok(());
        }
        if let Some(rest) = self.last.and_then(|t| SPACING.checked_sub(t.elapsed())) {
            policy.interrupt.sleep(rest)?;
        }
        self.last = Some(Instant::now());
        Ok(())
    }
}

/// `messages_tenant_id_fkey add-not-valid+validate, messages_tenant_id_idx build+attach`.
fn describe_steps(plans: &[OpPlan], steps: &[(usize, Step)]) -> String {
    let mut parts: Vec<(usize, Vec<&str>)> = Vec::new();
    for (p, s) in steps {
        match parts.last_mut() {
            Some((q, actions)) if q == p => actions.push(s.action.name()),
            _ => parts.push((*p, vec![s.action.name()])),
        }
    }
    parts
        .iter()
        .map(|(p, a)| format!("{} {}", plans[*p].id, a.join("+")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn announce(plan: &OpPlan, jobs: usize) {
    if plan.is_done() {
        log::debug!(
            "{} {} on {}: already in place",
            plan.kind,
            plan.id,
            plan.table.plain()
        );
        return;
    }
    log::debug!(
        "{} {} on {}: {} of {} partition(s) to do, ~{} rows, {} job(s){}",
        plan.kind,
        plan.id,
        plan.table.plain(),
        plan.items.len(),
        plan.partitions,
        plan.estimated_rows,
        jobs,
        if plan.parent_not_valid {
            "; NOT VALID on the parent first (PostgreSQL 18+)"
        } else {
            ""
        }
    );
}

/// A validation that finds violating rows after the pre-flight: say so and how to go on.
fn explain_step_error(err: Error, step: &Step) -> Error {
    if step.action == Action::Validate && err.sqlstate() == Some("23503") {
        return Error::NewViolations {
            step: step.id.to_string(),
            cause: err.to_string(),
        };
    }
    err
}

/// Re-plans every operation: nothing may be left (a partition added during the run, say).
fn finish(
    main: &mut Conn,
    settings: &Settings,
    plans: &[OpPlan],
    started: Instant,
    counts: Vec<BTreeMap<String, usize>>,
) -> Result<Vec<OpReport>> {
    let ops: Vec<&'static dyn Operation> = plans.iter().map(|p| p.op).collect();
    let after = plan(main.client(), &settings.schema, &ops)?;
    for (before, now) in plans.iter().zip(&after) {
        if !now.is_done() {
            return Err(Error::NotInPlace {
                op: now.id.to_string(),
                remaining: now
                    .steps()
                    .map(|s| s.id.to_string())
                    .chain(
                        now.conflicts
                            .iter()
                            .map(|c| format!("{}: {}", c.object, c.found)),
                    )
                    .take(5)
                    .collect(),
            });
        }
        log::info!(
            "{} {} on {}: in place ({} partition(s), {} done by this run{}, ~{} rows) in {:.1}s",
            before.kind,
            before.id,
            before.table.plain(),
            before.partitions,
            before.items.len(),
            if before.parent_not_valid {
                ", NOT VALID on the parent first"
            } else {
                ""
            },
            before.estimated_rows,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(plans
        .iter()
        .zip(counts)
        .map(|(p, actions)| OpReport {
            id: p.id.to_string(),
            kind: p.kind.to_string(),
            table: p.table.plain(),
            partitions: p.partitions,
            estimated_rows: p.estimated_rows,
            already_done: p.leaves_done,
            parent_not_valid: p.parent_not_valid,
            actions,
        })
        .collect())
}
