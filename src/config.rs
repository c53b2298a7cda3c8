//! What a run is given: the database URL (a secret: it may hold a password), the waits and
//! timeouts, the orphan policy and the parallelism. `DbTarget` is the only way the URL is ever
//! shown: host, port and database, never user or password.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interrupt::Interrupt;
use crate::tls::TlsOptions;

/// Months of partitions kept ahead of the current one.
pub const DEFAULT_PREMAKE: u32 = 6;
/// How often a step that runs long logs its progress.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Rows moved out of DEFAULT partitions in one run at most, unless `--max-moved-rows` says
/// otherwise: about one second of DEFAULT's lock at the measured rate.
pub const DEFAULT_MAX_MOVED_ROWS: u64 = 100_000;

/// The schema migrated unless `--schema` says otherwise.
pub const DEFAULT_SCHEMA: &str = "public";

pub use crate::sources::DEFAULT_DATABASE_URL;

/// Connections for the per-partition work of the online restore. Two: each job is one busy
/// backend (a scan, or an index sort), so two roughly halve the wall time on a small server
/// while leaving its other cores to the application; concurrent index builds on different
/// partitions do not wait for each other (PostgreSQL 14+). Raise it on a server with idle cores.
pub const DEFAULT_JOBS: usize = 2;

/// What to do with rows whose "tenantId" references no tenant, before the tenant FKs go on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OrphanPolicy {
    /// Print counts and sample ids, change nothing, exit 3.
    #[default]
    Refuse,
    /// Move orphaned messages to `orphaned_messages_archive`; record orphaned api_logs in
    /// `orphaned_api_logs_archive` and set their "tenantId" NULL. One transaction.
    Archive,
    /// Delete orphaned messages without archive (explicit opt-in to lose them); api_logs as in
    /// archive.
    Delete,
}

/// Everything a `migrate` run needs. `Settings::new(url)` gives the documented defaults.
#[derive(Clone)]
pub struct Settings {
    /// Secret: never log it; use [`Settings::target`] to show where we connect.
    pub database_url: String,
    /// How long to keep retrying the first connection (the database may still be starting).
    pub connect_wait: Duration,
    /// `lock_timeout` for every DDL statement whose lock, even while queued, would block writes.
    pub lock_timeout: Duration,
    /// How many times a step that hit `lock_timeout` (SQLSTATE 55P03) is retried.
    pub lock_retries: u32,
    /// What to do with rows a foreign key about to go on would refuse (`--orphans`).
    pub orphans: OrphanPolicy,
    /// Connections used for the per-partition work of the tenant FK restore.
    pub jobs: usize,
    /// Apply up to and including this version; `None` applies everything.
    pub target: Option<i64>,
    /// For a database with the schema but no history: record the versions up to this one as
    /// applied without running them (only if the catalog matches), then apply the rest.
    pub baseline: Option<i64>,
    /// The schema that holds the platform's tables and the history; every runner session's
    /// `search_path`, whatever the role or database sets.
    pub schema: String,
    /// How long to wait for the migration lock; `None`: as long as a live runner holds it.
    pub lock_wait: Option<Duration>,
    /// Months of partitions kept ahead of the current one (`partitions`, and the end of
    /// `migrate`).
    pub premake: u32,
    /// How often a step that runs long logs its progress (`--progress-every`).
    pub progress_every: Duration,
    /// At most this many rows are moved out of DEFAULT partitions in one run (the move holds
    /// DEFAULT's lock); above it the run is refused.
    pub max_moved_rows: u64,
    /// The day the window starts from (`YYYY-MM-DD`), instead of today (UTC): for rehearsals.
    pub as_of: Option<String>,
    /// Skip the partition window at the end of `migrate`.
    pub skip_partitions: bool,
    /// Stops the run (signals, application shutdown); see [`Interrupt`].
    pub interrupt: Interrupt,
    /// The host the run's first connection reached.
    pub(crate) pin: Pin,
}

