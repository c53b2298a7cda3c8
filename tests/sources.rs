//! Where the database comes from, through the binary: the documented precedence
//! (`--database-url` > `--database-url-file` > `DATABASE_URL` > `DATABASE_URL_FILE` > libpq's
//! variables > the development default), the `*_FILE` secrets, libpq's variables filling only
//! what a URL lacks, and Prisma's URL options. Each source is shown to be read by pointing a
//! lower one at a database that does not exist (which fails when it is the one used).

mod common;

use std::process::Output;

use common::*;
use meta_chat_migrations::embedded;

const NO_SUCH_DB: &str = "mcm_no_such_database";

/// `status` with `args` before it and `env` set (on top of the hermetic environment).
fn status(args: &[&str], env: &[(&str, &str)]) -> Output {
    runner_bin()
        .args(["--wait", "5s"])
        .args(args)
        .arg("status")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn assert_ok(label: &str, out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{label}: {}", stderr(out));
}

fn assert_refused(label: &str, out: &Output, code: i32, says: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "{label}: {}", stderr(out));
    for s in says {
        assert!(
            error_line(out).contains(s),
            "{label}: no {s:?} in:\n{}",
            stderr(out)
        );
    }
}

#[test]
fn each_source_wins_over_the_ones_below_it() {
    let db = TestDb::new();
    let bad = with_dbname(&db.url, NO_SUCH_DB);
    let dir = TempDir::new("sources");
    let good_file = dir.file("good", &format!("{}\n", db.url), 0o600);
    let bad_file = dir.file("bad", &format!("{bad}\n"), 0o600);
    let (good_file, bad_file) = (good_file.to_str().unwrap(), bad_file.to_str().unwrap());
    let pg_bad: [(&str, &str); 3] = [
        ("PGHOST", "127.0.0.1"),
        ("PGUSER", "postgres"),
        ("PGDATABASE", NO_SUCH_DB),
    ];
    // The negative first: every "bad" source really fails when it is the one used.
    assert_refused(
        "bad flag",
        &status(&["--database-url", &bad], &[]),
        1,
        &["3D000"],
    );
    assert_refused(
        "bad file flag",
        &status(&["--database-url-file", bad_file], &[]),
        1,
        &[NO_SUCH_DB],
    );
    assert_refused(
        "bad DATABASE_URL",
        &status(&[], &[("DATABASE_URL", &bad)]),
        1,
        &[NO_SUCH_DB],
    );
    assert_refused(
        "bad DATABASE_URL_FILE",
        &status(&[], &[("DATABASE_URL_FILE", bad_file)]),
        1,
        &[NO_SUCH_DB],
    );
    assert_refused("bad PG*", &status(&[], &pg_bad), 1, &[NO_SUCH_DB]);

    assert_ok(
        "flag over DATABASE_URL",
        &status(&["--database-url", &db.url], &[("DATABASE_URL", &bad)]),
    );
    assert_ok(
        "file flag over DATABASE_URL",
        &status(
            &["--database-url-file", good_file],
            &[("DATABASE_URL", &bad)],
        ),
    );
    assert_ok(
        "flag over DATABASE_URL_FILE",
        &status(
            &["--database-url", &db.url],
            &[("DATABASE_URL_FILE", bad_file)],
        ),
    );
    assert_ok(
        "DATABASE_URL over PG*",
        &status(&[], &[("DATABASE_URL", &db.url), pg_bad[2]]),
    );
    assert_ok(
        "DATABASE_URL_FILE over PG*",
        &status(&[], &[("DATABASE_URL_FILE", good_file), pg_bad[2]]),
    );
    let port = server_port().to_string();
    let pg_good = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", "postgres"),
        ("PGDATABASE", db.name.as_str()),
    ];
    let out = status(&[], &pg_good);
    assert_ok("PG* as psql reads them", &out);
    assert!(
        !stderr(&out).contains("development default"),
        "{}",
        stderr(&out)
    );
    // An empty variable is a mistake, not "unset": it does not fall through to the PG* ones.
    assert_refused(
        "empty DATABASE_URL",
        &status(
            &[],
            &[
                ("DATABASE_URL", ""),
                pg_good[0],
                pg_good[1],
                pg_good[2],
                pg_good[3],
            ],
        ),
        2,
        &["DATABASE_URL is set but empty"],
    );
}

