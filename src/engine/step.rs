//! One step of an operation: the statements that change one relation, with a stable id, the locks
//! it takes, and which of the two lock rules it runs under. [`StepCtx::run`] is the only way the
//! engine sends SQL, one statement per query (a multi-statement string is not what every server
//! takes: Citus forwards such a string to its workers and refuses it):
//!
//! - *bounded*: statements whose locks, even while queued, would block writes run in one
//!   transaction of their own with `SET LOCAL lock_timeout` and are retried with backoff when
//!   they hit it or lose a deadlock ([`LockPolicy`]). A step that takes several locks guards the
//!   tables it would deadlock on ([`Step::guard`]): it waits, without queueing, for a transaction
//!   that has held a lock on them for long; each lock it takes while holding others
//!   ([`Statement::short_wait`]) waits briefly, and only once it has checked that no transaction
//!   holding a lock on them waits for it; otherwise it steps aside and is retried, so that an
//!   application transaction is never a deadlock's victim. A step may carry other statements
//!   for the attempts after a deadlock ([`Step::on_deadlock`]), and a role to run as;
//! - *patient*: a statement that takes only SHARE UPDATE EXCLUSIVE (VALIDATE, the CONCURRENTLY
//!   forms) never blocks reads or writes, so it waits as long as needed, watched by
//!   [`BlockerWatch`] (giving up would throw away a long scan or build).

use std::fmt;
use std::time::{Duration, Instant};

use postgres::Client;
use serde::Serialize;

use crate::catalog;
use crate::db::{retry, BlockerWatch, Guarded, LockPolicy};
use crate::error::{Error, Result};
use crate::sql::Relation;

/// `op:relation:action`, e.g. `messages_tenant_id_fkey:public.messages_2024_03:validate`. Logs,
/// reports, `--dry-run` and the kill tests name steps by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    pub fn new(op: &str, on: &Relation, action: Action) -> StepId {
        StepId(format!("{op}:{}:{}", on.plain(), action.name()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a step does; it decides the lock rule and what the report counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `ADD CONSTRAINT ... NOT VALID` on a partition or table (or, from 18, a partitioned parent).
    AddNotValid,
    /// `VALIDATE CONSTRAINT` on a partition or table: scans it, writes go on.
    Validate,
    /// `ADD CONSTRAINT` on the partitioned parent: adopts the partitions' validated constraints.
    Adopt,
    /// `VALIDATE CONSTRAINT` on a partitioned parent whose partitions are validated.
    ValidateParent,
    /// `CREATE INDEX ... ON ONLY` a partitioned table: instant, invalid until complete.
    CreateOnOnly,
    /// Waits while another session builds the index (never drop an index being built).
    AwaitBuild,
    /// `DROP INDEX CONCURRENTLY` of an INVALID index an interrupted build left.
    DropInvalid,
    /// `CREATE INDEX CONCURRENTLY` on one table.
    Build,
    /// `ALTER INDEX ... ATTACH PARTITION`.
    Attach,
    /// An empty standalone table of a month's name that an interrupted run or a failed month
    /// left: dropped, so that the month is created afresh (nothing of it is reused).
    DropLeftover,
    /// A new month's table, standalone, `LIKE` its parent with its indexes, with a CHECK of its
    /// bounds, its parent's owner and tablespace, and the grants and row-level security of the
    /// months before it.
    CreateTable,
    /// A CHECK on the DEFAULT partition that excludes the new month, `NOT VALID`.
    AddExclusion,
    /// `VALIDATE` of that CHECK: scans DEFAULT, writes go on.
    ValidateExclusion,
    /// `ALTER TABLE ... ATTACH PARTITION` of the new month.
    AttachPartition,
    /// The month's rows moved out of DEFAULT into the new table, and the table attached, in one
    /// transaction.
    MoveAndAttach,
    /// The helper CHECKs dropped (the partition bound says the same).
    DropChecks,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::AddNotValid => "add-not-valid",
            Action::Validate => "validate",
            Action::Adopt => "adopt",
            Action::ValidateParent => "validate-parent",
            Action::CreateOnOnly => "create-on-only",
            Action::AwaitBuild => "await-build",
            Action::DropInvalid => "drop-invalid",
            Action::Build => "build",
            Action::Attach => "attach",
            Action::DropLeftover => "drop-leftover",
            Action::CreateTable => "create-table",
            Action::AddExclusion => "add-exclusion",
            Action::ValidateExclusion => "validate-exclusion",
            Action::AttachPartition => "attach-partition",
            Action::MoveAndAttach => "move-and-attach",
            Action::DropChecks => "drop-checks",
        }
    }

    /// Bounded (its lock blocks writes, even while queued) or patient.
    pub fn bounded(self) -> bool {
        !matches!(
            self,
            Action::Validate
                | Action::ValidateParent
                | Action::AwaitBuild
                | Action::DropInvalid
                | Action::Build
                | Action::ValidateExclusion
        )
    }
}

