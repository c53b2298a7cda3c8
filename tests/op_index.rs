//! The index kind through the lifecycle every operation kind goes through
//! ([`common::lifecycle`]): `messages_tenant_id_idx` on `messages ("tenantId")`, as
//! 20251121000002 declares it.

mod common;

use common::lifecycle::{lifecycle, Case};
use meta_chat_migrations::embedded::restore_tenant_fk::MESSAGES_TENANT_IDX;
use meta_chat_migrations::engine::ops::Declaration;

static DECLARATION: Declaration = Declaration {
    version: 0,
    rules: &[],
    phases: &[&[&MESSAGES_TENANT_IDX]],
    partitioned: &["messages"],
    source: "tests/op_index.rs",
};

#[test]
fn an_index_goes_through_the_lifecycle() {
    lifecycle(&Case {
        declaration: &DECLARATION,
        setup: "",
        remove: "DROP INDEX IF EXISTS messages_tenant_id_idx",
        violating: None,
        other_shape: "CREATE INDEX messages_tenant_id_idx ON messages (role)",
    });
}
