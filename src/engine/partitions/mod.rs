//! Monthly partitions created ahead of time, online: planned per month from the catalog, and
//! run through the engine's lock rules like every other step. Every step of a month runs as the
//! table's owner ([`carry`]). For a month to create (`messages_YYYY_MM`, bounds continuing the
//! existing partitions exactly, in the time zone in which their bounds are month starts:
//! `window`):
//!
//! 1. `drop-leftover`, only where an interrupted run left a standalone table of the month's name
//!    (it carries this runner's bound CHECK), checked empty again under its lock: nothing of it
//!    is reused, so its columns, owner or indexes never matter. Any other relation of that name
//!    refuses the month (`leftovers`).
//! 2. `create-table`: a standalone table `LIKE` the parent with its indexes (named and placed as
//!    `PARTITION OF` names and places a partition's, so that attaching adopts them), a CHECK of
//!    the month's bounds (so that attaching scans nothing of it), and what [`carry`] says it
//!    carries. Only the new table is locked. The parent's foreign keys are not added: attaching
//!    a table that brings its own key makes PostgreSQL adopt it, which takes ACCESS EXCLUSIVE
//!    on `tenants` and `conversations`; attaching without them clones the keys under SHARE ROW
//!    EXCLUSIVE.
//! 3. a month that has not begun and has no rows in DEFAULT: attached behind an exclusion CHECK
//!    on DEFAULT, so that the ATTACH scans nothing (`exclude`).
//! 4. a month that has begun, or whose rows already sit in DEFAULT: `move-and-attach` (`moves`).
//! 5. `drop-checks`: the helper CHECKs go (the partition bound says the same).
//!
//! Every lock a step takes while it holds others waits briefly, after checking that no
//! transaction holding a lock on the tables involved waits for it ([`Step::guard`]): the runner
//! gives way and retries rather than ever making an application transaction a deadlock's victim.
//! The tables the keys reference are locked first, so that nothing holds DEFAULT while it waits
//! for them. A month that fails comes off again ([`MonthPlan::cleanup`]): no helper CHECK is
//! left on DEFAULT to refuse the application's inserts, no standalone table holding space.

pub mod carry;
mod exclude;
mod leftovers;
mod moves;
pub mod window;

use serde::Serialize;

use super::step::{Action, LockClaim, LockMode, Statement, Step};
use crate::catalog::{self, Reader};
use crate::db::{quote_literal, Guarded};
use crate::error::{Error, Result};
pub use crate::findings::NotCreated;
use crate::sql::{Ident, Relation};
use carry::Carry;
pub use carry::Publication;
pub(crate) use leftovers::leftovers;
pub use leftovers::{helper_checks, HelperCheck};
pub use window::{window, MonthRows, Window};

/// What one month needs.
#[derive(Clone, Debug, Serialize)]
pub struct MonthPlan {
    /// The partitioned table.
    pub table: Relation,
    /// `YYYY-MM`.
    pub month: String,
    /// The new partition.
    pub partition: Relation,
    /// Its lower bound, a timestamptz literal in UTC.
    pub from: String,
    /// Its upper bound (exclusive).
    pub to: String,
    /// Rows this month takes out of DEFAULT.
    pub rows_from_default: i64,
    /// `attach`, `exclude`, `exclude-in-steps`, `move` or `move-published` (rows inserted
    /// through the parent).
    pub path: &'static str,
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// Run when a step fails: the exclusion CHECK comes off DEFAULT again and the standalone
    /// table is dropped (if it is still empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleanup: Vec<Step>,
}

/// The CHECK of a new table's bounds while it is standalone; also how a leftover of this runner
/// is told from a table somebody else made.
pub const BOUND_CHECK: &str = "mcm_month_bound";

/// The name of the constraint the engine puts on DEFAULT while `month` is created.
pub fn exclusion_name(month: &str) -> String {
    format!("mcm_excludes_{}", month.replace('-', "_"))
}

const BOUNDS: &str = "SELECT to_char(($1::text || '-01')::timestamp AT TIME ZONE $2 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00', \
       to_char((($1::text || '-01')::timestamp + interval '1 month') AT TIME ZONE $2 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'";

/// The months one table's window lacks: planned, or refused with the reason.
#[derive(Default)]
pub(crate) struct TablePlan {
    pub months: Vec<MonthPlan>,
    pub refused: Vec<NotCreated>,
}

