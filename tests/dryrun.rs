//! `migrate --dry-run`: what migrate would do, and nothing else. A snapshot of the catalog is
//! taken before and after each dry run (relations, constraints with their validity and parents,
//! indexes with their validity): it never changes, not even on an empty database where migrate
//! would create the history table; and it never waits behind a running migration.

mod common;

use std::time::{Duration, Instant};

use common::*;
use postgres::Client;

fn snapshot(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT format('rel %s.%s %s', n.nspname, c.relname, c.relkind) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         UNION ALL
         SELECT format('con %s.%s valid=%s parent=%s', conrelid::regclass, conname, convalidated, conparentid <> 0) FROM pg_constraint
          WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
         UNION ALL
         SELECT format('idx %s valid=%s', indexrelid::regclass, indisvalid) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
          WHERE c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'pg_toast'::regnamespace)
         ORDER BY 1",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

fn dry_run(db: &TestDb, json: bool) -> (String, Option<serde_json::Value>) {
    let mut args = vec!["migrate", "--dry-run"];
    if json {
        args.push("--json");
    }
    let before = snapshot(&mut db.client());
    let out = db.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        snapshot(&mut db.client()),
        before,
        "the dry run changed the catalog"
    );
    let value = json.then(|| serde_json::from_slice(&out.stdout).expect("one JSON document"));
    (stdout(&out), value)
}

#[test]
fn on_an_empty_database_it_lists_every_version_and_creates_nothing() {
    let db = TestDb::new();
    let (text, _) = dry_run(&db, false);
    for v in meta_chat_migrations::embedded::migrations() {
        assert!(
            text.contains(&format!("pending {} {}", v.version(), v.name())),
            "{text}"
        );
    }
    assert!(
        text.contains("not planned: its tables do not exist yet"),
        "{text}"
    );
    assert_eq!(
        count(
            &mut db.client(),
            "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'"
        ),
        0
    );
}

#[test]
fn on_a_resumed_run_it_shows_what_is_done_and_what_remains_with_locks() {
    let db = seeded_broken();
    let mut c = db.client();
    c.batch_execute(
        "ALTER TABLE messages_2024_02 ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE NOT VALID;
         ALTER TABLE messages_2024_02 VALIDATE CONSTRAINT messages_tenant_id_fkey;
         CREATE INDEX messages_tenant_id_idx ON ONLY messages (\"tenantId\");
         CREATE INDEX \"messages_2024_03_tenantId_idx\" ON messages_2024_03 (\"tenantId\");
         ALTER INDEX messages_tenant_id_idx ATTACH PARTITION \"messages_2024_03_tenantId_idx\";",
    )
    .unwrap();
    interrupted_build(
        &db.url,
        "messages_2024_04_tenantId_idx",
        "messages_2024_04",
        "\"tenantId\"",
    );
    add_orphans(&mut c, 2, 0);
    let (_, plan) = dry_run(&db, true);
    let plan = plan.unwrap();
    assert_eq!(plan["current"], 20240520120000i64);
    let batch = &plan["online"][0];
    // The three online versions after the partitioning (and any later one) in one batch.
    assert_eq!(
        batch["versions"].as_array().unwrap()[..3],
        serde_json::json!([20251121000002i64, 20251121000003i64, 20251121000004i64])
            .as_array()
            .unwrap()[..]
    );
    assert_eq!(batch["preflight"][0]["rule"], "orphaned-messages");
    assert_eq!(batch["preflight"][0]["count"], 2);
    let ops = batch["phases"][0].as_array().unwrap();
    let fk = ops
        .iter()
        .find(|o| o["id"] == "messages_tenant_id_fkey")
        .unwrap();
    assert_eq!(fk["partitions"], 37);
    assert_eq!(fk["leaves_done"], 1);
    assert_eq!(fk["items"].as_array().unwrap().len(), 36);
    let idx = ops
        .iter()
        .find(|o| o["id"] == "messages_tenant_id_idx")
        .unwrap();
    assert_eq!(idx["leaves_done"], 1);
    assert!(
        idx["before"].as_array().unwrap().is_empty(),
        "the parent index exists"
    );
    let steps_of = |rel: &str| -> Vec<String> {
        idx["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["relation"]["name"] == rel)
            .unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["action"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        steps_of("messages_2024_04"),
        ["await-build", "drop-invalid", "build", "attach"]
    );
    assert_eq!(steps_of("messages_2024_05"), ["build", "attach"]);
    // Each step says what it locks and whether --lock-timeout bounds it.
    let adopt = &fk["after"][0];
    assert_eq!(adopt["id"], "messages_tenant_id_fkey:public.messages:adopt");
    assert_eq!(adopt["bounded"], true);
    assert!(
        adopt["locks"]
            .as_str()
            .unwrap()
            .contains("ACCESS EXCLUSIVE on public.tenants"),
        "{adopt}"
    );
    let validate = &fk["items"][0]["steps"][1];
    assert_eq!(validate["action"], "validate");
    assert_eq!(validate["bounded"], false);
    assert!(
        validate["locks"]
            .as_str()
            .unwrap()
            .starts_with("SHARE UPDATE EXCLUSIVE"),
        "{validate}"
    );
    // And the text form says the same.
    let (text, _) = dry_run(&db, false);
    assert!(text.contains("pre-flight orphaned-messages: 2 messages reference no tenant (sample ids: ghost-m1, ghost-m2): refused unless --orphans archive or delete"), "{text}");
    assert!(
        text.contains("foreign key messages_tenant_id_fkey on public.messages: 37 partition(s), ~"),
        "{text}"
    );
    assert!(text.contains("1 done, 36 to do"), "{text}");
    assert!(text.contains("adopt: SHARE ROW EXCLUSIVE on public.messages and its partitions, ACCESS EXCLUSIVE on public.tenants"), "{text}");
    assert!(
        text.contains("[bounded by --lock-timeout 2000ms, 10 retries]"),
        "{text}"
    );
}

#[test]
fn it_never_waits_behind_a_running_migration() {
    let db = seeded_broken();
    let (_holder, _) = hold_migration_lock(&db);
    let started = Instant::now();
    let (text, _) = dry_run(&db, false);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text.contains("pending 20251121000002 restore_tenant_fk"),
        "{text}"
    );
}

#[test]
fn on_a_migrated_database_there_is_nothing_to_do() {
    let db = TestDb::new();
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    let (text, plan) = dry_run(&db, true);
    assert_eq!(plan.unwrap()["pending"], serde_json::json!([]));
    let _ = text;
    let (text, _) = dry_run(&db, false);
    assert!(text.contains("nothing to apply"), "{text}");
}
