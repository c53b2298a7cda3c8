//! A monthly table's window as the catalog holds it: its partition key, the time zone its bounds
//! are month starts in, the months its partitions cover, its DEFAULT partition and the rows it
//! holds by month, and the months the window lacks. Read-only.
//!
//! A layout the runner cannot continue (a partition whose bounds are not whole months, a
//! sub-partitioned DEFAULT, a key that is not one timestamptz column) is refused with an error
//! that names the offending relation, for this table only.

use std::collections::BTreeSet;

use crate::catalog::Reader;
use serde::Serialize;

use crate::catalog;
use crate::error::{Error, Result};
use crate::sql::{Ident, Relation};

/// Rows of one month.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MonthRows {
    /// `YYYY-MM`.
    pub month: String,
    /// Rows of it.
    pub rows: i64,
}

/// One partition with a range of whole months.
#[derive(Clone, Debug, Serialize)]
pub struct Ranged {
    pub partition: Relation,
    /// The first and the last month it covers (`YYYY-MM`).
    pub first: String,
    pub last: String,
}

/// One table's window of monthly partitions, as the catalog holds it.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// The partitioned table.
    pub table: Relation,
    /// The time zone in which the existing partitions' bounds are month starts.
    pub zone: String,
    /// The partition key column.
    pub key: String,
    /// The first and last months with a partition (`YYYY-MM`).
    pub first: Option<String>,
    /// The last month with a partition.
    pub last: Option<String>,
    /// The current month (UTC, or `--as-of`).
    pub current: String,
    /// The last month that has begun in any time zone (a month up to it takes the move path:
    /// an exclusion CHECK would refuse the application's inserts of it).
    pub begun: String,
    /// How many months after the current one the partitions reach (negative: the window ran
    /// out that many months ago).
    pub ahead: i32,
    /// The DEFAULT partition, if there is one.
    pub default: Option<Relation>,
    /// The size of DEFAULT's table, in bytes (0 without one).
    pub default_bytes: i64,
    /// Rows in DEFAULT, by month.
    pub default_rows: Vec<MonthRows>,
    /// Months from the first partition's through the window's end that have no partition.
    pub missing: Vec<String>,
    /// The partitions of whole months, by their first month.
    #[serde(skip)]
    pub ranged: Vec<Ranged>,
}

impl Window {
    /// Rows in DEFAULT, all months.
    pub fn rows_in_default(&self) -> i64 {
        self.default_rows.iter().map(|m| m.rows).sum()
    }

    pub(crate) fn default_rows_of(&self, month: &str) -> i64 {
        self.default_rows
            .iter()
            .find(|m| m.month == month)
            .map_or(0, |m| m.rows)
    }

    /// The newest monthly partition: what a new month takes its grants and row-level security
    /// from.
    pub(crate) fn newest(&self) -> Option<&Relation> {
        self.ranged.last().map(|r| &r.partition)
    }

    /// Months from the current one through `premake` ahead that have no partition.
    pub fn missing_ahead(&self, premake: u32) -> Vec<String> {
        let end = add_months(&self.current, premake as i32);
        self.missing
            .iter()
            .filter(|m| {
                month_index(m) >= month_index(&self.current) && month_index(m) <= month_index(&end)
            })
            .cloned()
            .collect()
    }
}

const KEY: &str = "SELECT p.partstrat::text, p.partnatts, a.attname::text, format_type(a.atttypid, a.atttypmod) \
     FROM pg_partitioned_table p JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] \
     WHERE p.partrelid = $1";

/// For each candidate time zone (UTC, then the session's, then any other if neither fits), how
/// many partitions have bounds that are month starts in it. $1 names, $2 lower, $3 upper bounds.
const ZONES: &str = "WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS b(name, lo, hi)), \
          z AS (SELECT 'UTC'::text AS name, 0 AS pri UNION ALL SELECT current_setting('TimeZone'), 1 \
                UNION ALL SELECT name::text, 2 FROM pg_timezone_names WHERE $4), \
          fit AS (SELECT z.name AS zone, z.pri, b.name AS part, \
                    (b.lo::timestamptz AT TIME ZONE z.name) = date_trunc('month', b.lo::timestamptz AT TIME ZONE z.name) \
                    AND (b.hi::timestamptz AT TIME ZONE z.name) = date_trunc('month', b.hi::timestamptz AT TIME ZONE z.name) AS ok \
                  FROM z, b) \
     SELECT zone, count(*) FILTER (WHERE ok), array_agg(part ORDER BY part::int) FILTER (WHERE NOT ok) \
       FROM fit GROUP BY zone, pri ORDER BY count(*) FILTER (WHERE ok) DESC, pri, zone LIMIT 1";

/// The months each partition `[lo, hi)` covers, in zone $4, as (name, first, last).
const MONTHS: &str = "SELECT b.name, to_char(b.lo::timestamptz AT TIME ZONE $4, 'YYYY-MM'), \
       to_char((b.hi::timestamptz AT TIME ZONE $4) - interval '1 month', 'YYYY-MM') \
     FROM unnest($1::text[], $2::text[], $3::text[]) AS b(name, lo, hi) ORDER BY 2";

/// The current month (UTC, or `--as-of`), and the last month that has begun anywhere: a day
/// ahead covers every time zone bounds may be fixed in. `--as-of` stands for today in both, so
/// that a rehearsal (and a test) is the same whatever the date; a real run with an `--as-of` in
/// the past is warned about by the `partitions` command.
const CURRENT: &str = "SELECT to_char(date_trunc('month', coalesce($1::text::timestamp, now() AT TIME ZONE 'UTC')), 'YYYY-MM'), \
     to_char(date_trunc('month', coalesce($1::text::timestamp, now() AT TIME ZONE 'UTC') + interval '1 day'), 'YYYY-MM')";