/// A table lock mode, weakest first (PostgreSQL's order of strength).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum LockMode {
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    AccessExclusive,
}

impl LockMode {
    /// As `LOCK TABLE ... IN <mode> MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            LockMode::AccessShare => "ACCESS SHARE",
            LockMode::RowShare => "ROW SHARE",
            LockMode::RowExclusive => "ROW EXCLUSIVE",
            LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            LockMode::Share => "SHARE",
            LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            LockMode::Exclusive => "EXCLUSIVE",
            LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// The `pg_locks.mode` names of the modes that conflict with this one, comma-separated
    /// (PostgreSQL's table of conflicting lock modes).
    pub fn conflicting(self) -> &'static str {
        const ALL: &str = "AccessShareLock,RowShareLock,RowExclusiveLock,ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock";
        match self {
            LockMode::AccessShare => "AccessExclusiveLock",
            LockMode::RowShare => "ExclusiveLock,AccessExclusiveLock",
            LockMode::RowExclusive => "ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock",
            LockMode::ShareUpdateExclusive => "ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock",
            LockMode::Share => "RowExclusiveLock,ShareUpdateExclusiveLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock",
            LockMode::ShareRowExclusive => "RowExclusiveLock,ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock",
            // Everything but ACCESS SHARE.
            LockMode::Exclusive => "RowShareLock,RowExclusiveLock,ShareUpdateExclusiveLock,ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock",
            LockMode::AccessExclusive => ALL,
        }
    }

    /// As `pg_locks.mode` spells it.
    pub fn pg_locks_name(self) -> &'static str {
        match self {
            LockMode::AccessShare => "AccessShareLock",
            LockMode::RowShare => "RowShareLock",
            LockMode::RowExclusive => "RowExclusiveLock",
            LockMode::ShareUpdateExclusive => "ShareUpdateExclusiveLock",
            LockMode::Share => "ShareLock",
            LockMode::ShareRowExclusive => "ShareRowExclusiveLock",
            LockMode::Exclusive => "ExclusiveLock",
            LockMode::AccessExclusive => "AccessExclusiveLock",
        }
    }
}

/// The strongest lock a step holds on one table by its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockClaim {
    /// `schema.table`.
    pub relation: String,
    pub mode: LockMode,
}

impl LockClaim {
    pub fn new(relation: &Relation, mode: LockMode) -> LockClaim {
        LockClaim {
            relation: relation.plain(),
            mode,
        }
    }
}

pub use crate::db::retry::SHORT_WAIT;

/// One statement of a step.
#[derive(Clone, Debug, Serialize)]
pub struct Statement {
    pub sql: String,
    /// It takes a lock while the step holds others: the step first checks that no transaction
    /// holding a lock on its guarded tables waits for it, and the statement waits at most
    /// [`SHORT_WAIT`]; otherwise the step steps aside (and is retried).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub short_wait: bool,
}

impl Statement {
    /// A statement that waits for its locks as the step's rule says.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            short_wait: false,
        }
    }

    /// A statement that takes its locks with a short wait (see [`Statement::short_wait`]).
    pub fn short(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            short_wait: true,
        }
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Statement {
        Statement::new(sql)
    }
}

