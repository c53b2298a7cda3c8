//! Test harness: every test gets a database of its own on the real PostgreSQL, created here and
//! dropped (`WITH (FORCE)`) when the [`TestDb`] goes out of scope, so tests run in parallel and
//! never see each other's data. The server is `TEST_DATABASE_URL`'s (default: the local one).
#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meta_chat_migrations::{embedded, Settings};
use postgres::{Client, NoTls};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// The TCP port of the test server.
pub fn server_port() -> u16 {
    let config: postgres::Config = admin_url().parse().expect("TEST_DATABASE_URL");
    config.get_ports().first().copied().unwrap_or(5432)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestDb {
    pub name: String,
    pub url: String,
    /// A role created for this database (dropped with it), if any.
    pub owner: Option<String>,
}

impl TestDb {
    /// A new, empty database.
    pub fn new() -> TestDb {
        let name = format!(
            "mcm_test_{}_{}_{:06x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..0xff_ffff)
        );
        let mut admin = Client::connect(&admin_url(), NoTls).expect("connect to the test server");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let url = with_dbname(&admin_url(), &name);
        TestDb {
            name,
            url,
            owner: None,
        }
    }

    /// A new database owned by a new role that is not a superuser, and a URL that connects as
    /// that role (trust authentication).
    pub fn owned_by_new_role() -> TestDb {
        let mut db = TestDb::new();
        let role = format!("{}_owner", db.name);
        let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; ALTER DATABASE {} OWNER TO {role};",
                db.name
            ))
            .unwrap();
        db.url = with_user(&db.url, &role);
        db.owner = Some(role);
        db
    }

    /// A new database migrated to `version` by the runner.
    pub fn at(version: i64) -> TestDb {
        let db = TestDb::new();
        let mut s = db.settings();
        s.target = Some(version);
        meta_chat_migrations::migrate(&s).expect("migrate test database");
        db
    }

    /// A new database at the broken state real deployments are in.
    pub fn broken() -> TestDb {
        TestDb::at(embedded::PARTITIONED)
    }

    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(&self.url);
        s.connect_wait = Duration::from_secs(10);
        s
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to test database")
    }

    /// Runs the binary against this database with `args` after the global flags.
    pub fn run(&self, args: &[&str]) -> Output {
        run_bin(&self.url, args)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
            if let Some(role) = &self.owner {
                let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
            }
        }
    }
}

/// Replaces the user (and drops any password) of a postgres:// URL.
pub fn with_user(url: &str, user: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let host_part = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
    format!("{}{user}@{host_part}", &url[..scheme_end])
}

/// Replaces the database name of a postgres:// URL.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{dbname}{query}")
}

