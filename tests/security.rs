//! TLS (`sslmode`) and secrets: the runner's own backend is encrypted when asked, and the
//! password never appears in anything the runner prints, whether it succeeds or fails.
//!
//! The password tests need a role that must authenticate (`scripts/test-setup.sh` creates
//! `mcm_pw` with scram-sha-256 on 127.0.0.1); they fail, saying so, where it is missing.

mod common;

use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use postgres::NoTls;

/// The test role's password. Test-only; the setup script creates the role with it.
const PASSWORD: &str = "Pw-7f3a9c-never-printed";
const WRONG_PASSWORD: &str = "Wrong-8e21bd-never-printed";
const ROLE: &str = "mcm_pw";

fn server_ssl_cert() -> String {
    let mut admin = postgres::Client::connect(&admin_url(), NoTls).unwrap();
    let on: String = admin.query_one("SHOW ssl", &[]).unwrap().get(0);
    assert_eq!(
        on, "on",
        "the test server must have ssl = on (scripts/test-setup.sh)"
    );
    let cert: String = admin.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
    if cert.starts_with('/') {
        return cert;
    }
    let data: String = admin.query_one("SHOW data_directory", &[]).unwrap().get(0);
    format!("{data}/{cert}")
}

fn with_query(url: &str, query: &str) -> String {
    format!("{url}{}{query}", if url.contains('?') { "&" } else { "?" })
}

/// Holds the migration lock so that a runner started now waits, and reports whether each of
/// its backends in `db` is encrypted.
fn ssl_of_waiting_runner(db: &TestDb, url: &str) -> (Vec<bool>, Output) {
    let mut holder = db.client();
    holder
        .batch_execute("SET application_name = 'meta-chat-migrate'")
        .unwrap();
    let (k1, k2) = meta_chat_migrations::db::ADVISORY_LOCK_KEYS;
    holder
        .execute("SELECT pg_advisory_lock($1, $2)", &[&k1, &k2])
        .unwrap();
    let runner = {
        let url = url.to_string();
        thread::spawn(move || run_bin(&url, &["migrate"]))
    };
    let started = Instant::now();
    let mut ssl = Vec::new();
    // A waiting runner holds two connections: the main one and the one that waits for the lock.
    while started.elapsed() < Duration::from_secs(20) && ssl.len() < 2 {
        ssl = holder
            .query(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
                  WHERE a.datname = current_database() AND a.application_name = 'meta-chat-migrate'
                    AND a.pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        thread::sleep(Duration::from_millis(50));
    }
    holder
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&k1, &k2])
        .unwrap();
    (ssl, runner.join().unwrap())
}

#[test]
fn sslmode_require_encrypts_the_runners_backend() {
    server_ssl_cert();
    let db = TestDb::new();
    let (ssl, out) = ssl_of_waiting_runner(&db, &with_query(&db.url, "sslmode=require"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        ssl,
        vec![true, true],
        "pg_stat_ssl of the runner's backends"
    );
}

#[test]
fn sslmode_disable_does_not() {
    let db = TestDb::new();
    let (ssl, out) = ssl_of_waiting_runner(&db, &with_query(&db.url, "sslmode=disable"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ssl, vec![false, false]);
}

#[test]
fn verify_full_checks_the_certificate_and_the_host_name() {
    let cert = server_ssl_cert();
    let db = TestDb::new();
    // Debian's snakeoil certificate is self-signed for "localhost".
    let good = with_query(
        &db.url.replace("127.0.0.1", "localhost"),
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    );
    let (ssl, out) = ssl_of_waiting_runner(&db, &good);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ssl, vec![true, true]);

    let wrong_host = with_query(
        &db.url.replace("localhost", "127.0.0.1"),
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    );
    let out = run_bin(&wrong_host, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).contains("certificate"), "{}", stderr(&out));

    let no_ca = with_query(&db.url, "sslmode=verify-full");
    let out = run_bin(&no_ca, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        error_line(&out).contains("needs sslrootcert"),
        "{}",
        stderr(&out)
    );
}

