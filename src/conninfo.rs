//! Reading a connection string the way libpq reads it: a `postgres://` / `postgresql://` URI or
//! a `key=value` string, into libpq's keywords. One parser, so that every path (flag,
//! environment, file) sees the same rules, and so that the runner never splits a URL where psql
//! would not.
//!
//! The URI rules are libpq's (`conninfo_uri_parse_options`): the user information ends at the
//! first `@` that comes before any `/`; the host list ends at the first `/` or `?` after it; the
//! query starts after the host list (or the database name). So an unencoded `?` in a password
//! stays in the password and `?sslmode=require` is never lost to it. Where libpq would go on
//! with a host or database name that still holds an `@` (an unencoded `@` or `/` in the
//! password), this parser refuses, because what follows would be a piece of the password shown as
//! a host name.
//!
//! Errors name the part that is wrong, never its value when that part could hold a secret: no
//! error ever repeats the user information or a `password` parameter.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};

/// The libpq keywords this runner understands, with what they are for. Anything else in a URL
/// query or a key=value string is refused by name, as libpq refuses it.
pub(crate) const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "passfile",
    "target_session_attrs",
    "channel_binding",
    "service",
];

/// Options of Prisma's connection URL (an application's `DATABASE_URL` often is one), accepted in
/// a URL query next to libpq's: `schema` is the schema to migrate, `pgbouncer=true` is refused
/// (see `config`), the pool settings of Prisma's own client are ignored with a warning.
pub(crate) const PRISMA_OPTIONS: &[&str] = &[
    "schema",
    "pgbouncer",
    "connection_limit",
    "pool_timeout",
    "socket_timeout",
    "sslaccept",
    "statement_cache_size",
];

/// The keywords of a connection string, by libpq's names; later occurrences win, as in libpq.
/// The password is kept apart, as bytes (a percent-decoded password need not be UTF-8), and is
/// never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnParams {
    pub values: BTreeMap<&'static str, String>,
    pub password: Option<Vec<u8>>,
    /// Prisma's options from the URL query ([`PRISMA_OPTIONS`]), by name.
    pub prisma: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("values", &self.values)
            .field("prisma", &self.prisma)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl ConnParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub(crate) fn set(&mut self, key: &str, value: String) -> Result<()> {
        let key = canonical(key)?;
        if key == "password" {
            self.password = Some(value.into_bytes());
        } else {
            self.values.insert(key, value);
        }
        Ok(())
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        reason: reason.into(),
    }
}

/// The keyword as libpq spells it, or an error naming the unknown one.
fn canonical(key: &str) -> Result<&'static str> {
    // JDBC's `ssl=true` is accepted by libpq as `sslmode=require`; handled by the caller.
    KEYWORDS.iter().copied().find(|k| *k == key).ok_or_else(|| {
        invalid(format!(
            "unknown connection parameter {:?} (known: {}; in a URL query also Prisma's {})",
            shown(key),
            KEYWORDS.join(", "),
            PRISMA_OPTIONS.join(", ")
        ))
    })
}

/// A key as it may be shown: printable ASCII, cut to 40 characters.
fn shown(text: &str) -> String {
    text.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Parses a `postgres://` URI or a libpq `key=value` string.
pub(crate) fn parse(text: &str) -> Result<ConnParams> {
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = strip_prefix_ignore_case(text, scheme) {
            return parse_uri(rest);
        }
    }
    if text.contains("://") {
        return Err(invalid("the scheme must be postgres:// or postgresql://"));
    }
    if text.contains('=') {
        return parse_key_values(text);
    }
    Err(invalid(
        "it is neither a postgres:// URL nor a key=value connection string",
    ))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn decode(part: &str, what: &str) -> Result<String> {
    check_percent_escapes(part, what)?;
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            invalid(format!(
                "the {what} is not valid UTF-8 once percent-decoded"
            ))
        })
}

/// libpq refuses a `%` that does not start two hex digits; so does this parser, without showing
/// the text (it may be a password).
fn check_percent_escapes(part: &str, what: &str) -> Result<()> {
    let bytes = part.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(invalid(format!(
                "the {what} has a '%' that does not start a %XX escape; write a literal '%' as %25"
            )));
        }
    }
    Ok(())
}

const ENCODE_HINT: &str =
    "percent-encode '@', '/', '?', '#' and '%' in the user name and password (%40, %2F, %3F, %23, %25)";