pub fn run_bin(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meta-chat-migrate"))
        .arg("--database-url")
        .arg(url)
        .arg("--wait")
        .arg("10s")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run meta-chat-migrate")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The last line of stderr: where the runner prints its one error line.
pub fn error_line(o: &Output) -> String {
    stderr(o)
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or("")
        .to_string()
}

/// Tenants t1..tN, one conversation per tenant, `messages` messages spread over 33 months
/// (2024-01 .. 2026-09) and `messages / 4` api_logs, a fifth of them with no tenant.
pub fn seed(client: &mut Client, tenants: i32, messages: i32) {
    client
        .batch_execute(&format!(
            "INSERT INTO tenants (id, name) SELECT 't' || g, 'tenant ' || g FROM generate_series(1, {tenants}) g;
             INSERT INTO conversations (id, \"tenantId\") SELECT 'c' || g, 't' || g FROM generate_series(1, {tenants}) g;
             INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
               SELECT 'm' || g, 't' || (1 + g % {tenants}), 'c' || (1 + g % {tenants}), 'user', 'hello',
                      timestamptz '2024-01-01 12:00+00' + (g % 1000) * interval '1 day'
                 FROM generate_series(1, {messages}) g;
             INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
               SELECT 'l' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE 't' || (1 + g % {tenants}) END,
                      'GET', '/v1/messages', 200, 12, timestamptz '2024-01-01 12:00+00' + (g % 1000) * interval '1 day'
                 FROM generate_series(1, {messages} / 4) g;
             ANALYZE;"
        ))
        .expect("seed");
}

/// Inserts rows whose tenant does not exist (possible only in the broken state): messages
/// `ghost-m1..` and api_logs `ghost-l1..`.
pub fn add_orphans(client: &mut Client, messages: i32, api_logs: i32) {
    client
        .batch_execute(&format!(
            "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
               SELECT 'ghost-m' || g, 'ghost-tenant-' || g, 'c1', 'user', 'lost', timestamptz '2025-03-03 00:00+00' + g * interval '1 hour'
                 FROM generate_series(1, {messages}) g;
             INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
               SELECT 'ghost-l' || g, 'ghost-tenant-' || g, 'POST', '/v1/x', 500, 3, timestamptz '2025-04-04 00:00+00' + g * interval '1 hour'
                 FROM generate_series(1, {api_logs}) g;"
        ))
        .expect("insert orphans");
}

pub fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect(sql).get(0)
}

/// Row counts of every table of the schema, for before/after comparisons.
pub fn row_counts(client: &mut Client) -> Vec<(String, i64)> {
    ["tenants", "conversations", "messages", "api_logs"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                count(client, &format!("SELECT count(*) FROM {t}")),
            )
        })
        .collect()
}

/// The catalog facts the two restore paths must agree on: every tenant FK constraint (table,
/// name, definition, validated, parent constraint's table) and every index on "tenantId" of
/// messages/api_logs and their partitions (table, name, valid, parent index).
pub fn tenant_catalog(client: &mut Client) -> Vec<String> {
    let mut facts: Vec<String> = client
        .query(
            "SELECT format('constraint %s.%s %s validated=%s parent=%s', c.conrelid::regclass, c.conname,
                           pg_get_constraintdef(c.oid), c.convalidated, coalesce(p.conrelid::regclass::text, '-'))
               FROM pg_constraint c LEFT JOIN pg_constraint p ON p.oid = c.conparentid
              WHERE c.contype = 'f' AND c.conname IN ('messages_tenant_id_fkey', 'api_logs_tenant_id_fkey')",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    facts.extend(
        client
            .query(
                "SELECT format('index %s on %s valid=%s parent=%s', x.indexrelid::regclass, x.indrelid::regclass,
                               x.indisvalid, coalesce(i.inhparent::regclass::text, '-'))
                   FROM pg_index x LEFT JOIN pg_inherits i ON i.inhrelid = x.indexrelid
                  WHERE x.indnatts = 1
                    AND x.indkey[0] = (SELECT attnum FROM pg_attribute a WHERE a.attrelid = x.indrelid AND a.attname = 'tenantId')
                    AND x.indrelid IN (SELECT relid FROM pg_partition_tree('messages') UNION ALL SELECT relid FROM pg_partition_tree('api_logs'))",
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0)),
    );
    facts.sort();
    facts
}

/// A broken database with 10 tenants and 5,000 messages.
pub fn seeded_broken() -> TestDb {
    let db = TestDb::broken();
    seed(&mut db.client(), 10, 5000);
    db
}

/// The catalog that the spec's SQL, applied the plain (blocking) way, produces on a database
/// seeded like [`seeded_broken`].
pub fn plain_catalog() -> Vec<String> {
    let db = seeded_broken();
    let mut c = db.client();
    c.batch_execute(&migration_sql(embedded::RESTORE_MESSAGES_TENANT_FK))
        .unwrap();
    c.batch_execute(&migration_sql(embedded::RESTORE_API_LOGS_TENANT_FK))
        .unwrap();
    tenant_catalog(&mut c)
}

/// The SQL of one embedded migration, for applying it the way psql would.
pub fn migration_sql(version: i64) -> String {
    embedded::migrations()
        .into_iter()
        .find(|m| m.version() == version)
        .and_then(|m| m.sql().map(str::to_owned))
        .expect("embedded migration")
}
