//! What the months the runner creates carry, tried on the shapes production databases have:
//! owners and grants, row-level security, tablespaces, indexes PostgreSQL names its own way. Each
//! test also shows the negative: the state a month made without it is in.

mod common;

use common::months::*;
use common::*;
use postgres::{Client, NoTls};

/// Every table and partition of both monthly trees (and the referenced tables) owned by `owner`.
fn own_everything(c: &mut Client, owner: &str) {
    c.batch_execute(&format!(
        "DO $$ DECLARE r regclass; BEGIN
           FOR r IN SELECT relid FROM pg_partition_tree('messages') UNION ALL SELECT relid FROM pg_partition_tree('api_logs') LOOP
             EXECUTE format('ALTER TABLE %s OWNER TO {owner}', r);
           END LOOP; END $$;
         ALTER TABLE tenants OWNER TO {owner}; ALTER TABLE conversations OWNER TO {owner};
         GRANT CREATE ON SCHEMA public TO {owner};"
    ))
    .unwrap();
}

fn connect_as(db: &TestDb, role: &str) -> Client {
    Client::connect(&with_user(&db.url, role), NoTls).unwrap()
}

/// `grantee=privileges` of a relation's ACL (table level), sorted.
fn grants_of(c: &mut Client, relation: &str) -> Vec<String> {
    c.query(
        "SELECT format('%s=%s', pg_get_userbyid(x.grantee), string_agg(x.privilege_type, ',' ORDER BY x.privilege_type))
           FROM pg_class c, aclexplode(c.relacl) x WHERE c.oid = $1::text::regclass AND x.grantee <> c.relowner
          GROUP BY x.grantee ORDER BY 1",
        &[&relation],
    )
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

/// Whether `role` can dump the messages tables: every lock `pg_dump` takes (ACCESS SHARE on
/// each table, which needs a privilege on it), and `pg_dump` itself where a client as new as the
/// server is installed (the npm servers of the other majors ship none).
fn dumpable_as(db: &TestDb, role: &str) -> Result<(), String> {
    let mut c = connect_as(db, role);
    let mut tx = c.transaction().map_err(|e| e.to_string())?;
    let tables: Vec<String> = tx
        .query(
            "SELECT relid::regclass::text FROM pg_partition_tree('messages') ORDER BY 1",
            &[],
        )
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in &tables {
        tx.batch_execute(&format!("LOCK TABLE {t} IN ACCESS SHARE MODE"))
            .map_err(|e| format!("LOCK TABLE {t}: {e:?}"))?;
    }
    drop(tx);
    let Some(pg_dump) = pg_dump_for(db) else {
        eprintln!("no pg_dump as new as the server: checked the locks it takes only");
        return Ok(());
    };
    let out = std::process::Command::new(pg_dump)
        .args(["--schema-only", "--table", "public.messages*", "-d"])
        .arg(with_user(&db.url, role))
        .output()
        .expect("run pg_dump");
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// A `pg_dump` that can dump this server: the server's own, or Debian's of the same major or newer.
fn pg_dump_for(db: &TestDb) -> Option<std::path::PathBuf> {
    let own = pg_bindir().join("pg_dump");
    if own.exists() {
        return Some(own);
    }
    let v: String = db
        .client()
        .query_one("SELECT current_setting('server_version_num')", &[])
        .unwrap()
        .get(0);
    let major = v.parse::<u32>().unwrap() / 10000;
    (major..=30)
        .map(|m| std::path::PathBuf::from(format!("/usr/lib/postgresql/{m}/bin/pg_dump")))
        .find(|p| p.exists())
}

const NEW_MONTHS: [&str; 5] = ["2027_01", "2027_02", "2027_03", "2027_04", "2027_05"];

#[test]
fn new_months_belong_to_the_parents_owner_and_carry_the_grants_apps_use() {
    let roles = Roles::new(&["owner", "rw", "ro"]);
    let db = latest_without_window();
    let (owner, rw, ro) = (roles.name("owner"), roles.name("rw"), roles.name("ro"));
    let mut c = db.client();
    own_everything(&mut c, &owner);
    c.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA public TO {ro}, {rw};
         GRANT SELECT ON messages TO {ro};
         GRANT SELECT, INSERT ON messages_2026_12 TO {rw};
         GRANT UPDATE (content) ON messages_2026_12 TO {rw};"
    ))
    .unwrap();
    // The runner runs as the superuser.
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for month in NEW_MONTHS {
        let part = format!("messages_{month}");
        assert_eq!(owner_of(&mut c, &part), owner);
        assert_eq!(owner_of(&mut c, &format!("api_logs_{month}")), owner);
        assert_eq!(
            grants_of(&mut c, &part),
            [format!("{ro}=SELECT"), format!("{rw}=INSERT,SELECT")]
        );
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) FROM pg_attribute a, aclexplode(a.attacl) x WHERE a.attrelid = '{part}'::regclass AND a.attname = 'content' AND pg_get_userbyid(x.grantee) = '{rw}' AND x.privilege_type = 'UPDATE'")),
            1,
            "column grants"
        );
    }
    // The owner can change the table and dump it; an application role inserts into a month.
    let mut as_owner = connect_as(&db, &owner);
    as_owner
        .batch_execute(
            "ALTER TABLE messages ADD COLUMN extra int; ALTER TABLE messages DROP COLUMN extra;",
        )
        .unwrap();
    dumpable_as(&db, &owner).unwrap();
    connect_as(&db, &rw)
        .execute("INSERT INTO messages_2027_03 (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('m-rw', 't1', 'c1', 'user', 'x', '2027-03-02')", &[])
        .unwrap();
    // The negative: a month made as the superuser is the superuser's; the owner can no longer
    // change the table or dump it.
    c.batch_execute("CREATE TABLE messages_2031_01 PARTITION OF messages FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')")
        .unwrap();
    let err = as_owner
        .batch_execute("ALTER TABLE messages ADD COLUMN extra int")
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "42501");
    assert!(
        e.message()
            .contains("must be owner of table messages_2031_01"),
        "{e:?}"
    );
    let refused = dumpable_as(&db, &owner).unwrap_err();
    assert!(refused.contains("messages_2031_01"), "{refused}");
}

