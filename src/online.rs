//! Restoring a tenant FK and its index without stopping writes (issue 3), before the versioned
//! migration runs; the migration then finds everything in place and only records itself.
//!
//! Order, for each partitioned table (the layout of version 20240520120000; anything else is
//! refused):
//! 1. per leaf partition, `ADD CONSTRAINT ... NOT VALID` (brief SHARE ROW EXCLUSIVE, under
//!    `lock_timeout` with retries), then `VALIDATE CONSTRAINT` (SHARE UPDATE EXCLUSIVE: inserts
//!    go on during the scan);
//! 2. the parent `ADD CONSTRAINT`, which adopts the validated partition constraints without a
//!    scan (checked afterwards: every partition's constraint has the parent as `conparentid`);
//! 3. `CREATE INDEX ... ON ONLY` the parent (instant, invalid), per partition
//!    `CREATE INDEX CONCURRENTLY` and `ALTER INDEX ... ATTACH PARTITION`; the parent index turns
//!    valid when the last partition is attached.
//!
//! On PostgreSQL 18+, which accepts NOT VALID on a partitioned parent, a fresh start puts the
//! constraint on the parent NOT VALID in one step (it reaches every partition, and partitions
//! created meanwhile); each partition is then validated as above, and step 2 becomes a
//! `VALIDATE` of the parent that finds every partition validated and scans nothing.
//!
//! Steps whose lock, even while queued, would block inserts run under `lock_timeout` with
//! retries. `VALIDATE` and `CREATE/DROP INDEX CONCURRENTLY` take SHARE UPDATE EXCLUSIVE, which
//! never conflicts with reads or writes, so they wait as long as needed and [`BlockerWatch`]
//! says which pids they wait for; giving up would throw away a long scan or index build.
//!
//! Every step first reads the catalog and skips what is done, so a run killed at any point is
//! finished by the next one: a NOT VALID constraint is validated, an INVALID index left by an
//! interrupted concurrent build is dropped concurrently and rebuilt, validated constraints and
//! attached indexes are left alone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres::{Client, GenericClient};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{self, quote_ident, BlockerWatch, Conn, LockPolicy};
use crate::error::{Error, Result};
use crate::tenant_fk::TenantFk;

const IS_PARTITIONED: &str = "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::text::regclass";
const LEAF_PARTITIONS: &str =
    "SELECT c.oid::regclass::text, c.relname::text, greatest(c.reltuples, 0)::int8 \
     FROM pg_partition_tree($1::text::regclass) p JOIN pg_class c ON c.oid = p.relid \
     WHERE p.isleaf ORDER BY c.relname";
const CONSTRAINT_STATE: &str = "SELECT oid, convalidated, pg_get_constraintdef(oid), conparentid \
     FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2";
const INDEX_VALID: &str =
    "SELECT x.indisvalid FROM pg_index x WHERE x.indexrelid = to_regclass(quote_ident($1))";
const ATTACHED_CHILD_INDEX: &str =
    "SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid \
     WHERE i.inhparent = to_regclass(quote_ident($1)) AND x.indrelid = $2::text::regclass";

