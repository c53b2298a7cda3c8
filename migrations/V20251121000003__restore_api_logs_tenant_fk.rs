// Restore api_logs."tenantId" -> tenants(id) ON DELETE SET NULL ("tenantId" is nullable: some
// logs belong to no tenant), and an index on "tenantId" (the spec forgot it: without it every
// tenant delete scans all of api_logs).
//
// The declaration is what meta-chat-migrate builds online before it applies this version, after
// the pre-flight has counted the logs whose tenant does not exist (`archive` and `delete` set
// their "tenantId" NULL, recording it first). The SQL this version applies is its original
// hand-written file (sql/), which under the runner finds everything in place.
//
// History: applied databases checksum the SQL this returns. Never change it; fix forward.
use crate::engine::ops::fk::{ForeignKey, RefAction};
use crate::engine::ops::index::Index;
use crate::engine::ops::{Declaration, Resolution, Rule};

pub static API_LOGS_TENANT_IDX: Index = Index {
    name: "api_logs_tenant_id_idx",
    table: "api_logs",
    columns: &["tenantId"],
    unique: false,
};

pub static API_LOGS_TENANT_FK: ForeignKey = ForeignKey {
    name: "api_logs_tenant_id_fkey",
    table: "api_logs",
    columns: &["tenantId"],
    references: "tenants",
    ref_columns: &["id"],
    on_delete: RefAction::SetNull,
    on_update: RefAction::NoAction,
};

pub static ORPHANED_API_LOGS: Rule = Rule {
    id: "orphaned-api-logs",
    label: "orphans",
    what: "reference no tenant",
    op: &API_LOGS_TENANT_FK,
    resolution: Resolution::NullColumn {
        column: "tenantId",
        archive: "orphaned_api_logs_archive",
    },
    after: &[],
};

pub static DECLARATION: Declaration = Declaration {
    version: 20251121000003,
    rules: &[&ORPHANED_API_LOGS],
    phases: &[&[&API_LOGS_TENANT_IDX, &API_LOGS_TENANT_FK]],
    partitioned: &["api_logs"],
    source: "migrations/sql/20251121000003_restore_api_logs_tenant_fk.sql",
};

pub fn migration() -> String {
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sql/20251121000003_restore_api_logs_tenant_fk.sql"
    ))
    .to_string()
}
