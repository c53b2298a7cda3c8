//! An index, planned per relation from the catalog.
//!
//! - On a table that is not partitioned: `CREATE [UNIQUE] INDEX CONCURRENTLY`.
//! - On a partitioned table: `CREATE INDEX ... ON ONLY` the parent (instant, invalid), the same
//!   for each sub-partitioned level (attached to its parent's), then per leaf partition
//!   `CREATE INDEX CONCURRENTLY` and `ALTER INDEX ... ATTACH PARTITION` to its direct parent's
//!   index. PostgreSQL marks each partitioned index valid when its last partition is attached.
//!
//! Indexes are recognised by shape and attachment, not by name: a leaf's index is the one
//! attached to its parent's, or an unattached one of the declared shape (attached if valid;
//! if INVALID, a leftover of an interrupted build: dropped, unless another session is still
//! building it, and rebuilt). New names follow PostgreSQL's own rule (`ChooseRelationName`), so
//! two partitions whose names share their first 50 bytes get different index names, and every
//! name is schema-qualified, so a partition in another schema gets its index there.

use std::collections::HashMap;

use crate::catalog::Reader;

use super::step::{Action, Step};
use super::{Conflict, OpPlan, Planner};
use crate::catalog::{self, IndexState, Node};
use crate::error::Result;
use crate::plan::Op;
use crate::sql::{attach_index_sql, drop_index_concurrently_sql, IndexDef, Relation};

fn locks(
    action: Action,
    table: &Relation,
    index: &Relation,
    parent_index: Option<&Relation>,
) -> String {
    let (t, i) = (table.plain(), index.plain());
    match action {
        Action::CreateOnOnly => format!("SHARE on {t} (instant: no build)"),
        Action::Build => format!("SHARE UPDATE EXCLUSIVE on {t} (reads it twice; writes go on)"),
        Action::DropInvalid => format!("SHARE UPDATE EXCLUSIVE on {t}, then ACCESS EXCLUSIVE on the invalid {i}"),
        Action::Attach => format!(
            "SHARE UPDATE EXCLUSIVE on {}, ACCESS EXCLUSIVE on {i} (writes to {t} wait for it: brief)",
            parent_index.map_or(String::new(), Relation::plain)
        ),
        Action::AwaitBuild => "none (waits for another session's build)".into(),
        _ => String::new(),
    }
}

/// Where a partitioned node's index is: known (oid) or planned by this run.
#[derive(Clone)]
struct NodeIndex {
    rel: Relation,
    oid: Option<u32>,
}

fn rebuild(ix: &IndexDef, table: &Node, leftover: &IndexState) -> Vec<Step> {
    let mut wait = Step::new(
        ix.name,
        &table.rel,
        Action::AwaitBuild,
        String::new(),
        locks(Action::AwaitBuild, &table.rel, &leftover.rel, None),
    );
    wait.await_build = Some((table.oid, leftover.oid));
    vec![
        wait,
        Step::new(
            ix.name,
            &table.rel,
            Action::DropInvalid,
            drop_index_concurrently_sql(&leftover.rel),
            locks(Action::DropInvalid, &table.rel, &leftover.rel, None),
        ),
    ]
}

fn build(ix: &IndexDef, table: &Node, name: &Relation) -> Step {
    Step::new(
        ix.name,
        &table.rel,
        Action::Build,
        ix.concurrently_sql(&name.name, &table.rel),
        locks(Action::Build, &table.rel, name, None),
    )
}

fn attach(ix: &IndexDef, table: &Node, parent: &Relation, child: &Relation) -> Step {
    Step::new(
        ix.name,
        &table.rel,
        Action::Attach,
        attach_index_sql(parent, child),
        locks(Action::Attach, &table.rel, child, Some(parent)),
    )
}

