//! The online restore (issue 3): same end state as the spec's blocking SQL, writes go on while a
//! partition is validated, and every interrupted state converges on the next run.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use meta_chat_migrations::engine::Action;
use meta_chat_migrations::{embedded, migrate};
use postgres::Client;

#[test]
fn the_online_end_state_equals_the_plain_one() {
    let plain = plain_catalog();
    let db = seeded_broken();
    let report = migrate(&db.settings()).unwrap();
    let online = tenant_catalog(&mut db.client());
    assert_eq!(online, plain);
    // 2 tables x (parent + every partition, the months created ahead included) constraints and
    // indexes.
    let tree = count(
        &mut db.client(),
        "SELECT count(*) FROM pg_partition_tree('messages')",
    );
    assert!(tree > 38, "{tree}");
    assert_eq!(online.len() as i64, 4 * tree, "{online:#?}");
    assert!(online.contains(&"constraint messages_2025_03.messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE validated=t parent=messages".to_string()), "{online:#?}");
    assert!(online.contains(&"index \"messages_2025_03_tenantId_idx\" on messages_2025_03 valid=t parent=messages_tenant_id_idx".to_string()), "{online:#?}");
    // The tenant FKs and their indexes, the unique index on conversations, the composite key.
    for id in [
        "messages_tenant_id_idx",
        "messages_tenant_id_fkey",
        "api_logs_tenant_id_idx",
        "api_logs_tenant_id_fkey",
        "conversations_id_tenant_id_key",
        "messages_conversation_tenant_fkey",
    ] {
        assert!(report.op(id).is_some(), "{id} not run");
    }
    let fk = report.op("messages_tenant_id_fkey").unwrap();
    let idx = report.op("messages_tenant_id_idx").unwrap();
    assert_eq!(fk.partitions, 37);
    assert_eq!(fk.count(Action::Validate), 37);
    // From PostgreSQL 18 the constraint goes on the parent NOT VALID in one step; before, on
    // each partition.
    let pg18 = server_version(&mut db.client()) >= 180000;
    assert_eq!(fk.parent_not_valid, pg18);
    assert_eq!(fk.count(Action::AddNotValid), if pg18 { 1 } else { 37 });
    assert_eq!(idx.count(Action::Build), 37);
    assert_eq!(idx.count(Action::Attach), 37);
}

fn wait_for(c: &mut Client, sql: &str, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if count(c, sql) > 0 {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

const INSERT_INTO_MARCH: &str =
    "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
     VALUES ($1, 't1', 'c1', 'user', 'during', '2025-03-15')";

/// Gives messages_2025_03 its NOT VALID constraint (as if a run had got that far) and opens a
/// session holding SHARE UPDATE EXCLUSIVE on it: the runner's VALIDATE of that partition must
/// wait for it, and no insert conflicts with it. Returns the session and its pid.
fn hold_off_the_march_validation(db: &TestDb) -> (postgres::Client, i32) {
    // The partition's index is in place already, so that its validation is the runner's only
    // step there (the index is built first where it is missing, and would wait instead).
    db.client()
        .batch_execute("ALTER TABLE messages_2025_03 ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE NOT VALID;
                        CREATE INDEX messages_tenant_id_idx ON ONLY messages (\"tenantId\");
                        CREATE INDEX \"messages_2025_03_tenantId_idx\" ON messages_2025_03 (\"tenantId\");
                        ALTER INDEX messages_tenant_id_idx ATTACH PARTITION \"messages_2025_03_tenantId_idx\";")
        .unwrap();
    let mut holder = db.client();
    // The pid first: a query inside the transaction would leave a portal holding a snapshot,
    // and concurrent index builds wait for that (the runner says so, but about the build).
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    holder
        .batch_execute("BEGIN; LOCK TABLE messages_2025_03 IN SHARE UPDATE EXCLUSIVE MODE;")
        .unwrap();
    (holder, pid)
}

/// A validation of messages_2025_03 is held waiting behind a session that holds SHARE UPDATE
/// EXCLUSIVE on that partition (which no insert conflicts with). An insert into the partition
/// then completes at once under the runner, and waits under the spec's SQL.
#[test]
fn inserts_do_not_wait_for_a_partition_validation() {
    let db = seeded_broken();
    let (mut holder, _) = hold_off_the_march_validation(&db);
    let mut settings = db.settings();
    settings.jobs = 1;
    let runner = thread::spawn(move || migrate(&settings));

    let mut watcher = db.client();
    let queued = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.relation = 'messages_2025_03'::regclass AND NOT l.granted AND l.mode = 'ShareUpdateExclusiveLock'
          AND a.query LIKE '%VALIDATE CONSTRAINT%'";
    assert!(
        wait_for(&mut watcher, queued, Duration::from_secs(30)),
        "the runner never reached the validation"
    );

    let mut writer = db.client();
    writer
        .batch_execute("SET statement_timeout = '3s'")
        .unwrap();
    let started = Instant::now();
    writer
        .execute(INSERT_INTO_MARCH, &[&"during-online"])
        .expect("insert blocked by the online validation");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    holder.batch_execute("COMMIT").unwrap();
    let report = runner.join().unwrap().unwrap();
    assert_eq!(report.to, Some(embedded::latest()));
    assert_eq!(
        count(
            &mut writer,
            "SELECT count(*) FROM messages WHERE id = 'during-online'"
        ),
        1
    );

    // The negative: the spec's SQL queued behind the same holder blocks the same insert.
    let plain = seeded_broken();
    let mut holder = plain.client();
    holder
        .batch_execute("BEGIN; LOCK TABLE messages_2025_03 IN SHARE UPDATE EXCLUSIVE MODE;")
        .unwrap();
    let url = plain.url.clone();
    let spec_sql = thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&migration_sql(embedded::RESTORE_MESSAGES_TENANT_FK))
    });
    let mut watcher = plain.client();
    assert!(wait_for(
        &mut watcher,
        "SELECT count(*) FROM pg_locks WHERE relation = 'messages_2025_03'::regclass AND NOT granted AND mode = 'ShareRowExclusiveLock'",
        Duration::from_secs(30)
    ));
    let mut writer = plain.client();
    writer
        .batch_execute("SET statement_timeout = '1s'")
        .unwrap();
    let err = writer
        .execute(INSERT_INTO_MARCH, &[&"during-plain"])
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code().code(),
        "57014",
        "the insert should have waited until cancelled"
    );
    holder.batch_execute("COMMIT").unwrap();
    spec_sql.join().unwrap().unwrap();
}

