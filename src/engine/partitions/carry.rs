//! What a new month carries besides its columns, indexes and constraints (`LIKE ... INCLUDING
//! INDEXES` gives those, named and placed as `PARTITION OF` would): it is created standalone, so
//! nothing else is inherited for free. Read once per table, from the catalog:
//!
//! - the owner: the parent's, whichever role runs the runner (indexes follow the table);
//! - the tablespace: the parent's, as `PARTITION OF` gives it (each index gets its parent
//!   index's through `LIKE`);
//! - the grants: the parent's and those of the newest month (applications grant on partitions
//!   directly), table and column privileges, as pg_partman's `inherit_privileges` does;
//! - row-level security: the newest month's state (enabled, forced) and its policies, with each
//!   policy's expression checked to come out the same on the new month; one that cannot (it
//!   names that month itself) refuses the month, saying why;
//! - what a move out of DEFAULT would do downstream: the publications that cover the table.
//!
//! Also whether this run's role may do all of it, so that a month it cannot complete is refused
//! before anything is changed.

use crate::catalog::Reader;
use serde::Serialize;

use super::window::Window;
use crate::db::{quote_ident, quote_literal};
use crate::error::{Error, Result};
use crate::sql::Relation;

/// A publication that covers the table.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Publication {
    pub name: String,
    /// `publish_via_partition_root`.
    pub via_root: bool,
    pub inserts: bool,
    pub deletes: bool,
}

impl Publication {
    /// Why a move out of DEFAULT would leave its subscribers with other rows than the
    /// publisher, if it would. Through the root, the move is published as a delete and an insert
    /// of each row on the table; through the partitions, as an insert into a partition no
    /// subscription has yet; with only one of insert and delete published, as half of it.
    pub fn move_hazard(&self) -> Option<String> {
        if !self.inserts && !self.deletes {
            return None;
        }
        if self.inserts != self.deletes {
            return Some(format!(
                "publication {} publishes {} but not {}, so its subscribers would see only half of the move",
                self.name,
                if self.inserts { "inserts" } else { "deletes" },
                if self.inserts { "deletes" } else { "inserts" },
            ));
        }
        (!self.via_root).then(|| format!(
            "publication {} publishes the partitions under their own names (publish_via_partition_root = false), so its subscribers would apply the rows' deletion from DEFAULT but not their insertion into the new partition, which no subscription has yet",
            self.name
        ))
    }
}

/// What every new month of one table carries, and whether this run may give it.
#[derive(Clone, Debug, Default)]
pub struct Carry {
    /// The parent's owner, when it is not this run's role (`ALTER TABLE ... OWNER TO`).
    owner: Option<String>,
    tablespace: Option<String>,
    /// `GRANT ...` statements, with `{}` for the new month.
    grants: Vec<String>,
    rls: (bool, bool),
    policies: Vec<Policy>,
    /// The month the grants and row-level security are taken from.
    pub newest: Option<Relation>,
    pub publications: Vec<Publication>,
    /// Why no month of this table can be created by this run, if so.
    pub refusal: Option<String>,
}

#[derive(Clone, Debug)]
struct Policy {
    name: String,
    command: &'static str,
    permissive: bool,
    roles: Vec<String>,
    using: Option<String>,
    check: Option<String>,
}

const PARENT: &str = "SELECT pg_get_userbyid(c.relowner)::text, c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), \
       coalesce(t.spcname::text, ''), \
       has_schema_privilege(c.relnamespace, 'CREATE'), \
       coalesce(t.spcname IS NULL OR has_tablespace_privilege(t.oid, 'CREATE'), true), \
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
         OR CASE WHEN current_setting('server_version_num')::int >= 160000 THEN pg_has_role(current_user, c.relowner, 'SET') \
                 ELSE pg_has_role(current_user, c.relowner, 'MEMBER') END, \
       current_user::text \
     FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = $1::text::regclass";

