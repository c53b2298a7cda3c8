//! Side-by-side benchmark of keeping the monthly window ahead, under writers inserting into the
//! current month and readers fetching one conversation's latest messages (a query that cannot
//! prune DEFAULT):
//!
//! 1. DEFAULT empty, every month from the window's end through the current one + 6 created
//!    for `messages` and `api_logs`: (a) `CREATE TABLE ... PARTITION OF`, one statement per
//!    month; (b) pg_partman's `run_maintenance_proc()` on an equivalent pair of tables it
//!    manages (`pm.messages`, `pm.api_logs`; it cannot take over ours, the output says why);
//!    (c) the runner's `partitions`.
//! 2. Rows of the next month already in DEFAULT (`--moves`, default 100000 and 1000000), with a
//!    third kind of writer inserting rows of that month (they land in DEFAULT until the month
//!    is attached) and a fourth running application transactions that read a conversation, or
//!    update it, and then write a message (the kinds a move's later locks deadlock with), in
//!    turn: (a) the runner; (b) the same statements with every lock waiting up to
//!    `--lock-timeout` instead of giving way; (c) the same statements with ACCESS EXCLUSIVE taken
//!    first, for the whole move; (d) pg_partman's `partition_data_time` on its tables. `CREATE
//!    TABLE ... PARTITION OF` cannot do it at all (23514), which the output shows once. "failed
//!    app transactions" counts those application transactions that failed (deadlock victims).
//!
//! Prints figures; asserts nothing.
//!
//!     cargo bench --bench partitions -- [--messages 1000000] [--moves 100000,1000000] [--repeat 3] [--keep] [--read-then-write on|off|both]
//!
//! (`--moves ''` runs the DEFAULT-empty comparison alone.)
//!
//! Each run is on a fresh copy of a template database (`CREATE DATABASE ... TEMPLATE`). The
//! approaches run `--repeat` times each, interleaved; rows show medians. The longest read wait
//! is, in practice, how long DEFAULT was held ACCESS EXCLUSIVE. Needs pg_partman 4.x installed
//! in the server (Debian's `postgresql-15-partman`); without it (b) is skipped. The server is
//! `BENCH_DATABASE_URL` or `TEST_DATABASE_URL` or the local one. Months are relative to today.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meta_chat_migrations::Settings;
mod common;

use common::{admin, db_url, median};
use postgres::{Client, NoTls};

const TENANTS: i64 = 1000;

/// Statements of the load that failed (for example an insert routed to DEFAULT just before an
/// ATTACH, which PostgreSQL refuses with 23514 rather than re-route), and the first error.
static LOAD_ERRORS: AtomicUsize = AtomicUsize::new(0);
/// Read-then-write application transactions that failed.
static APP_TX_FAILED: AtomicUsize = AtomicUsize::new(0);
static FIRST_LOAD_ERROR: Mutex<Option<String>> = Mutex::new(None);

fn load_error(e: postgres::Error) {
    LOAD_ERRORS.fetch_add(1, Ordering::Relaxed);
    let mut first = FIRST_LOAD_ERROR.lock().unwrap();
    if first.is_none() {
        *first = Some(e.as_db_error().map_or(e.to_string(), |d| {
            format!("{}: {}", d.code().code(), d.message())
        }));
    }
}
const CONVERSATIONS: i64 = 20000;

struct Args {
    messages: i64,
    moves: Vec<i64>,
    repeat: usize,
    keep: bool,
    /// Whether the moves run with read-then-write transactions, without, or both ways.
    read_then_write: Vec<bool>,
}

fn parse_args() -> Args {
    let mut args = Args {
        messages: 1_000_000,
        moves: vec![100_000, 1_000_000],
        repeat: 3,
        keep: false,
        read_then_write: vec![false, true],
    };
    let number = |s: &str| -> i64 { s.trim().replace('_', "").parse().expect("a number") };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--messages" => args.messages = number(&it.next().expect("--messages N")),
            "--moves" => {
                args.moves = it
                    .next()
                    .expect("--moves N[,N...]")
                    .split(',')
                    .filter(|n| !n.trim().is_empty())
                    .map(number)
                    .collect()
            }
            "--repeat" => args.repeat = number(&it.next().expect("--repeat N")) as usize,
            "--keep" => args.keep = true,
            "--read-then-write" => {
                args.read_then_write = match it.next().as_deref() {
                    Some("on") => vec![true],
                    Some("off") => vec![false],
                    Some("both") => vec![false, true],
                    _ => panic!("--read-then-write on|off|both"),
                }
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; see the module docs"),
        }
    }
    args
}

