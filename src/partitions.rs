//! `partitions`: the monthly tables (`messages`, `api_logs`) have a partition for every month
//! from the current one (UTC) through `--premake` months ahead, created online by the engine's
//! partition operation ([`crate::engine::partitions`]) under the migration lock, at the end of
//! every `migrate` that leaves the database at the latest version and alone (to run daily).
//!
//! Rows already in DEFAULT for a month being created move into it as part of creating it; their
//! total per table is bounded by `--max-moved-rows` (writers of the table wait for the move):
//! above it, that table's months to move are not created. Rows in DEFAULT outside the window
//! (before the first partition, or beyond the window) are reported and left where they are.
//!
//! One table's trouble never stops another's window: a table that cannot be planned, a month
//! that is refused, and a month whose steps fail (the table stops there, and what the month made
//! comes off again: `clean_up`, retried at the end of the run) are reported in
//! [`PartitionsReport::not_created`], and the other tables' months are created.

use serde::Serialize;

use crate::config::{DbTarget, Settings};
use crate::db::{BlockerWatch, Conn, LockPolicy};
use crate::embedded::MONTHLY;
use crate::engine::partitions::{self as months, MonthPlan, MonthRows, NotCreated, Window};
use crate::engine::step::{Action, Step, StepCtx};
use crate::error::{Error, Result};
use crate::sql::Relation;

/// Rows moved out of DEFAULT per second while a month is created, rounded down from `cargo
/// bench --bench partitions` on the development machine (writers waited 0.83 s for 100k rows
/// and 9.3 s for 1M, medians of three under load, 2026-12-02: docs/partitions.md); used to
/// estimate how long a move makes writers wait.
pub(crate) const MOVED_ROWS_PER_SECOND: f64 = 90_000.0;

/// A month created.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    /// The partitioned table, `schema.table`.
    pub table: String,
    /// `YYYY-MM`.
    pub month: String,
    /// The new partition, `schema.table_YYYY_MM`.
    pub partition: String,
    /// Rows of the month moved out of DEFAULT into it.
    pub rows_moved: i64,
}

/// Rows left in DEFAULT outside the window.
#[derive(Clone, Debug, Serialize)]
pub struct Outside {
    /// The partitioned table, `schema.table`.
    pub table: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Rows of that month in DEFAULT.
    pub rows: i64,
}

/// What `partitions` (or the end of `migrate`) did.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionsReport {
    /// `--premake`: months kept ahead of the current one.
    pub premake: u32,
    /// The months created, in order.
    pub created: Vec<Created>,
    /// Each table's window after the run.
    pub windows: Vec<Window>,
    /// Rows left in DEFAULT outside the window (before its first month).
    pub outside: Vec<Outside>,
    /// Months (or whole tables' windows) not created, and why: one table's trouble never stops
    /// another's window.
    pub not_created: Vec<NotCreated>,
}

impl PartitionsReport {
    /// `Err` naming each month not created, if any was not (what `partitions` exits 1 for).
    pub fn into_result(self) -> Result<PartitionsReport> {
        if self.not_created.is_empty() {
            return Ok(self);
        }
        Err(Error::PartitionsIncomplete {
            not_created: self.not_created,
        })
    }
}

/// What `partitions --dry-run` prints.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionsPlan {
    /// The server and database (no password).
    pub database: DbTarget,
    /// The schema of the monthly tables.
    pub schema: String,
    /// `--premake`.
    pub premake: u32,
    /// Each table's window now.
    pub windows: Vec<Window>,
    /// The months it would create, with their steps.
    pub months: Vec<MonthPlan>,
    /// Helper CHECKs an interrupted run left, to drop.
    pub leftovers: Vec<Step>,
    /// Rows that would stay in DEFAULT outside the window.
    pub outside: Vec<Outside>,
    /// Months (or tables) that would not be created, and why.
    pub not_created: Vec<NotCreated>,
    /// `--lock-timeout`, in milliseconds.
    pub lock_timeout_ms: u128,
    /// `--lock-retries`.
    pub lock_retries: u32,
}

