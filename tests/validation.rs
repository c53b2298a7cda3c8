//! The spec's seven validation assertions, written here independently of the library's
//! `verify`, on a freshly migrated database; and the same assertions shown failing on a
//! database stopped at 20240520120000 (the broken state), so none of them passes vacuously.
//!
//! Assertion 3 isolates the tenant key (the message sits in a conversation of another tenant,
//! so only that key can cascade it away) on databases without tenant consistency: at
//! 20251121000003 and in the broken state. From 20251121000004 no message can sit there, and
//! the message sits in its own tenant's conversation (`Fixture::Consistent`).

mod common;

use common::*;
use postgres::error::SqlState;
use postgres::Client;

type Outcome = Result<(), String>;

const MESSAGE: &str = "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ($1, $2, $3, 'user', 'x', now())";
const API_LOG: &str = "INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\") VALUES ($1, $2, 'GET', '/', 200, 1, now())";

fn fk_violation(result: Result<u64, postgres::Error>, constraint: &str) -> Outcome {
    match result {
        Ok(_) => Err("the insert was accepted".into()),
        Err(e) => {
            let db = e.as_db_error().ok_or(format!("not a server error: {e}"))?;
            if db.code() != &SqlState::FOREIGN_KEY_VIOLATION {
                return Err(format!("SQLSTATE {} instead of 23503", db.code().code()));
            }
            if db.constraint() != Some(constraint) {
                return Err(format!("violated {:?}, not {constraint}", db.constraint()));
            }
            Ok(())
        }
    }
}

/// confdeltype, validated and (for partitions) adoption by the parent, for `constraint` on
/// `table` and every leaf partition.
fn fk_catalog(c: &mut Client, table: &str, constraint: &str, deltype: &str) -> Outcome {
    let rows = c
        .query(
            "SELECT p.relid::regclass::text, k.confrelid::regclass::text, k.confdeltype::text, k.convalidated,
                    (SELECT attname FROM pg_attribute WHERE attrelid = k.conrelid AND attnum = k.conkey[1])::text,
                    array_length(k.conkey, 1), coalesce(k.conparentid = parent.oid, false), p.level
               FROM pg_partition_tree($1::text::regclass) p
               LEFT JOIN pg_constraint k ON k.conrelid = p.relid AND k.conname = $2 AND k.contype = 'f'
               LEFT JOIN pg_constraint parent ON parent.conrelid = $1::text::regclass AND parent.conname = $2
              WHERE p.isleaf OR p.level = 0",
            &[&table, &constraint],
        )
        .map_err(|e| e.to_string())?;
    if rows.len() < 2 {
        return Err(format!("{table} is not partitioned"));
    }
    for r in rows {
        let rel: String = r.get(0);
        let referenced: Option<String> = r.get(1);
        if referenced.is_none() {
            return Err(format!("{constraint} missing on {rel}"));
        }
        let ok = referenced.as_deref() == Some("tenants")
            && r.get::<_, Option<String>>(2).as_deref() == Some(deltype)
            && r.get::<_, Option<bool>>(3) == Some(true)
            && r.get::<_, Option<String>>(4).as_deref() == Some("tenantId")
            && r.get::<_, Option<i32>>(5) == Some(1)
            && (r.get::<_, i32>(7) == 0 || r.get::<_, bool>(6));
        if !ok {
            return Err(format!(
                "{constraint} on {rel} is not a validated ON DELETE {deltype} child of the parent"
            ));
        }
    }
    Ok(())
}

/// The index exists, is valid, and every leaf partition has a valid index attached to it.
fn index_catalog(c: &mut Client, table: &str, index: &str) -> Outcome {
    let valid: Option<bool> = c
        .query_opt(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&index],
        )
        .map_err(|e| e.to_string())?
        .map(|r| r.get(0));
    if valid != Some(true) {
        return Err(format!("{index}: {valid:?}"));
    }
    let missing: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_partition_tree($1::text::regclass) p WHERE p.isleaf AND NOT EXISTS (
               SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
                WHERE i.inhparent = to_regclass($2) AND x.indrelid = p.relid AND x.indisvalid)",
            &[&table, &index],
        )
        .map_err(|e| e.to_string())?
        .get(0);
    if missing > 0 {
        return Err(format!(
            "{missing} partitions of {table} lack a valid {index} child"
        ));
    }
    Ok(())
}

/// Where the test message sits: in another tenant's conversation (isolates the tenant key),
/// or in its own tenant's (the only place tenant consistency allows).
#[derive(Clone, Copy, PartialEq)]
enum Fixture {
    Isolating,
    Consistent,
}

