//! Faults: SIGKILL at any point of a migrate, lock queues behind another session's
//! transaction, and running as a role that is not a superuser.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use meta_chat_migrations::embedded;

/// A database at the baseline (unpartitioned) with data: a migrate from here goes through every
/// phase (the partitioning copy, the orphan pre-flight, the online restore of both tables, the
/// versioned restores).
fn seeded_baseline() -> TestDb {
    let db = TestDb::at(embedded::BASELINE);
    seed(&mut db.client(), 10, 5000);
    db
}

fn bin() -> Command {
    runner_bin()
}

/// Where a kill lands: right after the runner logs a line containing any of the markers (step
/// ids, which the runner logs at debug level as `step <id>: done`), or after a fixed delay.
#[derive(Debug)]
enum KillAt {
    Line(&'static [&'static str]),
    After(Duration),
}

/// One point per phase of a migrate from the baseline with data, in order, found by step id
/// (PostgreSQL 18 puts a foreign key on the parent NOT VALID first and validates it last,
/// where older servers adopt the partitions' constraints).
const PHASE_MARKERS: [&[&str]; 15] = [
    &["migrating schema public of host="],
    &["applying migration 20240520120000"],
    &["pre-flight orphaned-messages: 0"],
    &["step messages_tenant_id_idx:public.messages:create-on-only: done"],
    &["step messages_tenant_id_fkey:public.messages_2024_03:validate: done"],
    &["step messages_tenant_id_idx:public.messages_default:build: done"],
    &["step api_logs_tenant_id_fkey:public.api_logs_2025_06:validate: done"],
    &[
        "step messages_tenant_id_fkey:public.messages:adopt: done",
        "step messages_tenant_id_fkey:public.messages:validate-parent: done",
    ],
    &["step api_logs_tenant_id_idx:public.api_logs_2026_01:attach: done"],
    &["step conversations_id_tenant_id_key:public.conversations:build: done"],
    &["step messages_conversation_tenant_fkey:public.messages_2025_01:validate: done"],
    &[
        "step messages_conversation_tenant_fkey:public.messages:adopt: done",
        "step messages_conversation_tenant_fkey:public.messages:validate-parent: done",
    ],
    &["applying migration 20251121000002"],
    &["applying migration 20251121000003"],
    &["applying migration 20251121000004"],
];

/// Starts a migrate, SIGKILLs it at `at`, and returns the last line it logged. Fails if a
/// marker never showed up (the phases changed and the test would no longer cover them).
fn migrate_and_kill(db: &TestDb, at: &KillAt) -> String {
    let mut child = bin()
        .args(["--database-url", &db.url, "migrate", "--jobs", "2"])
        .env(
            "RUST_LOG",
            "info,meta_chat_migrations::engine=debug,refinery_core=warn",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut last = String::from("(nothing logged yet)");
    match at {
        KillAt::Line(markers) => {
            let mut seen = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !seen && markers.iter().any(|m| line.contains(m)) {
                    let _ = child.kill(); // SIGKILL
                    seen = true;
                }
                last = line;
            }
            assert!(
                seen,
                "the runner never logged {markers:?}; last line: {last}"
            );
        }
        KillAt::After(delay) => {
            let reader =
                thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).last());
            thread::sleep(*delay);
            let _ = child.kill();
            if let Some(l) = reader.join().unwrap() {
                last = l;
            }
        }
    }
    let _ = child.wait();
    last
}

#[test]
fn sigkill_at_any_point_and_the_next_run_converges() {
    let plain = plain_catalog();
    let mut points: Vec<KillAt> = PHASE_MARKERS.iter().map(|m| KillAt::Line(m)).collect();
    points.extend([40, 120, 250, 400].map(|ms| KillAt::After(Duration::from_millis(ms))));
    let mut landed = Vec::new();
    for at in &points {
        let db = seeded_baseline();
        let before = row_counts(&mut db.client());
        let last = migrate_and_kill(&db, at);
        landed.push(format!("{at:?}: {last}"));

        let out = db.run(&["migrate"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "rerun after a kill at {at:?}: {}",
            stderr(&out)
        );
        assert_eq!(
            tenant_catalog(&mut db.client()),
            plain,
            "kill at {at:?} after: {last}"
        );
        assert_eq!(
            row_counts(&mut db.client()),
            before,
            "kill at {at:?} after: {last}"
        );
        let verify = db.run(&["verify"]);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "kill at {at:?}: {}",
            stdout(&verify)
        );
    }
    // Where the kills landed, for the record (shown with --nocapture).
    eprintln!("killed after:\n{}", landed.join("\n"));
}

struct Writer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Duration>,
}

