//! Monthly partitions created ahead of time, online: planned per month from the catalog, and
//! run through the engine's two lock rules like every other step.
//!
//! For a month to create (`messages_YYYY_MM`, bounds continuing the existing partitions exactly,
//! in the time zone in which their bounds are month starts: [`window`]):
//! 1. `drop-leftover`, only where an interrupted run left an empty standalone table of the
//!    month's name (it carries this runner's bound CHECK): nothing of it is reused, so its
//!    columns, owner or indexes never matter. Any other relation of that name refuses the month.
//! 2. `create-table`: a standalone table `LIKE` the parent with its indexes (named and placed as
//!    `PARTITION OF` names and places a partition's, so that attaching adopts them), a CHECK of
//!    the month's bounds (so that attaching scans nothing of it), and what [`carry`] says it
//!    carries: the parent's owner and tablespace, the grants of the parent and of the newest
//!    month, that month's row-level security and policies. Only the new table is locked.
//!    The parent's foreign keys are not added: attaching a table that brings its own key makes
//!    PostgreSQL adopt it, which drops the key's triggers on `tenants` and `conversations` under
//!    ACCESS EXCLUSIVE; attaching without them clones the keys under SHARE ROW EXCLUSIVE.
//! 3. a month that has not begun and has no rows in DEFAULT: `add-exclusion` (a CHECK on DEFAULT
//!    that excludes the month, NOT VALID: a brief ACCESS EXCLUSIVE on DEFAULT) and
//!    `validate-exclusion` (SHARE UPDATE EXCLUSIVE: the scan of DEFAULT blocks nobody), then
//!    `attach-partition` under `--lock-timeout` with retries: ACCESS EXCLUSIVE on DEFAULT and
//!    on the new table, SHARE UPDATE EXCLUSIVE on the parent, SHARE ROW EXCLUSIVE on the tables
//!    the keys reference while they are cloned. If anything after `add-exclusion` fails, the
//!    exclusion is dropped again ([`MonthPlan::cleanup`]): no helper constraint is left on
//!    DEFAULT to refuse the application's inserts of that month.
//! 4. a month that has begun, or whose rows already sit in DEFAULT: `move-and-attach`, one
//!    transaction: SHARE on the parent and DEFAULT and SHARE ROW EXCLUSIVE on the referenced
//!    tables first (reads go on; writes wait), the month's rows deleted from DEFAULT and
//!    inserted into the new table, then ACCESS EXCLUSIVE on the parent for the ATTACH. The
//!    parent is locked `ONLY`: every query through it locks it first, and the partitions need
//!    no lock of their own. That lock upgrade would deadlock with a transaction that read the
//!    table and writes it meanwhile, so it steps aside instead ([`upgrade`]): when such a
//!    transaction already waits for the move, or the upgrade waits longer than
//!    [`UPGRADE_WAIT`] (while it waits, such a transaction's write would be the deadlock's
//!    victim), the step stops (`WOULD_DEADLOCK`) and its retries take ACCESS EXCLUSIVE first
//!    ([`Step::on_deadlock`]), which deadlocks with no reader. When a publication covers the table
//!    through its root, the rows go to a temporary table instead and are inserted through the
//!    parent after the ATTACH, so that subscribers receive the inserts with the deletes; a
//!    publication through the partitions, or one that publishes only inserts or only deletes,
//!    refuses the move. So does a move that would fire a user trigger or a referencing key's
//!    action. `--max-moved-rows` bounds the rows moved.
//! 5. `drop-checks`: the helper CHECKs go (the partition bound says the same).
//!
//! Every step re-plans from the catalog on the next run; a killed run's leftovers are dropped
//! ([`leftovers`]) or recreated.

pub mod carry;
pub mod window;

use crate::catalog::Reader;
use serde::Serialize;

use super::step::{Action, LockClaim, LockMode, Step};
use crate::catalog;
use crate::db::{quote_literal, retry::WOULD_DEADLOCK};
use crate::error::{Error, Result};
pub use crate::findings::NotCreated;
use crate::sql::{Ident, Relation};
use carry::Carry;
pub use carry::Publication;
pub use window::{window, MonthRows, Window};