/// Row-level security on every month (enabled, forced, a tenant policy and a membership policy
/// that refers to its own partition's column).
fn protect_months(c: &mut Client, reader: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE memberships (tenant text, member text);
         INSERT INTO memberships SELECT 't' || g, '{reader}' FROM generate_series(1, 10) g;
         GRANT USAGE ON SCHEMA public TO {reader}; GRANT SELECT ON memberships TO {reader};
         DO $$ DECLARE p text; BEGIN
           FOR p IN SELECT relid::regclass::text FROM pg_partition_tree('messages') WHERE level = 1 LOOP
             EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p);
             EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', p);
             EXECUTE format('CREATE POLICY tenant_isolation ON %s TO {reader} USING (\"tenantId\" = current_setting(''app.tenant'', true))', p);
             EXECUTE format('CREATE POLICY members_only ON %1$s AS RESTRICTIVE FOR SELECT TO {reader} USING (EXISTS (SELECT 1 FROM memberships m WHERE m.tenant = %1$s.\"tenantId\" AND m.member = current_user))', p);
             EXECUTE format('GRANT SELECT ON %s TO {reader}', p);
           END LOOP; END $$;"
    ))
    .unwrap();
}

fn visible_to(db: &TestDb, role: &str, tenant: &str, relation: &str) -> i64 {
    let mut r = connect_as(db, role);
    r.batch_execute(&format!("SET app.tenant = '{tenant}'"))
        .unwrap();
    count(&mut r, &format!("SELECT count(*) FROM {relation}"))
}