pub(super) fn plan(
    c: &mut dyn Reader,
    planner: &mut Planner,
    ix: &'static IndexDef,
    nodes: &[Node],
) -> Result<OpPlan> {
    let root = &nodes[0];
    let name = ix.index_in(&planner.schema);
    let named = catalog::index_named(c, &name)?;
    let mut plan = OpPlan::new(Op::Index(ix), nodes);
    if let Some(n) = named
        .as_ref()
        .filter(|n| n.table != root.oid || n.shape.as_ref() != Some(&ix.shape()))
    {
        plan.conflicts.push(Conflict {
            object: format!("index {}", name.plain()),
            found: format!(
                "{} on table oid {}",
                n.shape
                    .as_ref()
                    .map_or("an index of another kind".into(), |s| s.to_string()),
                n.table
            ),
            expected: format!("{} on {}", ix.shape(), root.rel.plain()),
        });
        return Ok(plan);
    }
    if root.is_leaf() {
        let steps = match &named {
            Some(n) if n.valid => Vec::new(),
            Some(n) => [rebuild(ix, root, n), vec![build(ix, root, &name)]].concat(),
            None => vec![build(ix, root, &name)],
        };
        plan.push_item(root, steps);
        return Ok(plan);
    }
    if named.is_none() {
        plan.before.push(Step::new(
            ix.name,
            &root.rel,
            Action::CreateOnOnly,
            ix.on_only_sql(&name.name, &root.rel),
            locks(Action::CreateOnOnly, &root.rel, &name, None),
        ));
    }
    let oids: Vec<u32> = nodes.iter().map(|n| n.oid).collect();
    let all = catalog::indexes_on(c, &oids)?;
    let root_index = NodeIndex {
        rel: name,
        oid: named.map(|n| n.oid),
    };
    plan_partitions(&mut plan, ix, planner, nodes, root_index, &all);
    Ok(plan)
}

/// Below a partitioned root, level by level: each sub-partitioned level's index (before the
/// leaves), then each leaf's.
fn plan_partitions(
    plan: &mut OpPlan,
    ix: &IndexDef,
    planner: &mut Planner,
    nodes: &[Node],
    root_index: NodeIndex,
    all: &[IndexState],
) {
    let mut index_of: HashMap<u32, NodeIndex> = HashMap::new();
    index_of.insert(nodes[0].oid, root_index);
    for node in nodes.iter().skip(1) {
        let Some(parent) = index_of.get(&node.parent).cloned() else {
            continue;
        };
        let (mine, steps) = node_steps(ix, planner, node, &parent, all, &mut plan.conflicts);
        if node.is_leaf() {
            plan.push_item(node, steps);
        } else {
            plan.before.extend(steps);
            index_of.insert(node.oid, mine);
        }
    }
}

/// A partition's index: the one attached to its parent's, else what must be done.
fn node_steps(
    ix: &IndexDef,
    planner: &mut Planner,
    node: &Node,
    parent: &NodeIndex,
    all: &[IndexState],
    conflicts: &mut Vec<Conflict>,
) -> (NodeIndex, Vec<Step>) {
    let want = ix.shape();
    let on_node = |i: &&IndexState| i.table == node.oid && i.shape.as_ref() == Some(&want);
    if let Some(attached) = all
        .iter()
        .filter(on_node)
        .find(|i| parent.oid.is_some_and(|p| i.parent == p))
    {
        if !attached.valid && node.is_leaf() {
            conflicts.push(Conflict {
                object: format!("index {}", attached.rel.plain()),
                found: "attached but INVALID".into(),
                expected: "a valid index".into(),
            });
        }
        let mine = NodeIndex {
            rel: attached.rel.clone(),
            oid: Some(attached.oid),
        };
        return (mine, Vec::new());
    }
    let unattached: Vec<&IndexState> = all
        .iter()
        .filter(on_node)
        .filter(|i| i.parent == 0)
        .collect();
    let mut steps = Vec::new();
    let usable = unattached.iter().find(|i| i.valid || !node.is_leaf());
    let child = match usable {
        Some(i) => i.rel.clone(),
        None => {
            for leftover in &unattached {
                steps.extend(rebuild(ix, node, leftover));
            }
            let rel = planner.choose_index_name(ix, node, unattached.first().map(|i| &i.rel));
            steps.push(if node.is_leaf() {
                build(ix, node, &rel)
            } else {
                Step::new(
                    ix.name,
                    &node.rel,
                    Action::CreateOnOnly,
                    ix.on_only_sql(&rel.name, &node.rel),
                    locks(Action::CreateOnOnly, &node.rel, &rel, None),
                )
            });
            rel
        }
    };
    steps.push(attach(ix, node, &parent.rel, &child));
    let oid = usable.map(|i| i.oid);
    (NodeIndex { rel: child, oid }, steps)
}
