//! `check`: the spec's check_orphaned_data, for every declared rule and operation. Rows each
//! pre-flight rule would refuse, the state of every operation the migration files declare (by
//! the engine's own planning, as `migrate` plans), drift (a declared
//! object of an applied version that is missing, invalid or of another shape), and the
//! partition layout and windows. Read-only.

use serde::Serialize;

use crate::catalog::{self, Reader};
use crate::embedded::{DECLARATIONS, MONTHLY, TABLES};
use crate::engine::ops::{Declaration, Operation, Rule};
use crate::engine::partitions::{self, Window};
use crate::engine::{self, OpPlan};
use crate::error::{Error, Result};
use crate::findings::RuleCount;
use crate::history;
use crate::preflight;
use crate::sql::Relation;

/// The state of one declared operation.
#[derive(Clone, Debug, Serialize)]
pub struct OpStatus {
    /// The operation's stable id: the constraint or index name.
    pub id: String,
    /// `foreign key`, `index`, `unique index` or `check`.
    pub kind: String,
    /// The table it is on, without its schema.
    pub table: String,
    /// The version that declares it.
    pub version: i64,
    /// Whether that version is applied: then anything but `valid` is drift.
    pub applied: bool,
    /// `valid`, `MISSING`, `NOT VALID`, `INVALID`, `INCOMPLETE` or `CONFLICT`.
    pub state: String,
    /// Leaf partitions of the table (1 for a table that is not partitioned).
    pub partitions: usize,
    /// Partitions (or the table) with nothing left to do.
    pub partitions_done: usize,
    /// Everything that differs from the declaration.
    pub problems: Vec<String>,
}

impl OpStatus {
    /// A declared object of an applied version that is not in place as declared.
    pub fn is_drift(&self) -> bool {
        self.applied && self.state != "valid"
    }
}

/// How one monthly table is partitioned, as the catalog holds it.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionLayout {
    /// The table, without its schema.
    pub table: String,
    /// Whether it is partitioned; if not, it has no partitions and no DEFAULT partition.
    pub partitioned: bool,
    /// Its direct partitions, the DEFAULT one included.
    pub partitions: usize,
    /// The first of its ranged (not DEFAULT) partitions by name; `None` if it has none.
    pub first: Option<String>,
    /// The last of its ranged (not DEFAULT) partitions by name; `None` if it has none.
    pub last: Option<String>,
    /// The name of its DEFAULT partition; `None` if it has none.
    pub default_partition: Option<String>,
    /// Rows in the DEFAULT partition: rows outside every monthly range.
    pub default_rows: i64,
}

/// What `check` found: rows the pre-flight rules would refuse, the state of every declared
/// operation, and the monthly tables' layout and windows.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The schema checked.
    pub schema: String,
    /// Rows each declared pre-flight rule would refuse, in declaration order.
    pub rules: Vec<RuleCount>,
    /// Of those, rows whose tenant does not exist: messages, then api_logs.
    pub orphans: Vec<RuleCount>,
    /// Of those, messages whose tenant is not their conversation's.
    pub cross_tenant: Vec<RuleCount>,
    /// Every operation the migration files declare, in declaration order.
    pub operations: Vec<OpStatus>,
    /// Each monthly table's partitioning.
    pub layout: Vec<PartitionLayout>,
    /// The months each monthly table covers, how far ahead, and what DEFAULT holds (partitioned
    /// tables only).
    pub windows: Vec<Window>,
    /// Helper CHECKs of the runner left behind: an exclusion CHECK on a DEFAULT partition refuses
    /// the application's inserts of its month. `partitions` drops them.
    pub helper_checks: Vec<partitions::HelperCheck>,
    /// The months a window must reach ahead (`--premake`).
    pub premake: u32,
}

