//! The spec's seven validation assertions (validation_tests.sql), then this crate's own (8-10,
//! tenant consistency), run against the live database inside one transaction that is rolled
//! back, so nothing is left behind.
//!
//! The behavioural assertions are built so that only the constraint under test can make them
//! pass. On a database without tenant consistency, the test message sits in a conversation of
//! another tenant, so deleting its tenant can cascade to it only through
//! `messages_tenant_id_fkey`. Once `messages_conversation_tenant_fkey` exists no message can sit
//! there: the message then sits in its own tenant's conversation, TEST 3 shows that deleting the
//! tenant removes it, and TEST 4 shows which key carries the cascade. TEST 8 tries exactly the
//! message the new key must refuse.
//!
//! The fixture fills every NOT NULL column without a default (an adopted database has such
//! columns: Prisma's `@updatedAt`), and an assertion that could not be tried says so (`NOT RUN`)
//! instead of passing or blaming a constraint.

use postgres::{Client, Transaction};
use serde::Serialize;

use crate::embedded::restore_api_logs_tenant_fk::{API_LOGS_TENANT_FK, API_LOGS_TENANT_IDX};
use crate::embedded::restore_tenant_fk::{
    MESSAGES_TENANT_FK, MESSAGES_TENANT_IDX, ORPHANED_MESSAGES,
};
use crate::embedded::tenant_consistent_messages::{
    CONVERSATIONS_ID_TENANT_KEY, MESSAGES_CONVERSATION_TENANT_FK,
};
use crate::engine;
use crate::engine::ops::Operation;
use crate::error::{describe_pg_error, Error, Result};
use crate::preflight;
use crate::sql::{Ident, Relation};

/// The outcome of one assertion.
#[derive(Clone, Debug, Serialize)]
pub struct Assertion {
    /// Its number, from 1: the `n` of `TEST n`.
    pub number: u8,
    /// Whether it passed (false when it failed or could not run).
    pub passed: bool,
    /// False when the assertion could not be run (its fixture could not be written).
    pub ran: bool,
    /// What it showed, or why it failed or could not run.
    pub message: String,
}

/// What `verify` found, with everything it wrote rolled back.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Whether every assertion passed.
    pub passed: bool,
    /// Every assertion, in order of number.
    pub assertions: Vec<Assertion>,
}

impl VerifyReport {
    /// The assertions that did not pass, those that could not run included.
    pub fn failed(&self) -> Vec<&Assertion> {
        self.assertions.iter().filter(|a| !a.passed).collect()
    }