/// A leaf partition (or the table itself, when it is not partitioned).
#[derive(Clone, Debug)]
pub struct Partition {
    /// As `regclass::text` prints it: quoted and schema-qualified where needed.
    pub relation: String,
    pub relname: String,
    pub estimated_rows: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OnlineReport {
    pub table: String,
    pub partitions: usize,
    /// The constraint went on the parent NOT VALID in one step (PostgreSQL 18+) rather than on
    /// each partition.
    pub parent_not_valid: bool,
    pub constraints_added: usize,
    pub constraints_validated: usize,
    pub indexes_built: usize,
    pub invalid_indexes_dropped: usize,
}

#[derive(Clone, Debug)]
pub struct ConstraintState {
    pub oid: u32,
    pub validated: bool,
    pub definition: String,
    pub parent: u32,
}

pub fn constraint_state(
    client: &mut impl GenericClient,
    relation: &str,
    name: &str,
) -> Result<Option<ConstraintState>> {
    Ok(client
        .query_opt(CONSTRAINT_STATE, &[&relation, &name])
        .map_err(|e| Error::db(format!("reading constraint {name} of {relation}"), e))?
        .map(|r| ConstraintState {
            oid: r.get(0),
            validated: r.get(1),
            definition: r.get(2),
            parent: r.get(3),
        }))
}

/// `Some(valid)` if an index of that (unqualified) name exists.
pub fn index_validity(client: &mut impl GenericClient, name: &str) -> Result<Option<bool>> {
    Ok(client
        .query_opt(INDEX_VALID, &[&name])
        .map_err(|e| Error::db(format!("reading index {name}"), e))?
        .map(|r| r.get(0)))
}

pub fn is_partitioned(client: &mut impl GenericClient, table: &str) -> Result<bool> {
    client
        .query_one(IS_PARTITIONED, &[&table])
        .map(|r| r.get(0))
        .map_err(|e| Error::db(format!("reading the kind of {table}"), e))
}

/// The leaf partitions of `table` (the table itself, if it is not partitioned).
pub fn leaf_partitions(client: &mut impl GenericClient, table: &str) -> Result<Vec<Partition>> {
    Ok(client
        .query(LEAF_PARTITIONS, &[&table])
        .map_err(|e| Error::db(format!("listing the partitions of {table}"), e))?
        .into_iter()
        .map(|r| Partition {
            relation: r.get(0),
            relname: r.get(1),
            estimated_rows: r.get(2),
        })
        .collect())
}

/// The name PostgreSQL itself gives a partition's index when the parent index is created the
/// blocking way, so that both paths end with the same catalog.
pub fn child_index_name(partition: &Partition) -> String {
    let suffix = "_tenantId_idx";
    let mut base = partition.relname.clone();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    format!("{base}{suffix}")
}

const SERVER_VERSION_NUM: &str = "SELECT current_setting('server_version_num')::int4";
const ANY_PARTITION_HAS: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_partition_tree($1::text::regclass) p \
     JOIN pg_constraint c ON c.conrelid = p.relid WHERE p.isleaf AND c.conname = $2)";

pub fn server_version_num(client: &mut impl GenericClient) -> Result<i32> {
    client
        .query_one(SERVER_VERSION_NUM, &[])
        .map(|r| r.get(0))
        .map_err(|e| Error::db("reading the server version", e))
}

fn any_partition_has(client: &mut impl GenericClient, fk: &TenantFk) -> Result<bool> {
    client
        .query_one(ANY_PARTITION_HAS, &[&fk.table, &fk.constraint])
        .map(|r| r.get(0))
        .map_err(|e| Error::db(format!("reading the constraints of {}", fk.table), e))
}

/// Whether the parent constraint of `fk` exists and is validated.
pub fn constraint_exists_validated(client: &mut impl GenericClient, fk: &TenantFk) -> Result<bool> {
    Ok(constraint_state(client, fk.table, fk.constraint)?.is_some_and(|c| c.validated))
}

/// What every step of one connection needs besides its client: its backend pid (for naming
/// blockers), the watch, and the lock policy (which carries the run's interrupt).
#[derive(Clone, Copy)]
struct StepCtx<'a> {
    pid: i32,
    watch: &'a BlockerWatch,
    policy: &'a LockPolicy,
}

