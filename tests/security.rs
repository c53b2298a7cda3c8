//! TLS (`sslmode`) and secrets: the runner's own backend is encrypted when asked, and the
//! password never appears in anything the runner prints, whether it succeeds or fails, and
//! whichever source gave it (URL, `--database-url-file`, `DATABASE_URL_FILE`, `PGPASSWORD`,
//! `PGPASSWORD_FILE`, `~/.pgpass`, `PGPASSFILE`, a Prisma URL).
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
    let (mut holder, _) = hold_migration_lock(db);
    let runner = {
        let url = url.to_string();
        thread::spawn(move || run_bin(&url, &["migrate"]))
    };
    let started = Instant::now();
    let mut ssl = Vec::new();
    // A waiting runner holds one connection, the one that waits for the lock (a second would
    // show up here within the second this loop keeps looking).
    while started.elapsed() < Duration::from_secs(20)
        && (ssl.is_empty() || started.elapsed() < Duration::from_secs(1))
    {
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
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();
    (ssl, runner.join().unwrap())
}

#[test]
fn sslmode_require_encrypts_the_runners_backend() {
    server_ssl_cert();
    let db = TestDb::new();
    let (ssl, out) = ssl_of_waiting_runner(&db, &with_query(&db.url, "sslmode=require"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ssl, vec![true], "pg_stat_ssl of the runner's backends");
}

#[test]
fn sslmode_disable_does_not() {
    let db = TestDb::new();
    let (ssl, out) = ssl_of_waiting_runner(&db, &with_query(&db.url, "sslmode=disable"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ssl, vec![false]);
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
    assert_eq!(ssl, vec![true]);

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
    // The whole passwords, and the middle of each (no part of one is ever shown).
    for secret in [PASSWORD, WRONG_PASSWORD, "7f3a9c", "8e21bd"] {
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

/// Runs `status` (with debug logs) with `args` before it and `env` on top of the hermetic
/// environment.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    runner_bin()
        .args(["--wait", "2s"])
        .args(args)
        .arg("status")
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A run of the source test: label, flags, environment, expected exit code.
type Case<'a> = (&'a str, Vec<String>, Vec<(&'a str, String)>, i32);

#[test]
fn the_password_never_appears_whatever_source_gives_it() {
    let db = password_db();
    let dir = TempDir::new("secrets");
    let (good, wrong) = (
        role_url(PASSWORD, &db.name),
        role_url(WRONG_PASSWORD, &db.name),
    );
    let bare = with_user(&good, ROLE);
    assert!(!bare.contains(PASSWORD) && bare.contains(ROLE), "{bare}");
    let good_file = dir.file("good-url", &format!("{good}\n"), 0o600);
    let wrong_file = dir.file("wrong-url", &format!("{wrong}\n"), 0o600);
    let pw_file = dir.file("pw", &format!("{PASSWORD}\n"), 0o600);
    let wrong_pw_file = dir.file("wrong-pw", &format!("{WRONG_PASSWORD}\n"), 0o600);
    let port = server_port().to_string();
    let pgpass = |pw: &str| format!("# test\n127.0.0.1:{port}:*:{ROLE}:{pw}\n");
    let home_good = TempDir::new("home");
    home_good.file(".pgpass", &pgpass(PASSWORD), 0o600);
    let home_wrong = TempDir::new("home");
    home_wrong.file(".pgpass", &pgpass(WRONG_PASSWORD), 0o600);
    let home_open = TempDir::new("home");
    home_open.file(".pgpass", &pgpass(PASSWORD), 0o644);
    let passfile = dir.file("passfile", &pgpass(PASSWORD), 0o600);
    let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_string();
    let h = |d: &TempDir| d.0.to_str().unwrap().to_string();
    let unencoded = dir.file(
        "unencoded",
        &good.replace(PASSWORD, &format!("{PASSWORD}@x/y")),
        0o600,
    );
    let prisma = format!("{good}?schema=public&connection_limit=3&pool_timeout=5");
    let libpq: Vec<(&str, &str)> = vec![
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", &port),
        ("PGUSER", ROLE),
        ("PGDATABASE", &db.name),
    ];
    let with = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> { extra.to_vec() };
    let cases: Vec<Case> = vec![
        (
            "--database-url-file",
            vec!["--database-url-file".into(), s(&good_file)],
            with(&[]),
            0,
        ),
        (
            "--database-url-file, wrong",
            vec!["--database-url-file".into(), s(&wrong_file)],
            with(&[]),
            1,
        ),
        (
            "--database-url-file, unencoded",
            vec!["--database-url-file".into(), s(&unencoded)],
            with(&[]),
            2,
        ),
        (
            "DATABASE_URL_FILE",
            vec![],
            with(&[("DATABASE_URL_FILE", s(&good_file))]),
            0,
        ),
        (
            "DATABASE_URL_FILE, wrong",
            vec![],
            with(&[("DATABASE_URL_FILE", s(&wrong_file))]),
            1,
        ),
        (
            "both variables",
            vec![],
            with(&[
                ("DATABASE_URL_FILE", s(&good_file)),
                ("DATABASE_URL", good.clone()),
            ]),
            2,
        ),
        (
            "both flags",
            vec![
                "--database-url-file".into(),
                s(&good_file),
                "--database-url".into(),
                good.clone(),
            ],
            with(&[]),
            2,
        ),
        (
            "PGPASSWORD",
            vec!["--database-url".into(), bare.clone()],
            with(&[("PGPASSWORD", PASSWORD.into())]),
            0,
        ),
        (
            "PGPASSWORD, wrong",
            vec!["--database-url".into(), bare.clone()],
            with(&[("PGPASSWORD", WRONG_PASSWORD.into())]),
            1,
        ),
        (
            "PGPASSWORD_FILE",
            vec!["--database-url".into(), bare.clone()],
            with(&[("PGPASSWORD_FILE", s(&pw_file))]),
            0,
        ),
        (
            "PGPASSWORD_FILE, wrong",
            vec!["--database-url".into(), bare.clone()],
            with(&[("PGPASSWORD_FILE", s(&wrong_pw_file))]),
            1,
        ),
        (
            "~/.pgpass",
            vec!["--database-url".into(), bare.clone()],
            with(&[("HOME", h(&home_good))]),
            0,
        ),
        (
            "~/.pgpass, wrong",
            vec!["--database-url".into(), bare.clone()],
            with(&[("HOME", h(&home_wrong))]),
            1,
        ),
        (
            "~/.pgpass, world-readable",
            vec!["--database-url".into(), bare.clone()],
            with(&[("HOME", h(&home_open))]),
            1,
        ),
        (
            "PGPASSFILE",
            vec!["--database-url".into(), bare.clone()],
            with(&[("PGPASSFILE", s(&passfile))]),
            0,
        ),
        (
            "no password anywhere",
            vec!["--database-url".into(), bare.clone()],
            with(&[]),
            1,
        ),
        (
            "Prisma URL",
            vec!["--database-url".into(), prisma.clone()],
            with(&[]),
            0,
        ),
        (
            "Prisma URL, pgbouncer=true",
            vec!["--database-url".into(), format!("{prisma}&pgbouncer=true")],
            with(&[]),
            2,
        ),
        (
            "Prisma URL, bad option",
            vec!["--database-url".into(), format!("{prisma}&pool_size=1")],
            with(&[]),
            2,
        ),
        (
            "Prisma URL, wrong",
            vec!["--database-url".into(), format!("{wrong}?schema=public")],
            with(&[]),
            1,
        ),
    ];
    for (label, args, env, code) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_with(&args, &env);
        assert_eq!(out.status.code(), Some(*code), "{label}: {}", stderr(&out));
        assert_secret_free(label, &out);
    }
    // libpq's variables alone, with the password from PGPASSWORD, as psql would connect.
    let mut env = libpq.clone();
    env.push(("PGPASSWORD", PASSWORD));
    let out = run_with(&[], &env);
    assert_eq!(out.status.code(), Some(0), "PG*: {}", stderr(&out));
    assert_secret_free("PG*", &out);
    // What each refusal said (and that the world-readable file was ignored, with a warning).
    let out = run_with(&["--database-url", &bare], &[("HOME", &h(&home_open))]);
    assert!(
        stderr(&out).contains("has group or world access"),
        "{}",
        stderr(&out)
    );
    let wrong_line = error_line(&run_with(
        &["--database-url", &bare],
        &[("PGPASSWORD", WRONG_PASSWORD)],
    ));
    assert!(wrong_line.contains("28P01"), "{wrong_line}");
}
