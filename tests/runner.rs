//! The runner's contract: idempotence, concurrency, read-only status, waiting for the server,
//! and one-line errors with the documented exit codes.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use meta_chat_migrations::{embedded, Settings};
use postgres::error::SqlState;

fn history(db: &TestDb) -> Vec<(i64, String, String)> {
    db.client()
        .query(
            "SELECT version, name, applied_on FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn migrate_twice_is_a_no_op() {
    let db = TestDb::new();
    let first = meta_chat_migrations::migrate(&db.settings()).unwrap();
    assert_eq!(first.applied.len(), embedded::migrations().len());
    let before = history(&db);
    let catalog = tenant_catalog(&mut db.client());
    let second = meta_chat_migrations::migrate(&db.settings()).unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.to, Some(embedded::latest()));
    assert_eq!(history(&db), before, "history rewritten");
    assert_eq!(tenant_catalog(&mut db.client()), catalog);
    // And the versioned SQL itself is idempotent, applied by hand over the restored state.
    db.client()
        .batch_execute(&migration_sql(embedded::RESTORE_MESSAGES_TENANT_FK))
        .unwrap();
    db.client()
        .batch_execute(&migration_sql(embedded::RESTORE_API_LOGS_TENANT_FK))
        .unwrap();
    assert_eq!(tenant_catalog(&mut db.client()), catalog);
}

fn insert_into_2040_01(
    c: &mut postgres::Client,
    tenant: &str,
    conversation: &str,
) -> postgres::error::DbError {
    c.execute(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
         VALUES ('m', $1, $2, 'user', 'x', '2040-01-15')",
        &[&tenant, &conversation],
    )
    .unwrap_err()
    .as_db_error()
    .unwrap()
    .clone()
}