/// Inserts continuously into the partition the blocker holds and into another one, returning
/// the longest single insert.
fn start_writer(url: &str) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let (url, s) = (url.to_string(), stop.clone());
    let handle = thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute("SET statement_timeout = '20s'").unwrap();
        let mut longest = Duration::ZERO;
        let mut i = 0;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let month = if i % 2 == 0 {
                "2025-03-20"
            } else {
                "2024-06-20"
            };
            let started = Instant::now();
            c.execute(
                "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ($1, 't1', 'c1', 'user', 'w', $2::text::timestamptz)",
                &[&format!("writer-{i}"), &month],
            )
            .unwrap();
            longest = longest.max(started.elapsed());
            thread::sleep(Duration::from_millis(2));
        }
        longest
    });
    Writer { stop, handle }
}

/// A session with an open transaction that wrote to messages_2025_03: it holds ROW EXCLUSIVE,
/// which conflicts with the runner's ADD CONSTRAINT on that partition and on the parent.
fn blocker(db: &TestDb) -> (postgres::Client, i32) {
    let mut c = db.client();
    // The pid before BEGIN: a query inside the transaction would keep a snapshot open.
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    c.batch_execute(
        "BEGIN; INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('blocker', 't1', 'c1', 'user', 'b', '2025-03-10');",
    )
    .unwrap();
    (c, pid)
}

const LOCK_TIMEOUT_MS: u64 = 300;
/// Scheduling slack on a busy two-core machine.
const MARGIN_MS: u64 = 700;

/// Runs `migrate --jobs 1 --lock-timeout LOCK_TIMEOUT --lock-retries RETRIES` while a blocker
/// holds its lock (until `release_after`, or to the end) and a writer inserts. Returns the
/// runner's output, the longest single insert, and the blocker's pid.
fn migrate_behind_blocker(
    lock_timeout: &str,
    retries: u32,
    release_after: Option<Duration>,
) -> (TestDb, Output, Duration, i32) {
    let db = seeded_broken();
    let (mut blocking, pid) = blocker(&db);
    let writer = start_writer(&db.url);
    let runner = {
        let url = db.url.clone();
        let (retries, lock_timeout) = (retries.to_string(), lock_timeout.to_string());
        thread::spawn(move || {
            run_bin(
                &url,
                &[
                    "migrate",
                    "--jobs",
                    "1",
                    "--lock-timeout",
                    &lock_timeout,
                    "--lock-retries",
                    &retries,
                ],
            )
        })
    };
    if let Some(after) = release_after {
        thread::sleep(after);
        blocking.batch_execute("COMMIT").unwrap();
    }
    let out = runner.join().unwrap();
    writer.stop.store(true, Ordering::Relaxed);
    let longest = writer.handle.join().unwrap();
    if release_after.is_none() {
        blocking.batch_execute("ROLLBACK").unwrap();
    }
    (db, out, longest, pid)
}

fn assert_bounded(longest: Duration) {
    assert!(
        longest < Duration::from_millis(LOCK_TIMEOUT_MS + MARGIN_MS),
        "an insert waited {longest:?} behind the runner's queued DDL"
    );
}

#[test]
fn behind_a_lock_inserts_wait_at_most_lock_timeout_and_the_runner_completes_when_it_ends() {
    let (db, out, longest, _) =
        migrate_behind_blocker("300ms", 20, Some(Duration::from_millis(2500)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_bounded(longest);
    assert!(
        stderr(&out).contains("no lock within 300ms"),
        "the runner never had to retry: {}",
        stderr(&out)
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn behind_a_lock_that_never_ends_the_runner_gives_up_naming_the_blocker() {
    let (db, out, longest, pid) = migrate_behind_blocker("300ms", 3, None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_bounded(longest);
    let line = error_line(&out);
    assert!(
        line.contains("gave up after 4 attempts (no lock within 300ms)"),
        "{line}"
    );
    assert!(line.contains(&format!("blocking pids: {pid}")), "{line}");
    // It stopped cleanly: a later run finishes the job.
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

/// The negative: without a lock timeout, the runner's queued ADD CONSTRAINT holds the same
/// inserts for as long as the blocker's transaction lasts.
#[test]
fn without_a_lock_timeout_inserts_queue_behind_the_runner() {
    let (_db, out, longest, _) = migrate_behind_blocker("0", 0, Some(Duration::from_millis(2500)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        longest > Duration::from_millis(1500),
        "the longest insert took only {longest:?}"
    );
}

#[test]
fn migrations_run_as_a_schema_owner_that_is_not_a_superuser() {
    let db = TestDb::owned_by_new_role();
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let superuser: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!superuser);
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let owner = db.owner.clone().unwrap();
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM pg_tables WHERE tablename IN ('tenants', 'messages', 'api_logs', 'refinery_schema_history') AND tableowner = '{owner}'")),
        4
    );
}
