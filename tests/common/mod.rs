//! Test harness: every test gets a database of its own on the real PostgreSQL, created here and
//! dropped (`WITH (FORCE)`) when the [`TestDb`] goes out of scope, so tests run in parallel and
//! never see each other's data. The server is `TEST_DATABASE_URL`'s (default: the local one).
#![allow(dead_code)]

pub mod lifecycle;
pub mod months;

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
    runner_bin()
        .arg("--database-url")
        .arg(url)
        .arg("--wait")
        .arg("10s")
        .args(args)
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

/// `server_version_num` of the test server.
pub fn server_version(client: &mut Client) -> i32 {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .unwrap()
        .get(0);
    v.parse().unwrap()
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
    // The months ahead that `migrate` creates at its end, created here by `partitions`.
    let out = db.run(&["partitions"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
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

// ---------------------------------------------------------------------------------------------
// Fixtures for what production puts between the runner and its server.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

/// The binary, with none of the developer's or CI's configuration: see [`hermetic`].
pub fn runner_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meta-chat-migrate"));
    hermetic(&mut c);
    c
}

/// Removes every source of configuration the runner reads besides its flags (every `PG*`
/// variable, `DATABASE_URL`, `DATABASE_URL_FILE`) and points `HOME` at an empty directory (no
/// `~/.pgpass`), so that a test sees only what it sets itself.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PG") || k.starts_with("DATABASE_URL") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("PGPASSWORD_FILE")
        .env("HOME", empty_home())
}

/// An empty directory for `HOME`, one for every test process of this user (nothing writes
/// into it, so none is left behind per process).
pub fn empty_home() -> PathBuf {
    let dir = std::env::temp_dir().join("mcm-empty-home");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new private directory for one test's files (removed when dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "mcm-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `name` with `content` and mode `mode`; returns its path.
    pub fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces host and port of a postgres:// URL.
pub fn with_host_port(url: &str, host: &str, port: u16) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let (userinfo, hostpart) = match rest.split_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpart.find('/').map(|i| &hostpart[i..]).unwrap_or("");
    format!("{}{userinfo}{host}:{port}{path}", &url[..scheme_end])
}

#[derive(Clone, Default)]
pub struct ProxyOptions {
    /// Close a connection once nothing has crossed it (either way) for this long, as load
    /// balancers and proxies do.
    pub close_idle_after: Option<Duration>,
    /// Answer TLS requests with 'N', as a server without TLS does.
    pub refuse_tls: bool,
    /// Where to listen (default 127.0.0.1).
    pub bind: Option<IpAddr>,
}

/// A TCP proxy in front of the test server.
pub struct Proxy {
    pub addr: IpAddr,
    pub port: u16,
    /// Connections closed for being idle.
    pub closed_idle: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(opts: ProxyOptions) -> Proxy {
        let addr = opts.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let listener = TcpListener::bind((addr, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let closed_idle = Arc::new(AtomicUsize::new(0));
        let closed = closed_idle.clone();
        thread::spawn(move || serve(listener, opts, closed));
        Proxy {
            addr,
            port,
            closed_idle,
        }
    }

    /// `url` pointed at this proxy.
    pub fn url(&self, url: &str) -> String {
        with_host_port(url, &self.addr.to_string(), self.port)
    }
}

/// Forwards every connection of `listener` to the test server, with `opts`' faults.
pub fn serve(listener: TcpListener, opts: ProxyOptions, closed_idle: Arc<AtomicUsize>) {
    let upstream = format!("127.0.0.1:{}", server_port());
    for conn in listener.incoming().flatten() {
        let (upstream, opts, closed) = (upstream.clone(), opts.clone(), closed_idle.clone());
        thread::spawn(move || forward(conn, &upstream, &opts, &closed));
    }
}

fn millis_since(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

fn forward(client: TcpStream, upstream: &str, opts: &ProxyOptions, closed: &AtomicUsize) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let t0 = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut c_read = client.try_clone().unwrap();
    let mut c_write = client.try_clone().unwrap();
    let s_read = server.try_clone().unwrap();
    let mut s_write = server.try_clone().unwrap();
    if opts.refuse_tls {
        // SSLRequest and GSSENCRequest are 8 bytes: length 8, then a magic code.
        let mut first = [0u8; 8];
        loop {
            if c_read.read_exact(&mut first).is_err() {
                return;
            }
            if first[..4] == [0, 0, 0, 8] && first[4..6] == [0x04, 0xd2] {
                let _ = c_write.write_all(b"N");
                continue;
            }
            let _ = s_write.write_all(&first);
            break;
        }
    }
    let pump =
        |mut from: TcpStream, mut to: TcpStream, last: Arc<AtomicU64>, done: Arc<AtomicBool>| {
            thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            last.store(millis_since(t0), Ordering::Relaxed);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                done.store(true, Ordering::Relaxed);
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
            })
        };
    let a = pump(c_read, s_write, last.clone(), done.clone());
    let b = pump(s_read, c_write, last.clone(), done.clone());
    if let Some(limit) = opts.close_idle_after {
        while !done.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
            let idle = millis_since(t0).saturating_sub(last.load(Ordering::Relaxed));
            if idle >= limit.as_millis() as u64 {
                closed.fetch_add(1, Ordering::Relaxed);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                break;
            }
        }
    }
    let _ = (a.join(), b.join());
}