/// One step, planned from the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// `operation:schema.table:action`: what resuming and the logs name it by.
    pub id: StepId,
    /// What it does.
    pub action: Action,
    /// Its statements, sent one per query (none for `Action::AwaitBuild`); those of a bounded
    /// step in one transaction.
    pub statements: Vec<Statement>,
    /// The statements of the attempts after one lost a deadlock (40P01) or stopped before
    /// causing one: the same work with its strongest locks taken first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_deadlock: Option<Vec<Statement>>,
    /// The role it runs as (`SET LOCAL ROLE`), when it is not the session's: the table's owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// The locks it takes, for logs and `--dry-run` (measured with `pg_locks`).
    pub locks: String,
    /// The strongest lock it holds on each table, where the step says (a test compares them
    /// with `pg_locks`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<LockClaim>,
    /// Whether `--lock-timeout` bounds it.
    pub bounded: bool,
    /// For `Action::AwaitBuild`: the table and index whose builds to wait for.
    #[serde(skip)]
    pub await_build: Option<(u32, u32)>,
    /// The live tables among its claims: a transaction that holds a lock on one and waits for
    /// this step would deadlock with its next lock, so the step is stopped when one does and its
    /// next attempt runs [`Step::on_deadlock`] (see `BlockerWatch`); and one that has held a
    /// lock on one for over a second is waited out before the step queues its locks.
    #[serde(skip)]
    pub guard: Vec<Guarded>,
}

impl Step {
    /// A step of one statement.
    pub fn new(op: &str, on: &Relation, action: Action, sql: String, locks: String) -> Step {
        Step::with_statements(op, on, action, vec![Statement::new(sql)], locks)
    }

    /// A step of several statements, sent one per query.
    pub fn with_statements(
        op: &str,
        on: &Relation,
        action: Action,
        statements: Vec<Statement>,
        locks: String,
    ) -> Step {
        Step {
            id: StepId::new(op, on, action),
            action,
            statements: statements
                .into_iter()
                .filter(|s| !s.sql.is_empty())
                .collect(),
            on_deadlock: None,
            run_as: None,
            locks,
            claims: Vec::new(),
            bounded: action.bounded(),
            await_build: None,
            guard: Vec::new(),
        }
    }

    /// The step with its lock claims, described from them (and `note`).
    pub fn claiming(mut self, claims: Vec<LockClaim>, note: &str) -> Step {
        self.locks = describe_claims(&claims, note);
        self.claims = claims;
        self
    }
}

/// `SHARE UPDATE EXCLUSIVE on a; ACCESS EXCLUSIVE on b and c (note)`.
fn describe_claims(claims: &[LockClaim], note: &str) -> String {
    let mut by_mode: Vec<(LockMode, Vec<&str>)> = Vec::new();
    for c in claims {
        match by_mode.iter_mut().find(|(m, _)| *m == c.mode) {
            Some((_, rels)) => rels.push(&c.relation),
            None => by_mode.push((c.mode, vec![&c.relation])),
        }
    }
    let list = |rels: &[&str]| match rels.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    let text = by_mode
        .iter()
        .map(|(m, rels)| format!("{} on {}", m.name(), list(rels)))
        .collect::<Vec<_>>()
        .join("; ");
    match (text.is_empty(), note.is_empty()) {
        (true, _) => note.to_string(),
        (false, true) => text,
        (false, false) => format!("{text} ({note})"),
    }
}

/// `SET LOCAL ROLE` for a step that runs as another role.
fn role(step: &Step) -> Option<String> {
    step.run_as
        .as_ref()
        .map(|r| format!("SET LOCAL ROLE {}", crate::sql::Ident::new(r.as_str())))
}

/// What every step on one connection needs besides its client: its backend pid (for naming
/// blockers), the watch, and the lock policy (which carries the run's interrupt).
#[derive(Clone, Copy)]
pub struct StepCtx<'a> {
    pub pid: i32,
    pub watch: &'a BlockerWatch,
    pub policy: &'a LockPolicy,
}

