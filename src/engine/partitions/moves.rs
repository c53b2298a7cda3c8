//! A month that has begun, or whose rows already sit in DEFAULT: `move-and-attach`, one
//! transaction that moves the month's rows out of DEFAULT into the new table and attaches it.
//!
//! - First form: `LOCK TABLE ONLY` the parent and DEFAULT in SHARE mode (reads go on; writes
//!   wait, before they route a row, so none is refused after the ATTACH), the rows deleted from
//!   DEFAULT and inserted into the new table, then the keyed tables in SHARE ROW EXCLUSIVE and
//!   the parent in ACCESS EXCLUSIVE for the ATTACH, each with a short wait: a transaction that
//!   read the table and writes it during the move would deadlock with those locks, so the step
//!   gives way (the keeper stops it as soon as such a transaction waits for it) and retries.
//! - The form after a deadlock ([`Step::on_deadlock`]): the keyed tables, then ACCESS EXCLUSIVE
//!   on the parent and DEFAULT first, then the rows and the ATTACH: every read waits for the
//!   whole move, and no application transaction is caught in a deadlock.
//!
//! Readers of the parent see every row once, before or after: the parent is locked ACCESS
//! EXCLUSIVE for the attach, because a query reads the parent's partition list before it locks
//! the partitions, so one that queued behind the attach on DEFAULT alone would run, after the
//! commit, with the old list and a new snapshot, and see none of the moved rows. When a
//! publication covers the table through its root, the rows go to a temporary table instead and
//! are inserted through the parent after the ATTACH, so that subscribers receive the inserts with
//! the deletes. Refused: a move that would fire a user trigger or a referencing key's action that
//! changes rows, or that a publication would carry only half of (see
//! [`super::carry::Publication`]).

use super::{Month, Publication};
use crate::catalog::Reader;
use crate::engine::step::{Action, LockClaim, LockMode, Statement, Step};
use crate::error::{Error, Result};
use crate::sql::{Ident, Relation};

/// What the move's `DELETE` from DEFAULT would fire that its `INSERT` into the standalone table
/// would not: a user trigger on DEFAULT (counters, audit), or a foreign key of another table
/// that references the partitioned table with an ON DELETE action that deletes or changes that
/// table's rows (CASCADE, SET NULL, SET DEFAULT). Listed, so that the move is refused instead of
/// losing them. A key with NO ACTION or RESTRICT changes nothing: if a row references a moved
/// row, the move fails on it (23503) and is rolled back. Each key once, by its own name (not the
/// clones PostgreSQL makes for each partition).
const HAZARDS: &str = "SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t
     WHERE t.tgrelid = $1::text::regclass AND t.tgconstraint = 0 AND (NOT t.tgisinternal OR t.tgparentid <> 0)
     UNION ALL
     SELECT format('foreign key %s of %s (ON DELETE %s)', k.conname, k.conrelid::regclass,
                   CASE k.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END)
       FROM pg_constraint k
     WHERE k.contype = 'f' AND k.conparentid = 0 AND k.confdeltype NOT IN ('a', 'r')
       AND k.confrelid IN (SELECT relid FROM pg_partition_tree($2::text::regclass))
     ORDER BY 1";