/// Debian's PgBouncer in front of the test server, in the given pool mode, started for one
/// test and stopped when dropped. `auth_type = any`: it logs in to the server as `postgres`.
pub struct PgBouncer {
    pub port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

impl PgBouncer {
    pub fn start(pool_mode: &str) -> PgBouncer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "mcm-pgbouncer-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={} user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\n\
                 pool_mode = {pool_mode}\nunix_socket_dir =\nlogfile = {}\n",
                server_port(),
                dir.join("pgbouncer.log").display()
            ),
        )
        .unwrap();
        let root = std::env::var("USER").as_deref() == Ok("root")
            || Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout == b"0\n")
                .unwrap_or(false);
        let mut cmd = Command::new("pgbouncer");
        if root {
            // PgBouncer refuses to run as root.
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("pgbouncer is not installed (apt-get install pgbouncer): {e}")
            });
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "pgbouncer did not start"
            );
            thread::sleep(Duration::from_millis(50));
        }
        PgBouncer { port, child, dir }
    }

    pub fn url(&self, db: &TestDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test server's binaries: `TEST_PG_BINDIR`, else Debian's for the server's major.
pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
    let v: String = admin
        .query_one("SELECT current_setting('server_version_num')", &[])
        .unwrap()
        .get(0);
    let major = v.parse::<i32>().unwrap() / 10000;
    let dir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    assert!(
        dir.join("initdb").exists(),
        "no initdb for PostgreSQL {major}: set TEST_PG_BINDIR to the server's bin directory"
    );
    dir
}

/// A client program (`psql`, `pg_isready`): the server's own, else the one on `PATH` (the
/// clients speak to every major; the npm servers of the matrix ship none).
pub fn client_bin(name: &str) -> PathBuf {
    let own = pg_bindir().join(name);
    if own.exists() {
        return own;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} on PATH"))
}

/// A real standby: a fresh cluster started with `standby.signal` and no primary, so it stays in
/// recovery and accepts only read-only sessions. Stopped and removed when dropped.
pub struct Standby {
    pub url: String,
    _cluster: Cluster,
}

fn as_postgres(bin: &std::path::Path, args: &[&str]) -> Output {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().unwrap()
}

impl Standby {
    pub fn start() -> Standby {
        let cluster = Cluster::start(&[("standby.signal", "", 0o600)], "", None);
        Standby {
            url: cluster.url.clone(),
            _cluster: cluster,
        }
    }
}

/// A throwaway PostgreSQL cluster of the test server's version on a free port (127.0.0.1 and a
/// socket in its directory), started for one test with the given files, `postgresql.conf`
/// additions and `pg_hba.conf`; stopped and removed when dropped.
pub struct Cluster {
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

impl Cluster {
    /// `files`: (name in the data directory, content, mode), owned by the server's user.
    pub fn start(files: &[(&str, &str, u32)], conf: &str, hba: Option<&str>) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let bin = pg_bindir();
        let dir = std::env::temp_dir().join(format!(
            "mcm-cluster-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown").args(["postgres"]).arg(&dir).status();
        let d = dir.to_str().unwrap().to_string();
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                &d,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut all: Vec<(&str, String, u32)> = files
            .iter()
            .map(|(n, c, m)| (*n, c.to_string(), *m))
            .collect();
        if let Some(hba) = hba {
            all.push(("pg_hba.conf", hba.to_string(), 0o600));
        }
        let conf_path = dir.join("postgresql.conf");
        let mut base = std::fs::read_to_string(&conf_path).unwrap();
        base.push_str(conf);
        all.push(("postgresql.conf", base, 0o600));
        for (name, content, mode) in all {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let _ = Command::new("chown").args(["postgres"]).arg(&path).status();
        }
        let port = free_port();
        let opts =
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d}");
        let log = format!("{d}/server.log");
        let out = as_postgres(
            &bin.join("pg_ctl"),
            &["-D", &d, "-l", &log, "-w", "-o", &opts, "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Cluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bin,
        }
    }

