//! "Already in place" means the catalog holds exactly what a version declares, and layouts the
//! old restore could not handle are handled: constraints and indexes of a declared name but
//! another shape are refused before anything changes; partitions whose names share their first
//! 50 bytes, a partition in another schema and a sub-partitioned month end with the same
//! catalog as the spec's blocking SQL gives them. Also: the checksum of every embedded
//! migration is pinned.

mod common;

use common::*;
use meta_chat_migrations::embedded;
use postgres::Client;

fn history_max(c: &mut Client) -> i64 {
    count(c, "SELECT max(version) FROM refinery_schema_history")
}

/// The objects the tenant versions would create, by name.
fn created(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT (SELECT count(*) FROM pg_constraint WHERE conname IN ('api_logs_tenant_id_fkey', 'messages_conversation_tenant_fkey'))
              + (SELECT count(*) FROM pg_class WHERE relname IN ('api_logs_tenant_id_idx', 'conversations_id_tenant_id_key'))",
    )
}

fn refused(db: &TestDb, expect: &[&str]) {
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    for e in expect {
        assert!(line.contains(e), "missing {e:?} in {line}");
    }
    assert!(line.contains("drop or rename what is in the way"), "{line}");
    let mut c = db.client();
    assert_eq!(
        history_max(&mut c),
        embedded::PARTITIONED,
        "a version was recorded"
    );
    assert_eq!(
        created(&mut c),
        0,
        "something was created before the refusal"
    );
}

#[test]
fn a_parent_key_of_the_right_name_with_other_actions_is_refused() {
    for action in ["RESTRICT", "NO ACTION"] {
        let db = seeded_broken();
        db.client()
            .batch_execute(&format!("ALTER TABLE messages ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE {action}"))
            .unwrap();
        refused(
            &db,
            &[
                "constraint messages_tenant_id_fkey on public.messages is FOREIGN KEY",
                &format!("ON DELETE {action}, expected"),
                "ON DELETE CASCADE",
            ],
        );
    }
    let db = seeded_broken();
    db.client()
        .batch_execute("ALTER TABLE api_logs ADD CONSTRAINT api_logs_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE")
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("constraint api_logs_tenant_id_fkey on public.api_logs is FOREIGN KEY (\"tenantId\") REFERENCES public.tenants(\"id\") ON UPDATE NO ACTION ON DELETE CASCADE, expected"),
        "{}",
        stderr(&out)
    );
    assert_eq!(history_max(&mut db.client()), embedded::PARTITIONED);
}

#[test]
fn an_index_of_the_right_name_on_another_column_or_table_is_refused() {
    let db = seeded_broken();
    db.client()
        .batch_execute("CREATE INDEX messages_tenant_id_idx ON messages (content)")
        .unwrap();
    refused(
        &db,
        &[
            "index public.messages_tenant_id_idx is btree (content)",
            "expected btree (tenantId) on public.messages",
        ],
    );
    let db = seeded_broken();
    db.client()
        .batch_execute("CREATE INDEX messages_tenant_id_idx ON conversations (\"tenantId\")")
        .unwrap();
    refused(
        &db,
        &[
            "index public.messages_tenant_id_idx is btree (tenantId) on table oid",
            "expected btree (tenantId) on public.messages",
        ],
    );
}

