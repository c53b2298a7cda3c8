//! What refinery's history table says, compared with what this build embeds: applied, pending,
//! divergent (checksum differs) and unknown (applied, but not embedded here). Reading it never
//! creates anything, so `status` is safe on any database.

use crate::catalog::Reader;
use refinery::Migration;
use serde::Serialize;

use crate::embedded;
use crate::error::{Error, Result};

/// The name of refinery's history table, which lives in the schema a run migrates.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

const HISTORY_EXISTS: &str = "SELECT to_regclass('refinery_schema_history') IS NOT NULL";
/// Cast, so that a history written by a refinery without `int8-versions` (int4 versions) reads
/// the same.
const APPLIED_ROWS: &str = "SELECT version::int8, name::text, applied_on::text, checksum::text \
     FROM refinery_schema_history ORDER BY version";

/// One migration version, as the history records it or (when pending) as this build embeds it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// The migration's version number (the `V<n>` of its file name).
    pub version: i64,
    /// The migration's name (from its file name), as recorded in the history or embedded.
    pub name: String,
    /// When it was applied (as refinery recorded it); `None` for pending ones.
    pub applied_on: Option<String>,
    /// The checksum recorded in the history; `None` for pending ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// What `status` reports: the history compared with the migrations this build embeds.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Status {
    /// Whether refinery's history table exists at all.
    pub history_table: bool,
    /// Versions in the history that this build embeds, by version (divergent ones included).
    pub applied: Vec<Entry>,
    /// Embedded versions not in the history yet: what `migrate` would apply.
    pub pending: Vec<Entry>,
    /// Applied, but with a checksum that differs from the embedded migration.
    pub divergent: Vec<Entry>,
    /// Applied, but not embedded in this build.
    pub unknown: Vec<Entry>,
}

impl Status {
    /// The first problem that forbids migrating, as an error that says how to fix it.
    pub fn ensure_consistent(&self) -> Result<()> {
        if let Some(e) = self.unknown.first() {
            return Err(Error::UnknownVersion {
                version: e.version,
                name: e.name.clone(),
            });
        }
        if let Some(e) = self.divergent.first() {
            let embedded = embedded::migrations()
                .into_iter()
                .find(|m| m.version() == e.version)
                .map(|m| m.checksum())
                .unwrap_or_default();
            return Err(Error::Divergent {
                version: e.version,
                name: e.name.clone(),
                applied_checksum: e.checksum.clone().unwrap_or_default(),
                embedded_checksum: embedded,
            });
        }
        Ok(())
    }

    /// Whether `version` is in the history and embedded in this build.
    pub fn is_applied(&self, version: i64) -> bool {
        self.applied.iter().any(|e| e.version == version)
    }

    /// The highest applied version; `None` if nothing is applied (or no history table).
    pub fn current(&self) -> Option<i64> {
        self.applied.last().map(|e| e.version)
    }
}

struct AppliedRow {
    version: i64,
    name: String,
    applied_on: String,
    checksum: String,
}

/// Reads the history (if the table exists) and compares it with the embedded migrations.
pub fn status(client: &mut dyn Reader) -> Result<Status> {
    let exists: bool = client
        .query_one(HISTORY_EXISTS, &[])
        .map_err(|e| Error::db("looking for the migration history", e))?
        .get(0);
    let rows = if exists {
        client
            .query(APPLIED_ROWS, &[])
            .map_err(|e| Error::db("reading the migration history", e))?
            .into_iter()
            .map(|r| AppliedRow {
                version: r.get(0),
                name: r.get::<_, Option<String>>(1).unwrap_or_default(),
                applied_on: r.get::<_, Option<String>>(2).unwrap_or_default(),
                checksum: r.get::<_, Option<String>>(3).unwrap_or_default(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(compare(exists, rows, &embedded::migrations()))
}

fn compare(history_table: bool, applied: Vec<AppliedRow>, embedded: &[Migration]) -> Status {
    let mut status = Status {
        history_table,
        ..Status::default()
    };
    for row in &applied {
        let entry = Entry {
            version: row.version,
            name: row.name.clone(),
            applied_on: Some(row.applied_on.clone()),
            checksum: Some(row.checksum.clone()),
        };
        match embedded.iter().find(|m| m.version() == row.version) {
            None => status.unknown.push(entry),
            Some(m) if m.checksum().to_string() != row.checksum || m.name() != row.name => {
                status.divergent.push(entry.clone());
                status.applied.push(entry);
            }
            Some(_) => status.applied.push(entry),
        }
    }
    for m in embedded {
        if !applied.iter().any(|a| a.version == m.version()) {
            status.pending.push(Entry {
                version: m.version(),
                name: m.name().to_string(),
                applied_on: None,
                checksum: None,
            });
        }
    }
    status
}