#[test]
fn new_months_carry_row_level_security_and_moved_rows_stay_with_their_tenant() {
    let roles = Roles::new(&["reader"]);
    let db = with_rows_in_default();
    let reader = roles.name("reader");
    let mut c = db.client();
    protect_months(&mut c, &reader);
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t3 = count(
        &mut c,
        "SELECT count(*) FROM messages_2027_01 WHERE \"tenantId\" = 't3'",
    );
    assert!(t3 > 0 && t3 < 892, "{t3}");
    assert_eq!(visible_to(&db, &reader, "t3", "messages_2027_01"), t3);
    assert_eq!(visible_to(&db, &reader, "nobody", "messages_2027_01"), 0);
    for month in NEW_MONTHS {
        let part = format!("messages_{month}");
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) FROM pg_class WHERE oid = '{part}'::regclass AND relrowsecurity AND relforcerowsecurity")),
            1
        );
        let policies: Vec<String> = c
            .query(
                "SELECT polname || ': ' || pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = $1::text::regclass ORDER BY polname",
                &[&part],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(policies.len(), 2, "{policies:?}");
        assert!(
            policies[0].contains(&format!("{part}.\"tenantId\"")),
            "{policies:?}"
        );
    }
    // The negative: a month without the protection shows every tenant's rows.
    c.batch_execute(&format!(
        "CREATE TABLE messages_2031_01 PARTITION OF messages FOR VALUES FROM ('2031-01-01') TO ('2031-02-01');
         GRANT SELECT ON messages_2031_01 TO {reader};
         INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           VALUES ('a', 't1', 'c1', 'user', 'x', '2031-01-02'), ('b', 't2', 'c2', 'user', 'x', '2031-01-02');"
    ))
    .unwrap();
    assert_eq!(visible_to(&db, &reader, "t3", "messages_2031_01"), 2);
}

/// Tables owned by an application role, every month (DEFAULT too) with forced row-level security
/// and policies for another role only, so that the owner itself sees none of their rows.
fn owned_and_forced() -> (Roles, TestDb, String) {
    let roles = Roles::new(&["owner", "reader"]);
    let db = with_rows_in_default();
    let (owner, reader) = (roles.name("owner"), roles.name("reader"));
    let mut c = db.client();
    protect_months(&mut c, &reader);
    own_everything(&mut c, &owner);
    // The negative: the owner sees none of DEFAULT's rows, which a move as it would leave.
    let mut as_owner = connect_as(&db, &owner);
    assert_eq!(
        count(&mut as_owner, "SELECT count(*) FROM messages_default"),
        0
    );
    (roles, db, owner)
}

/// A superuser's run moves every row of the owner's forced, policy-protected DEFAULT (as itself,
/// with row_security off) and gives the months the owner and the protection.
#[test]
fn a_forced_default_of_an_application_role_gives_up_every_row_to_a_superusers_run() {
    let (_roles, db, owner) = owned_and_forced();
    let mut c = db.client();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_02"), 608);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 7);
    assert_eq!(owner_of(&mut c, "messages_2027_01"), owner);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_class WHERE oid = 'messages_2027_01'::regclass AND relrowsecurity AND relforcerowsecurity"),
        1
    );
}

/// The owner's own run cannot see the rows to move: refused up front, naming the cause and what
/// to run instead; nothing changes.
#[test]
fn a_run_that_row_level_security_blinds_is_refused_before_anything_is_made() {
    let (_roles, db, owner) = owned_and_forced();
    let mut c = db.client();
    let before = partition_names(&mut c, "messages");
    let out = run_bin(
        &with_user(&db.url, &owner),
        &["partitions", "--as-of", AS_OF],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("row-level security on the DEFAULT partition of public.messages hides rows from {owner}")),
        "{line}"
    );
    assert!(
        line.contains("run partitions as a superuser or a role with BYPASSRLS"),
        "{line}"
    );
    assert_eq!(partition_names(&mut c, "messages"), before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
}

