//! What a new month carries besides its columns, indexes and constraints (`LIKE ... INCLUDING
//! INDEXES` gives those, named and placed as `PARTITION OF` would): it is created standalone, so
//! nothing else is inherited for free. Read once per table, from the catalog:
//!
//! - the owner: every step of the table's months runs as the table's owner (`SET LOCAL ROLE`),
//!   whichever role runs the runner, so the month is the owner's (its indexes too) and gets the
//!   owner's default privileges, as if the owner had made it;
//! - the tablespace: the parent's, as `PARTITION OF` gives it (each index gets its parent
//!   index's through `LIKE`);
//! - the grants: the parent's and those of the newest month (applications grant on partitions
//!   directly), table and column privileges, as pg_partman's `inherit_privileges` does;
//! - row-level security: the state (enabled, forced) and the policies of the newest partition
//!   that has it, DEFAULT last (a month without it next to protected ones would expose the rows
//!   moved into it), each policy's expression checked to come out the same on the new month;
//!   one that cannot (it names that partition itself) refuses the months, saying why;
//! - what a move out of DEFAULT would do downstream: the publications that cover the table or
//!   any of its partitions, matched by oid.
//!
//! Also whether this run may do all of it: act as the owner, and the owner create tables in the
//! schema and tablespaces, and reference the tables its keys reference; otherwise the table's
//! months are refused before anything is changed, saying what to grant.

use postgres::types::ToSql;
use serde::Serialize;

use super::window::Window;
use crate::catalog::Reader;
use crate::db::{quote_ident, quote_literal};
use crate::error::{Error, Result};
use crate::sql::Relation;

/// A publication that covers the table or one of its partitions.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Publication {
    pub name: String,
    /// `publish_via_partition_root`.
    pub via_root: bool,
    pub inserts: bool,
    pub deletes: bool,
    /// It publishes the table itself (through its root).
    pub root: bool,
    /// It publishes partitions under their own names.
    pub partitions: bool,
}

impl Publication {
    /// Why a move out of DEFAULT would leave its subscribers with other rows than the
    /// publisher, if it would. Through the root, the move is published as a delete and an insert
    /// of each row on the table; through a partition, as a delete from DEFAULT and an insert
    /// into a partition no subscription has yet; with only one of insert and delete published,
    /// as half of it.
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
        (self.partitions || !self.via_root || !self.root).then(|| format!(
            "publication {} publishes partitions of the table under their own names, so its subscribers would apply the rows' deletion from DEFAULT but not their insertion into the new partition, which no subscription has yet (publish the table itself with publish_via_partition_root = true)",
            self.name
        ))
    }
}

/// A grant to carry: table-level when `column` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    column: Option<String>,
    /// Quoted, or `PUBLIC`.
    grantee: String,
    privilege: String,
    grantable: bool,
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

/// What every new month of one table carries, and whether this run may give it.
#[derive(Clone, Debug, Default)]
pub struct Carry {
    /// The table's owner, when it is not this run's role: the months' steps run as it.
    pub run_as: Option<String>,
    tablespace: Option<String>,
    grants: Vec<Grant>,
    /// Row-level security: (enabled, forced), and the partition it is taken from.
    rls: (bool, bool),
    rls_from: Option<Relation>,
    policies: Vec<Policy>,
    /// Tables the carried policies read: creating them locks those ACCESS SHARE.
    pub policy_tables: Vec<Relation>,
    pub publications: Vec<Publication>,
    /// Whether the owner may create temporary tables (a move published through the root keeps
    /// its rows in one until the attach).
    pub may_use_temp: bool,
    /// Why no month of this table can be created by this run, if so.
    pub refusal: Option<String>,
    /// Whether a move's rows are deleted and inserted as this run's role rather than as the
    /// owner: when the owner is another role and this one bypasses row-level security (a
    /// superuser, BYPASSRLS), so that no policy of DEFAULT or of the new month hides a row.
    pub moves_as_session: bool,
    /// Whether the role a move's rows are written as bypasses row-level security.
    pub rows_bypass_rls: bool,
    /// Whether the partitioned table itself has forced row-level security (a published move
    /// inserts its rows through it).
    pub parent_forced: bool,
}

