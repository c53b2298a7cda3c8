//! What the runner prints besides its reports: errors as JSON under `--json`, `RUST_LOG` adding
//! to the default filter, and progress lines while a long step runs.

mod common;

use common::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", stdout(out)))
}

#[test]
fn with_json_an_error_is_one_json_document_on_stdout() {
    // Refused for orphans: kind, exit code, message and the findings, as data.
    let db = seeded_broken();
    add_orphans(&mut db.client(), 3, 2);
    let before = row_counts(&mut db.client());
    let out = db.run(&["migrate", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["error"]["kind"], "orphans", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 3);
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("refusing to add the foreign keys"));
    assert!(!doc["error"]["findings"].is_null(), "{doc}");
    assert!(
        error_line(&out).starts_with("error: refusing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(row_counts(&mut db.client()), before);
    // The negative: without --json nothing goes to stdout.
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "");

    // A server that is not there: kind connect, exit 1; and a bad URL: exit 2.
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nowhere");
    let out = runner_bin()
        .args(["--database-url", &url, "--wait", "1s", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["kind"], "connect");
    let out = run_bin("mysql://x@h/d", &["check", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["kind"], "invalid-url");
    assert_eq!(json(&out)["error"]["exit_code"], 2);

    // A command line the parser refuses: kind usage, exit 2, clap's text still on stderr.
    let out = runner_bin()
        .args(["migrate", "--json", "--jobs", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["kind"], "usage");
    assert!(stderr(&out).contains("--jobs"), "{}", stderr(&out));

    // A failing verify prints its report, and only its report: still one document.
    let out = db.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(json(&out)["assertions"].is_array(), "{}", stdout(&out));
}

/// A run's log with timestamps, numbers and the database's name taken out.
fn log_lines(db: &TestDb, rust_log: Option<&str>) -> Vec<String> {
    let mut cmd = runner_bin();
    cmd.args(["--database-url", &db.settings().database_url, "migrate"]);
    match rust_log {
        Some(v) => cmd.env("RUST_LOG", v),
        None => cmd.env_remove("RUST_LOG"),
    };
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut lines: Vec<String> = stderr(&out)
        .lines()
        .map(|l| {
            let l = l.split_once("] ").map_or(l, |(_, rest)| rest);
            let l = l.replace(&db.name, "DB");
            l.chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect()
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn rust_log_adds_to_the_default_filter() {
    let quiet = log_lines(&TestDb::new(), None);
    let info = log_lines(&TestDb::new(), Some("info"));
    assert_eq!(info, quiet, "RUST_LOG=info prints what the default prints");
    assert!(!info.iter().any(|l| l.contains("going to apply batch")));
    // The negative: refinery does log at info, and RUST_LOG can still ask for it.
    let refinery = log_lines(&TestDb::new(), Some("refinery_core=info"));
    assert!(
        refinery.iter().any(|l| l.contains("going to apply batch")),
        "{refinery:#?}"
    );
    assert!(refinery.len() > info.len());
    // RUST_LOG=debug adds the runner's step lines, still without refinery's.
    let debug = log_lines(&TestDb::new(), Some("debug"));
    assert!(
        debug
            .iter()
            .any(|l| l.starts_with("step ") && l.contains(": done in ")),
        "{debug:#?}"
    );
    assert!(!debug.iter().any(|l| l.contains("going to apply batch")));
}

#[test]
fn a_long_step_logs_its_progress() {
    let db = TestDb::broken();
    let mut c = db.client();
    seed(&mut c, 10, 1000);
    // One large month, so that its index build and validation take a while.
    c.batch_execute(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'big' || g, 't' || (1 + g % 10), 'c' || (1 + g % 10), 'user', repeat('x', 100),
                  timestamptz '2025-03-01 00:00+00' + (g % 1000) * interval '1 minute'
             FROM generate_series(1, 600000) g;
         ANALYZE messages;",
    )
    .unwrap();
    let out = db.run(&["migrate", "--progress-every", "100ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("public.messages_2025_03:") && l.contains(": running "))
        .collect();
    eprintln!("{progress:#?}");
    assert!(!progress.is_empty(), "no progress line:\n{err}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains("; building index: ") || l.contains("; index validation: ")),
        "{progress:#?}"
    );
    // The negative: with the default interval, steps this short log no progress.
    let db2 = seeded_broken();
    let out = db2.run(&["migrate"]);
    assert!(!stderr(&out).contains(": running "), "{}", stderr(&out));
}
