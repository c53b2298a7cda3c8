//! What each version declares to the engine (after sqlx's "a migration declares how it must
//! run"): the rows it must not meet (pre-flight rules), and its online operations in phases.
//! Adding a foreign key or an index on a partitioned table later is a migration file plus a
//! declaration here; the engine needs no change.
//!
//! The declarations are also what `check` and `verify` compare the catalog with, and what the
//! versioned SQL of a version without hand-written SQL is generated from ([`fallback_sql`]).

use crate::sql::{ForeignKeyDef, IndexDef, RefAction};

/// Baseline schema: tables unpartitioned, every tenant FK in place.
pub const BASELINE: i64 = 20240101000000;
/// Monthly partitioning of messages and api_logs; loses both tenant FKs (the bug).
pub const PARTITIONED: i64 = 20240520120000;
/// Restores `messages_tenant_id_fkey` (ON DELETE CASCADE) and `messages_tenant_id_idx`.
pub const RESTORE_MESSAGES_TENANT_FK: i64 = 20251121000002;
/// Restores `api_logs_tenant_id_fkey` (ON DELETE SET NULL) and `api_logs_tenant_id_idx`.
pub const RESTORE_API_LOGS_TENANT_FK: i64 = 20251121000003;
/// A message belongs to its conversation's tenant: `conversations_id_tenant_id_key` and
/// `messages_conversation_tenant_fkey`.
pub const TENANT_CONSISTENT_MESSAGES: i64 = 20251121000004;

/// The tables of the platform's schema.
pub const TABLES: [&str; 4] = ["tenants", "conversations", "messages", "api_logs"];

/// The tables partitioned by month, whose window of partitions `partitions` keeps ahead.
pub const MONTHLY: [&str; 2] = ["messages", "api_logs"];

/// One operation the engine performs online. FK and index operations work per relation, so a
/// partitioned table, each of its partitions, and a standalone table are handled alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    ForeignKey(&'static ForeignKeyDef),
    Index(&'static IndexDef),
}

impl Op {
    /// The constraint or index name: the operation's stable id.
    pub fn id(&self) -> &'static str {
        match self {
            Op::ForeignKey(fk) => fk.name,
            Op::Index(ix) => ix.name,
        }
    }

    pub fn table(&self) -> &'static str {
        match self {
            Op::ForeignKey(fk) => fk.table,
            Op::Index(ix) => ix.table,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Op::ForeignKey(_) => "foreign key",
            Op::Index(ix) if ix.unique => "unique index",
            Op::Index(_) => "index",
        }
    }
}

/// What `archive` and `delete` do with the rows a rule finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// `archive` moves the rows (every column, plus `"archivedAt"`) to `archive`; `delete`
    /// deletes them.
    MoveRows { archive: &'static str },
    /// The rows stay with `column` set NULL; their `(id, "createdAt", column)` is recorded in
    /// `archive` first (under both policies).
    NullColumn {
        column: &'static str,
        archive: &'static str,
    },
}

/// Rows that would violate a foreign key, found before it goes on. A row that an earlier rule
/// of the same run already handles (`after`) is not counted again.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    /// What is wrong with the rows ("reference no tenant").
    pub what: &'static str,
    pub fk: &'static ForeignKeyDef,
    pub resolution: Resolution,
    pub after: &'static [&'static Rule],
}

/// A version's online work: pre-flight rules, then phases of operations (a phase starts when
/// the previous one is done; the operations of one phase share one queue of partitions, and a
/// partition's steps run in the order the operations are declared). Declare an index before a
/// foreign key on the same column: the key's validation then reads the new index instead of the
/// table (an index-only scan where the pages are all-visible, as old months are).
#[derive(Debug)]
pub struct VersionPlan {
    pub version: i64,
    pub rules: &'static [&'static Rule],
    pub phases: &'static [&'static [Op]],
    /// Tables this version expects partitioned (refused before anything changes if not).
    pub partitioned: &'static [&'static str],
}

