//! Tenant consistency (20251121000004): a message belongs to its conversation's tenant. The
//! negative first (before the version, the database accepts a message of tenant A in a
//! conversation of tenant B), then the constraint in force on every partition, the pre-flight
//! under each `--orphans` policy (a message both orphaned and cross-tenant handled once), what
//! `check` reports, and what happens when a conversation's tenant changes.

mod common;

use common::*;
use meta_chat_migrations::embedded;
use postgres::Client;

const CROSS: &str =
    "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
     VALUES ($1, $2, $3, 'user', 'x', '2025-05-05')";

/// At 20251121000003 with data: tenants t1..t10, conversation cN of tenant tN.
fn at_03() -> TestDb {
    let db = TestDb::at(embedded::RESTORE_API_LOGS_TENANT_FK);
    seed(&mut db.client(), 10, 3000);
    db
}

/// Messages x1..xN of tenant t2 in conversation c1 (tenant t1).
fn add_cross_tenant(c: &mut Client, n: i32) {
    for i in 1..=n {
        c.execute(CROSS, &[&format!("x{i}"), &"t2", &"c1"]).unwrap();
    }
}

fn fingerprint(c: &mut Client) -> String {
    c.query_one(
        "SELECT md5(string_agg(m::text, ',' ORDER BY id)) FROM messages m WHERE id NOT LIKE 'x%' AND id NOT LIKE 'ghost%'",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn before_the_version_a_cross_tenant_message_is_accepted_after_it_is_refused() {
    let db = at_03();
    let mut c = db.client();
    c.execute(CROSS, &[&"before", &"t2", &"c1"]).unwrap();
    c.execute("DELETE FROM messages WHERE id = 'before'", &[])
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for month in ["2025-05-05", "2024-01-20", "2026-12-31"] {
        let err = c
            .execute(
                "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('after', 't2', 'c1', 'user', 'x', $1::text::timestamptz)",
                &[&month],
            )
            .unwrap_err();
        let e = err.as_db_error().unwrap();
        assert_eq!(e.code().code(), "23503", "{month}");
        assert_eq!(
            e.constraint(),
            Some("messages_conversation_tenant_fkey"),
            "{month}"
        );
    }
    // The catalog: validated on the parent and on every partition, each adopted by the parent;
    // the unique index valid, unique, on (id, "tenantId").
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_constraint k JOIN pg_partition_tree('messages') p ON p.relid = k.conrelid
                        WHERE k.conname = 'messages_conversation_tenant_fkey' AND k.convalidated AND k.confdeltype = 'c' AND k.confupdtype = 'a'
                          AND (p.level = 0 OR k.conparentid = (SELECT oid FROM pg_constraint WHERE conrelid = 'messages'::regclass AND conname = 'messages_conversation_tenant_fkey'))"),
        count(&mut c, "SELECT count(*) FROM pg_partition_tree('messages')")
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_index WHERE indexrelid = 'conversations_id_tenant_id_key'::regclass
                        AND indisvalid AND indisunique AND indkey::text = (SELECT string_agg(attnum::text, ' ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'conversations'::regclass AND attname IN ('id', 'tenantId'))"),
        1
    );
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn cross_tenant_messages_are_refused_by_default_changing_nothing() {
    let db = at_03();
    let mut c = db.client();
    add_cross_tenant(&mut c, 3);
    let before = row_counts(&mut c);
    let prints = fingerprint(&mut c);
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(
            "3 messages (sample ids: x1, x2, x3) belong to a conversation of another tenant"
        ),
        "{line}"
    );
    assert!(line.contains("--orphans archive"), "{line}");
    assert_eq!(row_counts(&mut c), before);
    assert_eq!(fingerprint(&mut c), prints);
    assert_eq!(
        count(&mut c, "SELECT max(version) FROM refinery_schema_history"),
        embedded::RESTORE_API_LOGS_TENANT_FK
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_class WHERE relname IN ('conversations_id_tenant_id_key', 'cross_tenant_messages_archive')"),
        0
    );
    let out = db.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["cross_tenant"][0]["count"], 3);
    assert_eq!(report["orphans"][0]["count"], 0);
}

#[test]
fn archive_moves_exactly_the_cross_tenant_messages_and_delete_deletes_them() {
    for policy in ["archive", "delete"] {
        let db = at_03();
        let mut c = db.client();
        add_cross_tenant(&mut c, 4);
        let moved: Vec<String> = c
            .query(
                "SELECT m::text FROM messages m WHERE id LIKE 'x%' ORDER BY id",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let before = row_counts(&mut c);
        let prints = fingerprint(&mut c);
        let out = db.run(&["migrate", "--orphans", policy]);
        assert_eq!(out.status.code(), Some(0), "{policy}: {}", stderr(&out));
        let after = row_counts(&mut c);
        assert_eq!(after[2].1, before[2].1 - 4, "{policy}: messages");
        assert_eq!(
            fingerprint(&mut c),
            prints,
            "{policy}: other messages changed"
        );
        assert_eq!(
            count(&mut c, "SELECT count(*) FROM messages WHERE id LIKE 'x%'"),
            0
        );
        let archived = count(
            &mut c,
            "SELECT count(*) FROM pg_class WHERE relname = 'cross_tenant_messages_archive'",
        );
        if policy == "archive" {
            let rows: Vec<String> = c
                .query("SELECT (a.id, a.\"tenantId\", a.\"conversationId\", a.role, a.content, a.\"createdAt\")::text FROM cross_tenant_messages_archive a ORDER BY id", &[])
                .unwrap()
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(rows, moved, "the archive holds exactly the moved rows");
        } else {
            assert_eq!(archived, 0, "delete archived");
        }
        assert_eq!(db.run(&["verify"]).status.code(), Some(0), "{policy}");
    }
}

#[test]
fn a_message_both_orphaned_and_cross_tenant_is_handled_once() {
    let db = TestDb::broken();
    let mut c = db.client();
    seed(&mut c, 10, 2000);
    add_cross_tenant(&mut c, 2);
    // An orphan (its tenant does not exist) that also sits in another tenant's conversation.
    c.execute(CROSS, &[&"ghost-both", &"ghost-tenant", &"c1"])
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(3));
    let line = error_line(&out);
    assert!(
        line.contains("1 messages (sample ids: ghost-both) reference no tenant"),
        "{line}"
    );
    assert!(
        line.contains("2 messages (sample ids: x1, x2) belong to a conversation of another tenant"),
        "{line}"
    );
    let out = db.run(&["migrate", "--orphans", "archive"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM orphaned_messages_archive WHERE id = 'ghost-both'"
        ),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM cross_tenant_messages_archive"),
        2
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM cross_tenant_messages_archive WHERE id = 'ghost-both'"
        ),
        0
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn a_conversation_with_messages_cannot_change_tenant() {
    let db = TestDb::new();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = db.client();
    seed(&mut c, 3, 30);
    c.batch_execute("INSERT INTO conversations (id, \"tenantId\") VALUES ('empty', 't1')")
        .unwrap();
    let err = c
        .execute(
            "UPDATE conversations SET \"tenantId\" = 't2' WHERE id = 'c1'",
            &[],
        )
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "23503");
    assert_eq!(e.constraint(), Some("messages_conversation_tenant_fkey"));
    // A conversation without messages can.
    c.execute(
        "UPDATE conversations SET \"tenantId\" = 't2' WHERE id = 'empty'",
        &[],
    )
    .unwrap();
}
