//! What a month's creation does to what is around the database: logical subscribers, the
//! application's transactions, tables of a month's name that are not what the runner left, and
//! the locks the server really takes. Each test also shows the negative.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::months::*;
use common::*;
use postgres::{Client, NoTls};

const LOGICAL: &str = "wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n";

/// A publisher at the latest version whose window ends at 2026-12, with rows in DEFAULT, and a
/// subscriber of the same schema on a second cluster, subscribed to the four tables.
struct Replicated {
    publisher: Cluster,
    subscriber: Cluster,
}

impl Replicated {
    fn new(via_root: bool) -> Replicated {
        let publisher = Cluster::start(&[], LOGICAL, None);
        let subscriber = Cluster::start(&[], "", None);
        for url in [&publisher.url, &subscriber.url] {
            let out = run_bin(url, &["migrate", "--skip-partitions"]);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        }
        let mut p = Client::connect(&publisher.url, NoTls).unwrap();
        seed(&mut p, 10, 2000);
        add_rows_in_default(&mut p);
        p.batch_execute(&format!(
            "CREATE PUBLICATION chat FOR TABLE tenants, conversations, messages, api_logs WITH (publish_via_partition_root = {via_root})"
        ))
        .unwrap();
        Client::connect(&subscriber.url, NoTls)
            .unwrap()
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION chat CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres' PUBLICATION chat",
                publisher.port
            ))
            .unwrap();
        let r = Replicated {
            publisher,
            subscriber,
        };
        assert!(
            r.caught_up(),
            "the subscriber never got the publisher's rows"
        );
        r
    }

    fn publisher(&self) -> Client {
        Client::connect(&self.publisher.url, NoTls).unwrap()
    }

    fn subscriber(&self) -> Client {
        Client::connect(&self.subscriber.url, NoTls).unwrap()
    }

    /// Whether the subscriber has exactly the publisher's rows, within a minute.
    fn caught_up(&self) -> bool {
        let (mut p, mut s) = (self.publisher(), self.subscriber());
        eventually(Duration::from_secs(60), || rows(&mut p) == rows(&mut s))
    }
}

