//! The image, run without Docker (no engine runs on the CI machines): the binary is started the
//! way the `Dockerfile` and `docker-compose.yml` start it, with every value read from those two
//! files rather than repeated here, so a change to either is what these tests run:
//!
//! - the final stage's `USER` (uid:gid), `ENTRYPOINT`, `CMD` and `ENV`;
//! - the compose `migrate` service's `command` and `environment`, its URL pointed at this test's
//!   database and its secret file (`/run/secrets/...` in the container) at a file of the same
//!   name under a temporary root, owned by the image's uid, mode 0400;
//! - nothing else in the environment (`env_clear`), `HOME` the image user's empty home.
//!
//! They also hold the compose file to what the issue asks of it: the postgres healthcheck goes
//! over TCP (so the image's first-start server, on the unix socket only, cannot pass it), and no
//! service's environment holds a password (`docker inspect` shows the environment).
//!
//! The run needs the password role of `scripts/test-setup.sh` (`mcm_pw`, scram-sha-256 on
//! 127.0.0.1) and root, to run the binary as the image's uid.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use meta_chat_migrations::embedded;
use postgres::NoTls;

/// The test role's password (`scripts/test-setup.sh`).
const PASSWORD: &str = "Pw-7f3a9c-never-printed";
const WRONG_PASSWORD: &str = "Wrong-5d0e4b-never-printed";
const ROLE: &str = "mcm_pw";

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile's final stage.

struct Image {
    uid: u32,
    gid: u32,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
}

/// The instructions of the Dockerfile's last stage (continuation lines joined, comments dropped).
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(t);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let start = joined
        .iter()
        .rposition(|l| l.to_uppercase().starts_with("FROM "))
        .expect("no FROM in the Dockerfile");
    joined[start..]
        .iter()
        .map(|l| {
            let (op, args) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_uppercase(), args.trim().to_string())
        })
        .collect()
}

fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} must be in exec (JSON array) form, got {args}: {e}"))
}

fn image() -> Image {
    let stage = final_stage(&repo_file("Dockerfile"));
    let last = |op: &str| {
        stage
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("the Dockerfile's final stage has no {op}"))
    };
    let user = last("USER");
    let (uid, gid) = user
        .split_once(':')
        .unwrap_or_else(|| panic!("USER {user}: give it as uid:gid, numeric"));
    let mut env = Vec::new();
    for (_, args) in stage.iter().filter(|(o, _)| o == "ENV") {
        if args.contains('=') {
            for pair in args.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        } else {
            let (k, v) = args.split_once(char::is_whitespace).unwrap();
            env.push((k.to_string(), v.trim().to_string()));
        }
    }
    Image {
        uid: uid.parse().expect("USER's uid is numeric"),
        gid: gid.parse().expect("USER's gid is numeric"),
        entrypoint: exec_form(&last("ENTRYPOINT"), "ENTRYPOINT"),
        cmd: exec_form(&last("CMD"), "CMD"),
        env,
    }
}

// ---------------------------------------------------------------------------------------------
// The compose file: a reader for the block YAML it is written in (mappings, `- item` lists,
// JSON-style flow lists, plain or quoted scalars); anything else panics, naming the line.

#[derive(Debug, Clone)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, path: &[&str]) -> &Yaml {
        path.iter().fold(self, |node, key| {
            node.get(key)
                .unwrap_or_else(|| panic!("docker-compose.yml has no {}", path.join(".")))
        })
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Str(s) => s,
            other => panic!("expected a scalar, got {other:?}"),
        }
    }

    fn strings(&self) -> Vec<String> {
        match self {
            Yaml::Seq(items) => items.iter().map(|i| i.str().to_string()).collect(),
            other => panic!("expected a list, got {other:?}"),
        }
    }

    /// A service's `environment`, in either of compose's forms (mapping or `KEY=value` list).
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Yaml::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), v.str().to_string()))
                .collect(),
            Yaml::Seq(items) => items
                .iter()
                .map(|i| {
                    let (k, v) = i.str().split_once('=').unwrap_or((i.str(), ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            Yaml::Str(s) => panic!("environment: {s}"),
        }
    }
}

fn scalar(text: &str) -> Yaml {
    let t = text.trim();
    if t.starts_with('[') {
        return Yaml::Seq(
            serde_json::from_str::<Vec<String>>(t)
                .unwrap_or_else(|e| panic!("flow list {t}: {e}"))
                .into_iter()
                .map(Yaml::Str)
                .collect(),
        );
    }
    let unquoted = [('"', '"'), ('\'', '\'')]
        .iter()
        .find_map(|(a, b)| t.strip_prefix(*a).and_then(|r| r.strip_suffix(*b)));
    Yaml::Str(unquoted.unwrap_or(t).to_string())
}

/// `text` without a trailing ` # comment` (outside quotes).
fn strip_comment(text: &str) -> &str {
    let mut quote = None;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || bytes[i - 1] == b' ' => return &text[..i],
            _ => {}
        }
    }
    text
}

