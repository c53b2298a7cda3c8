//! Monthly partitions created ahead of time, online: one operation kind of the engine, planned
//! per month from the catalog like the others, and run through the same two lock rules.
//!
//! For a month to create (`messages_YYYY_MM`, bounds continuing the existing partitions exactly,
//! in the time zone in which their bounds are month starts):
//! 1. `create-table`: a standalone table `LIKE` the parent (defaults, constraints, generated
//!    columns, storage), with a CHECK of the month's bounds, so that attaching scans nothing of
//!    it. Only the new table is locked.
//! 2. `create-indexes`: every index and primary-key or unique constraint of the parent, built on
//!    the empty table (instant), named as PostgreSQL names a partition's, so that attaching
//!    only adopts them.
//!    The parent's foreign keys are not added: attaching a table that brings its own key makes
//!    PostgreSQL adopt it, which drops the key's triggers on `tenants` and `conversations` under
//!    ACCESS EXCLUSIVE; attaching without them clones the keys under SHARE ROW EXCLUSIVE.
//! 3. a month that has not begun and has no rows in DEFAULT: `add-exclusion` (a CHECK on DEFAULT
//!    that excludes the month, NOT VALID: a brief ACCESS EXCLUSIVE on DEFAULT) and
//!    `validate-exclusion` (SHARE UPDATE EXCLUSIVE: the scan of DEFAULT blocks nobody), then
//!    `attach-partition` under `--lock-timeout` with retries: ACCESS EXCLUSIVE on DEFAULT and
//!    on the new table, SHARE UPDATE EXCLUSIVE on the parent, SHARE ROW EXCLUSIVE on the tables
//!    the keys reference while they are cloned; DEFAULT is not scanned, the empty table's keys
//!    validate instantly.
//! 4. a month that has begun, or whose rows already sit in DEFAULT: `move-and-attach`, one
//!    transaction: SHARE on DEFAULT (reads go on; only writes into DEFAULT wait), the month's
//!    rows deleted from DEFAULT and inserted into the new table, then ATTACH: ACCESS EXCLUSIVE
//!    on DEFAULT only while it scans DEFAULT and checks the moved rows against the cloned keys.
//!    Readers of the parent see every row once, before or after. `--max-moved-rows` bounds the
//!    move. (An exclusion CHECK would make the application's inserts of a begun month fail
//!    until the attach.)
//! 5. `drop-checks`: the helper CHECKs go (the partition bound says the same).
//!
//! Every step re-plans from the catalog on the next run: a standalone table left by a killed
//! run is reused (if empty), a missing index is built, a leftover exclusion CHECK is
//! validated or dropped.

use postgres::GenericClient;
use serde::Serialize;

use super::step::{Action, Step};
use super::Planner;
use crate::catalog;
use crate::db::quote_literal;
use crate::error::{Error, Result};
use crate::sql::{choose_name, Ident, Relation};

/// Rows of one month.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MonthRows {
    pub month: String,
    pub rows: i64,
}

/// One table's window of monthly partitions, as the catalog holds it.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub table: Relation,
    /// The time zone in which the existing partitions' bounds are month starts.
    pub zone: String,
    /// The partition key column.
    pub key: String,
    /// The first and last months with a partition (`YYYY-MM`).
    pub first: Option<String>,
    pub last: Option<String>,
    /// The current month (UTC, or `--as-of`).
    pub current: String,
    /// The last month that has begun in any time zone (a month up to it takes the move path:
    /// an exclusion CHECK would refuse the application's inserts of it).
    pub begun: String,
    /// How many months after the current one the partitions reach (negative: the window ran
    /// out that many months ago).
    pub ahead: i32,
    pub default: Option<Relation>,
    /// Rows in DEFAULT, by month.
    pub default_rows: Vec<MonthRows>,
    /// Months from the first partition's through the window's end that have no partition.
    pub missing: Vec<String>,
}

impl Window {
    pub fn rows_in_default(&self) -> i64 {
        self.default_rows.iter().map(|m| m.rows).sum()
    }

    fn default_rows_of(&self, month: &str) -> i64 {
        self.default_rows
            .iter()
            .find(|m| m.month == month)
            .map_or(0, |m| m.rows)
    }
}

