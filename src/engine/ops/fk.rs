//! A foreign key, declared by a migration file and planned per relation from the catalog.
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
//! its parent's; any other is a conflict, refused before anything changes. Its pre-flight: the
//! rows whose key has no match (MATCH SIMPLE: a row with a NULL in a key column is not checked).

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use super::{literal, Operation};
use crate::catalog::{Node, Reader};
use crate::engine::step::{Action, Step};
use crate::engine::{Conflict, OpPlan, Planner};
use crate::error::{Error, Result};
use crate::sql::{column_list, Ident, Relation};

/// `ON DELETE` / `ON UPDATE` actions, with `pg_constraint.confdeltype`'s letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefAction {
    NoAction,
    Restrict,
    Cascade,
    SetNull,
    SetDefault,
}

impl RefAction {
    pub fn sql(self) -> &'static str {
        match self {
            RefAction::NoAction => "NO ACTION",
            RefAction::Restrict => "RESTRICT",
            RefAction::Cascade => "CASCADE",
            RefAction::SetNull => "SET NULL",
            RefAction::SetDefault => "SET DEFAULT",
        }
    }

    pub fn code(self) -> char {
        match self {
            RefAction::NoAction => 'a',
            RefAction::Restrict => 'r',
            RefAction::Cascade => 'c',
            RefAction::SetNull => 'n',
            RefAction::SetDefault => 'd',
        }
    }

    pub fn from_code(code: char) -> Option<RefAction> {
        [
            RefAction::NoAction,
            RefAction::Restrict,
            RefAction::Cascade,
            RefAction::SetNull,
            RefAction::SetDefault,
        ]
        .into_iter()
        .find(|a| a.code() == code)
    }
}

/// A foreign key as declared: `table (columns) REFERENCES references (ref_columns)`, both tables
/// in the migrated schema.
#[derive(Debug, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub references: &'static str,
    pub ref_columns: &'static [&'static str],
    pub on_delete: RefAction,
    pub on_update: RefAction,
}

/// What the catalog must hold for a foreign key to count as the declared one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FkShape {
    pub columns: Vec<String>,
    pub references: Relation,
    pub ref_columns: Vec<String>,
    pub on_delete: char,
    pub on_update: char,
    pub deferrable: bool,
}

impl fmt::Display for FkShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = |c: &[String]| {
            c.iter()
                .map(|c| Ident::new(c.as_str()).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let action = |c: char| RefAction::from_code(c).map_or("?", RefAction::sql);
        write!(
            f,
            "FOREIGN KEY ({}) REFERENCES {}({}) ON UPDATE {} ON DELETE {}{}",
            cols(&self.columns),
            self.references.plain(),
            cols(&self.ref_columns),
            action(self.on_update),
            action(self.on_delete),
            if self.deferrable { " DEFERRABLE" } else { "" }
        )
    }
}

impl ForeignKey {
    pub fn shape(&self, schema: &str) -> FkShape {
        FkShape {
            columns: self.columns.iter().map(|c| c.to_string()).collect(),
            references: Relation::new(schema, self.references),
            ref_columns: self.ref_columns.iter().map(|c| c.to_string()).collect(),
            on_delete: self.on_delete.code(),
            on_update: self.on_update.code(),
            deferrable: false,
        }
    }

    /// The definition after the constraint's name.
    pub fn definition(&self, schema: &str) -> String {
        format!(
            "FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE {} ON DELETE {}",
            column_list(self.columns),
            Relation::new(schema, self.references),
            column_list(self.ref_columns),
            self.on_update.sql(),
            self.on_delete.sql()
        )
    }

    /// `ALTER TABLE on ADD CONSTRAINT ...` (`NOT VALID` on a partition, or on a partitioned
    /// parent from PostgreSQL 18).
    pub fn add_sql(&self, on: &Relation, schema: &str, not_valid: bool) -> String {
        format!(
            "ALTER TABLE {on} ADD CONSTRAINT {} {}{}",
            Ident::new(self.name),
            self.definition(schema),
            if not_valid { " NOT VALID" } else { "" }
        )
    }

    pub fn validate_sql(&self, on: &Relation) -> String {
        format!(
            "ALTER TABLE {on} VALIDATE CONSTRAINT {}",
            Ident::new(self.name)
        )
    }