fn parse_uri(rest: &str) -> Result<ConnParams> {
    let mut params = ConnParams::default();
    // libpq: the user information ends at the first '@', if one comes before any '/'.
    let rest = match rest.find(['@', '/']) {
        Some(i) if rest.as_bytes()[i] == b'@' => {
            parse_userinfo(&rest[..i], &mut params)?;
            &rest[i + 1..]
        }
        _ => rest,
    };
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, rest) = rest.split_at(host_end);
    if hosts.contains('@') {
        return Err(invalid(format!(
            "the host part holds an '@', so the user name or password holds an unencoded '@': {ENCODE_HINT}"
        )));
    }
    parse_hosts(hosts, &mut params)?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if let Some(db) = path.strip_prefix('/') {
        if db.contains('@') || db.contains('/') {
            return Err(invalid(format!(
                "the database name holds an '@' or '/', so the password probably holds an unencoded '/': {ENCODE_HINT}"
            )));
        }
        if !db.is_empty() {
            params.set("dbname", decode(db, "database name")?)?;
        }
    }
    if let Some(query) = query {
        parse_query(query, &mut params)?;
    }
    Ok(params)
}

fn parse_userinfo(userinfo: &str, params: &mut ConnParams) -> Result<()> {
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    if !user.is_empty() {
        params.set("user", decode(user, "user name")?)?;
    }
    // An empty password (`user:@host`) is none, as psql takes it: PGPASSWORD or the password
    // file give it.
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        check_percent_escapes(password, "password")?;
        params.password = Some(percent_decode_str(password).collect());
    }
    Ok(())
}

/// `host[:port][,host[:port]...]`, with `[v6]` literals and percent-encoded socket paths.
fn parse_hosts(hosts: &str, params: &mut ConnParams) -> Result<()> {
    if hosts.is_empty() {
        return Ok(());
    }
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for spec in hosts.split(',') {
        let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 host in [brackets] has no closing ']'"))?;
            match after {
                "" => (addr.to_string(), None),
                p if p.starts_with(':') => (addr.to_string(), Some(&p[1..])),
                _ => return Err(invalid("unexpected text after an IPv6 host in [brackets]")),
            }
        } else {
            match spec.rsplit_once(':') {
                Some((h, p)) => (decode(h, "host")?, Some(p)),
                None => (decode(spec, "host")?, None),
            }
        };
        names.push(host);
        ports.push(match port {
            Some(p) => {
                check_port(p)?;
                p.to_string()
            }
            None => String::new(),
        });
    }
    if names.iter().any(|h| !h.is_empty()) {
        params.set("host", names.join(","))?;
    }
    if ports.iter().any(|p| !p.is_empty()) {
        params.set("port", ports.join(","))?;
    }
    Ok(())
}

/// A port of 1..65535. The text is not shown: after a mis-split it may be part of a password.
fn check_port(port: &str) -> Result<()> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(invalid(format!(
            "the port is not a number from 1 to 65535 (if the password holds a '/' or ':', {ENCODE_HINT})"
        ))),
    }
}

fn parse_query(query: &str, params: &mut ConnParams) -> Result<()> {
    let mut after_password = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        // After `password=`, an unescaped '&' in the password splits it: what follows may be
        // part of it, so no later key is shown.
        let named = |what: &str| match after_password {
            true => "after password= (if the password holds a '&', percent-encode it as %26)"
                .to_string(),
            false => format!("{:?}", shown(what)),
        };
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            invalid(format!(
                "the query parameter {} has no '=' (expected key=value)",
                named(pair)
            ))
        })?;
        let key = decode(key, "name of a query parameter")?;
        if after_password
            && !KEYWORDS.contains(&key.as_str())
            && !PRISMA_OPTIONS.contains(&key.as_str())
            && key != "ssl"
        {
            return Err(invalid(format!(
                "unknown connection parameter {}",
                named(&key)
            )));
        }
        if key == "password" {
            after_password = true;
            check_percent_escapes(value, "password")?;
            params.password = Some(percent_decode_str(value).collect());
            continue;
        }
        let value = decode(value, &format!("value of {}", shown(&key)))?;
        if let Some(option) = PRISMA_OPTIONS.iter().find(|o| **o == key) {
            params.prisma.insert(option, value);
            continue;
        }
        if key == "ssl" {
            // libpq (and JDBC): ssl=true means sslmode=require.
            if value != "true" {
                return Err(invalid("ssl must be true (or use sslmode=...)"));
            }
            params.set("sslmode", "require".into())?;
            continue;
        }
        params.set(&key, value)?;
    }
    Ok(())
}

