//! A CHECK constraint, declared by a migration file and planned per relation from the catalog.
//!
//! - On a table that is not partitioned: `ADD ... NOT VALID` (ACCESS EXCLUSIVE, brief: no scan),
//!   then `VALIDATE` (SHARE UPDATE EXCLUSIVE: reads and writes go on during the scan).
//! - On a partitioned table: the same per leaf partition, then `ADD` on the parent, which
//!   PostgreSQL merges with the validated constraints of the partitions (no scan; it refuses
//!   while any is NOT VALID). A partition made meanwhile without it (a month the window created
//!   before the parent had it) is a leaf like the others: it gets it, and the run completes.
//!   Months made after the parent has it get it with the parent's definition (`LIKE ...
//!   INCLUDING CONSTRAINTS`); a month without it could never be attached.
//!
//! The expression is declared as PostgreSQL prints it (`pg_get_expr(conbin, conrelid)`, for
//! example `(content <> ''::text)`): a constraint of the declared name counts only if its
//! expression reads the same, and any other is a conflict, refused before anything changes.
//! Its pre-flight: the rows for which the expression is false (a CHECK passes on NULL).

// Declared only by the tests so far: nothing in the crate constructs a CHECK yet.
#![allow(dead_code)]

use std::collections::HashMap;

use super::{literal, Operation};
use crate::catalog::{Node, Reader};
use crate::engine::step::{Action, Step};
use crate::engine::{Conflict, OpPlan, Planner};
use crate::error::{Error, Result};
use crate::sql::{Ident, Relation};

/// A CHECK constraint as declared: `name` on `table`, its expression as PostgreSQL prints it.
#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub table: &'static str,
    pub expression: &'static str,
}

/// A constraint of the declared name on one relation.
#[derive(Clone, Debug)]
struct State {
    /// Its expression, `None` when it is not a CHECK.
    expression: Option<String>,
    validated: bool,
}

const NAMED: &str = "SELECT conrelid, contype = 'c', convalidated, \
       CASE WHEN contype = 'c' THEN pg_get_expr(conbin, conrelid) END \
     FROM pg_constraint WHERE conrelid = ANY($1) AND conname = $2";

fn named(c: &mut dyn Reader, relids: &[u32], name: &str) -> Result<HashMap<u32, State>> {
    Ok(c.query(NAMED, &[&relids, &name])
        .map_err(|e| Error::db("reading check constraints", e))?
        .into_iter()
        .map(|r| {
            let is_check: bool = r.get(1);
            (
                r.get(0),
                State {
                    expression: if is_check { r.get(3) } else { None },
                    validated: r.get(2),
                },
            )
        })
        .collect())
}

impl Check {
    fn add_sql(&self, on: &Relation, not_valid: bool) -> String {
        format!(
            "ALTER TABLE {on} ADD CONSTRAINT {} CHECK {}{}",
            Ident::new(self.name),
            self.expression,
            if not_valid { " NOT VALID" } else { "" }
        )
    }

    fn step(&self, on: &Relation, action: Action, partitions: bool) -> Step {
        let (sql, locks) = match action {
            Action::AddNotValid => (
                self.add_sql(on, true),
                format!("ACCESS EXCLUSIVE on {} (brief: no scan)", on.plain()),
            ),
            Action::Adopt => (
                self.add_sql(on, false),
                format!(
                    "ACCESS EXCLUSIVE on {}{} (brief: merged with the partitions' validated constraints, no scan)",
                    on.plain(),
                    if partitions { " and every partition" } else { "" }
                ),
            ),
            _ => (
                format!("ALTER TABLE {on} VALIDATE CONSTRAINT {}", Ident::new(self.name)),
                format!(
                    "SHARE UPDATE EXCLUSIVE on {}{}",
                    on.plain(),
                    if partitions { " and its partitions (no scan: they are validated)" } else { " (scans it; reads and writes go on)" }
                ),
            ),
        };
        Step::new(self.name, on, action, sql, locks)
    }

