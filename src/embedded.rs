//! The platform's versioned migrations, embedded at build time from `migrations/` with
//! refinery's `embed_migrations!` (`build.rs` re-runs the build when that folder changes).

use refinery::Migration;

mod files {
    refinery::embed_migrations!("migrations");
}

pub use crate::plan::{
    BASELINE, PARTITIONED, RESTORE_API_LOGS_TENANT_FK, RESTORE_MESSAGES_TENANT_FK,
    TENANT_CONSISTENT_MESSAGES,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_the_designed_one() {
        let versions: Vec<i64> = migrations().iter().map(|m| m.version()).collect();
        assert_eq!(
            versions,
            [
                BASELINE,
                PARTITIONED,
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