impl CheckReport {
    /// Windows that reach fewer than `premake` months ahead or lack a month on the way, whose
    /// DEFAULT holds rows, or with a helper CHECK left behind.
    pub fn window_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for w in &self.windows {
            if w.ahead < self.premake as i32 {
                out.push(format!(
                    "{} reaches {} month(s) ahead of {}, fewer than {}: run `meta-chat-migrate partitions`",
                    w.table.plain(),
                    w.ahead,
                    w.current,
                    self.premake
                ));
            }
            let gaps = w.missing_ahead(self.premake);
            if !gaps.is_empty() {
                out.push(format!(
                    "{} has no partition for {} (within --premake {} of {}): run `meta-chat-migrate partitions`",
                    w.table.plain(),
                    gaps.join(", "),
                    self.premake,
                    w.current
                ));
            }
            if w.rows_in_default() > 0 {
                out.push(format!(
                    "{} holds {} rows in its DEFAULT partition",
                    w.table.plain(),
                    w.rows_in_default()
                ));
            }
        }
        out.extend(self.helper_checks.iter().map(|h| {
            format!("helper CHECK {h} was left by an interrupted run: run `meta-chat-migrate partitions`")
        }));
        out
    }

    /// The declared objects of applied versions that are not in place as declared.
    pub fn drift(&self) -> Vec<&OpStatus> {
        self.operations.iter().filter(|o| o.is_drift()).collect()
    }

    /// 3 when an operation would refuse rows, else 6 on drift, else 5 when a window falls
    /// short, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.orphan_total() > 0 {
            crate::error::exit::ORPHANS
        } else if !self.drift().is_empty() {
            crate::error::exit::DRIFT
        } else if !self.window_problems().is_empty() {
            crate::error::exit::WINDOW
        } else {
            crate::error::exit::SUCCESS
        }
    }

    /// Rows any pre-flight rule would refuse.
    pub fn orphan_total(&self) -> i64 {
        self.rules.iter().map(|t| t.count).sum()
    }

    /// The report as text, one line each, as `meta-chat-migrate check` prints it without
    /// `--json`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.rules {
            out.push(format!(
                "{:<12} {:<9} {:>10}{}",
                t.label,
                t.table,
                t.count,
                if t.sample_ids.is_empty() {
                    String::new()
                } else {
                    format!("  sample ids: {}", t.sample_ids.join(", "))
                }
            ));
        }
        for o in &self.operations {
            out.push(format!(
                "{:<12} {:<13} {} {} ({} of {} partition(s) done){}",
                o.kind,
                o.table,
                o.id,
                o.state,
                o.partitions_done,
                o.partitions,
                if o.is_drift() {
                    format!(
                        ": DRIFT (version {} is applied): `meta-chat-migrate migrate` restores it",
                        o.version
                    )
                } else {
                    String::new()
                }
            ));
            for p in &o.problems {
                out.push(format!("{:<12} {:<13} - {p}", "", o.table));
            }
        }
        for l in &self.layout {
            if l.partitioned {
                out.push(format!(
                    "{:<12} {:<13} {} partitions ({} .. {}), default partition {} with {} rows",
                    "layout",
                    l.table,
                    l.partitions,
                    l.first.as_deref().unwrap_or("-"),
                    l.last.as_deref().unwrap_or("-"),
                    l.default_partition.as_deref().unwrap_or("(none)"),
                    l.default_rows
                ));
            } else {
                out.push(format!("{:<12} {:<13} not partitioned", "layout", l.table));
            }
        }
        for w in &self.windows {
            out.extend(crate::partitions::window_lines(w, self.premake));
        }
        out.extend(
            self.window_problems()
                .into_iter()
                .filter(|p| !p.contains("rows in its DEFAULT") && !p.contains("month(s) ahead of"))
                .map(|p| format!("{:<12} {p}", "window")),
        );
        out
    }
}

/// What a planned operation still lacks, as lines.
pub(crate) fn problems(plan: &OpPlan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .conflicts
        .iter()
        .map(|c| format!("{} is {}, expected {}", c.object, c.found, c.expected))
        .collect();
    if !plan.items.is_empty() {
        let names: Vec<String> = plan
            .items
            .iter()
            .take(5)
            .map(|i| i.relation.plain())
            .collect();
        out.push(format!(
            "{} of {} partition(s) lack it: {}{}",
            plan.items.len(),
            plan.partitions,
            names.join(", "),
            if plan.items.len() > 5 { ", ..." } else { "" }
        ));
    }
    out.extend(
        plan.before
            .iter()
            .chain(&plan.after)
            .map(|s| format!("still to do: {}", s.id)),
    );
    out
}

/// Every declared rule, each once, in declaration order.
fn declared_rules() -> Vec<&'static Rule> {
    let mut out: Vec<&'static Rule> = Vec::new();
    for d in DECLARATIONS {
        for r in d.rules {
            if !out.contains(r) {
                out.push(r);
            }
        }
    }
    out
}