#[test]
fn two_sources_of_one_level_are_refused_naming_both() {
    let db = TestDb::new();
    let dir = TempDir::new("sources");
    let file = dir.file("url", &db.url, 0o600);
    let file = file.to_str().unwrap();
    let out = status(
        &["--database-url", &db.url, "--database-url-file", file],
        &[],
    );
    assert_refused(
        "both flags",
        &out,
        2,
        &["--database-url and --database-url-file"],
    );
    let out = status(
        &[],
        &[("DATABASE_URL", &db.url), ("DATABASE_URL_FILE", file)],
    );
    assert_refused(
        "both variables",
        &out,
        2,
        &["DATABASE_URL and DATABASE_URL_FILE"],
    );
    // Without the second one, each works (the refusal above was about having both).
    assert_ok("file alone", &status(&["--database-url-file", file], &[]));
}

#[test]
fn a_missing_or_empty_url_file_is_a_usage_error_naming_the_path() {
    let dir = TempDir::new("sources");
    let missing = dir.0.join("no-such-file");
    let missing = missing.to_str().unwrap();
    let out = status(&["--database-url-file", missing], &[]);
    assert_refused(
        "missing file flag",
        &out,
        2,
        &["--database-url-file", missing],
    );
    let out = status(&[], &[("DATABASE_URL_FILE", missing)]);
    assert_refused(
        "missing DATABASE_URL_FILE",
        &out,
        2,
        &["DATABASE_URL_FILE", missing],
    );
    let empty = dir.file("empty", "\n", 0o600);
    let out = status(&["--database-url-file", empty.to_str().unwrap()], &[]);
    assert_refused("empty file", &out, 2, &["is empty"]);
}

#[test]
fn the_development_default_is_used_only_when_nothing_is_configured_and_says_so() {
    let out = runner_bin()
        .args(["--wait", "1s", "status"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("using the development default host=localhost port=5432 database=postgres user=postgres"),
        "{}",
        stderr(&out)
    );
    let db = TestDb::new();
    let out = status(&[], &[("DATABASE_URL", &db.url)]);
    assert_ok("DATABASE_URL", &out);
    assert!(
        !stderr(&out).contains("development default"),
        "{}",
        stderr(&out)
    );
    // A libpq variable that does not say where (a password, a TLS mode) keeps the default.
    let out = runner_bin()
        .args(["--wait", "1s", "status"])
        .env("PGSSLMODE", "bogus")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("development default"),
        "{}",
        stderr(&out)
    );
    assert_refused("PGSSLMODE fills the default", &out, 2, &["sslmode must be"]);
}

#[test]
fn libpq_variables_fill_only_what_the_url_lacks() {
    let db = TestDb::new();
    // The URL names its database: PGDATABASE does not replace it.
    assert_ok(
        "URL's dbname kept",
        &status(&["--database-url", &db.url], &[("PGDATABASE", NO_SUCH_DB)]),
    );
    // The URL names none: PGDATABASE fills it.
    let no_db = format!("postgres://postgres@127.0.0.1:{}", server_port());
    assert_ok(
        "PGDATABASE fills",
        &status(&["--database-url", &no_db], &[("PGDATABASE", &db.name)]),
    );
    assert_refused(
        "PGDATABASE fills (negative)",
        &status(&["--database-url", &no_db], &[("PGDATABASE", NO_SUCH_DB)]),
        1,
        &[NO_SUCH_DB],
    );
    // PGSSLMODE fills a URL without sslmode, and not one with it.
    let out = status(
        &["--database-url", &db.url],
        &[("PGSSLMODE", "verify-full")],
    );
    assert_refused("PGSSLMODE read", &out, 2, &["needs sslrootcert"]);
    let with_mode = format!("{}?sslmode=disable", db.url);
    assert_ok(
        "URL's sslmode kept",
        &status(
            &["--database-url", &with_mode],
            &[("PGSSLMODE", "verify-full")],
        ),
    );
    // PGCONNECT_TIMEOUT is libpq's connect_timeout: a bad one is named.
    let out = status(
        &["--database-url", &db.url],
        &[("PGCONNECT_TIMEOUT", "soon")],
    );
    assert_refused("PGCONNECT_TIMEOUT read", &out, 2, &["connect_timeout"]);
}