const TENANT_ID: &[&str] = &["tenantId"];
const ID: &[&str] = &["id"];

pub const MESSAGES_TENANT_FK: ForeignKeyDef = ForeignKeyDef {
    name: "messages_tenant_id_fkey",
    table: "messages",
    columns: TENANT_ID,
    references: "tenants",
    ref_columns: ID,
    on_delete: RefAction::Cascade,
    on_update: RefAction::NoAction,
};

pub const MESSAGES_TENANT_IDX: IndexDef = IndexDef {
    name: "messages_tenant_id_idx",
    table: "messages",
    columns: TENANT_ID,
    unique: false,
};

pub const API_LOGS_TENANT_FK: ForeignKeyDef = ForeignKeyDef {
    name: "api_logs_tenant_id_fkey",
    table: "api_logs",
    columns: TENANT_ID,
    references: "tenants",
    ref_columns: ID,
    on_delete: RefAction::SetNull,
    on_update: RefAction::NoAction,
};

pub const API_LOGS_TENANT_IDX: IndexDef = IndexDef {
    name: "api_logs_tenant_id_idx",
    table: "api_logs",
    columns: TENANT_ID,
    unique: false,
};

/// The target of the composite key: a unique index is a valid foreign-key target without a
/// UNIQUE constraint (it is not partial).
pub const CONVERSATIONS_ID_TENANT_KEY: IndexDef = IndexDef {
    name: "conversations_id_tenant_id_key",
    table: "conversations",
    columns: &["id", "tenantId"],
    unique: true,
};

/// A message's tenant is its conversation's tenant. ON UPDATE NO ACTION: a conversation that
/// has messages cannot silently change tenant (see the README).
pub const MESSAGES_CONVERSATION_TENANT_FK: ForeignKeyDef = ForeignKeyDef {
    name: "messages_conversation_tenant_fkey",
    table: "messages",
    columns: &["conversationId", "tenantId"],
    references: "conversations",
    ref_columns: &["id", "tenantId"],
    on_delete: RefAction::Cascade,
    on_update: RefAction::NoAction,
};

pub const ORPHANED_MESSAGES: Rule = Rule {
    id: "orphaned-messages",
    what: "reference no tenant",
    fk: &MESSAGES_TENANT_FK,
    resolution: Resolution::MoveRows {
        archive: "orphaned_messages_archive",
    },
    after: &[],
};

pub const ORPHANED_API_LOGS: Rule = Rule {
    id: "orphaned-api-logs",
    what: "reference no tenant",
    fk: &API_LOGS_TENANT_FK,
    resolution: Resolution::NullColumn {
        column: "tenantId",
        archive: "orphaned_api_logs_archive",
    },
    after: &[],
};

pub const CROSS_TENANT_MESSAGES: Rule = Rule {
    id: "cross-tenant-messages",
    what: "belong to a conversation of another tenant",
    fk: &MESSAGES_CONVERSATION_TENANT_FK,
    resolution: Resolution::MoveRows {
        archive: "cross_tenant_messages_archive",
    },
    after: &[&ORPHANED_MESSAGES],
};

pub static PLANS: [VersionPlan; 3] = [
    VersionPlan {
        version: RESTORE_MESSAGES_TENANT_FK,
        rules: &[&ORPHANED_MESSAGES],
        phases: &[&[
            Op::Index(&MESSAGES_TENANT_IDX),
            Op::ForeignKey(&MESSAGES_TENANT_FK),
        ]],
        partitioned: &["messages"],
    },
    VersionPlan {
        version: RESTORE_API_LOGS_TENANT_FK,
        rules: &[&ORPHANED_API_LOGS],
        phases: &[&[
            Op::Index(&API_LOGS_TENANT_IDX),
            Op::ForeignKey(&API_LOGS_TENANT_FK),
        ]],
        partitioned: &["api_logs"],
    },
    VersionPlan {
        version: TENANT_CONSISTENT_MESSAGES,
        rules: &[&CROSS_TENANT_MESSAGES],
        phases: &[
            &[Op::Index(&CONVERSATIONS_ID_TENANT_KEY)],
            &[Op::ForeignKey(&MESSAGES_CONVERSATION_TENANT_FK)],
        ],
        partitioned: &["messages"],
    },
];

