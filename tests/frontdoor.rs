//! What the README's front door promises of the command line: `--version` names the commit, the
//! default output is one line per version and per operation, `--log-format json`, and the gates
//! (`status --exit-code`, a `--schema` that does not exist, `verify` on a database not migrated,
//! `--dry-run` from every version, `migrate --json` on failure).

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use meta_chat_migrations::embedded;

#[test]
fn version_names_the_commit_and_whether_the_tree_was_dirty() {
    let out = runner_bin().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let pkg = env!("CARGO_PKG_VERSION");
    match head {
        Some(commit) => {
            assert!(
                text.starts_with(&format!("meta-chat-migrate {pkg} (commit {commit}")),
                "{text}"
            );
            // `, dirty` exactly when what the binary is built from differs from the commit.
            let changed = Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no", "--"])
                .args(["src", "migrations", "Cargo.toml", "Cargo.lock", "build.rs"])
                .output()
                .unwrap();
            assert_eq!(
                text.contains(", dirty)"),
                !changed.stdout.is_empty(),
                "{text}"
            );
        }
        None => assert!(text.contains("(commit "), "{text}"),
    }
}

/// A fresh `migrate` at the default level: one line per version applied, one per online
/// operation (with its partition count and time), one per table's window; the per-partition
/// lines only at debug.
#[test]
fn the_default_output_is_one_line_per_version_and_per_operation() {
    let db = TestDb::new();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let versions = embedded::migrations().len();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("applying migration"))
            .count(),
        versions
    );
    let ops: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(": in place ("))
        .collect();
    assert_eq!(ops.len(), 6, "{err}");
    for l in &ops {
        assert!(
            l.contains(" partition(s), ") && l.contains(" done by this run") && l.ends_with('s'),
            "{l}"
        );
    }
    assert!(
        !err.contains(" of 75), ~"),
        "a per-partition line at info:\n{err}"
    );
    assert!(lines.len() <= versions + ops.len() + 10, "{err}");
    // The negative: at debug, one line per partition.
    let db = TestDb::new();
    let out = runner_bin()
        .args(["--database-url", &db.url, "migrate"])
        .env("RUST_LOG", "meta_chat_migrations=debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(" of 75), ~"), "{}", stderr(&out));
}

#[test]
fn log_format_json_writes_one_object_per_line_errors_included() {
    let db = TestDb::new();
    for (args, code) in [
        (vec!["--log-format", "json", "migrate"], 0),
        (
            vec!["--log-format", "json", "--schema", "nope", "status"],
            1,
        ),
    ] {
        let out = db.run(&args);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.is_empty());
        for line in err.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for key in ["time", "level", "message", "fields"] {
                assert!(v.get(key).is_some(), "{key} missing: {line}");
            }
        }
        if code == 1 {
            let last: serde_json::Value =
                serde_json::from_str(err.lines().last().unwrap()).unwrap();
            assert_eq!(last["level"], "ERROR");
            assert!(last["message"]
                .as_str()
                .unwrap()
                .contains("schema nope: it does not exist"));
        }
    }
    // From the environment too, and the final error even when RUST_LOG silences every log line.
    let out = runner_bin()
        .args(["--database-url", &db.url, "--schema", "nope", "status"])
        .env("MCM_LOG_FORMAT", "json")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    // The negative: text lines are not JSON.
    let out = db.run(&["status"]);
    assert!(stderr(&out)
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()));
}

/// `status --exit-code` exits 7 when a version is pending, divergent or unknown: a deploy gate.
#[test]
fn status_exit_code_gates_a_deploy() {
    let db = TestDb::new();
    let status = |extra: &[&str]| {
        let mut args = vec!["status"];
        args.extend_from_slice(extra);
        db.run(&args).status.code()
    };
    assert_eq!(status(&["--exit-code"]), Some(7), "every version pending");
    assert_eq!(status(&[]), Some(0), "without the flag, only the report");
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    assert_eq!(status(&["--exit-code"]), Some(0), "all applied");
    db.client()
        .batch_execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (29990101000000, 'from_a_newer_build', '2029-01-01', '1')",
        )
        .unwrap();
    assert_eq!(status(&["--exit-code"]), Some(7), "an unknown version");
    db.client()
        .batch_execute(
            "DELETE FROM refinery_schema_history WHERE version = 29990101000000;
             UPDATE refinery_schema_history SET checksum = '1' WHERE version = 20240101000000",
        )
        .unwrap();
    assert_eq!(status(&["--exit-code"]), Some(7), "a divergent version");
}