#[test]
fn prisma_urls_name_the_schema_and_their_pool_options_are_ignored_with_one_warning() {
    let db = TestDb::new();
    db.client().batch_execute("CREATE SCHEMA tenant_a").unwrap();
    let url = format!(
        "{}?schema=tenant_a&connection_limit=5&pool_timeout=10&socket_timeout=3&sslaccept=strict&statement_cache_size=0&connect_timeout=5",
        db.url
    );
    let out = runner_bin()
        .args([
            "--database-url",
            &url,
            "--wait",
            "5s",
            "migrate",
            "--target",
        ])
        .arg(embedded::BASELINE.to_string())
        .output()
        .unwrap();
    assert_ok("prisma URL", &out);
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("ignoring ")).collect();
    assert_eq!(warnings.len(), 1, "{}", stderr(&out));
    for option in [
        "connection_limit",
        "pool_timeout",
        "socket_timeout",
        "sslaccept",
        "statement_cache_size",
    ] {
        assert!(warnings[0].contains(option), "{option}: {}", warnings[0]);
    }
    let mut c = db.client();
    let in_schema = |c: &mut postgres::Client, schema: &str| -> i64 {
        count(c, &format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND tablename = 'refinery_schema_history'"))
    };
    assert_eq!(
        in_schema(&mut c, "tenant_a"),
        1,
        "the history is in the URL's schema"
    );
    assert_eq!(in_schema(&mut c, "public"), 0, "and not in public");

    // --schema and the URL's schema must agree.
    let out = status(&["--database-url", &url, "--schema", "public"], &[]);
    assert_refused(
        "two schemas",
        &out,
        2,
        &["--schema public", "schema=tenant_a"],
    );
    assert_ok(
        "same schema",
        &status(&["--database-url", &url, "--schema", "tenant_a"], &[]),
    );
}

#[test]
fn pgbouncer_true_is_refused_with_a_hint_to_use_the_direct_url() {
    let db = TestDb::new();
    let out = status(
        &["--database-url", &format!("{}?pgbouncer=true", db.url)],
        &[],
    );
    assert_refused("pgbouncer=true", &out, 2, &["pgbouncer=true", "directUrl"]);
    assert_ok(
        "pgbouncer=false",
        &status(
            &["--database-url", &format!("{}?pgbouncer=false", db.url)],
            &[],
        ),
    );
    let out = status(&["--database-url", &format!("{}?schema=", db.url)], &[]);
    assert_refused("empty schema", &out, 2, &["schema (Prisma)"]);
    let out = status(&["--database-url", &format!("{}?pool_size=3", db.url)], &[]);
    assert_refused(
        "an option neither libpq's nor Prisma's",
        &out,
        2,
        &["\"pool_size\""],
    );
}