fn parse_yaml(text: &str) -> Yaml {
    let lines: Vec<(usize, String)> = text
        .lines()
        .map(strip_comment)
        .filter(|l| !l.trim().is_empty())
        .map(|l| (l.len() - l.trim_start().len(), l.trim().to_string()))
        .collect();
    let mut i = 0;
    let doc = block(&lines, &mut i, 0);
    assert_eq!(
        i,
        lines.len(),
        "docker-compose.yml: cannot read {:?}",
        lines[i].1
    );
    doc
}

fn block(lines: &[(usize, String)], i: &mut usize, indent: usize) -> Yaml {
    if lines[*i].1.starts_with("- ") || lines[*i].1 == "-" {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].0 == indent && lines[*i].1.starts_with('-') {
            let item = lines[*i].1[1..].trim().to_string();
            assert!(
                !item.contains(": "),
                "docker-compose.yml: a mapping in a list is not read here: {item}"
            );
            items.push(scalar(&item));
            *i += 1;
        }
        return Yaml::Seq(items);
    }
    let mut entries = Vec::new();
    while *i < lines.len() && lines[*i].0 == indent {
        let line = &lines[*i].1;
        let (key, rest) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("docker-compose.yml: not a `key: value` line: {line}"));
        let (key, rest) = (key.trim().to_string(), rest.trim().to_string());
        *i += 1;
        let value = if !rest.is_empty() {
            scalar(&rest)
        } else if *i < lines.len()
            && (lines[*i].0 > indent || (lines[*i].0 == indent && lines[*i].1.starts_with('-')))
        {
            let child = lines[*i].0;
            block(lines, i, child)
        } else {
            Yaml::Str(String::new())
        };
        entries.push((key, value));
    }
    Yaml::Map(entries)
}

fn compose() -> Yaml {
    parse_yaml(&repo_file("docker-compose.yml"))
}

// ---------------------------------------------------------------------------------------------
// The run.

/// The uid of this test process (the run as the image's uid needs root).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// A database owned by the password role.
fn password_db() -> TestDb {
    let db = TestDb::new();
    let mut admin = postgres::Client::connect(&admin_url(), NoTls).unwrap();
    admin
        .batch_execute(&format!("ALTER DATABASE {} OWNER TO {ROLE}", db.name))
        .unwrap_or_else(|e| panic!("the role {ROLE} is missing: run scripts/test-setup.sh ({e})"));
    db
}

/// A filesystem root for one run: the binary at the ENTRYPOINT's path, the image user's empty
/// home, and the compose secret's directory, each traversable by the image's uid.
struct Root {
    dir: TempDir,
    image: Image,
}

impl Root {
    fn new(image: Image) -> Root {
        assert!(
            running_as_root(),
            "tests/container.rs runs the binary as the image's uid {}: run it as root",
            image.uid
        );
        let dir = TempDir::new("container");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = Root { dir, image };
        let bin = root.path(&root.image.entrypoint[0]);
        root.mkdir(bin.parent().unwrap());
        std::fs::copy(env!("CARGO_BIN_EXE_meta-chat-migrate"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = root.home();
        root.mkdir(&home);
        std::os::unix::fs::chown(&home, Some(root.image.uid), Some(root.image.gid)).unwrap();
        root
    }

    /// `path` (absolute, in the container) under this root.
    fn path(&self, path: &str) -> PathBuf {
        self.dir.0.join(path.trim_start_matches('/'))
    }

    fn home(&self) -> PathBuf {
        self.path("/home/nonroot")
    }

    /// Creates `dir` and its parents under the root, mode 0755.
    fn mkdir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut d = dir;
        while d != self.dir.0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            d = d.parent().unwrap();
        }
    }

