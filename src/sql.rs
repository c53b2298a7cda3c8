//! How SQL names things: identifiers that quote themselves ([`Ident`]), schema-qualified
//! relations ([`Relation`]), and PostgreSQL's own rules for choosing an object's name
//! ([`choose_name`]). Every statement the runner sends names its objects through these; the
//! statements themselves are written where their meaning lives: each operation kind's in its
//! file (`engine/ops/`), the months' in `engine/partitions/`, the pre-flight's in
//! `preflight.rs`, the session settings, the lock and the deadlock guard in `db/`, and what only
//! one command reads in its module (`schema.rs`, `history.rs`, `adopt.rs`, `verify.rs`'s
//! assertions, `check.rs`'s layout).

use std::fmt;

use serde::Serialize;

/// PostgreSQL's limit on identifiers: NAMEDATALEN - 1 bytes.
pub const MAX_IDENT_BYTES: usize = 63;

/// An identifier; shown in SQL it quotes itself (`"tenantId"`, inner quotes doubled).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    pub fn new(name: impl Into<String>) -> Ident {
        Ident(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.replace('"', "\"\""))
    }
}

/// A relation (table or index) in a schema; shown in SQL as `"schema"."name"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Relation {
    pub schema: Ident,
    pub name: Ident,
}

impl Relation {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Relation {
        Relation {
            schema: Ident::new(schema),
            name: Ident::new(name),
        }
    }

    /// `schema.name` without quotes, for logs and reports.
    pub fn plain(&self) -> String {
        format!("{}.{}", self.schema.as_str(), self.name.as_str())
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// `"a", "b"`: a column list, each name quoted.
pub(crate) fn column_list(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| Ident::new(*c).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary
/// (PostgreSQL's `pg_mbcliplen` for UTF-8).
fn clip(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// PostgreSQL's `ChooseIndexNameAddition`: the column names joined by `_`, cut to the limit.
pub fn index_name_addition(columns: &[&str]) -> String {
    let mut out = String::new();
    for c in columns {
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(c);
        if out.len() >= MAX_IDENT_BYTES {
            break;
        }
    }
    clip(&out, MAX_IDENT_BYTES).to_string()
}

/// PostgreSQL's `makeObjectName(name1, name2, label)`: `name1_name2_label`, trimming the longer
/// of name1 and name2 a byte at a time until it fits in 63 bytes.
pub fn make_object_name(name1: &str, name2: &str, label: &str) -> String {
    let overhead = label.len() + 1 + if name2.is_empty() { 0 } else { 1 };
    let avail = MAX_IDENT_BYTES - overhead;
    let (mut n1, mut n2) = (name1.len(), name2.len());
    while n1 + n2 > avail {
        if n1 > n2 {
            n1 -= 1;
        } else {
            n2 -= 1;
        }
    }
    let a = clip(name1, n1);
    let b = clip(name2, n2);
    if b.is_empty() {
        format!("{a}_{label}")
    } else {
        format!("{a}_{b}_{label}")
    }
}

/// PostgreSQL's `ChooseRelationName`: [`make_object_name`], then `label1`, `label2`, ... until
/// `taken` says the name is free.
pub fn choose_name(name1: &str, name2: &str, label: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut pass = 0u32;
    loop {
        let l = if pass == 0 {
            label.to_string()
        } else {
            format!("{label}{pass}")
        };
        let name = make_object_name(name1, name2, &l);
        if !taken(&name) {
            return name;
        }
        pass += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_relations_quote_themselves() {
        assert_eq!(Ident::new("tenantId").to_string(), "\"tenantId\"");
        assert_eq!(Ident::new("a\"b").to_string(), "\"a\"\"b\"");
        assert_eq!(
            Relation::new("my schema", "messages_2024_01").to_string(),
            "\"my schema\".\"messages_2024_01\""
        );
    }

    #[test]
    fn names_follow_postgresql() {
        assert_eq!(
            make_object_name("messages_2024_01", "tenantId", "idx"),
            "messages_2024_01_tenantId_idx"
        );
        // 63 bytes at most, trimming the longer part first (as PostgreSQL names them).
        let long = "p".repeat(60);
        let n = make_object_name(&long, "tenantId", "idx");
        assert_eq!(n.len(), 63);
        assert_eq!(n, format!("{}_tenantId_idx", "p".repeat(50)));
        let taken = |s: &str| s == n;
        assert_eq!(
            choose_name(&long, "tenantId", "idx", taken),
            format!("{}_tenantId_idx1", "p".repeat(49))
        );
        // Multibyte names are cut on a character boundary.
        let n = make_object_name(&"é".repeat(40), "tenantId", "idx");
        assert!(n.len() <= 63 && n.is_char_boundary(n.len()));
        assert_eq!(
            index_name_addition(&["conversationId", "tenantId"]),
            "conversationId_tenantId"
        );
    }
}
