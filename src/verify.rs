//! The spec's seven validation assertions (validation_tests.sql), run against the live database
//! inside one transaction that is rolled back, so nothing is left behind. The behavioural ones
//! are built so that only the tenant FK can make them pass: the test message's conversation
//! belongs to another tenant, so deleting its tenant can cascade to it only through
//! `messages_tenant_id_fkey`.

use postgres::{Client, GenericClient, Transaction};
use serde::Serialize;

use crate::error::{describe_pg_error, Error, Result};
use crate::online::{child_index_name, constraint_state, index_validity, leaf_partitions};
use crate::orphans;
use crate::tenant_fk::{TenantFk, API_LOGS, MESSAGES};

#[derive(Clone, Debug, Serialize)]
pub struct Assertion {
    pub number: u8,
    pub passed: bool,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub passed: bool,
    pub assertions: Vec<Assertion>,
}

impl VerifyReport {
    pub fn failed(&self) -> Vec<&Assertion> {
        self.assertions.iter().filter(|a| !a.passed).collect()
    }

    /// The error `verify` exits with when an assertion failed.
    pub fn into_result(self) -> Result<VerifyReport> {
        let failed = self.failed();
        if failed.is_empty() {
            return Ok(self);
        }
        Err(Error::VerifyFailed {
            failed: failed.len(),
            names: failed
                .iter()
                .map(|a| format!("TEST {}", a.number))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// `TEST n PASSED: ...` / `TEST n FAILED: ...` lines, as the spec prints them.
    pub fn lines(&self) -> Vec<String> {
        self.assertions
            .iter()
            .map(|a| {
                format!(
                    "TEST {} {}: {}",
                    a.number,
                    if a.passed { "PASSED" } else { "FAILED" },
                    a.message
                )
            })
            .collect()
    }
}

/// Catalog problems of `fk`'s constraint: on the parent and on every leaf partition it must
/// exist with the exact definition, be validated, and (on partitions) belong to the parent.
pub fn constraint_problems(client: &mut impl GenericClient, fk: &TenantFk) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let Some(parent) = constraint_state(client, fk.table, fk.constraint)? else {
        problems.push(format!("{} is missing on {}", fk.constraint, fk.table));
        return Ok(problems);
    };
    if parent.definition != fk.definition() {
        problems.push(format!(
            "{} on {} is `{}`, expected `{}`",
            fk.constraint,
            fk.table,
            parent.definition,
            fk.definition()
        ));
    }
    if !parent.validated {
        problems.push(format!("{} on {} is NOT VALID", fk.constraint, fk.table));
    }
    for part in leaf_partitions(client, fk.table)? {
        if part.relname == fk.table {
            continue;
        }
        match constraint_state(client, &part.relation, fk.constraint)? {
            None => problems.push(format!(
                "{} is missing on partition {}",
                fk.constraint, part.relname
            )),
            Some(c)
                if !c.validated || c.parent != parent.oid || c.definition != fk.definition() =>
            {
                problems.push(format!(
                    "{} on partition {} is not a validated child of the parent constraint",
                    fk.constraint, part.relname
                ))
            }
            Some(_) => {}
        }
    }
    Ok(problems)
}

/// True when the index is a plain single-column index on `"tenantId"` of the table.
const INDEX_SHAPE: &str = "SELECT x.indrelid = $2::text::regclass AND x.indnatts = 1 \
       AND x.indexprs IS NULL AND x.indpred IS NULL \
       AND x.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = x.indrelid AND attname = 'tenantId') \
     FROM pg_index x WHERE x.indexrelid = to_regclass(quote_ident($1))";
const CHILD_INDEX: &str =
    "SELECT x.indisvalid FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid \
     WHERE i.inhparent = to_regclass(quote_ident($1)) AND x.indrelid = $2::text::regclass";

/// Catalog problems of `fk`'s index: valid, on ("tenantId"), with a valid attached index on
/// every leaf partition.
pub fn index_problems(client: &mut impl GenericClient, fk: &TenantFk) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    match index_validity(client, fk.index)? {
        None => {
            problems.push(format!("index {} is missing", fk.index));
            return Ok(problems);
        }
        Some(false) => problems.push(format!("index {} is INVALID", fk.index)),
        Some(true) => {}
    }
    let shape_ok: bool = client
        .query_one(INDEX_SHAPE, &[&fk.index, &fk.table])
        .map_err(|e| Error::db("reading an index definition", e))?
        .get(0);
    if !shape_ok {
        problems.push(format!(
            "index {} is not a plain index on {}(\"tenantId\")",
            fk.index, fk.table
        ));
    }
    for part in leaf_partitions(client, fk.table)? {
        if part.relname == fk.table {
            continue;
        }
        let child: Option<bool> = client
            .query_opt(CHILD_INDEX, &[&fk.index, &part.relation])
            .map_err(|e| Error::db("reading partition indexes", e))?
            .map(|r| r.get(0));
        match child {
            None => problems.push(format!(
                "partition {} has no index attached to {} (expected {})",
                part.relname,
                fk.index,
                child_index_name(&part)
            )),
            Some(false) => problems.push(format!(
                "the index of partition {} is INVALID",
                part.relname
            )),
            Some(true) => {}
        }
    }
    Ok(problems)
}

struct Fixture {
    tenant: String,
    other_tenant: String,
    conversation: String,
    message: String,
    api_log: String,
}

const INSERT_TENANT: &str =
    "INSERT INTO tenants (id, name) VALUES ($1, 'meta-chat-migrate verify')";
const INSERT_CONVERSATION: &str = "INSERT INTO conversations (id, \"tenantId\") VALUES ($1, $2)";
const INSERT_MESSAGE: &str =
    "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") \
     VALUES ($1, $2, $3, 'user', 'meta-chat-migrate verify', now())";
