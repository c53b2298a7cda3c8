//! Side-by-side benchmark of restoring the tenant constraints on a database at 20240520120000,
//! under a continuous insert load: (a) the spec's SQL as written (plus the same api_logs index)
//! and (b) the runner's online restore, with --jobs 1 and --jobs 2. Prints figures; asserts
//! nothing.
//!
//!     cargo bench --bench restore_online -- [--sizes 3000000,12000000] [--writers 2] [--repeat 3] [--keep]
//!
//! Each size is seeded once into a template database (N messages over 33 monthly partitions,
//! N/4 api_logs, VACUUM FREEZE so no run pays for hint bits), and every approach runs on a fresh
//! copy of it (`CREATE DATABASE ... TEMPLATE`), `--repeat` times; the figures printed per
//! approach are the medians of the repeats, since a maximum of a single run is noisy. The server is `BENCH_DATABASE_URL` or
//! `TEST_DATABASE_URL` or the local one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meta_chat_migrations::{embedded, Settings};
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
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![3_000_000, 12_000_000],
        writers: 2,
        repeat: 3,
        keep: false,
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
            "--bench" => {}
            other => panic!("unknown argument {other}; see the module docs"),
        }
    }
    args
}

fn server_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url(name: &str) -> String {
    let base = server_url();
    let cut = base.rfind('/').expect("a URL with a database");
    format!("{}/{name}", &base[..cut])
}

fn admin() -> Client {
    Client::connect(&server_url(), NoTls).expect("connect to the benchmark server")
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
    handles: Vec<thread::JoinHandle<()>>,
}

/// `writers` connections inserting messages (and every fourth time an api_logs row) into
/// random months, one autocommit statement at a time, recording when each started and how long
/// it took.
fn start_load(url: &str, writers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let handles = (0..writers)
        .map(|w| {
            let (url, stop, samples) = (url.to_string(), stop.clone(), samples.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
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
    Load {
        stop,
        samples,
        handles,
    }
}

struct Figures {
    wall: Duration,
    max_wait: Duration,
    p99: Duration,
    inserts: usize,
}

/// Runs `restore` `repeat` times on fresh copies and prints the medians.
fn measure(n: i64, tpl: &str, label: &str, args: &Args, restore: impl Fn(&str)) -> Figures {
    let runs: Vec<Figures> = (0..args.repeat.max(1))
        .map(|_| one_run(n, tpl, args.writers, &restore))
        .collect();
    fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
        v.sort();
        v[v.len() / 2]
    }
    let f = Figures {
        wall: median(runs.iter().map(|r| r.wall).collect()),
        max_wait: median(runs.iter().map(|r| r.max_wait).collect()),
        p99: median(runs.iter().map(|r| r.p99).collect()),
        inserts: median(runs.iter().map(|r| r.inserts).collect()),
    };
    let all_max: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.1}", r.max_wait.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "| {n:>10} | {label:<16} | {:>8.2} | {:>13.1} | {:>8.2} | {:>8} | {} |",
        f.wall.as_secs_f64(),
        f.max_wait.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
        f.inserts,
        all_max.join(" / ")
    );
    f
}

fn one_run(n: i64, tpl: &str, writers: usize, restore: &impl Fn(&str)) -> Figures {
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
    let mut during: Vec<Duration> = samples
        .iter()
        .filter(|(s, _)| *s >= t0 && *s <= t1)
        .map(|(_, d)| *d)
        .collect();
    during.sort();
    let p99 = during
        .get(during.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    let f = Figures {
        wall,
        max_wait: during.last().copied().unwrap_or_default(),
        p99,
        inserts: during.len(),
    };
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    f
}

fn spec_sql(url: &str) {
    let mut c = Client::connect(url, NoTls).unwrap();
    c.batch_execute(SPEC_SQL).expect("the spec's SQL");
}

fn runner(jobs: usize) -> impl Fn(&str) {
    move |url: &str| {
        let mut s = Settings::new(url);
        s.jobs = jobs;
        meta_chat_migrations::migrate(&s).expect("the runner");
    }
}

fn main() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let args = parse_args();
    println!(
        "# restore of both tenant FKs and indexes under {} concurrent writers",
        args.writers
    );
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let tpl = template(n);
        println!(
            "| messages   | approach         | wall (s) | max wait (ms) | p99 (ms) | inserts  | max wait of each run (ms) |"
        );
        println!(
            "|-----------:|------------------|---------:|--------------:|---------:|---------:|---------------------------|"
        );
        let a = measure(n, &tpl, "spec SQL", &args, spec_sql);
        let b1 = measure(n, &tpl, "runner --jobs 1", &args, runner(1));
        let b2 = measure(n, &tpl, "runner --jobs 2", &args, runner(2));
        for (label, b) in [("--jobs 1", &b1), ("--jobs 2", &b2)] {
            println!(
                "# {n} messages, runner {label} / spec SQL: wall {:.2}x, max wait {:.3}x, p99 {:.2}x, inserts {:.2}x",
                b.wall.as_secs_f64() / a.wall.as_secs_f64(),
                b.max_wait.as_secs_f64() / a.max_wait.as_secs_f64(),
                b.p99.as_secs_f64() / a.p99.as_secs_f64().max(1e-9),
                b.inserts as f64 / a.inserts.max(1) as f64
            );
        }
        rows.push((n, a, b1, b2));
        if !args.keep {
            admin()
                .batch_execute(&format!("DROP DATABASE IF EXISTS {tpl} WITH (FORCE)"))
                .unwrap();
        }
    }
    if rows.len() >= 2 {
        let (n0, a0, b0, c0) = &rows[0];
        let (n1, a1, b1, c1) = &rows[rows.len() - 1];
        println!(
            "# growth {n0} -> {n1} messages: max wait spec SQL {:.2}x, runner --jobs 1 {:.2}x, runner --jobs 2 {:.2}x",
            a1.max_wait.as_secs_f64() / a0.max_wait.as_secs_f64(),
            b1.max_wait.as_secs_f64() / b0.max_wait.as_secs_f64(),
            c1.max_wait.as_secs_f64() / c0.max_wait.as_secs_f64()
        );
    }
}