fn exists(name: &str) -> bool {
    admin()
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some()
}

fn drop_db(name: &str) {
    admin()
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
}

fn partman_available() -> bool {
    admin()
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman' AND default_version LIKE '4.%'",
            &[],
        )
        .unwrap()
        .is_some()
}

/// The database at the latest version with its window left at 2026-12, `n` messages and n/4
/// api_logs over 2024-01 .. the current month, and (with pg_partman) the same rows in `pm`.
fn template(n: i64, partman: bool) -> String {
    let name = format!("mcm_bench_parts_tpl_{n}");
    if exists(&name) {
        println!("# reusing template {name}");
        return name;
    }
    let started = Instant::now();
    let building = format!("{name}_building");
    drop_db(&building);
    admin()
        .batch_execute(&format!("CREATE DATABASE {building}"))
        .unwrap();
    let mut s = Settings::new(db_url(&building));
    s.skip_partitions = true;
    meta_chat_migrations::migrate(&s).expect("migrate the template");
    let mut c = Client::connect(&db_url(&building), NoTls).unwrap();
    c.batch_execute(&format!(
        "INSERT INTO tenants (id, name) SELECT 't' || g, 'tenant ' || g FROM generate_series(1, {TENANTS}) g;
         INSERT INTO conversations (id, \"tenantId\") SELECT 'c' || g, 't' || (1 + g % {TENANTS}) FROM generate_series(1, {CONVERSATIONS}) g;
         INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'm' || g, 't' || (1 + (1 + g % {CONVERSATIONS}) % {TENANTS}), 'c' || (1 + g % {CONVERSATIONS}), 'user',
                  'message body number ' || g || ' with some ordinary chat text in it',
                  timestamptz '2024-01-01 00:00+00' + (now() - timestamptz '2024-01-01 00:00+00') * (g::float8 / {n})
             FROM generate_series(1, {n}) g;
         INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
           SELECT 'l' || g, 't' || (1 + g % {TENANTS}), 'POST', '/v1/messages', 200, 5 + g % 100,
                  timestamptz '2024-01-01 00:00+00' + (now() - timestamptz '2024-01-01 00:00+00') * (g::float8 / ({n} / 4))
             FROM generate_series(1, {n} / 4) g;"
    ))
    .unwrap();
    if partman {
        partman_copy(&mut c);
    }
    c.batch_execute("VACUUM (FREEZE, ANALYZE)").unwrap();
    drop(c);
    admin()
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .unwrap();
    println!(
        "# seeded template {name} in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    name
}

/// `pm.messages` and `pm.api_logs`: the same columns, keys, indexes and rows as ours, managed by
/// pg_partman from 2024-01 through the month after the current one (like ours), DEFAULT empty.
fn partman_copy(c: &mut Client) {
    c.batch_execute(
        "CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman; CREATE SCHEMA pm;",
    )
    .unwrap();
    for (table, indexes) in [
        ("messages", "CREATE INDEX ON pm.messages (\"conversationId\", \"createdAt\"); CREATE INDEX ON pm.messages (\"tenantId\");"),
        ("api_logs", "CREATE INDEX ON pm.api_logs (\"tenantId\");"),
    ] {
        c.batch_execute(&format!(
            "CREATE TABLE pm.{table} (LIKE public.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (\"createdAt\");
             ALTER TABLE pm.{table} ADD PRIMARY KEY (id, \"createdAt\"); {indexes}"
        ))
        .unwrap();
        let keys: Vec<(String, String)> = c
            .query(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'f'",
                &[&format!("public.{table}")],
            )
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (name, def) in keys {
            c.batch_execute(&format!("ALTER TABLE pm.{table} ADD CONSTRAINT \"{name}\" {def}"))
                .unwrap();
        }
        c.batch_execute(&format!(
            "SELECT partman.create_parent('pm.{table}', 'createdAt', 'native', 'monthly', p_premake := 1, p_start_partition := '2024-01-01');
             INSERT INTO pm.{table} SELECT * FROM public.{table};"
        ))
        .unwrap();
    }
}

/// A copy of `tpl` whose DEFAULT partitions of `messages` (ours and pg_partman's) hold `rows`
/// rows of the month after the window's last.
fn move_template(tpl: &str, rows: i64, partman: bool) -> String {
    let name = format!("{tpl}_move_{rows}");
    if exists(&name) {
        return name;
    }
    let building = format!("{name}_building");
    drop_db(&building);
    admin()
        .batch_execute(&format!("CREATE DATABASE {building} TEMPLATE {tpl}"))
        .unwrap();
    let mut c = Client::connect(&db_url(&building), NoTls).unwrap();
    let mut sql = format!(
        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'late' || g, 't' || (1 + (1 + g % {CONVERSATIONS}) % {TENANTS}), 'c' || (1 + g % {CONVERSATIONS}), 'user',
                  'a message that arrived after the window ran out, number ' || g,
                  {NEXT} + (g % 2592000) * interval '1 second'
             FROM generate_series(1, {rows}) g;"
    );
    if partman {
        sql.push_str(&format!(
            "INSERT INTO pm.messages SELECT * FROM public.messages WHERE \"createdAt\" >= {NEXT} AND \"createdAt\" < {NEXT} + interval '1 month';"
        ));
    }
    c.batch_execute(&sql).unwrap();
    c.batch_execute("VACUUM (FREEZE, ANALYZE)").unwrap();
    drop(c);
    admin()
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .unwrap();
    name
}

/// The first month after the window the template's migration left: two months after today's.
const NEXT: &str =
    "(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months') AT TIME ZONE 'UTC'";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Inserts messages (and every fourth time an api_logs row) of the current month.
    Writer,
    /// Fetches one conversation's latest 50 messages.
    Reader,
    /// Inserts messages of the month whose rows sit in DEFAULT.
    LateWriter,
    /// In one transaction, reads a conversation's latest 50 messages, then adds one.
    ReadThenWrite,
}

impl Kind {
    fn app(self) -> &'static str {
        match self {
            Kind::Writer => "mcm-bench-writer",
            Kind::Reader => "mcm-bench-reader",
            Kind::LateWriter => "mcm-bench-late-writer",
            Kind::ReadThenWrite => "mcm-bench-read-then-write",
        }
    }
}

type Samples = Arc<Mutex<Vec<(Kind, Instant, Duration)>>>;

struct Load {
    stop: Arc<AtomicBool>,
    samples: Samples,
    waits: Arc<Mutex<Vec<(Instant, String, String)>>>,
    handles: Vec<thread::JoinHandle<()>>,
}

fn worker(
    url: String,
    schema: &'static str,
    kind: Kind,
    w: usize,
    stop: Arc<AtomicBool>,
    samples: Samples,
) {
    let mut c = Client::connect(&url, NoTls).unwrap();
    c.batch_execute(&format!("SET application_name = '{}'", kind.app()))
        .unwrap();
    let msg = c
        .prepare(&format!(
            "INSERT INTO {schema}.messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
             VALUES ($1, 't' || (1 + (1 + $2::int8 % {CONVERSATIONS}) % {TENANTS}), 'c' || (1 + $2::int8 % {CONVERSATIONS}), 'user', 'load', {})",
            if kind == Kind::LateWriter { format!("{NEXT} + interval '1 day'") } else { "now()".into() }
        ))
        .unwrap();
    let log = c
        .prepare(&format!(
            "INSERT INTO {schema}.api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
             VALUES ($1, 't' || (1 + $2::int8 % {TENANTS}), 'GET', '/load', 200, 1, now())"
        ))
        .unwrap();
    let read = c
        .prepare(&format!(
            "SELECT id, \"createdAt\" FROM {schema}.messages WHERE \"conversationId\" = 'c' || $1::int8 ORDER BY \"createdAt\" DESC LIMIT 50"
        ))
        .unwrap();
    // The conversations of pg_partman's tables are the platform's too.
    let touch = c
        .prepare("UPDATE public.conversations SET \"tenantId\" = \"tenantId\" WHERE id = 'c' || $1::int8")
        .unwrap();
    let mut local = Vec::with_capacity(100_000);
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let conv = fastrand::i64(1..=CONVERSATIONS);
        let started = Instant::now();
        let id = format!("{}-{w}-{i}", kind.app());
        let outcome = match kind {
            Kind::ReadThenWrite => {
                let first = if i % 2 == 0 { &read } else { &touch };
                first_then_insert(&mut c, first, &msg, &id, conv)
            }
            Kind::Reader => c.query(&read, &[&conv]).map(drop),
            Kind::Writer if i % 4 == 0 => c.execute(&log, &[&id, &conv]).map(drop),
            _ => c.execute(&msg, &[&id, &conv]).map(drop),
        };
        if let Err(e) = outcome {
            if kind == Kind::ReadThenWrite {
                APP_TX_FAILED.fetch_add(1, Ordering::Relaxed);
            }
            load_error(e);
        }
        local.push((kind, started, started.elapsed()));
        if kind != Kind::Writer {
            thread::sleep(Duration::from_millis(5));
        }
    }
    samples.lock().unwrap().extend(local);
}