const INSERT_API_LOG: &str =
    "INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\") \
     VALUES ($1, $2, 'GET', '/verify', 200, 1, now())";

/// Runs the seven assertions and rolls everything back.
pub fn verify(client: &mut Client) -> Result<VerifyReport> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::db("starting the verify transaction", e))?;
    let tag = format!("mcm-verify-{:016x}", fastrand::u64(..));
    let fx = Fixture {
        tenant: format!("{tag}-tenant"),
        other_tenant: format!("{tag}-other-tenant"),
        conversation: format!("{tag}-conversation"),
        message: format!("{tag}-message"),
        api_log: format!("{tag}-api-log"),
    };
    let mut assertions = Vec::new();
    let mut check = |number: u8, outcome: std::result::Result<String, String>| {
        let (passed, message) = match outcome {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        assertions.push(Assertion {
            number,
            passed,
            message,
        });
    };

    // Counted before the fixture exists, so that the fixture's own rows never count.
    let no_orphans = test_no_orphans(&mut tx)?;
    check(1, test_valid_insert(&mut tx, &fx));
    check(2, test_invalid_tenant_rejected(&mut tx, &fx));
    check(3, test_cascade(&mut tx, &fx));
    check(
        4,
        catalog(
            constraint_problems(&mut tx, &MESSAGES)?,
            "Constraint exists with correct definition",
        ),
    );
    check(
        5,
        catalog(
            index_problems(&mut tx, &MESSAGES)?,
            "Index messages_tenant_id_idx exists for FK performance",
        ),
    );
    check(6, no_orphans);
    check(7, test_api_logs(&mut tx, &fx)?);

    tx.rollback()
        .map_err(|e| Error::db("rolling back the verify transaction", e))?;
    let passed = assertions.iter().all(|a| a.passed);
    Ok(VerifyReport { passed, assertions })
}