/// libpq's `key = value ...`, values bare or in single quotes with `\'` and `\\` escapes. A key
/// that follows `password=` is not shown in errors: an unquoted password with a space in it
/// makes its second half look like a key.
fn parse_key_values(text: &str) -> Result<ConnParams> {
    let mut params = ConnParams::default();
    let mut chars = text.chars().peekable();
    let mut after_password = false;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        let name = if after_password {
            "the key after password=... (quote a password that holds spaces: password='a b')"
                .to_string()
        } else {
            format!("{:?}", shown(&key))
        };
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(format!(
                "missing '=' after {name} in the key=value connection string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = kv_value(&mut chars, &name)?;
        if after_password && canonical(&key).is_err() {
            return Err(invalid(format!("unknown connection parameter: {name}")));
        }
        after_password = key == "password";
        params.set(&key, value)?;
    }
}

fn kv_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, name: &str) -> Result<String> {
    let mut value = String::new();
    if chars.next_if_eq(&'\'').is_some() {
        loop {
            match chars.next() {
                None => return Err(invalid(format!("unterminated quoted value of {name}"))),
                Some('\\') => value.extend(chars.next()),
                Some('\'') => return Ok(value),
                Some(c) => value.push(c),
            }
        }
    }
    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
        if c == '\\' {
            value.extend(chars.next());
        } else {
            value.push(c);
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(p: &ConnParams) -> Option<String> {
        p.password
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    #[test]
    fn a_question_mark_in_the_password_stays_in_the_password() {
        let p = parse("postgres://u:pa?ss@db.internal:6432/chat?sslmode=require").unwrap();
        assert_eq!(pw(&p).as_deref(), Some("pa?ss"));
        assert_eq!(p.get("host"), Some("db.internal"));
        assert_eq!(p.get("port"), Some("6432"));
        assert_eq!(p.get("dbname"), Some("chat"));
        assert_eq!(p.get("sslmode"), Some("require"));
    }

    #[test]
    fn an_unencoded_at_or_slash_in_the_password_is_refused_without_showing_it() {
        for url in [
            "postgres://u:se@cret@h/db?sslmode=require",
            "postgres://u:se/cret@h/db",
            "postgres://u:se/cr:et@h/db",
        ] {
            let err = parse(url).unwrap_err().to_string();
            for piece in ["se@", "cret", "se/", "cr:et"] {
                assert!(!err.contains(piece), "{url}: {err}");
            }
        }
        let p = parse("postgres://u:se%40cr%2Fet@h/db").unwrap();
        assert_eq!(pw(&p).as_deref(), Some("se@cr/et"));
    }

    #[test]
    fn hosts_ports_and_sockets() {
        let p = parse("postgresql://a:1,[::1]:2,b/db").unwrap();
        assert_eq!(p.get("host"), Some("a,::1,b"));
        assert_eq!(p.get("port"), Some("1,2,"));
        let p = parse("postgres://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(p.get("host"), Some("/var/run/postgresql"));
        let p = parse("postgres:///db?host=/tmp&port=5433").unwrap();
        assert_eq!(p.get("host"), Some("/tmp"));
        assert!(parse("postgres://h:0/db").is_err());
        assert!(parse("postgres://h:99999/db").is_err());
    }

    #[test]
    fn percent_escapes_are_checked_not_sliced() {
        let err = parse("postgres://h/db?sslmode=verify-full&sslrootcert=/x%a\u{e9}.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert"), "{err}");
        let p = parse("postgres://h/db?sslrootcert=/etc/ca%20dir/x.pem").unwrap();
        assert_eq!(p.get("sslrootcert"), Some("/etc/ca dir/x.pem"));
    }

    #[test]
    fn unknown_parameters_are_named() {
        let err = parse("postgres://h/db?frobnicate=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"frobnicate\""), "{err}");
        let err = parse("postgres://h/db?novalue").unwrap_err().to_string();
        assert!(err.contains("has no '='"), "{err}");
    }

    #[test]
    fn key_value_strings() {
        let err = parse("host=h password=se cret sslmode=require").unwrap_err();
        assert!(!err.to_string().contains("cret"), "{err}");
        let err = parse("host=h sslmod=require").unwrap_err();
        assert!(err.to_string().contains("\"sslmod\""), "{err}");
        let p = parse("host=h port=5433 dbname = chat user=u password='a b\\'c' sslmode=require")
            .unwrap();
        assert_eq!(pw(&p).as_deref(), Some("a b'c"));
        assert_eq!(p.get("dbname"), Some("chat"));
        assert_eq!(p.get("sslmode"), Some("require"));
        assert!(parse("host=h password='open").is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let p = parse("postgres://u:hunter2@h/db").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