impl Settings {
    /// The documented defaults for `database_url`; the schema is the URL's Prisma `?schema=`
    /// when it has one, else `DEFAULT_SCHEMA`.
    pub fn new(database_url: impl Into<String>) -> Settings {
        let database_url = database_url.into();
        let schema = url_schema(&database_url).unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        Settings {
            database_url,
            connect_wait: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(2),
            lock_retries: 10,
            orphans: OrphanPolicy::Refuse,
            jobs: DEFAULT_JOBS,
            target: None,
            baseline: None,
            schema,
            lock_wait: None,
            premake: DEFAULT_PREMAKE,
            progress_every: DEFAULT_PROGRESS_EVERY,
            max_moved_rows: DEFAULT_MAX_MOVED_ROWS,
            as_of: None,
            skip_partitions: false,
            interrupt: Interrupt::new(),
            pin: Pin::default(),
        }
    }

    /// From the environment, as the command line reads it without flags: `DATABASE_URL`, else
    /// `DATABASE_URL_FILE`, else libpq's variables, else the development default (with a
    /// warning); see `crate::sources`. Fails on an unreadable file or two sources of one level.
    pub fn from_env() -> Result<Settings> {
        Ok(Settings::new(crate::sources::resolve(None, None)?.url))
    }

    /// The driver's configuration and the TLS options, from the URL (every host of it).
    pub(crate) fn connection(&self) -> Result<Connection> {
        connection(&self.database_url, None)
    }

    /// [`Self::connection`] to the `i`th host of the URL alone (its port and `hostaddr`).
    pub(crate) fn connection_to(&self, i: usize) -> Result<Connection> {
        connection(&self.database_url, Some(i))
    }

    /// These settings for one run: the same, with a [`Pin`] of its own.
    pub(crate) fn for_run(&self) -> Settings {
        self.clone()
    }

    /// Where the URL points: host, port and database, never the user or password.
    pub fn target(&self) -> Result<DbTarget> {
        Ok(self.connection()?.target)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database", &self.target().map(|t| t.to_string()).ok())
            .field("connect_wait", &self.connect_wait)
            .field("lock_timeout", &self.lock_timeout)
            .field("lock_retries", &self.lock_retries)
            .field("orphans", &self.orphans)
            .field("jobs", &self.jobs)
            .field("target", &self.target)
            .field("baseline", &self.baseline)
            .field("schema", &self.schema)
            .field("lock_wait", &self.lock_wait)
            .field("premake", &self.premake)
            .field("progress_every", &self.progress_every)
            .field("max_moved_rows", &self.max_moved_rows)
            .field("as_of", &self.as_of)
            .field("skip_partitions", &self.skip_partitions)
            .finish()
    }
}

/// What a connection string resolves to: the driver's configuration, the TLS options the
/// driver does not know, and where it points (safe to print).
#[derive(Clone)]
pub(crate) struct Connection {
    pub config: postgres::Config,
    pub tls: TlsOptions,
    pub target: DbTarget,
    /// Prisma options of the URL that the runner ignores (its client's pool settings).
    pub ignored: Vec<&'static str>,
    /// How many hosts the URL lists.
    pub hosts: usize,
}

/// The host of the URL that a run's first connection reached: every later connection of the run
/// goes there, so that a failover during a run never splits it across two servers. Each run
/// has its own ([`Settings::for_run`]), and a clone of a [`Settings`] starts without one: two runs
/// of one application (a `migrate` and a `check`, say) never move each other's pin.
#[derive(Default)]
pub(crate) struct Pin(Arc<Mutex<Option<usize>>>);

impl Clone for Pin {
    fn clone(&self) -> Pin {
        Pin::default()
    }
}

impl Pin {
    pub(crate) fn get(&self) -> Option<usize> {
        *self.0.lock().unwrap()
    }

    pub(crate) fn set(&self, host: Option<usize>) {
        *self.0.lock().unwrap() = host;
    }
}

/// The schema a Prisma URL names (`?schema=`), if it parses and names a possible one (an
/// impossible one is refused by [`connection`], naming the URL's option).
pub(crate) fn url_schema(url: &str) -> Option<String> {
    let params = crate::conninfo::parse(url).ok()?;
    params
        .prisma
        .get("schema")
        .filter(|s| !s.is_empty() && s.len() <= 63)
        .cloned()
}

/// Prisma's pool settings: they configure Prisma's own client, not a migration run.
const PRISMA_IGNORED: &[&str] = &[
    "connection_limit",
    "pool_timeout",
    "socket_timeout",
    "sslaccept",
    "statement_cache_size",
];