fn catalog(problems: Vec<String>, ok: &str) -> std::result::Result<String, String> {
    if problems.is_empty() {
        Ok(ok.to_string())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs `f` inside a savepoint, so that a failing statement does not end the transaction.
fn in_savepoint<T>(
    tx: &mut Transaction<'_>,
    f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<T, postgres::Error>,
) -> std::result::Result<T, postgres::Error> {
    let mut sp = tx.transaction()?;
    let out = f(&mut sp);
    if out.is_ok() {
        sp.commit()?;
    } else {
        sp.rollback()?;
    }
    out
}

fn test_valid_insert(
    tx: &mut Transaction<'_>,
    fx: &Fixture,
) -> std::result::Result<String, String> {
    in_savepoint(tx, |t| {
        t.execute(INSERT_TENANT, &[&fx.tenant])?;
        t.execute(INSERT_TENANT, &[&fx.other_tenant])?;
        // The conversation belongs to the other tenant: see the module docs.
        t.execute(INSERT_CONVERSATION, &[&fx.conversation, &fx.other_tenant])?;
        t.execute(INSERT_MESSAGE, &[&fx.message, &fx.tenant, &fx.conversation])?;
        t.execute(INSERT_API_LOG, &[&fx.api_log, &fx.tenant])?;
        Ok(())
    })
    .map(|_| "Valid message with correct tenant_id inserted successfully".to_string())
    .map_err(|e| {
        format!(
            "inserting a valid message failed: {}",
            describe_pg_error(&e)
        )
    })
}

/// Passes only for SQLSTATE 23503 raised by `constraint`.
fn expect_fk_violation(
    outcome: std::result::Result<u64, postgres::Error>,
    constraint: &str,
    what: &str,
) -> std::result::Result<(), String> {
    match outcome {
        Ok(_) => Err(format!(
            "{what} with a nonexistent tenant was accepted: no foreign key enforces \"tenantId\""
        )),
        Err(e) => match e.as_db_error() {
            Some(db) if db.code().code() == "23503" && db.constraint() == Some(constraint) => {
                Ok(())
            }
            _ => Err(format!(
                "{what} with a nonexistent tenant failed, but not with {constraint}: {}",
                describe_pg_error(&e)
            )),
        },
    }
}

fn test_invalid_tenant_rejected(
    tx: &mut Transaction<'_>,
    fx: &Fixture,
) -> std::result::Result<String, String> {
    let missing = format!("{}-missing", fx.tenant);
    let outcome = in_savepoint(tx, |t| {
        t.execute(
            INSERT_MESSAGE,
            &[&format!("{}-bad", fx.message), &missing, &fx.conversation],
        )
    });
    expect_fk_violation(outcome, MESSAGES.constraint, "a message")
        .map(|_| "Invalid tenant_id correctly rejected by FK constraint".to_string())
}

fn test_cascade(tx: &mut Transaction<'_>, fx: &Fixture) -> std::result::Result<String, String> {
    let remaining = in_savepoint(tx, |t| {
        t.execute("DELETE FROM tenants WHERE id = $1", &[&fx.tenant])?;
        t.query_one(
            "SELECT count(*) FROM messages WHERE \"tenantId\" = $1",
            &[&fx.tenant],
        )
        .map(|r| r.get::<_, i64>(0))
    })
    .map_err(|e| format!("deleting the test tenant failed: {}", describe_pg_error(&e)))?;
    if remaining == 0 {
        Ok("Cascade deletion working correctly (0 messages remain)".into())
    } else {
        Err(format!("deleting a tenant left {remaining} of its messages behind: ON DELETE CASCADE is not in force"))
    }
}

fn test_no_orphans(tx: &mut Transaction<'_>) -> Result<std::result::Result<String, String>> {
    let found = orphans::count(tx, &MESSAGES)?;
    Ok(if found.count == 0 {
        Ok("No orphaned messages found (data integrity intact)".into())
    } else {
        Err(format!(
            "{} orphaned messages found (sample ids: {})",
            found.count,
            found.sample_ids.join(", ")
        ))
    })
}

fn test_api_logs(
    tx: &mut Transaction<'_>,
    fx: &Fixture,
) -> Result<std::result::Result<String, String>> {
    let mut problems = constraint_problems(tx, &API_LOGS)?;
    problems.extend(index_problems(tx, &API_LOGS)?);
    // The log of the tenant deleted in TEST 3 must survive with "tenantId" NULL.
    match tx.query_opt(
        "SELECT \"tenantId\" FROM api_logs WHERE id = $1",
        &[&fx.api_log],
    ) {
        Ok(Some(row)) => {
            if let Some(t) = row.get::<_, Option<String>>(0) {
                problems.push(format!("deleting tenant {t} left its api_logs row pointing at it: ON DELETE SET NULL is not in force"));
            }
        }
        Ok(None) => problems.push(
            "deleting a tenant deleted its api_logs row instead of setting \"tenantId\" NULL"
                .into(),
        ),
        Err(e) => problems.push(format!(
            "reading the test api_logs row: {}",
            describe_pg_error(&e)
        )),
    }
    let outcome = in_savepoint(tx, |t| {
        t.execute(
            INSERT_API_LOG,
            &[
                &format!("{}-bad", fx.api_log),
                &format!("{}-missing", fx.tenant),
            ],
        )
    });
    if let Err(p) = expect_fk_violation(outcome, API_LOGS.constraint, "an api_logs row") {
        problems.push(p);
    }
    Ok(catalog(
        problems,
        "api_logs tenant FK constraint exists with ON DELETE SET NULL",
    ))
}
