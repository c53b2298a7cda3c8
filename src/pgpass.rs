//! libpq's password file (`~/.pgpass`, or `PGPASSFILE` / `passfile=`): where a password comes
//! from when neither the URL nor `PGPASSWORD` gives one. Read as libpq reads it, so that a file
//! psql already uses works unchanged: lines `host:port:database:user:password`, `*` matching
//! anything in the first four fields, `\:` and `\\` escapes, `#` comments; the first matching line
//! wins; a file that group or others may read is ignored with a warning, as libpq does.
//!
//! Nothing read from the file is ever logged: warnings name the file, never a line of it.

use std::path::{Path, PathBuf};

/// The connection a password is looked up for, with libpq's defaults already applied.
pub(crate) struct Lookup<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password file to read: `passfile` (from the URL or `PGPASSFILE`), else `~/.pgpass`.
pub(crate) fn path(passfile: Option<&str>) -> Option<PathBuf> {
    match passfile {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".pgpass")),
    }
}

/// The password of the first line matching `want`, if the file exists, is private and has one.
pub(crate) fn password(file: &Path, want: &Lookup<'_>) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        warn_once(file, "is not a plain file; it is not read");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            warn_once(file, "has group or world access; permissions should be u=rw (0600) or less: it is not read (as libpq does)");
            return None;
        }
    }
    match std::fs::read(file) {
        Ok(text) => find(&text, want),
        Err(e) => {
            warn_once(file, &format!("cannot be read ({e})"));
            None
        }
    }
}

/// A warning about the file, once per process and file (every connection of a run looks).
fn warn_once(file: &Path, what: &str) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|f| f == file) {
        warned.push(file.to_path_buf());
        log::warn!("password file {} {what}", file.display());
    }
}

/// libpq's host for matching: a socket in the default directory is `localhost`.
pub(crate) fn match_host(host: &str, default_socket_dir: &str) -> String {
    if host.is_empty() || host == default_socket_dir {
        "localhost".into()
    } else {
        host.into()
    }
}

fn find(text: &[u8], want: &Lookup<'_>) -> Option<Vec<u8>> {
    let port = want.port.to_string();
    let wanted = [want.host, port.as_str(), want.database, want.user];
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = wanted
            .iter()
            .zip(&fields)
            .all(|(w, f)| f.as_slice() == b"*" || f.as_slice() == w.as_bytes());
        if matches {
            // libpq: the password is the rest of the line (a ':' in it needs no escape).
            return Some(fields[4..].join(&b':'));
        }
    }
    None
}

/// Splits on unescaped `:`, removing the `\` of `\:` and `\\`.
fn split_fields(line: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = vec![Vec::new()];
    let mut bytes = line.iter();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                if let Some(next) = bytes.next() {
                    fields.last_mut().unwrap().push(*next);
                }
            }
            b':' => fields.push(Vec::new()),
            b => fields.last_mut().unwrap().push(*b),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
        let want = Lookup {
            host,
            port,
            database: db,
            user,
        };
        find(text.as_bytes(), &want).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let file = "# comment\n\
                    db.internal:5432:chat:app:first\n\
                    *:*:chat:app:second\n\
                    h\\:x:6432:*:u\\\\v:p\\:w:tail\r\n\
                    short:line\n";
        assert_eq!(
            look(file, "db.internal", 5432, "chat", "app").as_deref(),
            Some("first")
        );
        assert_eq!(
            look(file, "other", 1, "chat", "app").as_deref(),
            Some("second")
        );
        assert_eq!(
            look(file, "h:x", 6432, "any", "u\\v").as_deref(),
            Some("p:w:tail")
        );
        assert_eq!(look(file, "db.internal", 5432, "chat", "bob"), None);
        assert_eq!(look(file, "short", 5432, "line", "x"), None);
    }

    #[test]
    fn the_default_socket_is_localhost() {
        assert_eq!(
            match_host("/var/run/postgresql", "/var/run/postgresql"),
            "localhost"
        );
        assert_eq!(match_host("/tmp", "/var/run/postgresql"), "/tmp");
        assert_eq!(match_host("db", "/var/run/postgresql"), "db");
    }
}
