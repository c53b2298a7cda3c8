//! The one SQL writer: identifiers that quote themselves, schema-qualified relations, and the
//! definitions of the constraints and indexes the engine builds, with every statement they
//! produce (after pgroll's `constraints.go`: no statement is written by hand anywhere else).
//!
//! Definitions are data ([`ForeignKeyDef`], [`IndexDef`]); their shape ([`FkShape`],
//! [`IndexShape`]) is what the catalog is compared with, so that "already in place" means the
//! catalog holds exactly what is declared, not merely an object of the right name.

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

/// `ON DELETE` / `ON UPDATE` actions, with `pg_constraint.confdeltype`'s letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefAction {
    NoAction,
    Restrict,
    Cascade,
    SetNull,
    SetDefault,
}

impl RefAction {
    pub fn sql(self) -> &'static str {
        match self {
            RefAction::NoAction => "NO ACTION",
            RefAction::Restrict => "RESTRICT",
            RefAction::Cascade => "CASCADE",
            RefAction::SetNull => "SET NULL",
            RefAction::SetDefault => "SET DEFAULT",
        }
    }

    pub fn code(self) -> char {
        match self {
            RefAction::NoAction => 'a',
            RefAction::Restrict => 'r',
            RefAction::Cascade => 'c',
            RefAction::SetNull => 'n',
            RefAction::SetDefault => 'd',
        }
    }

    pub fn from_code(code: char) -> Option<RefAction> {
        [
            RefAction::NoAction,
            RefAction::Restrict,
            RefAction::Cascade,
            RefAction::SetNull,
            RefAction::SetDefault,
        ]
        .into_iter()
        .find(|a| a.code() == code)
    }
}

fn column_list(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| Ident::new(*c).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A foreign key as declared: `table (columns) REFERENCES references (ref_columns)`, both tables
/// in the migrated schema.
#[derive(Debug, PartialEq, Eq)]
pub struct ForeignKeyDef {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub references: &'static str,
    pub ref_columns: &'static [&'static str],
    pub on_delete: RefAction,
    pub on_update: RefAction,
}

/// What the catalog must hold for a foreign key to count as the declared one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FkShape {
    pub columns: Vec<String>,
    pub references: Relation,
    pub ref_columns: Vec<String>,
    pub on_delete: char,
    pub on_update: char,
    pub deferrable: bool,
}

impl fmt::Display for FkShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = |c: &[String]| {
            c.iter()
                .map(|c| Ident::new(c.as_str()).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let action = |c: char| RefAction::from_code(c).map_or("?", RefAction::sql);
        write!(
            f,
            "FOREIGN KEY ({}) REFERENCES {}({}) ON UPDATE {} ON DELETE {}{}",
            cols(&self.columns),
            self.references.plain(),
            cols(&self.ref_columns),
            action(self.on_update),
            action(self.on_delete),
            if self.deferrable { " DEFERRABLE" } else { "" }
        )
    }
}

impl ForeignKeyDef {
    pub fn table_in(&self, schema: &str) -> Relation {
        Relation::new(schema, self.table)
    }

    pub fn shape(&self, schema: &str) -> FkShape {
        FkShape {
            columns: self.columns.iter().map(|c| c.to_string()).collect(),
            references: Relation::new(schema, self.references),
            ref_columns: self.ref_columns.iter().map(|c| c.to_string()).collect(),
            on_delete: self.on_delete.code(),
            on_update: self.on_update.code(),
            deferrable: false,
        }
    }

    /// The definition after the constraint's name.
    pub fn definition(&self, schema: &str) -> String {
        format!(
            "FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE {} ON DELETE {}",
            column_list(self.columns),
            Relation::new(schema, self.references),
            column_list(self.ref_columns),
            self.on_update.sql(),
            self.on_delete.sql()
        )
    }