fn tables(settings: &Settings) -> Vec<Relation> {
    MONTHLY
        .iter()
        .map(|t| Relation::new(&settings.schema, *t))
        .collect()
}

/// One table's window, the months it lacks (planned or refused) and the helper CHECKs an
/// interrupted run left. Read-only.
struct TableWork {
    window: Window,
    months: Vec<MonthPlan>,
    leftovers: Vec<Step>,
}

/// Every table's work, and what cannot be planned, per table.
#[derive(Default)]
struct Planned {
    tables: Vec<TableWork>,
    not_created: Vec<NotCreated>,
}

impl Planned {
    fn windows(&self) -> Vec<Window> {
        self.tables.iter().map(|t| t.window.clone()).collect()
    }

    fn months(&self) -> impl Iterator<Item = &MonthPlan> {
        self.tables.iter().flat_map(|t| &t.months)
    }
}

fn plan_table(
    c: &mut postgres::Client,
    settings: &Settings,
    table: &Relation,
    out: &mut Planned,
) -> Result<()> {
    let window = months::window(c, table, settings.premake, settings.as_of.as_deref())?;
    let mut plan = months::plan(c, &window)?;
    if let Some(refused) = within_limit(&plan.months, settings) {
        plan.months.retain(|m| m.rows_from_default == 0);
        plan.refused.push(refused);
    }
    let creating: Vec<String> = plan.months.iter().map(|m| m.month.clone()).collect();
    let leftovers = months::leftovers(c, &window, &creating)?;
    out.not_created.extend(plan.refused);
    out.tables.push(TableWork {
        window,
        months: plan.months,
        leftovers,
    });
    Ok(())
}

/// Plans every table; a table that cannot be planned is reported and the others go on.
fn plan_all(c: &mut postgres::Client, settings: &Settings) -> Result<Planned> {
    let mut out = Planned::default();
    for table in tables(settings) {
        match plan_table(c, settings, &table, &mut out) {
            Ok(()) => {}
            Err(e @ Error::Interrupted { .. }) => return Err(e),
            Err(e) => out.not_created.push(NotCreated {
                table: table.plain(),
                month: None,
                reason: e.to_string(),
            }),
        }
    }
    Ok(out)
}

/// Rows in DEFAULT of months the window does not create.
fn outside(windows: &[Window]) -> Vec<Outside> {
    windows
        .iter()
        .flat_map(|w| {
            w.default_rows
                .iter()
                .filter(|m| !w.missing.contains(&m.month))
                .map(|MonthRows { month, rows }| Outside {
                    table: w.table.plain(),
                    month: month.clone(),
                    rows: *rows,
                })
        })
        .collect()
}

