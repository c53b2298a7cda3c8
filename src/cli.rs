//! The command line of `meta-chat-migrate`: its flags, subcommands and what each prints. Behind
//! the default `cli` feature, so that the library an application boots with does not pull in
//! clap. `main.rs` only sets up logging and signals and turns the outcome into an exit code.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    parse_day, parse_duration, DEFAULT_JOBS, DEFAULT_MAX_MOVED_ROWS, DEFAULT_PREMAKE,
};
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
  3  rows a key would refuse (check, or migrate refusing under --orphans refuse)
  4  a verify assertion failed or could not run (also: the schema is not migrated)
  5  check: a partition window reaches fewer than --premake months ahead, a DEFAULT
     partition holds rows, or a helper CHECK of the runner is left
  6  check: drift: an object an applied version declares is missing, invalid or of another
     shape (migrate restores it online); 3 wins over 6, and 6 over 5
  7  status --exit-code: a version is pending, divergent or unknown
  130, 143  stopped by SIGINT or SIGTERM: the run's statements were cancelled on the server
     and the migration lock released";

/// Applies and checks the meta-chat PostgreSQL schema.
#[derive(Parser)]
#[command(name = "meta-chat-migrate", version = crate::VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE [default: DATABASE_URL, DATABASE_URL_FILE, libpq's PG* variables, else postgres://postgres@localhost:5432/postgres]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,

    /// Read the URL from this file (a mounted secret): one line; a byte-order mark, line ends and blank lines are ignored.
    #[arg(long, global = true, value_name = "PATH")]
    database_url_file: Option<std::path::PathBuf>,

    /// How long to wait for the database to accept connections.
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration)]
    wait: Duration,

    /// The schema that holds the platform's tables and history (set as search_path on every session) [default: the URL's ?schema=, else public]
    #[arg(long, global = true)]
    schema: Option<String>,

    /// How log lines are written to stderr: text, or json (one object per line: time, level,
    /// message, fields) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MCM_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The form of the log lines on stderr.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL] message`, for people.
    Text,
    /// `{"time", "level", "message", "fields": {"target"}}`, one object per line.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply pending migrations online, then keep the monthly partitions ahead.
    Migrate(MigrateArgs),
    /// Create the monthly partitions from the current month through --premake months ahead.
    Partitions(PartitionsArgs),
    /// Show applied, pending, divergent and unknown versions. Read-only: creates nothing. Exit 7 with --exit-code when not current.
    Status(StatusArgs),
    /// Count rows the keys would refuse; show keys, indexes and partition windows. Exit 3 or 5.
    Check(CheckArgs),
    /// Run the spec's seven assertions and three of tenant consistency, rolled back. Exit 4 on failure.
    Verify(JsonArg),
}

#[derive(Args)]
pub struct LockArgs {
    /// lock_timeout for DDL whose lock would block writes while it waits.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    lock_timeout: Duration,
    /// Retries (with backoff and jitter) of a step that hit lock_timeout.
    #[arg(long, default_value_t = 10)]
    lock_retries: u32,
    /// How long to wait for the migration lock [default: as long as a live runner holds it]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    lock_wait: Option<Duration>,
    /// How often a step that runs long (an index build, a validation) logs its progress.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    progress_every: Duration,
}

#[derive(Args)]
pub struct WindowArgs {
    /// Months of partitions to keep ahead of the current one.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PREMAKE, value_parser = clap::value_parser!(u32).range(0..=120))]
    premake: u32,
    /// Rows that may be moved out of one table's DEFAULT partition in one run (writers of the
    /// table wait for the move); above it, that table's months to move are not created.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_MOVED_ROWS)]
    max_moved_rows: u64,
    /// The day the window starts from, instead of today (UTC), e.g. to rehearse with --dry-run.
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_day)]
    as_of: Option<String>,
}