    /// Writes the secret at `path` (in the container) with `owner` and `mode`.
    fn secret(&self, path: &str, content: &str, owner: (u32, u32), mode: u32) -> PathBuf {
        let file = self.path(path);
        self.mkdir(file.parent().unwrap());
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&file, Some(owner.0), Some(owner.1)).unwrap();
        file
    }

    /// The compose `migrate` service's command line, as the image runs it: ENTRYPOINT then the
    /// service's command (else the image's CMD), the image's ENV then the service's environment,
    /// and nothing else. `args`, if given, replace the command (as `docker compose run migrate
    /// ARGS` does). The URL goes to `db` as the password role; `/run/secrets/...` under the root.
    fn command(&self, db: &TestDb, args: Option<&[&str]>, as_image_user: bool) -> Command {
        let service = compose();
        let migrate = service.at(&["services", "migrate"]);
        let mut cmd = Command::new(self.path(&self.image.entrypoint[0]));
        cmd.args(&self.image.entrypoint[1..]);
        match (args, migrate.get("command")) {
            (Some(args), _) => cmd.args(args),
            (None, Some(command)) => cmd.args(command.strings()),
            (None, None) => cmd.args(&self.image.cmd),
        };
        cmd.env_clear();
        cmd.envs(self.image.env.iter().map(|(k, v)| (k, v)));
        for (key, value) in migrate.at(&["environment"]).env() {
            let value = if let Some(secret) = value.strip_prefix("/run/secrets/") {
                self.path(&format!("/run/secrets/{secret}"))
                    .display()
                    .to_string()
            } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
                let url = with_host_port(&value, "127.0.0.1", server_port());
                with_dbname(&with_user(&url, ROLE), &db.name)
            } else {
                value
            };
            cmd.env(key, value);
        }
        cmd.env("HOME", self.home()).current_dir(&self.dir.0);
        if as_image_user {
            cmd.uid(self.image.uid).gid(self.image.gid);
        }
        cmd
    }
}

/// The compose `migrate` service's secret: the variable that names it and its path.
fn migrate_secret() -> (String, String) {
    let secrets: Vec<(String, String)> = compose()
        .at(&["services", "migrate", "environment"])
        .env()
        .into_iter()
        .filter(|(_, v)| v.starts_with("/run/secrets/"))
        .collect();
    assert_eq!(
        secrets.len(),
        1,
        "the migrate service should name one secret file: {secrets:?}"
    );
    secrets.into_iter().next().unwrap()
}

fn assert_secret_free(label: &str, out: &Output) {
    for secret in [PASSWORD, WRONG_PASSWORD, "7f3a9c", "5d0e4b"] {
        for (stream, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
            assert!(
                !text.contains(secret),
                "{label}: password in {stream}:\n{text}"
            );
        }
    }
}

fn history_count(db: &TestDb) -> i64 {
    let mut admin = postgres::Client::connect(&db.url, NoTls).unwrap();
    let exists = count(
        &mut admin,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'refinery_schema_history'",
    );
    if exists == 0 {
        return 0;
    }
    count(&mut admin, "SELECT count(*) FROM refinery_schema_history")
}

#[test]
fn the_image_migrates_as_its_user_with_the_password_from_the_secret_file() {
    let image = image();
    assert_ne!(image.uid, 0, "the image must not run as root");
    let (uid, gid) = (image.uid, image.gid);
    let root = Root::new(image);
    let db = password_db();
    let (var, path) = migrate_secret();

    // A wrong password in the file fails: the file is what authenticates, not trust.
    root.secret(&path, &format!("{WRONG_PASSWORD}\n"), (uid, gid), 0o400);
    let out = root.command(&db, None, true).output().unwrap();
    assert_secret_free("wrong password", &out);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(error_line(&out).contains("28P01"), "{}", stderr(&out));
    assert_eq!(history_count(&db), 0, "migrated with a wrong password");

    root.secret(&path, &format!("{PASSWORD}\n"), (uid, gid), 0o400);
    let out = root.command(&db, None, true).output().unwrap();
    assert_secret_free("migrate", &out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{var}={path} as uid {uid}:\n{}",
        stderr(&out)
    );
    assert_eq!(
        history_count(&db),
        embedded::migrations().len() as i64,
        "history rows"
    );

    // `docker compose run --rm migrate verify`: the same invocation, another command.
    let out = root.command(&db, Some(&["verify"]), true).output().unwrap();
    assert_secret_free("verify", &out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_secret_only_root_can_read_is_refused_naming_its_path() {
    let image = image();
    let root = Root::new(image);
    let db = password_db();
    let (var, path) = migrate_secret();
    let file = root.secret(&path, &format!("{PASSWORD}\n"), (0, 0), 0o600);

    // As the image's user: it cannot read a root-only file, so it runs as that user.
    let out = root.command(&db, None, true).output().unwrap();
    assert_secret_free("unreadable secret", &out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&var) && line.contains(&file.display().to_string()),
        "the error names the variable and the path: {line}"
    );
    assert!(line.contains("cannot read"), "{line}");
    assert_eq!(history_count(&db), 0);

    // The same invocation as root reads it and migrates: the uid made the difference.
    let out = root.command(&db, None, false).output().unwrap();
    assert_secret_free("as root", &out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(history_count(&db), embedded::migrations().len() as i64);
}

// ---------------------------------------------------------------------------------------------
// What the compose file promises.

#[test]
fn the_postgres_healthcheck_goes_over_tcp() {
    let test = compose()
        .at(&["services", "postgres", "healthcheck", "test"])
        .strings();
    let argv: Vec<String> = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => test[1].split_whitespace().map(str::to_string).collect(),
        other => panic!("healthcheck test: {other:?}"),
    };
    assert_eq!(argv[0], "pg_isready", "{argv:?}");
    let flag = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("the healthcheck has no {name}: {argv:?}"))
    };
    assert_eq!(flag("-h"), "127.0.0.1", "{argv:?}");
    let port = flag("-p");

    // The parsed check is a working pg_isready: it passes against the test server over TCP
    // (the compose file's port swapped for the test server's) ...
    let run = |port: u16| {
        let mut args = argv[1..].to_vec();
        let i = args.iter().position(|a| a == "-p").unwrap();
        args[i + 1] = port.to_string();
        let bin = client_bin("pg_isready");
        Command::new(bin).args(&args).env_clear().output().unwrap()
    };
    assert!(port.parse::<u16>().is_ok(), "-p {port}");
    let up = run(server_port());
    assert_eq!(up.status.code(), Some(0), "{}", stdout(&up));
    // ... and fails where nothing listens on TCP, whatever a socket would say.
    let down = run(free_port());
    assert_eq!(down.status.code(), Some(2), "{}", stdout(&down));
}

