//! TLS as managed services need it, against a throwaway server with certificates made here
//! (openssl CLI): `verify-ca` checks the chain but not the host name while `verify-full` checks
//! both; a client certificate (PKCS#8 or RSA key, from the URL or `PGSSLCERT`/`PGSSLKEY`) logs
//! in where `pg_hba.conf` says `cert`; `sslrootcert=system` refuses a server the system does not
//! trust. Each configuration error fails at once, although `--wait` is a minute.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// A CA, a server certificate for `not-this-host.example` (so never for 127.0.0.1), a client
/// certificate for the role `mcm_cert` with its key as PKCS#8 and as RSA, and a second CA that
/// signed nothing here.
const MAKE_CERTS: &str = r#"set -e
ca() { openssl req -x509 -newkey rsa:2048 -nodes -keyout $1.key -out $1.crt -days 2 -subj /CN=$1 \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }
leaf() { openssl req -newkey rsa:2048 -nodes -keyout $1.key -out $1.csr -subj /CN=$2
  printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n$3\n" > $1.ext
  openssl x509 -req -in $1.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $1.crt -days 2 -extfile $1.ext; }
ca ca; ca other-ca
leaf server not-this-host.example "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:not-this-host.example"
leaf client mcm_cert "extendedKeyUsage=clientAuth"
leaf stranger mcm_cert "extendedKeyUsage=clientAuth"
openssl rsa -in client.key -out client-rsa.key -traditional
"#;