/// Prisma's options: `pgbouncer=true` is refused (such a URL is transaction-pooled), the pool
/// settings are returned to be ignored with a warning, `schema` must be a schema name.
fn prisma_options(params: &crate::conninfo::ConnParams) -> Result<Vec<&'static str>> {
    match params.prisma.get("pgbouncer").map(String::as_str) {
        None | Some("false") => {}
        Some("true") => return Err(url_error(
            "pgbouncer=true (Prisma) says this URL goes through PgBouncer in transaction mode, where a migration cannot hold its session: give the runner Prisma's directUrl (a direct, non-transaction-pooled URL) instead".into(),
        )),
        Some(_) => return Err(url_error("pgbouncer (Prisma) must be true or false".into())),
    }
    if let Some(schema) = params.prisma.get("schema") {
        if schema.is_empty() || schema.len() > 63 {
            return Err(url_error(
                "schema (Prisma) must be a schema name of 1 to 63 bytes".into(),
            ));
        }
    }
    Ok(PRISMA_IGNORED
        .iter()
        .copied()
        .filter(|o| params.prisma.contains_key(o))
        .collect())
}

/// TCP keepalives the runner turns on unless the URL says otherwise (libpq's `keepalives*`
/// and `tcp_user_timeout`): a path that stops answering is noticed after about a minute instead
/// of the kernel's two hours.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Per attempt; the overall wait for a server that is not up yet is `--wait`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses a connection URL (or key=value string) as libpq reads it, into the driver's
/// configuration and the TLS options. The error never repeats the user information or the
/// password.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // fuzzed by tests/fuzz.rs
pub fn parse_url(url: &str) -> Result<(postgres::Config, TlsOptions)> {
    connection(url, None).map(|c| (c.config, c.tls))
}

/// The `i`th element of each comma-separated list of hosts, `hostaddr`s and ports (a single
/// port stays: it is every host's).
fn only_host(params: &mut crate::conninfo::ConnParams, i: usize) {
    for key in ["host", "hostaddr", "port"] {
        let Some(list) = params.values.get(key) else {
            continue;
        };
        let parts: Vec<&str> = list.split(',').collect();
        if parts.len() > 1 {
            let one = parts.get(i).copied().unwrap_or(parts[0]).to_string();
            params.values.insert(key, one);
        }
    }
}

fn host_count(params: &crate::conninfo::ConnParams) -> usize {
    ["host", "hostaddr"]
        .iter()
        .filter_map(|k| params.get(k))
        .map(|l| l.split(',').count())
        .max()
        .unwrap_or(1)
}

pub(crate) fn connection(url: &str, host: Option<usize>) -> Result<Connection> {
    let mut params = crate::conninfo::parse(url)?;
    crate::sources::fill_from_env(&mut params)?;
    let hosts = host_count(&params);
    if let Some(i) = host {
        only_host(&mut params, i);
    }
    let ignored = prisma_options(&params)?;
    let tls = TlsOptions::from_params(&params)?;
    let mut config = postgres::Config::new();
    config.ssl_mode(tls.driver_mode());
    set_hosts(&mut config, &params)?;
    let user = match params.get("user") {
        Some(u) => u.to_string(),
        None => default_user()?,
    };
    config.user(&user);
    if let Some(pw) = &params.password {
        config.password(pw.clone());
    }
    config.dbname(params.get("dbname").unwrap_or(&user));
    if let Some(o) = params.get("options") {
        config.options(o);
    }
    if let Some(enc) = params.get("client_encoding") {
        if !enc.eq_ignore_ascii_case("utf8") && !enc.eq_ignore_ascii_case("utf-8") {
            return Err(url_error(format!(
                "client_encoding={enc} is not supported: the runner speaks UTF8"
            )));
        }
    }
    set_timeouts(&mut config, &params)?;
    set_session_attrs(&mut config, &params)?;
    if params.password.is_none() {
        password_from_file(&mut config, params.get("passfile"));
    }
    let target = DbTarget::of(&config);
    Ok(Connection {
        config,
        tls,
        target,
        ignored,
        hosts,
    })
}