/// The tester's shape: tables owned by an application role, the newest month alone with forced
/// row-level security and a policy for reads only. The month carries it over; the rows moved
/// into it are written as a superuser's run (bypassing it), all of them; a run as the owner,
/// whose writes the policy would refuse, is refused up front instead of failing every time.
#[test]
fn rows_moved_into_a_month_with_forced_rls_are_written_by_a_role_that_bypasses_it() {
    let roles = Roles::new(&["owner"]);
    let owner = roles.name("owner");
    for as_owner in [false, true] {
        let db = with_rows_in_default();
        let mut c = db.client();
        own_everything(&mut c, &owner);
        c.batch_execute(
            "ALTER TABLE messages_2026_12 ENABLE ROW LEVEL SECURITY;
             ALTER TABLE messages_2026_12 FORCE ROW LEVEL SECURITY;
             CREATE POLICY tenant_read ON messages_2026_12 FOR SELECT USING (\"tenantId\" = current_setting('app.tenant', true));",
        )
        .unwrap();
        let before = partition_names(&mut c, "messages");
        let url = if as_owner {
            with_user(&db.url, &owner)
        } else {
            db.url.clone()
        };
        let out = run_bin(&url, &["partitions", "--as-of", AS_OF]);
        if as_owner {
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            assert!(
                stderr(&out).contains("would be written into tables with FORCE ROW LEVEL SECURITY"),
                "{}",
                stderr(&out)
            );
            // The months to move into are not made; the empty ones after them are.
            let after = partition_names(&mut c, "messages");
            assert!(
                !after.contains(&"messages_2027_01".to_string()),
                "{after:?}"
            );
            assert!(
                !after.contains(&"messages_2027_02".to_string()),
                "{after:?}"
            );
            assert!(after.contains(&"messages_2027_03".to_string()), "{after:?}");
            assert_eq!(after.len(), before.len() + 3);
            assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
        assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_02"), 608);
        assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 7);
        assert_eq!(
            count(
                &mut c,
                "SELECT count(*) FROM pg_policy WHERE polrelid = 'messages_2027_01'::regclass"
            ),
            1
        );
    }
}

#[test]
fn a_policy_that_cannot_be_carried_over_refuses_its_months_saying_why() {
    let db = latest_without_window();
    let mut c = db.client();
    c.batch_execute(
        "ALTER TABLE messages_2026_12 ENABLE ROW LEVEL SECURITY;
         CREATE POLICY same_month ON messages_2026_12 USING (EXISTS (SELECT 1 FROM messages_2026_12 q WHERE q.id = messages_2026_12.id));",
    )
    .unwrap();
    let before = count(
        &mut c,
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'messages_2027%'",
    );
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(
            "policy same_month of public.messages_2026_12 refers to that partition itself"
        ),
        "{line}"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'messages_2027%'"
        ),
        before,
        "no month of messages was created"
    );
    assert!(partition_names(&mut c, "api_logs").contains(&"api_logs_2027_05".to_string()));
}

fn tablespace_of(c: &mut Client, relation: &str) -> String {
    c.query_one(
        "SELECT coalesce(t.spcname::text, '-') FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = $1::text::regclass",
        &[&relation],
    )
    .unwrap()
    .get(0)
}

/// The child of `parent_index` on `partition`.
fn child_index(c: &mut Client, parent_index: &str, partition: &str) -> String {
    c.query_one(
        "SELECT x.indexrelid::regclass::text FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid
          WHERE i.inhparent = $1::text::regclass AND x.indrelid = $2::text::regclass",
        &[&parent_index, &partition],
    )
    .unwrap()
    .get(0)
}

