//! Property tests of everything the runner parses from its operator: connection URLs (any
//! text, URL-shaped text, and passwords that hold URL syntax), durations, and the command line.
//! None may panic; a password never weakens `sslmode` and never shows up in an error. Each test
//! prints how many inputs it ran (`cargo test --test fuzz -- --nocapture`).

use std::cell::Cell;

use meta_chat_migrations::cli::Cli;
use meta_chat_migrations::config::{parse_duration, parse_url};
use meta_chat_migrations::tls::SslMode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn run<S: Strategy>(name: &str, cases: u32, strategy: S, check: impl Fn(S::Value)) -> u32
where
    S::Value: std::fmt::Debug,
{
    let ran = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |input| {
            ran.set(ran.get() + 1);
            check(input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("fuzz {name}: {} inputs, no panic", ran.get());
    ran.get()
}

#[test]
fn any_text_as_a_url_never_panics() {
    run("url, any text", 20_000, any::<String>(), |s| {
        let _ = parse_url(&s);
    });
    run(
        "url, URL-shaped text",
        20_000,
        "(postgres|postgresql|POSTGRES|mysql)://[a-z0-9@:/?#&=%.,\\[\\]é \\\\'-]{0,60}",
        |s| {
            let _ = parse_url(&s);
        },
    );
    run(
        "url, key=value text",
        10_000,
        "([a-z_]{1,12} ?= ?('[^']{0,10}'?|[a-z0-9%?@=]{0,10}) ?){0,5}",
        |s| {
            let _ = parse_url(&s);
        },
    );
}

/// Pieces of `password` that an error must not show: the whole of it, and every part between
/// URL delimiters long enough not to occur in an error's own words by chance.
fn pieces(password: &str) -> Vec<&str> {
    let mut p: Vec<&str> = password
        .split(['@', '/', '?', '#', ':', '&', '='])
        .filter(|x| x.chars().count() >= 6)
        .collect();
    if password.chars().count() >= 4 {
        p.push(password);
    }
    p
}

#[test]
fn no_password_weakens_sslmode_or_shows_in_an_error() {
    run(
        "password inside a URL",
        20_000,
        "[^\\x00]{0,24}",
        |password: String| {
            let url = format!(
                "postgres://migrator:{password}@db.internal:5432/chat?sslmode=require&application_name=x"
            );
            match parse_url(&url) {
                Ok((config, tls)) => {
                    assert_eq!(tls.mode, SslMode::Require, "{url}");
                    assert_eq!(config.get_dbname(), Some("chat"), "{url}");
                    assert!(
                        matches!(config.get_hosts(), [postgres::config::Host::Tcp(h)] if h == "db.internal"),
                        "{url}"
                    );
                }
                Err(e) => {
                    let text = e.to_string();
                    for piece in pieces(&password) {
                        assert!(!text.contains(piece), "{url}: {text}");
                    }
                }
            }
        },
    );
}

#[test]
fn any_duration_text_never_panics() {
    run("duration, any text", 20_000, any::<String>(), |s| {
        let _ = parse_duration(&s);
    });
    run(
        "duration, number-shaped text",
        20_000,
        "[0-9.eE+-]{0,30}(ms|s|m|min|h|d|)",
        |s| {
            if let Ok(d) = parse_duration(&s) {
                assert!(d.as_secs_f64().is_finite());
            }
        },
    );
}

fn arg() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("migrate".to_string()),
        Just("status".to_string()),
        Just("check".to_string()),
        Just("verify".to_string()),
        Just("--json".to_string()),
        Just("--wait".to_string()),
        Just("--lock-wait".to_string()),
        Just("--lock-timeout".to_string()),
        Just("--lock-retries".to_string()),
        Just("--jobs".to_string()),
        Just("--target".to_string()),
        Just("--baseline".to_string()),
        Just("--orphans".to_string()),
        Just("--schema".to_string()),
        Just("--database-url".to_string()),
        "[0-9]{1,25}(ms|s|m|h)?",
        "-?[0-9]{1,22}",
        any::<String>(),
    ]
}

#[test]
fn any_command_line_never_panics() {
    use clap::Parser;
    run(
        "command line",
        20_000,
        proptest::collection::vec(arg(), 0..7),
        |args: Vec<String>| {
            let argv = std::iter::once("meta-chat-migrate".to_string()).chain(args);
            let _ = Cli::try_parse_from(argv);
        },
    );
}
