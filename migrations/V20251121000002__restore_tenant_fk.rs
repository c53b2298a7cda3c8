// ISSUE-047: restore messages."tenantId" -> tenants(id) ON DELETE CASCADE, and an index on
// "tenantId" (spec: restore_tenant_fk.md).
//
// The declaration is what meta-chat-migrate builds online before it applies this version (per
// partition: the index concurrently and attached, the key NOT VALID then validated; then the
// parent adopts them), after the pre-flight has counted the messages whose tenant does not
// exist. The SQL this version applies is its original hand-written file (sql/), which under the
// runner finds everything in place and only records itself.
//
// History: applied databases checksum the SQL this returns. Never change it; fix forward.
use crate::engine::ops::fk::{ForeignKey, RefAction};
use crate::engine::ops::index::Index;
use crate::engine::ops::{Declaration, Resolution, Rule};

pub static MESSAGES_TENANT_IDX: Index = Index {
    name: "messages_tenant_id_idx",
    table: "messages",
    columns: &["tenantId"],
    unique: false,
};

pub static MESSAGES_TENANT_FK: ForeignKey = ForeignKey {
    name: "messages_tenant_id_fkey",
    table: "messages",
    columns: &["tenantId"],
    references: "tenants",
    ref_columns: &["id"],
    on_delete: RefAction::Cascade,
    on_update: RefAction::NoAction,
};

pub static ORPHANED_MESSAGES: Rule = Rule {
    id: "orphaned-messages",
    label: "orphans",
    what: "reference no tenant",
    op: &MESSAGES_TENANT_FK,
    resolution: Resolution::MoveRows {
        archive: "orphaned_messages_archive",
    },
    after: &[],
};

pub static DECLARATION: Declaration = Declaration {
    version: 20251121000002,
    rules: &[&ORPHANED_MESSAGES],
    phases: &[&[&MESSAGES_TENANT_IDX, &MESSAGES_TENANT_FK]],
    partitioned: &["messages"],
    source: "migrations/sql/20251121000002_restore_tenant_fk.sql",
};

pub fn migration() -> String {
    include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sql/20251121000002_restore_tenant_fk.sql"
    ))
    .to_string()
}
