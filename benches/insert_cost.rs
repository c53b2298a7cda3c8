//! What the tenant-consistency key costs each insert into `messages`: insert throughput and
//! latency with (a) the keys of 20251121000003 (tenant, conversation), (b) those plus
//! `messages_conversation_tenant_fkey` (20251121000004: three key checks per insert), and (c)
//! the composite key without the single-column conversation key it implies (two checks). Prints
//! figures; asserts nothing.
//!
//!     cargo bench --bench insert_cost -- [--clients 2] [--seconds 10] [--repeat 3]
//!
//! Each configuration is a fresh copy of one seeded database (200,000 messages, 1,000 tenants,
//! 20,000 conversations); the configurations run interleaved, `--repeat` times, and each row
//! shows medians.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use meta_chat_migrations::{embedded, Settings};
mod common;

use common::{admin, db_url};
use postgres::{Client, NoTls};

struct Args {
    clients: usize,
    seconds: u64,
    repeat: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        clients: 2,
        seconds: 10,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .expect("a value")
                .parse::<u64>()
                .expect("a number")
        };
        match a.as_str() {
            "--clients" => args.clients = value() as usize,
            "--seconds" => args.seconds = value(),
            "--repeat" => args.repeat = value() as usize,
            "--bench" => {}
            other => panic!("unknown argument {other}; see the module docs"),
        }
    }
    args
}

/// A database at `version` with the seed, ready to copy.
fn template(name: &str, version: i64) -> String {
    let mut admin = admin();
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    let mut s = Settings::new(db_url(name));
    s.target = Some(embedded::PARTITIONED);
    meta_chat_migrations::migrate(&s).expect("migrate");
    let mut c = Client::connect(&db_url(name), NoTls).unwrap();
    c.batch_execute(
        "INSERT INTO tenants (id, name) SELECT 't' || g, 'tenant' FROM generate_series(1, 1000) g;
         INSERT INTO conversations (id, \"tenantId\") SELECT 'c' || g, 't' || (1 + g % 1000) FROM generate_series(1, 20000) g;
         INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
           SELECT 'm' || g, 't' || (1 + (1 + g % 20000) % 1000), 'c' || (1 + g % 20000), 'user', 'seed', timestamptz '2025-01-01' + (g % 600) * interval '1 day'
             FROM generate_series(1, 200000) g;",
    )
    .unwrap();
    let mut s = Settings::new(db_url(name));
    s.target = Some(version);
    meta_chat_migrations::migrate(&s).expect("migrate");
    c.batch_execute("VACUUM (FREEZE, ANALYZE)").unwrap();
    name.to_string()
}

/// Inserts for `seconds` from `clients` connections; returns (inserts, p50, p99).
fn load(url: &str, clients: usize, seconds: u64) -> (usize, Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..clients)
        .map(|w| {
            let (url, stop) = (url.to_string(), stop.clone());
            thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
                let ins = c
                    .prepare(
                        "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
                         VALUES ($1, 't' || (1 + $2::int8 % 1000), 'c' || $2::int8, 'user', 'load', timestamptz '2025-06-01' + $3::int8 * interval '1 second')",
                    )
                    .unwrap();
                let mut took = Vec::with_capacity(200_000);
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let conv = fastrand::i64(1..=20000);
                    let t = Instant::now();
                    c.execute(&ins, &[&format!("load-{w}-{i}"), &conv, &fastrand::i64(0..86400 * 30)])
                        .unwrap();
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    let at = |q: usize| all.get(all.len() * q / 100).copied().unwrap_or_default();
    (all.len(), at(50), at(99))
}

fn main() {
    let args = parse_args();
    let base03 = template("mcm_cost_tpl_03", embedded::RESTORE_API_LOGS_TENANT_FK);
    let base04 = template("mcm_cost_tpl_04", embedded::TENANT_CONSISTENT_MESSAGES);
    let configs: [(&str, &str, &str); 3] = [
        ("(a) tenant + conversation keys (at 03)", &base03, ""),
        ("(b) + messages_conversation_tenant_fkey (04)", &base04, ""),
        (
            "(c) 04 without the single-column conversation key",
            &base04,
            "ALTER TABLE messages DROP CONSTRAINT messages_partitioned_conversation_fkey",
        ),
    ];
    let mut results: Vec<Vec<(usize, Duration, Duration)>> = vec![Vec::new(); configs.len()];
    for _ in 0..args.repeat {
        for (i, (_, tpl, extra)) in configs.iter().enumerate() {
            let name = "mcm_cost_run";
            for sql in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name} TEMPLATE {tpl}"),
            ] {
                admin().batch_execute(&sql).unwrap();
            }
            let url = db_url(name);
            if !extra.is_empty() {
                Client::connect(&url, NoTls)
                    .unwrap()
                    .batch_execute(extra)
                    .unwrap();
            }
            admin().batch_execute("CHECKPOINT").unwrap();
            results[i].push(load(&url, args.clients, args.seconds));
        }
    }
    println!(
        "# inserts into messages, {} clients x {} s, {} run(s) each, interleaved; medians",
        args.clients, args.seconds, args.repeat
    );
    println!("| configuration | inserts/s | p50 (ms) | p99 (ms) | inserts/s of each run |");
    println!("|---|---:|---:|---:|---|");
    let mut rates = Vec::new();
    for ((label, _, _), runs) in configs.iter().zip(&results) {
        let mut r: Vec<f64> = runs
            .iter()
            .map(|(n, _, _)| *n as f64 / args.seconds as f64)
            .collect();
        let each: Vec<String> = r.iter().map(|x| format!("{x:.0}")).collect();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rate = r[r.len() / 2];
        let mut p50: Vec<Duration> = runs.iter().map(|x| x.1).collect();
        let mut p99: Vec<Duration> = runs.iter().map(|x| x.2).collect();
        p50.sort();
        p99.sort();
        println!(
            "| {label} | {rate:.0} | {:.3} | {:.3} | {} |",
            p50[p50.len() / 2].as_secs_f64() * 1000.0,
            p99[p99.len() / 2].as_secs_f64() * 1000.0,
            each.join(" / ")
        );
        rates.push(rate);
    }
    println!(
        "# throughput (b)/(a) {:.3}x, (c)/(a) {:.3}x, (c)/(b) {:.3}x",
        rates[1] / rates[0],
        rates[2] / rates[0],
        rates[2] / rates[1]
    );
    for db in ["mcm_cost_run", "mcm_cost_tpl_03", "mcm_cost_tpl_04"] {
        let _ = admin().batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    }
}