/// What one month needs.
#[derive(Clone, Debug, Serialize)]
pub struct MonthPlan {
    pub table: Relation,
    pub month: String,
    pub partition: Relation,
    /// Bounds, as timestamptz literals in UTC.
    pub from: String,
    pub to: String,
    /// Rows this month takes out of DEFAULT.
    pub rows_from_default: i64,
    pub steps: Vec<Step>,
}

const KEY: &str = "SELECT p.partstrat::text, p.partnatts, a.attname::text, format_type(a.atttypid, a.atttypmod) \
     FROM pg_partitioned_table p JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] \
     WHERE p.partrelid = $1";

/// The time zone in which every bound is a month start: UTC first, then the session's, then
/// any other.
const ZONE: &str = "WITH b AS (SELECT unnest($1::text[])::timestamptz AS t), \
          z AS (SELECT 'UTC' AS name, 0 AS pri UNION ALL SELECT current_setting('TimeZone'), 1 \
                UNION ALL SELECT name, 2 FROM pg_timezone_names) \
     SELECT z.name::text FROM z WHERE NOT EXISTS (SELECT 1 FROM b \
       WHERE (b.t AT TIME ZONE z.name) <> date_trunc('month', b.t AT TIME ZONE z.name)) \
     ORDER BY z.pri, z.name LIMIT 1";

/// The months `[from, to)` covers, in zone $3.
const MONTHS: &str = "SELECT to_char(m, 'YYYY-MM') FROM generate_series( \
       $1::text::timestamptz AT TIME ZONE $3, ($2::text::timestamptz AT TIME ZONE $3) - interval '1 month', \
       interval '1 month') m";

/// The current month (UTC, or `--as-of`), and the last month that has begun anywhere: a day
/// ahead covers every time zone bounds may be fixed in. `--as-of` stands for today in both, so
/// that a rehearsal (and a test) is the same whatever the date; a real run with an `--as-of` in
/// the past is warned about by [`crate::partitions::run`].
const CURRENT: &str = "SELECT to_char(date_trunc('month', coalesce($1::text::timestamp, now() AT TIME ZONE 'UTC')), 'YYYY-MM'), \
     to_char(date_trunc('month', coalesce($1::text::timestamp, now() AT TIME ZONE 'UTC') + interval '1 day'), 'YYYY-MM')";

/// The literals of `FOR VALUES FROM ('a') TO ('b')`; `None` for DEFAULT, MINVALUE or MAXVALUE.
fn bound_literals(bound: &str) -> Option<(String, String)> {
    let rest = bound.strip_prefix("FOR VALUES FROM ('")?;
    let (from, rest) = rest.split_once("') TO ('")?;
    let to = rest.strip_suffix("')")?;
    Some((from.to_string(), to.to_string()))
}

fn layout_error(table: &Relation, detail: String) -> Error {
    Error::Layout {
        table: table.plain(),
        detail,
    }
}

/// Reads one table's window. Read-only.
pub fn window(
    c: &mut impl GenericClient,
    table: &Relation,
    premake: u32,
    as_of: Option<&str>,
) -> Result<Window> {
    let nodes = catalog::tree(c, table)?.ok_or_else(|| Error::MissingTable {
        table: table.plain(),
        needed_by: "the partition window".into(),
    })?;
    let key = partition_key(c, table, nodes[0].oid)?;
    let parts: Vec<&catalog::Node> = nodes.iter().filter(|n| n.level == 1).collect();
    let (zone, covered) = covered_months(c, table, &parts)?;
    let row = c
        .query_one(CURRENT, &[&as_of])
        .map_err(|e| Error::db("reading the current month", e))?;
    let (current, begun): (String, String) = (row.get(0), row.get(1));
    let default = default_partition(table, &parts)?;
    let default_rows = match &default {
        Some(d) => rows_by_month(c, d, &key, &zone)?,
        None => Vec::new(),
    };
    // `covered_months` refuses a table without any month, so both exist.
    let first = covered.iter().next().cloned().unwrap_or_default();
    let last = covered.iter().next_back().cloned().unwrap_or_default();
    let missing = months_between(&first, &add_months(&current, premake as i32))
        .into_iter()
        .filter(|m| !covered.contains(m))
        .collect();
    Ok(Window {
        table: table.clone(),
        ahead: month_index(&last) - month_index(&current),
        zone,
        key,
        begun,
        first: Some(first),
        last: Some(last),
        current,
        default,
        default_rows,
        missing,
    })
}

