//! One step of an operation: a single statement on one relation, with a stable id, the lock it
//! takes, and which of the two lock rules it runs under. [`StepCtx::run`] is the only way the
//! engine sends SQL:
//!
//! - *bounded*: a statement whose lock, even while queued, would block writes runs in its own
//!   transaction with `SET LOCAL lock_timeout` and is retried with backoff ([`LockPolicy`]);
//! - *patient*: a statement that takes only SHARE UPDATE EXCLUSIVE (VALIDATE, the CONCURRENTLY
//!   forms) never blocks reads or writes, so it waits as long as needed, watched by
//!   [`BlockerWatch`] (giving up would throw away a long scan or build).

use std::fmt;
use std::time::{Duration, Instant};

use postgres::Client;
use serde::Serialize;

use crate::catalog;
use crate::db::{BlockerWatch, LockPolicy};
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
    /// A new month's table, standalone, `LIKE` its parent, with a CHECK of its bounds.
    CreateTable,
    /// The parent's indexes and key constraints, built on the new (empty) table.
    CreateIndexes,
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
            Action::CreateTable => "create-table",
            Action::CreateIndexes => "create-indexes",
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

/// One step, planned from the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub id: StepId,
    pub action: Action,
    /// The statement (none for [`Action::AwaitBuild`]).
    pub sql: String,
    /// The locks it takes, for logs and `--dry-run` (measured with `pg_locks`).
    pub locks: String,
    /// Whether `--lock-timeout` bounds it.
    pub bounded: bool,
    /// For [`Action::AwaitBuild`]: the table and index whose builds to wait for.
    #[serde(skip)]
    pub await_build: Option<(u32, u32)>,
}

impl Step {
    pub fn new(op: &str, on: &Relation, action: Action, sql: String, locks: String) -> Step {
        Step {
            id: StepId::new(op, on, action),
            action,
            sql,
            locks,
            bounded: action.bounded(),
            await_build: None,
        }
    }
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
            _ if step.bounded => self.bounded(client, id, &step.sql)?,
            _ => self.patient(client, id, &step.sql)?,
        }
        let took = started.elapsed();
        log::debug!("step {id}: done in {:.3}s", took.as_secs_f64());
        Ok(took)
    }

    /// In its own transaction under `SET LOCAL lock_timeout`, retried. It commits without
    /// waiting for the WAL flush (`synchronous_commit = off`), so its locks, which block writes,
    /// are released a flush sooner; a step lost in a server crash is simply planned again by the
    /// next run (and any later synchronous commit flushes it first).
    fn bounded(&self, client: &mut Client, id: &str, sql: &str) -> Result<()> {
        let timeout = format!(
            "SET LOCAL lock_timeout = '{}ms'; SET LOCAL synchronous_commit = off",
            self.policy.lock_timeout.as_millis()
        );
        self.policy.run(id, self.pid, self.watch, || {
            let mut tx = client.transaction().map_err(|e| Error::db(id, e))?;
            tx.batch_execute(&timeout).map_err(|e| Error::db(id, e))?;
            tx.batch_execute(sql).map_err(|e| Error::db(id, e))?;
            tx.commit().map_err(|e| Error::db(id, e))
        })
    }

    fn patient(&self, client: &mut Client, id: &str, sql: &str) -> Result<()> {
        self.watch.watch(self.pid, id);
        let outcome = client.batch_execute(sql);
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