/// What every month of one table shares while it is planned.
struct Table<'a> {
    window: &'a Window,
    carry: Carry,
    columns: Vec<String>,
    /// The tables the parent's keys reference, and those whose keys reference the parent: the
    /// ATTACH takes SHARE ROW EXCLUSIVE on both.
    keyed: Vec<Relation>,
    /// What the move's DELETE would fire that its INSERT would not.
    hazards: Vec<String>,
}

impl Table<'_> {
    /// The tables a step of this table deadlocks on (`regclass` texts): the parent, DEFAULT,
    /// and the keyed tables.
    /// The live tables among `claims`, each with the modes that conflict with the lock claimed
    /// on it: those a long holder or a waiting transaction matters on.
    fn guard(&self, claims: &[LockClaim]) -> Vec<Guarded> {
        let w = self.window;
        std::iter::once(&w.table)
            .chain(w.default.as_ref())
            .chain(&self.keyed)
            .filter_map(|r| {
                let claim = claims.iter().find(|k| k.relation == r.plain())?;
                Some(Guarded {
                    relation: r.to_string(),
                    conflicting: claim.mode.conflicting().to_string(),
                })
            })
            .collect()
    }

    /// `LOCK TABLE` of the keyed tables in the mode the ATTACH takes, first in its transaction.
    fn lock_keyed(&self) -> Option<Statement> {
        (!self.keyed.is_empty()).then(|| {
            let list = self
                .keyed
                .iter()
                .map(Relation::to_string)
                .collect::<Vec<_>>();
            Statement::new(format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                list.join(", ")
            ))
        })
    }

    fn keyed_claims(&self) -> impl Iterator<Item = LockClaim> + '_ {
        self.keyed
            .iter()
            .map(|r| LockClaim::new(r, LockMode::ShareRowExclusive))
    }
}

/// Plans every missing month of `window`. Read-only.
pub(crate) fn plan(c: &mut dyn Reader, window: &Window) -> Result<TablePlan> {
    let mut out = TablePlan::default();
    if window.missing.is_empty() {
        return Ok(out);
    }
    let parent = catalog::relation(c, &window.table)?
        .ok_or_else(|| window::layout_error(&window.table, "it does not exist".into()))?;
    let carry = carry::read(c, window)?;
    if let Some(why) = &carry.refusal {
        out.refused.push(NotCreated {
            table: window.table.plain(),
            month: None,
            reason: why.clone(),
        });
        return Ok(out);
    }
    let mut keyed = catalog::referenced_tables(c, parent.oid)?;
    keyed.extend(moves::referencing_tables(c, &window.table)?);
    let t = Table {
        window,
        columns: catalog::columns(c, parent.oid)?,
        keyed,
        hazards: match &window.default {
            Some(d) if window.rows_in_default() > 0 => moves::hazards(c, d, &window.table)?,
            _ => Vec::new(),
        },
        carry,
    };
    for month in &window.missing {
        let row = c
            .query_one(BOUNDS, &[month, &window.zone])
            .map_err(|e| Error::db("computing the bounds of a month", e))?;
        let m = Month {
            t: &t,
            month,
            partition: Relation::new(
                window.table.schema.as_str(),
                format!("{}_{}", window.table.name.as_str(), month.replace('-', "_")),
            ),
            from: row.get(0),
            to: row.get(1),
        };
        match m.plan(c)? {
            Ok(p) => out.months.push(p),
            Err(reason) => out.refused.push(NotCreated {
                table: window.table.plain(),
                month: Some(month.clone()),
                reason,
            }),
        }
    }
    Ok(out)
}

/// One month being planned.
struct Month<'a> {
    t: &'a Table<'a>,
    month: &'a str,
    partition: Relation,
    from: String,
    to: String,
}

/// A month's plan, or why it is refused.
type Planned = std::result::Result<MonthPlan, String>;