/// Runs `setup` on two seeded broken databases; restores one with the runner and the other with
/// the spec's blocking SQL; both must end with the same tenant catalog, and the runner's must
/// verify.
fn same_as_the_blocking_sql(setup: &str) -> Vec<String> {
    let plain = seeded_broken();
    plain.client().batch_execute(setup).unwrap();
    let mut c = plain.client();
    c.batch_execute(&migration_sql(embedded::RESTORE_MESSAGES_TENANT_FK))
        .unwrap();
    c.batch_execute(&migration_sql(embedded::RESTORE_API_LOGS_TENANT_FK))
        .unwrap();
    let out = plain.run(&["partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected = tenant_catalog(&mut c);

    let db = seeded_broken();
    db.client().batch_execute(setup).unwrap();
    let before = row_counts(&mut db.client());
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let online = tenant_catalog(&mut db.client());
    assert_eq!(online, expected);
    assert_eq!(row_counts(&mut db.client()), before);
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    online
}

const ROWS_2027: &str = "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
     SELECT 'late-' || g, 't1', 'c1', 'user', 'x', timestamptz '2027-01-01 00:00+00' + g * interval '7 hours'
       FROM generate_series(1, 200) g;";

#[test]
fn partitions_whose_names_share_their_first_50_bytes_get_their_own_index() {
    let prefix = "messages_with_a_long_name_that_fills_fifty_bytes_x";
    assert_eq!(prefix.len(), 50);
    let setup = format!(
        "CREATE TABLE {prefix}_2027_01 PARTITION OF messages FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
         CREATE TABLE {prefix}_2027_02 PARTITION OF messages FOR VALUES FROM ('2027-02-01') TO ('2027-03-01');
         {ROWS_2027}"
    );
    let catalog = same_as_the_blocking_sql(&setup);
    let first50 = &prefix[..50];
    assert!(catalog.contains(&format!("index \"{first50}_tenantId_idx\" on {prefix}_2027_01 valid=t parent=messages_tenant_id_idx")), "{catalog:#?}");
    assert!(
        catalog.contains(&format!(
            "index \"{}_tenantId_idx1\" on {prefix}_2027_02 valid=t parent=messages_tenant_id_idx",
            &prefix[..49]
        )),
        "{catalog:#?}"
    );
}

#[test]
fn a_partition_in_another_schema_gets_its_index_there() {
    let setup = format!(
        "CREATE SCHEMA archive;
         CREATE TABLE archive.messages_2027_01 (LIKE messages INCLUDING DEFAULTS);
         ALTER TABLE messages ATTACH PARTITION archive.messages_2027_01 FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
         CREATE TABLE archive.api_logs_2027_01 (LIKE api_logs INCLUDING DEFAULTS);
         ALTER TABLE api_logs ATTACH PARTITION archive.api_logs_2027_01 FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
         {ROWS_2027}"
    );
    let catalog = same_as_the_blocking_sql(&setup);
    assert!(
        catalog.contains(&"index archive.\"messages_2027_01_tenantId_idx\" on archive.messages_2027_01 valid=t parent=messages_tenant_id_idx".to_string()),
        "{catalog:#?}"
    );
    assert!(
        catalog.iter().any(|f| f
            .starts_with("constraint archive.messages_2027_01.messages_tenant_id_fkey")
            && f.ends_with("validated=t parent=messages")),
        "{catalog:#?}"
    );
}

#[test]
fn a_sub_partitioned_month_is_handled() {
    let setup = format!(
        "CREATE TABLE messages_2027_01 PARTITION OF messages FOR VALUES FROM ('2027-01-01') TO ('2027-02-01')
           PARTITION BY RANGE (\"createdAt\");
         CREATE TABLE messages_2027_01_a PARTITION OF messages_2027_01 FOR VALUES FROM ('2027-01-01') TO ('2027-01-16');
         CREATE TABLE messages_2027_01_b PARTITION OF messages_2027_01 FOR VALUES FROM ('2027-01-16') TO ('2027-02-01');
         {ROWS_2027}"
    );
    let catalog = same_as_the_blocking_sql(&setup);
    for f in [
        "constraint messages_2027_01.messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE validated=t parent=messages",
        "constraint messages_2027_01_a.messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE validated=t parent=messages_2027_01",
        "index \"messages_2027_01_a_tenantId_idx\" on messages_2027_01_a valid=t parent=\"messages_2027_01_tenantId_idx\"",
        "index \"messages_2027_01_tenantId_idx\" on messages_2027_01 valid=t parent=messages_tenant_id_idx",
    ] {
        assert!(catalog.contains(&f.to_string()), "missing {f}: {catalog:#?}");
    }
}

/// The checksum of every embedded migration, as deployed databases recorded it. A change to an
/// applied file, to the declaration or generator behind a `.rs` migration, or a barrel upgrade
/// that changes the baseline's SQL fails here instead of on every deployed database.
#[test]
fn embedded_migration_checksums_are_pinned() {
    let pinned: [(i64, &str, u64); 5] = [
        (20240101000000, "baseline", 2115014830611192441),
        (
            20240520120000,
            "partition_messages_api_logs",
            15579957395344641936,
        ),
        (20251121000002, "restore_tenant_fk", 17226947232590086480),
        (
            20251121000003,
            "restore_api_logs_tenant_fk",
            2497802236790429052,
        ),
        (
            20251121000004,
            "tenant_consistent_messages",
            18022632941861519523,
        ),
    ];
    let actual: Vec<(i64, String, u64)> = embedded::migrations()
        .iter()
        .map(|m| (m.version(), m.name().to_string(), m.checksum()))
        .collect();
    let expected: Vec<(i64, String, u64)> = pinned
        .iter()
        .map(|(v, n, c)| (*v, n.to_string(), *c))
        .collect();
    assert_eq!(actual, expected);
}