impl StepCtx<'_> {
    /// A DDL statement whose lock, even while queued, would block writes: in its own
    /// transaction with `SET LOCAL lock_timeout`, retried with backoff while it times out.
    fn bounded(&self, client: &mut Client, step: &str, sql: &str) -> Result<()> {
        let timeout = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.policy.lock_timeout.as_millis()
        );
        self.policy.run(step, self.pid, self.watch, || {
            let mut tx = client.transaction().map_err(|e| Error::db(step, e))?;
            tx.batch_execute(&timeout).map_err(|e| Error::db(step, e))?;
            tx.batch_execute(sql).map_err(|e| Error::db(step, e))?;
            tx.commit().map_err(|e| Error::db(step, e))
        })
    }

    /// A statement that takes only SHARE UPDATE EXCLUSIVE (VALIDATE, the CONCURRENTLY forms):
    /// it never blocks reads or writes, so it waits as long as needed, watched.
    fn patient(&self, client: &mut Client, step: &str, sql: &str) -> Result<()> {
        self.policy.interrupt.check()?;
        self.watch.watch(self.pid, step);
        let outcome = client.batch_execute(sql);
        self.watch.take(self.pid);
        outcome.map_err(|e| Error::db(step, e))
    }
}

/// What one table needs, decided from the catalog before any work starts.
struct TablePlan<'a> {
    fk: &'a TenantFk,
    /// The constraint went on the parent NOT VALID in one step (PostgreSQL 18+).
    parent_not_valid: bool,
    parent_fk: Option<ConstraintState>,
    fk_needed: bool,
    index_needed: bool,
    parts: Vec<Partition>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    added: AtomicUsize,
    validated: AtomicUsize,
    built: AtomicUsize,
    dropped: AtomicUsize,
}

