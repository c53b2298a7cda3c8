//! An index, declared by a migration file and planned per relation from the catalog.
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
//! name is schema-qualified, so a partition in another schema gets its index there. An index
//! refuses no rows (a unique index would; the platform declares none that could meet any).

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::{literal, Operation};
use crate::catalog::{Node, Reader};
use crate::engine::step::{Action, Step};
use crate::engine::{Conflict, OpPlan, Planner};
use crate::error::{Error, Result};
use crate::sql::{column_list, index_name_addition, Ident, Relation};

/// An index as declared: a plain btree on `columns` of `table`, unique or not.
#[derive(Debug, PartialEq, Eq)]
pub struct Index {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub unique: bool,
}

/// What the catalog must hold for an index to count as the declared one (on its table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexShape {
    pub columns: Vec<String>,
    pub unique: bool,
}

impl fmt::Display for IndexShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}btree ({})",
            if self.unique { "UNIQUE " } else { "" },
            self.columns.join(", ")
        )
    }
}

impl Index {
    pub fn index_in(&self, schema: &str) -> Relation {
        Relation::new(schema, self.name)
    }

    pub fn shape(&self) -> IndexShape {
        IndexShape {
            columns: self.columns.iter().map(|c| c.to_string()).collect(),
            unique: self.unique,
        }
    }

    fn create(&self, concurrently: bool, only: bool, name: &Ident, on: &Relation) -> String {
        format!(
            "CREATE {}INDEX {}{name} ON {}{on} ({})",
            if self.unique { "UNIQUE " } else { "" },
            if concurrently { "CONCURRENTLY " } else { "" },
            if only { "ONLY " } else { "" },
            column_list(self.columns)
        )
    }

    /// The parent index of a partitioned table: instant, invalid until every partition's index
    /// is attached.
    pub fn on_only_sql(&self, name: &Ident, on: &Relation) -> String {
        self.create(false, true, name, on)
    }

    /// The index of one table, built without blocking writes.
    pub fn concurrently_sql(&self, name: &Ident, on: &Relation) -> String {
        self.create(true, false, name, on)
    }

    /// The name PostgreSQL would give this index on `table` (before making it unique in the
    /// schema): `makeObjectName(table, columns, label)`.
    pub fn child_name_base(&self, table: &str) -> (String, String, &'static str) {
        (
            table.to_string(),
            index_name_addition(self.columns),
            if self.unique { "key" } else { "idx" },
        )
    }
}

/// An index as the catalog holds it.
#[derive(Clone, Debug)]
pub struct IndexState {
    pub oid: u32,
    pub rel: Relation,
    /// The table it is on.
    pub table: u32,
    /// `None` when it is not a plain btree on columns (expressions, a predicate, INCLUDE
    /// columns, another access method): such an index never counts as a declared one.
    pub shape: Option<IndexShape>,
    pub valid: bool,
    /// The index it is attached to (`pg_inherits`), 0 if none.
    pub parent: u32,
}

const INDEXES: &str = "SELECT x.indexrelid, n.nspname::text, ic.relname::text, x.indrelid, \
       x.indisunique, x.indisvalid, coalesce(inh.inhparent, 0::oid), \
       am.amname = 'btree' AND x.indpred IS NULL AND x.indexprs IS NULL AND x.indnkeyatts = x.indnatts, \
       ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY u(n, o) \
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.n ORDER BY u.o) \
     FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
     JOIN pg_namespace n ON n.oid = ic.relnamespace JOIN pg_am am ON am.oid = ic.relam \
     LEFT JOIN pg_inherits inh ON inh.inhrelid = x.indexrelid ";

fn index_rows(rows: Vec<postgres::Row>) -> Vec<IndexState> {
    rows.into_iter()
        .map(|r| {
            let plain: bool = r.get(7);
            IndexState {
                oid: r.get(0),
                rel: Relation::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                table: r.get(3),
                shape: plain.then(|| IndexShape {
                    columns: r.get(8),
                    unique: r.get(4),
                }),
                valid: r.get(5),
                parent: r.get(6),
            }
        })
        .collect()
}

/// Every index on any of `tables`.
pub fn indexes_on(c: &mut dyn Reader, tables: &[u32]) -> Result<Vec<IndexState>> {
    let rows = c
        .query(&format!("{INDEXES} WHERE x.indrelid = ANY($1)"), &[&tables])
        .map_err(|e| Error::db("reading indexes", e))?;
    Ok(index_rows(rows))
}

