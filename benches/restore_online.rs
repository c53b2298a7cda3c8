//! Side-by-side benchmark of the online engine under a continuous insert load:
//!
//! 1. restoring both tenant keys and their indexes on a database at 20240520120000: (a) the
//!    spec's SQL as written (plus the same api_logs index), (b) the runner with each `--jobs`
//!    given (default: the default `--jobs`);
//! 2. the tenant-consistency version alone, from a copy at 20251121000003: (a) its generated
//!    blocking SQL, (b) the runner.
//!
//! Prints figures; asserts nothing.
//!
//!     cargo bench --bench restore_online -- [--sizes 3000000,12000000] [--writers 2] [--repeat 3] [--jobs 2] [--keep]
//!
//! Each size is seeded once into a template database (N messages over 33 monthly partitions,
//! N/4 api_logs, VACUUM FREEZE so no run pays for hint bits), and every run is on a fresh copy
//! of it (`CREATE DATABASE ... TEMPLATE`). The approaches run `--repeat` times each,
//! interleaved, and each row shows medians. While they run, a monitor samples which writers wait
//! for a lock and what the blocking sessions run; the longest insert of each run is printed
//! with what blocked it. The server is `BENCH_DATABASE_URL` or `TEST_DATABASE_URL` or the local
//! one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meta_chat_migrations::{embedded, Settings};
mod common;

use common::{admin, db_url, median};
use postgres::{Client, NoTls};

const TENANTS: i64 = 1000;
const CONVERSATIONS: i64 = 20000;
/// Days over which rows are spread: 2024-01-01 .. 2026-09, 33 monthly partitions.
const DAYS: i64 = 1000;

const SPEC_SQL: &str = r#"
ALTER TABLE messages ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY ("tenantId") REFERENCES tenants(id) ON DELETE CASCADE;
CREATE INDEX messages_tenant_id_idx ON messages ("tenantId");
ALTER TABLE api_logs ADD CONSTRAINT api_logs_tenant_id_fkey FOREIGN KEY ("tenantId") REFERENCES tenants(id) ON DELETE SET NULL;
CREATE INDEX api_logs_tenant_id_idx ON api_logs ("tenantId");
"#;

struct Args {
    sizes: Vec<i64>,
    writers: usize,
    repeat: usize,
    keep: bool,
    jobs: Vec<usize>,
    /// Another build of meta-chat-migrate to run side by side (`--compare-bin PATH`).
    compare_bin: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![3_000_000, 12_000_000],
        writers: 2,
        repeat: 3,
        keep: false,
        jobs: vec![meta_chat_migrations::config::DEFAULT_JOBS],
        compare_bin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                args.sizes = it
                    .next()
                    .expect("--sizes N[,N...]")
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .replace('_', "")
                            .parse()
                            .expect("a number of messages")
                    })
                    .collect()
            }
            "--writers" => {
                args.writers = it.next().expect("--writers N").parse().expect("a number")
            }
            "--repeat" => args.repeat = it.next().expect("--repeat N").parse().expect("a number"),
            "--keep" => args.keep = true,
            "--compare-bin" => args.compare_bin = it.next(),
            "--jobs" => {
                args.jobs = it
                    .next()
                    .expect("--jobs N[,N...]")
                    .split(',')
                    .map(|s| s.trim().parse().expect("a number of jobs"))
                    .collect()
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; see the module docs"),
        }
    }
    args
}