/// The literals of `FOR VALUES FROM ('a') TO ('b')`; `None` for DEFAULT, MINVALUE or MAXVALUE.
fn bound_literals(bound: &str) -> Option<(String, String)> {
    let rest = bound.strip_prefix("FOR VALUES FROM ('")?;
    let (from, rest) = rest.split_once("') TO ('")?;
    let to = rest.strip_suffix("')")?;
    Some((from.to_string(), to.to_string()))
}

pub(crate) fn layout_error(table: &Relation, detail: String) -> Error {
    Error::Layout {
        table: table.plain(),
        detail,
    }
}

/// Reads one table's window. Read-only.
pub fn window(
    c: &mut dyn Reader,
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
    let (zone, ranged) = covered_months(c, table, &parts)?;
    let row = c
        .query_one(CURRENT, &[&as_of])
        .map_err(|e| Error::db("reading the current month", e))?;
    let (current, begun): (String, String) = (row.get(0), row.get(1));
    let default = default_partition(table, &parts)?;
    let (default_rows, default_bytes) = match &default {
        Some(d) => (rows_by_month(c, d, &key, &zone)?, relation_size(c, d)?),
        None => (Vec::new(), 0),
    };
    let covered: BTreeSet<String> = ranged
        .iter()
        .flat_map(|r| months_between(&r.first, &r.last))
        .collect();
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
        default_bytes,
        default_rows,
        missing,
        ranged,
    })
}

/// The time zone in which every partition's bounds are month starts, and the months each
/// covers. Refuses a table without a monthly partition (there is nothing to continue), and one
/// whose partitions are not whole months in any one time zone, naming those that are not.
fn covered_months(
    c: &mut dyn Reader,
    table: &Relation,
    parts: &[&catalog::Node],
) -> Result<(String, Vec<Ranged>)> {
    let ranged: Vec<(&catalog::Node, (String, String))> = parts
        .iter()
        .filter_map(|n| bound_literals(&n.bound).map(|b| (*n, b)))
        .collect();
    if ranged.is_empty() {
        return Err(layout_error(table, "it has no monthly partition to continue from: create the first month by hand (CREATE TABLE ... PARTITION OF ... FOR VALUES FROM ... TO ...), then run partitions again".into()));
    }
    // Partitions are named to SQL by their position: they may live in other schemas.
    let names: Vec<String> = (0..ranged.len()).map(|i| i.to_string()).collect();
    let rel_of = |key: &str| {
        key.parse::<usize>()
            .ok()
            .and_then(|i| ranged.get(i))
            .map(|(n, _)| n.rel.clone())
    };
    let lo: Vec<&str> = ranged.iter().map(|(_, b)| b.0.as_str()).collect();
    let hi: Vec<&str> = ranged.iter().map(|(_, b)| b.1.as_str()).collect();
    let mut fit = None;
    // The usual zones first; all of pg_timezone_names only when neither fits.
    for everywhere in [false, true] {
        let row = c
            .query_one(ZONES, &[&names, &lo, &hi, &everywhere])
            .map_err(|e| Error::db("finding the time zone of the partition bounds", e))?;
        let (zone, ok, odd): (String, i64, Option<Vec<String>>) =
            (row.get(0), row.get(1), row.get(2));
        fit = Some((zone, odd.unwrap_or_default()));
        if ok as usize == names.len() {
            break;
        }
    }
    let (zone, odd) = fit.unwrap_or_default();
    if !odd.is_empty() {
        let shown: Vec<String> = odd
            .iter()
            .take(5)
            .filter_map(|k| rel_of(k).map(|r| r.plain()))
            .collect();
        return Err(layout_error(table, format!(
            "partition(s) {}{} do not span whole months in {zone}, as its other partitions do, so the next months cannot continue them: give them whole-month bounds (or detach them), then run partitions again",
            shown.join(", "),
            if odd.len() > 5 { ", ..." } else { "" }
        )));
    }
    let rows = c
        .query(MONTHS, &[&names, &lo, &hi, &zone])
        .map_err(|e| Error::db("listing the months of the partitions", e))?;
    let months = rows
        .into_iter()
        .filter_map(|r| {
            Some(Ranged {
                partition: rel_of(&r.get::<_, String>(0))?,
                first: r.get(1),
                last: r.get(2),
            })
        })
        .collect();
    Ok((zone, months))
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

fn partition_key(c: &mut dyn Reader, table: &Relation, oid: u32) -> Result<String> {
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
    c: &mut dyn Reader,
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

fn relation_size(c: &mut dyn Reader, rel: &Relation) -> Result<i64> {
    Ok(c.query_one(
        "SELECT pg_relation_size($1::text::regclass)",
        &[&rel.to_string()],
    )
    .map_err(|e| Error::db(format!("reading the size of {}", rel.plain()), e))?
    .get(0))
}

/// `YYYY-MM` as a number of months.
pub(crate) fn month_index(m: &str) -> i32 {
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

pub(crate) fn add_months(m: &str, n: i32) -> String {
    month_of(month_index(m) + n)
}

/// Every month from `from` through `to`, inclusive.
fn months_between(from: &str, to: &str) -> Vec<String> {
    (month_index(from)..=month_index(to))
        .map(month_of)
        .collect()
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