    /// `ALTER TABLE on ADD CONSTRAINT ...` (`NOT VALID` on a partition, or on a partitioned
    /// parent from PostgreSQL 18).
    pub fn add_sql(&self, on: &Relation, schema: &str, not_valid: bool) -> String {
        format!(
            "ALTER TABLE {on} ADD CONSTRAINT {} {}{}",
            Ident::new(self.name),
            self.definition(schema),
            if not_valid { " NOT VALID" } else { "" }
        )
    }

    pub fn validate_sql(&self, on: &Relation) -> String {
        format!(
            "ALTER TABLE {on} VALIDATE CONSTRAINT {}",
            Ident::new(self.name)
        )
    }

    /// A condition true for rows of `alias` whose key has a match in the referenced table.
    pub fn match_condition(&self, alias: &str, schema: &str) -> String {
        let matches = self
            .columns
            .iter()
            .zip(self.ref_columns)
            .map(|(c, r)| format!("r.{} = {alias}.{}", Ident::new(*r), Ident::new(*c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "EXISTS (SELECT 1 FROM {} r WHERE {matches})",
            Relation::new(schema, self.references)
        )
    }

    /// A condition true for rows of `alias` that this key would refuse (MATCH SIMPLE: a row
    /// with a NULL in a key column is not checked).
    pub fn violation_condition(&self, alias: &str, schema: &str) -> String {
        let not_null = self
            .columns
            .iter()
            .map(|c| format!("{alias}.{} IS NOT NULL", Ident::new(*c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!("{not_null} AND NOT {}", self.match_condition(alias, schema))
    }
}

/// An index as declared: a plain btree on `columns` of `table`, unique or not.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexDef {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub unique: bool,
}

/// What the catalog must hold for an index to count as the declared one (on its table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexShape {
    pub columns: Vec<String>,
    pub unique: bool,
}

impl fmt::Display for IndexShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}btree ({})",
            if self.unique { "UNIQUE " } else { "" },
            self.columns.join(", ")
        )
    }
}

impl IndexDef {
    pub fn table_in(&self, schema: &str) -> Relation {
        Relation::new(schema, self.table)
    }

    pub fn index_in(&self, schema: &str) -> Relation {
        Relation::new(schema, self.name)
    }

    pub fn shape(&self) -> IndexShape {
        IndexShape {
            columns: self.columns.iter().map(|c| c.to_string()).collect(),
            unique: self.unique,
        }
    }

    fn create(&self, concurrently: bool, only: bool, name: &Ident, on: &Relation) -> String {
        format!(
            "CREATE {}INDEX {}{name} ON {}{on} ({})",
            if self.unique { "UNIQUE " } else { "" },
            if concurrently { "CONCURRENTLY " } else { "" },
            if only { "ONLY " } else { "" },
            column_list(self.columns)
        )
    }

    /// The parent index of a partitioned table: instant, invalid until every partition's index
    /// is attached.
    pub fn on_only_sql(&self, name: &Ident, on: &Relation) -> String {
        self.create(false, true, name, on)
    }

    /// The index of one table, built without blocking writes.
    pub fn concurrently_sql(&self, name: &Ident, on: &Relation) -> String {
        self.create(true, false, name, on)
    }

    /// The blocking form, for versioned SQL applied without the runner.
    pub fn blocking_sql(&self, name: &Ident, on: &Relation) -> String {
        self.create(false, false, name, on)
    }

    /// The name PostgreSQL would give this index on `table` (before making it unique in the
    /// schema): `makeObjectName(table, columns, label)`.
    pub fn child_name_base(&self, table: &str) -> (String, String, &'static str) {
        (
            table.to_string(),
            index_name_addition(self.columns),
            if self.unique { "key" } else { "idx" },
        )
    }
}

pub fn attach_index_sql(parent_index: &Relation, child_index: &Relation) -> String {
    format!("ALTER INDEX {parent_index} ATTACH PARTITION {child_index}")
}

pub fn drop_index_concurrently_sql(index: &Relation) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")
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