/// Every place a compose service's environment could leak a password.
fn password_leaks(compose: &Yaml) -> Vec<String> {
    let Some(Yaml::Map(services)) = compose.get("services") else {
        panic!("docker-compose.yml has no services");
    };
    let mut leaks = Vec::new();
    for (name, service) in services {
        let Some(env) = service.get("environment") else {
            continue;
        };
        for (key, value) in env.env() {
            let upper = key.to_uppercase();
            if upper.contains("PASSWORD") && !upper.ends_with("_FILE") {
                leaks.push(format!("{name}: {key}"));
            }
            if value.contains("PASSWORD=") {
                leaks.push(format!("{name}: {key} sets a password"));
            }
            if let Some((_, rest)) = value.split_once("://") {
                let userinfo = rest.split('/').next().unwrap_or("");
                if userinfo
                    .rsplit_once('@')
                    .is_some_and(|(u, _)| u.contains(':'))
                {
                    leaks.push(format!("{name}: {key} has a password in its URL"));
                }
            }
            if value.contains("password=") {
                leaks.push(format!("{name}: {key} has a password= parameter"));
            }
        }
    }
    leaks
}

#[test]
fn no_compose_service_holds_a_password_in_its_environment() {
    let leaks = password_leaks(&compose());
    assert!(leaks.is_empty(), "docker-compose.yml: {leaks:?}");

    // The check finds each kind of leak (the compose file as it was, and the list form).
    let leaky = parse_yaml(
        "services:\n  postgres:\n    environment:\n      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?x}\n\
         \x20 migrate:\n    environment:\n      DATABASE_URL: postgres://chat:${POSTGRES_PASSWORD}@postgres:5432/chat\n\
         \x20 other:\n    environment:\n      - OPTS=POSTGRES_PASSWORD=x\n      - DSN=host=db password=x\n",
    );
    assert_eq!(
        password_leaks(&leaky).len(),
        4,
        "{:?}",
        password_leaks(&leaky)
    );

    // And where the password does come from: a file secret, mounted where the services read it.
    let compose = compose();
    let file = compose
        .at(&["secrets", "postgres_password", "file"])
        .str()
        .to_string();
    assert!(file.contains("secrets/postgres_password"), "{file}");
    let (_, path) = migrate_secret();
    assert_eq!(path, "/run/secrets/postgres_password");
    for service in ["postgres", "migrate", "partitions"] {
        let secrets = compose.at(&["services", service, "secrets"]).strings();
        assert_eq!(secrets, ["postgres_password"], "{service}");
    }
    let postgres = compose.at(&["services", "postgres", "environment"]).env();
    assert!(
        postgres.contains(&("POSTGRES_PASSWORD_FILE".into(), path.clone())),
        "{postgres:?}"
    );
}