#[derive(Args)]
pub struct PartitionsArgs {
    #[command(flatten)]
    window: WindowArgs,
    #[command(flatten)]
    lock: LockArgs,
    /// Print what would be created (months, rows moved from DEFAULT, locks) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Exit 5 when a window of partitions reaches fewer months ahead than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PREMAKE, value_parser = clap::value_parser!(u32).range(0..=120))]
    premake: u32,
    /// The day the window is judged from, instead of today (UTC).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_day)]
    as_of: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Exit 7 when a version is pending, divergent or unknown (a deploy gate).
    #[arg(long)]
    exit_code: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
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
    #[command(flatten)]
    lock: LockArgs,
    #[command(flatten)]
    window: WindowArgs,
    /// Do not create the monthly partitions ahead at the end (run `partitions` instead).
    #[arg(long)]
    skip_partitions: bool,
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
        Command::Partitions(args) => partitions(settings, args),
        Command::Status(a) => status(&settings, &a),
        Command::Check(a) => {
            settings.premake = a.premake;
            settings.as_of = a.as_of;
            let report = crate::check(&settings)?;
            print(a.json, &report, || report.lines());
            Ok(report.exit_code())
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
    args.lock.apply(&mut settings);
    args.window.apply(&mut settings);
    settings.skip_partitions = args.skip_partitions;
    if args.dry_run {
        let plan = crate::plan(&settings)?;
        print(args.json, &plan, || plan.lines());
        return Ok(exit::SUCCESS);
    }
    let mut done = None;
    let report = crate::migrate::migrate_keeping(&settings, &mut done).inspect_err(|_| {
        if let Some(d) = done {
            *DONE_BEFORE_ERROR.lock().unwrap() = serde_json::to_value(d).ok();
        }
    })?;
    print(args.json, &report, || {
        let mut lines = vec![format!(
            "{}: at version {} ({} migration(s) applied)",
            report.database,
            report.to.map_or("none".into(), |v| v.to_string()),
            report.applied.len()
        )];
        if let Some(e) = &report.partitions_error {
            lines.push(format!("monthly partitions ahead NOT created: {e}"));
        }
        lines
    });
    Ok(exit::SUCCESS)
}

impl LockArgs {
    fn apply(&self, settings: &mut Settings) {
        settings.lock_timeout = self.lock_timeout;
        settings.lock_retries = self.lock_retries;
        settings.lock_wait = self.lock_wait;
        settings.progress_every = self.progress_every;
    }
}

impl WindowArgs {
    fn apply(&self, settings: &mut Settings) {
        settings.premake = self.premake;
        settings.max_moved_rows = self.max_moved_rows;
        settings.as_of = self.as_of.clone();
    }
}

fn partitions(mut settings: Settings, args: PartitionsArgs) -> Result<i32, Error> {
    args.lock.apply(&mut settings);
    args.window.apply(&mut settings);
    if args.dry_run {
        let plan = crate::partitions::plan(&settings)?;
        print(args.json, &plan, || plan.lines());
        return Ok(exit::SUCCESS);
    }
    let report = crate::partitions(&settings)?;
    print(args.json, &report, || {
        let mut lines: Vec<String> = report
            .created
            .iter()
            .map(|c| {
                format!(
                    "created {} for {} ({} rows moved from DEFAULT)",
                    c.partition, c.month, c.rows_moved
                )
            })
            .collect();
        for w in &report.windows {
            lines.extend(crate::partitions::window_lines(w, report.premake));
        }
        lines.extend(
            report
                .not_created
                .iter()
                .map(|n| format!("NOT created: {n}")),
        );
        lines
    });
    report.into_result().map(|_| exit::SUCCESS)
}

fn status(settings: &Settings, args: &StatusArgs) -> Result<i32, Error> {
    let status = crate::status(settings)?;
    print(args.json, &status, || {
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
    let current =
        status.pending.is_empty() && status.divergent.is_empty() && status.unknown.is_empty();
    Ok(match args.exit_code && !current {
        true => exit::NOT_CURRENT,
        false => exit::SUCCESS,
    })
}

/// The value as one JSON document, or its text lines.
fn print<T: serde::Serialize>(json: bool, value: &T, lines: impl FnOnce() -> Vec<String>) {
    if json {
        print_json(value);
    } else {
        lines().iter().for_each(|l| out!("{l}"));
    }
}

/// What a failed `migrate` applied and did before its error (its report so far), for the JSON
/// error document. One command runs per process.
static DONE_BEFORE_ERROR: std::sync::Mutex<Option<serde_json::Value>> = std::sync::Mutex::new(None);

/// An error as the one JSON document of a `--json` run, on stdout:
/// `{"error": {"kind", "message", "exit_code", "sqlstate", "findings"}, "done": ...}`
/// (`sqlstate` when the server sent one or the error is one of PostgreSQL's, `findings` with the
/// rows a key would refuse, `done` the report of what a failed `migrate` applied and did before
/// the error, `null` when it had not begun).
pub fn print_error_json(err: &Error) {
    let findings = match err {
        Error::Orphans(f) => serde_json::to_value(f).ok(),
        _ => None,
    };
    print_json(&serde_json::json!({
        "error": {
            "kind": err.kind(),
            "message": err.to_string(),
            "exit_code": err.exit_code(),
            "sqlstate": err.sqlstate(),
            "findings": findings,
        },
        "done": DONE_BEFORE_ERROR.lock().unwrap().take(),
    }));
}

/// A usage error of the command line as the JSON error document (kind `usage`, exit 2).
pub fn print_usage_json(message: &str) {
    print_json(&serde_json::json!({
        "error": {
            "kind": "usage",
            "message": message,
            "exit_code": exit::USAGE,
            "sqlstate": null,
            "findings": null,
        }
    }));
}

impl Cli {
    /// The form of the log lines, `--log-format`.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// Whether the command was given `--json`: its errors are then JSON on stdout too.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Migrate(a) => a.json,
            Command::Partitions(a) => a.json,
            Command::Status(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Check(a) => a.json,
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(json) => out!("{json}"),
        Err(e) => log::error!("could not serialise the report: {e}"),
    }
}