/// The time zone in which every partition's bounds are month starts, and the months they
/// cover. Refuses a table without a monthly partition: there is nothing to continue.
fn covered_months(
    c: &mut impl GenericClient,
    table: &Relation,
    parts: &[&catalog::Node],
) -> Result<(String, std::collections::BTreeSet<String>)> {
    let ranged: Vec<(String, String)> = parts
        .iter()
        .filter_map(|n| bound_literals(&n.bound))
        .collect();
    if ranged.is_empty() {
        return Err(layout_error(table, "it has no monthly partition to continue from: create the first month by hand (CREATE TABLE ... PARTITION OF ... FOR VALUES FROM ... TO ...), then run partitions again".into()));
    }
    let bounds: Vec<String> = ranged
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let zone: String = c
        .query_opt(ZONE, &[&bounds])
        .map_err(|e| Error::db("finding the time zone of the partition bounds", e))?
        .map(|r| r.get(0))
        .ok_or_else(|| layout_error(table, "its partition bounds are not month starts in any time zone, so the next months cannot continue them".into()))?;
    let mut covered = std::collections::BTreeSet::new();
    for (from, to) in &ranged {
        for r in c
            .query(MONTHS, &[from, to, &zone])
            .map_err(|e| Error::db("listing months", e))?
        {
            covered.insert(r.get::<_, String>(0));
        }
    }
    Ok((zone, covered))
}

/// The DEFAULT partition, if any; refused when it is itself partitioned (its rows could not be
/// counted or moved with `ONLY`).
fn default_partition(table: &Relation, parts: &[&catalog::Node]) -> Result<Option<Relation>> {
    match parts.iter().find(|n| n.is_default()) {
        Some(n) if n.kind == 'p' => Err(layout_error(
            table,
            format!(
                "its DEFAULT partition {} is itself partitioned, which the runner does not maintain: make DEFAULT a plain table",
                n.rel.plain()
            ),
        )),
        Some(n) => Ok(Some(n.rel.clone())),
        None => Ok(None),
    }
}

