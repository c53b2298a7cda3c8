//! The partition window: a fresh database gets partitions from the current month through
//! `--premake` months ahead, and they carry every key and index of their parent; a second run
//! changes nothing; `--premake 12` extends it; two runners create each month once; a kill at
//! every step converges on the next run; rows already in DEFAULT move into their month (nothing
//! lost, nothing doubled) within a limit, and rows outside the window stay and are reported;
//! bounds fixed in another time zone are continued exactly; `check` exits 5 on a short window
//! or a DEFAULT with rows; attaching never takes ACCESS EXCLUSIVE on tenants or conversations.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::thread;

use common::months::*;
use common::*;
use postgres::Client;

#[test]
fn a_fresh_database_gets_the_window_and_its_new_months_enforce_the_keys() {
    let db = TestDb::new();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = db.client();
    let current = current_month(&mut c);
    for table in ["messages", "api_logs"] {
        let names: Vec<String> = partition_names(&mut c, table);
        for k in 0..=6 {
            let month = add_months(&current, k).replace('-', "_");
            assert!(
                names.contains(&format!("{table}_{month}")),
                "{table} lacks {month}: {names:?}"
            );
        }
    }
    // The new months carry every key and index of the parent, validated and adopted.
    let last = add_months(&current, 6).replace('-', "_");
    let newest = format!("messages_{last}");
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM pg_constraint WHERE conrelid = '{newest}'::regclass AND contype IN ('f', 'p') AND convalidated AND conparentid <> 0")),
        4,
        "primary key, tenant key, conversation key, tenant-consistency key"
    );
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid WHERE x.indrelid = '{newest}'::regclass AND x.indisvalid")),
        3
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'mcm_%'"
        ),
        0,
        "helper checks left"
    );
    c.batch_execute("INSERT INTO tenants (id, name) VALUES ('t', 'T'), ('u', 'U'); INSERT INTO conversations (id, \"tenantId\") VALUES ('c', 't');")
        .unwrap();
    let month_start = format!("{}-15", add_months(&current, 6));
    // A message of another tenant's conversation: only the tenant-consistency key refuses it. A
    // message of a missing tenant: both tenant keys refuse it, and the server names the one it
    // checks first (on a new partition, the first by name, as on one PostgreSQL creates).
    for (tenant, constraints) in [
        ("u", &["messages_conversation_tenant_fkey"][..]),
        (
            "nobody",
            &[
                "messages_conversation_tenant_fkey",
                "messages_tenant_id_fkey",
            ][..],
        ),
    ] {
        let err = c
            .execute(
                "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('m', $1, 'c', 'user', 'x', $2::text::timestamptz)",
                &[&tenant, &month_start],
            )
            .unwrap_err();
        let e = err.as_db_error().unwrap();
        assert_eq!(
            (e.code().code(), e.table()),
            ("23503", Some(newest.as_str()))
        );
        assert!(constraints.contains(&e.constraint().unwrap()), "{e:?}");
    }
    let err = c
        .execute(
            "INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\") VALUES ('l', 'nobody', 'GET', '/', 200, 1, $1::text::timestamptz)",
            &[&month_start],
        )
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().constraint(),
        Some("api_logs_tenant_id_fkey")
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
    let out = db.run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(&format!("6 month(s) ahead of {current}")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_second_run_changes_nothing_and_premake_12_extends_it() {
    let db = latest_without_window();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = db.client();
    let after = snapshot(&mut c);
    let names: Vec<String> = partition_names(&mut c, "messages");
    assert!(
        names.contains(&"messages_2027_05".to_string())
            && !names.contains(&"messages_2027_06".to_string()),
        "{names:?}"
    );
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same(
        &snapshot(&mut c),
        &after,
        "a second run changed the catalog",
    );
    let out = partitions(&db, &["--premake", "12"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let names: Vec<String> = partition_names(&mut c, "api_logs");
    assert!(
        names.contains(&"api_logs_2027_11".to_string())
            && !names.contains(&"api_logs_2027_12".to_string()),
        "{names:?}"
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn two_runners_at_once_create_each_month_once() {
    let db = latest_without_window();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let url = db.url.clone();
            thread::spawn(move || run_bin(&url, &["partitions", "--as-of", AS_OF]))
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let mut c = db.client();
    for table in ["messages", "api_logs"] {
        let parts = partitions_of(&mut c, table);
        let months: Vec<&String> = parts
            .iter()
            .map(|(n, _)| n)
            .filter(|n| n.contains("_2027_"))
            .collect();
        assert_eq!(months.len(), 5, "{table}: {parts:?}");
    }
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn rows_in_default_move_into_their_month_and_the_rest_is_reported() {
    let db = with_rows_in_default();
    let mut c = db.client();
    let before = rows(&mut c);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(rows(&mut c), before, "rows lost, doubled or changed");
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_02"), 608);
    assert_eq!(count(&mut c, "SELECT count(*) FROM api_logs_2027_02"), 300);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 7);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_default WHERE id LIKE 'old-%'"
        ),
        7
    );
    assert!(
        stderr(&out).contains("public.messages: 7 rows of 2023-06 in its DEFAULT partition, outside the window: left there"),
        "{}",
        stderr(&out)
    );
    // check: exit 5 while DEFAULT holds rows, and it says which month.
    let out = db.run(&["check"]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("DEFAULT holds 7 rows of 2023-06"),
        "{}",
        stdout(&out)
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn above_the_limit_of_rows_to_move_it_refuses_saying_what_and_how() {
    let db = with_rows_in_default();
    let mut c = db.client();
    let before = rows(&mut c);
    let out = partitions(&db, &["--max-moved-rows", "1000"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    for part in [
        "public.messages 2027-01, 2027-02: moving 1500 rows out of the DEFAULT partition of public.messages (2027-01: 892 rows, 2027-02: 608 rows)",
        "above --max-moved-rows 1000",
        "rerun at a quiet time with a --max-moved-rows above 1500",
    ] {
        assert!(line.contains(part), "missing {part:?} in {line}");
    }
    // Per table: api_logs' 300 rows are within the limit and moved; none of messages' rows is.
    assert!(!line.contains("public.api_logs"), "{line}");
    assert_eq!(rows(&mut c), before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
    assert_eq!(count(&mut c, "SELECT count(*) FROM api_logs_2027_02"), 300);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_class WHERE relname IN ('messages_2027_01', 'messages_2027_02')"),
        0
    );
    let out = partitions(&db, &["--max-moved-rows", "1500"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 7);
}

#[test]
fn a_dry_run_shows_months_rows_and_locks_and_changes_nothing() {
    let db = with_rows_in_default();
    let mut c = db.client();
    let before = snapshot(&mut c);
    let out = partitions(&db, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same(
        &snapshot(&mut c),
        &before,
        "the dry run changed the catalog",
    );
    let text = stdout(&out);
    for part in [
        "create public.messages_2027_01 for 2027-01",
        "taking 892 rows from DEFAULT:",
        "move-and-attach: ACCESS EXCLUSIVE on public.messages, public.messages_default and public.messages_2027_01; SHARE ROW EXCLUSIVE on public.conversations and public.tenants (moving 892 rows: SHARE on public.messages and public.messages_default first (reads go on, writes wait), then ACCESS EXCLUSIVE on public.messages for the attach (every read waits); a transaction that waits for the move while holding a lock it needs (it read public.messages, or wrote a keyed table, and then writes public.messages) makes it start over with its locks taken first (every read waits for the whole move))",
        "create public.messages_2027_03 for 2027-03",
        "attach-partition: SHARE UPDATE EXCLUSIVE on public.messages; ACCESS EXCLUSIVE on public.messages_default and public.messages_2027_03; SHARE ROW EXCLUSIVE on public.conversations and public.tenants (one transaction: an exclusion CHECK on the small DEFAULT added and validated, the attach",
        "if the month fails, drop-leftover: ACCESS EXCLUSIVE on public.messages_2027_03 (a standalone table no one uses) (so that nothing of it is left)",
        "left in DEFAULT: 7 rows of public.messages 2023-06 (outside the window)",
    ] {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
    assert!(!text.contains("add-exclusion"), "{text}");
    let out = partitions(&db, &["--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["months"].as_array().unwrap().len(), 10);
    // Above 8 MiB, DEFAULT's exclusion CHECK takes steps of its own.
    pad_default(&mut c);
    let out = partitions(&db, &["--dry-run"]);
    let text = stdout(&out);
    for part in [
        "add-exclusion: ACCESS EXCLUSIVE on public.messages_default (brief: no scan) [bounded by --lock-timeout",
        "validate-exclusion: SHARE UPDATE EXCLUSIVE on public.messages_default (scans it; reads and writes go on) [waits as long as needed",
        "attach-partition: SHARE UPDATE EXCLUSIVE on public.messages; ACCESS EXCLUSIVE on public.messages_default and public.messages_2027_03; SHARE ROW EXCLUSIVE on public.conversations and public.tenants (brief: nothing scanned or built",
        "if the month fails, drop-checks: ACCESS EXCLUSIVE on public.messages_default (brief) (so that nothing of it is left)",
        "left in DEFAULT: 20007 rows of public.messages 2023-06 (outside the window)",
    ] {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
}

/// Kill points by step id, in run order for the database of [`padded`]: messages' months in
/// steps of their own (a large DEFAULT), api_logs' in one transaction each (a small one).
const KILL_AT: [&str; 11] = [
    "step messages_2027_01:public.messages_2027_01:create-table: done",
    "step messages_2027_01:public.messages:move-and-attach: done",
    "step messages_2027_01:public.messages_2027_01:drop-checks: done",
    "step messages_2027_03:public.messages_2027_03:create-table: done",
    "step messages_2027_03:public.messages_default:add-exclusion: done",
    "step messages_2027_03:public.messages_default:validate-exclusion: done",
    "step messages_2027_03:public.messages:attach-partition: done",
    "step messages_2027_03:public.messages_default:drop-checks: done",
    "step api_logs_2027_01:public.api_logs_2027_01:create-table: done",
    "step api_logs_2027_01:public.api_logs:attach-partition: done",
    "step api_logs_2027_02:public.api_logs:move-and-attach: done",
];

/// [`with_rows_in_default`] with messages' DEFAULT above 8 MiB.
fn padded() -> TestDb {
    let db = with_rows_in_default();
    pad_default(&mut db.client());
    db
}

fn partitions_killed_at(db: &TestDb, marker: &str) {
    let mut child = runner_bin()
        .args(["--database-url", &db.url, "partitions", "--as-of", AS_OF])
        .env("RUST_LOG", "info,meta_chat_migrations::engine=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = false;
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if !seen && line.contains(marker) {
            let _ = child.kill();
            seen = true;
        }
    }
    let _ = child.wait();
    assert!(seen, "never logged {marker}");
}

#[test]
fn a_kill_at_every_step_and_a_rerun_converge() {
    let reference = {
        let db = padded();
        assert_eq!(partitions(&db, &[]).status.code(), Some(0));
        snapshot(&mut db.client())
    };
    for marker in KILL_AT {
        let db = padded();
        let before = rows(&mut db.client());
        partitions_killed_at(&db, marker);
        let out = partitions(&db, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "rerun after {marker}: {}",
            stderr(&out)
        );
        let mut c = db.client();
        assert_same(
            &snapshot(&mut c),
            &reference,
            &format!("after a kill at {marker}"),
        );
        assert_eq!(rows(&mut c), before, "after a kill at {marker}");
    }
}

/// The months are laid out in time zone `zone` (with `datestyle`, if any, for the database),
/// then the database's zone becomes `later` before the runner continues them; `edge` (UTC) must
/// land in `expected`.
fn continued_across_zones(
    (zone, later): (&str, &str),
    datestyle: Option<&str>,
    edge: &str,
    expected: &str,
) {
    let db = TestDb::new();
    let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap();
    let set = |admin: &mut Client, what: &str| {
        admin
            .batch_execute(&format!("ALTER DATABASE {} SET {what}", db.name))
            .unwrap()
    };
    set(&mut admin, &format!("timezone = '{zone}'"));
    if let Some(style) = datestyle {
        set(&mut admin, &format!("DateStyle = '{style}'"));
    }
    assert_eq!(
        db.run(&["migrate", "--target", "20240520120000"])
            .status
            .code(),
        Some(0)
    );
    set(&mut admin, &format!("timezone = '{later}'"));
    assert_eq!(
        db.run(&["migrate", "--skip-partitions"]).status.code(),
        Some(0)
    );
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = db.client();
    c.batch_execute("SET DateStyle = 'ISO'").unwrap();
    // Contiguous: each lower bound is the previous upper bound.
    let gaps = count(
        &mut c,
        "WITH b AS (SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid), $$FROM \\('([^']+)'\\) TO \\('([^']+)'\\)$$)) AS m
                      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'messages'::regclass),
              r AS (SELECT m[1]::timestamptz AS lo, m[2]::timestamptz AS hi FROM b WHERE m IS NOT NULL)
         SELECT count(*) FROM r WHERE r.lo <> (SELECT max(p.hi) FROM r p WHERE p.hi <= r.lo) AND r.lo > (SELECT min(lo) FROM r)",
    );
    assert_eq!(gaps, 0, "{zone}: {:?}", partitions_of(&mut c, "messages"));
    c.batch_execute(&format!("INSERT INTO tenants (id, name) VALUES ('t', 'T'); INSERT INTO conversations (id, \"tenantId\") VALUES ('c', 't');
                     INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('edge', 't', 'c', 'user', 'x', '{edge}');"))
        .unwrap();
    let at: String = c
        .query_one(
            "SELECT tableoid::regclass::text FROM messages WHERE id = 'edge'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(at, expected, "{zone}");
}

#[test]
fn bounds_fixed_in_another_time_zone_are_continued_exactly() {
    // 2026-12-31 23:30 UTC is 2027-01-01 00:30 in Berlin: the 2027-01 partition takes it.
    continued_across_zones(
        ("Europe/Berlin", "America/Los_Angeles"),
        None,
        "2026-12-31 23:30+00",
        "messages_2027_01",
    );
    // Havana's abbreviations (CST, CDT) read back as US Central's: bounds are read and written
    // in ISO, whatever DateStyle the database sets. 2027-01-01 04:30 UTC is still 2026-12-31 in
    // Havana (UTC-5).
    continued_across_zones(
        ("America/Havana", "America/Havana"),
        Some("Postgres, DMY"),
        "2027-01-01 04:30+00",
        "messages_2026_12",
    );
}

#[test]
fn attaching_never_takes_access_exclusive_on_the_referenced_tables() {
    let db = latest_without_window();
    // A reader of tenants and conversations, and one of a month of messages, each in a
    // transaction open for over a second: they conflict only with ACCESS EXCLUSIVE on what they
    // read, which no step takes, so no step waits for them or gives way to them.
    let mut reader = db.client();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM tenants; SELECT count(*) FROM conversations;")
        .unwrap();
    let mut month_reader = db.client();
    month_reader
        .batch_execute("BEGIN; SELECT count(*) FROM messages WHERE \"createdAt\" >= '2026-06-01' AND \"createdAt\" < '2026-07-01';")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = partitions(&db, &["--lock-timeout", "500ms", "--lock-retries", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("retry"), "{}", stderr(&out));
    month_reader.batch_execute("COMMIT").unwrap();
    // The negative: attaching a month that brings its own key makes PostgreSQL adopt it, which
    // takes ACCESS EXCLUSIVE on tenants and waits for the reader.
    let mut c = db.client();
    c.batch_execute(
        "SET statement_timeout = '1s';
         CREATE TABLE own_key (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         ALTER TABLE own_key ADD CONSTRAINT own_key_tenant FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE;",
    )
    .unwrap();
    let err = c
        .batch_execute("ALTER TABLE messages ATTACH PARTITION own_key FOR VALUES FROM ('2030-01-01') TO ('2030-02-01')")
        .unwrap_err();
    reader.batch_execute("COMMIT").unwrap();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
}

/// The key a partition checks first for a message of a missing tenant.
fn first_key_checked(c: &mut Client, partition: &str) -> String {
    c.query_one(
        "SELECT k.conname::text FROM pg_trigger tg JOIN pg_constraint k ON k.oid = tg.tgconstraint
          WHERE tg.tgrelid = $1::text::regclass AND k.contype = 'f' ORDER BY tg.tgname COLLATE \"C\" LIMIT 1",
        &[&partition],
    )
    .unwrap()
    .get(0)
}

#[test]
fn verify_keeps_passing_when_the_current_month_is_a_new_partition() {
    let db = TestDb::new();
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    let mut c = db.client();
    let current = current_month(&mut c);
    let part = format!("messages_{}", current.replace('-', "_"));
    assert_eq!(
        first_key_checked(&mut c, &part),
        "messages_partitioned_conversation_fkey"
    );
    // The current month recreated by the runner, as every month will be from 2027 on.
    c.batch_execute(&format!(
        "ALTER TABLE messages DETACH PARTITION {part}; DROP TABLE {part};"
    ))
    .unwrap();
    let out = db.run(&["partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        first_key_checked(&mut c, &part),
        "messages_conversation_tenant_fkey"
    );
    let out = db.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("TEST 2 PASSED"), "{}", stdout(&out));
    // Every month checking the tenant-consistency key first (every partition created after
    // both keys; also what trigger names do when their OIDs cross a power of ten): the refusal
    // by that key passes while the tenant key is in place and validated ...
    c.batch_execute(
        "DO $$ DECLARE p record; b text; BEGIN
           FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                     WHERE i.inhparent = 'messages'::regclass AND c.relname <> 'messages_default' LOOP
             EXECUTE format('ALTER TABLE messages DETACH PARTITION %I', p.relname);
             EXECUTE format('DROP TABLE %I', p.relname);
             EXECUTE format('CREATE TABLE %I PARTITION OF messages %s', p.relname, p.bound);
           END LOOP; END $$",
    )
    .unwrap();
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("TEST 2 PASSED"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("every partition checks messages_conversation_tenant_fkey first"),
        "{}",
        stderr(&out)
    );
    // ... and fails without it (the negative).
    c.batch_execute("ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey")
        .unwrap();
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert!(stdout(&out).contains("TEST 2 FAILED: a message with a nonexistent tenant was refused only by messages_conversation_tenant_fkey: messages_tenant_id_fkey is missing"), "{}", stdout(&out));
}

/// Inserts of the month being moved, made while the move runs, wait and then land in the new
/// partition: none fails. A reader of the parent counts the month's moved rows throughout and
/// always sees each exactly once (never 0 of them in transit, never twice). (An insert routed to DEFAULT just before the ATTACH would fail with
/// 23514 "violates partition constraint"; the move's SHARE lock on the parent makes writers wait
/// before they route.)
#[test]
fn inserts_of_the_month_being_moved_wait_and_none_fails() {
    let db = with_rows_in_default();
    let before = count(&mut db.client(), "SELECT count(*) FROM messages");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (mut c, stop) = (db.client(), stop.clone());
            thread::spawn(move || {
                let (mut ok, mut failed) = (0i64, Vec::new());
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    match c.execute(
                        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
                         VALUES ($1, 't1', 'c1', 'user', 'during the move', timestamptz '2027-01-20 00:00+00')",
                        &[&format!("during-{w}-{i}")],
                    ) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let reader = {
        let (mut c, stop) = (db.client(), stop.clone());
        thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM messages WHERE content = 'in default'
                            AND \"createdAt\" >= '2027-01-01 00:00+00' AND \"createdAt\" < '2027-02-01 00:00+00'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                seen.push(n);
            }
            seen
        })
    };
    thread::sleep(std::time::Duration::from_millis(300));
    let out = partitions(&db, &[]);
    thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert!(seen.len() > 2, "{seen:?}");
    assert!(seen.iter().all(|&n| n == 892), "a reader saw {:?}", {
        let mut odd: Vec<i64> = seen.iter().copied().filter(|&n| n != 892).collect();
        odd.dedup();
        odd
    });
    let (mut inserted, mut failed) = (0, Vec::new());
    for w in writers {
        let (ok, f) = w.join().unwrap();
        inserted += ok;
        failed.extend(f);
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        failed.is_empty(),
        "{} inserts failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(inserted > 0);
    let mut c = db.client();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM messages"),
        before + inserted
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_2027_01 WHERE content = 'during the move'"
        ),
        inserted,
        "every insert of the month is in its partition"
    );
}

/// The partitions of `table` only, as `snapshot` lists them.
fn snapshot_of(c: &mut Client, table: &str) -> Vec<String> {
    snapshot(c)
        .into_iter()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|r| r.starts_with(table))
        })
        .collect()
}

/// What the move's DELETE would fire and its INSERT would not is refused for the months that
/// must move, each named, and nothing of them changes; the months that need no move are
/// created, and the other table keeps its window.
#[test]
fn a_move_that_would_fire_triggers_or_cascades_is_refused_for_its_months_only() {
    let cases = [
        (
            "CREATE FUNCTION count_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER messages_counter AFTER DELETE ON messages FOR EACH ROW EXECUTE FUNCTION count_it();",
            "trigger messages_counter on messages_default",
        ),
        (
            "CREATE TABLE reactions (\"messageId\" text, \"messageAt\" timestamptz,
               FOREIGN KEY (\"messageId\", \"messageAt\") REFERENCES messages (id, \"createdAt\") ON DELETE CASCADE);",
            "foreign key reactions_messageId_messageAt_fkey of reactions",
        ),
    ];
    for (setup, named) in cases {
        let db = with_rows_in_default();
        let mut c = db.client();
        c.batch_execute(setup).unwrap();
        let before = rows(&mut c);
        let out = partitions(&db, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = error_line(&out);
        for month in [
            "public.messages 2027-01: 892 rows",
            "public.messages 2027-02: 608 rows",
        ] {
            assert!(line.contains(month), "{month}: {line}");
        }
        assert!(
            line.contains(named) && line.contains("move them by hand"),
            "{line}"
        );
        assert_eq!(rows(&mut c), before);
        assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
        assert_eq!(count(&mut c, "SELECT count(*) FROM pg_class WHERE relname IN ('messages_2027_01', 'messages_2027_02')"), 0);
        assert_eq!(
            count(
                &mut c,
                "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'mcm%'"
            ),
            0
        );
        let names = partition_names(&mut c, "messages");
        assert!(names.contains(&"messages_2027_03".into()), "{names:?}");
        assert_eq!(count(&mut c, "SELECT count(*) FROM api_logs_2027_02"), 300);
    }
}

/// A key that references messages with NO ACTION changes no row when a moved row leaves
/// DEFAULT: the move goes on while nothing references its rows, and fails on the key, rolled
/// back with nothing lost, when something does.
#[test]
fn a_referencing_key_without_an_action_lets_the_move_run_or_fail_on_it_whole() {
    let db = with_rows_in_default();
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE reactions (\"messageId\" text, \"messageAt\" timestamptz,
           CONSTRAINT reactions_message FOREIGN KEY (\"messageId\", \"messageAt\") REFERENCES messages (id, \"createdAt\"));
         INSERT INTO reactions SELECT id, \"createdAt\" FROM messages WHERE id = 'late-1';",
    )
    .unwrap();
    let before = rows(&mut c);
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    for part in [
        "not created: public.messages 2027-01: messages_2027_01:public.messages:move-and-attach: SQLSTATE 23503",
        "is still referenced from table \"reactions\"",
        "the 4 month(s) after it were not attempted",
    ] {
        assert!(err.contains(part), "missing {part:?} in {err}");
    }
    assert_eq!(rows(&mut c), before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM reactions"), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_default WHERE id LIKE 'late-%'"
        ),
        1500
    );
    assert!(!partition_names(&mut c, "messages").contains(&"messages_2027_01".into()));
    assert!(partition_names(&mut c, "api_logs").contains(&"api_logs_2027_05".into()));
    // Once nothing references its rows, the month is moved.
    c.batch_execute("DELETE FROM reactions").unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
}

/// A DEFAULT that is itself partitioned (its rows cannot be counted or moved with ONLY) is
/// refused for its table, named, and nothing of that table changes; the other table keeps its
/// window.
#[test]
fn a_table_whose_layout_cannot_be_continued_never_stops_the_other() {
    let db = latest_without_window();
    let mut c = db.client();
    c.batch_execute(
        "ALTER TABLE messages DETACH PARTITION messages_default; DROP TABLE messages_default;
         CREATE TABLE messages_default PARTITION OF messages DEFAULT PARTITION BY RANGE (\"createdAt\");
         CREATE TABLE messages_default_all PARTITION OF messages_default DEFAULT;",
    )
    .unwrap();
    let before = snapshot_of(&mut c, "messages");
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out)
            .contains("DEFAULT partition public.messages_default is itself partitioned"),
        "{}",
        stderr(&out)
    );
    assert_same(&snapshot_of(&mut c, "messages"), &before, "refused layout");
    let names = partition_names(&mut c, "api_logs");
    assert!(names.contains(&"api_logs_2027_05".into()), "{names:?}");
}

/// `migrate` applies its versions and exits 0 when the months ahead cannot be made (here: more
/// rows to move than --max-moved-rows), saying so; `check` exits 5 until `partitions` runs.
#[test]
fn migrate_warns_and_succeeds_when_the_months_ahead_cannot_be_made() {
    let db = with_rows_in_default();
    let mut c = db.client();
    let before = rows(&mut c);
    let out = db.run(&["migrate", "--max-moved-rows", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the migrations are applied, but not every month ahead was created: monthly partitions not created: public.messages 2027-01, 2027-02: moving 1500 rows")
            && stderr(&out).contains("above --max-moved-rows 1000"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("monthly partitions ahead NOT created"),
        "{}",
        stdout(&out)
    );
    assert_eq!(rows(&mut c), before, "no row moved");
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
    assert!(!partition_names(&mut c, "messages").contains(&"messages_2027_01".into()));
    let out = db.run(&["migrate", "--json", "--max-moved-rows", "1000"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["partitions_error"].as_str().is_some(), "{report}");
    assert_eq!(db.run(&["check"]).status.code(), Some(5));
    // The negative: with the limit the rows fit in, the same run creates the months.
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("NOT created"), "{}", stdout(&out));
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
}

/// A real run with an `--as-of` in the past warns; one with today's date does not.
#[test]
fn a_real_run_with_a_past_as_of_warns() {
    let db = latest_without_window();
    let out = db.run(&["partitions", "--as-of", "2026-01-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--as-of 2026-01-01 is before today"),
        "{}",
        stderr(&out)
    );
    let today: String = db
        .client()
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date::text", &[])
        .unwrap()
        .get(0);
    let out = db.run(&["partitions", "--as-of", &today]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("is before today"),
        "{}",
        stderr(&out)
    );
}
