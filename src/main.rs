//! `meta-chat-migrate`: a thin shell over the library ([`meta_chat_migrations::cli`]). Output of
//! a command goes to stdout, logs and the one error line to stderr, and the exit code says what
//! happened (see `--help`).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meta_chat_migrations::cli::{self, Cli, LogFormat};
use meta_chat_migrations::{exit, Error, Interrupt, Reason};

/// What is logged without `RUST_LOG`: the runner's own lines at `info`, and only warnings of the
/// libraries (refinery's per-migration internals, the driver's NOTICEs).
const DEFAULT_LOG: &str = "info,refinery_core=warn,postgres=warn,tokio_postgres=warn";

/// `RUST_LOG` adds to [`DEFAULT_LOG`] rather than replacing it (a later directive for the same
/// target wins), so `RUST_LOG=info`, as the container sets it, prints what the README shows, and
/// `RUST_LOG=debug` or `RUST_LOG=refinery_core=info` still reach what they name.
fn log_filter(rust_log: Option<String>) -> String {
    match rust_log {
        Some(extra) if !extra.trim().is_empty() => format!("{DEFAULT_LOG},{extra}"),
        _ => DEFAULT_LOG.to_string(),
    }
}

/// Logs to stderr in the chosen form: text lines, or one JSON object per line.
fn init_logging(format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&log_filter(std::env::var("RUST_LOG").ok()));
    match format {
        LogFormat::Text => builder.format_target(false).format_timestamp_millis(),
        LogFormat::Json => builder.format(|buf, record| {
            let line = serde_json::json!({
                "time": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "message": record.args().to_string(),
                "fields": { "target": record.target() },
            });
            writeln!(buf, "{line}")
        }),
    };
    builder.init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let log_format = cli.log_format();
    init_logging(log_format);
    let json = cli.json();
    let interrupt = Interrupt::new();
    on_signals(interrupt.clone(), log_format);
    let outcome = cli::run(cli, interrupt.clone());
    // Whatever statement failed first, a signalled run says it was stopped.
    let outcome = match (outcome, interrupt.reason()) {
        (Err(_), Some(reason)) => Err(Error::Interrupted { reason }),
        (other, _) => other,
    };
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            // Never a panic: a closed stderr loses the line, not the exit code.
            final_line(log_format, &format!("error: {err}"));
            if json && err.report_not_printed() {
                cli::print_error_json(&err);
            }
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

/// The one line that ends a failed run, whatever `RUST_LOG` filters: text, or (`--log-format
/// json`) the same object as every log line, at level ERROR. Never a panic on a closed stderr.
fn final_line(format: LogFormat, message: &str) {
    let line = match format {
        LogFormat::Text => message.to_string(),
        LogFormat::Json => serde_json::json!({
            "time": utc_now(),
            "level": "ERROR",
            "message": message,
            "fields": { "target": "meta_chat_migrate" },
        })
        .to_string(),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Now, UTC, as the log lines write it: `2026-12-02T10:00:47.734Z`.
fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (now.as_secs() as i64, now.subsec_millis());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A command line clap refuses: its text on stderr (or stdout for --help and --version), exit
/// 2; with `--json` among the arguments, also one JSON error document on stdout.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informational && std::env::args().any(|a| a == "--json") {
        let first = e.to_string();
        let message = first
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        cli::print_usage_json(message);
    }
    let _ = e.print();
    ExitCode::from(e.exit_code() as u8)
}

/// How long after SIGTERM or SIGINT the process exits at the latest, even if a cancel request
/// is slow to arrive (a second signal exits at once).
const EXIT_WITHIN: Duration = Duration::from_millis(1500);

/// SIGTERM (Kubernetes, `docker stop`) and SIGINT stop the run: its statements are cancelled on
/// the server, the migration lock is released, and the process exits 130 or 143.
fn on_signals(interrupt: Interrupt, format: LogFormat) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        log::warn!("could not install the SIGTERM and SIGINT handlers");
        return;
    };
    std::thread::spawn(move || {
        for number in signals.forever() {
            let name = if number == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            if interrupt.reason().is_some() {
                std::process::exit(exit::SIGNAL_BASE + number);
            }
            log::warn!("{name}: cancelling this run's statements on the server and releasing the migration lock");
            interrupt.trigger(Reason::Signal { name, number });
            std::thread::spawn(move || {
                std::thread::sleep(EXIT_WITHIN);
                final_line(format, &format!("error: interrupted by {name}: exiting before the run finished stopping; the server ends its statements when the connections close"));
                std::process::exit(exit::SIGNAL_BASE + number);
            });
        }
    });
}
