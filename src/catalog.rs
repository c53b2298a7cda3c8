//! The catalog facts that every part of the runner shares: relations, partition trees (with
//! row estimates), the names taken in a schema, columns, the tables a table's keys reference,
//! the server's version, and index builds in progress. Each operation kind reads its own objects
//! in its file (`engine/ops/`), the monthly window reads its own in `engine/partitions/`, and a
//! command reads what only it needs in its module (`schema.rs`, `history.rs`, `adopt.rs`,
//! `verify.rs`, `check.rs`'s layout, `boot.rs`'s one question, and `db/lock.rs`'s `pg_locks` and
//! `pg_stat_activity` for the lock holders): what a fact means is decided where it is used. Relations are always schema-qualified
//! ([`Relation`]); names are compared as the catalog stores them.

use std::collections::BTreeSet;

use postgres::types::ToSql;
use postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::sql::Relation;

/// What every planner reads the catalog through: a client or a transaction alike. Object-safe
/// (unlike the driver's `GenericClient`), so that the operation kinds can be trait objects.
pub trait Reader {
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, postgres::Error>;
    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, postgres::Error>;
    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, postgres::Error>;
}

impl<C: GenericClient> Reader for C {
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        GenericClient::query(self, sql, params)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, postgres::Error> {
        GenericClient::query_opt(self, sql, params)
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, postgres::Error> {
        GenericClient::query_one(self, sql, params)
    }
}

fn db_err(what: &str) -> impl FnOnce(postgres::Error) -> Error + '_ {
    move |e| Error::db(what, e)
}

/// `server_version_num`, e.g. 150004.
pub fn server_version(c: &mut dyn Reader) -> Result<i32> {
    let v: String = c
        .query_one("SELECT current_setting('server_version_num')", &[])
        .map_err(db_err("reading the server version"))?
        .get(0);
    v.parse()
        .map_err(|_| Error::db_message("reading the server version", v))
}

/// What the server can do, read once per run.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub server_version: i32,
}

impl Caps {
    pub fn read(c: &mut dyn Reader) -> Result<Caps> {
        Ok(Caps {
            server_version: server_version(c)?,
        })
    }

    /// `ALTER TABLE <partitioned> ADD FOREIGN KEY ... NOT VALID` (PostgreSQL 18+).
    pub fn not_valid_fk_on_partitioned(&self) -> bool {
        self.server_version >= 180000
    }
}

/// A table or index: its oid and kind (`r` table, `p` partitioned table, `i`/`I` index...).
#[derive(Clone, Debug)]
pub struct RelInfo {
    pub oid: u32,
    pub kind: char,
}

pub fn relation(c: &mut dyn Reader, rel: &Relation) -> Result<Option<RelInfo>> {
    Ok(c
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&rel.schema.as_str(), &rel.name.as_str()],
        )
        .map_err(db_err("looking up a relation"))?
        .map(|r| RelInfo {
            oid: r.get(0),
            kind: r.get::<_, String>(1).chars().next().unwrap_or('?'),
        }))
}

pub fn table_exists(c: &mut dyn Reader, rel: &Relation) -> Result<bool> {
    Ok(relation(c, rel)?.is_some_and(|r| matches!(r.kind, 'r' | 'p')))
}

/// One relation of a partition tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub oid: u32,
    pub rel: Relation,
    /// `r` (a leaf table) or `p` (partitioned).
    pub kind: char,
    pub level: i32,
    /// The oid of its direct parent, 0 for the root.
    pub parent: u32,
    pub estimated_rows: i64,
    /// `pg_get_expr(relpartbound)`: `FOR VALUES FROM (...) TO (...)`, `DEFAULT`, or empty.
    pub bound: String,
}

impl Node {
    pub fn is_leaf(&self) -> bool {
        self.kind != 'p'
    }

    pub fn is_default(&self) -> bool {
        self.bound == "DEFAULT"
    }
}

const TREE: &str = "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, p.level, \
       coalesce(i.inhparent, 0::oid), greatest(c.reltuples, 0)::int8, \
       coalesce(pg_get_expr(c.relpartbound, c.oid), '') \
     FROM pg_partition_tree($1::oid::regclass) p \
     JOIN pg_class c ON c.oid = p.relid \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_inherits i ON i.inhrelid = c.oid \
     ORDER BY p.level, n.nspname, c.relname";

/// The table and, if it is partitioned, every partition below it, root first, then by level
/// and name. `None` if the table does not exist.
pub fn tree(c: &mut dyn Reader, table: &Relation) -> Result<Option<Vec<Node>>> {
    let Some(info) = relation(c, table)? else {
        return Ok(None);
    };
    // pg_partition_tree lists nothing for a table outside any partition tree.
    let rows = c
        .query(TREE, &[&info.oid])
        .map_err(db_err("listing the partitions"))?;
    let rows = if rows.is_empty() {
        c.query(
            &TREE.replace(
                "pg_partition_tree($1::oid::regclass) p",
                "(SELECT $1::oid AS relid, 0 AS level) p",
            ),
            &[&info.oid],
        )
        .map_err(db_err("reading a table"))?
    } else {
        rows
    };
    Ok(Some(
        rows.into_iter()
            .map(|r| Node {
                oid: r.get(0),
                rel: Relation::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                kind: r.get::<_, String>(3).chars().next().unwrap_or('?'),
                level: r.get(4),
                parent: r.get(5),
                estimated_rows: r.get(6),
                bound: r.get(7),
            })
            .collect(),
    ))
}

/// Every relation name in each of `schemas`, for choosing names that are free.
pub fn names_in(c: &mut dyn Reader, schemas: &[String]) -> Result<BTreeSet<(String, String)>> {
    Ok(c.query(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1)",
        &[&schemas],
    )
    .map_err(db_err("listing relation names"))?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Backends other than this one that are building an index on `table` (the index `index`, or
/// one not yet named), from `pg_stat_progress_create_index`.
pub fn builds_in_progress(c: &mut dyn Reader, table: u32, index: u32) -> Result<Vec<i32>> {
    Ok(c.query(
        "SELECT pid FROM pg_stat_progress_create_index WHERE pid <> pg_backend_pid() \
             AND (index_relid = $2 OR (relid = $1 AND index_relid = 0))",
        &[&table, &index],
    )
    .map_err(db_err("reading the progress of index builds"))?
    .into_iter()
    .map(|r| r.get(0))
    .collect())
}

/// The columns of a table that an INSERT may name (generated columns are computed), in order.
pub fn columns(c: &mut dyn Reader, oid: u32) -> Result<Vec<String>> {
    Ok(c
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&oid],
        )
        .map_err(db_err("reading columns"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// The tables a table's foreign keys reference, schema-qualified, each once.
pub fn referenced_tables(c: &mut dyn Reader, oid: u32) -> Result<Vec<crate::sql::Relation>> {
    Ok(c.query(
        "SELECT DISTINCT n.nspname::text, r.relname::text FROM pg_constraint k
               JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace n ON n.oid = r.relnamespace
              WHERE k.conrelid = $1 AND k.contype = 'f' ORDER BY 1, 2",
        &[&oid],
    )
    .map_err(db_err("reading the tables the keys reference"))?
    .into_iter()
    .map(|r| crate::sql::Relation::new(r.get::<_, String>(0), r.get::<_, String>(1)))
    .collect())
}
