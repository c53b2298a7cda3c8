//! Application boot: a `migrate` with nothing to do costs one connection and one query and takes
//! no lock; a runner waiting for another's lock holds one connection; every connection of a run
//! goes to the server the first one reached; nothing hangs on a server that does not answer, and
//! what waiting cannot fix is not waited for. Each test also shows the negative.

mod common;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::months::partition_names;
use common::*;

fn at_latest() -> TestDb {
    let db = TestDb::new();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    db
}

/// With every version applied, every declared object and the months ahead in place, `migrate`
/// answers from one query: it does not wait for a migration lock another session holds. With
/// anything to do (here: a declared index dropped), it takes the full path, which waits.
#[test]
fn nothing_to_do_is_answered_without_the_lock() {
    let db = at_latest();
    let holder = BusyHolder::take(&db);
    // With --lock-wait 2s, a run that waited for the held lock would fail: exit 0 proves it
    // did not.
    let out = db.run(&["migrate", "--json", "--lock-wait", "2s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["up_to_date"], true, "{report}");
    assert!(stderr(&out).contains("nothing to do:"), "{}", stderr(&out));
    // The negative: drift is work, and work waits for the lock.
    db.client()
        .batch_execute("DROP INDEX messages_tenant_id_idx")
        .unwrap();
    let out = db.run(&["migrate", "--lock-wait", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("the migration lock of this database is held by"),
        "{}",
        stderr(&out)
    );
    drop(holder);
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    assert_eq!(db.run(&["check"]).status.code(), Some(0));
}

/// What the full path would do is never skipped: a month missing ahead, a helper CHECK left on
/// DEFAULT, a version not applied each make `migrate` do its work.
#[test]
fn the_boot_check_sends_every_kind_of_work_to_the_full_path() {
    let db = at_latest();
    let mut c = db.client();
    let current = current_month(&mut c);
    let ahead = month_after(&current, 3);
    c.batch_execute(&format!(
        "ALTER TABLE messages DETACH PARTITION messages_{ahead}; DROP TABLE messages_{ahead};"
    ))
    .unwrap();
    let out = db.run(&["migrate", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["up_to_date"], false);
    assert!(partition_names(&mut c, "messages").contains(&format!("messages_{ahead}")));
    c.batch_execute("ALTER TABLE messages_default ADD CONSTRAINT mcm_excludes_2031_01 CHECK (NOT (\"createdAt\" >= '2031-01-01 00:00:00+00' AND \"createdAt\" < '2031-02-01 00:00:00+00')) NOT VALID")
        .unwrap();
    let out = db.run(&["migrate", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["up_to_date"], false);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'mcm%'"
        ),
        0
    );
    let older = TestDb::at(embedded_version(3));
    let out = older.run(&["migrate", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["up_to_date"], false);
    assert_eq!(report["applied"].as_array().unwrap().len(), 1);
}

fn embedded_version(i: usize) -> i64 {
    meta_chat_migrations::embedded::migrations()[i].version()
}

fn current_month(c: &mut postgres::Client) -> String {
    c.query_one("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')", &[])
        .unwrap()
        .get(0)
}

fn month_after(month: &str, n: i32) -> String {
    let (y, m) = month.split_once('_').unwrap();
    let total = y.parse::<i32>().unwrap() * 12 + m.parse::<i32>().unwrap() - 1 + n;
    format!("{}_{:02}", total / 12, total % 12 + 1)
}

/// Runners that wait for another's lock hold one server connection each.
#[test]
fn waiting_runners_hold_one_connection_each() {
    let db = at_latest();
    db.client()
        .batch_execute("DROP INDEX api_logs_tenant_id_idx")
        .unwrap();
    let holder = BusyHolder::take(&db);
    let runners: Vec<std::process::Child> = (0..3)
        .map(|_| {
            runner_bin()
                .args(["--database-url", &db.url, "migrate"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let others = || {
        runner_backends(&db)
            .into_iter()
            .filter(|(pid, _, _)| *pid != holder.pid)
            .count()
    };
    assert!(eventually(Duration::from_secs(20), || others() == 3));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(others(), 3, "{:?}", runner_backends(&db));
    drop(holder);
    for mut r in runners {
        assert_eq!(r.wait().unwrap().code(), Some(0));
    }
    assert_eq!(db.run(&["check"]).status.code(), Some(0));
}

/// A URL of two hosts: the run's first connection reaches the first; when that server stops
/// taking connections while the run waits for its lock, the run fails instead of doing its work
/// on the second server, which it never touches.
#[test]
fn every_connection_of_a_run_goes_to_the_server_the_first_reached() {
    let other = Cluster::start(&[], "", None);
    let db = TestDb::at(embedded_version(1));
    seed(&mut db.client(), 10, 2000);
    other
        .admin()
        .batch_execute(&format!("CREATE DATABASE {}", db.name))
        .unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        server_port(),
        other.port,
        db.name
    );
    let holder = BusyHolder::take(&db);
    let child = runner_bin()
        .args(["--database-url", &url, "migrate"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || runner_backends(&db)
        .iter()
        .any(|(pid, _, _)| *pid != holder.pid)));
    let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            db.name
        ))
        .unwrap();
    drop(holder);
    let out = child.wait_with_output().unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "connected to host=127.0.0.1 port={}",
            server_port()
        )),
        "{}",
        stderr(&out)
    );
    let line = error_line(&out);
    assert!(
        line.contains(&format!("port={}", server_port()))
            && line.contains("not currently accepting connections"),
        "{line}"
    );
    let mut b = postgres::Client::connect(
        &format!("postgres://postgres@127.0.0.1:{}/{}", other.port, db.name),
        postgres::NoTls,
    )
    .unwrap();
    assert_eq!(
        count(
            &mut b,
            "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'"
        ),
        0
    );
}

/// No host of a list takes the connection: the error pairs each host with its own cause.
#[test]
fn an_error_over_several_hosts_names_each_hosts_cause() {
    let (a, b) = (free_port(), free_port());
    let url = format!("postgres://postgres@127.0.0.1:{a},127.0.0.1:{b}/postgres");
    let out = bin_with(&url, &["--wait", "0", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    for port in [a, b] {
        assert!(
            line.contains(&format!("host=127.0.0.1 port={port} database=postgres: ")),
            "{line}"
        );
    }
}

/// The binary against `url` with `args` (no `--wait` of the harness's).
fn bin_with(url: &str, args: &[&str]) -> std::process::Output {
    runner_bin()
        .args(["--database-url", url])
        .args(args)
        .output()
        .unwrap()
}

/// A listener that takes connections and never answers (a stopped postmaster, a wrong port).
fn silent_listener() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(50).flatten() {
            held.push(s);
        }
    });
    (port, handle)
}

/// The whole connection is bounded: by `connect_timeout` per attempt and by `--wait` overall,
/// where the driver alone bounds only the TCP connect and would hang.
#[test]
fn a_server_that_never_answers_is_given_up_within_the_bounds() {
    let (port, _l) = silent_listener();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    let started = Instant::now();
    let out = bin_with(&url, &["--wait", "0", "status"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        error_line(&out).contains("did not complete its start-up within 2s"),
        "{}",
        stderr(&out)
    );
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let started = Instant::now();
    let out = bin_with(&url, &["--wait", "3s", "status"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// `--wait D` waits D for a server that refuses connections, not D minus a retry.
#[test]
fn wait_waits_what_it_says() {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let started = Instant::now();
    let out = bin_with(&url, &["--wait", "3s", "status"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(4500),
        "{took:?}"
    );
}

/// The library: the call returns within its bound.
#[test]
fn the_library_returns_within_the_bound() {
    let (port, _l) = silent_listener();
    let mut settings = meta_chat_migrations::Settings::new(format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2"
    ));
    settings.connect_wait = Duration::from_secs(3);
    let started = Instant::now();
    let err = meta_chat_migrations::migrate(&settings).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), "connect", "{err}");
}

/// What waiting cannot fix is not waited for: a start-up option the server rejects, and
/// `target_session_attrs=read-write` on a standby.
#[test]
fn what_waiting_cannot_fix_fails_at_once() {
    let db = TestDb::new();
    for (options, code) in [
        ("-c%20no_such_setting%3D1", "42704"),
        ("-c%20statement_timeout%3Dsoon", "22023"),
    ] {
        let started = Instant::now();
        let out = bin_with(
            &format!("{}?options={options}", db.url),
            &["--wait", "30s", "status"],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{options}: waited"
        );
        assert!(error_line(&out).contains(code), "{}", stderr(&out));
    }
    let standby = Standby::start();
    let started = Instant::now();
    let out = bin_with(
        &format!("{}?target_session_attrs=read-write", standby.url),
        &["--wait", "30s", "status"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "waited");
    assert!(
        error_line(&out).contains("does not allow writes"),
        "{}",
        stderr(&out)
    );
}

/// `verify` on a standby says it needs the primary, before any assertion.
#[test]
fn verify_on_a_standby_says_it_needs_the_primary() {
    let standby = Standby::start();
    let out = run_bin(&standby.url, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("verify writes (in a transaction it rolls back), so it needs the primary: the server is a standby"),
        "{}",
        stderr(&out)
    );
}

/// A superuser run leaves the slots of `superuser_reserved_connections` to the DBA: it opens
/// fewer workers instead; the negative: a superuser can take those slots.
#[test]
fn a_superuser_run_leaves_the_reserved_slots_free() {
    let cluster = Cluster::start(
        &[],
        "max_connections = 6\nsuperuser_reserved_connections = 3\n",
        None,
    );
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let out = run_bin(
        &url,
        &["migrate", "--target", &embedded_version(1).to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    seed(
        &mut postgres::Client::connect(&url, postgres::NoTls).unwrap(),
        10,
        2000,
    );
    let out = run_bin(&url, &["migrate", "--jobs", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("opened 1 of 4 worker connection(s)")
            && stderr(&out).contains("superuser_reserved_connections"),
        "{}",
        stderr(&out)
    );
    let held: Vec<postgres::Client> = (0..5)
        .map(|_| postgres::Client::connect(&url, postgres::NoTls).unwrap())
        .collect();
    assert_eq!(held.len(), 5, "a superuser may take the reserved slots");
}

/// A closed stdout or stderr loses the output, not the exit code: never a panic (101).
#[test]
fn closed_output_is_never_a_panic() {
    let db = at_latest();
    let bin = env!("CARGO_BIN_EXE_meta-chat-migrate");
    for (args, code) in [
        (vec!["--database-url", db.url.as_str(), "status"], 0),
        (
            vec![
                "--database-url",
                "postgres://u@127.0.0.1:1/x",
                "--wait",
                "0",
                "status",
                "--json",
            ],
            1,
        ),
    ] {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" >&- 2>&-")
            .arg(bin)
            .args(&args)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

/// The README's boot ([`examples/boot.rs`]), built once for the tests.
fn boot_example() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::process::Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--example", "boot"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("examples/boot")
        })
        .clone()
}

/// The child of `parent` (the PID 1 of the namespace `unshare` made).
fn child_of(parent: u32) -> Option<i32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &parent.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// As PID 1 of its namespace (a container), the boot example stops on SIGTERM during its
/// migration and exits 143 at once. The negative: PID 1 without a handler ignores SIGTERM.
#[test]
fn the_boot_example_as_pid_1_stops_at_once_on_sigterm() {
    let db = TestDb::at(embedded_version(1));
    let holder = BusyHolder::take(&db);
    let mut unshare = std::process::Command::new("unshare")
        .args(["--fork", "--pid", "--kill-child"])
        .arg(boot_example())
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || runner_backends(&db)
        .iter()
        .any(|(pid, _, _)| *pid != holder.pid)));
    let pid1 = child_of(unshare.id()).expect("the namespace's PID 1");
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid1.to_string()])
        .status()
        .unwrap();
    let status = unshare.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(143));
    drop(holder);
    // The negative: a PID 1 that has no handler.
    let mut bare = std::process::Command::new("unshare")
        .args(["--fork", "--pid", "--kill-child", "sleep", "30"])
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || child_of(bare.id()).is_some()));
    let pid1 = child_of(bare.id()).unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid1.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        bare.try_wait().unwrap().is_none(),
        "PID 1 without a handler ignored SIGTERM"
    );
    let _ = bare.kill();
    let _ = bare.wait();
}
