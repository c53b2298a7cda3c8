//! What earlier runs left: tables of a month's name, and the runner's helper CHECKs.
//!
//! A standalone table of a month's name that carries the runner's bound CHECK is an interrupted
//! run's: it is dropped and the month made afresh, nothing of it reused. It is checked empty when
//! planned and again under its lock when dropped, past row-level security (an owner under FORCE
//! ROW LEVEL SECURITY would otherwise see no rows in a table that has some). Anything else under
//! that name refuses the month, saying what it is and what to do. Helper CHECKs where no month of
//! the run needs them are dropped first; `check` reports every one.

use serde::Serialize;

use super::{exclusion_name, Month, Window, BOUND_CHECK};
use crate::catalog::Reader;
use crate::db::quote_literal;
use crate::engine::step::{Action, LockClaim, LockMode, Statement, Step};
use crate::error::{Error, Result};
use crate::sql::{Ident, Relation};

/// What stands under a month's name.
struct Found {
    kind: String,
    what: String,
    is_partition: bool,
    ours: bool,
    owner: String,
    may_drop: bool,
    /// `None` when this run's role cannot tell (row-level security hides rows from it): the drop
    /// step checks again, past it.
    has_rows: Option<bool>,
}

const FOUND: &str = "SELECT c.relkind::text, \
       CASE c.relkind WHEN 'r' THEN CASE WHEN c.relispartition THEN 'a partition of ' || (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid) ELSE 'a table' END \
            WHEN 'p' THEN 'a partitioned table' WHEN 'i' THEN 'an index' WHEN 'v' THEN 'a view' ELSE 'a relation of kind ' || c.relkind::text END, \
       c.relispartition, \
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname = $3 AND k.contype = 'c'), \
       pg_get_userbyid(c.relowner)::text, \
       pg_has_role(current_user, c.relowner, 'USAGE') OR pg_has_role(current_user, n.nspowner, 'USAGE'), \
       has_table_privilege(c.oid, 'SELECT') AND NOT (c.relrowsecurity \
         AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) \
         AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2";

fn found(c: &mut dyn Reader, part: &Relation) -> Result<Option<Found>> {
    let err = |e| Error::db(format!("inspecting {}", part.plain()), e);
    let Some(r) = c
        .query_opt(
            FOUND,
            &[&part.schema.as_str(), &part.name.as_str(), &BOUND_CHECK],
        )
        .map_err(err)?
    else {
        return Ok(None);
    };
    let kind: String = r.get(0);
    let (may_drop, readable): (bool, bool) = (r.get(5), r.get(6));
    let has_rows = if kind == "r" && may_drop && readable {
        Some(
            c.query_one(&format!("SELECT EXISTS (SELECT 1 FROM ONLY {part})"), &[])
                .map_err(err)?
                .get::<_, bool>(0),
        )
    } else {
        None
    };
    Ok(Some(Found {
        kind,
        what: r.get(1),
        is_partition: r.get(2),
        ours: r.get(3),
        owner: r.get(4),
        may_drop,
        has_rows,
    }))
}

/// A relation of the month's name: `Ok(None)` if there is none, `Ok(Some(step))` dropping a
/// standalone table an interrupted run left, `Err(why)` for anything else.
pub(super) fn leftover(
    m: &Month<'_>,
    c: &mut dyn Reader,
) -> Result<std::result::Result<Option<Step>, String>> {
    let part = &m.partition;
    let Some(f) = found(c, part)? else {
        return Ok(Ok(None));
    };
    let name = part.plain();
    let month = m.month;
    let why = if f.kind != "r" || f.is_partition {
        format!("{name} exists ({}), so month {month} cannot be created under its name: rename or drop it", f.what)
    } else if !f.ours {
        format!("{name} exists and was not left by this runner (it has no {BOUND_CHECK} CHECK), so month {month} cannot be created under its name: rename or drop it")
    } else if !f.may_drop {
        format!("{name} is an empty table an interrupted run left, owned by {}, which this run's role may not drop: drop it as {} or a superuser, then run partitions again", f.owner, f.owner)
    } else if f.has_rows == Some(true) {
        format!("{name} is a standalone table an interrupted run left, but rows were written into it since: move them into {} (or drop it), then run partitions again", m.t.window.table.plain())
    } else {
        return Ok(Ok(Some(drop_step(m, Action::DropLeftover))));
    };
    Ok(Err(why))
}

/// The month's table dropped if it is a standalone one that holds no row: a leftover
/// (`drop-leftover`), or the clean-up of a failed month.
fn drop_step(m: &Month<'_>, action: Action) -> Step {
    let part = &m.partition;
    let mut step = m.step(
        part,
        action,
        vec![Statement::new(drop_if_empty(part, &m.t.window.table))],
        vec![LockClaim::new(part, LockMode::AccessExclusive)],
        "a standalone table no one uses",
    );
    // As this run's role, which was found allowed to drop it (the owner may not be).
    step.run_as = None;
    step.guard = Vec::new();
    step
}