fn template(n: i64) -> String {
    let name = format!("mcm_bench_tpl_{n}");
    let mut admin = admin();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some();
    if exists {
        println!("# reusing template {name}");
        return name;
    }
    let started = Instant::now();
    let building = format!("{name}_building");
    for sql in [
        format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
        format!("CREATE DATABASE {building}"),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    let mut s = Settings::new(db_url(&building));
    s.target = Some(embedded::PARTITIONED);
    meta_chat_migrations::migrate(&s).expect("migrate the template");
    let mut c = Client::connect(&db_url(&building), NoTls).unwrap();
    c.batch_execute(&format!(
        "INSERT INTO tenants (id, name) SELECT 't' || g, 'tenant ' || g FROM generate_series(1, {TENANTS}) g;
         INSERT INTO conversations (id, \"tenantId\") SELECT 'c' || g, 't' || (1 + g % {TENANTS}) FROM generate_series(1, {CONVERSATIONS}) g;"
    ))
    .unwrap();
    // Two connections seed halves of the rows at once.
    let halves: Vec<_> = [(1, n / 2), (n / 2 + 1, n)]
        .into_iter()
        .map(|(from, to)| {
            let url = db_url(&building);
            thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
                c.batch_execute(&format!(
                    "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
                       SELECT 'm' || g, 't' || (1 + (1 + g % {CONVERSATIONS}) % {TENANTS}), 'c' || (1 + g % {CONVERSATIONS}),
                              CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
                              'message body number ' || g || ' with some ordinary chat text in it',
                              timestamptz '2024-01-01 00:00+00' + (g % {DAYS}) * interval '1 day' + (g % 86400) * interval '1 second'
                         FROM generate_series({from}, {to}) g;
                     INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
                       SELECT 'l' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE 't' || (1 + g % {TENANTS}) END,
                              'POST', '/v1/conversations/messages', 200, 5 + g % 100,
                              timestamptz '2024-01-01 00:00+00' + (g % {DAYS}) * interval '1 day' + (g % 86400) * interval '1 second'
                         FROM generate_series(({from} + 3) / 4, {to} / 4) g;"
                ))
                .unwrap();
            })
        })
        .collect();
    for h in halves {
        h.join().unwrap();
    }
    c.batch_execute("VACUUM (FREEZE, ANALYZE)").unwrap();
    drop(c);
    admin
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .unwrap();
    println!(
        "# seeded template {name} in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    name
}

struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    /// What a waiting writer waited for, sampled every few milliseconds: when, and the blocking
    /// sessions' queries.
    waits: Arc<Mutex<Vec<(Instant, String)>>>,
    handles: Vec<thread::JoinHandle<()>>,
}

const WRITER: &str = "mcm-bench-writer";

/// Samples, every 3 ms, which writers wait for a lock and what the sessions blocking them run.
fn watch_waits(
    url: &str,
    stop: Arc<AtomicBool>,
    waits: Arc<Mutex<Vec<(Instant, String)>>>,
) -> thread::JoinHandle<()> {
    let url = url.to_string();
    thread::spawn(move || {
        let mut c = Client::connect(&url, NoTls).unwrap();
        let q = c
            .prepare(&format!(
                "SELECT coalesce((SELECT string_agg(left(regexp_replace(b.query, '\\s+', ' ', 'g'), 110), ' | ')
                                    FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))), a.wait_event)
                   FROM pg_stat_activity a WHERE a.application_name = '{WRITER}' AND a.wait_event_type = 'Lock'"
            ))
            .unwrap();
        // A cheap probe first; the blockers' queries only while a writer waits.
        let probe = c
            .prepare(&format!(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = '{WRITER}' AND wait_event_type = 'Lock' LIMIT 1"
            ))
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if c.query(&probe, &[]).is_ok_and(|r| !r.is_empty()) {
                if let Ok(rows) = c.query(&q, &[]) {
                    let mut w = waits.lock().unwrap();
                    w.extend(rows.into_iter().map(|r| (now, r.get::<_, String>(0))));
                }
            }
            thread::sleep(Duration::from_millis(4));
        }
    })
}

/// `writers` connections inserting messages (and every fourth time an api_logs row) into
/// random months, one autocommit statement at a time, recording when each started and how long
/// it took.
fn start_load(url: &str, writers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let waits: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut handles: Vec<thread::JoinHandle<()>> = (0..writers)
        .map(|w| {
            let (url, stop, samples) = (url.to_string(), stop.clone(), samples.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
                c.batch_execute(&format!("SET application_name = '{WRITER}'")).unwrap();
                let msg = c
                    .prepare(
                        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
                         VALUES ($1, 't' || (1 + $2::int8 % 1000), 'c' || $2::int8, 'user', 'load', timestamptz '2024-01-01 00:00+00' + $3::int8 * interval '1 minute')",
                    )
                    .unwrap();
                let log = c
                    .prepare(
                        "INSERT INTO api_logs (id, \"tenantId\", method, path, status, duration, \"createdAt\")
                         VALUES ($1, 't' || (1 + $2::int8 % 1000), 'GET', '/load', 200, 1, timestamptz '2024-01-01 00:00+00' + $3::int8 * interval '1 minute')",
                    )
                    .unwrap();
                let mut local = Vec::with_capacity(100_000);
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let conv = fastrand::i64(1..=CONVERSATIONS);
                    let minute = fastrand::i64(0..DAYS * 1440);
                    let started = Instant::now();
                    if i % 4 == 0 {
                        c.execute(&log, &[&format!("load-{w}-{i}"), &conv, &minute]).unwrap();
                    } else {
                        c.execute(&msg, &[&format!("load-{w}-{i}"), &conv, &minute]).unwrap();
                    }
                    local.push((started, started.elapsed()));
                }
                samples.lock().unwrap().extend(local);
            })
        })
        .collect();
    handles.push(watch_waits(url, stop.clone(), waits.clone()));
    Load {
        stop,
        samples,
        waits,
        handles,
    }
}

