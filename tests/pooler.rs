//! Connection poolers, with Debian's PgBouncer started by each test: transaction pooling is
//! refused before anything changes (no lock, no history, no session setting left on a pooled
//! server connection), session pooling works, a lock left on a pooled server connection is
//! named instead of waited for forever, and TLS is never given up because of a password.

mod common;

use std::time::{Duration, Instant};

use common::*;
use postgres::{Client, NoTls};

#[test]
fn transaction_pooling_is_refused_before_anything_changes() {
    let db = TestDb::new();
    let bouncer = PgBouncer::start("transaction");
    let out = run_bin(&bouncer.url(&db), &["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("is reached through a connection pooler in transaction or statement mode")
            && line.contains("use a direct URL or a session-pooled one"),
        "{line}"
    );
    assert_eq!(advisory_locks(&db), 0, "a lock was left behind");
    assert_eq!(
        count(
            &mut db.client(),
            "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'"
        ),
        0
    );
    // No session setting leaked onto the pooled server connections.
    let mut app = Client::connect(&bouncer.url(&db), NoTls).unwrap();
    for _ in 0..5 {
        let rows = app.simple_query("SHOW statement_timeout").unwrap();
        let shown = rows.iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(shown.as_deref(), Some("0"));
        let rows = app.simple_query("SHOW application_name").unwrap();
        assert!(rows
            .iter()
            .any(|m| matches!(m, postgres::SimpleQueryMessage::Row(_))));
    }
    // A direct run right after does not wait for anything.
    let started = Instant::now();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn session_pooling_works() {
    let db = seeded_broken();
    let bouncer = PgBouncer::start("session");
    let out = run_bin(&bouncer.url(&db), &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_bin(&bouncer.url(&db), &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(advisory_locks(&db), 0);
}

/// What an older runner left when it ran through transaction pooling: the session lock held by
/// an idle pooled server connection whose application name is the runner's. A direct run names
/// it (PgBouncer's server connection) and stops, instead of waiting for "another runner".
#[test]
fn a_lock_left_on_a_pooled_server_connection_is_named() {
    let db = TestDb::new();
    let bouncer = PgBouncer::start("transaction");
    let url = format!("{}?application_name=meta-chat-migrate", bouncer.url(&db));
    let mut pooled = Client::connect(&url, NoTls).unwrap();
    let (k1, k2) = meta_chat_migrations::db::lock::ADVISORY_LOCK_KEYS;
    pooled
        .simple_query(&format!("SELECT pg_advisory_lock({k1}, {k2})"))
        .unwrap();
    let server_pid: i32 = db
        .client()
        .query_one(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .unwrap()
        .get(0);
    let started = Instant::now();
    let out = db.run(&["migrate"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(45), "{took:?}");
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "held by pid {server_pid} (application_name 'meta-chat-migrate'"
        )) && line.contains("no live runner holds it")
            && line.contains(&format!("pg_terminate_backend({server_pid})")),
        "{line}"
    );
    drop(pooled);
}

/// A server without TLS (PgBouncer here offers none): `sslmode=require` must fail whatever the
/// password holds, as psql does; `prefer` connects.
#[test]
fn sslmode_require_is_never_given_up_for_a_password() {
    let db = TestDb::new();
    let bouncer = PgBouncer::start("session");
    for password in ["pa?ss", "p?ss&x=1", "p?sslmode=disable", "a:b?c#d"] {
        let url = format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{}?sslmode=require",
            bouncer.port, db.name
        );
        let out = run_bin(&url, &["status"]);
        assert_eq!(out.status.code(), Some(1), "{password}: {}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains("could not connect") && line.to_lowercase().contains("tls"),
            "{password}: {line}"
        );
        assert!(!stderr(&out).contains(password), "{}", stderr(&out));
        let prefer = url.replace("sslmode=require", "sslmode=prefer");
        let out = run_bin(&prefer, &["status"]);
        assert_eq!(out.status.code(), Some(0), "{password}: {}", stderr(&out));
    }
}