#[test]
fn new_months_go_where_partition_of_would_put_them() {
    let spaces = Tablespaces::new(&["tables", "indexes"]);
    let db = latest_without_window();
    let (tables, indexes) = (spaces.name("tables"), spaces.name("indexes"));
    let mut c = db.client();
    c.batch_execute(&format!(
        "ALTER TABLE messages SET TABLESPACE {tables}; ALTER INDEX messages_tenant_id_idx SET TABLESPACE {indexes};"
    ))
    .unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Where PARTITION OF puts a month: the reference.
    c.batch_execute("CREATE TABLE messages_2031_01 PARTITION OF messages FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')")
        .unwrap();
    assert_eq!(tablespace_of(&mut c, "messages_2031_01"), tables);
    let reference = child_index(&mut c, "messages_tenant_id_idx", "messages_2031_01");
    assert_eq!(tablespace_of(&mut c, &reference), indexes);
    for month in NEW_MONTHS {
        let part = format!("messages_{month}");
        assert_eq!(tablespace_of(&mut c, &part), tables, "{part}");
        let idx = child_index(&mut c, "messages_tenant_id_idx", &part);
        assert_eq!(tablespace_of(&mut c, &idx), indexes, "{idx}");
        assert_eq!(tablespace_of(&mut c, &format!("api_logs_{month}")), "-");
    }
    // The negative: a standalone table made without saying where goes to the default.
    c.batch_execute("CREATE TABLE plain_copy (LIKE messages)")
        .unwrap();
    assert_eq!(tablespace_of(&mut c, "plain_copy"), "-");
}

/// The index names of `partition`, its own name replaced by `<month>`, by parent index.
fn index_names(c: &mut Client, partition: &str) -> Vec<String> {
    c.query(
        "SELECT format('%s -> %s', i.inhparent::regclass, replace(x.indexrelid::regclass::text, $1, '<month>'))
           FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid
          WHERE x.indrelid = $1::text::regclass AND x.indisvalid ORDER BY 1",
        &[&partition],
    )
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn index_names_are_the_ones_postgresql_gives_a_partition() {
    let db = latest_without_window();
    let mut c = db.client();
    c.batch_execute(
        "CREATE INDEX messages_tenant_with_content ON messages (\"tenantId\") INCLUDE (content);
         CREATE INDEX ON messages (lower(content), upper(role));
         CREATE INDEX \"messages by role USING btree\" ON messages USING btree (role DESC NULLS LAST) WHERE role <> 'system';",
    )
    .unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    c.batch_execute("CREATE TABLE messages_2031_01 PARTITION OF messages FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')")
        .unwrap();
    let reference = index_names(&mut c, "messages_2031_01");
    let parent_indexes = count(
        &mut c,
        "SELECT count(*) FROM pg_index WHERE indrelid = 'messages'::regclass",
    );
    assert_eq!(reference.len() as i64, parent_indexes, "{reference:?}");
    for expected in [
        "messages_tenant_with_content -> <month>_tenantId_content_idx",
        "messages_lower_upper_idx -> <month>_lower_upper_idx",
        "\"messages by role USING btree\" -> <month>_role_idx",
        "messages_tenant_id_idx -> \"<month>_tenantId_idx\"",
    ] {
        assert!(
            reference
                .iter()
                .any(|r| r.replace('"', "") == expected.replace('"', "")),
            "{expected} not in {reference:?}"
        );
    }
    for month in NEW_MONTHS {
        assert_eq!(
            index_names(&mut c, &format!("messages_{month}")),
            reference,
            "{month}"
        );
    }
    assert_eq!(db.run(&["verify"]).status.code(), Some(0));
}

const INSERT: &str = "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ($1, 't1', 'c1', 'user', 'x', $2::text::timestamptz)";

/// A writer of tenants in an open transaction: the attach clones the keys, which needs SHARE ROW
/// EXCLUSIVE on tenants, and gives up.
fn hold_tenants(db: &TestDb) -> Client {
    let mut holder = db.client();
    holder
        .batch_execute("BEGIN; UPDATE tenants SET name = name WHERE id = 't1'")
        .unwrap();
    holder
}

fn helper_checks(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'mcm\\_excludes%'",
    )
}