/// The online work `version` declares, if any.
pub fn of(version: i64) -> Option<&'static VersionPlan> {
    PLANS.iter().find(|p| p.version == version)
}

/// Plain, idempotent, blocking SQL that reaches a version's end state when applied without
/// the runner (psql, another tool), generated from its declaration: a blocking `CREATE INDEX`
/// where the index is missing (an INVALID one is dropped first), and the foreign key on the
/// table where it is missing (partition constraints an interrupted online run left NOT VALID
/// are validated first, so that the table's constraint adopts them). Under the runner, the
/// engine has done all of it and this finds everything in place.
pub fn fallback_sql(version: i64) -> String {
    let Some(plan) = of(version) else {
        return String::new();
    };
    let mut out = vec![format!(
        "-- Generated from the declaration of version {version} (src/plan.rs). Idempotent."
    )];
    for phase in plan.phases {
        for op in *phase {
            out.push(match op {
                Op::Index(ix) => index_fallback(ix),
                Op::ForeignKey(fk) => fk_fallback(fk),
            });
        }
    }
    out.join("\n")
}

fn index_fallback(ix: &IndexDef) -> String {
    let name = crate::sql::Ident::new(ix.name);
    let table = crate::sql::Ident::new(ix.table);
    let create = format!(
        "CREATE {}INDEX {name} ON {table} ({})",
        if ix.unique { "UNIQUE " } else { "" },
        ix.columns
            .iter()
            .map(|c| crate::sql::Ident::new(*c).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    format!(
        "DO $fallback$ BEGIN\n  \
           IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({lit}) AND NOT indisvalid) THEN\n    \
             EXECUTE 'DROP INDEX ' || {lit};\n  \
           END IF;\n  \
           IF to_regclass({lit}) IS NULL THEN\n    \
             EXECUTE {create_lit};\n  \
           END IF;\n\
         END $fallback$;",
        lit = literal(&name.to_string()),
        create_lit = literal(&create)
    )
}

fn fk_fallback(fk: &ForeignKeyDef) -> String {
    let name = literal(fk.name);
    let table = literal(&crate::sql::Ident::new(fk.table).to_string());
    let add = format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE {} ON DELETE {}",
        crate::sql::Ident::new(fk.table),
        crate::sql::Ident::new(fk.name),
        fk.columns.iter().map(|c| crate::sql::Ident::new(*c).to_string()).collect::<Vec<_>>().join(", "),
        crate::sql::Ident::new(fk.references),
        fk.ref_columns.iter().map(|c| crate::sql::Ident::new(*c).to_string()).collect::<Vec<_>>().join(", "),
        fk.on_update.sql(),
        fk.on_delete.sql()
    );
    format!(
        "DO $fallback$ DECLARE part regclass; BEGIN\n  \
           FOR part IN SELECT c.conrelid::regclass FROM pg_constraint c\n      \
               JOIN pg_partition_tree({table}::regclass) p ON p.relid = c.conrelid\n     \
             WHERE c.conname = {name} AND NOT c.convalidated AND p.relid <> {table}::regclass LOOP\n    \
             EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', part, {name});\n  \
           END LOOP;\n  \
           IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {table}::regclass AND conname = {name}) THEN\n    \
             EXECUTE {add_lit};\n  \
           ELSIF NOT (SELECT convalidated FROM pg_constraint WHERE conrelid = {table}::regclass AND conname = {name}) THEN\n    \
             EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', {table}, {name});\n  \
           END IF;\n\
         END $fallback$;",
        add_lit = literal(&add)
    )
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
