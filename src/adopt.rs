//! Adopting a database whose schema something else created (Prisma, or SQL by hand): tables
//! present, no refinery history. `migrate` refuses such a database and says what it found and
//! which `--baseline VERSION` fits; with `--baseline`, the versions up to VERSION are recorded
//! as applied without running them, only if the catalog matches what VERSION implies. What a
//! version with online work implies is decided by the engine's own planning: every operation it
//! declares is in place, exactly as declared.

use std::fmt;

use crate::catalog::Reader;

use crate::catalog;
use crate::embedded::{BASELINE, DECLARATIONS, PARTITIONED, TABLES};
use crate::engine;
use crate::engine::ops::Operation;
use crate::error::{Error, Result};
use crate::sql::Relation;

/// Any validated FK from the table's "tenantId" to tenants, whatever its name.
const HAS_TENANT_FK: &str = "SELECT EXISTS (SELECT 1 FROM pg_constraint c
     WHERE c.conrelid = $1 AND c.contype = 'f' AND c.convalidated AND c.confrelid = $2
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
    /// The declared online operations that are in place, exactly as declared.
    pub in_place: Vec<&'static str>,
    /// Finished, not rolled back rows of `_prisma_migrations`, if that table exists.
    pub prisma_finished: Option<Vec<String>>,
}

/// How a mismatch names an operation: an index as "a valid" one (an INVALID leftover does not
/// count), anything else by its name.
fn describe(op: &dyn Operation) -> String {
    if op.kind().ends_with("index") {
        format!("a valid {}", op.id())
    } else {
        op.id().to_string()
    }
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
        if version == BASELINE {
            if self.messages_partitioned || self.api_logs_partitioned {
                return Some(format!(
                    "messages or api_logs is already partitioned, which {BASELINE} does not do"
                ));
            }
            if !(self.messages_tenant_fk && self.api_logs_tenant_fk) {
                return Some(format!("{BASELINE} has tenant foreign keys on messages and api_logs, this database does not"));
            }
            return None;
        }
        if !(self.messages_partitioned && self.api_logs_partitioned) {
            return Some(format!("{version} implies messages and api_logs partitioned by month; they are not both partitioned"));
        }
        for p in DECLARATIONS.iter().filter(|p| p.version <= version) {
            let mut ops: Vec<&dyn Operation> = p.ops().collect();
            // Keys first, then indexes, whatever order the phases run them in.
            ops.sort_by_key(|op| op.kind().ends_with("index"));
            if let Some(op) = ops.iter().find(|op| !self.in_place.contains(&op.id())) {
                let all: Vec<String> = ops.iter().map(|o| describe(*o)).collect();
                return Some(format!(
                    "{version} implies {} (from {}); {} is not in place as declared",
                    all.join(" and "),
                    p.version,
                    op.id()
                ));
            }
        }
        None
    }

    /// The newest version whose implications the catalog meets.
    pub fn best_baseline(&self) -> Option<i64> {
        let mut versions: Vec<i64> = DECLARATIONS.iter().map(|p| p.version).collect();
        versions.extend([PARTITIONED, BASELINE]);
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.into_iter().find(|v| self.mismatch(*v).is_none())
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has = |t: &str| self.tables.iter().any(|have| have == t);
        let partitioned = |t: &str, p: bool| {
            format!(
                "{t} ({})",
                if p { "partitioned" } else { "not partitioned" }
            )
        };
        let tables: Vec<String> = [
            has("tenants").then(|| "tenants".to_string()),
            has("conversations").then(|| "conversations".to_string()),
            has("messages").then(|| partitioned("messages", self.messages_partitioned)),
            has("api_logs").then(|| partitioned("api_logs", self.api_logs_partitioned)),
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

fn tenant_fk(c: &mut dyn Reader, table: u32, tenants: u32) -> Result<bool> {
    c.query_one(HAS_TENANT_FK, &[&table, &tenants])
        .map(|r| r.get(0))
        .map_err(|e| Error::db("inspecting the schema", e))
}

/// Reads what the catalog holds in `schema`. Read-only.
pub fn inspect(c: &mut dyn Reader, schema: &str) -> Result<Found> {
    let mut found = Found::default();
    let mut rels = std::collections::HashMap::new();
    for t in TABLES {
        if let Some(info) = catalog::relation(c, &Relation::new(schema, t))? {
            found.tables.push(t.to_string());
            rels.insert(t, info);
        }
    }
    let tenants = rels.get("tenants").map(|r| r.oid);
    for t in ["messages", "api_logs"] {
        let Some(info) = rels.get(t) else { continue };
        let partitioned = info.kind == 'p';
        let has_fk = match tenants {
            Some(tn) => tenant_fk(c, info.oid, tn)?,
            None => false,
        };
        if t == "messages" {
            (found.messages_partitioned, found.messages_tenant_fk) = (partitioned, has_fk);
        } else {
            (found.api_logs_partitioned, found.api_logs_tenant_fk) = (partitioned, has_fk);
        }
    }
    if found.tables.len() == TABLES.len() {
        let ops: Vec<&'static dyn Operation> = DECLARATIONS.iter().flat_map(|p| p.ops()).collect();
        for op_plan in engine::plan(c, schema, &ops)? {
            if op_plan.is_done() {
                found.in_place.push(op_plan.id);
            }
        }
    }
    if catalog::table_exists(c, &Relation::new(schema, "_prisma_migrations"))? {
        found.prisma_finished = Some(
            c.query(PRISMA_FINISHED, &[])
                .map_err(|e| Error::db("reading _prisma_migrations", e))?
                .into_iter()
                .map(|r| r.get(0))
                .collect(),
        );
    }
    Ok(found)
}
