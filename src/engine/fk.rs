//! A foreign key, planned per relation from the catalog.
//!
//! - On a table that is not partitioned: `ADD ... NOT VALID`, then `VALIDATE`.
//! - On a partitioned table: per leaf partition `ADD ... NOT VALID` then `VALIDATE` (SHARE
//!   UPDATE EXCLUSIVE: writes go on during the scan), then `ADD` on the parent, which adopts the
//!   validated partition constraints (every level of a sub-partitioned tree) without a scan.
//!   From PostgreSQL 18, on a fresh start, the constraint goes on the parent NOT VALID in one
//!   step first (new writes are checked on every partition from then on), each leaf is
//!   validated, and the parent's `VALIDATE` finds them all validated and scans nothing.
//!
//! A constraint of the declared name counts only if its shape is the declared one (columns,
//! referenced table and columns, actions, not deferrable) and, on a partition, if it belongs to
//! its parent's; any other is a conflict, refused before anything changes.

use std::collections::HashMap;

use crate::catalog::Reader;

use super::step::{Action, Step};
use super::{Conflict, OpPlan, Planner};
use crate::catalog::{self, FkState, Node};
use crate::error::Result;
use crate::plan::Op;
use crate::sql::{ForeignKeyDef, Relation};

fn locks(action: Action, on: &Relation, references: &Relation) -> String {
    let (on, r) = (on.plain(), references.plain());
    match action {
        Action::AddNotValid => format!("SHARE ROW EXCLUSIVE on {on} and {r} (brief: no scan)"),
        Action::Validate => format!("SHARE UPDATE EXCLUSIVE on {on}, ROW SHARE on {r} (scans it; writes go on)"),
        Action::Adopt => format!("SHARE ROW EXCLUSIVE on {on} and its partitions, ACCESS EXCLUSIVE on {r} while the partitions' triggers on it are replaced (no scan)"),
        Action::ValidateParent => format!("SHARE UPDATE EXCLUSIVE on {on} and its partitions (no scan: they are validated)"),
        _ => String::new(),
    }
}

fn step(fk: &ForeignKeyDef, schema: &str, on: &Relation, action: Action) -> Step {
    let references = Relation::new(schema, fk.references);
    let sql = match action {
        Action::AddNotValid => fk.add_sql(on, schema, true),
        Action::Adopt => fk.add_sql(on, schema, false),
        _ => fk.validate_sql(on),
    };
    Step::new(fk.name, on, action, sql, locks(action, on, &references))
}

/// The steps a leaf (or a plain table) still needs.
fn leaf_steps(fk: &ForeignKeyDef, schema: &str, leaf: &Node, state: Option<&FkState>) -> Vec<Step> {
    match state {
        None => vec![
            step(fk, schema, &leaf.rel, Action::AddNotValid),
            step(fk, schema, &leaf.rel, Action::Validate),
        ],
        Some(s) if !s.validated => vec![step(fk, schema, &leaf.rel, Action::Validate)],
        Some(_) => Vec::new(),
    }
}

pub(super) fn plan(
    c: &mut dyn Reader,
    planner: &mut Planner,
    fk: &'static ForeignKeyDef,
    nodes: &[Node],
) -> Result<OpPlan> {
    let schema = planner.schema.clone();
    let oids: Vec<u32> = nodes.iter().map(|n| n.oid).collect();
    let states = catalog::constraints_named(c, &oids, fk.name)?;
    let mut plan = OpPlan::new(Op::ForeignKey(fk), nodes);
    shape_conflicts(&mut plan, fk, &schema, nodes, &states);
    let root = &nodes[0];
    if root.is_leaf() {
        let steps = leaf_steps(fk, &schema, root, states.get(&root.oid));
        plan.push_item(root, steps);
        return Ok(plan);
    }
    let parent = states.get(&root.oid);
    let fresh_on_18 =
        parent.is_none() && states.is_empty() && planner.caps.not_valid_fk_on_partitioned();
    if fresh_on_18 {
        plan.parent_not_valid = true;
        plan.before
            .push(step(fk, &schema, &root.rel, Action::AddNotValid));
        for leaf in nodes.iter().filter(|n| n.is_leaf()) {
            plan.push_item(leaf, vec![step(fk, &schema, &leaf.rel, Action::Validate)]);
        }
        plan.after
            .push(step(fk, &schema, &root.rel, Action::ValidateParent));
        return Ok(plan);
    }
    for leaf in nodes.iter().filter(|n| n.is_leaf()) {
        let steps = leaf_steps(fk, &schema, leaf, states.get(&leaf.oid));
        plan.push_item(leaf, steps);
    }
    match parent {
        None => plan.after.push(step(fk, &schema, &root.rel, Action::Adopt)),
        Some(p) if !p.validated => {
            plan.after
                .push(step(fk, &schema, &root.rel, Action::ValidateParent))
        }
        Some(_) => adoption_conflicts(&mut plan, fk, nodes, &states),
    }
    Ok(plan)
}

/// A constraint of the declared name but another shape, anywhere in the tree, is a conflict.
fn shape_conflicts(
    plan: &mut OpPlan,
    fk: &ForeignKeyDef,
    schema: &str,
    nodes: &[Node],
    states: &HashMap<u32, FkState>,
) {
    let want = fk.shape(schema);
    for node in nodes {
        let Some(s) = states.get(&node.oid) else {
            continue;
        };
        if s.shape.as_ref() != Some(&want) {
            plan.conflicts.push(Conflict {
                object: format!("constraint {} on {}", fk.name, node.rel.plain()),
                found: s
                    .shape
                    .as_ref()
                    .map_or("a constraint that is not a foreign key".into(), |f| {
                        f.to_string()
                    }),
                expected: want.to_string(),
            });
        }
    }
}

/// With the parent's constraint in place, every partition's must belong to its parent's.
fn adoption_conflicts(
    plan: &mut OpPlan,
    fk: &ForeignKeyDef,
    nodes: &[Node],
    states: &HashMap<u32, FkState>,
) {
    for node in nodes.iter().skip(1) {
        let parent_con = states.get(&node.parent).map(|s| s.oid);
        match states.get(&node.oid) {
            Some(s) if Some(s.parent) == parent_con && s.validated => {}
            other => plan.conflicts.push(Conflict {
                object: format!("constraint {} on {}", fk.name, node.rel.plain()),
                found: match other {
                    None => "no such constraint".into(),
                    Some(s) if !s.validated => "NOT VALID".into(),
                    Some(_) => "a constraint that does not belong to its parent's".into(),
                },
                expected: "a validated constraint adopted by its parent's".into(),
            }),
        }
    }
}