/// libpq's password file, for the first host (see [`crate::pgpass`]).
fn password_from_file(config: &mut postgres::Config, passfile: Option<&str>) {
    let Some(file) = crate::pgpass::path(passfile) else {
        return;
    };
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(postgres::config::Host::Tcp(h)), _) => h.clone(),
        #[cfg(unix)]
        (Some(postgres::config::Host::Unix(p)), _) => p.display().to_string(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => String::new(),
    };
    let host = crate::pgpass::match_host(&host, DEFAULT_SOCKET_DIR);
    let want = crate::pgpass::Lookup {
        host: &host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or_default(),
        user: config.get_user().unwrap_or_default(),
    };
    if let Some(pw) = crate::pgpass::password(&file, &want) {
        config.password(pw);
    }
}

fn url_error(reason: String) -> Error {
    Error::InvalidUrl { reason }
}

/// libpq's default user is the operating system's.
fn default_user() -> Result<String> {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| {
            url_error("it names no user, and the operating system user is unknown: write postgres://USER@HOST/DATABASE".into())
        })
}

/// libpq's unix-socket default on Debian-built servers, used when no host is given.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

fn set_hosts(config: &mut postgres::Config, params: &crate::conninfo::ConnParams) -> Result<()> {
    let hosts: Vec<&str> = params
        .get("host")
        .map_or(Vec::new(), |h| h.split(',').collect());
    let addrs: Vec<&str> = params
        .get("hostaddr")
        .map_or(Vec::new(), |h| h.split(',').collect());
    for h in &hosts {
        match h {
            &"" if std::path::Path::new(DEFAULT_SOCKET_DIR).is_dir() => {
                config.host_path(DEFAULT_SOCKET_DIR);
            }
            &"" => {
                config.host("localhost");
            }
            h => {
                config.host(h);
            }
        }
    }
    for a in &addrs {
        let addr = a
            .parse()
            .map_err(|_| url_error(format!("hostaddr {a:?} is not an IP address")))?;
        config.hostaddr(addr);
    }
    if hosts.is_empty() && addrs.is_empty() {
        if std::path::Path::new(DEFAULT_SOCKET_DIR).is_dir() {
            config.host_path(DEFAULT_SOCKET_DIR);
        } else {
            config.host("localhost");
        }
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(url_error(format!(
            "{} hosts but {} hostaddrs: give one hostaddr per host",
            hosts.len(),
            addrs.len()
        )));
    }
    set_ports(config, params, hosts.len().max(addrs.len()).max(1))
}

/// `port`: one for every host, or one per host (empty entries are 5432).
fn set_ports(
    config: &mut postgres::Config,
    params: &crate::conninfo::ConnParams,
    nhosts: usize,
) -> Result<()> {
    let ports: Vec<&str> = params
        .get("port")
        .map_or(Vec::new(), |p| p.split(',').collect());
    for p in &ports {
        let port =
            match p.trim() {
                "" => 5432,
                p => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    url_error(format!("port {p:?} is not a number from 1 to 65535"))
                })?,
            };
        config.port(port);
    }
    if ports.len() > 1 && ports.len() != nhosts {
        return Err(url_error(format!(
            "{} ports for {nhosts} hosts: give one port, or one per host",
            ports.len()
        )));
    }
    Ok(())
}

fn seconds(params: &crate::conninfo::ConnParams, key: &str) -> Result<Option<i64>> {
    params
        .get(key)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| url_error(format!("{key}={v:?} is not a whole number")))
        })
        .transpose()
}