/// Table and column grants of the parent ($1) and the newest month ($2), but the owners' own.
const GRANTS: &str = "SELECT DISTINCT coalesce(a.attname::text, ''), \
       CASE x.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END, \
       x.privilege_type, x.is_grantable \
     FROM pg_class c \
     CROSS JOIN LATERAL (SELECT NULL::name AS attname, c.relacl AS acl \
                         UNION ALL SELECT attname, attacl FROM pg_attribute \
                          WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped AND attacl IS NOT NULL) a \
     CROSS JOIN LATERAL aclexplode(a.acl) x \
     WHERE c.oid IN ($1::text::regclass, $2::text::regclass) AND x.grantee <> c.relowner \
       AND x.grantee <> (SELECT relowner FROM pg_class WHERE oid = $1::text::regclass) \
     ORDER BY 1, 2, 3, 4";

const RLS: &str =
    "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::text::regclass";

const POLICIES: &str = "SELECT p.polname::text, p.polcmd::text, p.polpermissive, \
       ARRAY(SELECT CASE r WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END FROM unnest(p.polroles) r ORDER BY 1), \
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid) \
     FROM pg_policy p WHERE p.polrelid = $1::text::regclass ORDER BY p.polname";

/// Publications that publish the table or its DEFAULT partition ($1 schema, $2 and $3 names).
const PUBLICATIONS: &str =
    "SELECT p.pubname::text, p.pubviaroot, p.pubinsert, p.pubdelete FROM pg_publication p \
     WHERE EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname \
                     AND t.schemaname = $1 AND t.tablename IN ($2, $3)) ORDER BY 1";

fn db(what: &'static str) -> impl Fn(postgres::Error) -> Error {
    move |e| Error::db(what, e)
}