/// The owner, and what it and this run's role may do. $1 the table.
const PRIVILEGES: &str = "WITH t AS (SELECT oid, relowner, relnamespace, reltablespace FROM pg_class WHERE oid = $1::text::regclass) \
     SELECT pg_get_userbyid(t.relowner)::text, current_user::text, \
       t.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), \
       coalesce((SELECT spcname::text FROM pg_tablespace WHERE oid = t.reltablespace), ''), \
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
         OR CASE WHEN current_setting('server_version_num')::int >= 160000 THEN pg_has_role(current_user, t.relowner, 'SET') \
                 ELSE pg_has_role(current_user, t.relowner, 'MEMBER') END, \
       has_schema_privilege(t.relowner, t.relnamespace, 'CREATE'), \
       ARRAY(SELECT s.spcname::text FROM pg_tablespace s WHERE s.oid IN (SELECT t.reltablespace UNION \
               SELECT ic.reltablespace FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid WHERE x.indrelid = t.oid) \
             AND NOT has_tablespace_privilege(t.relowner, s.oid, 'CREATE') ORDER BY 1), \
       ARRAY(SELECT DISTINCT k.confrelid::regclass::text FROM pg_constraint k WHERE k.conrelid = t.oid AND k.contype = 'f' \
             AND NOT has_table_privilege(t.relowner, k.confrelid, 'REFERENCES') ORDER BY 1), \
       has_database_privilege(t.relowner, current_database(), 'TEMP'), \
       me.rolsuper OR me.rolbypassrls, \
       coalesce((SELECT d.relrowsecurity AND (d.relforcerowsecurity OR d.relowner <> me.oid) \
                   AND NOT (me.rolsuper OR me.rolbypassrls) \
                   FROM pg_partitioned_table pt JOIN pg_class d ON d.oid = pt.partdefid \
                  WHERE pt.partrelid = t.oid), false), \
       (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE oid = t.relowner), \
       (SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = t.oid) \
     FROM t, (SELECT oid, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user) me";

/// Table and column grants of the parent ($1) and the newest month ($2), but the owners' own.
const GRANTS: &str = "SELECT DISTINCT a.attname::text, \
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

/// Row-level security of the partitions $1 (in the order given).
const RLS: &str = "SELECT p.rel, c.relrowsecurity, c.relforcerowsecurity \
     FROM unnest($1::text[]) WITH ORDINALITY p(rel, o) JOIN pg_class c ON c.oid = p.rel::regclass ORDER BY p.o";

const POLICIES: &str = "SELECT p.polname::text, p.polcmd::text, p.polpermissive, \
       ARRAY(SELECT CASE r WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END FROM unnest(p.polroles) r ORDER BY 1), \
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid) \
     FROM pg_policy p WHERE p.polrelid = $1::text::regclass ORDER BY p.polname";

/// The tables (other than the partition itself) that the policies of $1 read.
const POLICY_TABLES: &str = "SELECT DISTINCT n.nspname::text, r.relname::text FROM pg_policy p \
       JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid AND d.refclassid = 'pg_class'::regclass \
       JOIN pg_class r ON r.oid = d.refobjid JOIN pg_namespace n ON n.oid = r.relnamespace \
     WHERE p.polrelid = $1::text::regclass AND d.refobjid <> p.polrelid AND r.relkind IN ('r', 'p') ORDER BY 1, 2";

/// Publications that cover the table ($1) or any partition of it, by oid: whether each lists the
/// table itself, and whether it lists partitions.
const PUBLICATIONS: &str = "WITH tree AS (SELECT relid, level FROM pg_partition_tree($1::text::regclass)) \
     SELECT p.pubname::text, p.pubviaroot, p.pubinsert, p.pubdelete, bool_or(tree.level = 0), bool_or(tree.level > 0) \
     FROM pg_publication p \
     JOIN pg_publication_tables pt ON pt.pubname = p.pubname \
     JOIN pg_namespace n ON n.nspname = pt.schemaname \
     JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
     JOIN tree ON tree.relid = c.oid \
     GROUP BY 1, 2, 3, 4 ORDER BY 1";