/// The months of one table whose rows to move exceed `--max-moved-rows` in all, refused
/// together (naming the months, the counts and the estimated wait), if they do.
fn within_limit(plans: &[MonthPlan], settings: &Settings) -> Option<NotCreated> {
    let moving: Vec<&MonthPlan> = plans.iter().filter(|p| p.rows_from_default > 0).collect();
    let total: i64 = moving.iter().map(|p| p.rows_from_default).sum();
    let first = moving.first()?;
    if total as u64 <= settings.max_moved_rows {
        return None;
    }
    let reason = Error::TooManyRowsToMove {
        table: first.table.plain(),
        months: moving
            .iter()
            .map(|p| format!("{}: {} rows", p.month, p.rows_from_default))
            .collect::<Vec<_>>()
            .join(", "),
        total,
        limit: settings.max_moved_rows,
        seconds: total as f64 / MOVED_ROWS_PER_SECOND,
    };
    Some(NotCreated {
        table: first.table.plain(),
        month: Some(
            moving
                .iter()
                .map(|p| p.month.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        reason: reason.to_string(),
    })
}

/// Creates the months every table lacks, under the migration lock the caller holds. A table
/// whose work fails stops at that month (what it made of the month comes off again); the other
/// tables go on. Errors only when the run is interrupted.
pub(crate) fn maintain(
    settings: &Settings,
    main: &mut Conn,
    watch: &BlockerWatch,
) -> Result<PartitionsReport> {
    let started = std::time::Instant::now();
    let Planned {
        tables: work,
        mut not_created,
    } = plan_all(main.client(), settings)?;
    let windows: Vec<Window> = work.iter().map(|t| t.window.clone()).collect();
    let left = outside(&windows);
    for o in &left {
        log::warn!(
            "{}: {} rows of {} in its DEFAULT partition, outside the window: left there (move them, or create that month by hand)",
            o.table, o.rows, o.month
        );
    }
    for n in &not_created {
        log::warn!("not created: {n}");
    }
    let policy = LockPolicy::of(settings);
    let ctx = StepCtx {
        pid: main.pid(),
        watch,
        policy: &policy,
    };
    let mut created = Vec::new();
    let mut undo = Vec::new();
    for t in &work {
        if let Err((n, left)) = run_table(&ctx, main, t, &mut created) {
            if let Some(reason) = settings.interrupt.reason() {
                return Err(Error::interrupted(reason));
            }
            log::warn!("not created: {n}");
            not_created.push(n);
            undo.extend(left);
        }
    }
    // What a clean-up could not undo (a long reader of DEFAULT held its lock): once more.
    for s in &undo {
        if let Err(e) = ctx.run(main.client(), s) {
            log::warn!("{}: could not be undone ({e}); the next run drops it, and check reports it until then", s.id);
        }
    }
    if let Some(reason) = settings.interrupt.reason() {
        return Err(Error::interrupted(reason));
    }
    let planned: Vec<Relation> = work.iter().map(|t| t.window.table.clone()).collect();
    let windows = windows_after(settings, main, &planned);
    for w in &windows {
        log_window(w, &created, started.elapsed());
    }
    Ok(PartitionsReport {
        premake: settings.premake,
        created,
        windows,
        outside: left,
        not_created,
    })
}

/// One table's leftovers and months, in order, stopping at the first failure; then what failed,
/// and the clean-up steps that could not be run.
fn run_table(
    ctx: &StepCtx<'_>,
    main: &mut Conn,
    t: &TableWork,
    created: &mut Vec<Created>,
) -> std::result::Result<(), (NotCreated, Vec<Step>)> {
    let table = t.window.table.plain();
    let failed = |e: Error, month: Option<&str>, after: usize| {
        let rest = if after > 0 {
            format!("; the {after} month(s) after it were not attempted")
        } else {
            String::new()
        };
        NotCreated {
            table: table.clone(),
            month: month.map(str::to_owned),
            reason: format!("{e}{rest}"),
        }
    };
    for s in &t.leftovers {
        ctx.run(main.client(), s)
            .map_err(|e| (failed(e, None, 0), Vec::new()))?;
    }
    for (i, p) in t.months.iter().enumerate() {
        if let Err(e) = run_month(ctx, main, p) {
            let left = clean_up(ctx, main, p);
            return Err((failed(e, Some(&p.month), t.months.len() - i - 1), left));
        }
        log::debug!(
            "{}: created {} for {} ({} rows moved from DEFAULT)",
            p.table.plain(),
            p.partition.plain(),
            p.month,
            p.rows_from_default
        );
        created.push(Created {
            table: p.table.plain(),
            month: p.month.clone(),
            partition: p.partition.plain(),
            rows_moved: p.rows_from_default,
        });
    }
    Ok(())
}

/// A month's steps. Once it is attached it is created: a step after that (dropping its helper
/// CHECK) that fails is a warning, and the next run drops the CHECK.
fn run_month(ctx: &StepCtx<'_>, main: &mut Conn, p: &MonthPlan) -> Result<()> {
    let mut attached = false;
    for s in &p.steps {
        match ctx.run(main.client(), s) {
            Ok(_) => {}
            Err(e) if attached && ctx.policy.interrupt.reason().is_none() => log::warn!(
                "{}: {e}; the month is attached, and the next run drops what is left",
                s.id
            ),
            Err(e) => return Err(e),
        }
        attached |= matches!(s.action, Action::AttachPartition | Action::MoveAndAttach);
    }
    Ok(())
}

/// After a month failed: what it made comes off again (its exclusion CHECK from DEFAULT, its
/// standalone table if empty), even when the run was interrupted, with a short bound of its own.
/// Returns what could not be undone now.
fn clean_up(ctx: &StepCtx<'_>, main: &mut Conn, p: &MonthPlan) -> Vec<Step> {
    let policy = LockPolicy {
        lock_timeout: ctx.policy.lock_timeout.min(CLEANUP_LOCK_TIMEOUT),
        retries: 2,
        interrupt: crate::interrupt::Interrupt::new(),
    };
    let cleanup = StepCtx {
        policy: &policy,
        ..*ctx
    };
    let mut left = Vec::new();
    for s in &p.cleanup {
        match cleanup.run(main.client(), s) {
            Ok(_) => log::info!(
                "{}: done, so that nothing of the failed month is left",
                s.id
            ),
            Err(e) => {
                log::warn!("{}: could not be undone yet ({e})", s.id);
                left.push(s.clone());
            }
        }
    }
    left
}

/// The bound of each clean-up attempt after a failure.
const CLEANUP_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// One line per table at the end of a run: its window, and the months this run created in it
/// (each month has its own line at debug).
fn log_window(w: &Window, created: &[Created], took: std::time::Duration) {
    let table = w.table.plain();
    let mine: Vec<&Created> = created.iter().filter(|c| c.table == table).collect();
    let made = match (mine.first(), mine.last()) {
        (Some(first), Some(last)) => format!(
            "; created {} month(s) {} .. {} ({} rows moved from DEFAULT) in {:.1}s",
            mine.len(),
            first.month,
            last.month,
            mine.iter().map(|c| c.rows_moved).sum::<i64>(),
            took.as_secs_f64()
        ),
        _ => "; nothing to create".to_string(),
    };
    log::info!(
        "{table}: partitions {} .. {}, {} month(s) ahead of {}{made}",
        w.first.as_deref().unwrap_or("-"),
        w.last.as_deref().unwrap_or("-"),
        w.ahead,
        w.current
    );
}

/// The windows of `tables` after a run; a table whose window cannot be read is left out
/// (its trouble is reported already).
fn windows_after(settings: &Settings, main: &mut Conn, tables: &[Relation]) -> Vec<Window> {
    let mut out = Vec::new();
    for t in tables {
        match months::window(
            main.client(),
            t,
            settings.premake,
            settings.as_of.as_deref(),
        ) {
            Ok(w) => out.push(w),
            Err(e) => log::debug!("{}: window not read after the run: {e}", t.plain()),
        }
    }
    out
}

/// `--as-of` stands for today: one in the past makes months that have begun since look as if
/// they had not, and such a month gets an exclusion CHECK that refuses the application's
/// inserts of it until its ATTACH. Meant for `--dry-run`; a real run says so.
fn warn_past_as_of(settings: &Settings, main: &mut Conn) {
    let Some(as_of) = settings.as_of.as_deref() else {
        return;
    };
    let today: Option<String> = main
        .client()
        .query_one(
            "SELECT (now() AT TIME ZONE 'UTC')::date::text WHERE $1::text::date < (now() AT TIME ZONE 'UTC')::date",
            &[&as_of],
        )
        .ok()
        .map(|r| r.get(0));
    if let Some(today) = today {
        log::warn!("--as-of {as_of} is before today ({today}, UTC): months that began since are treated as not begun (an exclusion CHECK on DEFAULT would refuse the application's inserts of them until their ATTACH); use --as-of with --dry-run");
    }
}

/// `meta-chat-migrate partitions`: connect, take the migration lock, maintain, release.
pub fn run(settings: &Settings) -> Result<PartitionsReport> {
    let settings = &settings.for_run();
    let target = settings.target()?;
    log::info!(
        "meta-chat-migrate {}: keeping the monthly partitions of schema {} of {target}, {} month(s) ahead",
        crate::VERSION,
        settings.schema,
        settings.premake
    );
    let outcome = crate::schema::lock_platform(settings, None).and_then(|(mut main, lock)| {
        warn_past_as_of(settings, &mut main);
        let outcome = maintain(settings, &mut main, lock.watch()).map_err(|e| lock.explain(e));
        lock.release();
        outcome
    });
    match (outcome, settings.interrupt.reason()) {
        (Err(_), Some(reason)) => Err(Error::interrupted(reason)),
        (other, _) => other,
    }
}

/// `partitions --dry-run`: what `partitions` would do. No lock, no change.
pub fn plan(settings: &Settings) -> Result<PartitionsPlan> {
    let settings = &settings.for_run();
    let mut conn = crate::schema::connect_platform(settings)?;
    plan_on(conn.client(), settings)
}

/// What `partitions` (or the end of `migrate`) would do, on an open connection. Read-only.
pub(crate) fn plan_on(c: &mut postgres::Client, settings: &Settings) -> Result<PartitionsPlan> {
    let planned = plan_all(c, settings)?;
    let windows = planned.windows();
    Ok(PartitionsPlan {
        database: settings.target()?,
        schema: settings.schema.clone(),
        premake: settings.premake,
        outside: outside(&windows),
        months: planned.months().cloned().collect(),
        leftovers: planned
            .tables
            .iter()
            .flat_map(|t| t.leftovers.iter().cloned())
            .collect(),
        not_created: planned.not_created,
        windows,
        lock_timeout_ms: settings.lock_timeout.as_millis(),
        lock_retries: settings.lock_retries,
    })
}

impl PartitionsPlan {
    /// The plan as text, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "dry run (nothing is changed): monthly partitions of schema {} of {}, {} month(s) ahead",
            self.schema, self.database, self.premake
        )];
        for w in &self.windows {
            out.extend(window_lines(w, self.premake));
        }
        if self.months.is_empty() {
            out.push("nothing to create".into());
        }
        for s in &self.leftovers {
            out.push(format!(
                "drop {} (left by an interrupted run): {}",
                s.id.as_str(),
                s.locks
            ));
        }
        let bound = |b: bool| {
            if b {
                format!(
                    "bounded by --lock-timeout {}ms, {} retries",
                    self.lock_timeout_ms, self.lock_retries
                )
            } else {
                "waits as long as needed; never blocks reads or writes".into()
            }
        };
        for m in &self.months {
            out.push(format!(
                "create {} for {} [{} .. {}), taking {} rows from DEFAULT:",
                m.partition.plain(),
                m.month,
                m.from,
                m.to,
                m.rows_from_default
            ));
            for s in &m.steps {
                out.push(format!(
                    "  {}: {} [{}]",
                    s.action.name(),
                    s.locks,
                    bound(s.bounded)
                ));
            }
            for s in &m.cleanup {
                out.push(format!(
                    "  if the month fails, {}: {} (so that nothing of it is left)",
                    s.action.name(),
                    s.locks
                ));
            }
        }
        for o in &self.outside {
            out.push(format!(
                "left in DEFAULT: {} rows of {} {} (outside the window)",
                o.rows, o.table, o.month
            ));
        }
        for n in &self.not_created {
            out.push(format!("would not be created: {n}"));
        }
        out
    }
}

/// A window as `check` and `--dry-run` show it.
pub fn window_lines(w: &Window, premake: u32) -> Vec<String> {
    let mut out = vec![format!(
        "{:<12} {:<13} months {} .. {} (time zone {}), {} month(s) ahead of {}{}",
        "window",
        w.table.name.as_str(),
        w.first.as_deref().unwrap_or("-"),
        w.last.as_deref().unwrap_or("-"),
        w.zone,
        w.ahead,
        w.current,
        if w.ahead < premake as i32 {
            format!(": LESS than --premake {premake}")
        } else {
            String::new()
        }
    )];
    for m in &w.default_rows {
        out.push(format!(
            "{:<12} {:<13} DEFAULT holds {} rows of {}",
            "",
            w.table.name.as_str(),
            m.rows,
            m.month
        ));
    }
    out
}