impl StepCtx<'_> {
    /// Runs `step` under its lock rule and logs it by id.
    pub fn run(&self, client: &mut Client, step: &Step) -> Result<Duration> {
        self.policy.interrupt.check()?;
        let started = Instant::now();
        let id = step.id.as_str();
        match step.action {
            Action::AwaitBuild => {
                let (table, index) = step.await_build.unwrap_or_default();
                self.await_builds(client, id, table, index)?
            }
            _ if step.bounded => self.bounded(client, step)?,
            _ => self.patient(client, step)?,
        }
        let took = started.elapsed();
        log::debug!("step {id}: done in {:.3}s", took.as_secs_f64());
        Ok(took)
    }

    /// In its own transaction under `SET LOCAL lock_timeout`, retried. It commits without
    /// waiting for the WAL flush (`synchronous_commit = off`), so its locks, which block writes,
    /// are released a flush sooner; a step lost in a server crash is simply planned again by the
    /// next run (and any later synchronous commit flushes it first).
    fn bounded(&self, client: &mut Client, step: &Step) -> Result<()> {
        let id = step.id.as_str();
        let mut settings = vec![
            format!(
                "SET LOCAL lock_timeout = '{}ms'",
                self.policy.lock_timeout.as_millis()
            ),
            "SET LOCAL synchronous_commit = off".to_string(),
        ];
        settings.extend(role(step));
        self.policy
            .run_guarded(id, self.pid, self.watch, &step.guard, |attempt| {
                let statements = match (&step.on_deadlock, attempt.after_deadlock) {
                    (Some(other), true) => other,
                    _ => &step.statements,
                };
                if !step.guard.is_empty() {
                    retry::ensure_no_long_holder(client, (self.watch, self.pid), id, &step.guard)?;
                }
                let mut tx = client.transaction().map_err(|e| Error::db(id, e))?;
                for sql in &settings {
                    tx.batch_execute(sql).map_err(|e| Error::db(id, e))?;
                }
                for st in statements {
                    self.execute(&mut tx, id, st, &step.guard)?;
                }
                tx.commit().map_err(|e| Error::db(id, e))
            })
    }

    /// One statement of a bounded step; one that takes a lock while the step holds others only
    /// after checking that no transaction holding a lock on `guard` waits for the step, and
    /// with a wait of [`SHORT_WAIT`] (see the module docs).
    fn execute(
        &self,
        tx: &mut postgres::Transaction<'_>,
        id: &str,
        st: &Statement,
        guard: &[Guarded],
    ) -> Result<()> {
        if !st.short_wait {
            return tx.batch_execute(&st.sql).map_err(|e| Error::db(id, e));
        }
        retry::ensure_none_waiting(tx, id, guard)?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            SHORT_WAIT.as_millis()
        ))
        .map_err(|e| Error::db(id, e))?;
        tx.batch_execute(&st.sql)
            .map_err(|e| retry::stepped_aside(Error::db(id, e), id))?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.policy.lock_timeout.as_millis()
        ))
        .map_err(|e| Error::db(id, e))
    }

    /// Statements that take only SHARE UPDATE EXCLUSIVE, waiting as long as needed; in a
    /// transaction when the step runs as another role.
    fn patient(&self, client: &mut Client, step: &Step) -> Result<()> {
        let id = step.id.as_str();
        self.watch.watch(self.pid, id, &[]);
        let outcome = match role(step) {
            None => step
                .statements
                .iter()
                .try_for_each(|st| client.batch_execute(&st.sql)),
            Some(set_role) => client.transaction().and_then(|mut tx| {
                tx.batch_execute(&set_role)?;
                for st in &step.statements {
                    tx.batch_execute(&st.sql)?;
                }
                tx.commit()
            }),
        };
        self.watch.take(self.pid);
        outcome.map_err(|e| Error::db(id, e))
    }

    /// Waits while another session builds an index on `table` (an INVALID index that is being
    /// built is not a leftover, and dropping it would fail or deadlock with that build).
    fn await_builds(&self, client: &mut Client, id: &str, table: u32, index: u32) -> Result<()> {
        let started = Instant::now();
        let mut logged: Option<Instant> = None;
        loop {
            let pids = catalog::builds_in_progress(client, table, index)?;
            if pids.is_empty() {
                return Ok(());
            }
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                log::info!(
                    "step {id}: an index on it is being built by pids {pids:?} ({:.0}s); waiting for that build instead of dropping its index",
                    started.elapsed().as_secs_f64()
                );
                logged = Some(Instant::now());
            }
            self.policy.interrupt.sleep(Duration::from_millis(250))?;
        }
    }
}
