//! What every benchmark needs from its server: its URL (`BENCH_DATABASE_URL`, else
//! `TEST_DATABASE_URL`, else the local one), the URL of one of its databases, an admin
//! connection, and the median of repeated figures.

#![allow(dead_code)] // each benchmark uses its own subset

use postgres::{Client, NoTls};

pub fn server_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn db_url(name: &str) -> String {
    let base = server_url();
    let cut = base.rfind('/').expect("a URL with a database");
    format!("{}/{name}", &base[..cut])
}

pub fn admin() -> Client {
    Client::connect(&server_url(), NoTls).expect("connect to the benchmark server")
}

/// The median of repeated figures (the upper one of an even count).
pub fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}