fn query(
    c: &mut dyn Reader,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<postgres::Row>> {
    c.query(sql, params).map_err(|e| Error::db(what, e))
}

/// Reads what the months of `window`'s table carry. Read-only.
pub fn read(c: &mut dyn Reader, window: &Window) -> Result<Carry> {
    let table = window.table.to_string();
    let mut carry = privileges(c, window)?;
    let newest = window.newest().map_or(table.clone(), Relation::to_string);
    for r in query(
        c,
        GRANTS,
        &[&table, &newest],
        "reading the grants of the table and its newest month",
    )? {
        carry.grants.push(Grant {
            column: r.get(0),
            grantee: r.get(1),
            privilege: r.get(2),
            grantable: r.get(3),
        });
    }
    rls(c, window, &mut carry)?;
    carry.publications = query(
        c,
        PUBLICATIONS,
        &[&table],
        "reading the publications of the table",
    )?
    .into_iter()
    .map(|r| Publication {
        name: r.get(0),
        via_root: r.get(1),
        inserts: r.get(2),
        deletes: r.get(3),
        root: r.get(4),
        partitions: r.get(5),
    })
    .collect();
    Ok(carry)
}

/// The owner, whether this run may act as it, and what the owner may not do.
fn privileges(c: &mut dyn Reader, window: &Window) -> Result<Carry> {
    let t = window.table.plain();
    let r = c
        .query_one(PRIVILEGES, &[&window.table.to_string()])
        .map_err(|e| Error::db("reading the table's owner and privileges", e))?;
    let (owner, me, is_me, space): (String, String, bool, String) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let (may_become, creates): (bool, bool) = (r.get(4), r.get(5));
    let (spaces, refs): (Vec<String>, Vec<String>) = (r.get(6), r.get(7));
    let schema = window.table.schema.as_str();
    let refusal = if !may_become {
        Some(format!("this run's role {me} cannot act as {owner}, the owner of {t}, whose months are made as {owner}: run as {owner}, as a role that may SET ROLE {owner}, or as a superuser"))
    } else if !creates {
        Some(format!("{owner}, the owner of {t}, may not create tables in schema {schema}, and its months are made as {owner}: GRANT CREATE ON SCHEMA {schema} TO {owner}"))
    } else if !spaces.is_empty() {
        Some(format!("{owner}, the owner of {t}, may not create tables in tablespace {}, where its months and their indexes go: GRANT CREATE ON TABLESPACE {} TO {owner}", spaces.join(", "), spaces.join(", ")))
    } else if r.get::<_, bool>(10) {
        Some(format!("row-level security on the DEFAULT partition of {t} hides rows from {me} (it is forced, or {me} is not its owner), so the rows to move out of it can be neither all counted nor all moved: run partitions as a superuser or a role with BYPASSRLS (that may SET ROLE {owner})"))
    } else if !refs.is_empty() {
        Some(format!("{owner}, the owner of {t}, lacks REFERENCES on {}, which attaching a month needs (it clones the keys): GRANT REFERENCES ON {} TO {owner}", refs.join(", "), refs.join(", ")))
    } else {
        None
    };
    Ok(Carry {
        run_as: (!is_me).then_some(owner),
        tablespace: (!space.is_empty()).then_some(space),
        may_use_temp: r.get(8),
        moves_as_session: !is_me && r.get::<_, bool>(9),
        rows_bypass_rls: r.get::<_, bool>(9) || r.get::<_, bool>(11),
        parent_forced: r.get(12),
        refusal,
        ..Carry::default()
    })
}

/// Row-level security of the newest partition that has it (DEFAULT last), its policies and the
/// tables they read.
fn rls(c: &mut dyn Reader, window: &Window, carry: &mut Carry) -> Result<()> {
    let candidates: Vec<String> = window
        .ranged
        .iter()
        .rev()
        .map(|r| r.partition.to_string())
        .chain(window.default.as_ref().map(Relation::to_string))
        .collect();
    let rows = query(c, RLS, &[&candidates], "reading row-level security")?;
    let Some(r) = rows.iter().find(|r| r.get::<_, bool>(1)) else {
        return Ok(());
    };
    let from = r.get::<_, String>(0);
    carry.rls = (true, r.get(2));
    let rel = window
        .ranged
        .iter()
        .map(|r| &r.partition)
        .chain(window.default.as_ref())
        .find(|p| p.to_string() == from)
        .cloned();
    carry.policies = query(c, POLICIES, &[&from], "reading row-level security policies")?
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
        .collect();
    carry.policy_tables = query(
        c,
        POLICY_TABLES,
        &[&from],
        "reading the tables policies read",
    )?
    .into_iter()
    .map(|r| Relation::new(r.get::<_, String>(0), r.get::<_, String>(1)))
    .collect();
    carry.rls_from = rel;
    Ok(())
}

/// `text` with every reference to relation `from` as a qualifier (`from.column`) made one to
/// `to`; `None` when `from` appears otherwise (a subquery over that partition itself, named with
/// or without its schema), which no policy of another table can say. String literals are left
/// alone.
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
        let prev = out.chars().last();
        let starts = !prev.is_some_and(|p| ident(p) || p == '"');
        if !in_string && starts && rest.starts_with(&from) {
            let after = &rest[from.len()..];
            let qualified = prev == Some('.');
            match after.chars().next() {
                Some(c) if ident(c) => {} // a longer name that starts with this one
                Some('.') if !qualified => {
                    out.push_str(&to);
                    rest = after;
                    continue;
                }
                _ => return None,
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

    /// Whether the rows a move writes would meet row-level security that binds their writer:
    /// the new month's (carried) forced RLS, or the parent's for a published move.
    pub fn rls_binds_moved_rows(&self) -> bool {
        !self.rows_bypass_rls && (self.rls.1 || self.publishes_moves() && self.parent_forced)
    }

    /// Whether a move's rows must be inserted through the parent to reach subscribers.
    pub fn publishes_moves(&self) -> bool {
        self.publications
            .iter()
            .any(|p| p.root && p.inserts && p.deletes)
    }

    /// What the create-table step runs after `CREATE TABLE`, as the owner, for month `part`:
    /// grants, row-level security, policies and the check that each came out as on the
    /// partition it is taken from. `Err` with the reason when a policy cannot be carried over.
    pub fn statements(&self, part: &Relation) -> std::result::Result<Vec<String>, String> {
        let mut out: Vec<String> = self.grants.iter().map(|g| grant_sql(g, part)).collect();
        if self.rls.0 {
            out.push(format!("ALTER TABLE {part} ENABLE ROW LEVEL SECURITY"));
        }
        if self.rls.1 {
            out.push(format!("ALTER TABLE {part} FORCE ROW LEVEL SECURITY"));
        }
        let Some(from) = &self.rls_from else {
            return Ok(out);
        };
        let mut expected = Vec::new();
        for p in &self.policies {
            let (using, check) = (
                carried(p, &p.using, from, part)?,
                carried(p, &p.check, from, part)?,
            );
            out.push(policy_sql(p, part, &using, &check));
            expected.push((p.name.clone(), using, check));
        }
        if !expected.is_empty() {
            out.push(verify_policies(part, &expected));
        }
        Ok(out)
    }
}

fn grant_sql(g: &Grant, part: &Relation) -> String {
    format!(
        "GRANT {}{} ON {part} TO {}{}",
        g.privilege,
        g.column
            .as_deref()
            .map_or(String::new(), |c| format!(" ({})", quote_ident(c))),
        g.grantee,
        if g.grantable {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    )
}

/// A policy expression as it must read on `part`.
fn carried(
    p: &Policy,
    expr: &Option<String>,
    from: &Relation,
    part: &Relation,
) -> std::result::Result<Option<String>, String> {
    expr.as_ref()
        .map(|e| {
            requalify(e, from.name.as_str(), part.name.as_str()).ok_or_else(|| {
                format!(
                    "policy {} of {} refers to that partition itself ({e}), so it cannot be carried over to {}: rewrite it without naming the partition, or create the month by hand",
                    p.name,
                    from.plain(),
                    part.plain()
                )
            })
        })
        .transpose()
}

fn policy_sql(
    p: &Policy,
    part: &Relation,
    using: &Option<String>,
    check: &Option<String>,
) -> String {
    format!(
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
    )
}

/// A statement that fails the step (and so creates nothing) when a policy's expressions on the
/// new month do not read back as the ones it was carried from.
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
           IF bad IS NOT NULL THEN RAISE EXCEPTION 'row-level security policies % do not read back on % as where they come from: create this month by hand', bad, {}; END IF; \
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
        for self_ref in [
            "(EXISTS ( SELECT 1 FROM messages_2026_11 q WHERE q.t = t))",
            "(EXISTS ( SELECT 1 FROM other.messages_2026_11 q WHERE q.t = t))",
            // A column of another table named like the partition: refused, to be safe.
            "(x.messages_2026_11 = 1)",
        ] {
            assert_eq!(
                requalify(self_ref, "messages_2026_11", "m"),
                None,
                "{self_ref}"
            );
        }
        assert_eq!(
            requalify("(\"Odd Name\".t = 1)", "Odd Name", "new one").as_deref(),
            Some("(\"new one\".t = 1)")
        );
    }
}