/// One application transaction: `first` (a read of the conversation's latest messages, or an
/// update of the conversation), then a message inserted.
fn first_then_insert(
    c: &mut Client,
    first: &postgres::Statement,
    msg: &postgres::Statement,
    id: &str,
    conv: i64,
) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.query(first, &[&conv])?;
    tx.execute(msg, &[&id, &conv])?;
    tx.commit()
}

/// Samples, every 4 ms, which load sessions wait for a lock and what the blocking sessions run.
fn watch_waits(
    url: &str,
    stop: Arc<AtomicBool>,
    waits: Arc<Mutex<Vec<(Instant, String, String)>>>,
) -> thread::JoinHandle<()> {
    let url = url.to_string();
    thread::spawn(move || {
        let mut c = Client::connect(&url, NoTls).unwrap();
        let q = c
            .prepare(
                "SELECT a.application_name, coalesce((SELECT string_agg(left(regexp_replace(b.query, '\\s+', ' ', 'g'), 90), ' | ')
                                    FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))), a.wait_event)
                   FROM pg_stat_activity a WHERE a.application_name LIKE 'mcm-bench-%' AND a.wait_event_type = 'Lock'",
            )
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if let Ok(rows) = c.query(&q, &[]) {
                let mut w = waits.lock().unwrap();
                w.extend(
                    rows.into_iter()
                        .map(|r| (now, r.get::<_, String>(0), r.get::<_, String>(1))),
                );
            }
            thread::sleep(Duration::from_millis(4));
        }
    })
}

