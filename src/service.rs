//! libpq's connection service file (`pg_service.conf`), read as libpq reads it: a service named
//! by `service=` in the connection string or by `PGSERVICE` is looked up first in the user's
//! file (`PGSERVICEFILE`, else `~/.pg_service.conf`), then in the system's
//! (`PGSYSCONFDIR/pg_service.conf`, else Debian's `/etc/postgresql-common/pg_service.conf`). The
//! first file that has a `[name]` section gives its `key=value` lines, which fill the keywords the
//! connection string does not give (the environment's variables come after). A named service that
//! no file has is an error, as in libpq; a `PGSERVICEFILE` that does not exist is one too, where
//! libpq goes on to the system's file: stricter, because the user named a file, and a typo must
//! not silently make the run use another server.
//!
//! Nothing read from the files is logged or shown: errors name the file and the line number.

use std::path::{Path, PathBuf};

use crate::conninfo::ConnParams;
use crate::error::{Error, Result};

/// libpq's compiled-in system configuration directory on Debian and Ubuntu.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

fn source_error(reason: String) -> Error {
    Error::Source { reason }
}

/// Fills `params` from the service it names (or `PGSERVICE` names), if any.
pub(crate) fn apply(params: &mut ConnParams, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let Some(name) = params
        .get("service")
        .map(str::to_owned)
        .or_else(|| env("PGSERVICE"))
    else {
        return Ok(());
    };
    let files = files(env)?;
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if let Some(entries) = section(&text, &name, file)? {
            for (key, value) in entries {
                let missing = match key.as_str() {
                    "password" => params.password.is_none(),
                    "service" => false,
                    k => params.get(k).is_none(),
                };
                if missing {
                    params.set(&key, value).map_err(|_| {
                        source_error(format!(
                            "{}: service {name:?} sets {key:?}, which is not a connection keyword",
                            file.display()
                        ))
                    })?;
                }
            }
            return Ok(());
        }
    }
    let looked: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    Err(source_error(format!(
        "service {name:?} (service= or PGSERVICE) is defined in none of {}: define it there, or set PGSERVICEFILE",
        looked.join(", ")
    )))
}

/// The files to look in, in order. A `PGSERVICEFILE` that does not exist is an error.
fn files(env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match env("PGSERVICEFILE") {
        Some(f) => {
            let path = PathBuf::from(f);
            if !path.is_file() {
                return Err(source_error(format!(
                    "PGSERVICEFILE {}: no such file",
                    path.display()
                )));
            }
            out.push(path);
        }
        None => {
            if let Some(home) = env("HOME") {
                out.push(Path::new(&home).join(".pg_service.conf"));
            }
        }
    }
    let sysconf = env("PGSYSCONFDIR").unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_string());
    out.push(Path::new(&sysconf).join("pg_service.conf"));
    Ok(out)
}

/// The `key=value` lines of section `[name]`, if the file has one. Blank lines and `#` comments
/// are skipped; a line that is neither, nor a section, nor `key=value` is an error naming its
/// number.
fn section(text: &str, name: &str, file: &Path) -> Result<Option<Vec<(String, String)>>> {
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if found.is_some() {
                break;
            }
            if rest.strip_suffix(']').map(str::trim) == Some(name) {
                found = Some(Vec::new());
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(source_error(format!(
                "{} line {}: expected key=value",
                file.display(),
                n + 1
            )));
        };
        if let Some(entries) = found.as_mut() {
            entries.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_section_only() {
        let text = "# comment\n[other]\nhost=a\n\n[chat]\nhost = db.internal\nport=6432\n[after]\nhost=b\n";
        let s = section(text, "chat", Path::new("f")).unwrap().unwrap();
        assert_eq!(
            s,
            [
                ("host".to_string(), "db.internal".to_string()),
                ("port".to_string(), "6432".to_string())
            ]
        );
        assert!(section(text, "missing", Path::new("f")).unwrap().is_none());
        assert!(section("[chat]\nnot a pair\n", "chat", Path::new("f")).is_err());
    }
}