#[test]
fn a_schema_that_does_not_exist_is_an_error_in_every_command() {
    let db = TestDb::new();
    for command in [
        &["status"][..],
        &["check"],
        &["verify"],
        &["migrate"],
        &["migrate", "--dry-run"],
        &["partitions"],
        &["partitions", "--dry-run"],
    ] {
        let mut args = vec!["--schema", "nope"];
        args.extend_from_slice(command);
        let out = db.run(&args);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {}", stderr(&out));
        assert!(
            error_line(&out)
                .contains("schema nope: it does not exist: create it, or pass --schema"),
            "{command:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        count(
            &mut db.client(),
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ),
        0,
        "something was created"
    );
}

#[test]
fn verify_on_a_database_not_migrated_says_so_in_one_line() {
    let db = TestDb::new();
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("schema public has no tenants, conversations, messages, api_logs: the database is not migrated (run migrate first)"),
        "{line}"
    );
    assert!(!line.contains("42P01"), "{line}");
}

/// From each version, `migrate --dry-run` plans (exit 0), and `migrate` then does it.
#[test]
fn dry_run_works_from_every_version_migrate_works_from() {
    let versions: Vec<i64> = embedded::migrations().iter().map(|m| m.version()).collect();
    for v in &versions[..versions.len() - 1] {
        let db = TestDb::at(*v);
        let out = db.run(&["migrate", "--dry-run", "--json"]);
        assert_eq!(out.status.code(), Some(0), "at {v}: {}", stderr(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["current"], *v);
        let out = db.run(&["migrate"]);
        assert_eq!(out.status.code(), Some(0), "at {v}: {}", stderr(&out));
    }
}

/// A `migrate --json` that fails partway reports what it applied and did before the error, and
/// the server's SQLSTATE (55P03 for a lock it could not have).
#[test]
fn a_failed_migrate_json_says_what_was_done_and_the_sqlstate() {
    let db = TestDb::at(20240101000000);
    seed(&mut db.client(), 3, 30);
    // Once the partitioning version is in, a transaction writes tenants and stays open: the
    // online keys' SHARE ROW EXCLUSIVE on tenants is not had.
    let holder = {
        let url = db.url.clone();
        thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let started = Instant::now();
            while count(
                &mut c,
                "SELECT count(*) FROM refinery_schema_history WHERE version = 20240520120000",
            ) == 0
            {
                assert!(started.elapsed() < Duration::from_secs(60));
                thread::sleep(Duration::from_millis(5));
            }
            c.batch_execute("BEGIN; LOCK TABLE tenants IN ROW EXCLUSIVE MODE")
                .unwrap();
            thread::sleep(Duration::from_secs(8));
            c.batch_execute("ROLLBACK").unwrap();
        })
    };
    let out = db.run(&[
        "migrate",
        "--json",
        "--lock-timeout",
        "100ms",
        "--lock-retries",
        "1",
        "--jobs",
        "1",
    ]);
    holder.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["sqlstate"], "55P03", "{doc}");
    assert_eq!(doc["error"]["kind"], "lock-timeout", "{doc}");
    let applied: Vec<i64> = doc["done"]["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(applied, [20240520120000], "{doc}");
    assert_eq!(doc["done"]["from"], 20240101000000i64);
    assert_eq!(doc["done"]["to"], 20240520120000i64);
    // The negative: an error before anything was done has nothing in `done`.
    let out = db.run(&["--schema", "nope", "migrate", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["done"].is_null(), "{doc}");
}

#[test]
fn a_url_file_of_two_lines_is_refused_and_a_byte_order_mark_ignored() {
    let db = TestDb::new();
    let dir = TempDir::new("urlfile");
    let run = |content: &str| {
        let path = dir.file("url", content, 0o600);
        runner_bin()
            .args(["--wait", "5s", "--database-url-file"])
            .arg(&path)
            .arg("status")
            .output()
            .unwrap()
    };
    let two = format!(
        "host=127.0.0.1 dbname=postgres\nhost=127.0.0.1 dbname={}\n",
        db.name
    );
    let out = run(&two);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("it holds 2 non-empty lines, and must hold one"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(&db.name), "the content was shown");
    let out = run(&format!("\u{feff}{}\n\n", db.url));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("pending"), "{}", stdout(&out));
}

/// A read the run cannot do because an application transaction holds a lock on the table (here
/// the pre-flight's count behind an ACCESS EXCLUSIVE on tenants) fails naming SQLSTATE 55P03 and
/// saying what to do.
#[test]
fn a_read_behind_an_applications_lock_says_what_to_do() {
    let db = TestDb::at(20240520120000);
    let mut holder = db.client();
    holder
        .batch_execute("BEGIN; LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let out = db.run(&["migrate", "--dry-run", "--lock-timeout", "100ms"]);
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("55P03")
            && line.contains("another session holds a lock this statement needs"),
        "{line}"
    );
    // The negative: once the lock is gone, the same dry run plans.
    assert_eq!(db.run(&["migrate", "--dry-run"]).status.code(), Some(0));
}
