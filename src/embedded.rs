//! The platform's versioned migrations, embedded at build time from `migrations/` with
//! refinery's `embed_migrations!` (`build.rs` re-runs the build when that folder changes), and
//! what they declare: each `.rs` migration's [`Declaration`] (its online operations and
//! pre-flight rules, listed by `build.rs`), the versions by name, and the platform's tables.

use refinery::Migration;

use crate::engine::ops::Declaration;

mod files {
    refinery::embed_migrations!("migrations");
}

include!(concat!(env!("OUT_DIR"), "/declarations.rs"));

/// The versions whose declarations other modules name (`verify` checks what they built).
pub use files::migrations::V20251121000002__restore_tenant_fk as restore_tenant_fk;
pub use files::migrations::V20251121000003__restore_api_logs_tenant_fk as restore_api_logs_tenant_fk;
pub use files::migrations::V20251121000004__tenant_consistent_messages as tenant_consistent_messages;

/// Baseline schema: tables unpartitioned, every tenant FK in place.
pub const BASELINE: i64 = 20240101000000;
/// Monthly partitioning of messages and api_logs; loses both tenant FKs (the bug).
pub const PARTITIONED: i64 = 20240520120000;
/// Restores `messages_tenant_id_fkey` (ON DELETE CASCADE) and `messages_tenant_id_idx`.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // named by the tests
pub const RESTORE_MESSAGES_TENANT_FK: i64 = 20251121000002;
/// Restores `api_logs_tenant_id_fkey` (ON DELETE SET NULL) and `api_logs_tenant_id_idx`.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // named by the tests
pub const RESTORE_API_LOGS_TENANT_FK: i64 = 20251121000003;
/// A message belongs to its conversation's tenant: `conversations_id_tenant_id_key` and
/// `messages_conversation_tenant_fkey`.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // named by the tests
pub const TENANT_CONSISTENT_MESSAGES: i64 = 20251121000004;

/// The tables of the platform's schema.
pub const TABLES: [&str; 4] = ["tenants", "conversations", "messages", "api_logs"];

/// The tables partitioned by month, whose window of partitions `partitions` keeps ahead.
pub const MONTHLY: [&str; 2] = ["messages", "api_logs"];

/// refinery's runner over the embedded migrations.
pub fn runner() -> refinery::Runner {
    files::migrations::runner()
}

/// The embedded migrations, in version order.
pub fn migrations() -> Vec<Migration> {
    let mut all = runner().get_migrations().clone();
    all.sort();
    all
}

/// The newest embedded version.
pub fn latest() -> i64 {
    migrations().last().map(|m| m.version()).unwrap_or(0)
}

/// The online work `version` declares, if any.
pub(crate) fn declaration(version: i64) -> Option<&'static Declaration> {
    DECLARATIONS.iter().copied().find(|d| d.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_the_designed_one() {
        // The versions of the design, first (later ones are pinned by tests/engine.rs).
        let versions: Vec<i64> = migrations().iter().map(|m| m.version()).collect();
        assert_eq!(
            versions[..5],
            [
                BASELINE,
                PARTITIONED,
                RESTORE_MESSAGES_TENANT_FK,
                RESTORE_API_LOGS_TENANT_FK,
                TENANT_CONSISTENT_MESSAGES
            ]
        );
        let declared: Vec<i64> = DECLARATIONS.iter().map(|d| d.version).collect();
        assert_eq!(
            declared[..3],
            [
                RESTORE_MESSAGES_TENANT_FK,
                RESTORE_API_LOGS_TENANT_FK,
                TENANT_CONSISTENT_MESSAGES
            ]
        );
    }

    #[test]
    fn baseline_sql_quotes_camel_case_and_keeps_tenant_fks() {
        let baseline = &migrations()[0];
        let sql = baseline.sql().unwrap();
        assert!(sql.contains(r#""tenantId""#), "{sql}");
        assert!(sql.contains(r#""messages_tenantId_fkey""#), "{sql}");
        assert!(sql.contains("ON DELETE SET NULL"), "{sql}");
    }
}