/// The state of every declared operation, with whether its version is applied.
fn operations(c: &mut dyn Reader, schema: &str) -> Result<Vec<OpStatus>> {
    let status = history::status(c)?;
    statuses(c, schema, DECLARATIONS, |v| status.is_applied(v))
}

/// The state of each operation of `declarations`; `applied` says whether a version is.
fn statuses(
    c: &mut dyn Reader,
    schema: &str,
    declarations: &[&'static Declaration],
    applied: impl Fn(i64) -> bool,
) -> Result<Vec<OpStatus>> {
    let declared: Vec<(i64, &'static dyn Operation)> = declarations
        .iter()
        .flat_map(|d| d.ops().map(move |op| (d.version, op)))
        .collect();
    let ops: Vec<&'static dyn Operation> = declared.iter().map(|(_, op)| *op).collect();
    Ok(engine::plan(c, schema, &ops)?
        .iter()
        .zip(&declared)
        .map(|(p, (version, _))| OpStatus {
            id: p.id.to_string(),
            kind: p.kind.to_string(),
            table: p.table.name.as_str().to_string(),
            version: *version,
            applied: applied(*version),
            state: p.state().to_string(),
            partitions: p.partitions,
            partitions_done: p.leaves_done,
            problems: problems(p),
        })
        .collect())
}

/// What `check` would say of each operation of one declaration (its version counted as not
/// applied), for the tests' lifecycle of an operation kind. Not part of the library's API.
#[cfg(feature = "internals")]
pub fn declaration_status(
    c: &mut dyn Reader,
    schema: &str,
    d: &'static Declaration,
) -> Result<Vec<OpStatus>> {
    statuses(c, schema, &[d], |_| false)
}

pub fn check(
    c: &mut dyn Reader,
    schema: &str,
    premake: u32,
    as_of: Option<&str>,
) -> Result<CheckReport> {
    for t in TABLES {
        if !catalog::table_exists(c, &Relation::new(schema, t))? {
            return Err(Error::MissingTable {
                table: format!("{schema}.{t}"),
                needed_by: "check".into(),
            });
        }
    }
    let mut rules = Vec::new();
    for rule in declared_rules() {
        rules.push(preflight::count(c, rule, schema)?);
    }
    let mut report = CheckReport {
        schema: schema.to_string(),
        orphans: rules
            .iter()
            .filter(|r| r.label == "orphans")
            .cloned()
            .collect(),
        cross_tenant: rules
            .iter()
            .filter(|r| r.label == "cross-tenant")
            .cloned()
            .collect(),
        rules,
        operations: operations(c, schema)?,
        layout: Vec::new(),
        windows: Vec::new(),
        helper_checks: Vec::new(),
        premake,
    };
    for t in MONTHLY {
        let table = Relation::new(schema, t);
        let l = layout(c, &table)?;
        // A table not partitioned yet (a database before 20240520120000) has no window.
        if l.partitioned {
            let w = partitions::window(c, &table, premake, as_of)?;
            report
                .helper_checks
                .extend(partitions::helper_checks(c, &w)?);
            report.windows.push(w);
        }
        report.layout.push(l);
    }
    Ok(report)
}

fn layout(c: &mut dyn Reader, table: &Relation) -> Result<PartitionLayout> {
    let nodes = catalog::tree(c, table)?.unwrap_or_default();
    let parts: Vec<&catalog::Node> = nodes.iter().filter(|n| n.level == 1).collect();
    let default = parts.iter().find(|n| n.is_default());
    let ranged: Vec<&&catalog::Node> = parts.iter().filter(|n| !n.is_default()).collect();
    let default_rows = match default {
        Some(d) => c
            .query_one(&format!("SELECT count(*) FROM {}", d.rel), &[])
            .map_err(|e| Error::db(format!("counting rows of {}", d.rel.plain()), e))?
            .get(0),
        None => 0,
    };
    Ok(PartitionLayout {
        table: table.name.as_str().to_string(),
        partitioned: nodes.first().is_some_and(|n| !n.is_leaf()),
        partitions: parts.len(),
        first: ranged.first().map(|n| n.rel.name.as_str().to_string()),
        last: ranged.last().map(|n| n.rel.name.as_str().to_string()),
        default_partition: default.map(|n| n.rel.name.as_str().to_string()),
        default_rows,
    })
}