struct Figures {
    wall: Duration,
    max_wait: Duration,
    p99: Duration,
    inserts: usize,
    /// What blocked the longest insert (from the wait samples), if a lock did.
    cause: String,
}

/// A labelled way of doing the work, given the URL of a fresh copy.
type Approach = (String, Box<dyn Fn(&str)>);

/// Prints the medians of `runs` of one approach, and what blocked each run's longest insert.
fn summarize(n: i64, label: &str, runs: &[Figures]) -> Figures {
    let f = Figures {
        wall: median(runs.iter().map(|r| r.wall).collect()),
        max_wait: median(runs.iter().map(|r| r.max_wait).collect()),
        p99: median(runs.iter().map(|r| r.p99).collect()),
        inserts: median(runs.iter().map(|r| r.inserts).collect()),
        cause: String::new(),
    };
    let all_max: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.1}", r.max_wait.as_secs_f64() * 1000.0))
        .collect();
    let all_wall: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2}", r.wall.as_secs_f64()))
        .collect();
    println!(
        "| {n:>10} | {label:<24} | {:>8.2} | {:>13.1} | {:>8.2} | {:>8} | {} | {} |",
        f.wall.as_secs_f64(),
        f.max_wait.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
        f.inserts,
        all_wall.join(" / "),
        all_max.join(" / ")
    );
    f
}

/// Runs every approach `repeat` times, interleaved (so that a noisy stretch of the machine
/// hits them alike), on fresh copies of `tpl`, and prints one row of medians per approach and
/// then what blocked each run's longest insert.
fn compare(n: i64, tpl: &str, args: &Args, approaches: &[Approach]) -> Vec<Figures> {
    println!(
        "| messages   | approach                 | wall (s) | max wait (ms) | p99 (ms) | inserts  | wall of each run (s) | max wait of each run (ms) |"
    );
    println!(
        "|-----------:|--------------------------|---------:|--------------:|---------:|---------:|----------------------|---------------------------|"
    );
    let mut runs: Vec<Vec<Figures>> = approaches.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.repeat.max(1) {
        for (i, (_, restore)) in approaches.iter().enumerate() {
            runs[i].push(one_run(n, tpl, args.writers, restore));
        }
    }
    let medians: Vec<Figures> = approaches
        .iter()
        .zip(&runs)
        .map(|((label, _), r)| summarize(n, label, r))
        .collect();
    for ((label, _), r) in approaches.iter().zip(&runs) {
        for (i, f) in r.iter().enumerate() {
            println!(
                "#   {label}, run {}: longest insert {:.1} ms, {}",
                i + 1,
                f.max_wait.as_secs_f64() * 1000.0,
                f.cause
            );
        }
    }
    medians
}

fn one_run(n: i64, tpl: &str, writers: usize, restore: &dyn Fn(&str)) -> Figures {
    let name = format!("mcm_bench_run_{n}");
    let mut admin = admin();
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name} TEMPLATE {tpl}"),
        "CHECKPOINT".to_string(),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    let url = db_url(&name);
    let load = start_load(&url, writers);
    thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    restore(&url);
    let wall = t0.elapsed();
    let t1 = Instant::now();
    thread::sleep(Duration::from_millis(200));
    load.stop.store(true, Ordering::Relaxed);
    for h in load.handles {
        h.join().unwrap();
    }
    let samples = load.samples.lock().unwrap();
    let in_run: Vec<(Instant, Duration)> = samples
        .iter()
        .filter(|(s, _)| *s >= t0 && *s <= t1)
        .copied()
        .collect();
    let mut during: Vec<Duration> = in_run.iter().map(|(_, d)| *d).collect();
    during.sort();
    let p99 = during
        .get(during.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    let longest = in_run.iter().max_by_key(|(_, d)| *d).copied();
    let f = Figures {
        wall,
        max_wait: during.last().copied().unwrap_or_default(),
        p99,
        inserts: during.len(),
        cause: cause_of(longest, &load.waits.lock().unwrap()),
    };
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    f
}

