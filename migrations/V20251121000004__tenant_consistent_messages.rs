// A message belongs to its conversation's tenant: a unique index on conversations (id,
// "tenantId"), and messages ("conversationId", "tenantId") REFERENCES conversations (id,
// "tenantId") ON DELETE CASCADE (ON UPDATE NO ACTION: a conversation with messages cannot
// silently change tenant).
//
// meta-chat-migrate builds both online before applying this version (the index concurrently,
// the key per partition NOT VALID + VALIDATE, then adopted by messages), so under the runner
// this SQL finds everything in place and only records itself. Applied without the runner it
// reaches the same end state the blocking way. It is generated from the declaration below; its
// checksum is pinned by a test, so a change to the declaration or to the generator fails CI
// instead of every deployed database.
//
// History: never edit this file or what it generates; fix forward with a new version.
use crate::engine::ops::fk::{ForeignKey, RefAction};
use crate::engine::ops::index::Index;
use crate::engine::ops::{fallback_sql, Declaration, Resolution, Rule};

/// The target of the composite key: a unique index is a valid foreign-key target without a
/// UNIQUE constraint (it is not partial).
pub static CONVERSATIONS_ID_TENANT_KEY: Index = Index {
    name: "conversations_id_tenant_id_key",
    table: "conversations",
    columns: &["id", "tenantId"],
    unique: true,
};

pub static MESSAGES_CONVERSATION_TENANT_FK: ForeignKey = ForeignKey {
    name: "messages_conversation_tenant_fkey",
    table: "messages",
    columns: &["conversationId", "tenantId"],
    references: "conversations",
    ref_columns: &["id", "tenantId"],
    on_delete: RefAction::Cascade,
    on_update: RefAction::NoAction,
};

pub static CROSS_TENANT_MESSAGES: Rule = Rule {
    id: "cross-tenant-messages",
    label: "cross-tenant",
    what: "belong to a conversation of another tenant",
    op: &MESSAGES_CONVERSATION_TENANT_FK,
    resolution: Resolution::MoveRows {
        archive: "cross_tenant_messages_archive",
    },
    after: &[&super::V20251121000002__restore_tenant_fk::ORPHANED_MESSAGES],
};

pub static DECLARATION: Declaration = Declaration {
    version: 20251121000004,
    rules: &[&CROSS_TENANT_MESSAGES],
    phases: &[
        &[&CONVERSATIONS_ID_TENANT_KEY],
        &[&MESSAGES_CONVERSATION_TENANT_FK],
    ],
    partitioned: &["messages"],
    // As this version's SQL was first generated: applied history.
    source: "src/plan.rs",
};

pub fn migration() -> String {
    fallback_sql(&DECLARATION)
}
