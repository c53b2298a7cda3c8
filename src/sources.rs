//! Where the database comes from, in one documented order, so that the runner is configured the
//! way PostgreSQL users already configure things (the README's "Configuration" lists the same):
//!
//! 1. `--database-url`, or `--database-url-file PATH` (the two together are an error);
//! 2. `DATABASE_URL`, or `DATABASE_URL_FILE` (the `*_FILE` convention of the official images;
//!    the two together are an error, as in those images);
//! 3. libpq's variables, when one of `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER` or
//!    `PGDATABASE` is set: as psql would connect;
//! 4. the development default, `postgres://postgres@localhost:5432/postgres`, with a warning.
//!
//! Whatever the source, a service (`service=` or `PGSERVICE`, from libpq's service files:
//! [`crate::service`]) and then libpq's variables fill only what the URL lacks (a password from
//! `PGPASSWORD`, `PGPASSWORD_FILE` or the password file, `PGSSLMODE`, ...): `fill_from_env`. A
//! variable that names the database set but empty is an error, never the development default.
//! Nothing here logs a URL or a password: the default is shown as host, port, database and user.

use std::path::{Path, PathBuf};

use crate::conninfo::ConnParams;
use crate::error::{Error, Result};

/// The local development default, used (with a warning) when no source names a database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/postgres";

/// libpq's environment variables and the keyword each fills, as libpq maps them.
pub(crate) const LIBPQ_ENV: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGAPPNAME", "application_name"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGOPTIONS", "options"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGSERVICE", "service"),
];

/// The variables that say where to connect: any of them makes libpq's variables the source.
const LIBPQ_TARGET: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSERVICE",
];

/// Variables that, set but empty, are a mistake to say rather than a source to skip: the user
/// meant something, and the development default is not it.
const NOT_EMPTY: &[&str] = &["DATABASE_URL", "DATABASE_URL_FILE", "PGSERVICE"];

/// Which source gave the connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    FlagFile(PathBuf),
    Env,
    EnvFile(PathBuf),
    Libpq,
    Default,
}

/// The connection string and where it came from. Its `Debug` shows the origin only: the URL
/// may hold a password.
#[derive(Clone)]
pub struct Resolved {
    /// Secret: may hold a password.
    pub url: String,
    pub origin: Origin,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("url", &"<hidden>")
            .field("origin", &self.origin)
            .finish()
    }
}

/// A non-empty environment variable (an empty one counts as unset, as in the official images).
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Resolves the connection string from the flags (if any) and the process environment.
pub fn resolve(flag: Option<String>, flag_file: Option<&Path>) -> Result<Resolved> {
    if flag.as_deref().is_some_and(str::is_empty) {
        return Err(Error::Source {
            reason: "--database-url is empty: give the database's URL".into(),
        });
    }
    for name in NOT_EMPTY {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            return Err(Error::Source {
                reason: format!("{name} is set but empty: give it a value, or unset it"),
            });
        }
    }
    resolve_with(flag, flag_file, &env)
}

pub(crate) fn resolve_with(
    flag: Option<String>,
    flag_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved> {
    let resolved = match (flag, flag_file) {
        (Some(_), Some(_)) => return Err(both("--database-url", "--database-url-file")),
        (Some(url), None) => (url, Origin::Flag),
        (None, Some(path)) => (
            read_secret(path, "--database-url-file")?.trim().to_string(),
            Origin::FlagFile(path.into()),
        ),
        (None, None) => match (env("DATABASE_URL"), env("DATABASE_URL_FILE")) {
            (Some(_), Some(_)) => return Err(both("DATABASE_URL", "DATABASE_URL_FILE")),
            (Some(url), None) => (url, Origin::Env),
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                (
                    read_secret(&path, "DATABASE_URL_FILE")?.trim().to_string(),
                    Origin::EnvFile(path),
                )
            }
            (None, None) => from_libpq_env(env),
        },
    };
    Ok(Resolved {
        url: resolved.0,
        origin: resolved.1,
    })
}

fn both(a: &str, b: &str) -> Error {
    Error::Source {
        reason: format!("{a} and {b} are both set: give one of them"),
    }
}

/// libpq's target variables as a key=value string (the rest is filled later), else the
/// development default, with a warning that names it.
fn from_libpq_env(env: &dyn Fn(&str) -> Option<String>) -> (String, Origin) {
    // With PGSERVICE, the service file comes before the other variables, as in libpq: the
    // string names the service alone, and `fill_with` reads the file, then the variables.
    if let Some(service) = env("PGSERVICE") {
        return (format!("service={}", quote_kv(&service)), Origin::Libpq);
    }
    let parts: Vec<String> = LIBPQ_ENV
        .iter()
        .filter(|(var, _)| LIBPQ_TARGET.contains(var))
        .filter_map(|(var, key)| env(var).map(|v| format!("{key}={}", quote_kv(&v))))
        .collect();
    if !parts.is_empty() {
        return (parts.join(" "), Origin::Libpq);
    }
    log::warn!(
        "no database configured (--database-url, --database-url-file, DATABASE_URL, DATABASE_URL_FILE or PGHOST/PGPORT/PGUSER/PGDATABASE/PGSERVICE): using the development default host=localhost port=5432 database=postgres user=postgres"
    );
    (DEFAULT_DATABASE_URL.to_string(), Origin::Default)
}