/// What one month needs.
#[derive(Clone, Debug, Serialize)]
pub struct MonthPlan {
    pub table: Relation,
    pub month: String,
    pub partition: Relation,
    /// Bounds, as timestamptz literals in UTC.
    pub from: String,
    pub to: String,
    /// Rows this month takes out of DEFAULT.
    pub rows_from_default: i64,
    /// `attach`, `exclude`, `move` or `move-published` (rows inserted through the parent).
    pub path: &'static str,
    pub steps: Vec<Step>,
    /// Run when a step fails after the exclusion CHECK went on DEFAULT: it comes off again.
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
    referenced: Vec<Relation>,
    /// What the move's DELETE would fire that its INSERT would not.
    hazards: Vec<String>,
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
    let t = Table {
        window,
        columns: catalog::columns(c, parent.oid)?,
        referenced: catalog::referenced_tables(c, parent.oid)?,
        hazards: match &window.default {
            Some(d) if window.rows_in_default() > 0 => move_hazards(c, d, &window.table)?,
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

impl Month<'_> {
    fn plan(&self, c: &mut dyn Reader) -> Result<Planned> {
        let mut steps = Vec::new();
        match self.leftover(c)? {
            Ok(Some(drop)) => steps.push(drop),
            Ok(None) => {}
            Err(why) => return Ok(Err(why)),
        }
        match self.create_table() {
            Ok(s) => steps.push(s),
            Err(why) => return Ok(Err(why)),
        }
        let rows = self.t.window.default_rows_of(self.month);
        let (path, cleanup) = match self.attach_steps(c, &mut steps)? {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        steps.push(self.step(
            &self.partition,
            Action::DropChecks,
            vec![format!(
                "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                self.partition,
                Ident::new(BOUND_CHECK)
            )],
            vec![LockClaim::new(&self.partition, LockMode::AccessExclusive)],
            "the new partition, brief",
        ));
        Ok(Ok(MonthPlan {
            table: self.t.window.table.clone(),
            month: self.month.to_string(),
            partition: self.partition.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            rows_from_default: rows,
            path,
            steps,
            cleanup,
        }))
    }

    fn step(
        &self,
        on: &Relation,
        action: Action,
        statements: Vec<String>,
        claims: Vec<LockClaim>,
        note: &str,
    ) -> Step {
        Step::with_statements(
            self.partition.name.as_str(),
            on,
            action,
            statements,
            String::new(),
        )
        .claiming(claims, note)
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

    /// A relation of the month's name: `Ok(None)` if there is none, `Ok(Some(step))` dropping
    /// an empty standalone table an interrupted run left, `Err(why)` for anything else.
    fn leftover(&self, c: &mut dyn Reader) -> Result<std::result::Result<Option<Step>, String>> {
        let part = &self.partition;
        let Some(found) = leftover_state(c, part)? else {
            return Ok(Ok(None));
        };
        let name = part.plain();
        let why = if found.kind != "r" || found.is_partition {
            format!("{name} exists ({}), so month {} cannot be created under its name: rename or drop it", found.what, self.month)
        } else if !found.ours {
            format!("{name} exists and was not left by this runner (it has no {BOUND_CHECK} CHECK), so month {} cannot be created under its name: rename or drop it", self.month)
        } else if !found.may_drop {
            format!("{name} is an empty table an interrupted run left, owned by {}, which this run's role may not drop: drop it as {} or a superuser, then run partitions again", found.owner, found.owner)
        } else if !found.readable {
            format!("{name} is a table an interrupted run left, owned by {}, which this run's role may not read to check that it is empty: drop it, then run partitions again", found.owner)
        } else if found.has_rows {
            format!("{name} is a standalone table an interrupted run left, but rows were written into it since: move them into {} (or drop it), then run partitions again", self.t.window.table.plain())
        } else {
            return Ok(Ok(Some(self.step(
                part,
                Action::DropLeftover,
                vec![format!("DROP TABLE {part}")],
                vec![LockClaim::new(part, LockMode::AccessExclusive)],
                "an empty table no one uses",
            ))));
        };
        Ok(Err(why))
    }

    fn create_table(&self) -> std::result::Result<Step, String> {
        let (table, part) = (&self.t.window.table, &self.partition);
        let mut statements = vec![
            format!(
                "CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED \
                 INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING INDEXES){}",
                self.t.carry.tablespace().map_or(String::new(), |ts| format!(" TABLESPACE {}", Ident::new(ts)))
            ),
            format!(
                "ALTER TABLE {part} ADD CONSTRAINT {} CHECK ({})",
                Ident::new(BOUND_CHECK),
                self.range()
            ),
        ];
        statements.extend(self.t.carry.statements(part)?);
        Ok(self.step(
            part,
            Action::CreateTable,
            statements,
            vec![
                LockClaim::new(table, LockMode::AccessShare),
                LockClaim::new(part, LockMode::AccessExclusive),
            ],
            "a new table: nothing live is locked",
        ))
    }

    /// The steps from the prepared table to an attached partition, the path taken, and the
    /// clean-up of a failure; `Err(why)` when the month is refused.
    fn attach_steps(
        &self,
        c: &mut dyn Reader,
        steps: &mut Vec<Step>,
    ) -> Result<std::result::Result<(&'static str, Vec<Step>), String>> {
        let w = self.t.window;
        let Some(d) = &w.default else {
            steps.push(self.attach(None));
            return Ok(Ok(("attach", Vec::new())));
        };
        let exclusion = Ident::new(exclusion_name(self.month));
        let existing = exclusion_state(c, d, &exclusion)?;
        let rows = w.default_rows_of(self.month);
        let begun = window::month_index(self.month) <= window::month_index(&w.begun);
        if rows == 0 && (existing.is_some() || !begun) {
            if existing.is_none() {
                steps.push(self.step(
                    d,
                    Action::AddExclusion,
                    vec![format!(
                        "ALTER TABLE {d} ADD CONSTRAINT {exclusion} CHECK (NOT ({})) NOT VALID",
                        self.range()
                    )],
                    vec![LockClaim::new(d, LockMode::AccessExclusive)],
                    "brief: no scan",
                ));
            }
            if existing != Some(true) {
                steps.push(self.step(
                    d,
                    Action::ValidateExclusion,
                    vec![format!("ALTER TABLE {d} VALIDATE CONSTRAINT {exclusion}")],
                    vec![LockClaim::new(d, LockMode::ShareUpdateExclusive)],
                    "scans it; reads and writes go on",
                ));
            }
            steps.push(self.attach(Some(d)));
            steps.push(self.drop_exclusion(d, &exclusion));
            return Ok(Ok(("exclude", vec![self.drop_exclusion(d, &exclusion)])));
        }
        if rows > 0 {
            if let Some(why) = self.move_refusal(d, rows) {
                return Ok(Err(why));
            }
        }
        if existing.is_some() {
            // A NOT VALID leftover that rows got past: it goes before they move.
            steps.push(self.drop_exclusion(d, &exclusion));
        }
        let published = rows > 0 && self.t.carry.publishes_moves();
        steps.push(self.move_and_attach(d, rows, published));
        Ok(Ok((
            if published { "move-published" } else { "move" },
            Vec::new(),
        )))
    }

    /// Why moving `rows` out of DEFAULT is refused, if it is.
    fn move_refusal(&self, d: &Relation, rows: i64) -> Option<String> {
        let mut why: Vec<String> = self
            .t
            .hazards
            .iter()
            .map(|h| format!("would fire {h}"))
            .collect();
        why.extend(
            self.t
                .carry
                .publications
                .iter()
                .filter_map(Publication::move_hazard),
        );
        (!why.is_empty()).then(|| format!(
            "{rows} rows of {} are in {}, but moving them {}: move them by hand (or remove the cause), then run partitions again",
            self.month,
            d.plain(),
            why.join("; ")
        ))
    }

    fn drop_exclusion(&self, d: &Relation, exclusion: &Ident) -> Step {
        self.step(
            d,
            Action::DropChecks,
            vec![format!(
                "ALTER TABLE {d} DROP CONSTRAINT IF EXISTS {exclusion}"
            )],
            vec![LockClaim::new(d, LockMode::AccessExclusive)],
            "brief",
        )
    }

    fn attach(&self, default: Option<&Relation>) -> Step {
        let table = &self.t.window.table;
        let mut claims = vec![LockClaim::new(table, LockMode::ShareUpdateExclusive)];
        claims.extend(default.map(|d| LockClaim::new(d, LockMode::AccessExclusive)));
        claims.push(LockClaim::new(&self.partition, LockMode::AccessExclusive));
        claims.extend(
            self.t
                .referenced
                .iter()
                .map(|r| LockClaim::new(r, LockMode::ShareRowExclusive)),
        );
        self.step(
            table,
            Action::AttachPartition,
            vec![self.attach_sql()],
            claims,
            "brief: nothing scanned or built; the keys are cloned onto the empty table",
        )
    }
}

/// What stands under a month's name.
struct Leftover {
    kind: String,
    what: String,
    is_partition: bool,
    ours: bool,
    has_rows: bool,
    may_drop: bool,
    readable: bool,
    owner: String,
}

const LEFTOVER: &str = "SELECT c.relkind::text, \
       CASE c.relkind WHEN 'r' THEN CASE WHEN c.relispartition THEN 'a partition of ' || (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid) ELSE 'a table' END \
            WHEN 'p' THEN 'a partitioned table' WHEN 'i' THEN 'an index' WHEN 'v' THEN 'a view' ELSE 'a relation of kind ' || c.relkind::text END, \
       c.relispartition, \
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname = $3 AND k.contype = 'c'), \
       pg_get_userbyid(c.relowner)::text, \
       pg_has_role(current_user, c.relowner, 'USAGE') OR pg_has_role(current_user, n.nspowner, 'USAGE'), \
       has_table_privilege(c.oid, 'SELECT') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2";

fn leftover_state(c: &mut dyn Reader, part: &Relation) -> Result<Option<Leftover>> {
    let Some(r) = c
        .query_opt(
            LEFTOVER,
            &[&part.schema.as_str(), &part.name.as_str(), &BOUND_CHECK],
        )
        .map_err(|e| Error::db(format!("inspecting {}", part.plain()), e))?
    else {
        return Ok(None);
    };
    let kind: String = r.get(0);
    let (may_drop, readable): (bool, bool) = (r.get(5), r.get(6));
    let has_rows = kind == "r"
        && may_drop
        && readable
        && c.query_one(&format!("SELECT EXISTS (SELECT 1 FROM ONLY {part})"), &[])
            .map_err(|e| Error::db(format!("inspecting {}", part.plain()), e))?
            .get::<_, bool>(0);
    Ok(Some(Leftover {
        kind,
        what: r.get(1),
        is_partition: r.get(2),
        ours: r.get(3),
        owner: r.get(4),
        may_drop,
        readable,
        has_rows,
    }))
}

/// What the move's `DELETE` from DEFAULT would fire that its `INSERT` into the standalone table
/// would not: a user trigger on DEFAULT (counters, audit), or a foreign key of another table
/// that references the partitioned table (its ON DELETE action would delete or change that
/// table's rows). Listed, so that the move is refused instead of losing them.
const MOVE_HAZARDS: &str = "SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t
     WHERE t.tgrelid = $1::text::regclass AND t.tgconstraint = 0 AND (NOT t.tgisinternal OR t.tgparentid <> 0)
     UNION ALL
     SELECT format('foreign key %s of %s', k.conname, k.conrelid::regclass) FROM pg_constraint k
     WHERE k.contype = 'f' AND k.confrelid IN (SELECT relid FROM pg_partition_tree($2::text::regclass))
     ORDER BY 1";

fn move_hazards(c: &mut dyn Reader, default: &Relation, table: &Relation) -> Result<Vec<String>> {
    Ok(
        c.query(MOVE_HAZARDS, &[&default.to_string(), &table.to_string()])
            .map_err(|e| Error::db("reading what a move out of DEFAULT would fire", e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect(),
    )
}

/// Whether DEFAULT carries the month's exclusion CHECK, and whether it is validated.
fn exclusion_state(
    c: &mut dyn Reader,
    default: &Relation,
    exclusion: &Ident,
) -> Result<Option<bool>> {
    Ok(c
        .query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2 AND contype = 'c'",
            &[&default.to_string(), &exclusion.as_str()],
        )
        .map_err(|e| Error::db("reading the checks of the DEFAULT partition", e))?
        .map(|r| r.get(0)))
}

impl Month<'_> {
    /// Moves the month's rows out of DEFAULT and attaches, in one transaction (see the module
    /// docs). Readers of the parent see every row once, before or after: the parent is locked
    /// ACCESS EXCLUSIVE for the attach, because a query reads the parent's partition list before
    /// it locks the partitions, so one that queued behind the attach on DEFAULT alone would run,
    /// after the commit, with the old list and a new snapshot, and see none of the moved rows.
    fn move_and_attach(&self, d: &Relation, rows: i64, published: bool) -> Step {
        let table = &self.t.window.table;
        let mut claims = vec![
            LockClaim::new(table, LockMode::AccessExclusive),
            LockClaim::new(d, LockMode::AccessExclusive),
            LockClaim::new(&self.partition, LockMode::AccessExclusive),
        ];
        claims.extend(
            self.t
                .referenced
                .iter()
                .map(|r| LockClaim::new(r, LockMode::ShareRowExclusive)),
        );
        let note = format!(
            "moving {rows} rows: SHARE on {t} and {d} first (reads go on, writes wait), then ACCESS EXCLUSIVE on {t} for the attach{} (every read waits); \
             a transaction that read {t} and writes it during the move makes the move start over with ACCESS EXCLUSIVE first (every read waits for the whole move)",
            if published { " and the rows' insert through it, published to subscribers" } else { "" },
            t = table.plain(),
            d = d.plain(),
        );
        let mut step = self.step(
            table,
            Action::MoveAndAttach,
            self.move_statements(d, false, published),
            claims,
            &note,
        );
        step.on_deadlock = Some(self.move_statements(d, true, published));
        step.guard = vec![table.to_string(), d.to_string()];
        step
    }

    /// The move's statements: SHARE first and ACCESS EXCLUSIVE at the attach, or (`exclusive`)
    /// ACCESS EXCLUSIVE first.
    fn move_statements(&self, d: &Relation, exclusive: bool, published: bool) -> Vec<String> {
        let (table, part) = (&self.t.window.table, &self.partition);
        let cols = self
            .t
            .columns
            .iter()
            .map(|c| Ident::new(c.as_str()).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let first = if exclusive {
            "ACCESS EXCLUSIVE"
        } else {
            "SHARE"
        };
        let mut out = vec![
            format!("LOCK TABLE ONLY {table} IN {first} MODE"),
            format!("LOCK TABLE {d} IN {first} MODE"),
        ];
        if !self.t.referenced.is_empty() {
            let list = self
                .t
                .referenced
                .iter()
                .map(Relation::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            out.push(format!("LOCK TABLE {list} IN SHARE ROW EXCLUSIVE MODE"));
        }
        let delete = format!(
            "WITH moved AS (DELETE FROM ONLY {d} WHERE {} RETURNING {cols})",
            self.range()
        );
        if published {
            out.push(format!(
                "CREATE TEMPORARY TABLE {MOVED} (LIKE {table}) ON COMMIT DROP"
            ));
            out.push(format!(
                "{delete} INSERT INTO {MOVED} ({cols}) SELECT {cols} FROM moved"
            ));
        } else {
            out.push(format!("{delete} INSERT INTO {part} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved"));
        }
        if !exclusive {
            out.push(upgrade(table, d));
        }
        out.push(self.attach_sql());
        if published {
            out.push(format!(
                "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {MOVED}"
            ));
        }
        out
    }
}

/// The temporary table a published move keeps its rows in until they are inserted through the
/// parent.
const MOVED: &str = "mcm_moved";

/// How long the move's upgrade to ACCESS EXCLUSIVE may wait. While it waits, a transaction
/// that read the table and now writes it is the deadlock's victim (PostgreSQL aborts it at once,
/// 40P01), so the wait is kept short and the move starts over with its locks taken first.
pub const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The move's upgrade to ACCESS EXCLUSIVE on the table, or [`WOULD_DEADLOCK`]: when a
/// transaction that holds a lock on the table or its DEFAULT already waits for the move (it read
/// the table and now writes it: upgrading would deadlock with it), or when the upgrade waits
/// longer than [`UPGRADE_WAIT`]. Then `lock_timeout` is the step's again.
fn upgrade(table: &Relation, d: &Relation) -> String {
    format!(
        "DO $mcm$ DECLARE restore text := current_setting('lock_timeout'); BEGIN \
           IF EXISTS (SELECT 1 FROM pg_locks l WHERE l.granted AND l.locktype = 'relation' \
               AND l.relation IN ({t}::regclass, {dl}::regclass) AND l.pid <> pg_backend_pid() \
               AND pg_backend_pid() = ANY (pg_blocking_pids(l.pid))) THEN \
             RAISE EXCEPTION USING ERRCODE = '{WOULD_DEADLOCK}', MESSAGE = 'a transaction that read ' || {tp} || ' waits to write it: upgrading to ACCESS EXCLUSIVE now would deadlock with it, so the move starts over with its locks taken first'; \
           END IF; \
           PERFORM set_config('lock_timeout', '{wait}ms', true); \
           BEGIN \
             LOCK TABLE ONLY {table} IN ACCESS EXCLUSIVE MODE; \
           EXCEPTION WHEN lock_not_available THEN \
             RAISE EXCEPTION USING ERRCODE = '{WOULD_DEADLOCK}', MESSAGE = 'the upgrade to ACCESS EXCLUSIVE on ' || {tp} || ' waited over {wait}ms, while which a transaction that read it and writes it would be a deadlock''s victim, so the move starts over with its locks taken first'; \
           END; \
           PERFORM set_config('lock_timeout', restore, true); \
         END $mcm$",
        t = quote_literal(&table.to_string()),
        dl = quote_literal(&d.to_string()),
        tp = quote_literal(&table.plain()),
        wait = UPGRADE_WAIT.as_millis(),
    )
}

/// A helper CHECK of the runner, found on a partition of a monthly table.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HelperCheck {
    pub on: Relation,
    pub name: String,
}

impl std::fmt::Display for HelperCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.name, self.on.plain())
    }
}

/// Every helper CHECK on the partitions of `window`'s table: the bound CHECK on an attached
/// partition, an exclusion CHECK on DEFAULT. Read-only.
pub fn helper_checks(c: &mut dyn Reader, window: &Window) -> Result<Vec<HelperCheck>> {
    let rows = c
        .query(
            "SELECT n.nspname::text, r.relname::text, k.conname::text FROM pg_constraint k \
               JOIN pg_class r ON r.oid = k.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace \
              WHERE k.contype = 'c' AND k.conrelid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE level = 1) \
                AND (k.conname = $2 OR k.conname LIKE 'mcm\\_excludes\\_%') \
              ORDER BY 1, 2, 3",
            &[&window.table.to_string(), &BOUND_CHECK],
        )
        .map_err(|e| Error::db("reading helper checks left by an earlier run", e))?;
    Ok(rows
        .into_iter()
        .map(|r| HelperCheck {
            on: Relation::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            name: r.get(2),
        })
        .collect())
}

/// Steps dropping the helper CHECKs a killed or failed run left where no month of this plan
/// needs them (an exclusion CHECK on DEFAULT for a month not being created would, whatever its
/// state, refuse the application's inserts of that month).
pub(crate) fn leftovers(
    c: &mut dyn Reader,
    window: &Window,
    creating: &[String],
) -> Result<Vec<Step>> {
    let keep: Vec<String> = creating.iter().map(|m| exclusion_name(m)).collect();
    Ok(helper_checks(c, window)?
        .into_iter()
        .filter(|h| !keep.contains(&h.name))
        .map(|h| {
            let name = Ident::new(h.name);
            Step::with_statements(
                name.as_str(),
                &h.on,
                Action::DropChecks,
                vec![format!(
                    "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {name}",
                    h.on
                )],
                String::new(),
            )
            .claiming(
                vec![LockClaim::new(&h.on, LockMode::AccessExclusive)],
                "brief",
            )
        })
        .collect())
}
