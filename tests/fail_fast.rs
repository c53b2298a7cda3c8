//! `--wait` is for a server that is not up yet, not for a configuration that will never work:
//! a wrong or missing password, an unknown role or database, a certificate that does not match,
//! TLS required where the server offers none. Each exits 1 within seconds although `--wait` is a
//! minute; a refused connection (the server not up yet) is still waited for.
//!
//! The password cases need the role of `scripts/test-setup.sh` (scram-sha-256 on 127.0.0.1).

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use postgres::NoTls;

const ROLE: &str = "mcm_pw";

fn run_waiting(url: &str, wait: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = runner_bin()
        .args(["--database-url", url, "--wait", wait, "status"])
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn server_cert() -> String {
    let mut admin = postgres::Client::connect(&admin_url(), NoTls).unwrap();
    let cert: String = admin.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
    if cert.starts_with('/') {
        return cert;
    }
    let data: String = admin.query_one("SHOW data_directory", &[]).unwrap().get(0);
    format!("{data}/{cert}")
}

#[test]
fn configuration_errors_are_not_waited_for() {
    let db = TestDb::new();
    let mut admin = postgres::Client::connect(&admin_url(), NoTls).unwrap();
    admin
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {} TO {ROLE}", db.name))
        .unwrap_or_else(|e| panic!("the role {ROLE} is missing: run scripts/test-setup.sh ({e})"));
    let as_role = |password: &str| {
        let url = with_user(&db.url, ROLE);
        match password {
            "" => url,
            pw => url.replacen(&format!("{ROLE}@"), &format!("{ROLE}:{pw}@"), 1),
        }
    };
    let refusing_tls = Proxy::start(ProxyOptions {
        refuse_tls: true,
        ..ProxyOptions::default()
    });
    let cases = [
        ("wrong password", as_role("Wrong-never-printed"), "28P01"),
        ("no password", as_role(""), "password"),
        (
            "unknown database",
            with_dbname(&db.url, "mcm_no_such_db"),
            "3D000",
        ),
        (
            "unknown role",
            with_user(&db.url, "mcm_no_such_role"),
            "28000",
        ),
        (
            "certificate for another host",
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                db.url,
                server_cert()
            ),
            "certificate",
        ),
        (
            "TLS required, not offered",
            format!("{}?sslmode=require", refusing_tls.url(&db.url)),
            "does not support TLS",
        ),
    ];
    for (label, url, says) in &cases {
        let (out, took) = run_waiting(url, "60s");
        assert_eq!(out.status.code(), Some(1), "{label}: {}", stderr(&out));
        assert!(
            took < Duration::from_secs(15),
            "{label}: waited {took:?}:\n{}",
            stderr(&out)
        );
        assert!(error_line(&out).contains(says), "{label}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("waiting for"),
            "{label}: retried:\n{}",
            stderr(&out)
        );
    }
    // The same proxy lets a run through without TLS: it was the TLS requirement that failed.
    let (out, _) = run_waiting(
        &format!("{}?sslmode=prefer", refusing_tls.url(&db.url)),
        "60s",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_server_that_is_not_up_yet_is_waited_for() {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    // The last pause must still fit in the wait, so a run gives up a little before it ends.
    let (out, took) = run_waiting(&url, "4s");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(2),
        "gave up after {took:?} of --wait 4s:\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("waiting for"), "{}", stderr(&out));
}