/// The steps from the prepared table to an attached partition, the path taken, and the
/// clean-up of a failure; or why the month is refused.
type Attaching = std::result::Result<(&'static str, Vec<Step>), String>;

impl Month<'_> {
    fn plan(&self, c: &mut dyn Reader) -> Result<Planned> {
        let mut steps = Vec::new();
        match leftovers::leftover(self, c)? {
            Ok(drop) => steps.extend(drop),
            Err(why) => return Ok(Err(why)),
        }
        match self.create_table() {
            Ok(s) => steps.push(s),
            Err(why) => return Ok(Err(why)),
        }
        let (path, mut cleanup) = match self.attach_steps(c, &mut steps)? {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        cleanup.push(leftovers::drop_if_standalone(self));
        steps.push(self.step(
            &self.partition,
            Action::DropChecks,
            vec![Statement::new(format!(
                "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                self.partition,
                Ident::new(BOUND_CHECK)
            ))],
            vec![LockClaim::new(&self.partition, LockMode::AccessExclusive)],
            "the new partition, brief",
        ));
        Ok(Ok(MonthPlan {
            table: self.t.window.table.clone(),
            month: self.month.to_string(),
            partition: self.partition.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            rows_from_default: self.t.window.default_rows_of(self.month),
            path,
            steps,
            cleanup,
        }))
    }

    /// A step of this month: run as the table's owner, guarding the tables it deadlocks on.
    fn step(
        &self,
        on: &Relation,
        action: Action,
        statements: Vec<Statement>,
        claims: Vec<LockClaim>,
        note: &str,
    ) -> Step {
        let guard = self.t.guard(&claims);
        let mut step = Step::with_statements(
            self.partition.name.as_str(),
            on,
            action,
            statements,
            String::new(),
        )
        .claiming(claims, note);
        step.run_as = self.t.carry.run_as.clone();
        step.guard = guard;
        step
    }

    fn range(&self) -> String {
        let key = Ident::new(self.t.window.key.as_str());
        format!(
            "{key} >= {} AND {key} < {}",
            quote_literal(&self.from),
            quote_literal(&self.to)
        )
    }

    fn attach_sql(&self) -> String {
        format!(
            "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})",
            self.t.window.table,
            self.partition,
            quote_literal(&self.from),
            quote_literal(&self.to)
        )
    }

    fn create_table(&self) -> std::result::Result<Step, String> {
        let (table, part) = (&self.t.window.table, &self.partition);
        let mut statements = vec![
            Statement::new(format!(
                "CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED \
                 INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING INDEXES){}",
                self.t
                    .carry
                    .tablespace()
                    .map_or(String::new(), |ts| format!(" TABLESPACE {}", Ident::new(ts)))
            )),
            Statement::new(format!(
                "ALTER TABLE {part} ADD CONSTRAINT {} CHECK ({})",
                Ident::new(BOUND_CHECK),
                self.range()
            )),
        ];
        statements.extend(
            self.t
                .carry
                .statements(part)?
                .into_iter()
                .map(Statement::new),
        );
        let mut claims = vec![
            LockClaim::new(table, LockMode::AccessShare),
            LockClaim::new(part, LockMode::AccessExclusive),
        ];
        claims.extend(
            self.t
                .carry
                .policy_tables
                .iter()
                .map(|r| LockClaim::new(r, LockMode::AccessShare)),
        );
        Ok(self.step(
            part,
            Action::CreateTable,
            statements,
            claims,
            "a new table: nothing live is locked",
        ))
    }

    /// The steps from the prepared table to an attached partition (see the module docs).
    fn attach_steps(&self, c: &mut dyn Reader, steps: &mut Vec<Step>) -> Result<Attaching> {
        let w = self.t.window;
        let Some(d) = &w.default else {
            steps.push(self.attach(None));
            return Ok(Ok(("attach", Vec::new())));
        };
        let rows = w.default_rows_of(self.month);
        let begun = window::month_index(self.month) <= window::month_index(&w.begun);
        let existing = exclude::state(c, d, self.month)?;
        if rows == 0 && (existing.is_some() || !begun) {
            return Ok(Ok(exclude::steps(self, d, existing, steps)));
        }
        if rows > 0 {
            if let Some(why) = moves::refusal(self, d, rows) {
                return Ok(Err(why));
            }
        }
        if existing.is_some() {
            // A NOT VALID leftover that rows got past: it goes before they move.
            steps.push(exclude::drop_step(self, d));
        }
        Ok(Ok(moves::steps(self, d, rows, steps)))
    }

    /// `ALTER TABLE ... ATTACH PARTITION` of the prepared table, the keyed tables locked first.
    fn attach(&self, default: Option<&Relation>) -> Step {
        let table = &self.t.window.table;
        let mut claims = vec![LockClaim::new(table, LockMode::ShareUpdateExclusive)];
        claims.extend(default.map(|d| LockClaim::new(d, LockMode::AccessExclusive)));
        claims.push(LockClaim::new(&self.partition, LockMode::AccessExclusive));
        claims.extend(self.t.keyed_claims());
        let statements = self
            .t
            .lock_keyed()
            .into_iter()
            .chain([Statement::short(self.attach_sql())])
            .collect();
        self.step(
            table,
            Action::AttachPartition,
            statements,
            claims,
            "brief: nothing scanned or built; the keys are cloned onto the empty table",
        )
    }
}