/// Whether the load of the next runs includes read-then-write transactions.
static READ_THEN_WRITE: AtomicBool = AtomicBool::new(false);

fn start_load(url: &str, schema: &'static str, late: bool) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let waits = Arc::default();
    let mut kinds = vec![Kind::Writer, Kind::Writer, Kind::Reader, Kind::Reader];
    if late {
        kinds.push(Kind::LateWriter);
    }
    if late && READ_THEN_WRITE.load(Ordering::Relaxed) {
        kinds.push(Kind::ReadThenWrite);
    }
    let mut handles: Vec<thread::JoinHandle<()>> = kinds
        .into_iter()
        .enumerate()
        .map(|(w, kind)| {
            let (url, stop, samples) = (url.to_string(), stop.clone(), samples.clone());
            thread::spawn(move || worker(url, schema, kind, w, stop, samples))
        })
        .collect();
    handles.push(watch_waits(url, stop.clone(), Arc::clone(&waits)));
    Load {
        stop,
        samples,
        waits,
        handles,
    }
}

#[derive(Clone, Default)]
struct Figures {
    wall: Duration,
    /// Longest statement of each kind during the work.
    write: Duration,
    read: Duration,
    late: Duration,
    reads: usize,
    /// What blocked the longest read, from the wait samples.
    cause: String,
    failed: Option<String>,
    /// Statements of the load that failed during the run.
    load_errors: usize,
    /// Read-then-write transactions that failed during the run.
    app_tx_failed: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One run of `work` on a fresh copy of `tpl`, under load on `schema`'s tables.
fn one_run(
    tpl: &str,
    schema: &'static str,
    late: bool,
    work: &dyn Fn(&str) -> Result<(), String>,
) -> Figures {
    let name = "mcm_bench_parts_run";
    drop_db(name);
    let mut a = admin();
    a.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {tpl}"))
        .unwrap();
    a.batch_execute("CHECKPOINT").unwrap();
    let url = db_url(name);
    let load = start_load(&url, schema, late);
    thread::sleep(Duration::from_millis(500));
    LOAD_ERRORS.store(0, Ordering::Relaxed);
    APP_TX_FAILED.store(0, Ordering::Relaxed);
    let t0 = Instant::now();
    let outcome = work(&url);
    let wall = t0.elapsed();
    let t1 = Instant::now();
    thread::sleep(Duration::from_millis(300));
    load.stop.store(true, Ordering::Relaxed);
    for h in load.handles {
        h.join().unwrap();
    }
    let samples = load.samples.lock().unwrap();
    let longest = |k: Kind| {
        samples
            .iter()
            .filter(|(kind, s, _)| *kind == k && *s >= t0 && *s <= t1)
            .max_by_key(|(_, _, d)| *d)
            .map(|(_, s, d)| (*s, *d))
    };
    let read = longest(Kind::Reader);
    let f = Figures {
        wall,
        write: longest(Kind::Writer).map(|l| l.1).unwrap_or_default(),
        read: read.map(|l| l.1).unwrap_or_default(),
        late: longest(Kind::LateWriter).map(|l| l.1).unwrap_or_default(),
        reads: samples
            .iter()
            .filter(|(k, s, _)| *k == Kind::Reader && *s >= t0 && *s <= t1)
            .count(),
        cause: cause_of(read, Kind::Reader.app(), &load.waits.lock().unwrap()),
        failed: outcome.err(),
        load_errors: LOAD_ERRORS.swap(0, Ordering::Relaxed),
        app_tx_failed: APP_TX_FAILED.swap(0, Ordering::Relaxed),
    };
    drop_db(name);
    f
}

fn cause_of(
    longest: Option<(Instant, Duration)>,
    app: &str,
    waits: &[(Instant, String, String)],
) -> String {
    let Some((start, took)) = longest else {
        return "no read".into();
    };
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (_, _, what) in waits
        .iter()
        .filter(|(at, a, _)| a == app && *at >= start && *at <= start + took)
    {
        match seen.iter_mut().find(|(w, _)| w == what) {
            Some((_, n)) => *n += 1,
            None => seen.push((what.clone(), 1)),
        }
    }
    if seen.is_empty() {
        return "no lock wait seen".into();
    }
    seen.sort_by_key(|s| std::cmp::Reverse(s.1));
    seen.iter()
        .take(2)
        .map(|(w, n)| format!("`{w}` ({n} samples)"))
        .collect::<Vec<_>>()
        .join("; ")
}

type Work = Box<dyn Fn(&str) -> Result<(), String>>;

/// An approach: label, the schema its load targets, and the work.
struct Approach {
    label: String,
    schema: &'static str,
    work: Work,
}

fn compare(tpl: &str, rows: i64, late: bool, repeat: usize, approaches: &[Approach]) {
    println!(
        "| rows in DEFAULT | approach                       | wall (s) | longest read (ms) | longest insert (ms) | longest insert into DEFAULT's month (ms) | reads | failed statements (all runs) | failed app transactions (all runs) | longest read of each run (ms) |"
    );
    println!("|----------------:|--------------------------------|---------:|------------------:|--------------------:|-----------------------------------------:|------:|-----------------------------:|-----------------------------------:|-------------------------------|");
    let mut runs: Vec<Vec<Figures>> = approaches.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeat.max(1) {
        for (i, a) in approaches.iter().enumerate() {
            runs[i].push(one_run(tpl, a.schema, late, &*a.work));
        }
    }
    for (a, r) in approaches.iter().zip(&runs) {
        let m = |f: fn(&Figures) -> Duration| median(r.iter().map(f).collect());
        let reads = {
            let mut v: Vec<usize> = r.iter().map(|f| f.reads).collect();
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "| {rows:>15} | {:<30} | {:>8.2} | {:>17.1} | {:>19.1} | {:>40} | {reads:>5} | {:>28} | {:>34} | {} |",
            a.label,
            m(|f| f.wall).as_secs_f64(),
            ms(m(|f| f.read)),
            ms(m(|f| f.write)),
            if late {
                format!("{:.1}", ms(m(|f| f.late)))
            } else {
                "-".into()
            },
            r.iter().map(|f| f.load_errors).sum::<usize>(),
            if late {
                r.iter().map(|f| f.app_tx_failed).sum::<usize>().to_string()
            } else {
                "-".into()
            },
            r.iter()
                .map(|f| format!("{:.1}", ms(f.read)))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    if let Some(e) = FIRST_LOAD_ERROR.lock().unwrap().take() {
        println!("#   first failed statement of the load: {e}");
    }
    for (a, r) in approaches.iter().zip(&runs) {
        for (i, f) in r.iter().enumerate() {
            match &f.failed {
                Some(e) => println!("#   {}, run {}: FAILED: {e}", a.label, i + 1),
                None => println!(
                    "#   {}, run {}: longest read {:.1} ms, blocked by {}",
                    a.label,
                    i + 1,
                    ms(f.read),
                    f.cause
                ),
            }
        }
    }
}

fn settings(url: &str) -> Settings {
    let mut s = Settings::new(url);
    s.max_moved_rows = u64::MAX;
    s
}

/// (a): `CREATE TABLE ... PARTITION OF` for each month the runner would create.
fn partition_of(url: &str) -> Result<(), String> {
    let plan = meta_chat_migrations::partitions::plan(&settings(url)).map_err(|e| e.to_string())?;
    let mut c = Client::connect(url, NoTls).map_err(|e| e.to_string())?;
    for m in &plan.months {
        c.batch_execute(&format!(
            "CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('{}') TO ('{}')",
            m.partition, m.table, m.from, m.to
        ))
        .map_err(|e| format!("{}: {}", m.partition.plain(), db_error(&e)))?;
    }
    Ok(())
}

fn db_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// (b): pg_partman's maintenance, 6 months ahead, one transaction per parent.
fn partman_maintenance(url: &str) -> Result<(), String> {
    let mut c = Client::connect(url, NoTls).map_err(|e| e.to_string())?;
    c.batch_execute("UPDATE partman.part_config SET premake = 6 WHERE parent_table LIKE 'pm.%'")
        .map_err(|e| db_error(&e))?;
    // A statement of its own: the procedure commits per parent, which it cannot do inside the
    // implicit transaction of a multi-statement query (2D000).
    c.batch_execute("CALL partman.run_maintenance_proc()")
        .map_err(|e| db_error(&e))
}

/// (c): the runner.
fn runner(url: &str) -> Result<(), String> {
    meta_chat_migrations::partitions::run(&settings(url))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// (c) of the move: the runner's statements with ACCESS EXCLUSIVE taken first (its form after a
/// deadlock), for the whole move.
fn exclusive_move(url: &str) -> Result<(), String> {
    let plan = meta_chat_migrations::partitions::plan(&settings(url)).map_err(|e| e.to_string())?;
    let mut c = Client::connect(url, NoTls).map_err(|e| e.to_string())?;
    for s in plan.months.iter().flat_map(|m| &m.steps) {
        let mut tx = c.transaction().map_err(|e| db_error(&e))?;
        for st in s.on_deadlock.as_ref().unwrap_or(&s.statements) {
            tx.batch_execute(&st.sql)
                .map_err(|e| format!("{}: {}", s.id.as_str(), db_error(&e)))?;
        }
        tx.commit().map_err(|e| db_error(&e))?;
    }
    Ok(())
}

/// (b) of the move: the runner's statements with every lock waiting up to `--lock-timeout` (2 s)
/// instead of giving way after 100 ms to a transaction it would deadlock with.
fn plain_upgrade_move(url: &str) -> Result<(), String> {
    let plan = meta_chat_migrations::partitions::plan(&settings(url)).map_err(|e| e.to_string())?;
    let mut c = Client::connect(url, NoTls).map_err(|e| e.to_string())?;
    for m in &plan.months {
        for s in &m.steps {
            let mut tx = c.transaction().map_err(|e| db_error(&e))?;
            tx.batch_execute("SET LOCAL lock_timeout = '2s'")
                .map_err(|e| db_error(&e))?;
            for st in &s.statements {
                tx.batch_execute(&st.sql)
                    .map_err(|e| format!("{}: {}", s.id.as_str(), db_error(&e)))?;
            }
            tx.commit().map_err(|e| db_error(&e))?;
        }
    }
    Ok(())
}

/// (d) of the move: pg_partman moves the rows out of its DEFAULT (one month, one batch).
fn partman_move(url: &str) -> Result<(), String> {
    let mut c = Client::connect(url, NoTls).map_err(|e| e.to_string())?;
    c.batch_execute("SELECT partman.partition_data_time('pm.messages', p_batch_count := 1)")
        .map_err(|e| db_error(&e))
}

/// Why pg_partman cannot manage our tables as they are, shown on a copy.
fn partman_on_ours(tpl: &str) {
    let name = "mcm_bench_parts_probe";
    drop_db(name);
    admin()
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {tpl}"))
        .unwrap();
    let mut c = Client::connect(&db_url(name), NoTls).unwrap();
    let outcome = c.batch_execute(
        "SELECT partman.create_parent('public.messages', 'createdAt', 'native', 'monthly', p_premake := 6)",
    );
    println!(
        "# pg_partman 4.x on our messages: create_parent {}; it names children messages_pYYYY_MM, so it would not see messages_YYYY_MM either",
        match outcome {
            Ok(()) => "succeeded".into(),
            Err(e) => format!("fails: {}", db_error(&e)),
        }
    );
    drop(c);
    drop_db(name);
}

fn main() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let args = parse_args();
    let partman = partman_available();
    println!(
        "# 2 writers into the current month, 2 readers of one conversation's latest 50 messages (moves add a writer of DEFAULT's month and a client of read-then-write and update-then-insert transactions); {} run(s) of each approach, interleaved; medians",
        args.repeat
    );
    if !partman {
        println!("# pg_partman 4.x is not installed in this server: its approaches are skipped");
    }
    let tpl = template(args.messages, partman);
    if partman {
        partman_on_ours(&tpl);
    }
    let mut approaches = vec![Approach {
        label: "CREATE TABLE ... PARTITION OF".into(),
        schema: "public",
        work: Box::new(partition_of),
    }];
    if partman {
        approaches.push(Approach {
            label: "pg_partman run_maintenance".into(),
            schema: "pm",
            work: Box::new(partman_maintenance),
        });
    }
    approaches.push(Approach {
        label: "runner partitions".into(),
        schema: "public",
        work: Box::new(runner),
    });
    println!("# DEFAULT empty: every month through the current one + 6, both tables");
    compare(&tpl, 0, false, args.repeat, &approaches);
    for (&rows, &rw) in args
        .moves
        .iter()
        .flat_map(|r| args.read_then_write.iter().map(move |w| (r, w)))
    {
        READ_THEN_WRITE.store(rw, Ordering::Relaxed);
        let moving = move_template(&tpl, rows, partman);
        println!(
            "# {rows} rows of one month in messages' DEFAULT; a third writer inserts rows of that month{}",
            if rw { "; a fourth client runs read-then-write and update-then-insert transactions" } else { "; no read-then-write transactions" }
        );
        let once = one_run(&moving, "public", true, &partition_of);
        println!(
            "# CREATE TABLE ... PARTITION OF: {}",
            once.failed.as_deref().unwrap_or("succeeded")
        );
        let mut approaches = vec![
            Approach {
                label: "runner partitions".into(),
                schema: "public",
                work: Box::new(runner),
            },
            Approach {
                label: "the same, every lock waiting up to --lock-timeout".into(),
                schema: "public",
                work: Box::new(plain_upgrade_move),
            },
            Approach {
                label: "same, ACCESS EXCLUSIVE move".into(),
                schema: "public",
                work: Box::new(exclusive_move),
            },
        ];
        if partman {
            approaches.push(Approach {
                label: "pg_partman partition_data_time".into(),
                schema: "pm",
                work: Box::new(partman_move),
            });
        }
        compare(&moving, rows, true, args.repeat, &approaches);
        if !args.keep && (rw || !args.read_then_write.contains(&true)) {
            drop_db(&moving);
        }
    }
    if !args.keep {
        drop_db(&tpl);
    }
}