fn partition_key(c: &mut impl GenericClient, table: &Relation, oid: u32) -> Result<String> {
    let row = c
        .query_opt(KEY, &[&oid])
        .map_err(|e| Error::db("reading the partition key", e))?
        .ok_or_else(|| layout_error(table, "it is not partitioned".into()))?;
    let (strategy, natts, column, ty): (String, i16, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if strategy != "r" || natts != 1 || ty != "timestamp with time zone" {
        return Err(layout_error(
            table,
            format!("it is partitioned by {strategy} on {natts} column(s) ({column} {ty}), not by range on one timestamptz column"),
        ));
    }
    Ok(column)
}

fn rows_by_month(
    c: &mut impl GenericClient,
    default: &Relation,
    key: &str,
    zone: &str,
) -> Result<Vec<MonthRows>> {
    let sql = format!(
        "SELECT to_char(date_trunc('month', {} AT TIME ZONE $1), 'YYYY-MM'), count(*) FROM ONLY {default} GROUP BY 1 ORDER BY 1",
        Ident::new(key)
    );
    Ok(c.query(&sql, &[&zone])
        .map_err(|e| {
            Error::db(
                format!("counting the rows of {} by month", default.plain()),
                e,
            )
        })?
        .into_iter()
        .map(|r| MonthRows {
            month: r.get(0),
            rows: r.get(1),
        })
        .collect())
}

/// `YYYY-MM` as a number of months.
fn month_index(m: &str) -> i32 {
    let (y, mo) = m.split_once('-').unwrap_or(("0", "1"));
    y.parse::<i32>().unwrap_or(0) * 12 + mo.parse::<i32>().unwrap_or(1) - 1
}

fn month_of(index: i32) -> String {
    format!(
        "{:04}-{:02}",
        index.div_euclid(12),
        index.rem_euclid(12) + 1
    )
}

fn add_months(m: &str, n: i32) -> String {
    month_of(month_index(m) + n)
}

/// Every month from `from` through `to`, inclusive.
fn months_between(from: &str, to: &str) -> Vec<String> {
    (month_index(from)..=month_index(to))
        .map(month_of)
        .collect()
}

const BOUNDS: &str = "SELECT to_char(($1::text || '-01')::timestamp AT TIME ZONE $2 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00', \
       to_char((($1::text || '-01')::timestamp + interval '1 month') AT TIME ZONE $2 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'";

/// The name of the constraint the engine puts on DEFAULT while `month` is created.
pub fn exclusion_name(month: &str) -> String {
    format!("mcm_excludes_{}", month.replace('-', "_"))
}

/// The CHECK of a new table's bounds while it is standalone.
pub const BOUND_CHECK: &str = "mcm_month_bound";

/// Plans every missing month of `window`. Read-only.
pub(crate) fn plan(
    c: &mut impl GenericClient,
    planner: &mut Planner,
    window: &Window,
) -> Result<Vec<MonthPlan>> {
    let parent = catalog::relation(c, &window.table)?
        .ok_or_else(|| layout_error(&window.table, "it does not exist".into()))?;
    planner.load_schema(c, window.table.schema.as_str())?;
    let mirror = Mirror {
        indexes: catalog::indexes_to_mirror(c, parent.oid)?,
    };
    let columns = catalog::columns(c, parent.oid)?;
    let referenced = catalog::referenced_tables(c, parent.oid)?;
    let mut plans = Vec::new();
    for month in &window.missing {
        let row = c
            .query_one(BOUNDS, &[month, &window.zone])
            .map_err(|e| Error::db("computing the bounds of a month", e))?;
        let (from, to): (String, String) = (row.get(0), row.get(1));
        let partition = Relation::new(
            window.table.schema.as_str(),
            format!("{}_{}", window.table.name.as_str(), month.replace('-', "_")),
        );
        let m = MonthSpec {
            window,
            month,
            partition: &partition,
            from: &from,
            to: &to,
            columns: &columns,
            referenced: &referenced,
        };
        let steps = month_steps(c, planner, &m, &mirror)?;
        plans.push(MonthPlan {
            table: window.table.clone(),
            month: month.clone(),
            partition,
            rows_from_default: window.default_rows_of(month),
            from,
            to,
            steps,
        });
    }
    Ok(plans)
}

/// What a new partition must carry of its parent.
struct Mirror {
    indexes: Vec<catalog::MirrorIndex>,
}

/// What a table of the month's name already carries (a killed run's leftover).
#[derive(Default)]
struct Carried {
    /// Signatures of its indexes.
    indexes: Vec<String>,
}

/// One month being planned.
struct MonthSpec<'a> {
    window: &'a Window,
    month: &'a str,
    partition: &'a Relation,
    from: &'a str,
    to: &'a str,
    columns: &'a [String],
    referenced: &'a [Relation],
}

impl MonthSpec<'_> {
    fn step(&self, on: &Relation, action: Action, sql: String, locks: String) -> Step {
        Step::new(self.partition.name.as_str(), on, action, sql, locks)
    }

    fn range(&self) -> String {
        let key = Ident::new(self.window.key.as_str());
        format!(
            "{key} >= {} AND {key} < {}",
            quote_literal(self.from),
            quote_literal(self.to)
        )
    }

    fn attach_sql(&self) -> String {
        format!(
            "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})",
            self.window.table,
            self.partition,
            quote_literal(self.from),
            quote_literal(self.to)
        )
    }
}

fn month_steps(
    c: &mut impl GenericClient,
    planner: &mut Planner,
    m: &MonthSpec<'_>,
    mirror: &Mirror,
) -> Result<Vec<Step>> {
    let (table, part) = (&m.window.table, m.partition);
    let existing = catalog::relation(c, part)?;
    let mut steps = Vec::new();
    let on_new = match existing {
        None => {
            steps.push(m.step(
                part,
                Action::CreateTable,
                format!(
                    "CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE); \
                     ALTER TABLE {part} ADD CONSTRAINT {} CHECK ({})",
                    Ident::new(BOUND_CHECK),
                    m.range()
                ),
                format!("ACCESS SHARE on {} (a new table: nothing live is locked)", table.plain()),
            ));
            Carried::default()
        }
        Some(info) => standalone_leftover(c, m, info.oid)?,
    };
    let missing_indexes: Vec<String> = mirror
        .indexes
        .iter()
        .filter(|ix| !on_new.indexes.contains(&ix.signature))
        .map(|ix| ix.statement(planner, part))
        .collect();
    if !missing_indexes.is_empty() {
        steps.push(m.step(
            part,
            Action::CreateIndexes,
            missing_indexes.join("; "),
            format!("SHARE on the new {} only (empty: instant)", part.plain()),
        ));
    }
    attach_steps(c, m, &mut steps)?;
    Ok(steps)
}

