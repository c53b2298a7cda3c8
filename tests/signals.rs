//! Signals, as Kubernetes, `docker stop` and an operator's Ctrl-C send them, while a concurrent
//! index build waits: SIGTERM and SIGINT stop the runner within two seconds with its documented
//! exit code, nothing of the run keeps executing on the server and the lock is released; after
//! SIGKILL the server ends the dead run's statements by itself; and in each case a rerun started
//! at once succeeds and reaches the spec SQL's catalog with every row kept.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use postgres::Client;

/// A session holding a snapshot: every concurrent index build started after it waits for it to
/// end ("waiting for old snapshots").
fn snapshot_holder(db: &TestDb) -> Client {
    let mut c = db.client();
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM tenants;")
        .unwrap();
    c
}

/// Starts `migrate` and returns once one of its index builds waits on the server.
fn migrate_until_a_build_waits(db: &TestDb) -> Child {
    let mut child = runner_bin()
        .args(["--database-url", &db.url, "migrate", "--jobs", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("first run: {line}");
        }
    });
    let mut c = db.client();
    let waiting = eventually(Duration::from_secs(60), || {
        count(
            &mut c,
            "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database() AND a.application_name = 'meta-chat-migrate'
                AND p.phase LIKE 'waiting%'",
        ) > 0
    });
    assert!(waiting, "no index build of the runner started waiting");
    child
}

fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child, returning its exit code (None if killed by a signal) and how long it
/// took after the signal.
fn wait_exit(mut child: Child, since: Instant) -> (Option<i32>, Duration) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the runner did not exit"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn rerun_converges(db: &TestDb, plain: &[String], before: &[(String, i64)]) {
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "rerun: {}", stderr(&out));
    assert_eq!(tenant_catalog(&mut db.client()), plain);
    assert_eq!(row_counts(&mut db.client()), before);
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

fn stopped_cleanly_on(name: &str, code: i32) {
    let plain = plain_catalog();
    let db = seeded_broken();
    let before = row_counts(&mut db.client());
    let mut holder = snapshot_holder(&db);
    let child = migrate_until_a_build_waits(&db);
    let sent = Instant::now();
    signal(&child, name);
    let (exit, took) = wait_exit(child, sent);
    assert_eq!(exit, Some(code), "exit code after {name}");
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after {name}"
    );
    // Nothing of the run executes on the server any more, and no lock is left.
    assert!(
        eventually(Duration::from_secs(1), || runner_backends(&db).is_empty()),
        "backends of the stopped run: {:?}",
        runner_backends(&db)
    );
    assert_eq!(advisory_locks(&db), 0);
    holder.batch_execute("COMMIT").unwrap();
    rerun_converges(&db, &plain, &before);
}

#[test]
fn sigterm_cancels_the_runs_statements_and_exits_143_within_two_seconds() {
    stopped_cleanly_on("TERM", 143);
}

#[test]
fn sigint_cancels_the_runs_statements_and_exits_130_within_two_seconds() {
    stopped_cleanly_on("INT", 130);
}

#[test]
fn after_sigkill_the_server_ends_the_dead_runs_statements() {
    let db = seeded_broken();
    let _holder = snapshot_holder(&db);
    let child = migrate_until_a_build_waits(&db);
    let sent = Instant::now();
    signal(&child, "KILL");
    let (exit, _) = wait_exit(child, sent);
    assert_eq!(exit, None);
    // The build would wait for the snapshot holder forever; the server notices its client is
    // gone (client_connection_check_interval) and ends it.
    assert!(
        eventually(Duration::from_secs(8), || runner_backends(&db).is_empty()),
        "backends of the killed run after {:?}: {:?}",
        sent.elapsed(),
        runner_backends(&db)
    );
    assert_eq!(advisory_locks(&db), 0);
}

#[test]
fn a_rerun_right_after_sigkill_succeeds() {
    let plain = plain_catalog();
    let mut raced = 0;
    for round in 0..3 {
        let db = seeded_broken();
        let before = row_counts(&mut db.client());
        let mut holder = snapshot_holder(&db);
        let child = migrate_until_a_build_waits(&db);
        signal(&child, "KILL");
        let _ = wait_exit(child, Instant::now());
        // The killed run's build still waits on the server as the rerun starts.
        let rerun = {
            let url = db.url.clone();
            thread::spawn(move || run_bin(&url, &["migrate"]))
        };
        thread::sleep(Duration::from_millis(1500));
        holder.batch_execute("COMMIT").unwrap();
        let out = rerun.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: rerun: {}",
            stderr(&out)
        );
        assert_eq!(tenant_catalog(&mut db.client()), plain, "round {round}");
        assert_eq!(row_counts(&mut db.client()), before, "round {round}");
        if stderr(&out).contains("an earlier run's work is still executing on the server") {
            raced += 1;
        }
    }
    // The rerun met the killed run's build still executing at least once (else this test
    // would not show that it handles it).
    assert!(raced > 0, "no rerun met the killed run's leftovers");
}
