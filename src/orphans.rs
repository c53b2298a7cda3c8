//! The orphan pre-flight (the spec's check_orphaned_data): rows whose "tenantId" references no
//! tenant, counted before the tenant FKs go on, and what `--orphans` does with them.
//!
//! `refuse` changes nothing. `archive` and `delete` run in one transaction, and each moves rows
//! with a single statement (`DELETE ... RETURNING` / `UPDATE ... RETURNING` feeding the archive),
//! so exactly the rows removed are the rows archived, even while the application writes.

use std::fmt;

use postgres::{Client, GenericClient};
use serde::Serialize;

use crate::config::OrphanPolicy;
use crate::error::{Error, Result};
use crate::tenant_fk::{OnDelete, TenantFk};

/// How many sample ids a report shows per table.
pub const SAMPLE_SIZE: i64 = 10;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TableOrphans {
    pub table: String,
    pub count: i64,
    /// Up to ten ids of orphaned rows.
    pub sample_ids: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct OrphanReport {
    pub tables: Vec<TableOrphans>,
}

impl OrphanReport {
    pub fn total(&self) -> i64 {
        self.tables.iter().map(|t| t.count).sum()
    }
}

impl fmt::Display for OrphanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to add the tenant foreign keys: orphaned rows reference no tenant:"
        )?;
        for t in self.tables.iter().filter(|t| t.count > 0) {
            write!(
                f,
                " {} {} (sample ids: {});",
                t.count,
                t.table,
                t.sample_ids.join(", ")
            )?;
        }
        write!(
            f,
            " nothing was changed; inspect them with `meta-chat-migrate check`, then rerun with --orphans archive (moves them to orphaned_*_archive tables) or --orphans delete"
        )
    }
}

/// What `archive` or `delete` did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Resolved {
    pub table: String,
    /// Rows deleted (messages) or set to NULL (api_logs).
    pub rows: u64,
    /// Where their old contents were recorded, if anywhere.
    pub archived_in: Option<String>,
}

/// Counts the orphans of one table, with up to ten sample ids. Read-only.
pub fn count(client: &mut impl GenericClient, fk: &TenantFk) -> Result<TableOrphans> {
    let condition = fk.orphan_condition("o");
    let count: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {} o WHERE {condition}", fk.table),
            &[],
        )
        .map_err(|e| Error::db(format!("counting orphaned {}", fk.table), e))?
        .get(0);
    let sample_ids = if count > 0 {
        client
            .query(
                &format!(
                    "SELECT o.id::text FROM {} o WHERE {condition} ORDER BY o.id LIMIT $1",
                    fk.table
                ),
                &[&SAMPLE_SIZE],
            )
            .map_err(|e| Error::db(format!("sampling orphaned {}", fk.table), e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    Ok(TableOrphans {
        table: fk.table.to_string(),
        count,
        sample_ids,
    })
}

/// Counts orphans of every table in `fks`; under `refuse`, fails with the counts if there are
/// any; under `archive`/`delete`, resolves them in one transaction.
pub fn preflight(
    client: &mut Client,
    policy: OrphanPolicy,
    fks: &[&TenantFk],
) -> Result<Vec<Resolved>> {
    let mut report = OrphanReport::default();
    for fk in fks {
        let t = count(client, fk)?;
        log::info!("orphan pre-flight: {} orphaned {}", t.count, t.table);
        report.tables.push(t);
    }
    if report.total() == 0 {
        return Ok(Vec::new());
    }
    if policy == OrphanPolicy::Refuse {
        return Err(Error::Orphans(report));
    }
    let dirty: Vec<&TenantFk> = fks
        .iter()
        .zip(&report.tables)
        .filter(|(_, t)| t.count > 0)
        .map(|(fk, _)| *fk)
        .collect();
    resolve(client, policy, &dirty)
}

fn resolve(client: &mut Client, policy: OrphanPolicy, fks: &[&TenantFk]) -> Result<Vec<Resolved>> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::db("starting the orphan clean-up", e))?;
    let mut done = Vec::new();
    for fk in fks {
        let condition = fk.orphan_condition("o");
        let (sql_steps, archived_in): (Vec<String>, Option<String>) = match (fk.on_delete, policy) {
            // Rows that must go: archived (moved) or deleted.
            (OnDelete::Cascade, OrphanPolicy::Archive) => (
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {archive} AS \
                         SELECT *, now() AS \"archivedAt\" FROM {table} WITH NO DATA",
                        archive = fk.archive_table,
                        table = fk.table
                    ),
                    format!(
                        "WITH moved AS (DELETE FROM {table} o WHERE {condition} RETURNING o.*) \
                         INSERT INTO {archive} SELECT moved.*, now() FROM moved",
                        archive = fk.archive_table,
                        table = fk.table
                    ),
                ],
                Some(fk.archive_table.to_string()),
            ),
            (OnDelete::Cascade, _) => (
                vec![format!("DELETE FROM {} o WHERE {condition}", fk.table)],
                None,
            ),
            // Rows that stay with "tenantId" NULL: their old tenant is recorded first.
            (OnDelete::SetNull, _) => (
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {archive} AS \
                         SELECT id, \"createdAt\", \"tenantId\", now() AS \"archivedAt\" FROM {table} WITH NO DATA",
                        archive = fk.archive_table,
                        table = fk.table
                    ),
                    format!(
                        "WITH orphan AS (SELECT o.id, o.\"createdAt\", o.\"tenantId\" FROM {table} o WHERE {condition} FOR UPDATE), \
                              nulled AS (UPDATE {table} l SET \"tenantId\" = NULL FROM orphan \
                                          WHERE l.id = orphan.id AND l.\"createdAt\" = orphan.\"createdAt\" \
                                          RETURNING orphan.id, orphan.\"createdAt\", orphan.\"tenantId\") \
                         INSERT INTO {archive} (id, \"createdAt\", \"tenantId\") SELECT * FROM nulled",
                        archive = fk.archive_table,
                        table = fk.table
                    ),
                ],
                Some(fk.archive_table.to_string()),
            ),
        };
        let mut rows = 0;
        for sql in &sql_steps {
            rows = tx
                .execute(sql.as_str(), &[])
                .map_err(|e| Error::db(format!("resolving orphaned {}", fk.table), e))?;
        }
        let verb = match fk.on_delete {
            OnDelete::Cascade => "deleted",
            OnDelete::SetNull => "set \"tenantId\" NULL on",
        };
        match &archived_in {
            Some(a) => log::info!("orphans: {verb} {rows} {} (recorded in {a})", fk.table),
            None => log::warn!(
                "orphans: {verb} {rows} {} without archive (--orphans delete)",
                fk.table
            ),
        }
        done.push(Resolved {
            table: fk.table.to_string(),
            rows,
            archived_in,
        });
    }
    tx.commit()
        .map_err(|e| Error::db("committing the orphan clean-up", e))?;
    Ok(done)
}