/// Leaves the broken database as an interrupted run could: some partitions NOT VALID, one
/// validated, the parent index ON ONLY with one child attached, one child index INVALID.
fn interrupt_midway(db: &TestDb) {
    let mut c = db.client();
    c.batch_execute(
        "ALTER TABLE messages_2024_01 ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE NOT VALID;
         ALTER TABLE messages_2024_02 ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE NOT VALID;
         ALTER TABLE messages_2024_02 VALIDATE CONSTRAINT messages_tenant_id_fkey;
         CREATE INDEX messages_tenant_id_idx ON ONLY messages (\"tenantId\");
         CREATE INDEX \"messages_2024_03_tenantId_idx\" ON messages_2024_03 (\"tenantId\");
         ALTER INDEX messages_tenant_id_idx ATTACH PARTITION \"messages_2024_03_tenantId_idx\";",
    )
    .unwrap();
    interrupted_build(
        &db.url,
        "messages_2024_04_tenantId_idx",
        "messages_2024_04",
        "\"tenantId\"",
    );
}

#[test]
fn a_run_resumes_from_an_interrupted_one() {
    let plain = plain_catalog();
    let db = seeded_broken();
    interrupt_midway(&db);
    let before = row_counts(&mut db.client());
    let report = migrate(&db.settings()).unwrap();
    assert_eq!(tenant_catalog(&mut db.client()), plain);
    assert_eq!(row_counts(&mut db.client()), before);
    let fk = report.op("messages_tenant_id_fkey").unwrap();
    let idx = report.op("messages_tenant_id_idx").unwrap();
    assert_eq!(
        fk.count(Action::AddNotValid),
        35,
        "two partitions already had the constraint"
    );
    assert_eq!(
        fk.count(Action::Validate),
        36,
        "the validated one is not validated again"
    );
    assert_eq!(idx.count(Action::DropInvalid), 1);
    assert_eq!(
        idx.count(Action::Build),
        36,
        "the attached one is not rebuilt"
    );
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

#[test]
fn the_versioned_sql_alone_finishes_an_interrupted_online_run() {
    let plain = plain_catalog();
    let db = seeded_broken();
    interrupt_midway(&db);
    let mut c = db.client();
    c.batch_execute(&migration_sql(embedded::RESTORE_MESSAGES_TENANT_FK))
        .unwrap();
    c.batch_execute(&migration_sql(embedded::RESTORE_API_LOGS_TENANT_FK))
        .unwrap();
    let out = db.run(&["partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tenant_catalog(&mut c), plain);
}

#[test]
fn adoption_alone_is_resumed_without_validating_again() {
    let db = seeded_broken();
    let mut c = db.client();
    // Every partition validated, the run stopped before the parent adopted them.
    c.batch_execute(
        "DO $$ DECLARE p regclass; BEGIN
           FOR p IN SELECT relid FROM pg_partition_tree('messages') WHERE isleaf LOOP
             EXECUTE format('ALTER TABLE %s ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE CASCADE', p);
           END LOOP; END $$;",
    )
    .unwrap();
    let report = migrate(&db.settings()).unwrap();
    let fk = report.op("messages_tenant_id_fkey").unwrap();
    assert_eq!(fk.count(Action::AddNotValid), 0);
    assert_eq!(fk.count(Action::Validate), 0);
    assert_eq!(fk.count(Action::Adopt), 1);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_constraint WHERE conname = 'messages_tenant_id_fkey' AND conparentid = (SELECT oid FROM pg_constraint WHERE conrelid = 'messages'::regclass AND conname = 'messages_tenant_id_fkey')"),
        count(&mut c, "SELECT count(*) FROM pg_partition_tree('messages') WHERE isleaf")
    );
}

#[test]
fn a_conflicting_constraint_of_the_same_name_is_refused_with_a_fix() {
    let db = seeded_broken();
    db.client()
        .batch_execute("ALTER TABLE messages_2024_05 ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (\"tenantId\") REFERENCES tenants(id) ON DELETE RESTRICT NOT VALID")
        .unwrap();
    let out = db.run(&["migrate", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains("constraint messages_tenant_id_fkey on public.messages_2024_05 is FOREIGN KEY (\"tenantId\") REFERENCES public.tenants(\"id\") ON UPDATE NO ACTION ON DELETE RESTRICT, expected FOREIGN KEY (\"tenantId\") REFERENCES public.tenants(\"id\") ON UPDATE NO ACTION ON DELETE CASCADE"),
        "{line}"
    );
    assert!(line.contains("drop or rename what is in the way"), "{line}");
    // Refused before anything changed: only the constraint the test added is there.
    assert_eq!(
        count(&mut db.client(), "SELECT count(*) FROM pg_constraint WHERE conname IN ('messages_tenant_id_fkey', 'api_logs_tenant_id_fkey', 'messages_conversation_tenant_fkey')"),
        1
    );
    assert_eq!(
        count(&mut db.client(), "SELECT count(*) FROM pg_class WHERE relname IN ('messages_tenant_id_idx', 'api_logs_tenant_id_idx', 'conversations_id_tenant_id_key')"),
        0
    );
}

/// While a validation waits for a lock (it never gives up: it does not block writes), the runner
/// says which pid it waits for.
#[test]
fn a_waiting_validation_names_the_pid_it_waits_for() {
    let db = seeded_broken();
    let (mut holder, pid) = hold_off_the_march_validation(&db);
    let runner = {
        let url = db.url.clone();
        thread::spawn(move || run_bin(&url, &["migrate", "--jobs", "1"]))
    };
    let mut watcher = db.client();
    let queued = "SELECT count(*) FROM pg_locks WHERE relation = 'messages_2025_03'::regclass AND NOT granted";
    if !wait_for(&mut watcher, queued, Duration::from_secs(30)) {
        holder.batch_execute("COMMIT").unwrap();
        panic!(
            "the runner never queued for the lock: {}",
            stderr(&runner.join().unwrap())
        );
    }
    thread::sleep(Duration::from_millis(1800));
    holder.batch_execute("COMMIT").unwrap();
    let out = runner.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("messages_tenant_id_fkey:public.messages_2025_03:validate: waiting")
            && log.contains(&format!("for a lock, held by pids [{pid}]")),
        "{log}"
    );
}

/// From PostgreSQL 18 the runner may leave the parent constraint NOT VALID when interrupted; the
/// versioned SQL alone finishes that too. Before 18 such a state cannot exist: the server
/// refuses NOT VALID on a partitioned parent, which is why the runner works per partition.
#[test]
fn the_versioned_sql_alone_finishes_a_parent_left_not_valid() {
    let db = seeded_broken();
    let mut c = db.client();
    let not_valid_on_parent = c.batch_execute(
        &meta_chat_migrations::embedded::restore_tenant_fk::MESSAGES_TENANT_FK.add_sql(
            &meta_chat_migrations::sql::Relation::new("public", "messages"),
            "public",
            true,
        ),
    );
    if server_version(&mut c) < 180000 {
        let err = not_valid_on_parent.unwrap_err();
        let message = err.as_db_error().unwrap().message().to_string();
        assert!(message.contains("NOT VALID"), "{message}");
        return;
    }
    not_valid_on_parent.unwrap();
    c.batch_execute("ALTER TABLE messages_2024_05 VALIDATE CONSTRAINT messages_tenant_id_fkey")
        .unwrap();
    c.batch_execute(&migration_sql(embedded::RESTORE_MESSAGES_TENANT_FK))
        .unwrap();
    c.batch_execute(&migration_sql(embedded::RESTORE_API_LOGS_TENANT_FK))
        .unwrap();
    let out = db.run(&["partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tenant_catalog(&mut c), plain_catalog());
}

/// A history that claims 20240520120000 over tables that were never partitioned: the restore
/// refuses, saying so, before it changes anything.
#[test]
fn an_unpartitioned_table_is_refused() {
    let db = TestDb::at(embedded::BASELINE);
    let partitioned = embedded::migrations()
        .into_iter()
        .find(|m| m.version() == embedded::PARTITIONED)
        .unwrap();
    db.client()
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES ($1, $2, '2024-05-20T12:00:00Z', $3)",
            &[&partitioned.version(), &partitioned.name(), &partitioned.checksum().to_string()],
        )
        .unwrap();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains(
            "table messages is not in the state the runner expects: it is not partitioned"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(&mut db.client(), "SELECT count(*) FROM pg_constraint WHERE conname IN ('messages_tenant_id_fkey', 'api_logs_tenant_id_fkey')"),
        0
    );
}
