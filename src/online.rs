//! Restoring a tenant FK and its index without stopping writes (issue 3), before the versioned
//! migration runs; the migration then finds everything in place and only records itself.
//!
//! Order, for a partitioned table (a plain table is treated as its own only partition):
//! 1. per leaf partition, `ADD CONSTRAINT ... NOT VALID` (brief SHARE ROW EXCLUSIVE, under
//!    `lock_timeout` with retries), then `VALIDATE CONSTRAINT` (SHARE UPDATE EXCLUSIVE: inserts
//!    go on during the scan);
//! 2. the parent `ADD CONSTRAINT`, which adopts the validated partition constraints without a
//!    scan (checked afterwards: every partition's constraint has the parent as `conparentid`);
//! 3. `CREATE INDEX ... ON ONLY` the parent (instant, invalid), per partition
//!    `CREATE INDEX CONCURRENTLY` and `ALTER INDEX ... ATTACH PARTITION`; the parent index turns
//!    valid when the last partition is attached.
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
use crate::db::{self, quote_ident, BlockerWatch, LockPolicy};
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

#[derive(Clone, Debug, Serialize, Default)]
pub struct OnlineReport {
    pub table: String,
    pub partitions: usize,
    pub constraints_added: usize,
    pub constraints_validated: usize,
    pub indexes_built: usize,
    pub invalid_indexes_dropped: usize,
    pub seconds: f64,
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

/// The leaf partitions of `table`, or the table itself if it is not partitioned.
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

/// Whether the parent constraint of `fk` exists and is validated.
pub fn constraint_exists_validated(client: &mut impl GenericClient, fk: &TenantFk) -> Result<bool> {
    Ok(constraint_state(client, fk.table, fk.constraint)?.is_some_and(|c| c.validated))
}

/// Whether the constraint and index of `fk` are both in place and valid on the parent.
pub fn is_complete(client: &mut impl GenericClient, fk: &TenantFk) -> Result<bool> {
    Ok(constraint_exists_validated(client, fk)? && index_validity(client, fk.index)? == Some(true))
}

/// Restores `fk` online. `main` is the runner's connection (holding the advisory lock).
pub fn restore(
    settings: &Settings,
    main: &mut Client,
    watch: &BlockerWatch,
    fk: &TenantFk,
) -> Result<OnlineReport> {
    let started = Instant::now();
    let mut report = OnlineReport {
        table: fk.table.to_string(),
        ..OnlineReport::default()
    };
    if is_complete(main, fk)? {
        log::info!("{}: constraint and index already in place", fk.table);
        return Ok(report);
    }
    let policy = LockPolicy::of(settings);
    let main_pid = db::backend_pid(main)?;
    let partitioned = is_partitioned(main, fk.table)?;
    let parts = leaf_partitions(main, fk.table)?;
    report.partitions = parts.len();
    let total_rows: i64 = parts.iter().map(|p| p.estimated_rows).sum();
    log::info!(
        "{}: restoring {} and {} online over {} partition(s), ~{} rows, {} job(s)",
        fk.table,
        fk.constraint,
        fk.index,
        parts.len(),
        total_rows,
        settings.jobs
    );
    let counters = Counters::default();
    counters.total.store(parts.len(), Ordering::Relaxed);

    // 1 + 2: the foreign key.
    let parent_fk = constraint_state(main, fk.table, fk.constraint)?;
    if !parent_fk.as_ref().is_some_and(|c| c.validated) {
        if partitioned || parent_fk.is_none() {
            for_each_partition(settings, &parts, "foreign key", |client, pid, part| {
                partition_fk(client, pid, watch, policy, fk, part, &counters)
            })?;
        }
        if partitioned {
            adopt_on_parent(main, main_pid, watch, policy, fk, parent_fk.as_ref())?;
        }
    }

    // 3: the index.
    match index_validity(main, fk.index)? {
        Some(true) => {}
        _ if partitioned => {
            let sql = format!(
                "CREATE INDEX IF NOT EXISTS {} ON ONLY {} (\"tenantId\")",
                fk.index, fk.table
            );
            let step = format!("{}: create {} on only the parent", fk.table, fk.index);
            policy.run(&step, main_pid, Some(watch), || {
                main.batch_execute(&sql).map_err(|e| Error::db(&step, e))
            })?;
            counters.done.store(0, Ordering::Relaxed);
            for_each_partition(settings, &parts, "index", |client, pid, part| {
                partition_index(client, pid, watch, policy, fk, part, &counters)
            })?;
            if index_validity(main, fk.index)? != Some(true) {
                return Err(Error::Inconsistent {
                    what: format!("index {}", fk.index),
                    detail: "still invalid after every partition's index was attached; a partition was probably added during the run: run migrate again".into(),
                });
            }
        }
        existing => {
            let table = Partition {
                relation: fk.table.to_string(),
                relname: fk.table.to_string(),
                estimated_rows: total_rows,
            };
            build_index_concurrently(main, fk.index, &table, existing == Some(false), &counters)?;
        }
    }

    report.constraints_added = counters.added.load(Ordering::Relaxed);
    report.constraints_validated = counters.validated.load(Ordering::Relaxed);
    report.indexes_built = counters.built.load(Ordering::Relaxed);
    report.invalid_indexes_dropped = counters.dropped.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    log::info!(
        "{}: done in {:.1}s: {} partition(s), {} constraint(s) added, {} validated, {} index(es) built, {} invalid index(es) dropped",
        fk.table,
        report.seconds,
        report.partitions,
        report.constraints_added,
        report.constraints_validated,
        report.indexes_built,
        report.invalid_indexes_dropped
    );
    Ok(report)
}

#[derive(Default)]
struct Counters {
    /// Partitions finished in the current phase, of `total`.
    done: AtomicUsize,
    total: AtomicUsize,
    added: AtomicUsize,
    validated: AtomicUsize,
    built: AtomicUsize,
    dropped: AtomicUsize,
}

/// Runs `work` for every partition on `settings.jobs` connections of its own, stopping at the
/// first error.
fn for_each_partition(
    settings: &Settings,
    parts: &[Partition],
    phase: &str,
    work: impl Fn(&mut Client, i32, &Partition) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let jobs = settings.jobs.clamp(1, parts.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let outcome = (|| -> Result<()> {
                    let mut client = db::connect_once(settings)?;
                    let pid = db::backend_pid(&mut client)?;
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(part) = parts.get(i) else {
                            return Ok(());
                        };
                        work(&mut client, pid, part)?;
                    }
                })();
                if let Err(e) = outcome {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e);
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => {
            log::error!("the {phase} phase stopped at the first error; a new run resumes it");
            Err(e)
        }
        None => Ok(()),
    }
}