    /// A condition true for rows of `alias` whose key has a match in the referenced table.
    pub fn match_condition(&self, alias: &str, schema: &str) -> String {
        let matches = self
            .columns
            .iter()
            .zip(self.ref_columns)
            .map(|(c, r)| format!("r.{} = {alias}.{}", Ident::new(*r), Ident::new(*c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "EXISTS (SELECT 1 FROM {} r WHERE {matches})",
            Relation::new(schema, self.references)
        )
    }

    /// A condition true for rows of `alias` that this key would refuse (MATCH SIMPLE: a row
    /// with a NULL in a key column is not checked).
    pub fn violation_condition(&self, alias: &str, schema: &str) -> String {
        let not_null = self
            .columns
            .iter()
            .map(|c| format!("{alias}.{} IS NOT NULL", Ident::new(*c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!("{not_null} AND NOT {}", self.match_condition(alias, schema))
    }
}

/// A constraint of the name the engine looks for, on one relation.
#[derive(Clone, Debug)]
pub struct FkState {
    pub oid: u32,
    pub relid: u32,
    /// `None` when a constraint of that name exists but is not a foreign key.
    pub shape: Option<FkShape>,
    pub validated: bool,
    /// The parent constraint's oid (`conparentid`), 0 if none.
    pub parent: u32,
}

const FKS_NAMED: &str =
    "SELECT k.oid, k.conrelid, k.contype = 'f', k.convalidated, k.conparentid, \
       k.condeferrable, k.confdeltype::text, k.confupdtype::text, \
       coalesce(rn.nspname::text, ''), coalesce(r.relname::text, ''), \
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o) \
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o), \
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, o) \
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o) \
     FROM pg_constraint k \
     LEFT JOIN pg_class r ON r.oid = k.confrelid \
     LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace \
     WHERE k.conrelid = ANY($1) AND k.conname = $2";

/// The constraints named `name` on any of `relids`, by relation oid.
pub fn constraints_named(
    c: &mut dyn Reader,
    relids: &[u32],
    name: &str,
) -> Result<HashMap<u32, FkState>> {
    let rows = c
        .query(FKS_NAMED, &[&relids, &name])
        .map_err(|e| Error::db("reading constraints", e))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let is_fk: bool = r.get(2);
            let code = |i: usize| r.get::<_, String>(i).chars().next().unwrap_or('?');
            let state = FkState {
                oid: r.get(0),
                relid: r.get(1),
                shape: is_fk.then(|| FkShape {
                    columns: r.get(10),
                    references: Relation::new(r.get::<_, String>(8), r.get::<_, String>(9)),
                    ref_columns: r.get(11),
                    on_delete: code(6),
                    on_update: code(7),
                    deferrable: r.get(5),
                }),
                validated: r.get(3),
                parent: r.get(4),
            };
            (state.relid, state)
        })
        .collect())
}

impl Operation for ForeignKey {
    fn id(&self) -> &'static str {
        self.name
    }

    fn table(&self) -> &'static str {
        self.table
    }

    fn kind(&self) -> &'static str {
        "foreign key"
    }

    fn references(&self) -> Option<&'static str> {
        Some(self.references)
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
        fk_fallback(self)
    }

    fn refuses(&self, alias: &str, schema: &str) -> Option<String> {
        Some(self.violation_condition(alias, schema))
    }

    fn accepts(&self, alias: &str, schema: &str) -> Option<String> {
        Some(self.match_condition(alias, schema))
    }

    fn checked_columns(&self) -> &'static [&'static str] {
        self.columns
    }

    fn state(&self, plan: &OpPlan) -> &'static str {
        let adopt = plan.after.iter().any(|s| s.action == Action::Adopt);
        if plan.leaves_done == 0 && (adopt || plan.parent_not_valid) {
            "MISSING"
        } else if plan
            .after
            .iter()
            .any(|s| s.action == Action::ValidateParent)
        {
            "NOT VALID"
        } else if !plan.partitioned {
            "MISSING"
        } else {
            "INCOMPLETE"
        }
    }

    fn in_place(&self, schema: &str) -> String {
        let shape = self.shape(schema);
        format!(
            "EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = to_regclass({t}) AND k.conname = {n} \
               AND k.contype = 'f' AND k.convalidated AND NOT k.condeferrable \
               AND k.confrelid = to_regclass({r}) AND k.confdeltype = {d} AND k.confupdtype = {u} \
               AND ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, o) JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.o) = {cols}::text[] \
               AND ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, o) JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.o) = {rcols}::text[])",
            t = literal(&Relation::new(schema, self.table).to_string()),
            n = literal(self.name),
            r = literal(&shape.references.to_string()),
            d = literal(&shape.on_delete.to_string()),
            u = literal(&shape.on_update.to_string()),
            cols = literal(&format!("{{{}}}", text_array(&shape.columns))),
            rcols = literal(&format!("{{{}}}", text_array(&shape.ref_columns))),
        )
    }
}

/// The elements of a `text[]` literal, each double-quoted.
fn text_array(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",")
}

fn fk_fallback(fk: &ForeignKey) -> String {
    let name = literal(fk.name);
    let table = literal(&Ident::new(fk.table).to_string());
    let add = format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE {} ON DELETE {}",
        Ident::new(fk.table),
        Ident::new(fk.name),
        fk.columns.iter().map(|c| Ident::new(*c).to_string()).collect::<Vec<_>>().join(", "),
        Ident::new(fk.references),
        fk.ref_columns.iter().map(|c| Ident::new(*c).to_string()).collect::<Vec<_>>().join(", "),
        fk.on_update.sql(),
        fk.on_delete.sql()
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

fn step(fk: &ForeignKey, schema: &str, on: &Relation, action: Action) -> Step {
    let references = Relation::new(schema, fk.references);
    let sql = match action {
        Action::AddNotValid => fk.add_sql(on, schema, true),
        Action::Adopt => fk.add_sql(on, schema, false),
        _ => fk.validate_sql(on),
    };
    Step::new(fk.name, on, action, sql, locks(action, on, &references))
}

/// The steps a leaf (or a plain table) still needs.
fn leaf_steps(fk: &ForeignKey, schema: &str, leaf: &Node, state: Option<&FkState>) -> Vec<Step> {
    match state {
        None => vec![
            step(fk, schema, &leaf.rel, Action::AddNotValid),
            step(fk, schema, &leaf.rel, Action::Validate),
        ],
        Some(s) if !s.validated => vec![step(fk, schema, &leaf.rel, Action::Validate)],
        Some(_) => Vec::new(),
    }
}

fn plan(
    c: &mut dyn Reader,
    planner: &mut Planner,
    fk: &'static ForeignKey,
    nodes: &[Node],
) -> Result<OpPlan> {
    let schema = planner.schema.clone();
    let oids: Vec<u32> = nodes.iter().map(|n| n.oid).collect();
    let states = constraints_named(c, &oids, fk.name)?;
    let mut plan = OpPlan::new(fk, nodes);
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
    fk: &ForeignKey,
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
    fk: &ForeignKey,
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