/// Reads what the months of `window`'s table carry. Read-only.
pub fn read(c: &mut dyn Reader, window: &Window) -> Result<Carry> {
    let table = window.table.to_string();
    let row = c
        .query_one(PARENT, &[&table])
        .map_err(db("reading the table's owner and tablespace"))?;
    let (owner, is_me, tablespace, may_create, may_use_space, may_give, me): (
        String,
        bool,
        String,
        bool,
        bool,
        bool,
        String,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );
    let mut carry = Carry {
        owner: (!is_me).then(|| owner.clone()),
        tablespace: (!tablespace.is_empty()).then_some(tablespace.clone()),
        newest: window.newest().cloned(),
        ..Carry::default()
    };
    carry.refusal = if !may_create {
        Some(format!("this run's role {me} may not create tables in schema {}: grant it CREATE there, or run as the table's owner {owner}", window.table.schema.as_str()))
    } else if !may_use_space {
        Some(format!("this run's role {me} may not create tables in tablespace {tablespace}, where {} keeps its partitions: grant it CREATE there, or run as a superuser", window.table.plain()))
    } else if !may_give {
        Some(format!("this run's role {me} cannot make {owner} (the owner of {}) the owner of a new month: run as {owner}, as a role that may SET ROLE {owner}, or as a superuser", window.table.plain()))
    } else {
        None
    };
    let newest = carry
        .newest
        .as_ref()
        .map_or(table.clone(), |n| n.to_string());
    for r in c
        .query(GRANTS, &[&table, &newest])
        .map_err(db("reading the grants of the table and its newest month"))?
    {
        let (column, grantee, privilege, grantable): (String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let on = if column.is_empty() {
            String::new()
        } else {
            format!(" ({})", quote_ident(&column))
        };
        carry.grants.push(format!(
            "GRANT {privilege}{on} ON {{}} TO {grantee}{}",
            if grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    carry.grants.dedup();
    if let Some(n) = &carry.newest {
        let r = c
            .query_one(RLS, &[&n.to_string()])
            .map_err(db("reading row-level security"))?;
        carry.rls = (r.get(0), r.get(1));
        carry.policies = policies(c, n)?;
    }
    carry.publications = publications(c, window)?;
    Ok(carry)
}

fn policies(c: &mut dyn Reader, newest: &Relation) -> Result<Vec<Policy>> {
    let rows = c
        .query(POLICIES, &[&newest.to_string()])
        .map_err(db("reading row-level security policies"))?;
    Ok(rows
        .into_iter()
        .map(|r| Policy {
            name: r.get(0),
            command: match r.get::<_, String>(1).as_str() {
                "r" => "SELECT",
                "a" => "INSERT",
                "w" => "UPDATE",
                "d" => "DELETE",
                _ => "ALL",
            },
            permissive: r.get(2),
            roles: r.get(3),
            using: r.get(4),
            check: r.get(5),
        })
        .collect())
}

fn publications(c: &mut dyn Reader, window: &Window) -> Result<Vec<Publication>> {
    let default = window
        .default
        .as_ref()
        .map_or(String::new(), |d| d.name.as_str().to_string());
    Ok(c.query(
        PUBLICATIONS,
        &[
            &window.table.schema.as_str(),
            &window.table.name.as_str(),
            &default,
        ],
    )
    .map_err(db("reading the publications of the table"))?
    .into_iter()
    .map(|r| Publication {
        name: r.get(0),
        via_root: r.get(1),
        inserts: r.get(2),
        deletes: r.get(3),
    })
    .collect())
}

/// `text` with every reference to relation `from` as a qualifier (`from.column`) made one to
/// `to`; `None` when `from` appears otherwise (a subquery over that month itself), which no
/// policy of another table can say. String literals are left alone.
fn requalify(text: &str, from: &str, to: &str) -> Option<String> {
    let (from, to) = (bare(&quote_ident(from)), bare(&quote_ident(to)));
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while !rest.is_empty() {
        let ch = rest.chars().next().unwrap_or_default();
        if ch == '\'' {
            in_string = !in_string;
        }
        let before_ok = !out
            .chars()
            .last()
            .is_some_and(|p| ident(p) || p == '"' || p == '.');
        if !in_string && before_ok && rest.starts_with(&from) {
            let after = &rest[from.len()..];
            if after.chars().next().is_some_and(ident) {
                // A longer name that starts with this one.
            } else if after.starts_with('.') {
                out.push_str(&to);
                rest = after;
                continue;
            } else {
                return None;
            }
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    Some(out)
}

/// A quoted identifier as `pg_get_expr` prints it: bare when quoting is not needed.
fn bare(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    let needs = !inner
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || inner.chars().next().is_some_and(|c| c.is_ascii_digit());
    if needs {
        quoted.to_string()
    } else {
        inner.to_string()
    }
}

impl Carry {
    /// The parent's tablespace, if it has one (else the new month goes where `PARTITION OF`
    /// would put it: `default_tablespace`).
    pub fn tablespace(&self) -> Option<&str> {
        self.tablespace.as_deref()
    }

    /// Whether a move's rows must be inserted through the parent to reach subscribers.
    pub fn publishes_moves(&self) -> bool {
        self.publications.iter().any(|p| p.inserts && p.deletes)
    }

    /// What the create-table step runs after `CREATE TABLE`, for month `part`: owner, grants,
    /// row-level security, policies and the check that each came out as on the newest month.
    /// `Err` with the reason when a policy cannot be carried over.
    pub fn statements(&self, part: &Relation) -> std::result::Result<Vec<String>, String> {
        let mut out = Vec::new();
        if let Some(owner) = &self.owner {
            out.push(format!(
                "ALTER TABLE {part} OWNER TO {}",
                quote_ident(owner)
            ));
        }
        out.extend(
            self.grants
                .iter()
                .map(|g| g.replace("{}", &part.to_string())),
        );
        if self.rls.0 {
            out.push(format!("ALTER TABLE {part} ENABLE ROW LEVEL SECURITY"));
        }
        if self.rls.1 {
            out.push(format!("ALTER TABLE {part} FORCE ROW LEVEL SECURITY"));
        }
        let Some(newest) = &self.newest else {
            return Ok(out);
        };
        let mut expected = Vec::new();
        for p in &self.policies {
            let carry = |e: &Option<String>| -> std::result::Result<Option<String>, String> {
                e.as_ref()
                    .map(|e| {
                        requalify(e, newest.name.as_str(), part.name.as_str()).ok_or_else(|| {
                            format!(
                                "policy {} of {} refers to that partition itself ({e}), so it cannot be carried over to {}: rewrite it without naming the partition, or create the month by hand",
                                p.name,
                                newest.plain(),
                                part.plain()
                            )
                        })
                    })
                    .transpose()
            };
            let (using, check) = (carry(&p.using)?, carry(&p.check)?);
            out.push(format!(
                "CREATE POLICY {} ON {part} AS {} FOR {} TO {}{}{}",
                quote_ident(&p.name),
                if p.permissive {
                    "PERMISSIVE"
                } else {
                    "RESTRICTIVE"
                },
                p.command,
                p.roles.join(", "),
                using
                    .as_ref()
                    .map_or(String::new(), |u| format!(" USING ({u})")),
                check
                    .as_ref()
                    .map_or(String::new(), |c| format!(" WITH CHECK ({c})")),
            ));
            expected.push((p.name.clone(), using, check));
        }
        if !expected.is_empty() {
            out.push(verify_policies(part, &expected));
        }
        Ok(out)
    }
}

/// A statement that fails the step (and so creates nothing) when a policy's expressions on the
/// new month do not read back as the newest month's.
fn verify_policies(
    part: &Relation,
    expected: &[(String, Option<String>, Option<String>)],
) -> String {
    let lit = |o: &Option<String>| o.as_deref().map_or("NULL".to_string(), quote_literal);
    let rows = expected
        .iter()
        .map(|(n, u, c)| format!("({}, {}, {})", quote_literal(n), lit(u), lit(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DO $mcm$ DECLARE bad text; BEGIN \
           SELECT string_agg(w.name, ', ') INTO bad FROM (VALUES {rows}) AS w(name, qual, chk) \
             LEFT JOIN pg_policy p ON p.polrelid = {}::regclass AND p.polname = w.name \
            WHERE p.oid IS NULL OR pg_get_expr(p.polqual, p.polrelid) IS DISTINCT FROM w.qual \
               OR pg_get_expr(p.polwithcheck, p.polrelid) IS DISTINCT FROM w.chk; \
           IF bad IS NOT NULL THEN RAISE EXCEPTION 'row-level security policies % do not read back on % as on the newest month: create this month by hand', bad, {}; END IF; \
         END $mcm$",
        quote_literal(&part.to_string()),
        quote_literal(&part.plain())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_are_carried_and_self_references_refused() {
        assert_eq!(
            requalify(
                "(EXISTS ( SELECT 1 FROM mem WHERE (mem.tenant = messages_2026_11.\"tenantId\")))",
                "messages_2026_11",
                "messages_2027_01"
            )
            .as_deref(),
            Some(
                "(EXISTS ( SELECT 1 FROM mem WHERE (mem.tenant = messages_2027_01.\"tenantId\")))"
            )
        );
        assert_eq!(
            requalify("(t = 'messages_2026_11 x')", "messages_2026_11", "m"),
            Some("(t = 'messages_2026_11 x')".into())
        );
        assert_eq!(
            requalify(
                "(EXISTS ( SELECT 1 FROM messages_2026_11 q WHERE q.t = t))",
                "messages_2026_11",
                "m"
            ),
            None
        );
        assert_eq!(
            requalify("(x.messages_2026_11 = 1)", "messages_2026_11", "m").as_deref(),
            Some("(x.messages_2026_11 = 1)")
        );
        assert_eq!(
            requalify("(\"Odd Name\".t = 1)", "Odd Name", "new one").as_deref(),
            Some("(\"new one\".t = 1)")
        );
    }
}
