//! One lifecycle every operation kind goes through (as pgroll's harness runs every operation):
//! a database at the latest version, seeded, without the object; then the pre-flight's refusal,
//! the online run, a second run that does nothing, the object refusing a bad row, a half-done
//! state resumed from the catalog, drift restored, the migration file's fallback SQL reaching
//! the same end state twice, and an object of the same name but another shape refused. Each kind
//! has a test file that declares one case (`tests/op_*.rs`).

use meta_chat_migrations::check::{declaration_status, OpStatus};
use meta_chat_migrations::engine::ops::{fallback_sql, in_place, Declaration};
use meta_chat_migrations::migrate::apply_declaration;
use meta_chat_migrations::Error;
use postgres::Client;

use super::{count, seed, stderr, TestDb};

/// One operation kind, declared on `messages`.
pub struct Case {
    /// A declaration of one operation.
    pub declaration: &'static Declaration,
    /// SQL run once on the database at the latest version, before anything else (objects of
    /// other versions out of the way).
    pub setup: &'static str,
    /// SQL that removes the object from the table and every partition.
    pub remove: &'static str,
    /// SQL that inserts one row the object refuses, with the SQLSTATE it refuses it with.
    pub violating: Option<(&'static str, &'static str)>,
    /// SQL that makes an object of the same name but another shape.
    pub other_shape: &'static str,
}

fn status(db: &TestDb, case: &Case) -> OpStatus {
    let mut c = db.client();
    declaration_status(&mut c, "public", case.declaration)
        .unwrap()
        .remove(0)
}

fn placed(c: &mut Client, case: &Case) -> bool {
    let ops: Vec<_> = case.declaration.ops().collect();
    in_place(c, "public", &ops).unwrap()[0]
}

fn apply(db: &TestDb, case: &Case) -> Result<usize, Error> {
    apply_declaration(&db.settings(), case.declaration).map(|(_, reports)| {
        reports
            .iter()
            .map(|r| r.actions.values().sum::<usize>())
            .sum()
    })
}

/// A database at the latest version, seeded, with the object removed.
fn without_it(case: &Case) -> TestDb {
    let db = TestDb::new();
    let out = db.run(&["migrate", "--skip-partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = db.client();
    seed(&mut c, 10, 2000);
    c.batch_execute(case.setup).unwrap();
    c.batch_execute(case.remove).unwrap();
    db
}

/// Runs every stage of the lifecycle on `case`.
pub fn lifecycle(case: &Case) {
    let db = without_it(case);
    let mut c = db.client();
    let id = case.declaration.ops().next().unwrap().id();
    let before = status(&db, case);
    assert_eq!(before.state, "MISSING", "{id}: {before:?}");
    assert!(before.partitions > 30, "{id}: {before:?}");
    refused_before_anything_changes(&db, case);
    let actions = apply(&db, case).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert!(actions > before.partitions, "{id}: {actions} steps");
    assert!(placed(&mut c, case), "{id} not in place after the run");
    let after = status(&db, case);
    assert_eq!(
        (after.state.as_str(), after.partitions_done),
        ("valid", after.partitions),
        "{id}"
    );
    assert_eq!(
        apply(&db, case).unwrap(),
        0,
        "{id}: a second run did something"
    );
    if let Some((sql, code)) = case.violating {
        let err = c.batch_execute(sql).unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some(code), "{id}: {err}");
    }
    resumed_from_the_catalog(&db, case);
    // Drift: removed after it was in place, it is restored by the same run.
    c.batch_execute(case.remove).unwrap();
    assert!(!placed(&mut c, case));
    apply(&db, case).unwrap();
    assert!(placed(&mut c, case), "{id}: drift not restored");
    fallback_reaches_the_same_end(&db, case);
    another_shape_is_refused(&db, case);
}

/// With a row the object would refuse (its id starts with `violating`), the run refuses before
/// anything changes (the kind's pre-flight), naming the count; nothing of the object exists
/// after it.
fn refused_before_anything_changes(db: &TestDb, case: &Case) {
    let Some((sql, _)) = case.violating else {
        return;
    };
    let mut c = db.client();
    c.batch_execute(sql).unwrap();
    let err = apply(db, case).unwrap_err();
    assert_eq!(err.kind(), "orphans", "{err}");
    assert!(err.to_string().contains("1 "), "{err}");
    let s = status(db, case);
    assert_eq!(
        (s.state.as_str(), s.partitions_done),
        ("MISSING", 0),
        "{s:?}"
    );
    c.batch_execute("DELETE FROM messages WHERE id LIKE 'violating%'")
        .unwrap();
}

/// A run stopped after its first partition's first step (the state a kill leaves) is finished
/// by the next from the catalog. The steps before the partitions' (on PostgreSQL 18 a key goes
/// on the parent NOT VALID first) run before it, as a run runs them.
fn resumed_from_the_catalog(db: &TestDb, case: &Case) {
    let mut c = db.client();
    c.batch_execute(case.remove).unwrap();
    let (before, first) = {
        let mut plans =
            meta_chat_migrations::engine::plan_declaration(&mut c, "public", case.declaration)
                .unwrap();
        let plan = plans.remove(0);
        (plan.before.clone(), plan.items[0].steps[0].clone())
    };
    for st in before.iter().chain([&first]).flat_map(|s| &s.statements) {
        c.batch_execute(&st.sql).unwrap();
    }
    let s = status(db, case);
    assert_ne!(s.state, "valid", "{s:?}");
    apply(db, case).unwrap();
    assert!(placed(&mut c, case), "{}: not resumed", first.id.as_str());
}

/// The migration file's SQL, applied without the runner (twice: it is idempotent), reaches the
/// state the runner reaches.
fn fallback_reaches_the_same_end(db: &TestDb, case: &Case) {
    let mut c = db.client();
    c.batch_execute(case.remove).unwrap();
    let sql = fallback_sql(case.declaration);
    c.batch_execute(&sql).unwrap();
    c.batch_execute(&sql).unwrap();
    assert!(placed(&mut c, case), "fallback SQL:\n{sql}");
    let s = status(db, case);
    assert_eq!(s.state, "valid", "{s:?}");
}

/// An object of the declared name but another shape is a conflict: refused before anything
/// changes, named by `check`.
fn another_shape_is_refused(db: &TestDb, case: &Case) {
    let mut c = db.client();
    c.batch_execute(case.remove).unwrap();
    c.batch_execute(case.other_shape).unwrap();
    let err = apply(db, case).unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
    let s = status(db, case);
    assert_eq!(s.state, "CONFLICT", "{s:?}");
    assert!(!placed(&mut c, case));
    assert!(count(&mut c, "SELECT count(*) FROM messages") > 0);
}
