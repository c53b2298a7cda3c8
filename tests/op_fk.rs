//! The foreign-key kind through the lifecycle every operation kind goes through
//! ([`common::lifecycle`]): `messages."tenantId" -> tenants(id) ON DELETE CASCADE`, as
//! 20251121000002 declares it.

mod common;

use common::lifecycle::{lifecycle, Case};
use meta_chat_migrations::embedded::restore_tenant_fk::{MESSAGES_TENANT_FK, ORPHANED_MESSAGES};
use meta_chat_migrations::engine::ops::Declaration;

static DECLARATION: Declaration = Declaration {
    version: 0,
    rules: &[&ORPHANED_MESSAGES],
    phases: &[&[&MESSAGES_TENANT_FK]],
    partitioned: &["messages"],
    source: "tests/op_fk.rs",
};

#[test]
fn a_foreign_key_goes_through_the_lifecycle() {
    lifecycle(&Case {
        declaration: &DECLARATION,
        // The composite key of 20251121000004 would refuse a message of an unknown tenant too.
        setup: "ALTER TABLE messages DROP CONSTRAINT messages_conversation_tenant_fkey",
        remove: "ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tenant_id_fkey",
        violating: Some((
            "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
               VALUES ('violating-1', 'no-such-tenant', 'c1', 'user', 'x', '2025-03-03')",
            "23503",
        )),
        other_shape: "ALTER TABLE messages ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants (id)",
    });
}
