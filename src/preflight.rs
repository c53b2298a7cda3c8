//! Pre-flight rules (the spec's check_orphaned_data, generalised): rows an operation about to go
//! on would refuse (its kind says which: [`crate::engine::ops::Operation::refuses`]), counted
//! with sample ids before anything changes, and what `--orphans` does with them.
//!
//! `refuse` changes nothing. `archive` and `delete` run in one transaction, and each rule moves
//! its rows with a single statement (`DELETE ... RETURNING` / `UPDATE ... RETURNING` feeding
//! the archive), so exactly the rows removed are the rows archived, even while the application
//! writes. Rules run in declaration order, and a rule does not count rows an earlier rule
//! handles (`Rule::after`): a message both orphaned and in another tenant's conversation is
//! counted and moved once.

use postgres::Client;

use crate::catalog::Reader;
use serde::Serialize;

use crate::config::OrphanPolicy;
use crate::engine::ops::{Resolution, Rule};
use crate::error::{Error, Result};
use crate::findings::{Findings, RuleCount, SAMPLE_SIZE};
use crate::sql::{Ident, Relation};

/// What `archive` or `delete` did for one rule.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Resolved {
    /// The rule's stable id, e.g. `orphaned-messages`.
    pub rule: String,
    /// The table its rows were in, without its schema.
    pub table: String,
    /// Rows deleted (moved) or set to NULL.
    pub rows: u64,
    /// Where their old contents were recorded, if anywhere.
    pub archived_in: Option<String>,
}

/// The WHERE condition of `rule` for rows of `o`, excluding rows of the rules it comes after.
/// Where the earlier rule's checked columns are among this rule's (whose condition already
/// requires them NOT NULL), "not refused by the earlier key" is simply a match for it: a
/// semi-join, which PostgreSQL plans far better than `NOT (... NOT EXISTS ...)` (6x on 3M
/// messages).
fn condition(rule: &Rule, schema: &str) -> String {
    let refused = |r: &Rule| r.op.refuses("o", schema).unwrap_or_else(|| "false".into());
    let mut cond = refused(rule);
    for earlier in rule.after {
        let checked = earlier.op.checked_columns();
        let covered = !checked.is_empty()
            && checked
                .iter()
                .all(|c| rule.op.checked_columns().contains(c));
        cond = match earlier.op.accepts("o", schema) {
            Some(accepted) if covered => format!("{cond} AND {accepted}"),
            _ => format!("{cond} AND NOT ({})", refused(earlier)),
        };
    }
    cond
}

