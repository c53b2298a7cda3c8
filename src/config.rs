//! What a run is given: the database URL (a secret: it may hold a password), the waits and
//! timeouts, the orphan policy and the parallelism. `DbTarget` is the only way the URL is ever
//! shown: host, port and database, never user or password.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::tls::TlsOptions;

/// The local development default, used when neither `--database-url` nor `DATABASE_URL` is set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/postgres";

/// Connections for the per-partition work of the online restore. Two: each job is one busy
/// backend (a scan, or an index sort), so two roughly halve the wall time on a small server
/// while leaving its other cores to the application; concurrent index builds on different
/// partitions do not wait for each other (PostgreSQL 14+). Raise it on a server with idle cores.
pub const DEFAULT_JOBS: usize = 2;

/// What to do with rows whose "tenantId" references no tenant, before the tenant FKs go on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
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
    pub orphans: OrphanPolicy,
    /// Connections used for the per-partition work of the tenant FK restore.
    pub jobs: usize,
    /// Apply up to and including this version; `None` applies everything.
    pub target: Option<i64>,
    /// For a database with the schema but no history: record the versions up to this one as
    /// applied without running them (only if the catalog matches), then apply the rest.
    pub baseline: Option<i64>,
}

impl Settings {
    pub fn new(database_url: impl Into<String>) -> Settings {
        Settings {
            database_url: database_url.into(),
            connect_wait: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(2),
            lock_retries: 10,
            orphans: OrphanPolicy::Refuse,
            jobs: DEFAULT_JOBS,
            target: None,
            baseline: None,
        }
    }

    /// From `DATABASE_URL`, else the local development default.
    pub fn from_env() -> Settings {
        Settings::new(
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string()),
        )
    }

    /// The driver's configuration and the TLS options, from the URL.
    pub fn connection(&self) -> Result<(postgres::Config, TlsOptions)> {
        parse_url(&self.database_url)
    }

    pub fn target(&self) -> Result<DbTarget> {
        Ok(DbTarget::of(&self.connection()?.0))
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
            .finish()
    }
}

/// Parses a connection URL (or key=value string) and its TLS options. The error never repeats
/// the input: it may hold a password.
pub fn parse_url(url: &str) -> Result<(postgres::Config, TlsOptions)> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(Error::InvalidUrl {
            reason: "it is empty".into(),
        });
    }
    if trimmed.contains("://")
        && !(trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://"))
    {
        return Err(Error::InvalidUrl {
            reason: "the scheme must be postgres:// or postgresql://".into(),
        });
    }
    let (driver_url, tls) = crate::tls::split_url(trimmed)?;
    let config = postgres::Config::from_str(&driver_url).map_err(|e| Error::InvalidUrl {
        // The driver's parse errors name the offending part, not the value.
        reason: e.to_string().replace(url, "<url>"),
    })?;
    if config.get_hosts().is_empty() {
        return Err(Error::InvalidUrl {
            reason: "it names no host".into(),
        });
    }
    Ok((config, tls))
}

/// Where a run connects, safe to print: `host:port/database`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DbTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl DbTarget {
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

/// Parses `500ms`, `2s`, `3m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 2s, 3m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
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