/// What a move did before it published its inserts: the rows inserted into the table before it
/// is attached, which no publication covers yet.
const UNPUBLISHED_MOVE: &str = "
    CREATE TABLE api_logs_2027_02 (LIKE api_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
    BEGIN;
    LOCK TABLE api_logs IN SHARE MODE;
    WITH moved AS (DELETE FROM ONLY api_logs_default WHERE \"createdAt\" >= '2027-02-01 00:00+00' AND \"createdAt\" < '2027-03-01 00:00+00' RETURNING *)
      INSERT INTO api_logs_2027_02 SELECT * FROM moved;
    ALTER TABLE api_logs ATTACH PARTITION api_logs_2027_02 FOR VALUES FROM ('2027-02-01 00:00+00') TO ('2027-03-01 00:00+00');
    COMMIT;";

/// The moved rows inserted through the table after the attach (what the runner does for a
/// publication through the root).
const PUBLISHED_MOVE: &str = "
    CREATE TABLE api_logs_2027_02 (LIKE api_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
    BEGIN;
    LOCK TABLE api_logs IN ACCESS EXCLUSIVE MODE;
    CREATE TEMPORARY TABLE moved_logs (LIKE api_logs) ON COMMIT DROP;
    WITH moved AS (DELETE FROM ONLY api_logs_default WHERE \"createdAt\" >= '2027-02-01 00:00+00' AND \"createdAt\" < '2027-03-01 00:00+00' RETURNING *)
      INSERT INTO moved_logs SELECT * FROM moved;
    ALTER TABLE api_logs ATTACH PARTITION api_logs_2027_02 FOR VALUES FROM ('2027-02-01 00:00+00') TO ('2027-03-01 00:00+00');
    INSERT INTO api_logs SELECT * FROM moved_logs;
    COMMIT;";

fn api_logs(c: &mut Client) -> i64 {
    count(c, "SELECT count(*) FROM api_logs")
}

#[test]
fn a_move_reaches_the_subscribers_of_a_publication_through_the_root() {
    let r = Replicated::new(true);
    let (mut p, mut s) = (r.publisher(), r.subscriber());
    // The negative: rows inserted into the table before it is attached never reach the
    // subscriber, which applies their deletion from DEFAULT.
    p.batch_execute(UNPUBLISHED_MOVE).unwrap();
    let published = api_logs(&mut p);
    assert!(
        eventually(Duration::from_secs(60), || api_logs(&mut s)
            == published - 300),
        "the subscriber has {} api_logs, the publisher {published}",
        api_logs(&mut s)
    );
    // The runner's move: messages' 892 rows of 2027-01 and 608 of 2027-02 leave DEFAULT.
    let out = run_bin(&r.publisher.url, &["partitions", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("public.messages: partitions 2024-01 .. 2027-05, 6 month(s) ahead of 2026-11; created 5 month(s) 2027-01 .. 2027-05 (1500 rows moved from DEFAULT)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&mut p, "SELECT count(*) FROM messages_2027_01"), 892);
    p.batch_execute("INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('after', 't1', 'c1', 'user', 'x', '2027-03-05')")
        .unwrap();
    let messages = |c: &mut Client| {
        let r = rows(c);
        (r.0, r.1)
    };
    let want = messages(&mut p);
    assert!(
        eventually(Duration::from_secs(60), || messages(&mut s) == want),
        "the subscriber's messages {:?} differ from the publisher's {want:?}",
        messages(&mut s)
    );
}

#[test]
fn a_move_is_refused_while_a_publication_publishes_the_partitions_by_name() {
    let r = Replicated::new(false);
    let (mut p, mut s) = (r.publisher(), r.subscriber());
    let before = rows(&mut p);
    let out = run_bin(&r.publisher.url, &["partitions", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    for part in [
        "public.messages 2027-01: 892 rows of 2027-01 are in public.messages_default, but moving them is refused: publication chat publishes partitions of the table under their own names",
        "(publish the table itself with publish_via_partition_root = true)",
        "public.api_logs 2027-02: 300 rows",
        "move them by hand (or remove the cause)",
    ] {
        assert!(line.contains(part), "missing {part:?} in {line}");
    }
    assert_eq!(rows(&mut p), before, "nothing moved");
    assert!(partition_names(&mut p, "messages").contains(&"messages_2027_05".to_string()));
    assert!(r.caught_up());
    // The negative: even inserted through the table after the attach, the rows reach the
    // subscriber as inserts into a partition its subscription does not have: lost there.
    s.batch_execute("CREATE TABLE api_logs_2027_02 (LIKE api_logs)")
        .unwrap();
    p.batch_execute(PUBLISHED_MOVE).unwrap();
    let published = api_logs(&mut p);
    assert!(
        eventually(Duration::from_secs(60), || api_logs(&mut s)
            == published - 300),
        "the subscriber has {} api_logs, the publisher {published}",
        api_logs(&mut s)
    );
}

/// A publication that names DEFAULT itself publishes it under its own name, even with
/// publish_via_partition_root: the move is refused for it too, and nothing moves.
#[test]
fn a_move_is_refused_while_a_publication_names_default_itself() {
    let db = with_rows_in_default();
    let mut c = db.client();
    c.batch_execute(
        "CREATE PUBLICATION by_name FOR TABLE messages_default WITH (publish_via_partition_root = true)",
    )
    .unwrap();
    let before = rows(&mut c);
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("public.messages 2027-01: 892 rows of 2027-01 are in public.messages_default, but moving them is refused: publication by_name publishes partitions of the table under their own names"),
        "{line}"
    );
    assert!(!line.contains("public.api_logs"), "{line}");
    assert_eq!(rows(&mut c), before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
    assert_eq!(count(&mut c, "SELECT count(*) FROM api_logs_2027_02"), 300);
}

/// Waits until `pid`'s lock request is waiting.
fn waiting(watch: &mut Client, pid: i32) -> bool {
    eventually(Duration::from_secs(30), || {
        count(
            watch,
            &format!("SELECT count(*) FROM pg_locks WHERE pid = {pid} AND NOT granted"),
        ) > 0
    })
}

fn pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

const APP_INSERT: &str = "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ($1, 't1', 'c1', 'user', 'x', '2026-11-20')";

/// An application transaction that read `messages` and writes it while a move holds SHARE on
/// it: taking ACCESS EXCLUSIVE then would close a deadlock whose victim is the application's
/// transaction. The runner sees it waiting, starts over with ACCESS EXCLUSIVE taken first, and
/// the application's transaction commits.
#[test]
fn a_transaction_that_read_and_then_writes_during_a_move_commits() {
    let db = latest_without_window();
    let mut c = db.client();
    c.batch_execute(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'bulk-' || g, 't' || (1 + g % 10), 'c' || (1 + g % 10), 'user', 'bulk', timestamptz '2027-01-01 00:00+00' + g * interval '10 seconds'
             FROM generate_series(1, 150000) g",
    )
    .unwrap();
    let mut app = db.client();
    app.batch_execute("BEGIN; SELECT count(*) FROM messages WHERE \"conversationId\" = 'c1'")
        .unwrap();
    let url = db.url.clone();
    let runner = std::thread::spawn(move || {
        run_bin(
            &url,
            &["partitions", "--as-of", AS_OF, "--max-moved-rows", "200000"],
        )
    });
    assert!(
        eventually(Duration::from_secs(60), || {
            count(
                &mut c,
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE a.application_name = 'meta-chat-migrate' AND a.state = 'active' AND l.granted
                AND l.relation = 'messages'::regclass AND l.mode = 'ShareLock'",
            ) > 0
        }),
        "the move never ran"
    );
    let inserted = app.execute(APP_INSERT, &[&"app-1"]);
    let committed = app.batch_execute("COMMIT");
    let out = runner.join().unwrap();
    assert!(
        inserted.is_ok() && committed.is_ok(),
        "{inserted:?} {committed:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Stopped by the keeper as soon as the transaction waited, or by the upgrade's own check.
    let err = stderr(&out);
    assert!(
        err.contains("a transaction that holds a lock on a table it needs waits for it: stopping it before it deadlocks")
            && err.contains("starts over with its locks taken first; retry 1 of"),
        "{err}"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM messages_2027_01"),
        150000
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM messages WHERE id = 'app-1'"),
        1
    );
    // The negative: while an upgrade to ACCESS EXCLUSIVE waits for a reader, that reader's write
    // closes a deadlock and PostgreSQL aborts the reader's transaction at once.
    let (mut mover, mut reader) = (db.client(), db.client());
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM messages WHERE \"conversationId\" = 'c1'")
        .unwrap();
    mover
        .batch_execute("BEGIN; LOCK TABLE ONLY messages IN SHARE MODE")
        .unwrap();
    let mover_pid = pid(&mut mover);
    let upgrade = std::thread::spawn(move || {
        let r = mover.batch_execute("LOCK TABLE ONLY messages IN ACCESS EXCLUSIVE MODE");
        (r, mover)
    });
    assert!(waiting(&mut c, mover_pid));
    let err = reader.execute(APP_INSERT, &[&"app-2"]).unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("40P01"), "{err}");
    reader.batch_execute("ROLLBACK").unwrap();
    let (upgraded, mut mover) = upgrade.join().unwrap();
    assert!(upgraded.is_ok(), "{upgraded:?}");
    mover.batch_execute("ROLLBACK").unwrap();
}

/// An application transaction that changed a conversation and then inserts a message while a
/// move holds SHARE on messages: the move's SHARE ROW EXCLUSIVE on conversations (for the
/// attach) would close a deadlock with it. The runner gives way before PostgreSQL picks a
/// victim, starts over with its locks taken first, and the application's transaction commits.
#[test]
fn a_transaction_that_wrote_a_keyed_table_and_then_inserts_during_a_move_commits() {
    let db = latest_without_window();
    let mut c = db.client();
    c.batch_execute(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'bulk-' || g, 't' || (1 + g % 10), 'c' || (1 + g % 10), 'user', 'bulk', timestamptz '2027-01-01 00:00+00' + g * interval '10 seconds'
             FROM generate_series(1, 150000) g",
    )
    .unwrap();
    let mut app = db.client();
    app.batch_execute(
        "BEGIN; UPDATE conversations SET \"tenantId\" = \"tenantId\" WHERE id = 'c1'",
    )
    .unwrap();
    let url = db.url.clone();
    let runner = std::thread::spawn(move || {
        run_bin(
            &url,
            &["partitions", "--as-of", AS_OF, "--max-moved-rows", "200000"],
        )
    });
    assert!(
        eventually(Duration::from_secs(60), || {
            count(
                &mut c,
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE a.application_name = 'meta-chat-migrate' AND a.state = 'active' AND l.granted
                AND l.relation = 'messages'::regclass AND l.mode = 'ShareLock'",
            ) > 0
        }),
        "the move never ran"
    );
    let inserted = app.execute(APP_INSERT, &[&"app-1"]);
    let committed = app.batch_execute("COMMIT");
    let out = runner.join().unwrap();
    assert!(
        inserted.is_ok() && committed.is_ok(),
        "{inserted:?} {committed:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("starts over with its locks taken first; retry 1 of"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM messages_2027_01"),
        150000
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM messages WHERE id = 'app-1'"),
        1
    );
    // The negative: a move that takes SHARE ROW EXCLUSIVE on conversations after the SHARE on
    // messages deadlocks with that transaction, and PostgreSQL aborts one of the two.
    let (mut mover, mut writer) = (db.client(), db.client());
    writer
        .batch_execute(
            "BEGIN; UPDATE conversations SET \"tenantId\" = \"tenantId\" WHERE id = 'c1'",
        )
        .unwrap();
    mover
        .batch_execute("BEGIN; LOCK TABLE ONLY messages IN SHARE MODE")
        .unwrap();
    let mover_pid = pid(&mut mover);
    let writer_pid = pid(&mut writer);
    let keyed = std::thread::spawn(move || {
        let r = mover.batch_execute("LOCK TABLE conversations IN SHARE ROW EXCLUSIVE MODE");
        let _ = mover.batch_execute("ROLLBACK");
        r
    });
    assert!(waiting(&mut c, mover_pid));
    let insert = writer.execute(APP_INSERT, &[&"app-2"]);
    let _ = writer.batch_execute("ROLLBACK");
    let lock = keyed.join().unwrap();
    let codes: Vec<Option<String>> = [insert.err(), lock.err()]
        .into_iter()
        .map(|e| e.and_then(|e| e.code().map(|c| c.code().to_string())))
        .collect();
    assert!(
        codes.contains(&Some("40P01".to_string())),
        "no deadlock between {mover_pid} and {writer_pid}: {codes:?}"
    );
}

/// Relations of a month's name that are not what the runner left, and a table whose partitions
/// cannot be continued, refuse only what they touch, each named; an empty table an interrupted
/// run left is made again, whoever owns it.
#[test]
fn leftovers_and_odd_partitions_refuse_only_what_they_touch_and_say_what() {
    let roles = Roles::new(&["other"]);
    let db = latest_without_window();
    let other = roles.name("other");
    let mut c = db.client();
    let bound = |m: &str, n: &str| {
        format!("ALTER TABLE messages_{} ADD CONSTRAINT mcm_month_bound CHECK (\"createdAt\" >= '{m}-01 00:00:00+00' AND \"createdAt\" < '{n}-01 00:00:00+00')", m.replace('-', "_"))
    };
    c.batch_execute(&format!(
        "CREATE TABLE messages_2027_01 (LIKE messages); {}; ALTER TABLE messages_2027_01 OWNER TO {other};
         CREATE TABLE messages_2027_02 (id int, \"tenantId\" int);
         CREATE TABLE messages_2027_03 (LIKE messages); {};
         INSERT INTO messages_2027_03 (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('kept', 't1', 'c1', 'user', 'x', '2027-03-03');
         CREATE TABLE api_logs_2027_01_half PARTITION OF api_logs FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-01-15 00:00+00');",
        bound("2027-01", "2027-02"),
        bound("2027-03", "2027-04"),
    ))
    .unwrap();
    let api_logs_before = partition_names(&mut c, "api_logs");
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    for part in [
        "public.messages 2027-02: public.messages_2027_02 exists and was not left by this runner (it has no mcm_month_bound CHECK)",
        "public.messages 2027-03: public.messages_2027_03 is a standalone table an interrupted run left, but rows were written into it since",
        "public.api_logs: table public.api_logs is not in the state the runner expects: partition(s) public.api_logs_2027_01_half do not span whole months in UTC",
    ] {
        assert!(line.contains(part), "missing {part:?} in {line}");
    }
    let names = partition_names(&mut c, "messages");
    for m in ["messages_2027_01", "messages_2027_04", "messages_2027_05"] {
        assert!(names.contains(&m.to_string()), "{m}: {names:?}");
    }
    assert_eq!(owner_of(&mut c, "messages_2027_01"), "postgres");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_2027_03 WHERE id = 'kept'"
        ),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'messages_2027_02'::regclass AND attnum > 0"),
        2,
        "untouched"
    );
    assert_eq!(partition_names(&mut c, "api_logs"), api_logs_before);
}

/// A runner that is the tables' owner but no superuser meets an empty table an interrupted run
/// left under another role in a schema it does not own: it can neither drop nor reuse it. That
/// month is named with what to do, the others are created, and every later run does the same
/// instead of failing on permissions.
#[test]
fn a_leftover_the_runner_may_not_drop_is_named_and_later_runs_go_on() {
    let roles = Roles::new(&["owner", "other"]);
    let db = TestDb::new();
    let (owner, other) = (roles.name("owner"), roles.name("other"));
    let mut c = db.client();
    c.batch_execute("CREATE SCHEMA app").unwrap();
    let out = db.run(&["--schema", "app", "migrate", "--skip-partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    c.batch_execute(&format!(
        "SET search_path = app;
         DO $$ DECLARE r regclass; BEGIN
           FOR r IN SELECT relid FROM pg_partition_tree('app.messages') UNION ALL SELECT relid FROM pg_partition_tree('app.api_logs') LOOP
             EXECUTE format('ALTER TABLE %s OWNER TO {owner}', r);
           END LOOP; END $$;
         ALTER TABLE app.tenants OWNER TO {owner}; ALTER TABLE app.conversations OWNER TO {owner};
         ALTER TABLE app.refinery_schema_history OWNER TO {owner};
         GRANT USAGE, CREATE ON SCHEMA app TO {owner};
         CREATE TABLE app.messages_2027_01 (LIKE app.messages);
         ALTER TABLE app.messages_2027_01 ADD CONSTRAINT mcm_month_bound CHECK (\"createdAt\" >= '2027-01-01 00:00:00+00' AND \"createdAt\" < '2027-02-01 00:00:00+00');
         ALTER TABLE app.messages_2027_01 OWNER TO {other};"
    ))
    .unwrap();
    let as_owner = with_user(&db.url, &owner);
    let run = || {
        run_bin(
            &as_owner,
            &["--schema", "app", "partitions", "--as-of", AS_OF],
        )
    };
    for attempt in 0..2 {
        let out = run();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains(&format!("app.messages 2027-01: app.messages_2027_01 is an empty table an interrupted run left, owned by {other}, which this run's role may not drop: drop it as {other} or a superuser")),
            "run {attempt}: {line}"
        );
        assert!(!stderr(&out).contains("42501"), "{}", stderr(&out));
    }
    let names = partition_names(&mut c, "app.messages");
    assert!(names.contains(&"messages_2027_05".to_string()), "{names:?}");
    assert_eq!(owner_of(&mut c, "app.messages_2027_05"), owner);
    assert!(partition_names(&mut c, "app.api_logs").contains(&"api_logs_2027_05".to_string()));
    // Dropped by someone who may, the month is made by the next run.
    c.batch_execute("DROP TABLE app.messages_2027_01").unwrap();
    assert_eq!(run().status.code(), Some(0));
    assert_eq!(owner_of(&mut c, "app.messages_2027_01"), owner);
}

/// pg_locks' names, weakest first.
const MODES: [&str; 8] = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// The strongest lock this session holds on each table, by `schema.table`; `before` names the
/// tables a step may drop (their oids, read before it ran).
fn held(
    tx: &mut postgres::Transaction<'_>,
    before: &BTreeMap<u32, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for r in tx
        .query(
            "SELECT l.relation, n.nspname || '.' || c.relname, c.relkind IN ('r', 'p'), l.mode FROM pg_locks l
               LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
                AND coalesce(n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema', true)",
            &[],
        )
        .unwrap()
    {
        let (oid, name, table, mode): (u32, Option<String>, Option<bool>, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let Some(rel) = name.filter(|_| table == Some(true)).or_else(|| before.get(&oid).cloned()) else {
            continue;
        };
        let rank = |m: &str| MODES.iter().position(|x| *x == m);
        let e = out.entry(rel).or_default();
        if rank(&mode) > rank(e) {
            *e = mode;
        }
    }
    out
}

/// The oids of the tables a step claims, as they are before it runs.
fn oids_of(c: &mut Client, claims: &BTreeMap<String, String>) -> BTreeMap<u32, String> {
    claims
        .keys()
        .filter_map(|rel| {
            c.query_one("SELECT to_regclass($1)::oid", &[rel])
                .unwrap()
                .get::<_, Option<u32>>(0)
                .map(|oid| (oid, rel.clone()))
        })
        .collect()
}

/// Every step of a plan, run as the runner runs it (its statements in one transaction; a move
/// in its first form for messages and in its form after a deadlock for api_logs), holds exactly
/// the locks its plan claims: with a table that references messages and a policy that reads
/// another table, on a messages DEFAULT large enough for the exclusion CHECK to take steps of
/// its own and an api_logs DEFAULT small enough for one transaction.
#[test]
fn each_steps_lock_claims_are_the_locks_the_server_takes() {
    let db = with_rows_in_default();
    let mut c = db.client();
    pad_default(&mut c);
    c.batch_execute(
        "CREATE TABLE reactions (\"messageId\" text, \"createdAt\" timestamptz, FOREIGN KEY (\"messageId\", \"createdAt\") REFERENCES messages (id, \"createdAt\"));
         CREATE TABLE tenant_members (tenant text, member name);
         ALTER TABLE messages_2026_12 ENABLE ROW LEVEL SECURITY;
         CREATE POLICY members ON messages_2026_12 USING (\"tenantId\" IN (SELECT tenant FROM tenant_members WHERE member = current_user));
         CREATE TABLE messages_2027_04 (LIKE messages);
         ALTER TABLE messages_2027_04 ADD CONSTRAINT mcm_month_bound CHECK (\"createdAt\" >= '2027-04-01 00:00:00+00' AND \"createdAt\" < '2027-05-01 00:00:00+00');
         ALTER TABLE api_logs_default ADD CONSTRAINT mcm_excludes_2030_01 CHECK (NOT (\"createdAt\" >= '2030-01-01 00:00:00+00' AND \"createdAt\" < '2030-02-01 00:00:00+00')) NOT VALID;",
    )
    .unwrap();
    let out = partitions(&db, &["--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut steps: Vec<&serde_json::Value> = plan["leftovers"].as_array().unwrap().iter().collect();
    for m in plan["months"].as_array().unwrap() {
        steps.extend(m["steps"].as_array().unwrap());
    }
    let actions: Vec<&str> = steps
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    for a in [
        "drop-checks",
        "drop-leftover",
        "create-table",
        "add-exclusion",
        "validate-exclusion",
        "attach-partition",
        "move-and-attach",
    ] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
    let claimed_anywhere = |rel: &str| {
        plan["months"].as_array().unwrap().iter().any(|m| {
            m["steps"].as_array().unwrap().iter().any(|s| {
                s["claims"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k["relation"] == rel))
            })
        })
    };
    for rel in ["public.reactions", "public.tenant_members"] {
        assert!(claimed_anywhere(rel), "no step claims {rel}");
    }
    for step in steps {
        let id = step["id"].as_str().unwrap();
        let statements = match &step["on_deadlock"] {
            serde_json::Value::Array(other) if id.starts_with("api_logs") => other,
            _ => step["statements"].as_array().unwrap(),
        };
        let claimed: BTreeMap<String, String> = step["claims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["relation"].as_str().unwrap().to_string(),
                    format!("{}Lock", k["mode"].as_str().unwrap()),
                )
            })
            .collect();
        let before = oids_of(&mut c, &claimed);
        let mut tx = c.transaction().unwrap();
        for sql in statements {
            tx.batch_execute(sql["sql"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        assert_eq!(held(&mut tx, &before), claimed, "{id}");
        tx.commit().unwrap();
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
    // The negative: attaching a table that brings its own foreign key takes ACCESS EXCLUSIVE on
    // the table it references, which no plan of the runner claims.
    c.batch_execute(
        "CREATE TABLE own_key (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         ALTER TABLE own_key ADD CONSTRAINT own_key_tenant FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE;",
    )
    .unwrap();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("ALTER TABLE messages ATTACH PARTITION own_key FOR VALUES FROM ('2030-01-01') TO ('2030-02-01')")
        .unwrap();
    assert_eq!(
        held(&mut tx, &BTreeMap::new())
            .get("public.tenants")
            .map(String::as_str),
        Some("AccessExclusiveLock")
    );
}