/// libpq's service file: `PGSERVICE` or `service=` names a section of `PGSERVICEFILE` (or
/// `~/.pg_service.conf`, then `PGSYSCONFDIR/pg_service.conf`); its values fill what the string
/// does not give. A service no file defines, or a `PGSERVICEFILE` that does not exist, is an
/// error; none falls through to the development default.
#[test]
fn service_files_are_read_as_libpq_reads_them() {
    let db = TestDb::new();
    let dir = TempDir::new("service");
    let section = format!(
        "# the platform\n[chat]\nhost=127.0.0.1\nport={}\ndbname={}\nuser=postgres\n",
        server_port(),
        db.name
    );
    let file = dir.file("services.conf", &section, 0o600);
    let file = file.to_str().unwrap();
    assert_ok(
        "PGSERVICE",
        &status(&[], &[("PGSERVICE", "chat"), ("PGSERVICEFILE", file)]),
    );
    assert_ok(
        "service=",
        &status(
            &["--database-url", "service=chat"],
            &[("PGSERVICEFILE", file)],
        ),
    );
    // What the string gives wins over the service.
    assert_refused(
        "string over service",
        &status(
            &[
                "--database-url",
                &format!("service=chat dbname={NO_SUCH_DB}"),
            ],
            &[("PGSERVICEFILE", file)],
        ),
        1,
        &[NO_SUCH_DB],
    );
    // The service file comes before the other PG* variables, as psql reads them: PGDATABASE
    // and PGPORT fill only what the service lacks (here, nothing).
    assert_ok(
        "service over PGDATABASE and PGPORT",
        &status(
            &[],
            &[
                ("PGSERVICE", "chat"),
                ("PGSERVICEFILE", file),
                ("PGDATABASE", NO_SUCH_DB),
                ("PGPORT", "1"),
            ],
        ),
    );
    let sysconf = TempDir::new("sysconf");
    sysconf.file("pg_service.conf", &section, 0o644);
    assert_ok(
        "PGSYSCONFDIR",
        &status(
            &[],
            &[
                ("PGSERVICE", "chat"),
                ("PGSYSCONFDIR", sysconf.0.to_str().unwrap()),
            ],
        ),
    );
    let out = status(&[], &[("PGSERVICE", "nope"), ("PGSERVICEFILE", file)]);
    assert_refused(
        "unknown service",
        &out,
        2,
        &["service \"nope\"", "is defined in none of"],
    );
    assert!(
        !stderr(&out).contains("development default"),
        "{}",
        stderr(&out)
    );
    assert_refused(
        "missing PGSERVICEFILE",
        &status(
            &[],
            &[
                ("PGSERVICE", "chat"),
                ("PGSERVICEFILE", "/nonexistent/pg_service.conf"),
            ],
        ),
        2,
        &["PGSERVICEFILE /nonexistent/pg_service.conf: no such file"],
    );
}

/// A variable that names the database, set but empty, is an error, not the development default.
#[test]
fn empty_database_variables_are_errors() {
    for var in ["DATABASE_URL", "DATABASE_URL_FILE", "PGSERVICE"] {
        let out = status(&[], &[(var, "")]);
        assert_refused(var, &out, 2, &[&format!("{var} is set but empty")]);
        assert!(
            !stderr(&out).contains("development default"),
            "{}",
            stderr(&out)
        );
    }
    assert_refused(
        "--database-url ''",
        &status(&["--database-url", ""], &[]),
        2,
        &["--database-url is empty"],
    );
}

/// `user:@host` is no password, as psql takes it: `PGPASSWORD` gives it. The negative: the
/// same URL with no password anywhere is refused by the server.
#[test]
fn an_empty_url_password_falls_back_to_pgpassword() {
    let db = TestDb::new();
    let url = format!("postgres://mcm_pw:@127.0.0.1:{}/{}", server_port(), db.name);
    assert_ok(
        "PGPASSWORD",
        &status(
            &["--database-url", &url],
            &[("PGPASSWORD", "Pw-7f3a9c-never-printed")],
        ),
    );
    let out = status(&["--database-url", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(error_line(&out).contains("password"), "{}", stderr(&out));
}

/// A password file line whose password holds unescaped `:` gives the whole rest of the line as
/// the password, as libpq reads it; the server (scram-sha-256) takes it.
#[test]
fn a_password_with_unescaped_colons_in_the_password_file_logs_in() {
    let cluster = Cluster::start(
        &[],
        "",
        Some("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"),
    );
    cluster
        .admin()
        .batch_execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE colon LOGIN PASSWORD 'pa:ss:wo\\rd'")
        .unwrap();
    let dir = TempDir::new("pgpass");
    let file = dir.file(
        "pgpass",
        &format!("127.0.0.1:{}:*:colon:pa:ss:wo\\\\rd\n", cluster.port),
        0o600,
    );
    let url = format!("postgres://colon@127.0.0.1:{}/postgres", cluster.port);
    let out = status(
        &["--database-url", &url],
        &[("PGPASSFILE", file.to_str().unwrap())],
    );
    assert_ok("unescaped colons", &out);
    assert!(!stderr(&out).contains("pa:ss"), "{}", stderr(&out));
}
