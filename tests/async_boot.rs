//! The library from async applications: `migrate` called inside a tokio runtime (where the
//! postgres crate alone panics) works, and `migrate_async` applies the schema without blocking
//! a worker and stops the run when its future is dropped.

mod common;

use std::time::Duration;

use common::*;
use meta_chat_migrations::embedded;

fn applied(db: &TestDb) -> i64 {
    count(
        &mut db.client(),
        "SELECT count(*) FROM refinery_schema_history",
    )
}

#[test]
fn migrate_called_inside_a_runtime_works_where_the_driver_alone_panics() {
    let db = TestDb::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The negative: the synchronous driver, used the same way, panics.
    let url = db.settings().database_url.clone();
    let panicked = runtime.block_on(async move {
        std::panic::catch_unwind(|| postgres::Client::connect(&url, postgres::NoTls).map(|_| ()))
    });
    let payload = panicked.expect_err("the driver inside a runtime should panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("runtime"), "{message}");
    // The library, called the same way (what an application's `async fn main` would do).
    let settings = db.settings();
    let report = runtime
        .block_on(async move { meta_chat_migrations::migrate(&settings) })
        .unwrap();
    assert_eq!(report.applied.len(), embedded::migrations().len());
    assert_eq!(applied(&db), embedded::migrations().len() as i64);
    let settings = db.settings();
    let verify = runtime
        .block_on(async move { meta_chat_migrations::verify(&settings) })
        .unwrap();
    assert!(verify.failed().is_empty());
}

#[test]
fn migrate_async_applies_the_schema_and_dropping_it_stops_the_run() {
    let db = seeded_broken();
    // An open snapshot: the run's first concurrent index build waits for it indefinitely.
    let mut blocker = db.client();
    blocker
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM tenants;")
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = db.settings();
    let outcome = runtime.block_on(async move {
        tokio::time::timeout(
            Duration::from_secs(3),
            meta_chat_migrations::migrate_async(settings),
        )
        .await
    });
    assert!(
        outcome.is_err(),
        "the run should still wait for the snapshot"
    );
    // Dropped: every statement of the run ends although the snapshot is still open.
    assert!(
        eventually(Duration::from_secs(10), || runner_backends(&db).is_empty()),
        "{:?}",
        runner_backends(&db)
    );
    assert_eq!(advisory_locks(&db), 0, "the migration lock was released");
    blocker.batch_execute("COMMIT").unwrap();
    let settings = db.settings();
    let report = runtime
        .block_on(meta_chat_migrations::migrate_async(settings))
        .unwrap();
    assert_eq!(report.to, Some(embedded::latest()));
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

/// A `migrate_async` whose future was dropped (a timeout) stops its own run only: the
/// application's next run with the same settings goes. The negative: the application's own
/// interrupt, once triggered, stops every later run (a shutdown).
#[test]
fn a_run_after_a_timed_out_one_goes() {
    let db = TestDb::new();
    let settings = db.settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let holder = BusyHolder::take(&db);
    let first = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(1),
            meta_chat_migrations::migrate_async(settings.clone()),
        )
        .await
    });
    assert!(first.is_err(), "the first run should have timed out");
    drop(holder);
    let report = runtime
        .block_on(meta_chat_migrations::migrate_async(settings.clone()))
        .unwrap();
    assert_eq!(report.to, Some(embedded::latest()));
    settings
        .interrupt
        .trigger(meta_chat_migrations::Reason::Requested);
    let err = runtime
        .block_on(meta_chat_migrations::migrate_async(settings.clone()))
        .unwrap_err();
    assert_eq!(err.kind(), "interrupted", "{err}");
}