fn progress(counters: &Counters, total_label: &str, part: &Partition, what: &str, took: Duration) {
    let n = counters.done.fetch_add(1, Ordering::Relaxed) + 1;
    let total = counters.total.load(Ordering::Relaxed);
    log::info!(
        "{total_label} {} ({n} of {total}), ~{} rows: {what} in {:.2}s",
        part.relname,
        part.estimated_rows,
        took.as_secs_f64()
    );
}

/// Step 1 for one partition: NOT VALID, then VALIDATE, skipping what is already done.
fn partition_fk(
    client: &mut Client,
    pid: i32,
    watch: &BlockerWatch,
    policy: LockPolicy,
    fk: &TenantFk,
    part: &Partition,
    counters: &Counters,
) -> Result<()> {
    let started = Instant::now();
    let label = format!("{} on {}", fk.constraint, part.relname);
    let state = match constraint_state(client, &part.relation, fk.constraint)? {
        Some(state) => state,
        None => {
            let sql = fk.add_sql(&part.relation, true);
            let step = format!("{label}: add NOT VALID");
            policy.run(&step, pid, Some(watch), || {
                client.batch_execute(&sql).map_err(|e| Error::db(&step, e))
            })?;
            counters.added.fetch_add(1, Ordering::Relaxed);
            constraint_state(client, &part.relation, fk.constraint)?.ok_or_else(|| {
                Error::Inconsistent {
                    what: label.clone(),
                    detail: "the constraint vanished right after it was added".into(),
                }
            })?
        }
    };
    if state.definition.trim_end_matches(" NOT VALID") != fk.definition() {
        return Err(Error::Inconsistent {
            what: label,
            detail: format!(
                "it exists as `{}`, expected `{}`; drop or rename that constraint, then run migrate again",
                state.definition,
                fk.definition()
            ),
        });
    }
    if state.validated {
        progress(
            counters,
            "foreign key",
            part,
            "already validated",
            started.elapsed(),
        );
        return Ok(());
    }
    let sql = format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        part.relation, fk.constraint
    );
    let step = format!("{label}: validate");
    watch.watch(pid, &step);
    let outcome = with_unbounded_lock_wait(client, |c| c.batch_execute(&sql));
    watch.take(pid);
    outcome.map_err(|e| {
        let err = Error::db(&step, e);
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
    progress(
        counters,
        "foreign key",
        part,
        "validated",
        started.elapsed(),
    );
    Ok(())
}

/// Step 2: the parent constraint adopts the partitions' validated constraints.
fn adopt_on_parent(
    main: &mut Client,
    main_pid: i32,
    watch: &BlockerWatch,
    policy: LockPolicy,
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
    policy.run(&step, main_pid, Some(watch), || {
        main.batch_execute(&sql).map_err(|e| Error::db(&step, e))
    })?;
    let parent =
        constraint_state(main, fk.table, fk.constraint)?.ok_or_else(|| Error::Inconsistent {
            what: step.clone(),
            detail: "the parent constraint is missing after ADD CONSTRAINT".into(),
        })?;
    for part in leaf_partitions(main, fk.table)? {
        let child = constraint_state(main, &part.relation, fk.constraint)?;
        let adopted = child
            .as_ref()
            .is_some_and(|c| c.validated && c.parent == parent.oid);
        if !adopted {
            return Err(Error::Inconsistent {
                what: format!("{} on {}", fk.constraint, part.relname),
                detail: format!("not adopted by the parent constraint (found {child:?})"),
            });
        }
    }
    log::info!("{step}: done in {:.3}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Step 3 for one partition: build the index concurrently (dropping an INVALID leftover first)
/// and attach it to the parent index.
fn partition_index(
    client: &mut Client,
    pid: i32,
    watch: &BlockerWatch,
    policy: LockPolicy,
    fk: &TenantFk,
    part: &Partition,
    counters: &Counters,
) -> Result<()> {
    let started = Instant::now();
    let attached = client
        .query_opt(ATTACHED_CHILD_INDEX, &[&fk.index, &part.relation])
        .map_err(|e| Error::db(format!("reading the indexes of {}", part.relname), e))?
        .is_some();
    if attached {
        progress(
            counters,
            "index",
            part,
            "already attached",
            started.elapsed(),
        );
        return Ok(());
    }
    let child = child_index_name(part);
    let leftover_invalid = index_validity(client, &child)? == Some(false);
    watch.watch(pid, &format!("{} on {}: build", fk.index, part.relname));
    let built = build_index_concurrently(client, &child, part, leftover_invalid, counters);
    watch.take(pid);
    built?;
    let sql = format!(
        "ALTER INDEX {} ATTACH PARTITION {}",
        fk.index,
        quote_ident(&child)
    );
    let step = format!("{} on {}: attach", fk.index, part.relname);
    policy.run(&step, pid, Some(watch), || {
        client.batch_execute(&sql).map_err(|e| Error::db(&step, e))
    })?;
    progress(
        counters,
        "index",
        part,
        "built and attached",
        started.elapsed(),
    );
    Ok(())
}

/// `CREATE INDEX CONCURRENTLY` of `name` on `part`, after `DROP INDEX CONCURRENTLY` of an
/// INVALID one of that name (what an interrupted build leaves).
fn build_index_concurrently(
    client: &mut Client,
    name: &str,
    part: &Partition,
    drop_invalid_first: bool,
    counters: &Counters,
) -> Result<()> {
    if drop_invalid_first {
        log::info!("{name}: dropping the INVALID index an interrupted build left");
        let sql = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote_ident(name));
        with_unbounded_lock_wait(client, |c| c.batch_execute(&sql))
            .map_err(|e| Error::db(format!("dropping invalid index {name}"), e))?;
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let sql = format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} (\"tenantId\")",
        quote_ident(name),
        part.relation
    );
    with_unbounded_lock_wait(client, |c| c.batch_execute(&sql))
        .map_err(|e| Error::db(format!("building index {name} on {}", part.relname), e))?;
    counters.built.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with `lock_timeout = 0`, for statements whose SHARE UPDATE EXCLUSIVE lock never
/// blocks reads or writes, then restores the session's timeout.
fn with_unbounded_lock_wait<T>(
    client: &mut Client,
    f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
) -> std::result::Result<T, postgres::Error> {
    let previous: String = client.query_one("SHOW lock_timeout", &[])?.get(0);
    client.batch_execute("SET lock_timeout = 0")?;
    let outcome = f(client);
    client.batch_execute(&format!(
        "SET lock_timeout = '{}'",
        previous.replace('\'', "")
    ))?;
    outcome
}