pub(super) fn hazards(c: &mut dyn Reader, d: &Relation, table: &Relation) -> Result<Vec<String>> {
    Ok(c.query(HAZARDS, &[&d.to_string(), &table.to_string()])
        .map_err(|e| Error::db("reading what a move out of DEFAULT would fire", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// The tables whose keys reference the partitioned table (the ATTACH takes SHARE ROW EXCLUSIVE
/// on them too).
pub(super) fn referencing_tables(c: &mut dyn Reader, table: &Relation) -> Result<Vec<Relation>> {
    Ok(c
        .query(
            "SELECT DISTINCT n.nspname::text, r.relname::text FROM pg_constraint k \
               JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace \
              WHERE k.contype = 'f' AND k.confrelid = $1::text::regclass AND k.conparentid = 0 ORDER BY 1, 2",
            &[&table.to_string()],
        )
        .map_err(|e| Error::db("reading the tables whose keys reference the table", e))?
        .into_iter()
        .map(|r| Relation::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Why moving `rows` out of DEFAULT is refused, if it is.
pub(super) fn refusal(m: &Month<'_>, d: &Relation, rows: i64) -> Option<String> {
    let carry = &m.t.carry;
    let mut why: Vec<String> =
        m.t.hazards
            .iter()
            .map(|h| format!("would fire {h}"))
            .collect();
    why.extend(
        carry
            .publications
            .iter()
            .filter_map(Publication::move_hazard),
    );
    if carry.publishes_moves() && !carry.may_use_temp {
        why.push(format!(
            "needs a temporary table (a publication carries the table through its root), which {} may not create: GRANT TEMPORARY ON DATABASE to it",
            carry.run_as.as_deref().unwrap_or("this run's role")
        ));
    }
    if carry.rls_binds_moved_rows() {
        why.push(format!(
            "the rows would be written into tables with FORCE ROW LEVEL SECURITY (the month carries it over), whose policies bind {}: run partitions as a superuser or a role with BYPASSRLS (that may SET ROLE to the owner)",
            carry.run_as.as_deref().unwrap_or("this run's role")
        ));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{rows} rows of {} are in {}, but moving them is refused: {}; move them by hand (or remove the cause), then run partitions again",
            m.month,
            d.plain(),
            why.join("; ")
        )
    })
}

/// The move onto `steps`; the path.
pub(super) fn steps(
    m: &Month<'_>,
    d: &Relation,
    rows: i64,
    steps: &mut Vec<Step>,
) -> (&'static str, Vec<Step>) {
    let published = rows > 0 && m.t.carry.publishes_moves();
    steps.push(move_and_attach(m, d, rows, published));
    (
        if published { "move-published" } else { "move" },
        Vec::new(),
    )
}

fn move_and_attach(m: &Month<'_>, d: &Relation, rows: i64, published: bool) -> Step {
    let table = &m.t.window.table;
    let mut claims = vec![
        LockClaim::new(table, LockMode::AccessExclusive),
        LockClaim::new(d, LockMode::AccessExclusive),
        LockClaim::new(&m.partition, LockMode::AccessExclusive),
    ];
    claims.extend(m.t.keyed_claims());
    let note = format!(
        "moving {rows} rows: SHARE on {t} and {d} first (reads go on, writes wait), then ACCESS EXCLUSIVE on {t} for the attach{} (every read waits); \
         a transaction that waits for the move while holding a lock it needs (it read {t}, or wrote a keyed table, and then writes {t}) makes it start over with its locks taken first (every read waits for the whole move)",
        if published { " and the rows' insert through it, published to subscribers" } else { "" },
        t = table.plain(),
        d = d.plain(),
    );
    let mut step = m.step(
        table,
        Action::MoveAndAttach,
        statements(m, d, false, published),
        claims,
        &note,
    );
    step.on_deadlock = Some(statements(m, d, true, published));
    step
}

/// The move's statements: SHARE first and ACCESS EXCLUSIVE at the attach, or (`exclusive`)
/// ACCESS EXCLUSIVE first (see the module docs).
fn statements(m: &Month<'_>, d: &Relation, exclusive: bool, published: bool) -> Vec<Statement> {
    let (table, part) = (&m.t.window.table, &m.partition);
    let cols =
        m.t.columns
            .iter()
            .map(|c| Ident::new(c.as_str()).to_string())
            .collect::<Vec<_>>()
            .join(", ");
    let mut out = Vec::new();
    if exclusive {
        out.extend(m.t.lock_keyed());
        out.push(Statement::short(format!(
            "LOCK TABLE ONLY {table} IN ACCESS EXCLUSIVE MODE"
        )));
        out.push(Statement::short(format!(
            "LOCK TABLE {d} IN ACCESS EXCLUSIVE MODE"
        )));
    } else {
        out.push(Statement::new(format!(
            "LOCK TABLE ONLY {table} IN SHARE MODE"
        )));
        out.push(Statement::short(format!("LOCK TABLE {d} IN SHARE MODE")));
    }
    let delete = format!(
        "WITH moved AS (DELETE FROM ONLY {d} WHERE {} RETURNING {cols})",
        m.range()
    );
    // The rows move past row-level security, or the move fails: as this run's role when it
    // bypasses it and the owner is another role, and with row_security off, so that a policy
    // that would hide a row makes the statement fail (42501) instead of leaving the row behind.
    let (to_session, to_owner) = roles_for_rows(m);
    out.extend(to_session.clone());
    out.push(Statement::new("SET LOCAL row_security = off"));
    if published {
        out.push(Statement::new(format!(
            "CREATE TEMPORARY TABLE {MOVED} ON COMMIT DROP AS SELECT {cols} FROM ONLY {d} WITH NO DATA"
        )));
        out.push(Statement::new(format!(
            "{delete} INSERT INTO {MOVED} ({cols}) SELECT {cols} FROM moved"
        )));
    } else {
        out.push(Statement::new(format!(
            "{delete} INSERT INTO {part} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved"
        )));
    }
    out.push(Statement::new("SET LOCAL row_security = on"));
    out.extend(to_owner.clone());
    if !exclusive {
        out.extend(m.t.lock_keyed().map(|s| Statement::short(s.sql)));
        out.push(Statement::short(format!(
            "LOCK TABLE ONLY {table} IN ACCESS EXCLUSIVE MODE"
        )));
    }
    out.push(Statement::short(m.attach_sql()));
    if published {
        out.extend(to_session);
        out.push(Statement::new("SET LOCAL row_security = off"));
        out.push(Statement::new(format!(
            "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {MOVED}"
        )));
        out.push(Statement::new("SET LOCAL row_security = on"));
        out.extend(to_owner);
    }
    out
}

/// The statements that make the rows' statements run as this run's role and back as the owner,
/// when [`super::Carry::moves_as_session`] says so; none otherwise.
fn roles_for_rows(m: &Month<'_>) -> (Option<Statement>, Option<Statement>) {
    let carry = &m.t.carry;
    match (&carry.run_as, carry.moves_as_session) {
        (Some(owner), true) => (
            Some(Statement::new("SET LOCAL ROLE NONE")),
            Some(Statement::new(format!(
                "SET LOCAL ROLE {}",
                Ident::new(owner.as_str())
            ))),
        ),
        _ => (None, None),
    }
}

/// The temporary table a published move keeps its rows in until they are inserted through the
/// parent.
const MOVED: &str = "mcm_moved";