/// Restores every FK of `fks` online, in one pass over all their partitions on
/// `settings.jobs` connections. `main` is the runner's connection (holding the advisory lock).
pub fn restore(
    settings: &Settings,
    conn: &mut Conn,
    watch: &BlockerWatch,
    fks: &[&TenantFk],
) -> Result<Vec<OnlineReport>> {
    let started = Instant::now();
    let policy = LockPolicy::of(settings);
    let on_main = StepCtx {
        pid: conn.pid(),
        watch,
        policy: &policy,
    };
    let main = conn.client();

    let parent_not_valid_supported = server_version_num(main)? >= 180000;
    let mut plans = Vec::new();
    for fk in fks {
        if !is_partitioned(main, fk.table)? {
            return Err(Error::Inconsistent {
                what: format!("table {}", fk.table),
                detail: "it is not partitioned, but the tenant FK versions expect the monthly partitions of 20240520120000".into(),
            });
        }
        let mut parent_fk = constraint_state(main, fk.table, fk.constraint)?;
        let mut parent_not_valid = false;
        if parent_fk.is_none() && parent_not_valid_supported && !any_partition_has(main, fk)? {
            // PostgreSQL 18+: one brief step puts the constraint NOT VALID on the parent and on
            // every partition (and on partitions created meanwhile), instead of one step per
            // partition; new writes are checked from here on. Only on a fresh start: partition
            // constraints left by an earlier per-partition run are finished the per-partition way.
            let step = format!(
                "{} on {}: add NOT VALID on the parent",
                fk.constraint, fk.table
            );
            on_main.bounded(main, &step, &fk.add_sql(fk.table, true))?;
            log::info!("{step}: done (PostgreSQL 18+)");
            parent_fk = constraint_state(main, fk.table, fk.constraint)?;
            parent_not_valid = true;
        }
        let fk_needed = !parent_fk.as_ref().is_some_and(|c| c.validated);
        let index_needed = index_validity(main, fk.index)? != Some(true);
        let parts = if fk_needed || index_needed {
            leaf_partitions(main, fk.table)?
        } else {
            log::info!(
                "{}: {} and {} already in place",
                fk.table,
                fk.constraint,
                fk.index
            );
            Vec::new()
        };
        if index_needed {
            // Instant: the parent index starts INVALID and turns valid with the last ATTACH.
            let sql = format!(
                "CREATE INDEX IF NOT EXISTS {} ON ONLY {} (\"tenantId\")",
                fk.index, fk.table
            );
            let step = format!("{}: create {} on only the parent", fk.table, fk.index);
            on_main.bounded(main, &step, &sql)?;
        }
        if !parts.is_empty() {
            log::info!(
                "{}: restoring {}{} online over {} partition(s), ~{} rows, {} job(s)",
                fk.table,
                if fk_needed { fk.constraint } else { "" },
                if index_needed {
                    format!(" {}", fk.index)
                } else {
                    String::new()
                },
                parts.len(),
                parts.iter().map(|p| p.estimated_rows).sum::<i64>(),
                settings.jobs
            );
        }
        plans.push(TablePlan {
            fk,
            parent_not_valid,
            parent_fk,
            fk_needed,
            index_needed,
            parts,
            counters: Counters::default(),
        });
    }

    let items: Vec<(usize, usize)> = plans
        .iter()
        .enumerate()
        .flat_map(|(p, plan)| (0..plan.parts.len()).map(move |q| (p, q)))
        .collect();
    let done = AtomicUsize::new(0);
    for_each_item(settings, conn, &items, |client, pid, &(p, q)| {
        let ctx = StepCtx {
            pid,
            watch,
            policy: &policy,
        };
        let plan = &plans[p];
        let part = &plan.parts[q];
        let step_started = Instant::now();
        let mut steps = Vec::new();
        if plan.fk_needed {
            steps.push(partition_fk(client, ctx, plan.fk, part, &plan.counters)?);
        }
        if plan.index_needed {
            steps.push(partition_index(client, ctx, plan.fk, part, &plan.counters)?);
        }
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        log::info!(
            "{} ({n} of {}), ~{} rows: {} in {:.2}s",
            part.relname,
            items.len(),
            part.estimated_rows,
            steps.join(", "),
            step_started.elapsed().as_secs_f64()
        );
        Ok(())
    })?;

    let main = conn.client();
    let mut reports = Vec::new();
    for plan in &plans {
        let fk = plan.fk;
        if plan.fk_needed {
            adopt_on_parent(main, on_main, fk, plan.parent_fk.as_ref())?;
        }
        if plan.index_needed && index_validity(main, fk.index)? != Some(true) {
            return Err(Error::Inconsistent {
                what: format!("index {}", fk.index),
                detail: "still invalid after every partition's index was attached; a partition was probably added during the run: run migrate again".into(),
            });
        }
        let c = &plan.counters;
        let report = OnlineReport {
            table: fk.table.to_string(),
            partitions: plan.parts.len(),
            parent_not_valid: plan.parent_not_valid,
            constraints_added: c.added.load(Ordering::Relaxed),
            constraints_validated: c.validated.load(Ordering::Relaxed),
            indexes_built: c.built.load(Ordering::Relaxed),
            invalid_indexes_dropped: c.dropped.load(Ordering::Relaxed),
        };
        log::info!(
            "{}: done: {} partition(s), {} constraint(s) added, {} validated, {} index(es) built, {} invalid index(es) dropped",
            report.table,
            report.partitions,
            report.constraints_added,
            report.constraints_validated,
            report.indexes_built,
            report.invalid_indexes_dropped
        );
        reports.push(report);
    }
    log::info!(
        "online restore finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(reports)
}

/// Runs `work` for every item on up to `settings.jobs` connections of its own, stopping at the
/// first error. Worker sessions hold the work lock shared (see [`crate::db::lock`]) and have
/// `lock_timeout = 0`: the steps whose locks would block writes set their own bound with
/// [`StepCtx::bounded`]. When the role's or server's connection limit leaves fewer connections,
/// it goes on with those it got; with none at all, on `main`.
fn for_each_item<T: Sync>(
    settings: &Settings,
    main: &mut Conn,
    items: &[T],
    work: impl Fn(&mut Client, i32, &T) -> Result<()> + Sync,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut workers = open_workers(settings, settings.jobs.clamp(1, items.len()))?;
    if workers.is_empty() {
        log::warn!("no connection left for workers (the connection limit is reached): doing the online work on the main connection, one item at a time; lower --jobs or raise the role's CONNECTION LIMIT to avoid this");
        main.set_lock_timeout(Duration::ZERO)?;
        let pid = main.pid();
        let outcome = items
            .iter()
            .try_for_each(|item| work(main.client(), pid, item));
        main.set_lock_timeout(settings.lock_timeout)?;
        return outcome.inspect_err(|_| {
            log::error!("the online restore stopped at the first error; the next run resumes it")
        });
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        let mut running = Vec::new();
        for conn in workers.iter_mut() {
            let (next, failed, first_error, work) = (&next, &failed, &first_error, &work);
            running.push(scope.spawn(move || {
                let pid = conn.pid();
                let outcome = (|| -> Result<()> {
                    while !failed.load(Ordering::Relaxed) {
                        let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        work(conn.client(), pid, item)?;
                    }
                    Ok(())
                })();
                if let Err(e) = outcome {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e);
                }
            }));
        }
        // The main connection idles meanwhile: keep it in use, so that a proxy or load balancer
        // that closes idle connections does not close it.
        if let Err(e) = db::keep_alive_while(main, || running.iter().any(|h| !h.is_finished())) {
            failed.store(true, Ordering::Relaxed);
            first_error.lock().unwrap().get_or_insert(e);
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => {
            log::error!("the online restore stopped at the first error; the next run resumes it");
            Err(e)
        }
        None => Ok(()),
    }
}

/// Up to `wanted` worker connections; fewer when the connection limit says so.
fn open_workers(settings: &Settings, wanted: usize) -> Result<Vec<Conn>> {
    let mut workers = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        let mut conn = match db::connect_once(settings) {
            Ok(c) => c,
            Err(e) if e.sqlstate() == Some("53300") => {
                log::warn!(
                    "opened {} of {wanted} worker connection(s): {e}",
                    workers.len()
                );
                break;
            }
            Err(e) => return Err(e),
        };
        conn.set_lock_timeout(Duration::ZERO)?;
        db::lock::join_work(&mut conn)?;
        workers.push(conn);
    }
    Ok(workers)
}

