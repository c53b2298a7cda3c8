//! Which schema a run migrates. Every runner session sets `search_path` to it (see
//! [`crate::db`]), whatever the role or database sets, and [`ensure_platform_here`] refuses to go
//! on when the platform's tables or its history live in another schema: migrating an empty
//! schema next to the real one would report success while the real tables stay as they were.
//! [`lock_platform`] is how every command that changes something starts, [`connect_platform`]
//! how every read-only one does.

use postgres::Client;

use crate::config::Settings;
use crate::db::{self, Conn, MigrationLock};
use crate::embedded::TABLES;
use crate::error::{Error, Result};
use crate::history::HISTORY_TABLE;

const SCHEMA_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)";
/// Per schema, which of the platform's tables and the history table it holds.
const PLACES: &str = "SELECT n.nspname::text, array_agg(c.relname::text ORDER BY c.relname) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relname = ANY($1) AND c.relkind IN ('r', 'p') \
       AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
     GROUP BY n.nspname ORDER BY 1";

fn refuse(schema: &str, detail: String) -> Error {
    Error::Schema {
        schema: schema.to_string(),
        detail,
    }
}

/// [`db::lock_database`], then [`ensure_platform_here`] for the run's schema: connected, the
/// migration lock held, and the platform where the run will change it. Changes nothing.
pub(crate) fn lock_platform(
    settings: &Settings,
    first: Option<Conn>,
) -> Result<(Conn, MigrationLock)> {
    let (mut main, lock) = db::lock_database(settings, first)?;
    ensure_platform_here(&mut main, &settings.schema)?;
    Ok((main, lock))
}

/// [`db::connect_with_wait`], then [`ensure_platform_here`]: a mistyped `--schema` is an error
/// in the read-only commands too (not "every version pending"). Changes nothing.
pub(crate) fn connect_platform(settings: &Settings) -> Result<Conn> {
    let mut conn = db::connect_with_wait(settings)?;
    ensure_platform_here(&mut conn, &settings.schema)?;
    Ok(conn)
}

/// Refuses when `schema` does not exist, or lacks the history (or every platform table) that
/// another schema has. Read-only.
pub fn ensure_platform_here(client: &mut Client, schema: &str) -> Result<()> {
    let names: Vec<&str> = TABLES.iter().copied().chain([HISTORY_TABLE]).collect();
    let places: Vec<(String, Vec<String>)> = client
        .query(PLACES, &[&names])
        .map_err(|e| Error::db("looking for the platform's tables", e))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let here: Vec<String> = places
        .iter()
        .find(|(s, _)| s == schema)
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    let elsewhere: Vec<String> = places
        .iter()
        .filter(|(s, _)| s != schema)
        .map(|(s, t)| format!("schema {s} has {}", t.join(", ")))
        .collect();
    let exists: bool = client
        .query_one(SCHEMA_EXISTS, &[&schema])
        .map_err(|e| Error::db("looking for the schema", e))?
        .get(0);
    let hint = |what: &str| {
        format!(
            "{what}, but {}: pass --schema with the schema to migrate (a role's search_path does not choose it)",
            elsewhere.join("; ")
        )
    };
    if !exists {
        let what = "it does not exist";
        return Err(refuse(
            schema,
            if elsewhere.is_empty() {
                format!("{what}: create it, or pass --schema with the schema to migrate")
            } else {
                hint(what)
            },
        ));
    }
    let has_history = |tables: &[String]| tables.iter().any(|t| t == HISTORY_TABLE);
    let history_elsewhere = places.iter().any(|(s, t)| s != schema && has_history(t));
    if !has_history(&here) && history_elsewhere {
        return Err(refuse(schema, hint("it has no migration history")));
    }
    if here.is_empty() && !elsewhere.is_empty() {
        return Err(refuse(schema, hint("it has none of the platform's tables")));
    }
    if !elsewhere.is_empty() {
        log::info!(
            "migrating schema {schema}; other schemas also hold platform tables ({})",
            elsewhere.join("; ")
        );
    }
    Ok(())
}
