//! What an operator's server does to the runner's sessions: role- and database-level timeouts,
//! a proxy that closes idle connections, the lock connection killed, a role's search_path, a
//! standby or read-only database, a role's connection limit, and the wait for the migration
//! lock. Each test also shows the setting in force on a plain session, so that none of them
//! passes because the fixture did not do what it claims.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use meta_chat_migrations::embedded;
use postgres::{Client, NoTls};

fn admin() -> Client {
    Client::connect(&admin_url(), NoTls).unwrap()
}

/// A database owned by a new role that is not a superuser, at 20240520120000 with data,
/// migrated and seeded by that role.
fn owned_broken() -> TestDb {
    let db = TestDb::owned_by_new_role();
    let out = db.run(&["migrate", "--target", "20240520120000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    seed(&mut db.client(), 10, 5000);
    db
}

const NOT_VALID: &str = "ALTER TABLE {p} ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE NOT VALID";

/// Gives `partitions` their NOT VALID constraint (as if a run had got that far) and holds SHARE
/// UPDATE EXCLUSIVE on each from its own session, releasing them at the given times: the
/// runner's VALIDATE of each waits until then, while no insert conflicts. Returns the releaser.
/// The holders connect as the test server's admin, so that settings made for the database's
/// owner role do not apply to them.
/// A session that leaves `partition`'s copy of the key NOT VALID and holds SHARE UPDATE
/// EXCLUSIVE on it, so that the runner's validation waits.
fn hold(url: &str, partition: &str) -> Client {
    let mut s = Client::connect(url, NoTls).unwrap();
    s.batch_execute("SET statement_timeout = 0").unwrap();
    s.batch_execute(&NOT_VALID.replace("{p}", partition))
        .unwrap();
    s.batch_execute(&format!(
        "BEGIN; LOCK TABLE {partition} IN SHARE UPDATE EXCLUSIVE MODE;"
    ))
    .unwrap();
    s
}

fn hold_validations(db: &TestDb, holds: &[(&str, Duration)]) -> thread::JoinHandle<()> {
    let url = with_dbname(&admin_url(), &db.name);
    let sessions: Vec<(Client, Duration)> = holds
        .iter()
        .map(|(p, until)| (hold(&url, p), *until))
        .collect();
    let started = Instant::now();
    thread::spawn(move || {
        for (mut s, until) in sessions {
            if let Some(rest) = until.checked_sub(started.elapsed()) {
                thread::sleep(rest);
            }
            s.batch_execute("COMMIT").unwrap();
        }
    })
}

/// Like [`hold_validations`], but each partition is released `each` after the runner starts
/// waiting for it, whatever order its queue takes them in.
fn hold_each_while_waited(
    db: &TestDb,
    partitions: &[&str],
    each: Duration,
) -> thread::JoinHandle<()> {
    let url = with_dbname(&admin_url(), &db.name);
    let mut held: Vec<(String, Client, Option<Instant>)> = partitions
        .iter()
        .map(|p| (p.to_string(), hold(&url, p), None))
        .collect();
    let mut watch = Client::connect(&url, NoTls).unwrap();
    thread::spawn(move || {
        while !held.is_empty() {
            for (p, _, since) in held.iter_mut().filter(|h| h.2.is_none()) {
                let waiting = count(&mut watch, &format!("SELECT count(*) FROM pg_locks WHERE relation = '{p}'::regclass AND NOT granted"));
                if waiting > 0 {
                    *since = Some(Instant::now());
                }
            }
            held.retain_mut(|(_, s, since)| {
                let due = since.is_some_and(|t| t.elapsed() >= each);
                if due {
                    s.batch_execute("COMMIT").unwrap();
                }
                !due
            });
            thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn role_and_database_timeouts_neither_cancel_nor_disconnect_the_runner() {
    let db = owned_broken();
    let role = db.owner.clone().unwrap();
    let mut admin = admin();
    let v = server_version(&mut admin);
    let mut settings = vec![
        format!("ALTER DATABASE {} SET statement_timeout = '5ms'", db.name),
        format!(
            "ALTER ROLE {role} IN DATABASE {} SET idle_in_transaction_session_timeout = '50ms'",
            db.name
        ),
    ];
    if v >= 140000 {
        settings.push(format!(
            "ALTER ROLE {role} IN DATABASE {} SET idle_session_timeout = '500ms'",
            db.name
        ));
    }
    if v >= 170000 {
        settings.push(format!(
            "ALTER ROLE {role} IN DATABASE {} SET transaction_timeout = '40ms'",
            db.name
        ));
    }
    admin.batch_execute(&settings.join("; ")).unwrap();

    // The settings are in force for a plain session of that role.
    let mut plain = db.client();
    let err = plain.batch_execute("SELECT pg_sleep(0.2)").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    if v >= 140000 {
        thread::sleep(Duration::from_millis(900));
        assert!(
            plain.batch_execute("SELECT 1").is_err(),
            "idle_session_timeout did not close an idle session"
        );
    }

    // The runner's lock connection idles for 3s while a validation waits.
    let releaser = hold_validations(&db, &[("messages_2025_03", Duration::from_secs(3))]);
    let out = db.run(&["migrate", "--jobs", "1"]);
    releaser.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
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
fn a_proxy_that_closes_idle_connections_does_not_cost_the_runner_its_lock() {
    let db = seeded_broken();
    let proxy = Proxy::start(ProxyOptions {
        close_idle_after: Some(Duration::from_secs(3)),
        ..ProxyOptions::default()
    });
    // Each wait is shorter than the proxy's limit; the whole restore is longer.
    let releaser = hold_each_while_waited(
        &db,
        &["messages_2025_03", "messages_2025_09", "messages_2026_03"],
        Duration::from_secs(2),
    );
    let started = Instant::now();
    let out = run_bin(&proxy.url(&db.url), &["migrate", "--jobs", "1"]);
    releaser.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        started.elapsed() > Duration::from_secs(6),
        "the restore did not outlast the proxy's idle limit"
    );
    assert_eq!(
        proxy.closed_idle.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));

    // The negative: the proxy does close a connection that idles as long.
    let mut idle = Client::connect(&proxy.url(&db.url), NoTls).unwrap();
    thread::sleep(Duration::from_millis(3500));
    assert!(idle.batch_execute("SELECT 1").is_err());
    assert_eq!(
        proxy.closed_idle.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The pid holding the migration lock (key 1) in `db`, once there is one.
fn lock_holder(db: &TestDb) -> i32 {
    let (k1, k2) = meta_chat_migrations::db::lock::ADVISORY_LOCK_KEYS;
    let mut c = db.client();
    let mut pid = None;
    assert!(eventually(Duration::from_secs(30), || {
        pid = c
            .query_opt(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&k1, &k2],
            )
            .unwrap()
            .map(|r| r.get(0));
        pid.is_some()
    }));
    pid.unwrap()
}

fn queued_on(db: &TestDb, partition: &str) -> bool {
    count(
        &mut db.client(),
        &format!("SELECT count(*) FROM pg_locks WHERE relation = '{partition}'::regclass AND NOT granted"),
    ) > 0
}

#[test]
fn losing_the_lock_connection_stops_the_run_and_the_next_runner_ends_its_statements() {
    let plain = plain_catalog();
    let db = seeded_broken();
    let before = row_counts(&mut db.client());
    let releaser = hold_validations(&db, &[("messages_2025_03", Duration::from_secs(8))]);
    let first = {
        let url = db.url.clone();
        thread::spawn(move || run_bin(&url, &["migrate", "--jobs", "1"]))
    };
    assert!(eventually(Duration::from_secs(30), || queued_on(
        &db,
        "messages_2025_03"
    )));
    let holder = lock_holder(&db);
    let mut admin = admin();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&holder])
        .unwrap();
    // A second runner starts at once: it gets the lock, and must not race the first's worker.
    let second = {
        let url = db.url.clone();
        thread::spawn(move || run_bin(&url, &["migrate", "--jobs", "1"]))
    };
    let first = first.join().unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(
        error_line(&first).contains("lost the migration lock"),
        "{}",
        stderr(&first)
    );
    let second = second.join().unwrap();
    releaser.join().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(tenant_catalog(&mut db.client()), plain);
    assert_eq!(row_counts(&mut db.client()), before);
}

#[test]
fn a_role_search_path_naming_another_schema_does_not_move_the_migration() {
    let db = owned_broken();
    let role = db.owner.clone().unwrap();
    db.client().batch_execute("CREATE SCHEMA tenant_x").unwrap();
    admin()
        .batch_execute(&format!(
            "ALTER ROLE {role} IN DATABASE {} SET search_path = tenant_x",
            db.name
        ))
        .unwrap();
    let shown: String = db
        .client()
        .query_one("SHOW search_path", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, "tenant_x", "the role's search_path is not in force");

    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("migrating schema public of host="),
        "{}",
        stderr(&out)
    );
    let mut c = db.client();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tenant_x'"),
        0,
        "the runner built something in the role's schema"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM public.refinery_schema_history"
        ),
        embedded::migrations().len() as i64
    );
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn platform_tables_in_another_schema_are_refused_and_named() {
    let db = TestDb::new();
    db.client().batch_execute("CREATE SCHEMA app").unwrap();
    let out = db.run(&["--schema", "app", "migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("schema public: it has no migration history, but schema app has api_logs, conversations, messages, refinery_schema_history, tenants: pass --schema"),
        "{line}"
    );
    assert_eq!(
        count(
            &mut db.client(),
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0,
        "the refused run created tables in public"
    );

    let out = db.run(&["--schema", "nowhere", "migrate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).contains("schema nowhere: it does not exist, but schema app has"),
        "{}",
        stderr(&out)
    );
    let out = db.run(&["--schema", "app", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn a_standby_is_named_as_one() {
    let standby = Standby::start();
    let mut c = Client::connect(&standby.url, NoTls).unwrap();
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    let out = run_bin(&standby.url, &["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("is read-only: the server is a standby in recovery (pg_is_in_recovery() is true): point the URL at the primary"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_database_whose_sessions_start_read_only_is_named_and_left_alone() {
    let db = TestDb::new();
    admin()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name
        ))
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("sessions start read-only (default_transaction_read_only is on"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(
            &mut db.client(),
            "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'"
        ),
        0
    );
}

/// A session that holds the migration lock under the given application name; `busy` keeps it
/// running a statement (as a live runner's lock connection looks), else it idles.
fn hold_the_lock(db: &TestDb, application_name: &str) -> (Client, i32) {
    let mut c = db.client();
    c.batch_execute(&format!("SET application_name = '{application_name}'"))
        .unwrap();
    let (k1, k2) = meta_chat_migrations::db::lock::ADVISORY_LOCK_KEYS;
    c.execute("SELECT pg_advisory_lock($1, $2)", &[&k1, &k2])
        .unwrap();
    let pid = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    (c, pid)
}

#[test]
fn lock_wait_bounds_the_wait_for_a_live_runner_and_names_it() {
    let db = TestDb::new();
    let (mut holder, pid) = hold_the_lock(&db, "meta-chat-migrate");
    // Busy, as a live runner's lock connection is.
    let busy = thread::spawn(move || {
        let _ = holder.batch_execute("SELECT pg_sleep(20)");
        holder
    });
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = db.run(&["migrate", "--lock-wait", "1s"]);
    let took = started.elapsed();
    admin()
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    drop(busy.join().unwrap());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(8), "{took:?}");
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "the migration lock of this database is held by pid {pid} (application_name 'meta-chat-migrate'"
        )) && line.contains("(--lock-wait 1s)"),
        "{line}"
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
fn a_lock_held_by_something_else_is_named_and_not_waited_for_forever() {
    let db = TestDb::new();
    let (_holder, pid) = hold_the_lock(&db, "psql");
    let started = Instant::now();
    let out = db.run(&["migrate"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert!(
        stderr(&out).contains(&format!("held by pid {pid} (application_name 'psql'"))
            && stderr(&out).contains("which is not a live meta-chat-migrate runner"),
        "{}",
        stderr(&out)
    );
    let line = error_line(&out);
    assert!(
        line.contains("it is not a meta-chat-migrate runner")
            && line.contains(&format!("SELECT pg_terminate_backend({pid})")),
        "{line}"
    );
}

fn with_connection_limit(limit: i32, jobs: &str) -> std::process::Output {
    let db = owned_broken();
    let role = db.owner.clone().unwrap();
    admin()
        .batch_execute(&format!("ALTER ROLE {role} CONNECTION LIMIT {limit}"))
        .unwrap();
    let out = db.run(&["migrate", "--jobs", jobs]);
    if out.status.success() {
        assert_eq!(db.run(&["verify"]).status.code(), Some(0));
    }
    out
}

#[test]
fn a_role_connection_limit_below_jobs_plus_two_still_migrates() {
    let out = with_connection_limit(3, "4");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("opened 1 of 4 worker connection(s)"),
        "{}",
        stderr(&out)
    );
    let out = with_connection_limit(2, "2");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no connection left for workers"),
        "{}",
        stderr(&out)
    );
    // No slot even for the lock's connection: not waited for (--wait is 10s), advice given.
    let started = Instant::now();
    let out = with_connection_limit(0, "2");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for --wait: {}",
        stderr(&out)
    );
    let line = error_line(&out);
    assert!(
        line.contains("53300")
            && line.contains("raise max_connections or the role's CONNECTION LIMIT"),
        "{line}"
    );
    assert!(!stderr(&out).contains("waiting for"), "{}", stderr(&out));
    let started = Instant::now();
    let out = with_connection_limit(1, "2");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "it waited for --wait"
    );
    let line = error_line(&out);
    assert!(
        line.contains("53300")
            && line.contains("connection limit is reached")
            && line.contains("a run needs two connections"),
        "{line}"
    );
}