fn set_timeouts(config: &mut postgres::Config, params: &crate::conninfo::ConnParams) -> Result<()> {
    // libpq: connect_timeout in seconds, 0 (or absent) meaning none, and at least 2.
    config.connect_timeout(match seconds(params, "connect_timeout")? {
        Some(s) if s > 0 => Duration::from_secs(s.max(2) as u64),
        Some(_) => Duration::from_secs(24 * 3600),
        None => DEFAULT_CONNECT_TIMEOUT,
    });
    let keepalives = seconds(params, "keepalives")?.unwrap_or(1) != 0;
    config.keepalives(keepalives);
    let positive = |v: Option<i64>, default: Duration| match v {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => default,
    };
    config.keepalives_idle(positive(
        seconds(params, "keepalives_idle")?,
        DEFAULT_KEEPALIVES_IDLE,
    ));
    config.keepalives_interval(positive(
        seconds(params, "keepalives_interval")?,
        DEFAULT_KEEPALIVES_INTERVAL,
    ));
    config.keepalives_retries(match seconds(params, "keepalives_count")? {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        _ => DEFAULT_KEEPALIVES_COUNT,
    });
    // libpq: tcp_user_timeout in milliseconds, 0 meaning the kernel's default.
    match seconds(params, "tcp_user_timeout")? {
        Some(0) => {}
        Some(ms) if ms > 0 => {
            config.tcp_user_timeout(Duration::from_millis(ms as u64));
        }
        Some(_) => return Err(url_error("tcp_user_timeout must not be negative".into())),
        None if keepalives => {
            config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        None => {}
    }
    Ok(())
}

fn set_session_attrs(
    config: &mut postgres::Config,
    params: &crate::conninfo::ConnParams,
) -> Result<()> {
    use postgres::config::{ChannelBinding, TargetSessionAttrs};
    if let Some(v) = params.get("target_session_attrs") {
        config.target_session_attrs(match v {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            other => {
                return Err(url_error(format!(
                "target_session_attrs={other} is not supported; use any, read-write or read-only"
            )))
            }
        });
    }
    if let Some(v) = params.get("channel_binding") {
        config.channel_binding(match v {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(url_error(format!(
                    "channel_binding={other} is not one of disable, prefer, require"
                )))
            }
        });
    }
    Ok(())
}

/// Where a run connects, safe to print: `host:port/database`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DbTarget {
    /// The first host of the URL, or its Unix socket directory; `localhost` if none.
    pub host: String,
    /// The first port of the URL; 5432 if none.
    pub port: u16,
    /// The database name; the user name if none, else `postgres`.
    pub database: String,
}

impl DbTarget {
    /// Where a driver configuration points (its first host and port).
    pub fn of(config: &postgres::Config) -> DbTarget {
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        DbTarget {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            database: config
                .get_dbname()
                .or(config.get_user())
                .unwrap_or("postgres")
                .to_string(),
        }
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host={} port={} database={}",
            self.host, self.port, self.database
        )
    }
}

/// Parses `500ms`, `2s`, `3m`, `1h` or a bare number of seconds. Never panics: a value too
/// large for a `Duration` is an error like any other.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = digits.parse().map_err(|_| {
        format!(
            "{:?} is not a duration like 500ms, 2s, 3m or 1h",
            shown(text)
        )
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {:?}: use ms, s, m or h",
                shown(other)
            ))
        }
    };
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{:?} is not a duration this runner can wait", shown(text)))
}

/// Parses `YYYY-MM-DD` (`--as-of`).
pub fn parse_day(text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    let parts: Vec<&str> = t.split('-').collect();
    let ok = parts.len() == 3
        && parts[0].len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[1].parse::<u32>().is_ok_and(|m| (1..=12).contains(&m))
        && parts[2].parse::<u32>().is_ok_and(|d| (1..=31).contains(&d));
    if ok {
        Ok(t.to_string())
    } else {
        Err(format!("{:?} is not a day like 2027-01-15", shown(text)))
    }
}

/// A value as it may be echoed: at most 40 characters.
fn shown(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push_str("...");
    }
    s
}

/// The longest value PostgreSQL accepts for a timeout setting (`lock_timeout`, ...): INT_MAX ms.
pub const MAX_SERVER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_or_a_run_starts_without_the_pin_of_another() {
        let s = Settings::new("postgres://u@h1:5432,h2:5432/db");
        s.pin.set(Some(1));
        assert_eq!(s.pin.get(), Some(1));
        assert_eq!(s.clone().pin.get(), None);
        assert_eq!(s.for_run().pin.get(), None);
        let run = s.for_run();
        run.pin.set(Some(0));
        assert_eq!(s.pin.get(), Some(1), "a run moved another's pin");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn target_hides_credentials() {
        let s = Settings::new("postgres://alice:s3cret@db.example:6432/chat");
        let shown = s.target().unwrap().to_string();
        assert_eq!(shown, "host=db.example port=6432 database=chat");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn bad_urls_never_echo_the_password() {
        for url in [
            "mysql://u:s3cret@h/db",
            "postgres://u:s3cret@h:notaport/db",
            "",
            "postgres://u:s3cret@h/db?sslmode=sometimes",
        ] {
            let err = parse_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}