/// Step 1 for one partition: NOT VALID, then VALIDATE, skipping what is already done.
fn partition_fk(
    client: &mut Client,
    ctx: StepCtx<'_>,
    fk: &TenantFk,
    part: &Partition,
    counters: &Counters,
) -> Result<&'static str> {
    let label = format!("{} on {}", fk.constraint, part.relname);
    let added = match constraint_state(client, &part.relation, fk.constraint)? {
        None => {
            ctx.bounded(
                client,
                &format!("{label}: add NOT VALID"),
                &fk.add_sql(&part.relation, true),
            )?;
            counters.added.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(state) if state.definition.trim_end_matches(" NOT VALID") != fk.definition() => {
            return Err(Error::Inconsistent {
                what: label,
                detail: format!(
                    "it exists as `{}`, expected `{}`; drop or rename that constraint, then run migrate again",
                    state.definition,
                    fk.definition()
                ),
            });
        }
        Some(state) if state.validated => return Ok("constraint already validated"),
        Some(_) => false,
    };
    let step = format!("{label}: validate");
    let sql = format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        part.relation, fk.constraint
    );
    ctx.patient(client, &step, &sql).map_err(|err| {
        if err.sqlstate() == Some("23503") {
            Error::Inconsistent {
                what: label.clone(),
                detail: format!("{err}; rows without a tenant appeared after the orphan pre-flight: run migrate again (with --orphans archive or delete to clean them)"),
            }
        } else {
            err
        }
    })?;
    counters.validated.fetch_add(1, Ordering::Relaxed);
    Ok(if added {
        "constraint added and validated"
    } else {
        "constraint validated"
    })
}