/// A table of the month's name that a killed run left standalone: reused if it is empty and has
/// the parent's columns; returns what it already carries.
fn standalone_leftover(c: &mut impl GenericClient, m: &MonthSpec<'_>, oid: u32) -> Result<Carried> {
    let part = m.partition;
    let (is_partition, rows): (bool, i64) = {
        let r = c
            .query_one(
                &format!("SELECT (SELECT relispartition FROM pg_class WHERE oid = $1), (SELECT count(*) FROM {part})"),
                &[&oid],
            )
            .map_err(|e| Error::db(format!("inspecting {}", part.plain()), e))?;
        (r.get(0), r.get(1))
    };
    let columns = catalog::columns(c, oid)?;
    if is_partition || rows > 0 || columns != m.columns {
        return Err(layout_error(
            &m.window.table,
            format!(
                "{} exists and is not an empty standalone table with its columns ({}; {rows} rows), so month {} cannot be created under its name: rename or drop it",
                part.plain(),
                if is_partition { "it is a partition of another table" } else { "standalone" },
                m.month
            ),
        ));
    }
    Ok(Carried {
        indexes: catalog::indexes_to_mirror(c, oid)?
            .into_iter()
            .map(|ix| ix.signature)
            .collect(),
    })
}

/// How a prepared month gets attached.
enum Path {
    /// No DEFAULT partition: attach.
    Attach,
    /// A month without rows in DEFAULT that has not begun (or whose exclusion CHECK is already
    /// in place): exclude it from DEFAULT, validate that, attach without scanning DEFAULT.
    Exclude,
    /// A month with rows in DEFAULT, or one that has begun (its inserts may be landing in
    /// DEFAULT right now, so no CHECK may refuse them): move its rows and attach in one
    /// transaction.
    Move,
}

/// The steps from a prepared table to an attached partition without helper CHECKs.
fn attach_steps(
    c: &mut impl GenericClient,
    m: &MonthSpec<'_>,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let part = m.partition;
    let exclusion = Ident::new(exclusion_name(m.month));
    let existing = match &m.window.default {
        Some(d) => exclusion_state(c, d, &exclusion)?,
        None => None,
    };
    let rows = m.window.default_rows_of(m.month);
    let begun = month_index(m.month) <= month_index(&m.window.begun);
    let path = match (&m.window.default, existing) {
        (None, _) => Path::Attach,
        (Some(_), _) if rows > 0 => Path::Move,
        (Some(_), Some(_)) => Path::Exclude,
        (Some(_), None) if begun => Path::Move,
        (Some(_), None) => Path::Exclude,
    };
    match (path, &m.window.default) {
        (Path::Move, Some(d)) => {
            if rows > 0 {
                refuse_unsafe_move(c, m, d)?;
            }
            if existing.is_some() {
                // A NOT VALID leftover that rows got past: it goes before they move.
                steps.push(drop_exclusion(m, d, &exclusion));
            }
            steps.push(move_and_attach(m, d));
        }
        (Path::Exclude, Some(d)) => exclude_steps(m, d, &exclusion, existing, steps),
        _ => steps.push(attach_partition(m, None)),
    }
    steps.push(m.step(
        part,
        Action::DropChecks,
        format!(
            "ALTER TABLE {part} DROP CONSTRAINT IF EXISTS {}",
            Ident::new(BOUND_CHECK)
        ),
        format!(
            "ACCESS EXCLUSIVE on the new partition {} (brief)",
            part.plain()
        ),
    ));
    Ok(())
}

/// A month DEFAULT holds no rows of: an exclusion CHECK on DEFAULT (added NOT VALID, then
/// validated without blocking anyone, each unless an earlier run did it), so that the ATTACH
/// scans nothing; then the ATTACH, and the CHECK goes.
fn exclude_steps(
    m: &MonthSpec<'_>,
    d: &Relation,
    exclusion: &Ident,
    existing: Option<bool>,
    steps: &mut Vec<Step>,
) {
    if existing.is_none() {
        steps.push(m.step(
            d,
            Action::AddExclusion,
            format!(
                "ALTER TABLE {d} ADD CONSTRAINT {exclusion} CHECK (NOT ({})) NOT VALID",
                m.range()
            ),
            format!("ACCESS EXCLUSIVE on {} (brief: no scan)", d.plain()),
        ));
    }
    if existing != Some(true) {
        steps.push(m.step(
            d,
            Action::ValidateExclusion,
            format!("ALTER TABLE {d} VALIDATE CONSTRAINT {exclusion}"),
            format!(
                "SHARE UPDATE EXCLUSIVE on {} (scans it; reads and writes go on)",
                d.plain()
            ),
        ));
    }
    steps.push(attach_partition(m, Some(d)));
    steps.push(drop_exclusion(m, d, exclusion));
}