    fn leaf_steps(&self, leaf: &Node, state: Option<&State>) -> Vec<Step> {
        match state {
            None => vec![
                self.step(&leaf.rel, Action::AddNotValid, false),
                self.step(&leaf.rel, Action::Validate, false),
            ],
            Some(s) if !s.validated => vec![self.step(&leaf.rel, Action::Validate, false)],
            Some(_) => Vec::new(),
        }
    }

    fn conflicts(&self, plan: &mut OpPlan, nodes: &[Node], states: &HashMap<u32, State>) {
        for node in nodes {
            let Some(s) = states.get(&node.oid) else {
                continue;
            };
            if s.expression.as_deref() != Some(self.expression) {
                plan.conflicts.push(Conflict {
                    object: format!("constraint {} on {}", self.name, node.rel.plain()),
                    found: s
                        .expression
                        .as_ref()
                        .map_or("a constraint that is not a CHECK".into(), |e| {
                            format!("CHECK {e}")
                        }),
                    expected: format!("CHECK {}", self.expression),
                });
            }
        }
    }
}

impl Operation for Check {
    fn id(&self) -> &'static str {
        self.name
    }

    fn table(&self) -> &'static str {
        self.table
    }

    fn kind(&self) -> &'static str {
        "check"
    }

    fn plan(
        &'static self,
        c: &mut dyn Reader,
        _planner: &mut Planner,
        nodes: &[Node],
    ) -> Result<OpPlan> {
        let oids: Vec<u32> = nodes.iter().map(|n| n.oid).collect();
        let states = named(c, &oids, self.name)?;
        let mut plan = OpPlan::new(self, nodes);
        self.conflicts(&mut plan, nodes, &states);
        let root = &nodes[0];
        for leaf in nodes.iter().filter(|n| n.is_leaf()) {
            plan.push_item(leaf, self.leaf_steps(leaf, states.get(&leaf.oid)));
        }
        if !root.is_leaf() {
            match states.get(&root.oid) {
                None => plan.after.push(self.step(&root.rel, Action::Adopt, true)),
                Some(s) if !s.validated => {
                    plan.after
                        .push(self.step(&root.rel, Action::ValidateParent, true))
                }
                Some(_) => {}
            }
        }
        Ok(plan)
    }

    fn fallback_sql(&self) -> String {
        let table = literal(&Ident::new(self.table).to_string());
        let name = literal(self.name);
        let add = format!(
            "ALTER TABLE {} ADD CONSTRAINT {} CHECK {}",
            Ident::new(self.table),
            Ident::new(self.name),
            self.expression
        );
        format!(
            "DO $fallback$ DECLARE part regclass; BEGIN\n  \
               FOR part IN SELECT c.conrelid::regclass FROM pg_constraint c\n      \
                   JOIN pg_partition_tree({table}::regclass) p ON p.relid = c.conrelid\n     \
                 WHERE c.conname = {name} AND NOT c.convalidated AND p.relid <> {table}::regclass LOOP\n    \
                 EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', part, {name});\n  \
               END LOOP;\n  \
               IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {table}::regclass AND conname = {name}) THEN\n    \
                 EXECUTE {add_lit};\n  \
               ELSIF NOT (SELECT convalidated FROM pg_constraint WHERE conrelid = {table}::regclass AND conname = {name}) THEN\n    \
                 EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', {table}, {name});\n  \
               END IF;\n\
             END $fallback$;",
            add_lit = literal(&add)
        )
    }

    fn refuses(&self, _alias: &str, _schema: &str) -> Option<String> {
        Some(format!("{} IS FALSE", self.expression))
    }

    fn state(&self, plan: &OpPlan) -> &'static str {
        let adopt = plan.after.iter().any(|s| s.action == Action::Adopt);
        if plan.leaves_done == 0 && (adopt || !plan.partitioned) {
            "MISSING"
        } else if plan
            .after
            .iter()
            .any(|s| s.action == Action::ValidateParent)
        {
            "NOT VALID"
        } else {
            "INCOMPLETE"
        }
    }

    fn in_place(&self, schema: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({}) AND conname = {} \
               AND contype = 'c' AND convalidated AND pg_get_expr(conbin, conrelid) = {})",
            literal(&Relation::new(schema, self.table).to_string()),
            literal(self.name),
            literal(self.expression)
        )
    }
}