/// On a small DEFAULT the exclusion CHECK lives only inside the attach's transaction: an attach
/// that fails rolls it back, the month's standalone table is dropped, and the application's
/// inserts of that month go on. One left anyway (a killed run of an earlier version) is the
/// negative: it refuses the month's inserts; `check` names it and exits 5; the next run drops it.
#[test]
fn a_failed_attach_leaves_no_helper_check_on_default() {
    let db = latest_without_window();
    let mut c = db.client();
    let mut holder = hold_tenants(&db);
    let out = partitions(&db, &["--lock-timeout", "200ms", "--lock-retries", "1"]);
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("public.messages 2027-01:")
            && line.contains("attach-partition")
            && line.contains("the 4 month(s) after it were not attempted"),
        "{line}"
    );
    assert!(
        stderr(&out).contains(
            "messages_2027_01:public.messages_2027_01:drop-leftover: done, so that nothing of the failed month is left"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(helper_checks(&mut c), 0);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_class WHERE relname = 'messages_2027_01'"
        ),
        0
    );
    c.execute(INSERT, &[&"jan", &"2027-01-15"]).unwrap();
    c.batch_execute("ALTER TABLE messages_default ADD CONSTRAINT mcm_excludes_2027_02 CHECK (NOT (\"createdAt\" >= '2027-02-01 00:00:00+00' AND \"createdAt\" < '2027-03-01 00:00:00+00')) NOT VALID")
        .unwrap();
    let err = c.execute(INSERT, &[&"feb", &"2027-02-15"]).unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(
        (e.code().code(), e.constraint()),
        ("23514", Some("mcm_excludes_2027_02"))
    );
    let out = db.run(&["check", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("helper CHECK mcm_excludes_2027_02 on public.messages_default was left by an interrupted run"),
        "{}",
        stdout(&out)
    );
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'mcm%'"
        ),
        0
    );
    c.execute(INSERT, &[&"feb", &"2027-02-15"]).unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_2027_01 WHERE id = 'jan'"
        ),
        1
    );
}

/// On a DEFAULT above 8 MiB the exclusion CHECK is added and validated in steps of their own, so
/// a failed attach takes it off again; when a long reader of DEFAULT keeps the clean-up from its
/// lock, the run retries it at its end, then says what it left, `check` reports it, and the
/// next run drops it.
#[test]
fn a_failed_attach_on_a_large_default_takes_its_check_off_or_says_what_is_left() {
    let db = latest_without_window();
    let mut c = db.client();
    pad_default(&mut c);
    let args = ["--lock-timeout", "200ms", "--lock-retries", "1"];
    // Clean-up done.
    let mut holder = hold_tenants(&db);
    let out = partitions(&db, &args);
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("messages_2027_01:public.messages_default:drop-checks: done, so that nothing of the failed month is left"),
        "{err}"
    );
    assert_eq!(helper_checks(&mut c), 0);
    // A reader of DEFAULT from the moment the CHECK is validated.
    let mut holder = hold_tenants(&db);
    let url = db.url.clone();
    let runner = std::thread::spawn(move || {
        run_bin(
            &url,
            &[
                "partitions",
                "--as-of",
                AS_OF,
                "--lock-timeout",
                "200ms",
                "--lock-retries",
                "1",
            ],
        )
    });
    let validated = "SELECT count(*) FROM pg_constraint WHERE conname = 'mcm_excludes_2027_01' AND convalidated";
    assert!(eventually(std::time::Duration::from_secs(60), || count(
        &mut c, validated
    ) == 1));
    let mut reader = db.client();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM ONLY messages_default")
        .unwrap();
    let out = runner.join().unwrap();
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "messages_2027_01:public.messages_default:drop-checks: could not be undone ("
        ) && stderr(&out).contains("the next run drops it, and check reports it until then"),
        "{}",
        stderr(&out)
    );
    assert_eq!(helper_checks(&mut c), 1);
    let check = db.run(&["check", "--as-of", AS_OF]);
    assert_eq!(check.status.code(), Some(5), "{}", stdout(&check));
    reader.batch_execute("COMMIT").unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(helper_checks(&mut c), 0);
    c.execute(INSERT, &[&"jan", &"2027-01-15"]).unwrap();
}

