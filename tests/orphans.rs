//! The orphan pre-flight and its three policies: refuse changes nothing and exits 3; archive and
//! delete move exactly the orphaned rows, and nothing else.

mod common;

use common::*;
use postgres::Client;

const ORPHAN_MESSAGES: i32 = 3;
const ORPHAN_API_LOGS: i32 = 2;

/// A broken database with data and 3 orphaned messages and 2 orphaned api_logs.
fn dirty() -> TestDb {
    let db = TestDb::broken();
    let mut c = db.client();
    seed(&mut c, 10, 2000);
    add_orphans(&mut c, ORPHAN_MESSAGES, ORPHAN_API_LOGS);
    db
}

/// A fingerprint of every row that is not orphaned, to show they were not touched.
fn fingerprint(c: &mut Client) -> (String, String) {
    let m: String = c
        .query_one("SELECT md5(string_agg(m::text, ',' ORDER BY id)) FROM messages m WHERE id NOT LIKE 'ghost-%'", &[])
        .unwrap()
        .get(0);
    let l: String = c
        .query_one("SELECT md5(string_agg(l::text, ',' ORDER BY id)) FROM api_logs l WHERE id NOT LIKE 'ghost-%'", &[])
        .unwrap()
        .get(0);
    (m, l)
}

fn tenant_constraints(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM pg_constraint WHERE conname IN ('messages_tenant_id_fkey', 'api_logs_tenant_id_fkey')")
}

#[test]
fn refuse_exits_3_and_changes_nothing() {
    let db = dirty();
    let mut c = db.client();
    let before = row_counts(&mut c);
    let prints = fingerprint(&mut c);
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("3 messages (sample ids: ghost-m1, ghost-m2, ghost-m3)"),
        "{line}"
    );
    assert!(
        line.contains("2 api_logs (sample ids: ghost-l1, ghost-l2)"),
        "{line}"
    );
    assert!(line.contains("--orphans archive"), "{line}");
    assert_eq!(row_counts(&mut c), before);
    assert_eq!(fingerprint(&mut c), prints);
    assert_eq!(tenant_constraints(&mut c), 0, "refuse added constraints");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'orphaned_%'"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT max(version) FROM refinery_schema_history"),
        meta_chat_migrations::embedded::PARTITIONED
    );
}

#[test]
fn sample_ids_are_capped_at_ten() {
    let db = TestDb::broken();
    let mut c = db.client();
    seed(&mut c, 2, 10);
    add_orphans(&mut c, 25, 0);
    let out = db.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["orphans"][0]["count"], 25);
    assert_eq!(
        report["orphans"][0]["sample_ids"].as_array().unwrap().len(),
        10
    );
    assert_eq!(report["orphans"][1]["count"], 0);
}

#[test]
fn check_reports_orphans_constraints_and_layout() {
    let db = dirty();
    let out = db.run(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "orphans      messages           3  sample ids: ghost-m1, ghost-m2, ghost-m3"
        ),
        "{text}"
    );
    assert!(
        text.contains("orphans      api_logs           2  sample ids: ghost-l1, ghost-l2"),
        "{text}"
    );
    assert!(text.contains("cross-tenant messages           0"), "{text}");
    assert!(
        text.contains("messages_tenant_id_fkey MISSING (0 of 37 partition(s) done)"),
        "{text}"
    );
    assert!(text.contains("37 partitions (messages_2024_01 .. messages_2026_12), default partition messages_default with 0 rows"), "{text}");
}

#[test]
fn archive_moves_exactly_the_orphans() {
    let db = dirty();
    let mut c = db.client();
    let before = row_counts(&mut c);
    let prints = fingerprint(&mut c);
    let orphaned_rows: Vec<String> = c
        .query(
            "SELECT m::text FROM messages m WHERE id LIKE 'ghost-%' ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let out = db.run(&["migrate", "--orphans", "archive"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let after = row_counts(&mut c);
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    assert_eq!(after[2].1, before[2].1 - ORPHAN_MESSAGES as i64, "messages");
    assert_eq!(after[3].1, before[3].1, "api_logs keep their rows");
    assert_eq!(fingerprint(&mut c), prints, "non-orphaned rows changed");

    // The archive holds the orphaned messages whole.
    let archived: Vec<String> = c
        .query(
            "SELECT (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")::text FROM orphaned_messages_archive ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(archived, orphaned_rows);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM orphaned_messages_archive WHERE \"archivedAt\" IS NULL"
        ),
        0
    );

    // Orphaned api_logs stay, with "tenantId" NULL; their old tenant is recorded.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM api_logs WHERE id LIKE 'ghost-%' AND \"tenantId\" IS NULL"
        ),
        2
    );
    let recorded: Vec<(String, String)> = c
        .query(
            "SELECT id, \"tenantId\" FROM orphaned_api_logs_archive ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("ghost-l1".into(), "ghost-tenant-1".into()),
            ("ghost-l2".into(), "ghost-tenant-2".into())
        ]
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn delete_removes_orphaned_messages_without_archive() {
    let db = dirty();
    let mut c = db.client();
    let before = row_counts(&mut c);
    let prints = fingerprint(&mut c);
    let out = db.run(&["migrate", "--orphans", "delete"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = row_counts(&mut c);
    assert_eq!(after[2].1, before[2].1 - ORPHAN_MESSAGES as i64);
    assert_eq!(after[3].1, before[3].1);
    assert_eq!(fingerprint(&mut c), prints);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_class WHERE relname = 'orphaned_messages_archive'"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM orphaned_api_logs_archive"),
        2
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM api_logs WHERE id LIKE 'ghost-%' AND \"tenantId\" IS NULL"
        ),
        2
    );
    assert!(stderr(&out).contains("without archive"), "{}", stderr(&out));
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn the_versioned_sql_alone_refuses_orphans_with_a_count() {
    // Applied without the runner (psql), the migration still refuses with a message, not a bare
    // FK error, and rolls back.
    let db = dirty();
    let mut c = db.client();
    let err = c
        .batch_execute(&migration_sql(
            meta_chat_migrations::embedded::RESTORE_MESSAGES_TENANT_FK,
        ))
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "23503");
    assert_eq!(
        db_err.message(),
        "refusing to add messages_tenant_id_fkey: 3 orphaned messages reference no tenant"
    );
    assert!(db_err.hint().unwrap().contains("--orphans archive"));
    assert_eq!(tenant_constraints(&mut c), 0);
}
