//! `check`: the spec's check_orphaned_data. Orphan counts per table, the status of both tenant
//! constraints and indexes, and the partition layout. Read-only.

use postgres::GenericClient;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::online::{constraint_state, index_validity, is_partitioned};
use crate::orphans::{self, TableOrphans};
use crate::tenant_fk::ALL;
use crate::verify::{constraint_problems, index_problems};

#[derive(Clone, Debug, Serialize)]
pub struct ConstraintStatus {
    pub table: String,
    pub constraint: String,
    pub present: bool,
    pub validated: bool,
    pub index: String,
    /// `None` when the index does not exist.
    pub index_valid: Option<bool>,
    /// Everything that differs from the restored end state, on the parent and the partitions.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionLayout {
    pub table: String,
    pub partitioned: bool,
    pub partitions: usize,
    pub first: Option<String>,
    pub last: Option<String>,
    pub default_partition: Option<String>,
    /// Rows in the DEFAULT partition: rows outside every monthly range.
    pub default_rows: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub orphans: Vec<TableOrphans>,
    pub constraints: Vec<ConstraintStatus>,
    pub layout: Vec<PartitionLayout>,
}

impl CheckReport {
    pub fn orphan_total(&self) -> i64 {
        self.orphans.iter().map(|t| t.count).sum()
    }

    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.orphans {
            out.push(format!(
                "orphans    {:<9} {:>10}{}",
                t.table,
                t.count,
                if t.sample_ids.is_empty() {
                    String::new()
                } else {
                    format!("  sample ids: {}", t.sample_ids.join(", "))
                }
            ));
        }
        for c in &self.constraints {
            let state = match (c.present, c.validated) {
                (false, _) => "MISSING",
                (true, false) => "NOT VALID",
                (true, true) => "valid",
            };
            let index = match c.index_valid {
                None => "MISSING",
                Some(false) => "INVALID",
                Some(true) => "valid",
            };
            out.push(format!(
                "constraint {:<9} {} {state}; index {} {index}",
                c.table, c.constraint, c.index
            ));
            for p in &c.problems {
                out.push(format!("           {:<9} - {p}", c.table));
            }
        }
        for l in &self.layout {
            if l.partitioned {
                out.push(format!(
                    "layout     {:<9} {} partitions ({} .. {}), default partition {} with {} rows",
                    l.table,
                    l.partitions,
                    l.first.as_deref().unwrap_or("-"),
                    l.last.as_deref().unwrap_or("-"),
                    l.default_partition.as_deref().unwrap_or("(none)"),
                    l.default_rows
                ));
            } else {
                out.push(format!("layout     {:<9} not partitioned", l.table));
            }
        }
        out
    }
}

const TABLE_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";
const PARTITIONS: &str = "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' \
     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
     WHERE i.inhparent = $1::text::regclass ORDER BY c.relname";

pub fn check(client: &mut impl GenericClient) -> Result<CheckReport> {
    for fk in ALL {
        let exists: bool = client
            .query_one(TABLE_EXISTS, &[&fk.table])
            .map_err(|e| Error::db("looking for the schema", e))?
            .get(0);
        if !exists {
            return Err(Error::Inconsistent {
                what: "the database".into(),
                detail: format!(
                    "it has no {} table: run `meta-chat-migrate migrate` first",
                    fk.table
                ),
            });
        }
    }
    let mut report = CheckReport {
        orphans: Vec::new(),
        constraints: Vec::new(),
        layout: Vec::new(),
    };
    for fk in ALL {
        report.orphans.push(orphans::count(client, fk)?);
        let state = constraint_state(client, fk.table, fk.constraint)?;
        let mut problems = constraint_problems(client, fk)?;
        problems.extend(index_problems(client, fk)?);
        report.constraints.push(ConstraintStatus {
            table: fk.table.into(),
            constraint: fk.constraint.into(),
            present: state.is_some(),
            validated: state.is_some_and(|s| s.validated),
            index: fk.index.into(),
            index_valid: index_validity(client, fk.index)?,
            problems,
        });
        report.layout.push(layout(client, fk.table)?);
    }
    Ok(report)
}

fn layout(client: &mut impl GenericClient, table: &str) -> Result<PartitionLayout> {
    let partitioned = is_partitioned(client, table)?;
    let parts: Vec<(String, bool)> = client
        .query(PARTITIONS, &[&table])
        .map_err(|e| Error::db(format!("listing partitions of {table}"), e))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let default_partition = parts.iter().find(|(_, d)| *d).map(|(n, _)| n.clone());
    let ranged: Vec<&String> = parts.iter().filter(|(_, d)| !*d).map(|(n, _)| n).collect();
    let default_rows = match &default_partition {
        Some(name) => client
            .query_one(
                &format!("SELECT count(*) FROM {}", crate::db::quote_ident(name)),
                &[],
            )
            .map_err(|e| Error::db(format!("counting rows of {name}"), e))?
            .get(0),
        None => 0,
    };
    Ok(PartitionLayout {
        table: table.into(),
        partitioned,
        partitions: parts.len(),
        first: ranged.first().map(|s| s.to_string()),
        last: ranged.last().map(|s| s.to_string()),
        default_partition,
        default_rows,
    })
}