/// A value for a libpq key=value string: single-quoted, `\` and `'` escaped.
fn quote_kv(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A secret file's one line: a byte-order mark, line ends and blank lines are ignored; two
/// non-empty lines are refused (a `key=value` string is one line, its keywords separated by
/// spaces). The error names the path, never the content.
pub(crate) fn read_secret(path: &Path, what: &str) -> Result<String> {
    let refuse = |why: String| Error::Source {
        reason: format!("{what} {}: {why}", path.display()),
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot read it ({e})")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    match lines[..] {
        [] => Err(refuse("the file is empty".into())),
        [line] => Ok(line.to_string()),
        _ => Err(refuse(format!(
            "it holds {} non-empty lines, and must hold one: the value alone (a key=value string on one line, its keywords separated by spaces)",
            lines.len()
        ))),
    }
}

/// libpq's variables fill the keywords the connection string lacks; `PGPASSWORD_FILE` (the
/// `*_FILE` convention) gives the password when neither the string nor `PGPASSWORD` does.
pub(crate) fn fill_from_env(params: &mut ConnParams) -> Result<()> {
    fill_with(params, &env)
}

pub(crate) fn fill_with(
    params: &mut ConnParams,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    crate::service::apply(params, env)?;
    for (var, key) in LIBPQ_ENV {
        let missing = match *key {
            "password" => params.password.is_none(),
            key => params.get(key).is_none(),
        };
        if missing {
            if let Some(value) = env(var) {
                params.set(key, value)?;
            }
        }
    }
    if params.password.is_none() {
        if let Some(path) = env("PGPASSWORD_FILE") {
            let pw = read_secret(Path::new(&path), "PGPASSWORD_FILE")?;
            params.password = Some(pw.into_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned().filter(|v| !v.is_empty())
    }

    #[test]
    fn precedence() {
        let e = env_of(&[("DATABASE_URL", "postgres://env/db"), ("PGHOST", "pg")]);
        let r = resolve_with(Some("postgres://flag/db".into()), None, &e).unwrap();
        assert_eq!(
            (r.url.as_str(), r.origin),
            ("postgres://flag/db", Origin::Flag)
        );
        let r = resolve_with(None, None, &e).unwrap();
        assert_eq!(
            (r.url.as_str(), r.origin),
            ("postgres://env/db", Origin::Env)
        );
        let r = resolve_with(None, None, &env_of(&[("PGHOST", "pg"), ("PGUSER", "o'k")])).unwrap();
        assert_eq!(r.origin, Origin::Libpq);
        let p = crate::conninfo::parse(&r.url).unwrap();
        assert_eq!((p.get("host"), p.get("user")), (Some("pg"), Some("o'k")));
        let r = resolve_with(
            None,
            None,
            &env_of(&[("PGPASSWORD", "x"), ("DATABASE_URL", "")]),
        )
        .unwrap();
        assert_eq!(r.origin, Origin::Default);
    }

    #[test]
    fn two_of_one_level_are_refused_by_name() {
        let err = resolve_with(Some("x".into()), Some(Path::new("/f")), &env_of(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("--database-url and --database-url-file"),
            "{err}"
        );
        let e = env_of(&[("DATABASE_URL", "a"), ("DATABASE_URL_FILE", "/f")]);
        let err = resolve_with(None, None, &e).unwrap_err();
        assert!(
            err.to_string()
                .contains("DATABASE_URL and DATABASE_URL_FILE"),
            "{err}"
        );
    }

    #[test]
    fn env_fills_only_what_the_url_lacks() {
        let mut p = crate::conninfo::parse("postgres://u:urlpw@h/db").unwrap();
        let e = env_of(&[
            ("PGPASSWORD", "envpw"),
            ("PGHOST", "other"),
            ("PGSSLMODE", "require"),
        ]);
        fill_with(&mut p, &e).unwrap();
        assert_eq!(p.password.as_deref(), Some(&b"urlpw"[..]));
        assert_eq!(
            (p.get("host"), p.get("sslmode")),
            (Some("h"), Some("require"))
        );
        let mut p = crate::conninfo::parse("postgres://u@h/db").unwrap();
        fill_with(&mut p, &e).unwrap();
        assert_eq!(p.password.as_deref(), Some(&b"envpw"[..]));
    }
}
