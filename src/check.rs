//! `check`: the spec's check_orphaned_data, for every declared rule and operation. Rows each
//! pre-flight rule would refuse, the state of every declared constraint and index (by the
//! engine's own planning, so `check` and `migrate` never disagree), and the partition layout.
//! Read-only.

use crate::catalog::Reader;
use serde::Serialize;

use crate::catalog;
use crate::engine::partitions::{self, Window};
use crate::engine::{self, Action, OpPlan};
use crate::error::{Error, Result};
use crate::findings::RuleCount;
use crate::plan::{self, Op, PLANS};
use crate::preflight;
use crate::sql::Relation;

/// The state of one declared operation.
#[derive(Clone, Debug, Serialize)]
pub struct OpStatus {
    pub id: String,
    pub kind: String,
    pub table: String,
    /// `valid`, `MISSING`, `NOT VALID`, `INVALID`, `INCOMPLETE` or `CONFLICT`.
    pub state: String,
    pub partitions: usize,
    /// Partitions (or the table) with nothing left to do.
    pub partitions_done: usize,
    /// Everything that differs from the declaration.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionLayout {
    pub table: String,
    pub partitioned: bool,
    pub partitions: usize,
    pub first: Option<String>,
    pub last: Option<String>,
    pub default_partition: Option<String>,
    /// Rows in the DEFAULT partition: rows outside every monthly range.
    pub default_rows: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub schema: String,
    /// Rows whose tenant does not exist: messages, then api_logs.
    pub orphans: Vec<RuleCount>,
    /// Messages whose tenant is not their conversation's.
    pub cross_tenant: Vec<RuleCount>,
    pub operations: Vec<OpStatus>,
    pub layout: Vec<PartitionLayout>,
    /// The months each monthly table covers, how far ahead, and what DEFAULT holds.
    pub windows: Vec<Window>,
    /// Helper CHECKs of the runner left behind: an exclusion CHECK on a DEFAULT partition refuses the application's inserts of its month. `partitions` drops
    /// them.
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

    /// 3 when a key would refuse rows, else 5 when a window falls short, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.orphan_total() > 0 {
            crate::error::exit::ORPHANS
        } else if !self.window_problems().is_empty() {
            crate::error::exit::WINDOW
        } else {
            crate::error::exit::SUCCESS
        }
    }

    /// Rows any pre-flight rule would refuse.
    pub fn orphan_total(&self) -> i64 {
        self.orphans
            .iter()
            .chain(&self.cross_tenant)
            .map(|t| t.count)
            .sum()
    }

    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.orphans.iter().chain(&self.cross_tenant) {
            let label = if t.rule == plan::CROSS_TENANT_MESSAGES.id {
                "cross-tenant"
            } else {
                "orphans"
            };
            out.push(format!(
                "{label:<12} {:<9} {:>10}{}",
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
                "{:<12} {:<13} {} {} ({} of {} partition(s) done)",
                o.kind, o.table, o.id, o.state, o.partitions_done, o.partitions
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

/// The state word of a planned operation.
fn state(plan: &OpPlan) -> &'static str {
    let has = |steps: &[engine::Step], a: Action| steps.iter().any(|s| s.action == a);
    if !plan.conflicts.is_empty() {
        "CONFLICT"
    } else if plan.is_done() {
        "valid"
    } else if plan.leaves_done == 0 && (has(&plan.after, Action::Adopt) || plan.parent_not_valid) {
        "MISSING"
    } else if has(&plan.after, Action::ValidateParent) {
        "NOT VALID"
    } else if has(&plan.before, Action::CreateOnOnly) && plan.leaves_done == 0 {
        "MISSING"
    } else if plan
        .items
        .iter()
        .flat_map(|i| &i.steps)
        .any(|s| s.action == Action::DropInvalid)
        && !plan.partitioned
    {
        "INVALID"
    } else if !plan.partitioned {
        "MISSING"
    } else {
        "INCOMPLETE"
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

pub fn check(
    c: &mut dyn Reader,
    schema: &str,
    premake: u32,
    as_of: Option<&str>,
) -> Result<CheckReport> {
    for t in plan::TABLES {
        if !catalog::table_exists(c, &Relation::new(schema, t))? {
            return Err(Error::MissingTable {
                table: format!("{schema}.{t}"),
                needed_by: "check".into(),
            });
        }
    }
    let mut report = CheckReport {
        schema: schema.to_string(),
        orphans: Vec::new(),
        cross_tenant: Vec::new(),
        operations: Vec::new(),
        layout: Vec::new(),
        windows: Vec::new(),
        helper_checks: Vec::new(),
        premake,
    };
    for rule in [&plan::ORPHANED_MESSAGES, &plan::ORPHANED_API_LOGS] {
        report.orphans.push(preflight::count(c, rule, schema)?);
    }
    report
        .cross_tenant
        .push(preflight::count(c, &plan::CROSS_TENANT_MESSAGES, schema)?);
    let ops: Vec<Op> = PLANS
        .iter()
        .flat_map(|p| p.phases.iter().flat_map(|ops| ops.iter().copied()))
        .collect();
    for p in engine::plan(c, schema, &ops)? {
        report.operations.push(OpStatus {
            id: p.id.to_string(),
            kind: p.kind.to_string(),
            table: p.table.name.as_str().to_string(),
            state: state(&p).to_string(),
            partitions: p.partitions,
            partitions_done: p.leaves_done,
            problems: problems(&p),
        });
    }
    for t in plan::MONTHLY {
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