/// Only a month missing between the current one and `--premake` ahead matters to `check`, and
/// it does even when a later month exists.
#[test]
fn check_exits_5_for_a_month_missing_inside_the_window() {
    let db = latest_without_window();
    assert_eq!(partitions(&db, &[]).status.code(), Some(0));
    let out = db.run(&["check", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    db.client()
        .batch_execute(
            "ALTER TABLE messages DETACH PARTITION messages_2027_02; DROP TABLE messages_2027_02;",
        )
        .unwrap();
    let out = db.run(&["check", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(
            "public.messages has no partition for 2027-02 (within --premake 6 of 2026-11)"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("6 month(s) ahead of 2026-11"),
        "{}",
        stdout(&out)
    );
}

/// `migrate --dry-run` shows the partition work `migrate` does at its end.
#[test]
fn migrate_dry_run_shows_the_months_it_would_create_and_what_it_would_refuse() {
    let db = with_rows_in_default();
    let out = db.run(&["migrate", "--dry-run", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for part in [
        "nothing to apply",
        "then the monthly partitions:",
        "create public.messages_2027_01 for 2027-01",
        "taking 892 rows from DEFAULT",
        "move-and-attach: ACCESS EXCLUSIVE on public.messages, public.messages_default and public.messages_2027_01",
        "left in DEFAULT: 7 rows of public.messages 2023-06",
    ] {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
    let out = db.run(&[
        "migrate",
        "--dry-run",
        "--as-of",
        AS_OF,
        "--max-moved-rows",
        "100",
    ]);
    for part in [
        "would not be created: public.messages 2027-01, 2027-02: moving 1500 rows out of the DEFAULT partition of public.messages (2027-01: 892 rows, 2027-02: 608 rows) would make every write into it wait for about ",
        "would not be created: public.api_logs 2027-02: moving 300 rows",
        " ms (and every read too", "above --max-moved-rows 100, so those months are not created",
    ] {
        assert!(stdout(&out).contains(part), "missing {part:?} in {}", stdout(&out));
    }
    let out = db.run(&["migrate", "--dry-run", "--json", "--as-of", AS_OF]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["partitions"]["months"].as_array().unwrap().len(), 10);
    // Before the monthly tables exist, it says when they are planned.
    let fresh = TestDb::new();
    let out = fresh.run(&["migrate", "--dry-run"]);
    assert!(
        stdout(&out)
            .contains("monthly partitions not planned: the monthly tables are not partitioned yet"),
        "{}",
        stdout(&out)
    );
}

/// A month made by hand without row-level security, newer than the protected ones, does not
/// strip the months after it: they carry what the newest month with row-level security has.
#[test]
fn a_bare_month_made_by_hand_does_not_strip_the_months_after_it() {
    let roles = Roles::new(&["reader"]);
    let db = latest_without_window();
    let reader = roles.name("reader");
    let mut c = db.client();
    protect_months(&mut c, &reader);
    c.batch_execute("CREATE TABLE messages_2027_01 PARTITION OF messages FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-02-01 00:00+00')")
        .unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let protected = |c: &mut Client, part: &str| {
        count(c, &format!("SELECT count(*) FROM pg_class WHERE oid = '{part}'::regclass AND relrowsecurity AND relforcerowsecurity"))
            + count(c, &format!("SELECT count(*) FROM pg_policy WHERE polrelid = '{part}'::regclass"))
    };
    for month in ["2027_02", "2027_03", "2027_04", "2027_05"] {
        assert_eq!(
            protected(&mut c, &format!("messages_{month}")),
            3,
            "{month}"
        );
    }
    // The negative: the bare month itself has none of it.
    assert_eq!(protected(&mut c, "messages_2027_01"), 0);
}

/// What the table's owner, as whom the months are made, may not do refuses that table's months
/// before anything is made, saying which grant is missing; the other table goes on.
#[test]
fn what_the_owner_may_not_do_refuses_its_months_up_front_saying_which_grant() {
    let roles = Roles::new(&["owner"]);
    let db = with_rows_in_default();
    let owner = roles.name("owner");
    let mut c = db.client();
    own_everything(&mut c, &owner);
    // PUBLIC too: before PostgreSQL 15 every role may create in schema public.
    c.batch_execute(&format!(
        "REVOKE CREATE ON SCHEMA public FROM {owner}, PUBLIC"
    ))
    .unwrap();
    let before = partition_names(&mut c, "messages");
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("{owner}, the owner of public.messages, may not create tables in schema public, and its months are made as {owner}: GRANT CREATE ON SCHEMA public TO {owner}")),
        "{line}"
    );
    assert_eq!(partition_names(&mut c, "messages"), before);
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
    // Moves through a publication of the root need a temporary table.
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {owner};
         REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC;
         CREATE PUBLICATION chat FOR TABLE messages WITH (publish_via_partition_root = true);",
        db.name
    ))
    .unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("public.messages 2027-01: 892 rows of 2027-01 are in public.messages_default, but moving them is refused: needs a temporary table (a publication carries the table through its root), which {owner} may not create: GRANT TEMPORARY ON DATABASE to it")),
        "{line}"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_default"), 1507);
    c.batch_execute(&format!(
        "GRANT TEMPORARY ON DATABASE {} TO {owner}",
        db.name
    ))
    .unwrap();
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count(&mut c, "SELECT count(*) FROM messages_2027_01"), 892);
    assert_eq!(owner_of(&mut c, "messages_2027_01"), owner);
}

/// A table an interrupted run left whose rows row-level security hides from its owner (FORCE,
/// a policy that shows nothing) is not taken for empty: the runner, run as that owner, keeps it
/// and its row, and says so.
#[test]
fn a_leftover_whose_rows_security_hides_is_kept_with_its_rows() {
    let roles = Roles::new(&["owner"]);
    let db = latest_without_window();
    let owner = roles.name("owner");
    let mut c = db.client();
    own_everything(&mut c, &owner);
    c.batch_execute(&format!(
        "CREATE TABLE messages_2027_03 (LIKE messages);
         ALTER TABLE messages_2027_03 ADD CONSTRAINT mcm_month_bound CHECK (\"createdAt\" >= '2027-03-01 00:00:00+00' AND \"createdAt\" < '2027-04-01 00:00:00+00');
         INSERT INTO messages_2027_03 (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('hidden', 't1', 'c1', 'user', 'x', '2027-03-03');
         ALTER TABLE messages_2027_03 OWNER TO {owner};
         ALTER TABLE messages_2027_03 ENABLE ROW LEVEL SECURITY; ALTER TABLE messages_2027_03 FORCE ROW LEVEL SECURITY;
         CREATE POLICY nothing ON messages_2027_03 USING (false);"
    ))
    .unwrap();
    let mut as_owner = connect_as(&db, &owner);
    assert_eq!(
        count(&mut as_owner, "SELECT count(*) FROM messages_2027_03"),
        0,
        "hidden from its owner"
    );
    let out = run_bin(
        &with_user(&db.url, &owner),
        &["partitions", "--as-of", AS_OF],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("public.messages 2027-03: messages_2027_03:public.messages_2027_03:drop-leftover: SQLSTATE P0001: public.messages_2027_03 holds rows, written into it after the run that made it stopped: move them into public.messages, or drop it"),
        "{line}"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_2027_03 WHERE id = 'hidden'"
        ),
        1
    );
    assert!(partition_names(&mut c, "messages").contains(&"messages_2027_02".into()));
}
