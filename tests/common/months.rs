//! Helpers for the tests of the monthly partitions: a database whose window ran out, with rows
//! in DEFAULT, and snapshots of the catalog and of every row to compare runs with.

use postgres::Client;

use super::*;

/// The day the deterministic tests run as: the partitioning migration's window ends at 2026-12.
pub const AS_OF: &str = "2026-11-28";

pub fn current_month(c: &mut Client) -> String {
    c.query_one(
        "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC'), 'YYYY-MM')",
        &[],
    )
    .unwrap()
    .get(0)
}

pub fn add_months(m: &str, n: i32) -> String {
    let (y, mo) = m.split_once('-').unwrap();
    let i = y.parse::<i32>().unwrap() * 12 + mo.parse::<i32>().unwrap() - 1 + n;
    format!("{:04}-{:02}", i / 12, i % 12 + 1)
}

/// The names of `table`'s partitions, ordered by bound.
pub fn partition_names(c: &mut Client, table: &str) -> Vec<String> {
    partitions_of(c, table)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// Each partition of `table`: (name, bound), ordered by bound.
pub fn partitions_of(c: &mut Client, table: &str) -> Vec<(String, String)> {
    c.query(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = $1::text::regclass ORDER BY c.relname",
        &[&table],
    )
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Everything about the partitions that a run could leave different: relations, every
/// constraint (validity, parent) and index (validity, parent) of the monthly tables' trees, and
/// the bounds.
pub fn snapshot(c: &mut Client) -> Vec<String> {
    c.query(
        "WITH t AS (SELECT relid FROM pg_partition_tree('messages') UNION ALL SELECT relid FROM pg_partition_tree('api_logs'))
         SELECT format('rel %s %s', c.oid::regclass, coalesce(pg_get_expr(c.relpartbound, c.oid), '')) FROM pg_class c WHERE c.oid IN (SELECT relid FROM t)
         UNION ALL
         SELECT format('con %s.%s %s valid=%s parent=%s', k.conrelid::regclass, k.conname, k.contype, k.convalidated, k.conparentid <> 0)
           FROM pg_constraint k WHERE k.conrelid IN (SELECT relid FROM t)
         UNION ALL
         SELECT format('idx %s on %s valid=%s parent=%s', x.indexrelid::regclass, x.indrelid::regclass, x.indisvalid,
                       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = x.indexrelid))
           FROM pg_index x WHERE x.indrelid IN (SELECT relid FROM t)
         UNION ALL
         SELECT format('rel %s standalone', c.relname) FROM pg_class c WHERE c.relname ~ '^(messages|api_logs)_[0-9]{4}_[0-9]{2}$' AND NOT c.relispartition
         ORDER BY 1",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

/// Asserts two snapshots are equal, printing only what differs.
pub fn assert_same(left: &[String], right: &[String], context: &str) {
    let only_left: Vec<&String> = left.iter().filter(|l| !right.contains(l)).collect();
    let only_right: Vec<&String> = right.iter().filter(|r| !left.contains(r)).collect();
    assert!(
        only_left.is_empty() && only_right.is_empty(),
        "{context}: only in the first: {only_left:?}; only in the second: {only_right:?}"
    );
}

/// A fingerprint of every row of both tables.
pub fn rows(c: &mut Client) -> (i64, String, i64, String) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM messages), (SELECT md5(string_agg(m::text, ',' ORDER BY id)) FROM messages m),
                    (SELECT count(*) FROM api_logs), (SELECT md5(string_agg(l::text, ',' ORDER BY id)) FROM api_logs l)",
            &[],
        )
        .unwrap();
    (
        r.get(0),
        r.get::<_, Option<String>>(1).unwrap_or_default(),
        r.get(2),
        r.get::<_, Option<String>>(3).unwrap_or_default(),
    )
}

