//! Refusing a transaction- or statement-mode pooler (PgBouncer's `pool_mode = transaction`,
//! Prisma's `pgbouncer=true` URLs) before anything changes. Through such a pooler a client's
//! statements run on whichever server connection is free: the session advisory lock stays
//! behind on a pooled server connection (and blocks every later runner), session settings leak
//! to the application's sessions, and prepared statements fail (26000, 42P05). A session-mode
//! pooler gives each client a server connection of its own and works like a direct connection.
//!
//! No SQL can ask a pooler for its mode, so the probe looks for what only such a pooler does,
//! on two client connections of the run that carry no session state yet, in the simple
//! protocol (which any pooler passes): two client connections served by the same backend pid, or
//! one client connection whose backend pid changes while the other holds a transaction open.
//! PgBouncer hands out its most recently used server connection first, so the first check
//! already catches it; the rounds cover other orders.

use super::{first_row, Conn};
use crate::config::DbTarget;
use crate::error::{Error, Result};

const ROUNDS: usize = 3;

fn pid(conn: &mut Conn, sql: &str) -> Result<Option<i32>> {
    let rows = conn
        .simple_query(sql)
        .map_err(|e| Error::db("probing for a connection pooler", e))?;
    Ok(first_row(&rows)
        .and_then(|r| r.get(0))
        .and_then(|p| p.parse().ok()))
}

/// `Err(Error::TransactionPooler)` if `a` and `b` do not each have a server session of their
/// own. Changes nothing on the server.
pub(crate) fn ensure_own_sessions(a: &mut Conn, b: &mut Conn, target: &DbTarget) -> Result<()> {
    let refuse = |evidence: String| {
        Err(Error::TransactionPooler {
            target: target.to_string(),
            evidence,
        })
    };
    if a.pid() == b.pid() {
        return refuse(format!(
            "two connections of this run were served by the same server process, pid {}",
            a.pid()
        ));
    }
    for _ in 0..ROUNDS {
        let before = pid(a, "SELECT pg_backend_pid()")?;
        let held = pid(b, "BEGIN; SELECT pg_backend_pid()")?;
        let during = pid(a, "SELECT pg_backend_pid()")?;
        b.simple_query("COMMIT")
            .map_err(|e| Error::db("probing for a connection pooler", e))?;
        if before.is_some() && before == held {
            return refuse(format!(
                "two connections of this run were served by the same server process, pid {}",
                before.unwrap_or_default()
            ));
        }
        if before != Some(a.pid()) || during != Some(a.pid()) {
            return refuse(format!(
                "one connection of this run was served by server processes {} and then {:?}",
                a.pid(),
                during.or(before).unwrap_or_default()
            ));
        }
    }
    Ok(())
}