/// The clean-up of a failed month: its table, if it is still standalone and empty.
pub(super) fn drop_if_standalone(m: &Month<'_>) -> Step {
    drop_step(m, Action::DropLeftover)
}

/// Drops `part` under its lock if it exists, is no partition and holds no row, counted past
/// row-level security (the owner's own FORCE is lifted inside the transaction); refuses with a
/// message when it holds rows or its rows cannot be seen.
fn drop_if_empty(part: &Relation, table: &Relation) -> String {
    let (lit, plain) = (
        quote_literal(&part.to_string()),
        quote_literal(&part.plain()),
    );
    format!(
        "DO $mcm$ BEGIN \
           IF to_regclass({lit}) IS NULL OR (SELECT relispartition FROM pg_class WHERE oid = to_regclass({lit})) THEN RETURN; END IF; \
           EXECUTE 'LOCK TABLE ' || {lit} || ' IN ACCESS EXCLUSIVE MODE'; \
           IF (SELECT relforcerowsecurity FROM pg_class WHERE oid = to_regclass({lit})) \
              AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = to_regclass({lit})), 'USAGE') THEN \
             EXECUTE 'ALTER TABLE ' || {lit} || ' NO FORCE ROW LEVEL SECURITY'; \
           END IF; \
           SET LOCAL row_security = off; \
           BEGIN \
             IF EXISTS (SELECT 1 FROM ONLY {part}) THEN \
               RAISE EXCEPTION '% holds rows, written into it after the run that made it stopped: move them into %, or drop it', {plain}, {t}; \
             END IF; \
           EXCEPTION WHEN insufficient_privilege THEN \
             RAISE EXCEPTION 'cannot tell whether % is empty: row-level security hides its rows from this run''s role: drop it as its owner or a superuser', {plain}; \
           END; \
           EXECUTE 'DROP TABLE ' || {lit}; \
         END $mcm$",
        t = quote_literal(&table.plain()),
    )
}

/// A helper CHECK of the runner, found on a partition of a monthly table or on a standalone
/// table an interrupted run left.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HelperCheck {
    /// The table it is on.
    pub on: Relation,
    /// Its name (`mcm_excludes_YYYY_MM` or `mcm_month_bound`).
    pub name: String,
    /// Whether it is on a partition (else on a standalone table of a month's name).
    pub on_partition: bool,
}

impl std::fmt::Display for HelperCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.on_partition {
            write!(f, "{} on {}", self.name, self.on.plain())
        } else {
            write!(
                f,
                "{} on the standalone table {}",
                self.name,
                self.on.plain()
            )
        }
    }
}

const HELPERS: &str = "SELECT n.nspname::text, r.relname::text, k.conname::text, r.relispartition FROM pg_constraint k \
       JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace \
      WHERE k.contype = 'c' AND (k.conname = $2 OR k.conname LIKE 'mcm\\_excludes\\_%') \
        AND (k.conrelid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE level = 1) \
             OR (NOT r.relispartition AND r.relkind = 'r' AND r.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1::text::regclass) \
                 AND r.relname ~ ('^' || (SELECT relname FROM pg_class WHERE oid = $1::text::regclass) || '_[0-9]{4}_[0-9]{2}$'))) \
      ORDER BY 1, 2, 3";

/// Every helper CHECK of `window`'s table: the bound CHECK on an attached partition or on a
/// standalone table an interrupted run left, an exclusion CHECK on DEFAULT. Read-only.
pub fn helper_checks(c: &mut dyn Reader, window: &Window) -> Result<Vec<HelperCheck>> {
    let rows = c
        .query(HELPERS, &[&window.table.to_string(), &BOUND_CHECK])
        .map_err(|e| Error::db("reading helper checks left by an earlier run", e))?;
    Ok(rows
        .into_iter()
        .map(|r| HelperCheck {
            on: Relation::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            name: r.get(2),
            on_partition: r.get(3),
        })
        .collect())
}

/// Steps dropping the helper CHECKs on partitions that no month of this plan needs (an
/// exclusion CHECK on DEFAULT for a month not being created would, whatever its state, refuse
/// the application's inserts of that month). Standalone tables are the month plans' to drop.
pub(crate) fn leftovers(
    c: &mut dyn Reader,
    window: &Window,
    creating: &[String],
) -> Result<Vec<Step>> {
    let keep: Vec<String> = creating.iter().map(|m| exclusion_name(m)).collect();
    Ok(helper_checks(c, window)?
        .into_iter()
        .filter(|h| h.on_partition && !keep.contains(&h.name))
        .map(|h| {
            let name = Ident::new(h.name);
            Step::with_statements(
                name.as_str(),
                &h.on,
                Action::DropChecks,
                vec![Statement::new(format!(
                    "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {name}",
                    h.on
                ))],
                String::new(),
            )
            .claiming(
                vec![LockClaim::new(&h.on, LockMode::AccessExclusive)],
                "brief",
            )
        })
        .collect())
}
