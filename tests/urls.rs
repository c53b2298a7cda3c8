//! URLs that lie and networks that stop answering, through the binary: an unencoded `@` or
//! `/` in the password never shows any part of it, inputs that used to panic are usage errors,
//! TCP keepalives are on by default (and overridable), and a path that goes silent is noticed
//! instead of hanging for hours (a network namespace whose packets are dropped).

mod common;

use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PIECES: [&str; 3] = ["Se3cr", "et-p4rt", "tw0-9x"];

fn assert_no_piece(label: &str, out: &std::process::Output) {
    for piece in PIECES {
        assert!(
            !stdout(out).contains(piece) && !stderr(out).contains(piece),
            "{label}: {piece} printed:\n{}{}",
            stdout(out),
            stderr(out)
        );
    }
}

#[test]
fn no_part_of_a_password_with_url_syntax_in_it_is_ever_printed() {
    let db = TestDb::new();
    let host = format!("127.0.0.1:{}/{}", server_port(), db.name);
    for password in [
        format!("{}@{}@{}", PIECES[0], PIECES[1], PIECES[2]),
        format!("{}/{}@{}", PIECES[0], PIECES[1], PIECES[2]),
        format!("{}:{}/{}", PIECES[0], PIECES[1], PIECES[2]),
        format!("{}%zz{}", PIECES[0], PIECES[1]),
    ] {
        let url = format!("postgres://postgres:{password}@{host}?sslmode=disable");
        let out = run_bin(&url, &["migrate"]);
        assert_eq!(out.status.code(), Some(2), "{password}: {}", stderr(&out));
        assert!(
            error_line(&out).contains("invalid database URL"),
            "{}",
            stderr(&out)
        );
        assert_no_piece(&password, &out);
        let out = runner_bin()
            .args(["--wait", "1s", "status"])
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_no_piece(&password, &out);
    }
    // In the query, an unescaped '&' splits the password: what follows it is never shown.
    for query in [
        format!("password={}&{}", PIECES[0], PIECES[1]),
        format!("password={}&{}=x", PIECES[0], PIECES[1]),
    ] {
        let url = format!("postgres://postgres@{host}?{query}");
        let out = run_bin(&url, &["status"]);
        assert_eq!(out.status.code(), Some(2), "{query}: {}", stderr(&out));
        assert!(
            error_line(&out).contains(
                "after password= (if the password holds a '&', percent-encode it as %26)"
            ),
            "{}",
            stderr(&out)
        );
        assert_no_piece(&query, &out);
    }
    // Encoded, the same password is read right (trust authentication ignores it; the URL is
    // accepted and the run goes through).
    let encoded = format!("{}%40{}%2F{}", PIECES[0], PIECES[1], PIECES[2]);
    let out = run_bin(
        &format!("postgres://postgres:{encoded}@{host}"),
        &["status"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_piece("encoded", &out);
}

#[test]
fn inputs_that_used_to_panic_are_usage_errors() {
    let db = TestDb::new();
    for (args, expect) in [
        (
            vec!["--wait", "99999999999999999999999h", "status"],
            "--wait",
        ),
        (vec!["migrate", "--lock-timeout", "1e400"], "--lock-timeout"),
        (vec!["migrate", "--lock-timeout", "30d"], "unknown unit"),
        (
            vec!["migrate", "--lock-timeout", "9999999h"],
            "--lock-timeout",
        ),
    ] {
        let out = runner_bin()
            .arg("--database-url")
            .arg(&db.url)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    let url = format!("{}?sslmode=verify-full&sslrootcert=/x%a\u{e9}.pem", db.url);
    let out = run_bin(&url, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out)
            .contains("the value of sslrootcert has a '%' that does not start a %XX escape"),
        "{}",
        stderr(&out)
    );
}

/// Starts a runner that waits for the migration lock, held by a live-looking session, so that
/// the runner stays connected without doing anything but polling for the lock.
fn waiting_runner(db: &TestDb, url: &str, netns: Option<&str>) -> (Child, BusyHolder) {
    let holder = BusyHolder::take(db);
    let bin = env!("CARGO_BIN_EXE_meta-chat-migrate");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => std::process::Command::new(bin),
    };
    let child = hermetic(&mut cmd)
        .args(["--database-url", url, "--wait", "5s", "migrate"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, holder)
}

/// `timer:(keepalive,29sec,0)` of each socket of `pid` to `port`, in seconds.
fn keepalive_timers(pid: u32, port: u16) -> Vec<Option<u64>> {
    let out = std::process::Command::new("ss")
        .args([
            "-tnpo",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(|l| {
            let t = l.split("timer:(keepalive,").nth(1)?;
            let (n, unit) = t
                .split_once(',')?
                .0
                .split_at(t.find(|c: char| !c.is_ascii_digit())?);
            let n: u64 = n.parse().ok()?;
            Some(match unit {
                "min" => n * 60,
                _ => n,
            })
        })
        .collect()
}

#[test]
fn tcp_keepalives_are_on_by_default_and_follow_the_url() {
    let db = TestDb::new();
    for (query, limit) in [
        ("", Some(30)),
        ("?keepalives_idle=7", Some(7)),
        ("?keepalives=0", None),
    ] {
        let (mut child, holder) = waiting_runner(&db, &format!("{}{query}", db.url), None);
        // A socket that just sent something shows its retransmission timer instead: sample
        // a few times and keep what was seen.
        let mut seen: Vec<Option<u64>> = Vec::new();
        let connected = eventually(Duration::from_secs(10), || {
            !keepalive_timers(child.id(), server_port()).is_empty()
        });
        for _ in 0..10 {
            seen.extend(keepalive_timers(child.id(), server_port()));
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        drop(holder);
        assert!(connected, "{query}: the runner's sockets were not found");
        let timers: Vec<u64> = seen.iter().flatten().copied().collect();
        match limit {
            Some(limit) => assert!(
                !timers.is_empty() && timers.iter().all(|t| *t <= limit),
                "{query}: keepalive timers seen {seen:?}"
            ),
            None => assert!(timers.is_empty(), "{query}: keepalive timers seen {seen:?}"),
        }
    }
}

/// A network namespace joined to the host by a veth pair, for a runner whose packets can be
/// dropped (iptables inside the namespace) while the server and everything else go on.
struct NetNs {
    name: String,
    host_ip: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {} (these tests need root and iproute2)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    fn new(n: u8) -> NetNs {
        let id = std::process::id() % 100_000;
        let name = format!("mcm{id}n{n}");
        let (veth_host, veth_ns) = (format!("mh{id}n{n}"), format!("mn{id}n{n}"));
        let net = format!("10.{}.{}", 100 + n, id % 250);
        let host_ip = format!("{net}.1");
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns,
        ]);
        ip(&["link", "set", &veth_ns, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &veth_host]);
        ip(&["link", "set", &veth_host, "up"]);
        let ns_ip = format!("{net}.2/30");
        for args in [
            ["addr", "add", &ns_ip, "dev", &veth_ns],
            ["link", "set", &veth_ns, "up", ""],
            ["link", "set", "lo", "up", ""],
        ] {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend(args.iter().copied().filter(|a| !a.is_empty()));
            ip(&full);
        }
        NetNs { name, host_ip }
    }

    /// Drops every packet that reaches the namespace from the host: the path goes silent (what
    /// the runner sends is never acknowledged, nothing comes back).
    fn go_silent(&self) {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "iptables",
                "-A",
                "INPUT",
                "-s",
                &self.host_ip,
                "-j",
                "DROP",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "iptables: {} (apt-get install iptables)",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a waiting runner through a namespace, silences the path, and returns how long the
/// runner took to give up (None: still running after `patience`).
fn silence_the_path(n: u8, query: &str, patience: Duration) -> (Option<Duration>, String) {
    let db = TestDb::new();
    let ns = NetNs::new(n);
    let proxy = Proxy::start(ProxyOptions {
        bind: Some(ns.host_ip.parse().unwrap()),
        ..ProxyOptions::default()
    });
    let url = format!("{}{query}", proxy.url(&db.url));
    let (mut child, _holder) = waiting_runner(&db, &url, Some(&ns.name));
    let stderr_pipe = child.stderr.take().unwrap();
    let log = thread::spawn(move || std::io::read_to_string(stderr_pipe).unwrap_or_default());
    // Waiting for the lock, on its one connection (the holder is the other backend named so):
    // nothing else of the runner is being opened when the path goes silent.
    // The runner polls the lock (pg_try_advisory_lock): two backends for a second and a half
    // on end is its waiting state, past the pooler probe it opens and closes first.
    let mut since: Option<Instant> = None;
    let waiting = eventually(Duration::from_secs(15), || {
        if runner_backends(&db).len() != 2 {
            since = None;
            return false;
        }
        since.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(1500)
    });
    assert!(
        waiting,
        "the runner never waited for the lock through the namespace"
    );
    ns.go_silent();
    let silenced = Instant::now();
    let gave_up = loop {
        if child.try_wait().unwrap().is_some() {
            break Some(silenced.elapsed());
        }
        if silenced.elapsed() > patience {
            let _ = child.kill();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = child.wait();
    (gave_up, log.join().unwrap())
}

#[test]
fn a_silent_network_path_is_noticed_within_about_a_minute_by_default() {
    let (gave_up, log) = silence_the_path(1, "", Duration::from_secs(100));
    let took =
        gave_up.unwrap_or_else(|| panic!("still waiting 100s after the path went silent:\n{log}"));
    eprintln!(
        "with the default keepalives, the runner gave up {took:?} after the path went silent"
    );
    assert!(took < Duration::from_secs(80), "{took:?}\n{log}");
    assert!(log.contains("error: "), "{log}");
}

#[test]
fn keepalive_settings_in_the_url_shorten_or_disable_the_detection() {
    let (gave_up, log) = silence_the_path(
        2,
        "?keepalives_idle=1&keepalives_interval=1&keepalives_count=2&tcp_user_timeout=3000",
        Duration::from_secs(30),
    );
    let took = gave_up.unwrap_or_else(|| panic!("still waiting:\n{log}"));
    assert!(took < Duration::from_secs(15), "{took:?}\n{log}");
    // The negative: with keepalives and the user timeout off, the runner is still waiting.
    let (gave_up, log) = silence_the_path(
        3,
        "?keepalives=0&tcp_user_timeout=0",
        Duration::from_secs(20),
    );
    assert_eq!(gave_up, None, "{log}");
}