/// The index named `rel`, if there is one.
pub fn index_named(c: &mut dyn Reader, rel: &Relation) -> Result<Option<IndexState>> {
    let rows = c
        .query(
            &format!("{INDEXES} WHERE n.nspname = $1 AND ic.relname = $2"),
            &[&rel.schema.as_str(), &rel.name.as_str()],
        )
        .map_err(|e| Error::db("reading an index", e))?;
    Ok(index_rows(rows).into_iter().next())
}

impl Operation for Index {
    fn id(&self) -> &'static str {
        self.name
    }

    fn table(&self) -> &'static str {
        self.table
    }

    fn kind(&self) -> &'static str {
        if self.unique {
            "unique index"
        } else {
            "index"
        }
    }

    fn plan(
        &'static self,
        c: &mut dyn Reader,
        planner: &mut Planner,
        nodes: &[Node],
    ) -> Result<OpPlan> {
        plan(c, planner, self, nodes)
    }

    fn fallback_sql(&self) -> String {
        index_fallback(self)
    }

    fn state(&self, plan: &OpPlan) -> &'static str {
        let has = |steps: &[Step], a: Action| steps.iter().any(|s| s.action == a);
        let rebuilds = plan
            .items
            .iter()
            .any(|i| has(&i.steps, Action::DropInvalid));
        if has(&plan.before, Action::CreateOnOnly) && plan.leaves_done == 0 {
            "MISSING"
        } else if rebuilds && !plan.partitioned {
            "INVALID"
        } else if !plan.partitioned {
            "MISSING"
        } else {
            "INCOMPLETE"
        }
    }

    fn in_place(&self, schema: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid JOIN pg_am am ON am.oid = ic.relam \
               WHERE x.indexrelid = to_regclass({i}) AND x.indrelid = to_regclass({t}) AND x.indisvalid \
               AND x.indisunique = {u} AND am.amname = 'btree' AND x.indpred IS NULL AND x.indexprs IS NULL \
               AND x.indnkeyatts = x.indnatts \
               AND ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(n, o) JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n ORDER BY k.o) = {cols}::text[])",
            i = literal(&Relation::new(schema, self.name).to_string()),
            t = literal(&Relation::new(schema, self.table).to_string()),
            u = self.unique,
            cols = literal(&format!(
                "{{{}}}",
                self.columns
                    .iter()
                    .map(|c| format!("\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        )
    }
}

/// `ALTER INDEX parent ATTACH PARTITION child`.
fn attach_index_sql(parent_index: &Relation, child_index: &Relation) -> String {
    format!("ALTER INDEX {parent_index} ATTACH PARTITION {child_index}")
}

fn drop_index_concurrently_sql(index: &Relation) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")
}

fn index_fallback(ix: &Index) -> String {
    let name = Ident::new(ix.name);
    let table = Ident::new(ix.table);
    let create = format!(
        "CREATE {}INDEX {name} ON {table} ({})",
        if ix.unique { "UNIQUE " } else { "" },
        ix.columns
            .iter()
            .map(|c| Ident::new(*c).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    format!(
        "DO $fallback$ BEGIN\n  \
           IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({lit}) AND NOT indisvalid) THEN\n    \
             EXECUTE 'DROP INDEX ' || {lit};\n  \
           END IF;\n  \
           IF to_regclass({lit}) IS NULL THEN\n    \
             EXECUTE {create_lit};\n  \
           END IF;\n\
         END $fallback$;",
        lit = literal(&name.to_string()),
        create_lit = literal(&create)
    )
}

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

fn rebuild(ix: &Index, table: &Node, leftover: &IndexState) -> Vec<Step> {
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

fn build(ix: &Index, table: &Node, name: &Relation) -> Step {
    Step::new(
        ix.name,
        &table.rel,
        Action::Build,
        ix.concurrently_sql(&name.name, &table.rel),
        locks(Action::Build, &table.rel, name, None),
    )
}

fn attach(ix: &Index, table: &Node, parent: &Relation, child: &Relation) -> Step {
    Step::new(
        ix.name,
        &table.rel,
        Action::Attach,
        attach_index_sql(parent, child),
        locks(Action::Attach, &table.rel, child, Some(parent)),
    )
}

fn plan(
    c: &mut dyn Reader,
    planner: &mut Planner,
    ix: &'static Index,
    nodes: &[Node],
) -> Result<OpPlan> {
    let root = &nodes[0];
    let name = ix.index_in(&planner.schema);
    let named = index_named(c, &name)?;
    let mut plan = OpPlan::new(ix, nodes);
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
    let all = indexes_on(c, &oids)?;
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
    ix: &Index,
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
    ix: &Index,
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
            let rel = planner.choose_name(
                ix.child_name_base(node.rel.name.as_str()),
                node,
                unattached.first().map(|i| &i.rel),
            );
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
