//! A month that has not begun and whose rows are not in DEFAULT: attached behind an exclusion
//! CHECK on DEFAULT (`CHECK (NOT (<month>)) NOT VALID`, then validated), which proves to the
//! ATTACH that DEFAULT holds none of the month's rows, so that it scans nothing of DEFAULT.
//!
//! - DEFAULT small (up to [`SMALL_DEFAULT`]): one `attach-partition` transaction: the keyed
//!   tables locked first, the CHECK added and validated (a scan of a small table, under the
//!   ACCESS EXCLUSIVE on DEFAULT the ATTACH takes anyway), the ATTACH, the CHECK dropped. A
//!   failure rolls all of it back: nothing is left on DEFAULT.
//! - DEFAULT larger: `add-exclusion` (ACCESS EXCLUSIVE on DEFAULT, brief: no scan),
//!   `validate-exclusion` (SHARE UPDATE EXCLUSIVE: the scan blocks no read or write),
//!   `attach-partition`, `drop-checks`. A failure after `add-exclusion` drops the CHECK again
//!   ([`super::MonthPlan::cleanup`]); one the clean-up cannot drop then (a long reader of DEFAULT
//!   holds its lock) is dropped at the end of the run or by the next ([`super::leftovers`]), and
//!   `check` reports it until then.

use super::{exclusion_name, Month, Window};
use crate::catalog::Reader;
use crate::engine::step::{Action, LockClaim, LockMode, Statement, Step};
use crate::error::{Error, Result};
use crate::sql::{Ident, Relation};

/// The largest DEFAULT (its table's size) whose exclusion CHECK is validated inside the ATTACH's
/// transaction, under the ACCESS EXCLUSIVE lock it takes on DEFAULT anyway: scanning 8 MiB
/// takes milliseconds.
pub(super) const SMALL_DEFAULT: i64 = 8 * 1024 * 1024;

/// Whether DEFAULT carries `month`'s exclusion CHECK, and whether it is validated.
pub(super) fn state(c: &mut dyn Reader, default: &Relation, month: &str) -> Result<Option<bool>> {
    Ok(c
        .query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2 AND contype = 'c'",
            &[&default.to_string(), &exclusion_name(month)],
        )
        .map_err(|e| Error::db("reading the checks of the DEFAULT partition", e))?
        .map(|r| r.get(0)))
}

fn add_sql(m: &Month<'_>, d: &Relation) -> String {
    format!(
        "ALTER TABLE {d} ADD CONSTRAINT {} CHECK (NOT ({})) NOT VALID",
        Ident::new(exclusion_name(m.month)),
        m.range()
    )
}

fn validate_sql(m: &Month<'_>, d: &Relation) -> String {
    format!(
        "ALTER TABLE {d} VALIDATE CONSTRAINT {}",
        Ident::new(exclusion_name(m.month))
    )
}

fn drop_sql(m: &Month<'_>, d: &Relation) -> String {
    format!(
        "ALTER TABLE {d} DROP CONSTRAINT IF EXISTS {}",
        Ident::new(exclusion_name(m.month))
    )
}

/// The exclusion CHECK dropped from DEFAULT.
pub(super) fn drop_step(m: &Month<'_>, d: &Relation) -> Step {
    m.step(
        d,
        Action::DropChecks,
        vec![Statement::new(drop_sql(m, d))],
        vec![LockClaim::new(d, LockMode::AccessExclusive)],
        "brief",
    )
}

/// The month's steps after `create-table`, onto `steps`; the path, and the clean-up of a
/// failure. `existing`: the exclusion CHECK an earlier run left (validated or not).
pub(super) fn steps(
    m: &Month<'_>,
    d: &Relation,
    existing: Option<bool>,
    steps: &mut Vec<Step>,
) -> (&'static str, Vec<Step>) {
    if small(m.t.window) {
        steps.push(in_one_transaction(m, d, existing));
        return ("exclude", Vec::new());
    }
    if existing.is_none() {
        steps.push(m.step(
            d,
            Action::AddExclusion,
            vec![Statement::new(add_sql(m, d))],
            vec![LockClaim::new(d, LockMode::AccessExclusive)],
            "brief: no scan",
        ));
    }
    if existing != Some(true) {
        steps.push(m.step(
            d,
            Action::ValidateExclusion,
            vec![Statement::new(validate_sql(m, d))],
            vec![LockClaim::new(d, LockMode::ShareUpdateExclusive)],
            "scans it; reads and writes go on",
        ));
    }
    steps.push(m.attach(Some(d)));
    steps.push(drop_step(m, d));
    ("exclude-in-steps", vec![drop_step(m, d)])
}

fn small(w: &Window) -> bool {
    w.default_bytes <= SMALL_DEFAULT
}

/// The exclusion CHECK added, validated, used by the ATTACH and dropped, in one transaction.
fn in_one_transaction(m: &Month<'_>, d: &Relation, existing: Option<bool>) -> Step {
    let mut statements: Vec<Statement> = m.t.lock_keyed().into_iter().collect();
    if existing.is_none() {
        statements.push(Statement::short(add_sql(m, d)));
    }
    if existing != Some(true) {
        statements.push(Statement::short(validate_sql(m, d)));
    }
    statements.push(Statement::short(m.attach_sql()));
    statements.push(Statement::new(drop_sql(m, d)));
    let table = &m.t.window.table;
    let mut claims = vec![
        LockClaim::new(table, LockMode::ShareUpdateExclusive),
        LockClaim::new(d, LockMode::AccessExclusive),
        LockClaim::new(&m.partition, LockMode::AccessExclusive),
    ];
    claims.extend(m.t.keyed_claims());
    m.step(
        table,
        Action::AttachPartition,
        statements,
        claims,
        "one transaction: an exclusion CHECK on the small DEFAULT added and validated, the attach (nothing else scanned or built; the keys cloned onto the empty table), the CHECK dropped: brief",
    )
}
