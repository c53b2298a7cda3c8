//! What application boot costs when there is nothing to do: a `migrate` at the latest version,
//! with every declared object and the months ahead in place, side by side with
//! `psql -c 'select 1'` to the same database (process start, connection, one query), at the
//! platform's partitions per table today and with more months (older ones added before 2024-01).
//! Each approach runs `--repeat` times, interleaved; medians, and the ratio to psql.
//!
//! Prints figures; asserts nothing.
//!
//!     cargo bench --bench boot -- [--partitions 42,500,1500] [--repeat 10]
//!
//! The server is `BENCH_DATABASE_URL` or `TEST_DATABASE_URL` or the local one; psql is the
//! server's (`pg_config --bindir`, else PATH).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{admin, db_url, median};
use postgres::{Client, NoTls};

struct Args {
    partitions: Vec<usize>,
    repeat: usize,
}

fn args() -> Args {
    let mut a = Args {
        partitions: vec![42, 500, 1500],
        repeat: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--partitions" => {
                a.partitions = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .collect()
            }
            "--repeat" => a.repeat = it.next().and_then(|n| n.parse().ok()).unwrap_or(10),
            _ => {}
        }
    }
    a
}

fn psql() -> String {
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| format!("{}/psql", String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| "psql".into())
}

fn partitions_of(c: &mut Client, table: &str) -> usize {
    c.query_one(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = $1::text::regclass",
        &[&table],
    )
    .unwrap()
    .get::<_, i64>(0) as usize
}

/// A database at the latest version with `n` partitions per table (months added before the
/// first one, 2024-01).
fn database(n: usize) -> String {
    let name = format!("mcm_bench_boot_{n}");
    let mut a = admin();
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    a.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let url = db_url(&name);
    let out = runner(&url, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Client::connect(&url, NoTls).unwrap();
    for table in ["messages", "api_logs"] {
        let have = partitions_of(&mut c, table);
        for k in 1..=n.saturating_sub(have) {
            c.batch_execute(&format!(
                "CREATE TABLE {table}_old_{k} PARTITION OF {table} FOR VALUES FROM \
                 (timestamptz '2024-01-01 00:00+00' - interval '{k} months') TO \
                 (timestamptz '2024-01-01 00:00+00' - interval '{} months')",
                k - 1
            ))
            .unwrap();
        }
    }
    // A production database's catalog has been vacuumed and analysed; a fresh one's is being
    // worked on by autovacuum right after a thousand tables were made, which the first runs
    // would otherwise measure.
    c.batch_execute("VACUUM ANALYZE").unwrap();
    let out = runner(&url, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    url
}

fn runner(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meta-chat-migrate"))
        .args(["--database-url", url])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn timed(mut cmd: Command) -> Duration {
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let args = args();
    let psql = psql();
    println!(
        "# a no-op migrate against psql -c 'select 1', {} runs each, interleaved; medians",
        args.repeat
    );
    println!("psql: {psql}; `psql` on PATH as a user types it (Debian's pg_wrapper, a Perl script) in its own column");
    println!("| partitions per table | psql -c 'select 1' (ms) | migrate (ms) | ratio | migrate --skip-partitions (ms) | ratio | `psql` on PATH (ms) | migrate / it |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in args.partitions {
        let url = database(n);
        let (mut p, mut m, mut s, mut w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            let mut cmd = Command::new(&psql);
            cmd.args([url.as_str(), "-c", "select 1"]);
            p.push(timed(cmd));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_meta-chat-migrate"));
            cmd.args(["--database-url", &url, "migrate"])
                .env("RUST_LOG", "warn");
            m.push(timed(cmd));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_meta-chat-migrate"));
            cmd.args(["--database-url", &url, "migrate", "--skip-partitions"])
                .env("RUST_LOG", "warn");
            s.push(timed(cmd));
            let mut cmd = Command::new("psql");
            cmd.args([url.as_str(), "-c", "select 1"]);
            w.push(timed(cmd));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p, m, s, w) = (ms(median(p)), ms(median(m)), ms(median(s)), ms(median(w)));
        println!(
            "| {n} | {p:.1} | {m:.1} | {:.2}x | {s:.1} | {:.2}x | {w:.1} | {:.2}x |",
            m / p,
            s / p,
            m / w
        );
        admin()
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS mcm_bench_boot_{n} WITH (FORCE)"
            ))
            .unwrap();
    }
}
