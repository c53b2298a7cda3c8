//! The two tenant foreign keys that the partitioning migration lost, described once and used by
//! the orphan pre-flight, the online restore, `check` and `verify`.

use crate::embedded;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum OnDelete {
    Cascade,
    SetNull,
}

impl OnDelete {
    pub fn sql(self) -> &'static str {
        match self {
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull => "SET NULL",
        }
    }

    /// `pg_constraint.confdeltype`.
    pub fn confdeltype(self) -> i8 {
        match self {
            OnDelete::Cascade => b'c' as i8,
            OnDelete::SetNull => b'n' as i8,
        }
    }
}

/// `"tenantId"` of `table` references `tenants(id)`.
#[derive(Debug, PartialEq, Eq)]
pub struct TenantFk {
    /// The migration that restores it.
    pub version: i64,
    pub table: &'static str,
    pub constraint: &'static str,
    pub index: &'static str,
    pub on_delete: OnDelete,
    /// Where orphaned rows go under `--orphans archive`.
    pub archive_table: &'static str,
}

pub const MESSAGES: TenantFk = TenantFk {
    version: embedded::RESTORE_MESSAGES_TENANT_FK,
    table: "messages",
    constraint: "messages_tenant_id_fkey",
    index: "messages_tenant_id_idx",
    on_delete: OnDelete::Cascade,
    archive_table: "orphaned_messages_archive",
};

pub const API_LOGS: TenantFk = TenantFk {
    version: embedded::RESTORE_API_LOGS_TENANT_FK,
    table: "api_logs",
    constraint: "api_logs_tenant_id_fkey",
    index: "api_logs_tenant_id_idx",
    on_delete: OnDelete::SetNull,
    archive_table: "orphaned_api_logs_archive",
};

pub const ALL: [&TenantFk; 2] = [&MESSAGES, &API_LOGS];

pub const TENANT_COLUMN: &str = "tenantId";

pub fn for_version(version: i64) -> Option<&'static TenantFk> {
    ALL.into_iter().find(|fk| fk.version == version)
}

impl TenantFk {
    /// The definition exactly as `pg_get_constraintdef` prints it.
    pub fn definition(&self) -> String {
        format!(
            "FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE {}",
            self.on_delete.sql()
        )
    }

    /// `ALTER TABLE <relation> ADD CONSTRAINT ...`; `relation` must already be quoted.
    pub fn add_sql(&self, relation: &str, not_valid: bool) -> String {
        format!(
            "ALTER TABLE {relation} ADD CONSTRAINT {} {}{}",
            self.constraint,
            self.definition(),
            if not_valid { " NOT VALID" } else { "" }
        )
    }

    /// A WHERE condition true for rows of `alias` whose tenant does not exist.
    pub fn orphan_condition(&self, alias: &str) -> String {
        format!(
            "{alias}.\"tenantId\" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = {alias}.\"tenantId\")"
        )
    }
}