/// A database at the latest version whose window ends at 2026-12 (as the partitioning migration
/// left it), with data.
pub fn latest_without_window() -> TestDb {
    let db = TestDb::new();
    let out = db.run(&["migrate", "--skip-partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    seed(&mut db.client(), 10, 2000);
    db
}

pub fn partitions(db: &TestDb, args: &[&str]) -> std::process::Output {
    let mut all = vec!["partitions", "--as-of", AS_OF];
    all.extend_from_slice(args);
    db.run(&all)
}

/// Rows in DEFAULT for 2027-01 and 2027-02 (a window that ran out) and for 2023-06 (before the
/// first partition).
pub fn with_rows_in_default() -> TestDb {
    let db = latest_without_window();
    add_rows_in_default(&mut db.client());
    db
}

/// 1500 messages from 2027-01-01 every 50 minutes (892 of 2027-01, 608 of 2027-02), 7 of
/// 2023-06 and 300 api_logs of 2027-02, all in DEFAULT on a window that ends at 2026-12.
pub fn add_rows_in_default(c: &mut Client) {
    c.batch_execute(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'late-' || g, 't' || (1 + g % 10), 'c' || (1 + g % 10), 'user', 'in default',
                  timestamptz '2027-01-01 00:00+00' + g * interval '50 minutes'
             FROM generate_series(1, 1500) g;
         INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'old-' || g, 't1', 'c1', 'user', 'before the first month', timestamptz '2023-06-10 00:00+00' + g * interval '1 hour'
             FROM generate_series(1, 7) g;
         INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
           SELECT 'late-' || g, 't2', 'GET', '/', 200, 1, timestamptz '2027-02-01 00:00+00' + g * interval '1 hour'
             FROM generate_series(1, 300) g;",
    )
    .unwrap();
}

/// 20000 rows of 2023-06 (500 bytes each) into messages' DEFAULT, outside the window: a
/// DEFAULT above the 8 MiB up to which a month's exclusion CHECK is validated inside its attach,
/// so that it takes steps of its own.
pub fn pad_default(c: &mut Client) {
    c.batch_execute(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'pad-' || g, 't1', 'c1', 'user', repeat('x', 500), timestamptz '2023-06-01 00:00+00' + g * interval '1 second'
             FROM generate_series(1, 20000) g",
    )
    .unwrap();
}

/// Roles made for one test, named `<prefix>_<name>`; dropped when this goes out of scope
/// (declare it before the database that uses them, so that the database is dropped first).
pub struct Roles {
    prefix: String,
    names: Vec<String>,
}

impl Roles {
    pub fn new(names: &[&str]) -> Roles {
        let prefix = format!("mcm_r{:06x}", fastrand::u32(..0xff_ffff));
        let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
        for n in names {
            admin
                .batch_execute(&format!("CREATE ROLE {prefix}_{n} LOGIN"))
                .unwrap();
        }
        Roles {
            prefix,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    pub fn name(&self, n: &str) -> String {
        format!("{}_{n}", self.prefix)
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            for n in &self.names {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}_{n}", self.prefix));
            }
        }
    }
}

/// Tablespaces made for one test in directories of their own; dropped (with the directories)
/// when this goes out of scope (declare it before the database that uses them).
pub struct Tablespaces {
    prefix: String,
    names: Vec<String>,
    dir: PathBuf,
}

impl Tablespaces {
    pub fn new(names: &[&str]) -> Tablespaces {
        let prefix = format!("mcm_ts{:06x}", fastrand::u32(..0xff_ffff));
        let dir = std::env::temp_dir().join(&prefix);
        let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
        for n in names {
            let d = dir.join(n);
            std::fs::create_dir_all(&d).unwrap();
            let _ = Command::new("chown").arg("postgres").arg(&d).status();
            admin
                .batch_execute(&format!(
                    "CREATE TABLESPACE {prefix}_{n} LOCATION '{}'",
                    d.display()
                ))
                .unwrap();
        }
        Tablespaces {
            prefix,
            names: names.iter().map(|n| n.to_string()).collect(),
            dir,
        }
    }

    pub fn name(&self, n: &str) -> String {
        format!("{}_{n}", self.prefix)
    }
}

impl Drop for Tablespaces {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            for n in &self.names {
                let _ =
                    admin.batch_execute(&format!("DROP TABLESPACE IF EXISTS {}_{n}", self.prefix));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The owner of a relation.
pub fn owner_of(c: &mut Client, relation: &str) -> String {
    c.query_one(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1::text::regclass",
        &[&relation],
    )
    .unwrap()
    .get(0)
}