/// The seven assertions, numbered as in the spec.
fn assertions(c: &mut Client, fixture: Fixture) -> Vec<(u8, Outcome)> {
    let setup = c.batch_execute(
        "INSERT INTO tenants (id, name) VALUES ('va', 'A'), ('vb', 'B');
         INSERT INTO conversations (id, \"tenantId\") VALUES ('vconv', 'vb'), ('vconv-a', 'va');",
    );
    let conversation = match fixture {
        Fixture::Isolating => "vconv",
        Fixture::Consistent => "vconv-a",
    };
    let t1 = setup
        .and_then(|_| c.execute(MESSAGE, &[&"vm1", &"va", &conversation]))
        .and_then(|_| c.execute(API_LOG, &[&"vl1", &"va"]))
        .map(|_| ())
        .map_err(|e| e.to_string());
    let t2 = fk_violation(
        c.execute(MESSAGE, &[&"vm2", &"no-such-tenant", &"vconv"]),
        "messages_tenant_id_fkey",
    );
    // Isolating: the message's conversation belongs to tenant vb, so only the tenant FK can
    // cascade it away.
    let t3 = c
        .execute("DELETE FROM tenants WHERE id = 'va'", &[])
        .map_err(|e| e.to_string())
        .and_then(
            |_| match count(c, "SELECT count(*) FROM messages WHERE id = 'vm1'") {
                0 => Ok(()),
                n => Err(format!("{n} messages remain")),
            },
        );
    let t4 = fk_catalog(c, "messages", "messages_tenant_id_fkey", "c");
    let t5 = index_catalog(c, "messages", "messages_tenant_id_idx");
    let t6 = match count(c, "SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = m.\"tenantId\")") {
        0 => Ok(()),
        n => Err(format!("{n} orphaned messages")),
    };
    let t7 = fk_catalog(c, "api_logs", "api_logs_tenant_id_fkey", "n")
        .and_then(|_| index_catalog(c, "api_logs", "api_logs_tenant_id_idx"))
        .and_then(|_| {
            let row = c
                .query_one("SELECT \"tenantId\" FROM api_logs WHERE id = 'vl1'", &[])
                .map_err(|e| e.to_string())?;
            match row.get::<_, Option<String>>(0) {
                None => Ok(()),
                Some(t) => Err(format!("api_logs row still points at deleted tenant {t}")),
            }
        })
        .and_then(|_| {
            fk_violation(
                c.execute(API_LOG, &[&"vl2", &"no-such-tenant"]),
                "api_logs_tenant_id_fkey",
            )
        });
    vec![
        (1, t1),
        (2, t2),
        (3, t3),
        (4, t4),
        (5, t5),
        (6, t6),
        (7, t7),
    ]
}

fn failing(results: &[(u8, Outcome)]) -> Vec<u8> {
    results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect()
}

#[test]
fn all_seven_hold_on_a_freshly_migrated_database() {
    let db = TestDb::new();
    meta_chat_migrations::migrate(&db.settings()).unwrap();
    let results = assertions(&mut db.client(), Fixture::Consistent);
    assert_eq!(failing(&results), Vec::<u8>::new(), "{results:?}");
}

/// At 20251121000003 (the spec's own end state), with the fixture that isolates the tenant key.
#[test]
fn all_seven_hold_at_the_specs_version_with_the_isolating_fixture() {
    let db = TestDb::at(meta_chat_migrations::embedded::RESTORE_API_LOGS_TENANT_FK);
    let results = assertions(&mut db.client(), Fixture::Isolating);
    assert_eq!(failing(&results), Vec::<u8>::new(), "{results:?}");
}

#[test]
fn all_seven_hold_after_restoring_a_broken_database_with_data() {
    let db = TestDb::broken();
    seed(&mut db.client(), 20, 3000);
    let before = row_counts(&mut db.client());
    meta_chat_migrations::migrate(&db.settings()).unwrap();
    assert_eq!(
        row_counts(&mut db.client()),
        before,
        "the restore changed row counts"
    );
    let results = assertions(&mut db.client(), Fixture::Consistent);
    assert_eq!(failing(&results), Vec::<u8>::new(), "{results:?}");
}

#[test]
fn the_same_assertions_fail_on_the_broken_state() {
    let db = TestDb::broken();
    let results = assertions(&mut db.client(), Fixture::Isolating);
    // Only 1 (a valid insert) holds in the broken state. 6 fails too: the broken database
    // accepted assertion 2's invalid message and kept assertion 3's message after its tenant
    // was deleted, which are exactly the orphans the FK exists to prevent.
    assert_eq!(failing(&results), vec![2, 3, 4, 5, 6, 7], "{results:?}");
}

#[test]
fn verify_command_passes_restored_and_fails_broken_with_exit_4() {
    let good = TestDb::new();
    let out = good.run(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = good.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    // The spec's seven lines, unchanged, then this crate's own.
    assert_eq!(
        lines,
        [
            "TEST 1 PASSED: Valid message with correct tenant_id inserted successfully",
            "TEST 2 PASSED: Invalid tenant_id correctly rejected by FK constraint",
            "TEST 3 PASSED: Cascade deletion working correctly (0 messages remain)",
            "TEST 4 PASSED: Constraint exists with correct definition",
            "TEST 5 PASSED: Index messages_tenant_id_idx exists for FK performance",
            "TEST 6 PASSED: No orphaned messages found (data integrity intact)",
            "TEST 7 PASSED: api_logs tenant FK constraint exists with ON DELETE SET NULL",
            "TEST 8 PASSED: A message in another tenant's conversation is rejected by messages_conversation_tenant_fkey",
            "TEST 9 PASSED: messages_conversation_tenant_fkey validated and adopted on every partition",
            "TEST 10 PASSED: Unique index conversations_id_tenant_id_key is valid",
        ]
    );
    // verify leaves nothing behind
    assert_eq!(count(&mut good.client(), "SELECT count(*) FROM tenants"), 0);
    assert_eq!(
        count(&mut good.client(), "SELECT count(*) FROM messages"),
        0
    );

    let bad = TestDb::broken();
    let out = bad.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<u64> = report["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["passed"] == false)
        .map(|a| a["number"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, vec![2, 3, 4, 5, 7, 8, 9, 10]);
    assert_eq!(count(&mut bad.client(), "SELECT count(*) FROM messages"), 0);
    assert!(
        error_line(&out).contains("8 of 10 validation assertions failed or could not run: TEST 2, TEST 3, TEST 4, TEST 5, TEST 7, TEST 8, TEST 9, TEST 10"),
        "{}",
        stderr(&out)
    );
}
