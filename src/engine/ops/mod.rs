//! Operation kinds, one file each ([`fk`], [`index`], [`check`]), behind [`Operation`]: the one
//! trait through which the engine, `check`, `--dry-run`, the pre-flight and the migration files
//! see a kind. A kind owns everything about itself:
//!
//! - its definition: data a migration file declares (`migrations/V*.rs`);
//! - the catalog facts it reads, and what "done" means: the catalog holds exactly the declared
//!   shape, on the table and every partition ([`Operation::plan`]);
//! - its steps, with the locks they take and which lock rule runs them;
//! - its fallback SQL: what its migration file applies when the runner does not run it
//!   ([`Operation::fallback_sql`]);
//! - its pre-flight condition: the rows it would refuse, counted before anything changes
//!   ([`Operation::refuses`]);
//! - how `check` names its state, and the one SQL expression that says it is in place
//!   ([`Operation::in_place`]), which `check` and `migrate` use to find drift.
//!
//! The coordinator, the queue, the lock rules and resuming from the catalog stay in
//! [`crate::engine`]. Adding a kind is a file here implementing [`Operation`] and its `mod` line
//! below.

pub mod check;
pub mod fk;
pub mod index;

use super::{OpPlan, Planner};
use crate::catalog::{Node, Reader};
use crate::error::Result;

/// One kind of online operation (see the module docs).
pub trait Operation: Sync + std::fmt::Debug {
    /// The object's name: the operation's stable id.
    fn id(&self) -> &'static str;

    /// The table it is on (in the migrated schema).
    fn table(&self) -> &'static str;

    /// What it is, for logs and reports: `foreign key`, `index`, `unique index`, `check`.
    fn kind(&self) -> &'static str;

    /// Another table it needs (the one a key references).
    fn references(&self) -> Option<&'static str> {
        None
    }

    /// What is not done yet, read from the catalog: steps per partition (or for the table), the
    /// steps before and after them, and conflicts (an object of its name but another shape).
    /// Read-only. `nodes` is the table's partition tree, root first.
    fn plan(
        &'static self,
        c: &mut dyn Reader,
        planner: &mut Planner,
        nodes: &[Node],
    ) -> Result<OpPlan>;

    /// Plain, idempotent, blocking SQL that reaches the end state when applied without the
    /// runner (psql, another tool), for the migration file that declares it.
    fn fallback_sql(&self) -> String;

    /// A condition on the rows of its table (aliased `alias`) true for those it would refuse,
    /// if it refuses any.
    fn refuses(&self, _alias: &str, _schema: &str) -> Option<String> {
        None
    }

    /// A condition true for the rows it accepts, where that is cheaper to say than "not
    /// refused" (a key's match): a later rule that skips this one's rows uses it.
    fn accepts(&self, _alias: &str, _schema: &str) -> Option<String> {
        None
    }

    /// The columns a row must have non-NULL for it to be checked at all (a key's columns).
    fn checked_columns(&self) -> &'static [&'static str] {
        &[]
    }

    /// The state `check` shows for a plan that is neither done nor in conflict: `MISSING`,
    /// `NOT VALID`, `INVALID` or `INCOMPLETE`.
    fn state(&self, plan: &OpPlan) -> &'static str;

    /// One SQL expression, true when the object is in place on its table exactly as declared
    /// (and so, for a partitioned table, on every partition): what `check` and `migrate` test
    /// first, in one query for every declared object.
    fn in_place(&self, schema: &str) -> String;
}

/// What `archive` and `delete` do with the rows a rule finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// `archive` moves the rows (every column, plus `"archivedAt"`) to `archive`; `delete`
    /// deletes them.
    MoveRows { archive: &'static str },
    /// The rows stay with `column` set NULL; their `(id, "createdAt", column)` is recorded in
    /// `archive` first (under both policies).
    NullColumn {
        column: &'static str,
        archive: &'static str,
    },
}

/// Rows an operation would refuse, found before it goes on. A row that an earlier rule of the
/// same run already handles (`after`) is not counted again.
#[derive(Debug)]
pub struct Rule {
    pub id: &'static str,
    /// What `check` calls what it finds (`orphans`, `cross-tenant`).
    pub label: &'static str,
    /// What is wrong with the rows ("reference no tenant").
    pub what: &'static str,
    pub op: &'static dyn Operation,
    pub resolution: Resolution,
    pub after: &'static [&'static Rule],
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.id == other.id
    }
}

/// What one version declares (in its migration file): the rows it must not meet (pre-flight
/// rules), then its online operations in phases (a phase starts when the previous one is done;
/// the operations of one phase share one queue of partitions, and a partition's steps run in
/// the order the operations are declared). Declare an index before a foreign key on the same
/// column: the key's validation then reads the new index instead of the table.
#[derive(Debug)]
pub struct Declaration {
    pub version: i64,
    pub rules: &'static [&'static Rule],
    pub phases: &'static [&'static [&'static dyn Operation]],
    /// Tables this version expects partitioned (refused before anything changes if not).
    pub partitioned: &'static [&'static str],
    /// The file named in the header of the generated SQL (applied history: it stays what it was
    /// when the version was first applied).
    pub source: &'static str,
}

impl Declaration {
    /// Every operation, phase by phase.
    pub fn ops(&self) -> impl Iterator<Item = &'static dyn Operation> {
        self.phases.iter().flat_map(|ops| ops.iter().copied())
    }
}

/// The version's SQL, generated from its declaration: every operation's fallback, in order.
pub fn fallback_sql(d: &Declaration) -> String {
    let mut out = vec![format!(
        "-- Generated from the declaration of version {} ({}). Idempotent.",
        d.version, d.source
    )];
    out.extend(d.ops().map(|op| op.fallback_sql()));
    out.join("\n")
}

/// Whether each of `ops` is in place on its table exactly as declared, in one query (see
/// [`Operation::in_place`]).
pub fn in_place(
    c: &mut dyn Reader,
    schema: &str,
    ops: &[&'static dyn Operation],
) -> Result<Vec<bool>> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let tests: Vec<String> = ops.iter().map(|op| op.in_place(schema)).collect();
    let row = c
        .query_one(&format!("SELECT ARRAY[{}]::bool[]", tests.join(", ")), &[])
        .map_err(|e| crate::error::Error::db("checking the declared objects", e))?;
    Ok(row.get(0))
}

/// A SQL string literal of `text` (for SQL inside the generated `DO` blocks).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