    /// The error `verify` exits with when an assertion failed or could not run.
    pub fn into_result(self) -> Result<VerifyReport> {
        let failed = self.failed();
        if failed.is_empty() {
            return Ok(self);
        }
        Err(Error::VerifyFailed {
            failed: failed.len(),
            total: self.assertions.len(),
            names: failed
                .iter()
                .map(|a| format!("TEST {}", a.number))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// `TEST n PASSED: ...` / `TEST n FAILED: ...` / `TEST n NOT RUN: ...` lines.
    pub fn lines(&self) -> Vec<String> {
        self.assertions
            .iter()
            .map(|a| {
                let word = match (a.ran, a.passed) {
                    (_, true) => "PASSED",
                    (true, false) => "FAILED",
                    (false, _) => "NOT RUN",
                };
                format!("TEST {} {word}: {}", a.number, a.message)
            })
            .collect()
    }
}

/// An assertion's outcome before it is numbered.
enum Outcome {
    Passed(String),
    Failed(String),
    NotRun(String),
}

fn outcome(r: std::result::Result<String, String>) -> Outcome {
    match r {
        Ok(m) => Outcome::Passed(m),
        Err(m) => Outcome::Failed(m),
    }
}

struct Fixture {
    schema: String,
    tenant: String,
    other_tenant: String,
    /// A tenant that stays: TEST 8's message names it (TEST 3 deletes `tenant`).
    third_tenant: String,
    /// The tenant's own conversation, and one of the other tenant.
    own_conversation: String,
    other_conversation: String,
    message: String,
    api_log: String,
    /// `messages_conversation_tenant_fkey` exists: the message goes into its tenant's own
    /// conversation (see the module docs).
    consistent: bool,
}

impl Fixture {
    fn rel(&self, table: &str) -> Relation {
        Relation::new(&self.schema, table)
    }

    fn message_conversation(&self) -> &str {
        if self.consistent {
            &self.own_conversation
        } else {
            &self.other_conversation
        }
    }
}

const HAS_CONSTRAINT: &str = "SELECT EXISTS (SELECT 1 FROM pg_constraint \
     WHERE conrelid = $1::text::regclass AND conname = $2)";

/// Refuses, in one line, a schema that holds none of what the assertions use (a database not
/// migrated yet): exit 4, as an assertion that could not run.
pub(crate) fn ensure_migrated(client: &mut Client, schema: &str) -> Result<()> {
    let missing: Vec<String> = client
        .query(
            "SELECT t FROM unnest($2::text[]) t WHERE to_regclass(format('%I.%I', $1::text, t)) IS NULL",
            &[&schema, &&["tenants", "conversations", "messages", "api_logs"][..]],
        )
        .map_err(|e| Error::db("looking for the platform's tables", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::NotMigrated {
        schema: schema.to_string(),
        missing: missing.join(", "),
    })
}

/// Runs the assertions and rolls everything back.
pub fn verify(client: &mut Client, schema: &str) -> Result<VerifyReport> {
    let mut tx = client
        .transaction()
        .map_err(|e| Error::db("starting the verify transaction", e))?;
    let fx = fixture(&mut tx, schema)?;
    let outcomes = assertions(&mut tx, &fx)?;
    tx.rollback()
        .map_err(|e| Error::db("rolling back the verify transaction", e))?;
    let assertions: Vec<Assertion> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let (passed, ran, message) = match o {
                Outcome::Passed(m) => (true, true, m),
                Outcome::Failed(m) => (false, true, m),
                Outcome::NotRun(m) => (false, false, m),
            };
            Assertion {
                number: i as u8 + 1,
                passed,
                ran,
                message,
            }
        })
        .collect();
    let passed = assertions.iter().all(|a| a.passed);
    Ok(VerifyReport { passed, assertions })
}

fn fixture(tx: &mut Transaction<'_>, schema: &str) -> Result<Fixture> {
    let tag = format!("mcm-verify-{:016x}", fastrand::u64(..));
    let messages = Relation::new(schema, "messages").to_string();
    let consistent: bool = tx
        .query_one(
            HAS_CONSTRAINT,
            &[&messages, &MESSAGES_CONVERSATION_TENANT_FK.name],
        )
        .map_err(|e| Error::db("reading the constraints of messages", e))?
        .get(0);
    Ok(Fixture {
        schema: schema.to_string(),
        tenant: format!("{tag}-tenant"),
        other_tenant: format!("{tag}-other-tenant"),
        third_tenant: format!("{tag}-third-tenant"),
        own_conversation: format!("{tag}-own-conversation"),
        other_conversation: format!("{tag}-other-conversation"),
        message: format!("{tag}-message"),
        api_log: format!("{tag}-api-log"),
        consistent,
    })
}

/// The ten assertions, in order.
fn assertions(tx: &mut Transaction<'_>, fx: &Fixture) -> Result<Vec<Outcome>> {
    let schema = fx.schema.as_str();
    // Counted before the fixture exists, so that the fixture's own rows never count.
    let no_orphans = test_no_orphans(tx, schema)?;
    let (fixture, sql) = test_valid_insert(tx, fx);
    let not_run = |what: &str| {
        Outcome::NotRun(format!(
            "the test rows could not be written (see TEST 1), so {what} could not be tried"
        ))
    };
    let mut outcomes = vec![fixture];
    outcomes.push(match &sql {
        Some(i) => test_invalid_tenant_rejected(tx, fx, i),
        None => not_run("an insert with an unknown tenant"),
    });
    outcomes.push(match &sql {
        Some(_) => outcome(test_cascade(tx, fx)),
        None => not_run("deleting a tenant"),
    });
    let fk: [&'static dyn Operation; 1] = [&MESSAGES_TENANT_FK];
    outcomes.push(catalog(
        tx,
        schema,
        &fk,
        "Constraint exists with correct definition",
    )?);
    let idx: [&'static dyn Operation; 1] = [&MESSAGES_TENANT_IDX];
    outcomes.push(catalog(
        tx,
        schema,
        &idx,
        "Index messages_tenant_id_idx exists for FK performance",
    )?);
    outcomes.push(no_orphans);
    outcomes.push(test_api_logs(tx, fx, sql.as_ref())?);
    outcomes.push(match &sql {
        Some(i) => outcome(test_cross_tenant_rejected(tx, fx, i)),
        None => not_run("a message in another tenant's conversation"),
    });
    let fk: [&'static dyn Operation; 1] = [&MESSAGES_CONVERSATION_TENANT_FK];
    outcomes.push(catalog(
        tx,
        schema,
        &fk,
        "messages_conversation_tenant_fkey validated and adopted on every partition",
    )?);
    let idx: [&'static dyn Operation; 1] = [&CONVERSATIONS_ID_TENANT_KEY];
    outcomes.push(catalog(
        tx,
        schema,
        &idx,
        "Unique index conversations_id_tenant_id_key is valid",
    )?);
    Ok(outcomes)
}

/// A catalog assertion: the declared operations are in place, exactly as declared.
fn catalog(
    tx: &mut Transaction<'_>,
    schema: &str,
    ops: &[&'static dyn Operation],
    ok: &str,
) -> Result<Outcome> {
    let mut problems = Vec::new();
    for plan in engine::plan(tx, schema, ops)? {
        problems.extend(crate::check::problems(&plan));
        if plan.is_done() || !problems.is_empty() {
            continue;
        }
        problems.push(format!("{} is not in place", plan.id));
    }
    Ok(if problems.is_empty() {
        Outcome::Passed(ok.to_string())
    } else {
        Outcome::Failed(problems.join("; "))
    })
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

/// The NOT NULL columns of `table` without a default, other than `given`, with a value of their
/// type; `Err` naming a column whose type has no value this fixture knows.
const REQUIRED: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typtype::text, \
       t.typcategory::text, (SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder LIMIT 1) \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull \
       AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '' AND NOT (a.attname = ANY($2)) \
     ORDER BY a.attnum";

fn required_columns(
    tx: &mut Transaction<'_>,
    table: &Relation,
    given: &[&str],
) -> std::result::Result<Vec<(String, String)>, String> {
    let given: Vec<String> = given.iter().map(|s| s.to_string()).collect();
    let rows = tx
        .query(REQUIRED, &[&table.to_string(), &given])
        .map_err(|e| describe_pg_error(&e))?;
    rows.into_iter()
        .map(|r| {
            let (name, ty): (String, String) = (r.get(0), r.get(1));
            let (typtype, category): (String, String) = (r.get(2), r.get(3));
            let enum_label: Option<String> = r.get(4);
            let value = match (typtype.as_str(), category.as_str()) {
                ("e", _) => enum_label.map(|l| format!("{}::{ty}", crate::db::quote_literal(&l))),
                (_, "S") => Some(format!("'meta-chat-migrate verify'::{ty}")),
                (_, "N") => Some(format!("0::{ty}")),
                (_, "B") => Some("false".into()),
                (_, "D") => Some(format!("now()::{ty}")),
                (_, "A") => Some(format!("'{{}}'::{ty}")),
                (_, "U") if ty == "jsonb" || ty == "json" => Some(format!("'{{}}'::{ty}")),
                (_, "U") if ty == "uuid" => Some("gen_random_uuid()".into()),
                _ => None,
            };
            value.map(|v| (name.clone(), v)).ok_or_else(|| {
                format!(
                    "{} has a NOT NULL column {name} of type {ty} without a default",
                    table.plain()
                )
            })
        })
        .collect()
}

/// `INSERT INTO table (columns..., required...) VALUES ($1.., values...)`.
fn insert_sql(
    tx: &mut Transaction<'_>,
    table: &Relation,
    columns: &[&str],
    values: &[&str],
) -> std::result::Result<String, String> {
    let extra = required_columns(tx, table, columns)?;
    let cols: Vec<String> = columns
        .iter()
        .map(|c| Ident::new(*c).to_string())
        .chain(
            extra
                .iter()
                .map(|(c, _)| Ident::new(c.as_str()).to_string()),
        )
        .collect();
    let vals: Vec<String> = values
        .iter()
        .map(|v| v.to_string())
        .chain(extra.into_iter().map(|(_, v)| v))
        .collect();
    Ok(format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        cols.join(", "),
        vals.join(", ")
    ))
}

struct Inserts {
    tenant: String,
    conversation: String,
    message: String,
    /// A message with `"createdAt"` given as `$4` (text).
    message_at: String,
    api_log: String,
}

fn inserts(tx: &mut Transaction<'_>, fx: &Fixture) -> std::result::Result<Inserts, String> {
    let message = |tx: &mut Transaction<'_>, at: &str| {
        insert_sql(
            tx,
            &fx.rel("messages"),
            &[
                "id",
                "tenantId",
                "conversationId",
                "role",
                "content",
                "createdAt",
            ],
            &["$1", "$2", "$3", "'user'", "'meta-chat-migrate verify'", at],
        )
    };
    Ok(Inserts {
        message: message(tx, "now()")?,
        message_at: message(tx, "$4::text::timestamptz")?,
        tenant: insert_sql(
            tx,
            &fx.rel("tenants"),
            &["id", "name"],
            &["$1", "'meta-chat-migrate verify'"],
        )?,
        conversation: insert_sql(
            tx,
            &fx.rel("conversations"),
            &["id", "tenantId"],
            &["$1", "$2"],
        )?,
        api_log: insert_sql(
            tx,
            &fx.rel("api_logs"),
            &[
                "id",
                "tenantId",
                "method",
                "path",
                "status",
                "duration",
                "createdAt",
            ],
            &["$1", "$2", "'GET'", "'/verify'", "200", "1", "now()"],
        )?,
    })
}

/// TEST 1: the fixture rows go in. Returns the INSERT statements for the other tests, or
/// `None` (with a NOT RUN outcome) when they cannot be written.
fn test_valid_insert(tx: &mut Transaction<'_>, fx: &Fixture) -> (Outcome, Option<Inserts>) {
    let sql = match inserts(tx, fx) {
        Ok(s) => s,
        Err(why) => {
            return (
                Outcome::NotRun(format!("the test rows cannot be written: {why}")),
                None,
            )
        }
    };
    let written = in_savepoint(tx, |t| {
        t.execute(&sql.tenant, &[&fx.tenant])?;
        t.execute(&sql.tenant, &[&fx.other_tenant])?;
        t.execute(&sql.tenant, &[&fx.third_tenant])?;
        t.execute(&sql.conversation, &[&fx.own_conversation, &fx.tenant])?;
        t.execute(
            &sql.conversation,
            &[&fx.other_conversation, &fx.other_tenant],
        )?;
        t.execute(
            &sql.message,
            &[&fx.message, &fx.tenant, &fx.message_conversation()],
        )?;
        t.execute(&sql.api_log, &[&fx.api_log, &fx.tenant])?;
        Ok(())
    });
    match written {
        Ok(()) => (
            Outcome::Passed("Valid message with correct tenant_id inserted successfully".into()),
            Some(sql),
        ),
        Err(e) => (
            Outcome::Failed(format!(
                "inserting a valid message failed: {}",
                describe_pg_error(&e)
            )),
            None,
        ),
    }
}

/// Passes only for SQLSTATE 23503 raised by `constraint`.
fn expect_fk_violation(
    outcome: std::result::Result<u64, postgres::Error>,
    constraint: &str,
    what: &str,
) -> std::result::Result<(), String> {
    match outcome {
        Ok(_) => Err(format!("{what} was accepted: no foreign key refuses it")),
        Err(e) => match e.as_db_error() {
            Some(db) if db.code().code() == "23503" && db.constraint() == Some(constraint) => {
                Ok(())
            }
            _ => Err(format!(
                "{what} failed, but not with {constraint}: {}",
                describe_pg_error(&e)
            )),
        },
    }
}

/// TEST 2. A message of a missing tenant also has no matching conversation, so where
/// `messages_conversation_tenant_fkey` exists the server may report that key first: it checks
/// a partition's keys in the order of their trigger names, which follows the order the keys
/// came to that partition (on a partition created after both keys existed, by the runner or by
/// `CREATE TABLE ... PARTITION OF`, the order of the key names). The test message then goes to
/// a month whose partition checks the tenant key first. Without one (every partition created
/// after both keys, or trigger names whose OIDs crossed a power of ten), the refusal by the
/// tenant-consistency key passes when the tenant key is in place and validated on the parent
/// (TEST 4 and 9 check it on every partition): the row was refused by a foreign key either
/// way, and a healthy database must not fail `verify` for the order of its triggers.
fn test_invalid_tenant_rejected(tx: &mut Transaction<'_>, fx: &Fixture, sql: &Inserts) -> Outcome {
    let bad = format!("{}-bad", fx.message);
    let missing = format!("{}-missing", fx.tenant);
    let mut attempt = in_savepoint(tx, |t| {
        t.execute(&sql.message, &[&bad, &missing, &fx.other_conversation])
    });
    if refused_by(&attempt) == Some(MESSAGES_CONVERSATION_TENANT_FK.name) {
        match month_checking_tenant_first(tx, fx) {
            Some(at) => {
                attempt = in_savepoint(tx, |t| {
                    t.execute(
                        &sql.message_at,
                        &[&bad, &missing, &fx.other_conversation, &at],
                    )
                })
            }
            None => return refused_by_composite_first(tx, fx),
        }
    }
    outcome(
        expect_fk_violation(
            attempt,
            MESSAGES_TENANT_FK.name,
            "a message with a nonexistent tenant",
        )
        .map(|_| "Invalid tenant_id correctly rejected by FK constraint".to_string()),
    )
}

/// TEST 2 where every partition checks the tenant-consistency key first: passed when the
/// tenant key is in place and validated on the parent, failed otherwise.
fn refused_by_composite_first(tx: &mut Transaction<'_>, fx: &Fixture) -> Outcome {
    let validated = in_savepoint(tx, |t| {
        t.query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2 AND contype = 'f'",
            &[&fx.rel("messages").to_string(), &MESSAGES_TENANT_FK.name],
        )
    })
    .ok()
    .flatten()
    .map(|r| r.get::<_, bool>(0));
    if validated == Some(true) {
        log::info!(
            "TEST 2: every partition checks {} first, which refused the message with an unknown tenant; {} is in place and validated",
            MESSAGES_CONVERSATION_TENANT_FK.name,
            MESSAGES_TENANT_FK.name
        );
        return Outcome::Passed("Invalid tenant_id correctly rejected by FK constraint".into());
    }
    Outcome::Failed(format!(
        "a message with a nonexistent tenant was refused only by {}: {} is {}",
        MESSAGES_CONVERSATION_TENANT_FK.name,
        MESSAGES_TENANT_FK.name,
        if validated.is_some() {
            "NOT VALID"
        } else {
            "missing"
        }
    ))
}

fn refused_by(attempt: &std::result::Result<u64, postgres::Error>) -> Option<&str> {
    attempt
        .as_ref()
        .err()
        .and_then(|e| e.as_db_error())
        .and_then(|d| d.constraint())
}

/// The lower bound of the newest monthly partition of messages that checks the tenant key
/// before the tenant-consistency key (trigger names compare bytewise).
fn month_checking_tenant_first(tx: &mut Transaction<'_>, fx: &Fixture) -> Option<String> {
    let first = |key: &str| {
        format!(
            "(SELECT min(tg.tgname::text COLLATE \"C\") FROM pg_trigger tg JOIN pg_constraint k ON k.oid = tg.tgconstraint \
              WHERE tg.tgrelid = c.oid AND k.conname = {})",
            crate::db::quote_literal(key)
        )
    };
    let sql = format!(
        "SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), $$FROM \\('([^']+)'\\)$$))[1] \
           FROM pg_partition_tree($1::text::regclass) t JOIN pg_class c ON c.oid = t.relid \
          WHERE t.isleaf AND pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM (''%' \
            AND {} < {} ORDER BY c.relname DESC LIMIT 1",
        first(MESSAGES_TENANT_FK.name),
        first(MESSAGES_CONVERSATION_TENANT_FK.name)
    );
    let messages = fx.rel("messages").to_string();
    in_savepoint(tx, |t| t.query_opt(&sql, &[&messages]))
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<String>>(0))
}

fn test_cascade(tx: &mut Transaction<'_>, fx: &Fixture) -> std::result::Result<String, String> {
    let messages = fx.rel("messages");
    let remaining = in_savepoint(tx, |t| {
        t.execute(
            &format!("DELETE FROM {} WHERE id = $1", fx.rel("tenants")),
            &[&fx.tenant],
        )?;
        t.query_one(
            &format!("SELECT count(*) FROM {messages} WHERE id = $1"),
            &[&fx.message],
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

fn test_no_orphans(tx: &mut Transaction<'_>, schema: &str) -> Result<Outcome> {
    let found = preflight::count(tx, &ORPHANED_MESSAGES, schema)?;
    Ok(if found.count == 0 {
        Outcome::Passed("No orphaned messages found (data integrity intact)".into())
    } else {
        Outcome::Failed(format!(
            "{} orphaned messages found (sample ids: {})",
            found.count,
            found.sample_ids.join(", ")
        ))
    })
}

fn test_api_logs(tx: &mut Transaction<'_>, fx: &Fixture, sql: Option<&Inserts>) -> Result<Outcome> {
    let ok = "api_logs tenant FK constraint exists with ON DELETE SET NULL";
    let ops: [&'static dyn Operation; 2] = [&API_LOGS_TENANT_FK, &API_LOGS_TENANT_IDX];
    let mut problems = match catalog(tx, &fx.schema, &ops, ok)? {
        Outcome::Failed(p) => vec![p],
        _ => Vec::new(),
    };
    let Some(sql) = sql else {
        problems.push(
            "its behaviour could not be tried: the test rows could not be written (see TEST 1)"
                .into(),
        );
        return Ok(Outcome::NotRun(problems.join("; ")));
    };
    // The log of the tenant deleted in TEST 3 must survive with "tenantId" NULL.
    let logs = fx.rel("api_logs");
    match tx.query_opt(
        &format!("SELECT \"tenantId\" FROM {logs} WHERE id = $1"),
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
    let attempt = in_savepoint(tx, |t| {
        t.execute(
            &sql.api_log,
            &[
                &format!("{}-bad", fx.api_log),
                &format!("{}-missing", fx.tenant),
            ],
        )
    });
    if let Err(p) = expect_fk_violation(
        attempt,
        API_LOGS_TENANT_FK.name,
        "an api_logs row with a nonexistent tenant",
    ) {
        problems.push(p);
    }
    Ok(if problems.is_empty() {
        Outcome::Passed(ok.into())
    } else {
        Outcome::Failed(problems.join("; "))
    })
}

/// TEST 8: a message whose tenant is not its conversation's is refused, by the new key.
fn test_cross_tenant_rejected(
    tx: &mut Transaction<'_>,
    fx: &Fixture,
    sql: &Inserts,
) -> std::result::Result<String, String> {
    // A message of an existing tenant in another tenant's conversation: the tenant key accepts
    // it, only the tenant-consistency key can refuse it.
    let attempt = in_savepoint(tx, |t| {
        t.execute(
            &sql.message,
            &[
                &format!("{}-cross", fx.message),
                &fx.third_tenant,
                &fx.other_conversation,
            ],
        )
    });
    expect_fk_violation(attempt, MESSAGES_CONVERSATION_TENANT_FK.name, "a message in a conversation of another tenant")
        .map(|_| "A message in another tenant's conversation is rejected by messages_conversation_tenant_fkey".to_string())
}