    /// A superuser session over the cluster's unix socket (whatever pg_hba.conf says of TCP).
    pub fn admin(&self) -> Client {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        config
            .connect(NoTls)
            .expect("connect to the cluster's socket")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_cluster(&self.bin, &self.dir);
    }
}

fn stop_cluster(bin: &std::path::Path, dir: &std::path::Path) {
    let d = dir.to_str().unwrap().to_string();
    as_postgres(&bin.join("pg_ctl"), &["-D", &d, "-m", "immediate", "stop"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The runner's backends in `db` (application_name), as (pid, state, query).
pub fn runner_backends(db: &TestDb) -> Vec<(i32, String, String)> {
    let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
    admin
        .query(
            "SELECT pid, coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity
              WHERE datname = $1 AND application_name LIKE '%meta-chat-migrate%' ORDER BY pid",
            &[&db.name],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Advisory locks held in `db`.
pub fn advisory_locks(db: &TestDb) -> i64 {
    let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
              WHERE l.locktype = 'advisory' AND d.datname = $1",
            &[&db.name],
        )
        .unwrap()
        .get(0)
}

/// Polls `cond` every 50ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Leaves an INVALID index `name` on `table (columns)` exactly as an interrupted
/// `CREATE INDEX CONCURRENTLY` leaves one: the build starts in a session of its own and is
/// cancelled while it waits for a snapshot that another session holds.
pub fn interrupted_build(url: &str, name: &str, table: &str, columns: &str) {
    let mut holder = Client::connect(url, NoTls).unwrap();
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;")
        .unwrap();
    let mut builder = Client::connect(url, NoTls).unwrap();
    let pid: i32 = builder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let sql = format!("CREATE INDEX CONCURRENTLY \"{name}\" ON {table} ({columns})");
    let build = thread::spawn(move || builder.batch_execute(&sql));
    let mut watcher = Client::connect(url, NoTls).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            count(
            &mut watcher,
            &format!("SELECT count(*) FROM pg_stat_progress_create_index WHERE pid = {pid} AND phase LIKE 'waiting%'")
        ) > 0
        }),
        "the build never waited"
    );
    watcher
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    let err = build.join().unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(
        count(
            &mut watcher,
            &format!("SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass('\"{name}\"') AND NOT indisvalid")
        ),
        1,
        "no INVALID index left"
    );
}

/// A session that holds the migration lock of `db` and stays busy in a statement, as a live
/// runner's lock connection looks; cancelled (and the lock released) when dropped.
pub struct BusyHolder {
    pub pid: i32,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// A session that looks like a runner holding the migration lock (its application name, the
/// lock's keys), and its backend pid.
pub fn hold_migration_lock(db: &TestDb) -> (Client, i32) {
    let mut holder = db.client();
    holder
        .batch_execute("SET application_name = 'meta-chat-migrate'")
        .unwrap();
    let (k1, k2) = meta_chat_migrations::db::lock::ADVISORY_LOCK_KEYS;
    holder
        .execute("SELECT pg_advisory_lock($1, $2)", &[&k1, &k2])
        .unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    (holder, pid)
}

impl BusyHolder {
    pub fn take(db: &TestDb) -> BusyHolder {
        let (mut holder, pid) = hold_migration_lock(db);
        let handle = std::thread::spawn(move || {
            let _ = holder.batch_execute("SELECT pg_sleep(300)");
        });
        BusyHolder {
            pid,
            handle: Some(handle),
        }
    }
}

impl Drop for BusyHolder {
    fn drop(&mut self) {
        let mut admin = Client::connect(&admin_url(), NoTls).unwrap();
        let _ = admin.execute("SELECT pg_cancel_backend($1)", &[&self.pid]);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