/// Step 2: the parent constraint adopts the partitions' validated constraints.
fn adopt_on_parent(
    main: &mut Client,
    ctx: StepCtx<'_>,
    fk: &TenantFk,
    existing: Option<&ConstraintState>,
) -> Result<()> {
    let started = Instant::now();
    let step = format!(
        "{} on {}: adopt the partition constraints",
        fk.constraint, fk.table
    );
    let sql = match existing {
        None => fk.add_sql(fk.table, false),
        // A parent left NOT VALID (possible from PostgreSQL 18): its partitions are validated.
        Some(_) => format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            fk.table, fk.constraint
        ),
    };
    ctx.bounded(main, &step, &sql)?;
    let parent =
        constraint_state(main, fk.table, fk.constraint)?.ok_or_else(|| Error::Inconsistent {
            what: step.clone(),
            detail: "the parent constraint is missing after ADD CONSTRAINT".into(),
        })?;
    for part in leaf_partitions(main, fk.table)? {
        let child = constraint_state(main, &part.relation, fk.constraint)?;
        if !child
            .as_ref()
            .is_some_and(|c| c.validated && c.parent == parent.oid)
        {
            return Err(Error::Inconsistent {
                what: format!("{} on {}", fk.constraint, part.relname),
                detail: format!("not adopted by the parent constraint (found {child:?})"),
            });
        }
    }
    log::info!("{step}: done in {:.3}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Step 3 for one partition: build the index concurrently (dropping an INVALID leftover first,
/// never one that is still being built) and attach it to the parent index.
fn partition_index(
    client: &mut Client,
    ctx: StepCtx<'_>,
    fk: &TenantFk,
    part: &Partition,
    counters: &Counters,
) -> Result<&'static str> {
    let attached = client
        .query_opt(ATTACHED_CHILD_INDEX, &[&fk.index, &part.relation])
        .map_err(|e| Error::db(format!("reading the indexes of {}", part.relname), e))?
        .is_some();
    if attached {
        return Ok("index already attached");
    }
    let child = child_index_name(part);
    wait_for_builds_of(client, ctx, &child)?;
    let leftover_invalid = index_validity(client, &child)? == Some(false);
    let step = format!("{} on {}: build", fk.index, part.relname);
    if leftover_invalid {
        log::info!("{child}: dropping the INVALID index an interrupted build left");
        let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote_ident(&child));
        ctx.patient(client, &step, &sql)?;
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let sql = format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} (\"tenantId\")",
        quote_ident(&child),
        part.relation
    );
    ctx.patient(client, &step, &sql)?;
    counters.built.fetch_add(1, Ordering::Relaxed);
    let sql = format!(
        "ALTER INDEX {} ATTACH PARTITION {}",
        fk.index,
        quote_ident(&child)
    );
    ctx.bounded(
        client,
        &format!("{} on {}: attach", fk.index, part.relname),
        &sql,
    )?;
    Ok(if leftover_invalid {
        "invalid index dropped, rebuilt and attached"
    } else {
        "index built and attached"
    })
}

/// Backends building the index `name` right now (`pg_stat_progress_create_index`).
const BUILDS_OF: &str = "SELECT pid FROM pg_stat_progress_create_index \
     WHERE index_relid = to_regclass(quote_ident($1)) AND pid <> pg_backend_pid()";

/// Waits while another session builds the index `name`: an INVALID index that is being built is
/// not a leftover, and dropping it would fail or deadlock with that build.
fn wait_for_builds_of(client: &mut Client, ctx: StepCtx<'_>, name: &str) -> Result<()> {
    let started = Instant::now();
    let mut logged: Option<Instant> = None;
    loop {
        let pids: Vec<i32> = client
            .query(BUILDS_OF, &[&name])
            .map_err(|e| Error::db(format!("reading the progress of builds of {name}"), e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            log::info!(
                "{name}: being built by pids {pids:?} for {:.0}s; waiting for that build instead of dropping its index",
                started.elapsed().as_secs_f64()
            );
            logged = Some(Instant::now());
        }
        ctx.policy.interrupt.sleep(Duration::from_millis(250))?;
    }
}
