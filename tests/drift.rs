//! Drift: an object an applied version declares, removed (or replaced) afterwards. `check` exits
//! 6 naming it; `migrate --dry-run` shows its restore; `migrate` restores it online, saying so in
//! its log and `--json`; what it cannot restore (another shape) stays a warning and `check`
//! keeps exiting 6.

mod common;

use common::*;

/// Every declared object, as `check --json` lists them: (id, kind, table).
fn declared(db: &TestDb) -> Vec<(String, String, String)> {
    let out = db.run(&["check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap().to_string();
            (s("id"), s("kind"), s("table"))
        })
        .collect()
}

/// Removes it (an index with what depends on it: a unique index's key goes too).
fn remove_sql(id: &str, kind: &str, table: &str) -> String {
    if kind.contains("index") {
        format!("DROP INDEX {id} CASCADE")
    } else {
        format!("ALTER TABLE {table} DROP CONSTRAINT {id}")
    }
}

#[test]
fn each_declared_object_removed_is_reported_and_restored_online() {
    let db = TestDb::new();
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    seed(&mut db.client(), 10, 2000);
    let objects = declared(&db);
    assert!(objects.len() >= 5, "{objects:?}");
    let mut c = db.client();
    for (id, kind, table) in &objects {
        c.batch_execute(&remove_sql(id, kind, table)).unwrap();
        let out = db.run(&["check"]);
        assert_eq!(out.status.code(), Some(6), "{id}: {}", stdout(&out));
        assert!(
            stdout(&out).contains(id) && stdout(&out).contains("DRIFT"),
            "{id}: {}",
            stdout(&out)
        );
        let plan = db.run(&["migrate", "--dry-run"]);
        assert!(
            stdout(&plan).contains(
                "drift: what applied versions declare is not all in place; restored online first:"
            ) && stdout(&plan).contains(id.as_str()),
            "{id}: {}",
            stdout(&plan)
        );
        let out = db.run(&["migrate", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{id}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("drift: {kind} {id} on {table}"))
                && stderr(&out).contains(&format!("drift: restored {kind} {id} on public.{table}")),
            "{id}: {}",
            stderr(&out)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            report["restored"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id.as_str()),
            "{id}: {report}"
        );
        assert_eq!(
            db.run(&["check"]).status.code(),
            Some(0),
            "{id} after the restore"
        );
    }
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

/// An object of a declared name but another shape cannot be restored in place: `migrate` warns,
/// says so in `--json`, and exits 0 (the versions are applied); `check` keeps exiting 6.
#[test]
fn an_object_of_another_shape_is_reported_not_replaced() {
    let db = TestDb::new();
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    let mut c = db.client();
    c.batch_execute(
        "DROP INDEX messages_tenant_id_idx; CREATE INDEX messages_tenant_id_idx ON messages (role);",
    )
    .unwrap();
    let out = db.run(&["check"]);
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));
    assert!(stdout(&out).contains("CONFLICT"), "{}", stdout(&out));
    let out = db.run(&["migrate", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("drift: not restored:"),
        "{}",
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["drift_error"].as_str().is_some(), "{report}");
    assert_eq!(db.run(&["check"]).status.code(), Some(6));
    // The negative: with the shape fixed by hand, the next run restores it.
    c.batch_execute("DROP INDEX messages_tenant_id_idx")
        .unwrap();
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    assert_eq!(db.run(&["check"]).status.code(), Some(0));
}
