//! Adopting a database whose schema something else created (Prisma, or SQL by hand): tables
//! present, no refinery history. `migrate` refuses such a database and says what it found and
//! which `--baseline VERSION` fits; with `--baseline`, the versions up to VERSION are recorded
//! as applied without running, only if the catalog matches what VERSION implies.

use std::fmt;

use postgres::GenericClient;

use crate::embedded::{
    BASELINE, PARTITIONED, RESTORE_API_LOGS_TENANT_FK, RESTORE_MESSAGES_TENANT_FK,
};
use crate::error::{Error, Result};
use crate::online::{constraint_state, index_validity, is_partitioned};
use crate::tenant_fk::{TenantFk, API_LOGS, MESSAGES};

pub const TABLES: [&str; 4] = ["tenants", "conversations", "messages", "api_logs"];

const TABLE_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";
/// Any validated FK from the table's "tenantId" to tenants, whatever its name.
const HAS_TENANT_FK: &str = "SELECT EXISTS (SELECT 1 FROM pg_constraint c
     WHERE c.conrelid = to_regclass($1) AND c.contype = 'f' AND c.convalidated
       AND c.confrelid = to_regclass('tenants')
       AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = c.conrelid AND attname = 'tenantId')]::int2[])";
const PRISMA_FINISHED: &str = "SELECT migration_name FROM _prisma_migrations
     WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL ORDER BY finished_at, migration_name";

/// What the catalog holds of the platform's schema.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub tables: Vec<String>,
    pub messages_partitioned: bool,
    pub api_logs_partitioned: bool,
    /// A validated tenant FK of any name.
    pub messages_tenant_fk: bool,
    pub api_logs_tenant_fk: bool,
    /// The restored constraint and index, by the names the restore gives them.
    pub messages_restored: bool,
    pub api_logs_restored: bool,
    /// Finished, not rolled back rows of `_prisma_migrations`, if that table exists.
    pub prisma_finished: Option<Vec<String>>,
}

impl Found {
    pub fn has_schema(&self) -> bool {
        !self.tables.is_empty()
    }

    /// Why the catalog does not match what `version` implies, if it does not.
    pub fn mismatch(&self, version: i64) -> Option<String> {
        let missing: Vec<&str> = TABLES
            .iter()
            .copied()
            .filter(|t| !self.tables.iter().any(|have| have == t))
            .collect();
        if !missing.is_empty() {
            return Some(format!("tables {} are missing", missing.join(", ")));
        }
        let partitioned = self.messages_partitioned && self.api_logs_partitioned;
        if version == BASELINE {
            if self.messages_partitioned || self.api_logs_partitioned {
                return Some(
                    "messages or api_logs is already partitioned, which 20240101000000 does not do"
                        .into(),
                );
            }
            if !(self.messages_tenant_fk && self.api_logs_tenant_fk) {
                return Some("20240101000000 has tenant foreign keys on messages and api_logs, this database does not".into());
            }
            return None;
        }
        if !partitioned {
            return Some(format!("{version} implies messages and api_logs partitioned by month; they are not both partitioned"));
        }
        if version >= RESTORE_MESSAGES_TENANT_FK && !self.messages_restored {
            return Some(format!(
                "{version} implies {} and a valid {}; they are not both there",
                MESSAGES.constraint, MESSAGES.index
            ));
        }
        if version >= RESTORE_API_LOGS_TENANT_FK && !self.api_logs_restored {
            return Some(format!(
                "{version} implies {} and a valid {}; they are not both there",
                API_LOGS.constraint, API_LOGS.index
            ));
        }
        None
    }

    /// The newest version whose implications the catalog meets.
    pub fn best_baseline(&self) -> Option<i64> {
        [
            RESTORE_API_LOGS_TENANT_FK,
            RESTORE_MESSAGES_TENANT_FK,
            PARTITIONED,
            BASELINE,
        ]
        .into_iter()
        .find(|v| self.mismatch(*v).is_none())
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let describe = |t: &str, partitioned: bool| {
            if !self.tables.iter().any(|have| have == t) {
                return None;
            }
            Some(match t {
                "messages" | "api_logs" => format!(
                    "{t} ({})",
                    if partitioned {
                        "partitioned"
                    } else {
                        "not partitioned"
                    }
                ),
                _ => t.to_string(),
            })
        };
        let tables: Vec<String> = [
            describe("tenants", false),
            describe("conversations", false),
            describe("messages", self.messages_partitioned),
            describe("api_logs", self.api_logs_partitioned),
        ]
        .into_iter()
        .flatten()
        .collect();
        write!(f, "tables {}", tables.join(", "))?;
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "; tenant foreign keys: messages {}, api_logs {}",
            yes_no(self.messages_tenant_fk),
            yes_no(self.api_logs_tenant_fk)
        )?;
        match &self.prisma_finished {
            Some(names) if names.is_empty() => {
                write!(f, "; _prisma_migrations has no finished migration")
            }
            Some(names) => write!(f, "; _prisma_migrations finished: {}", names.join(", ")),
            None => write!(f, "; no _prisma_migrations table"),
        }
    }
}

pub(crate) fn table_exists(client: &mut impl GenericClient, name: &str) -> Result<bool> {
    client
        .query_one(TABLE_EXISTS, &[&name])
        .map(|r| r.get(0))
        .map_err(|e| Error::db("inspecting the schema", e))
}

/// The tenant FK facts of one table: (a tenant FK of any name, the restored one and its index).
fn tenant_fk_facts(client: &mut impl GenericClient, fk: &TenantFk) -> Result<(bool, bool)> {
    let any: bool = client
        .query_one(HAS_TENANT_FK, &[&fk.table])
        .map(|r| r.get(0))
        .map_err(|e| Error::db("inspecting the schema", e))?;
    let restored = constraint_state(client, fk.table, fk.constraint)?.is_some_and(|c| c.validated)
        && index_validity(client, fk.index)? == Some(true);
    Ok((any, restored))
}

/// Reads what the catalog holds. Read-only.
pub fn inspect(client: &mut impl GenericClient) -> Result<Found> {
    let mut found = Found::default();
    for t in TABLES {
        if table_exists(client, t)? {
            found.tables.push(t.to_string());
        }
    }
    let has = |name: &str| found.tables.iter().any(|t| t == name);
    let (tenants, messages, api_logs) = (has("tenants"), has("messages"), has("api_logs"));
    if messages {
        found.messages_partitioned = is_partitioned(client, "messages")?;
        if tenants {
            (found.messages_tenant_fk, found.messages_restored) =
                tenant_fk_facts(client, &MESSAGES)?;
        }
    }
    if api_logs {
        found.api_logs_partitioned = is_partitioned(client, "api_logs")?;
        if tenants {
            (found.api_logs_tenant_fk, found.api_logs_restored) =
                tenant_fk_facts(client, &API_LOGS)?;
        }
    }
    if table_exists(client, "_prisma_migrations")? {
        found.prisma_finished = Some(
            client
                .query(PRISMA_FINISHED, &[])
                .map_err(|e| Error::db("reading _prisma_migrations", e))?
                .into_iter()
                .map(|r| r.get(0))
                .collect(),
        );
    }
    Ok(found)
}