/// A new directory with the certificates `script` (bash, openssl) makes in it.
fn certificates(label: &str, script: &str) -> TempDir {
    let certs = TempDir::new(label);
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(&certs.0)
        .output()
        .expect("bash and openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    certs
}

struct TlsServer {
    cluster: Cluster,
    certs: TempDir,
}

impl TlsServer {
    fn start() -> TlsServer {
        let certs = certificates("certs", MAKE_CERTS);
        let read = |name: &str| std::fs::read_to_string(certs.0.join(name)).unwrap();
        let (crt, key, ca) = (read("server.crt"), read("server.key"), read("ca.crt"));
        let cluster = Cluster::start(
            &[
                ("server.crt", &crt, 0o644),
                ("server.key", &key, 0o600),
                ("root.crt", &ca, 0o644),
            ],
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
            Some(
                "local all all trust\n\
                 hostssl all mcm_cert 127.0.0.1/32 cert\n\
                 hostssl all postgres 127.0.0.1/32 trust\n\
                 host all all 127.0.0.1/32 reject\n",
            ),
        );
        let mut admin = cluster.admin();
        admin.batch_execute("CREATE ROLE mcm_cert LOGIN").unwrap();
        admin
            .batch_execute("CREATE DATABASE certdb OWNER mcm_cert")
            .unwrap();
        TlsServer { cluster, certs }
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.certs.0.join(name)
    }

    fn url(&self, user: &str, db: &str, query: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?{query}",
            self.cluster.port
        )
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `status` with `--wait 60s`; returns the output and how long it took.
fn status(url: &str, env: &[(&str, String)]) -> (Output, Duration) {
    let started = Instant::now();
    let out = runner_bin()
        .args(["--database-url", url, "--wait", "60s", "status"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn assert_fails_at_once(label: &str, (out, took): &(Output, Duration), code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{label}: {}", stderr(out));
    assert!(
        *took < Duration::from_secs(15),
        "{label}: took {took:?} with --wait 60s:\n{}",
        stderr(out)
    );
    assert!(
        error_line(out).contains(says),
        "{label}: expected {says:?} in:\n{}",
        stderr(out)
    );
}

#[test]
fn verify_ca_checks_the_chain_not_the_host_name_and_verify_full_checks_both() {
    let server = TlsServer::start();
    let ca = p(&server.cert("ca.crt"));
    let (out, _) = status(
        &server.url(
            "postgres",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "verify-ca: {}", stderr(&out));
    // libpq: require with a root certificate checks the chain, as verify-ca.
    let (out, _) = status(
        &server.url(
            "postgres",
            "postgres",
            &format!("sslmode=require&sslrootcert={ca}"),
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "require+root: {}", stderr(&out));

    let full = status(
        &server.url(
            "postgres",
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &[],
    );
    assert_fails_at_once(
        "verify-full, host name not in the certificate",
        &full,
        1,
        "certificate",
    );
    let other = p(&server.cert("other-ca.crt"));
    for mode in ["verify-ca", "require"] {
        let wrong_ca = status(
            &server.url(
                "postgres",
                "postgres",
                &format!("sslmode={mode}&sslrootcert={other}"),
            ),
            &[],
        );
        assert_fails_at_once(&format!("{mode}, another CA"), &wrong_ca, 1, "certificate");
    }
    // From libpq's variables, as psql would take them.
    let (out, _) = status(
        &format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            server.cluster.port
        ),
        &[("PGSSLMODE", "verify-ca".into()), ("PGSSLROOTCERT", ca)],
    );
    assert_eq!(out.status.code(), Some(0), "PGSSLMODE: {}", stderr(&out));
}

#[test]
fn a_client_certificate_logs_in_where_pg_hba_says_cert() {
    let server = TlsServer::start();
    let (crt, ca) = (p(&server.cert("client.crt")), p(&server.cert("ca.crt")));
    for key in ["client.key", "client-rsa.key"] {
        let key = p(&server.cert(key));
        let url = server.url(
            "mcm_cert",
            "certdb",
            &format!("sslmode=verify-ca&sslrootcert={ca}&sslcert={crt}&sslkey={key}"),
        );
        let (out, _) = status(&url, &[]);
        assert_eq!(out.status.code(), Some(0), "{key}: {}", stderr(&out));
    }
    let (out, _) = status(
        &server.url("mcm_cert", "certdb", "sslmode=require"),
        &[
            ("PGSSLCERT", crt.clone()),
            ("PGSSLKEY", p(&server.cert("client.key"))),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "PGSSLCERT: {}", stderr(&out));

    // Without a certificate the server refuses, and the runner does not wait.
    let none = status(&server.url("mcm_cert", "certdb", "sslmode=require"), &[]);
    assert_fails_at_once("no client certificate", &none, 1, "28000");
    // A key that is not the certificate's is refused before connecting, naming sslkey.
    let url = server.url(
        "mcm_cert",
        "certdb",
        &format!(
            "sslmode=require&sslcert={crt}&sslkey={}",
            p(&server.cert("stranger.key"))
        ),
    );
    let mismatch = status(&url, &[]);
    assert_fails_at_once("a key of another certificate", &mismatch, 2, "sslkey");
    let url = server.url(
        "mcm_cert",
        "certdb",
        "sslmode=require&sslcert=/nonexistent.crt&sslkey=/nonexistent.key",
    );
    let missing = status(&url, &[]);
    assert_fails_at_once(
        "a missing certificate file",
        &missing,
        2,
        "/nonexistent.crt",
    );
}

#[test]
fn sslrootcert_system_refuses_a_server_the_system_does_not_trust() {
    let server = TlsServer::start();
    let out = status(
        &server.url("postgres", "postgres", "sslrootcert=system"),
        &[],
    );
    assert_fails_at_once("system trust store", &out, 1, "certificate");
    assert!(
        error_line(&out.0).contains("UnknownIssuer"),
        "{}",
        stderr(&out.0)
    );
    // A weaker mode with the system store is refused, as libpq 16 refuses it.
    let weak = status(
        &server.url("postgres", "postgres", "sslmode=require&sslrootcert=system"),
        &[],
    );
    assert_fails_at_once(
        "require with system",
        &weak,
        2,
        "sslrootcert=system needs sslmode=verify-full",
    );
    // The same server, trusted through its CA: the refusal above was the store, not the server.
    let ca = p(&server.cert("ca.crt"));
    let (ok, _) = status(
        &server.url(
            "postgres",
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        &[],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
}

/// A server whose certificate is X.509 v1 (self-signed without extensions, as Citus makes its
/// own): `require` and `prefer` take it, as psql does, since they check no certificate; the
/// handshake's signature is still checked against its key. `verify-ca` refuses it.
#[test]
fn require_and_prefer_accept_an_x509_v1_certificate() {
    let certs = certificates(
        "v1",
        "set -e; openssl req -new -newkey rsa:2048 -nodes -keyout server.key -subj /CN=localhost -out server.csr 2>/dev/null
             openssl x509 -req -in server.csr -signkey server.key -days 2 -out server.crt 2>/dev/null
             openssl x509 -in server.crt -noout -text | grep -q 'Version: 1 (0x0)'",
    );
    let read = |name: &str| std::fs::read_to_string(certs.0.join(name)).unwrap();
    let cluster = Cluster::start(
        &[
            ("server.crt", &read("server.crt"), 0o644),
            ("server.key", &read("server.key"), 0o600),
        ],
        "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n"),
    );
    for mode in ["require", "prefer"] {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}",
            cluster.port
        );
        let (out, _) = status(&url, &[]);
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", stderr(&out));
        // psql agrees.
        let psql = Command::new(client_bin("psql"))
            .args([
                &url,
                "-XAtc",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "t", "{mode}");
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-ca&sslrootcert={}",
        cluster.port,
        p(&certs.0.join("server.crt"))
    );
    let (out, _) = status(&url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
