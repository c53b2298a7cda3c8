//! The command line of `meta-chat-migrate`: its flags, subcommands and what each prints. Behind
//! the default `cli` feature, so that the library an application boots with does not pull in
//! clap. `main.rs` only sets up logging and signals and turns the outcome into an exit code.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_duration, DEFAULT_JOBS};
use crate::{exit, Error, Interrupt, OrphanPolicy, Settings};

/// `println!` that never panics: a closed stdout (`| head`) is not an error of this program.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (connection, lock timeout, unknown or divergent history, a database to adopt
     without --baseline, an unexpected catalog, SQL error)
  2  usage error (bad flag or value, bad URL, an unreadable URL file, two URL sources of one
     level, unknown --target or --baseline version)
  3  orphaned rows found (check, or migrate refusing under --orphans refuse)
  4  a verify assertion failed
  130, 143  stopped by SIGINT or SIGTERM: the run's statements were cancelled on the server
     and the migration lock released";

/// Applies and checks the meta-chat PostgreSQL schema.
#[derive(Parser)]
#[command(name = "meta-chat-migrate", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE [default: DATABASE_URL, DATABASE_URL_FILE, libpq's PG* variables, else postgres://postgres@localhost:5432/postgres]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,

    /// Read the URL from this file (a mounted secret; a trailing newline is ignored).
    #[arg(long, global = true, value_name = "PATH")]
    database_url_file: Option<std::path::PathBuf>,

    /// How long to wait for the database to accept connections.
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,

    /// The schema that holds the platform's tables and history (set as search_path on every session) [default: the URL's ?schema=, else public]
    #[arg(long, global = true)]
    schema: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply pending migrations (the tenant FKs are restored online, without stopping writes).
    Migrate(MigrateArgs),
    /// Show applied, pending, divergent and unknown versions. Read-only: creates nothing.
    Status(JsonArg),
    /// Count orphaned rows, show constraint status and partition layout. Exit 3 on orphans.
    Check(JsonArg),
    /// Run the spec's seven validation assertions in a rolled-back transaction. Exit 4 on failure.
    Verify(JsonArg),
}

#[derive(Args)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// Apply up to and including this version.
    #[arg(long, value_name = "VERSION")]
    target: Option<i64>,
    /// Adopt a database migrated by something else (schema present, no history): record the
    /// versions up to VERSION as applied without running them, if the catalog matches, then
    /// apply the rest.
    #[arg(long, value_name = "VERSION")]
    baseline: Option<i64>,
    /// What to do with rows whose "tenantId" references no tenant.
    #[arg(long, value_enum, default_value_t = OrphanPolicy::Refuse)]
    orphans: OrphanPolicy,
    /// Connections for the per-partition work of the online restore.
    #[arg(long, default_value_t = DEFAULT_JOBS as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// lock_timeout for DDL whose lock would block writes while it waits.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    lock_timeout: Duration,
    /// Retries (with backoff and jitter) of a step that hit lock_timeout.
    #[arg(long, default_value_t = 10)]
    lock_retries: u32,
    /// How long to wait for the migration lock [default: as long as a live runner holds it]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    lock_wait: Option<Duration>,
    /// Print what migrate would do (versions, steps, locks, pre-flight rows) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report (or the plan, with --dry-run) as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command; the `Ok` value is the exit code.
pub fn run(cli: Cli, interrupt: Interrupt) -> Result<i32, Error> {
    let source = crate::sources::resolve(cli.database_url, cli.database_url_file.as_deref())?;
    let mut settings = Settings::new(source.url);
    settings.connect_wait = cli.wait;
    if let Some(schema) = cli.schema {
        match crate::config::url_schema(&settings.database_url) {
            Some(in_url) if in_url != schema => {
                return Err(Error::Source {
                    reason: format!(
                        "--schema {schema} and the URL's schema={in_url} differ: give one of them"
                    ),
                })
            }
            _ => settings.schema = schema,
        }
    }
    settings.interrupt = interrupt;
    match cli.command {
        Command::Migrate(args) => migrate(settings, args),
        Command::Status(a) => status(&settings, a.json),
        Command::Check(a) => {
            let report = crate::check(&settings)?;
            print(a.json, &report, || report.lines());
            Ok(if report.orphan_total() > 0 {
                exit::ORPHANS
            } else {
                exit::SUCCESS
            })
        }
        Command::Verify(a) => {
            let report = crate::verify(&settings)?;
            print(a.json, &report, || report.lines());
            report.into_result().map(|_| exit::SUCCESS)
        }
    }
}

fn migrate(mut settings: Settings, args: MigrateArgs) -> Result<i32, Error> {
    settings.target = args.target;
    settings.baseline = args.baseline;
    settings.orphans = args.orphans;
    settings.jobs = args.jobs.into();
    settings.lock_timeout = args.lock_timeout;
    settings.lock_retries = args.lock_retries;
    settings.lock_wait = args.lock_wait;
    if args.dry_run {
        let plan = crate::plan(&settings)?;
        print(args.json, &plan, || plan.lines());
        return Ok(exit::SUCCESS);
    }
    let report = crate::migrate(&settings)?;
    print(args.json, &report, || {
        vec![format!(
            "{}: at version {} ({} migration(s) applied)",
            report.database,
            report.to.map_or("none".into(), |v| v.to_string()),
            report.applied.len()
        )]
    });
    Ok(exit::SUCCESS)
}

fn status(settings: &Settings, json: bool) -> Result<i32, Error> {
    let status = crate::status(settings)?;
    print(json, &status, || {
        let mut lines = Vec::new();
        for e in &status.applied {
            let mark = if status.divergent.contains(e) {
                "DIVERGENT"
            } else {
                "applied"
            };
            let when = e.applied_on.as_deref().unwrap_or("");
            lines.push(format!("{mark:<9} {} {}  {when}", e.version, e.name));
        }
        for e in &status.unknown {
            lines.push(format!(
                "UNKNOWN   {} {}  (applied, not in this build)",
                e.version, e.name
            ));
        }
        for e in &status.pending {
            lines.push(format!("pending   {} {}", e.version, e.name));
        }
        lines
    });
    Ok(exit::SUCCESS)
}

/// The value as one JSON document, or its text lines.
fn print<T: serde::Serialize>(json: bool, value: &T, lines: impl FnOnce() -> Vec<String>) {
    if json {
        print_json(value);
    } else {
        lines().iter().for_each(|l| out!("{l}"));
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(json) => out!("{json}"),
        Err(e) => log::error!("could not serialise the report: {e}"),
    }
}
