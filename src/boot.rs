//! The boot fast path: what `migrate` asks first, on the connection it then keeps for the lock.
//! Every replica of the application runs `migrate` at boot, and nearly always there is nothing
//! to do; one read-only query, in a transaction of its own (so that nothing it sets leaks
//! through a pooler), says so:
//!
//! - the server is a primary and its sessions may write;
//! - the history holds exactly the embedded versions, each with its checksum;
//! - every object an applied version declares is in place as declared (what drift looks for,
//!   [`crate::engine::ops::in_place`]);
//! - unless `--skip-partitions`: each monthly table's partitions are contiguous and reach the
//!   middle of the month `--premake` months ahead, and no helper CHECK of the runner is left.
//!
//! When all of it holds, `migrate` is done: no lock, no second connection. Anything else, an
//! error of the query among it (a database with no history yet), and `migrate` takes the full
//! path, which finds out what to do and says why. Months are whole months in some time zone
//! (the window's own rule), so a partition that reaches the middle of a month in UTC covers that
//! month wherever its bounds were fixed.

use std::time::Instant;

use crate::config::Settings;
use crate::db::{first_row, quote_literal, Conn};
use crate::embedded::{self, DECLARATIONS, MONTHLY};
use crate::engine::ops::Operation;
use crate::error::{Error, Result};
use crate::history::HISTORY_TABLE;
use crate::sql::Relation;

/// Whether `migrate` may stop here: `Ok(true)` when one query found nothing to do.
pub(crate) fn nothing_to_do(settings: &Settings, conn: &mut Conn) -> Result<bool> {
    if settings.target.is_some() || settings.baseline.is_some() || settings.as_of.is_some() {
        return Ok(false);
    }
    let started = Instant::now();
    let sql = query(settings)?;
    log::trace!("boot check: {sql}");
    let answer = match conn.simple_query(&sql) {
        Ok(rows) => first_row(&rows).and_then(|r| r.get(0)) == Some("t"),
        Err(e) => {
            log::debug!("boot check: {e}; taking the full path");
            // The transaction failed with the query: end it before the connection is reused.
            conn.simple_query("ROLLBACK")
                .map_err(|e| Error::db("ending the boot check", e))?;
            false
        }
    };
    log::debug!(
        "boot check: {} in {:.1} ms",
        if answer {
            "nothing to do"
        } else {
            "work to do"
        },
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(answer)
}

/// The query: `BEGIN READ ONLY`, ISO dates for the bounds it parses, one `SELECT` of one
/// boolean, `COMMIT`.
fn query(settings: &Settings) -> Result<String> {
    let schema = &settings.schema;
    let mut tests = vec![
        "NOT pg_is_in_recovery()".to_string(),
        "current_setting('default_transaction_read_only') = 'off'".to_string(),
        history_matches(schema),
    ];
    let ops: Vec<&'static dyn Operation> = DECLARATIONS.iter().flat_map(|d| d.ops()).collect();
    tests.extend(ops.iter().map(|op| format!("({})", op.in_place(schema))));
    if !settings.skip_partitions {
        tests.push(window_ahead(schema, settings.premake));
    }
    Ok(format!(
        "BEGIN READ ONLY; SET LOCAL DateStyle = 'ISO, MDY'; SELECT {}; COMMIT",
        tests.join("\n   AND ")
    ))
}

/// The history holds the embedded versions, no other, each with the embedded checksum.
fn history_matches(schema: &str) -> String {
    let embedded: Vec<String> = embedded::migrations()
        .iter()
        .map(|m| format!("({}::int8, '{}')", m.version(), m.checksum()))
        .collect();
    let history = Relation::new(schema, HISTORY_TABLE);
    format!(
        "(SELECT count(*) = {n} AND count(*) FILTER (WHERE e.v IS NULL OR h.c IS DISTINCT FROM e.c) = 0 \
           FROM (SELECT version::int8 AS v, checksum::text AS c FROM {history}) h \
           FULL JOIN (VALUES {list}) AS e(v, c) ON e.v = h.v)",
        n = embedded.len(),
        list = embedded.join(", ")
    )
}

/// Each monthly table has the months from the current one (UTC) through `premake` months after
/// it as partitions named as the runner names them (`messages_2027_01`), contiguous, the last
/// reaching past the middle of its month; no constraint of the runner (`mcm_...`) is left on any
/// partition. Only those months' bounds are read (deparsing every partition's bound grew with
/// the partitions); a month made by hand under another name sends the run down the full path,
/// which reads them all.
fn window_ahead(schema: &str, premake: u32) -> String {
    let tables: Vec<String> = MONTHLY
        .iter()
        .map(|t| {
            format!(
                "({}, {})",
                quote_literal(&Relation::new(schema, *t).to_string()),
                quote_literal(t)
            )
        })
        .collect();
    let schema = quote_literal(schema);
    format!(
        "(WITH t(name, bare) AS (VALUES {tables}), \
              m(month) AS (SELECT generate_series(date_trunc('month', now() AT TIME ZONE 'UTC'), \
                               date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{premake} months', interval '1 month')), \
              want AS (SELECT t.name, to_regclass(format('%I.%I', {schema}::text, t.bare || to_char(m.month, '_YYYY_MM'))) AS part \
                         FROM t, m), \
              parts AS (SELECT w.name, (regexp_match(pg_get_expr(c.relpartbound, c.oid), \
                                $re$FROM \\('([^']+)'\\) TO \\('([^']+)'\\)$re$)) AS b \
                          FROM want w JOIN pg_inherits i ON i.inhrelid = w.part AND i.inhparent = to_regclass(w.name) \
                          JOIN pg_class c ON c.oid = w.part), \
              r AS (SELECT name, b[1]::timestamptz AS lo, b[2]::timestamptz AS hi FROM parts WHERE b IS NOT NULL), \
              o AS (SELECT name, lo, hi, lag(hi) OVER (PARTITION BY name ORDER BY lo) AS prev FROM r) \
         SELECT count(*) = {n} FROM (SELECT name FROM o GROUP BY name \
           HAVING count(*) = {months} AND bool_and(prev IS NULL OR prev = lo) \
              AND max(hi) > date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
                            + interval '{premake} months' + interval '14 days') w) \
     AND NOT EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_inherits i ON i.inhrelid = k.conrelid \
                      WHERE i.inhparent IN (SELECT to_regclass(name) FROM (VALUES {tables}) AS t(name, bare)) \
                        AND k.conname LIKE 'mcm\\_%')",
        tables = tables.join(", "),
        n = MONTHLY.len(),
        months = premake + 1,
    )
}