/// What the sampled waits say blocked the insert `longest` (start, duration).
fn cause_of(longest: Option<(Instant, Duration)>, waits: &[(Instant, String)]) -> String {
    let Some((start, took)) = longest else {
        return "no insert".into();
    };
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (at, what) in waits
        .iter()
        .filter(|(at, _)| *at >= start && *at <= start + took)
    {
        let _ = at;
        match seen.iter_mut().find(|(w, _)| w == what) {
            Some((_, n)) => *n += 1,
            None => seen.push((what.clone(), 1)),
        }
    }
    if seen.is_empty() {
        return "no lock wait seen (CPU, I/O or the server's own work)".into();
    }
    seen.sort_by_key(|s| std::cmp::Reverse(s.1));
    seen.iter()
        .map(|(w, n)| format!("blocked by `{w}` ({n} samples)"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn spec_sql(url: &str) {
    let mut c = Client::connect(url, NoTls).unwrap();
    c.batch_execute(SPEC_SQL).expect("the spec's SQL");
}

fn runner(jobs: usize, target: i64) -> impl Fn(&str) {
    move |url: &str| {
        let mut s = Settings::new(url);
        s.jobs = jobs;
        s.target = Some(target);
        meta_chat_migrations::migrate(&s).expect("the runner");
    }
}

/// Another build of the runner, as a command: `migrate --target 20251121000003`.
fn other_build(bin: &str, url: &str) {
    let out = std::process::Command::new(bin)
        .args([
            "--database-url",
            url,
            "migrate",
            "--target",
            "20251121000003",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run --compare-bin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What 20251121000004 does when applied without the runner: its generated, blocking SQL.
fn consistency_sql(url: &str) {
    let mut c = Client::connect(url, NoTls).unwrap();
    c.batch_execute(&meta_chat_migrations::engine::ops::fallback_sql(
        &embedded::tenant_consistent_messages::DECLARATION,
    ))
    .expect("the blocking SQL");
}

/// A copy of `tpl` at 20251121000003 (the tenant keys restored by the runner, without load),
/// for comparing the tenant-consistency version alone.
fn template_at_03(tpl: &str) -> String {
    let name = format!("{tpl}_at_03");
    let mut admin = admin();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{name}_building");
        for sql in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building} TEMPLATE {tpl}"),
        ] {
            admin.batch_execute(&sql).unwrap();
        }
        let mut s = Settings::new(db_url(&building));
        s.target = Some(embedded::RESTORE_API_LOGS_TENANT_FK);
        meta_chat_migrations::migrate(&s).expect("migrate the template to 20251121000003");
        Client::connect(&db_url(&building), NoTls)
            .unwrap()
            .batch_execute("VACUUM (FREEZE, ANALYZE)")
            .unwrap();
        admin
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .unwrap();
    }
    name
}

fn ratios(n: i64, what: &str, spec: &Figures, others: &[(String, &Figures)]) {
    for (label, b) in others {
        println!(
            "# {n} messages, {what}: {label} / blocking SQL: wall {:.2}x, max wait {:.3}x, inserts {:.2}x",
            b.wall.as_secs_f64() / spec.wall.as_secs_f64(),
            b.max_wait.as_secs_f64() / spec.max_wait.as_secs_f64(),
            b.inserts as f64 / spec.inserts.max(1) as f64
        );
    }
}

fn main() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let args = parse_args();
    println!(
        "# restores under {} concurrent writers, {} run(s) of each approach, interleaved; medians",
        args.writers, args.repeat
    );
    for &n in &args.sizes {
        let tpl = template(n);
        println!("# both tenant keys and their indexes (20251121000002 and 20251121000003)");
        let mut approaches: Vec<Approach> = vec![("spec SQL".into(), Box::new(spec_sql))];
        for &j in &args.jobs {
            approaches.push((
                format!("runner --jobs {j}"),
                Box::new(runner(j, embedded::RESTORE_API_LOGS_TENANT_FK)),
            ));
        }
        if let Some(bin) = args.compare_bin.clone() {
            approaches.push((
                "--compare-bin".into(),
                Box::new(move |url: &str| other_build(&bin, url)),
            ));
        }
        let figures = compare(n, &tpl, &args, &approaches);
        let others: Vec<(String, &Figures)> = approaches
            .iter()
            .skip(1)
            .map(|(l, _)| l.clone())
            .zip(figures.iter().skip(1))
            .collect();
        ratios(n, "tenant keys", &figures[0], &others);

        println!("# tenant consistency (20251121000004), from a copy at 20251121000003");
        let at_03 = template_at_03(&tpl);
        let approaches: Vec<Approach> = vec![
            ("its blocking SQL".into(), Box::new(consistency_sql)),
            (
                format!(
                    "runner --jobs {}",
                    meta_chat_migrations::config::DEFAULT_JOBS
                ),
                Box::new(runner(
                    meta_chat_migrations::config::DEFAULT_JOBS,
                    embedded::TENANT_CONSISTENT_MESSAGES,
                )),
            ),
        ];
        let figures = compare(n, &at_03, &args, &approaches);
        ratios(
            n,
            "tenant consistency",
            &figures[0],
            &[(approaches[1].0.clone(), &figures[1])],
        );
        if !args.keep {
            for db in [&at_03, &tpl] {
                admin()
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .unwrap();
            }
        }
    }
}