/// Partitions created later by hand with `CREATE TABLE ... PARTITION OF` (a month beyond the
/// window the runner keeps) enforce the keys: the tenant
/// key (shown at 20251121000003, where it is the only key a row with an unknown tenant breaks),
/// and the tenant-consistency key.
#[test]
fn a_partition_created_after_the_restore_enforces_the_fk() {
    let setup = "CREATE TABLE messages_2040_01 PARTITION OF messages FOR VALUES FROM ('2040-01-01') TO ('2040-02-01');
         INSERT INTO tenants (id, name) VALUES ('t', 'T'), ('u', 'U');
         INSERT INTO conversations (id, \"tenantId\") VALUES ('c', 't');";
    let db = TestDb::at(embedded::RESTORE_API_LOGS_TENANT_FK);
    let mut c = db.client();
    c.batch_execute(setup).unwrap();
    let err = insert_into_2040_01(&mut c, "nobody", "c");
    assert_eq!(err.code(), &SqlState::FOREIGN_KEY_VIOLATION);
    assert_eq!(err.constraint(), Some("messages_tenant_id_fkey"));
    assert_eq!(err.table(), Some("messages_2040_01"));

    let db = TestDb::new();
    meta_chat_migrations::migrate(&db.settings()).unwrap();
    let mut c = db.client();
    c.batch_execute(setup).unwrap();
    let err = insert_into_2040_01(&mut c, "u", "c");
    assert_eq!(err.code(), &SqlState::FOREIGN_KEY_VIOLATION);
    assert_eq!(err.constraint(), Some("messages_conversation_tenant_fkey"));
    assert_eq!(err.table(), Some("messages_2040_01"));
    let out = db.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn concurrent_runners_apply_each_version_once() {
    let db = TestDb::new();
    let url = db.url.clone();
    let runners: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || run_bin(&url, &["migrate"]))
        })
        .collect();
    for r in runners {
        let out = r.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let versions: Vec<i64> = history(&db).into_iter().map(|h| h.0).collect();
    assert_eq!(
        versions,
        embedded::migrations()
            .iter()
            .map(|m| m.version())
            .collect::<Vec<_>>()
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn a_waiting_runner_names_the_pid_holding_the_lock() {
    let db = TestDb::new();
    // A session that looks like a runner holding the lock (application name, recent activity).
    let (mut holder, pid) = hold_migration_lock(&db);
    let url = db.url.clone();
    let runner = thread::spawn(move || run_bin(&url, &["migrate"]));
    thread::sleep(Duration::from_millis(1500));
    holder
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();
    let out = runner.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "another runner (pid {pid} (application_name 'meta-chat-migrate', client "
        )) && stderr(&out)
            .contains("holds the migration lock on this database; waiting for it to finish"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_on_an_empty_database_creates_nothing() {
    let db = TestDb::new();
    let objects = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')";
    let before = count(&mut db.client(), objects);
    let out = db.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["history_table"], false);
    assert_eq!(
        status["pending"].as_array().unwrap().len(),
        embedded::migrations().len()
    );
    assert_eq!(
        count(&mut db.client(), objects),
        before,
        "status created objects"
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
fn status_lists_applied_and_pending() {
    let db = TestDb::broken();
    let out = db.run(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("applied   20240520120000 partition_messages_api_logs"),
        "{text}"
    );
    assert!(
        text.contains("pending   20251121000002 restore_tenant_fk"),
        "{text}"
    );
}

#[test]
fn target_stops_at_the_given_version() {
    let db = TestDb::new();
    let out = db.run(&["migrate", "--target", "20240520120000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(history(&db).last().unwrap().0, embedded::PARTITIONED);
}

#[test]
fn bad_input_gives_one_line_and_the_documented_exit_code() {
    let db = TestDb::new();
    // Usage errors: exit 2.
    for (args, expect) in [
        (
            vec!["--database-url", "mysql://u:hunter2@h/db", "status"],
            "invalid database URL",
        ),
        (
            vec![
                "--database-url",
                "postgres://u:hunter2@h:99999/db",
                "status",
            ],
            "invalid database URL",
        ),
        (
            vec!["--database-url", &db.url, "migrate", "--target", "42"],
            "--target 42 is not a migration of this build",
        ),
        (
            vec!["--database-url", &db.url, "migrate", "--jobs", "0"],
            "--jobs",
        ),
        (
            vec![
                "--database-url",
                &db.url,
                "migrate",
                "--lock-timeout",
                "soon",
            ],
            "--lock-timeout",
        ),
        (vec!["--database-url", &db.url, "frobnicate"], "frobnicate"),
    ] {
        let out = runner_bin().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    assert_eq!(
        count(
            &mut db.client(),
            "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'"
        ),
        0
    );
}

#[test]
fn an_unreachable_host_fails_after_the_wait_with_exit_1() {
    // A port nothing listens on: bind, learn the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/postgres");
    let started = Instant::now();
    let out = runner_bin()
        .args(["--database-url", &url, "--wait", "1s", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!(
            "error: could not connect to host=127.0.0.1 port={port} database=postgres"
        )),
        "{line}"
    );
    assert!(!stderr(&out).contains("hunter2"));
}

#[test]
fn a_missing_database_fails_at_once() {
    let url = with_dbname(&admin_url(), "mcm_no_such_database");
    let started = Instant::now();
    let out = runner_bin()
        .args(["--database-url", &url, "--wait", "30s", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for a permanent error"
    );
    assert!(error_line(&out).contains("3D000"), "{}", stderr(&out));
}

#[test]
fn a_history_from_a_newer_build_is_refused() {
    let db = TestDb::new();
    meta_chat_migrations::migrate(&db.settings()).unwrap();
    db.client()
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (20990101000000, 'from_the_future', '2099-01-01T00:00:00Z', '1')",
            &[],
        )
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("20990101000000 (from_the_future) that this build of meta-chat-migrations does not know"), "{line}");
    assert_eq!(
        stderr(&out)
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1
    );
    let out = db.run(&["status"]);
    assert!(stdout(&out).contains("UNKNOWN   20990101000000 from_the_future"));
}

#[test]
fn a_history_with_int4_versions_reads_the_same() {
    // Written by a refinery built without int8-versions: status must not choke on it.
    let db = TestDb::new();
    db.client()
        .batch_execute(
            "CREATE TABLE refinery_schema_history (version int4 PRIMARY KEY, name varchar(255), applied_on varchar(255), checksum varchar(255));
             INSERT INTO refinery_schema_history VALUES (1, 'legacy', '2024-01-01T00:00:00Z', '1');",
        )
        .unwrap();
    let out = db.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("UNKNOWN   1 legacy"),
        "{}",
        stdout(&out)
    );
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).contains("applied migration 1 (legacy) that this build"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_edited_applied_migration_is_refused_as_divergent() {
    let db = TestDb::broken();
    db.client()
        .execute(
            "UPDATE refinery_schema_history SET checksum = '12345' WHERE version = $1",
            &[&embedded::PARTITIONED],
        )
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).contains("applied migration 20240520120000 (partition_messages_api_logs) differs from the embedded one"), "{}", stderr(&out));
    let untouched: bool = db
        .client()
        .query_one("SELECT to_regclass('messages_tenant_id_idx') IS NULL", &[])
        .unwrap()
        .get(0);
    assert!(
        untouched,
        "a later migration ran despite the divergent history"
    );
}

#[test]
fn the_runner_waits_for_a_database_that_is_not_up_yet() {
    // As a compose init step: the runner starts first; PostgreSQL only accepts connections on
    // this port two seconds later (a proxy to the real server stands in for its start).
    let db = TestDb::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/{}", db.name);
    let runner = {
        let url = url.clone();
        thread::spawn(move || {
            runner_bin()
                .args(["--database-url", &url, "--wait", "60s", "migrate"])
                .output()
                .unwrap()
        })
    };
    thread::sleep(Duration::from_secs(2));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    thread::spawn(move || serve(listener, ProxyOptions::default(), Default::default()));
    let out = runner.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for host=127.0.0.1"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("connected to host=127.0.0.1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(history(&db).len(), embedded::migrations().len());
}

#[test]
fn library_settings_default_to_the_documented_values() {
    let s = Settings::new("postgres://x@y/z");
    assert_eq!(s.connect_wait, Duration::from_secs(60));
    assert_eq!(s.lock_timeout, Duration::from_secs(2));
    assert_eq!(s.lock_retries, 10);
    assert_eq!(s.jobs, 2);
    assert_eq!(s.orphans, meta_chat_migrations::OrphanPolicy::Refuse);
    assert_eq!(s.target, None);
}

/// What examples/app_boot.rs does: the synchronous runner called from a tokio application
/// through spawn_blocking, by several "replicas" at once.
#[test]
fn migrate_at_boot_from_a_tokio_app() {
    let db = TestDb::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let applied: usize = runtime.block_on(async {
        let boots: Vec<_> = (0..3)
            .map(|_| {
                let settings = db.settings();
                tokio::task::spawn_blocking(move || meta_chat_migrations::migrate(&settings))
            })
            .collect();
        let mut applied = 0;
        for b in boots {
            applied += b.await.unwrap().unwrap().applied.len();
        }
        applied
    });
    let n = embedded::migrations().len();
    assert_eq!(applied, n, "each version applied by exactly one replica");
    assert_eq!(history(&db).len(), n);
}

/// docs/commands.md pastes `--help`; this keeps the paste true.
#[test]
fn the_commands_page_shows_the_real_help() {
    let out = runner_bin()
        .arg("--help")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md")).unwrap();
    let help = stdout(&out);
    assert!(
        page.contains(&format!("$ meta-chat-migrate --help\n{help}```")),
        "docs/commands.md's --help differs from the binary's:\n{help}"
    );
}