/// What the move's `DELETE` from DEFAULT would fire that its `INSERT` into the standalone table
/// would not: a user trigger on DEFAULT (counters, audit), or a foreign key of another table
/// that references the partitioned table (its ON DELETE action would delete or change that
/// table's rows). Listed, so that the move is refused instead of losing them.
const MOVE_HAZARDS: &str = "SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t
     WHERE t.tgrelid = $1::text::regclass AND t.tgconstraint = 0 AND (NOT t.tgisinternal OR t.tgparentid <> 0)
     UNION ALL
     SELECT format('foreign key %s of %s', k.conname, k.conrelid::regclass) FROM pg_constraint k
     WHERE k.contype = 'f' AND k.confrelid IN (SELECT relid FROM pg_partition_tree($2::text::regclass))
     ORDER BY 1";

fn refuse_unsafe_move(
    c: &mut impl GenericClient,
    m: &MonthSpec<'_>,
    default: &Relation,
) -> Result<()> {
    let hazards: Vec<String> = c
        .query(
            MOVE_HAZARDS,
            &[&default.to_string(), &m.window.table.to_string()],
        )
        .map_err(|e| Error::db("reading what a move out of DEFAULT would fire", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if hazards.is_empty() {
        return Ok(());
    }
    Err(layout_error(
        &m.window.table,
        format!(
            "{} rows of {} are in {}, but moving them would fire {}: move them by hand (or drop what would fire), then run partitions again",
            m.window.default_rows_of(m.month),
            m.month,
            default.plain(),
            hazards.join(", ")
        ),
    ))
}

/// Whether DEFAULT carries the month's exclusion CHECK, and whether it is validated.
fn exclusion_state(
    c: &mut impl GenericClient,
    default: &Relation,
    exclusion: &Ident,
) -> Result<Option<bool>> {
    Ok(c
        .query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2 AND contype = 'c'",
            &[&default.to_string(), &exclusion.as_str()],
        )
        .map_err(|e| Error::db("reading the checks of the DEFAULT partition", e))?
        .map(|r| r.get(0)))
}

fn drop_exclusion(m: &MonthSpec<'_>, default: &Relation, exclusion: &Ident) -> Step {
    m.step(
        default,
        Action::DropChecks,
        format!("ALTER TABLE {default} DROP CONSTRAINT IF EXISTS {exclusion}"),
        format!("ACCESS EXCLUSIVE on {} (brief)", default.plain()),
    )
}

fn attach_partition(m: &MonthSpec<'_>, default: Option<&Relation>) -> Step {
    let table = &m.window.table;
    m.step(
        table,
        Action::AttachPartition,
        m.attach_sql(),
        format!(
            "SHARE UPDATE EXCLUSIVE on {}, ACCESS EXCLUSIVE on {} and on the new table (brief: nothing scanned or built), SHARE ROW EXCLUSIVE on the tables its keys reference",
            table.plain(),
            default.map_or("(no DEFAULT partition)".into(), Relation::plain)
        ),
    )
}

/// `LOCK` of the tables the parent's keys reference, in the mode ATTACH takes on them, so that
/// the move takes every lock at its start: a lock taken later in the transaction could close a
/// deadlock with an application transaction that waits for the first ones.
fn lock_referenced(referenced: &[Relation]) -> String {
    if referenced.is_empty() {
        return String::new();
    }
    let list = referenced
        .iter()
        .map(Relation::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("LOCK TABLE {list} IN SHARE ROW EXCLUSIVE MODE; ")
}

/// Moves the month's rows out of DEFAULT and attaches, in one transaction. Writers of the
/// parent wait on its SHARE lock before they route a row (an insert routed to DEFAULT before
/// the attach would fail with 23514 after it), so none fails; readers go on until the attach,
/// for which the parent is locked ACCESS EXCLUSIVE: a query reads the parent's partition list
/// before it locks the partitions, so one that queued behind the attach on DEFAULT alone would
/// run, after the commit, with the old list and a new snapshot, and see none of the moved rows
/// (a test's reader did).
fn move_and_attach(m: &MonthSpec<'_>, default: &Relation) -> Step {
    let (table, part) = (&m.window.table, m.partition);
    let cols = m
        .columns
        .iter()
        .map(|c| Ident::new(c.as_str()).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    m.step(
        table,
        Action::MoveAndAttach,
        format!(
            "LOCK TABLE {table} IN SHARE MODE; LOCK TABLE {default} IN SHARE MODE; {}\
             WITH moved AS (DELETE FROM ONLY {default} WHERE {} RETURNING {cols}) \
             INSERT INTO {part} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved; \
             LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; {}",
            lock_referenced(m.referenced),
            m.range(),
            m.attach_sql()
        ),
        format!(
            "SHARE on {t} and SHARE ROW EXCLUSIVE on the tables its keys reference for the move ({} rows deleted from {d} and inserted into the new table: reads go on, writes into {t} and those tables wait, none fails), then ACCESS EXCLUSIVE on {t} while the attach scans {d} and checks the moved rows against the keys (every read of {t} waits)",
            m.window.default_rows_of(m.month),
            t = table.plain(),
            d = default.plain(),
        ),
    )
}

/// Helper CHECKs a killed run left where no month is being created any more: the bound CHECK
/// on an attached partition, an exclusion CHECK on DEFAULT for a month that has its partition.
pub(crate) fn leftovers(c: &mut impl GenericClient, window: &Window) -> Result<Vec<Step>> {
    let missing: Vec<String> = window.missing.iter().map(|m| exclusion_name(m)).collect();
    let rows = c
        .query(
            "SELECT n.nspname::text, r.relname::text, k.conname::text FROM pg_constraint k \
               JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace \
              WHERE k.contype = 'c' AND k.conrelid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE level = 1) \
                AND (k.conname = $2 OR k.conname LIKE 'mcm\\_excludes\\_%') \
              ORDER BY 1, 2, 3",
            &[&window.table.to_string(), &BOUND_CHECK],
        )
        .map_err(|e| Error::db("reading helper checks left by an earlier run", e))?;
    Ok(rows
        .into_iter()
        .filter(|r| !missing.contains(&r.get::<_, String>(2)))
        .map(|r| {
            let on = Relation::new(r.get::<_, String>(0), r.get::<_, String>(1));
            let name = Ident::new(r.get::<_, String>(2));
            Step::new(
                name.as_str(),
                &on,
                Action::DropChecks,
                format!("ALTER TABLE {on} DROP CONSTRAINT IF EXISTS {name}"),
                format!("ACCESS EXCLUSIVE on {} (brief)", on.plain()),
            )
        })
        .collect())
}

impl catalog::MirrorIndex {
    /// The statement that builds this index of the parent on `part`, named as PostgreSQL names
    /// a partition's index.
    fn statement(&self, planner: &mut Planner, part: &Relation) -> String {
        let schema = part.schema.as_str().to_string();
        let name = choose_name(part.name.as_str(), &self.addition, self.label, |n| {
            planner.is_taken(&schema, n)
        });
        planner.take(&schema, &name);
        let name = Ident::new(name);
        match &self.constraint_def {
            Some(def) => format!("ALTER TABLE {part} ADD CONSTRAINT {name} {def}"),
            None => format!(
                "CREATE {}INDEX {name} ON {part} USING {}",
                if self.unique { "UNIQUE " } else { "" },
                self.using
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_bounds() {
        assert_eq!(add_months("2026-11", 6), "2027-05");
        assert_eq!(add_months("2027-01", -1), "2026-12");
        assert_eq!(
            months_between("2026-11", "2027-02"),
            ["2026-11", "2026-12", "2027-01", "2027-02"]
        );
        assert_eq!(
            bound_literals(
                "FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')"
            ),
            Some((
                "2024-01-01 00:00:00+00".into(),
                "2024-02-01 00:00:00+00".into()
            ))
        );
        assert_eq!(bound_literals("DEFAULT"), None);
        assert_eq!(
            bound_literals("FOR VALUES FROM (MINVALUE) TO ('2024-01-01 00:00:00+00')"),
            None
        );
    }
}