/// Counts the rows of one rule, with up to ten sample ids. Read-only.
pub fn count(c: &mut dyn Reader, rule: &Rule, schema: &str) -> Result<RuleCount> {
    let table = Relation::new(schema, rule.op.table());
    let cond = condition(rule, schema);
    let count: i64 = c
        .query_one(&format!("SELECT count(*) FROM {table} o WHERE {cond}"), &[])
        .map_err(|e| Error::db(format!("counting {}", rule.id), e))?
        .get(0);
    let sample_ids = if count > 0 {
        c.query(
            &format!("SELECT o.id::text FROM {table} o WHERE {cond} ORDER BY o.id LIMIT $1"),
            &[&SAMPLE_SIZE],
        )
        .map_err(|e| Error::db(format!("sampling {}", rule.id), e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect()
    } else {
        Vec::new()
    };
    Ok(RuleCount {
        rule: rule.id.to_string(),
        label: rule.label.to_string(),
        table: rule.op.table().to_string(),
        what: rule.what.to_string(),
        count,
        sample_ids,
    })
}

/// Counts every rule; under `refuse`, fails with the counts if any found rows; under
/// `archive`/`delete`, resolves them in one transaction.
pub fn run(
    client: &mut Client,
    policy: OrphanPolicy,
    rules: &[&Rule],
    schema: &str,
) -> Result<Vec<Resolved>> {
    let mut findings = Findings::default();
    for rule in rules {
        let found = count(client, rule, schema)?;
        log::info!(
            "pre-flight {}: {} {} {}",
            found.rule,
            found.count,
            found.table,
            found.what
        );
        findings.rules.push(found);
    }
    if findings.total() == 0 {
        return Ok(Vec::new());
    }
    if policy == OrphanPolicy::Refuse {
        return Err(Error::Orphans(findings));
    }
    let dirty: Vec<&Rule> = rules
        .iter()
        .zip(&findings.rules)
        .filter(|(_, f)| f.count > 0)
        .map(|(r, _)| *r)
        .collect();
    resolve(client, policy, &dirty, schema)
}

/// The statements that resolve one rule's rows, and the archive they fill.
fn statements(rule: &Rule, policy: OrphanPolicy, schema: &str) -> (Vec<String>, Option<String>) {
    let table = Relation::new(schema, rule.op.table());
    let cond = condition(rule, schema);
    match (rule.resolution, policy) {
        (Resolution::MoveRows { archive }, OrphanPolicy::Archive) => {
            let archive_rel = Relation::new(schema, archive);
            (
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {archive_rel} AS \
                         SELECT *, now() AS \"archivedAt\" FROM {table} WITH NO DATA"
                    ),
                    format!(
                        "WITH moved AS (DELETE FROM {table} o WHERE {cond} RETURNING o.*) \
                         INSERT INTO {archive_rel} SELECT moved.*, now() FROM moved"
                    ),
                ],
                Some(archive.to_string()),
            )
        }
        (Resolution::MoveRows { .. }, _) => {
            (vec![format!("DELETE FROM {table} o WHERE {cond}")], None)
        }
        (Resolution::NullColumn { column, archive }, _) => {
            let (col, archive_rel) = (Ident::new(column), Relation::new(schema, archive));
            (
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {archive_rel} AS \
                         SELECT id, \"createdAt\", {col}, now() AS \"archivedAt\" FROM {table} WITH NO DATA"
                    ),
                    format!(
                        "WITH bad AS (SELECT o.id, o.\"createdAt\", o.{col} FROM {table} o WHERE {cond} FOR UPDATE), \
                              nulled AS (UPDATE {table} l SET {col} = NULL FROM bad \
                                          WHERE l.id = bad.id AND l.\"createdAt\" = bad.\"createdAt\" \
                                          RETURNING bad.id, bad.\"createdAt\", bad.{col}) \
                         INSERT INTO {archive_rel} (id, \"createdAt\", {col}) SELECT * FROM nulled"
                    ),
                ],
                Some(archive.to_string()),
            )
        }
    }
}

fn resolve(
    client: &mut Client,
    policy: OrphanPolicy,
    rules: &[&Rule],
    schema: &str,
) -> Result<Vec<Resolved>> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::db("starting the pre-flight clean-up", e))?;
    let mut done = Vec::new();
    for rule in rules {
        let (sql, archived_in) = statements(rule, policy, schema);
        let mut rows = 0;
        for statement in &sql {
            rows = tx
                .execute(statement.as_str(), &[])
                .map_err(|e| Error::db(format!("resolving {}", rule.id), e))?;
        }
        let verb = match rule.resolution {
            Resolution::MoveRows { .. } => "deleted",
            Resolution::NullColumn { .. } => "set \"tenantId\" NULL on",
        };
        match &archived_in {
            Some(a) => log::info!(
                "{}: {verb} {rows} {} (recorded in {a})",
                rule.id,
                rule.op.table()
            ),
            None => log::warn!(
                "{}: {verb} {rows} {} without archive (--orphans delete)",
                rule.id,
                rule.op.table()
            ),
        }
        done.push(Resolved {
            rule: rule.id.to_string(),
            table: rule.op.table().to_string(),
            rows,
            archived_in,
        });
    }
    tx.commit()
        .map_err(|e| Error::db("committing the pre-flight clean-up", e))?;
    Ok(done)
}