fn role_url(password: &str, db: &str) -> String {
    let url = with_dbname(&admin_url(), db);
    let scheme_end = url.find("://").unwrap() + 3;
    let host = url[scheme_end..]
        .split_once('@')
        .map(|(_, h)| h)
        .unwrap_or(&url[scheme_end..])
        .to_string();
    format!("postgres://{ROLE}:{password}@{host}")
}

/// A database owned by the password role.
fn password_db() -> TestDb {
    let db = TestDb::new();
    let mut admin = postgres::Client::connect(&admin_url(), NoTls).unwrap();
    admin
        .batch_execute(&format!("ALTER DATABASE {} OWNER TO {ROLE}", db.name))
        .unwrap_or_else(|e| panic!("the role {ROLE} is missing: run scripts/test-setup.sh ({e})"));
    db
}

fn assert_secret_free(label: &str, out: &Output) {
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(
            !stdout(out).contains(secret),
            "{label}: password in stdout:\n{}",
            stdout(out)
        );
        assert!(
            !stderr(out).contains(secret),
            "{label}: password in stderr:\n{}",
            stderr(out)
        );
    }
}

#[test]
fn the_password_never_appears_in_output() {
    let db = password_db();
    let good = role_url(PASSWORD, &db.name);
    let wrong = role_url(WRONG_PASSWORD, &db.name);

    // The role really needs its password here, or the test below proves nothing.
    let err = postgres::Client::connect(&wrong, NoTls).err().unwrap_or_else(|| {
        panic!("{ROLE} connected with a wrong password: password authentication is not set up (scripts/test-setup.sh)")
    });
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("28P01"));

    let mut outputs = Vec::new();
    let run = |url: &str, args: &[&str]| {
        runner_bin()
            .args(["--database-url", url, "--wait", "2s"])
            .args(args)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap()
    };
    outputs.push(("status before", run(&good, &["status", "--json"]), Some(0)));
    outputs.push((
        "migrate to the broken state",
        run(&good, &["migrate", "--target", "20240520120000"]),
        Some(0),
    ));
    let mut c = postgres::Client::connect(&good, NoTls).unwrap();
    seed(&mut c, 3, 50);
    add_orphans(&mut c, 2, 1);
    outputs.push(("refused migrate", run(&good, &["migrate"]), Some(3)));
    outputs.push(("check", run(&good, &["check", "--json"]), Some(3)));
    outputs.push(("verify", run(&good, &["verify", "--json"]), Some(4)));
    outputs.push(("wrong password", run(&wrong, &["migrate"]), Some(1)));
    outputs.push((
        "unknown host",
        run(
            &good.replace("127.0.0.1", "no-such-host.invalid"),
            &["status"],
        ),
        Some(1),
    ));
    let bad_port = good.replace(&format!(":{}/", server_port()), ":99999/");
    assert_ne!(bad_port, good);
    outputs.push(("bad port", run(&bad_port, &["status"]), Some(2)));
    outputs.push((
        "bad sslmode",
        run(&with_query(&good, "sslmode=sometimes"), &["status"]),
        Some(2),
    ));
    outputs.push((
        "migrate",
        run(&good, &["migrate", "--orphans", "archive"]),
        Some(0),
    ));
    // The same URL given through the environment.
    let env_run = runner_bin()
        .args(["--wait", "2s", "verify"])
        .env("DATABASE_URL", &wrong)
        .output()
        .unwrap();
    outputs.push(("wrong password from DATABASE_URL", env_run, Some(1)));

    for (label, out, code) in &outputs {
        assert_eq!(out.status.code(), *code, "{label}: {}", stderr(out));
        assert_secret_free(label, out);
    }
    let wrong_line = error_line(&outputs[5].1);
    assert!(wrong_line.contains("28P01"), "{wrong_line}");
    drop(c);
}
