//! Adopting a database that Prisma migrated: built here by hand-written SQL (not by the crate's
//! migrations), with extra columns, other partition names, a `_prisma_migrations` table and
//! orphaned rows.

mod common;

use common::*;
use meta_chat_migrations::embedded;

const PRISMA_SCHEMA: &str = r#"
CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL, plan text NOT NULL DEFAULT 'free',
                      "createdAt" timestamptz NOT NULL DEFAULT now(), "updatedAt" timestamptz);
CREATE TABLE conversations (id text PRIMARY KEY, "tenantId" text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
                            title text, "createdAt" timestamptz NOT NULL DEFAULT now());
CREATE TABLE messages (id text NOT NULL, "tenantId" text NOT NULL, "conversationId" text NOT NULL,
                       role text NOT NULL, content text NOT NULL, metadata jsonb,
                       "createdAt" timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, "createdAt"))
  PARTITION BY RANGE ("createdAt");
CREATE TABLE messages_y2025m01 PARTITION OF messages FOR VALUES FROM ('2025-01-01') TO ('2025-02-01');
CREATE TABLE messages_y2025m02 PARTITION OF messages FOR VALUES FROM ('2025-02-01') TO ('2025-03-01');
CREATE TABLE messages_rest PARTITION OF messages DEFAULT;
ALTER TABLE messages ADD CONSTRAINT messages_partitioned_conversation_fkey
  FOREIGN KEY ("conversationId") REFERENCES conversations(id) ON DELETE CASCADE;
CREATE TABLE api_logs (id text NOT NULL, "tenantId" text, method text NOT NULL, path text NOT NULL,
                       status int NOT NULL, duration int NOT NULL, "userAgent" text,
                       "createdAt" timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, "createdAt"))
  PARTITION BY RANGE ("createdAt");
CREATE TABLE api_logs_y2025m01 PARTITION OF api_logs FOR VALUES FROM ('2025-01-01') TO ('2025-02-01');
CREATE TABLE api_logs_rest PARTITION OF api_logs DEFAULT;

CREATE TABLE _prisma_migrations (id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL,
  finished_at timestamptz, migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz,
  started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count int NOT NULL DEFAULT 0);
INSERT INTO _prisma_migrations VALUES
  ('1', 'aaa', '2024-01-01', '20240101000000_init', NULL, NULL, '2024-01-01', 1),
  ('2', 'bbb', '2024-05-20', '20240520120000_partition_messages_api_logs', NULL, NULL, '2024-05-20', 1),
  ('3', 'ccc', NULL, '20251121000002_restore_tenant_fk', 'failed', '2025-11-21', '2025-11-21', 0);

INSERT INTO tenants (id, name) SELECT 't' || g, 'T' || g FROM generate_series(1, 5) g;
INSERT INTO conversations (id, "tenantId") SELECT 'c' || g, 't' || g FROM generate_series(1, 5) g;
INSERT INTO messages (id, "tenantId", "conversationId", role, content, metadata, "createdAt")
  SELECT 'm' || g, 't' || (1 + g % 5), 'c' || (1 + g % 5), 'user', 'hi', '{"k": 1}', timestamptz '2025-01-01' + g * interval '1 hour'
  FROM generate_series(1, 2000) g;
INSERT INTO messages (id, "tenantId", "conversationId", role, content, "createdAt")
  VALUES ('orphan-1', 'deleted-tenant', 'c1', 'user', 'lost', '2025-01-05'), ('orphan-2', 'deleted-tenant', 'c2', 'user', 'lost', '2025-02-05');
INSERT INTO api_logs (id, "tenantId", method, path, status, duration, "createdAt")
  SELECT 'l' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 't' || (1 + g % 5) END, 'GET', '/', 200, 1, timestamptz '2025-01-01' + g * interval '1 hour'
  FROM generate_series(1, 500) g;
INSERT INTO api_logs (id, "tenantId", method, path, status, duration, "createdAt")
  VALUES ('orphan-log', 'deleted-tenant', 'GET', '/', 404, 1, '2025-01-09');
"#;

fn prisma_db() -> TestDb {
    let db = TestDb::new();
    db.client().batch_execute(PRISMA_SCHEMA).unwrap();
    db
}

fn history_exists(db: &TestDb) -> bool {
    count(
        &mut db.client(),
        "SELECT count(*) FROM pg_class WHERE relname = 'refinery_schema_history'",
    ) > 0
}

#[test]
fn without_baseline_it_refuses_and_says_what_it_found() {
    let db = prisma_db();
    let out = db.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    for expected in [
        "has the platform's schema but no migration history",
        "tables tenants, conversations, messages (partitioned), api_logs (partitioned)",
        "tenant foreign keys: messages no, api_logs no",
        "_prisma_migrations finished: 20240101000000_init, 20240520120000_partition_messages_api_logs)",
        "run `meta-chat-migrate migrate --baseline 20240520120000`",
    ] {
        assert!(line.contains(expected), "missing {expected:?} in {line}");
    }
    assert!(
        !line.contains("20251121000002_restore_tenant_fk"),
        "a rolled-back Prisma migration is not finished: {line}"
    );
    assert!(
        !history_exists(&db),
        "the refusal created the history table"
    );
}

#[test]
fn a_baseline_that_does_not_match_the_catalog_is_refused() {
    let db = prisma_db();
    for (version, reason) in [
        (
            "20251121000002",
            "implies messages_tenant_id_fkey and a valid messages_tenant_id_idx",
        ),
        ("20240101000000", "already partitioned"),
    ] {
        let out = db.run(&["migrate", "--baseline", version]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains(&format!(
                "--baseline {version} does not match this database"
            )),
            "{line}"
        );
        assert!(line.contains(reason), "{line}");
    }
    let out = db.run(&["migrate", "--baseline", "42"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!history_exists(&db));
}

#[test]
fn baseline_with_orphans_refuses_before_recording_anything() {
    let db = prisma_db();
    let before = row_counts(&mut db.client());
    let out = db.run(&["migrate", "--baseline", "20240520120000"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("2 messages (sample ids: orphan-1, orphan-2)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(row_counts(&mut db.client()), before);
    assert!(!history_exists(&db), "a refused run recorded the baseline");
}

#[test]
fn baseline_then_the_rest_adopts_the_database() {
    let db = prisma_db();
    let mut c = db.client();
    let before = row_counts(&mut c);
    let out = db.run(&[
        "migrate",
        "--baseline",
        "20240520120000",
        "--orphans",
        "archive",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let history: Vec<i64> = c
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        history,
        embedded::migrations()
            .iter()
            .map(|m| m.version())
            .collect::<Vec<_>>()
    );
    let after = row_counts(&mut c);
    assert_eq!(
        after[2].1,
        before[2].1 - 2,
        "exactly the two orphaned messages were archived"
    );
    assert_eq!(after[3].1, before[3].1);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM orphaned_messages_archive"),
        2
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM orphaned_api_logs_archive"),
        1
    );
    // Prisma's extra columns and data are untouched.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages WHERE metadata ->> 'k' = '1'"
        ),
        2000
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM _prisma_migrations"), 3);
    // The FK covers Prisma's own partition names, and the months the runner created after
    // them (through the window's end) too.
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_constraint WHERE conname = 'messages_tenant_id_fkey' AND conparentid <> 0 AND conrelid::regclass::text IN ('messages_y2025m01', 'messages_y2025m02', 'messages_rest')"),
        3
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM pg_constraint WHERE conname = 'messages_tenant_id_fkey' AND conparentid <> 0"),
        count(&mut c, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass")
    );
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // And from now on it is an ordinary database: nothing to do, --baseline refused.
    assert_eq!(db.run(&["migrate"]).status.code(), Some(0));
    let out = db.run(&["migrate", "--baseline", "20240520120000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).contains("already has a migration history"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn baseline_on_an_empty_database_is_refused() {
    let db = TestDb::new();
    let out = db.run(&["migrate", "--baseline", "20240520120000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        error_line(&out).contains("none of the platform's tables"),
        "{}",
        stderr(&out)
    );
}

/// Prisma's `@updatedAt` and friends: NOT NULL columns without a default. `verify` must fill
/// them in its own rows, or it would fail TEST 1 and then claim things about constraints it
/// never tried.
const REQUIRED_COLUMNS: &str = r#"
CREATE TYPE "Plan" AS ENUM ('FREE', 'PRO');
UPDATE tenants SET "updatedAt" = now();
ALTER TABLE tenants ALTER COLUMN "updatedAt" SET NOT NULL, ADD COLUMN plan_kind "Plan" NOT NULL DEFAULT 'FREE';
ALTER TABLE tenants ALTER COLUMN plan_kind DROP DEFAULT;
ALTER TABLE conversations ADD COLUMN "updatedAt" timestamptz NOT NULL DEFAULT now();
ALTER TABLE conversations ALTER COLUMN "updatedAt" DROP DEFAULT;
ALTER TABLE messages ADD COLUMN "tokenCount" integer NOT NULL DEFAULT 0, ADD COLUMN attrs jsonb NOT NULL DEFAULT '{}';
ALTER TABLE messages ALTER COLUMN "tokenCount" DROP DEFAULT, ALTER COLUMN attrs DROP DEFAULT;
ALTER TABLE api_logs ADD COLUMN "requestId" uuid NOT NULL DEFAULT gen_random_uuid(), ADD COLUMN cached boolean NOT NULL DEFAULT false;
ALTER TABLE api_logs ALTER COLUMN "requestId" DROP DEFAULT, ALTER COLUMN cached DROP DEFAULT;
"#;

#[test]
fn verify_fills_the_required_columns_of_an_adopted_database() {
    let db = prisma_db();
    db.client().batch_execute(REQUIRED_COLUMNS).unwrap();
    // The columns are required: a plain insert without them fails.
    let err = db
        .client()
        .execute("INSERT INTO tenants (id, name) VALUES ('x', 'x')", &[])
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23502"));
    let out = db.run(&[
        "migrate",
        "--baseline",
        "20240520120000",
        "--orphans",
        "delete",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = db.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.contains(" PASSED: "))
            .count(),
        10
    );
}

/// A required column of a type the fixture cannot fill: the assertions that need its rows say
/// they could not run, none passes vacuously (TEST 3 used to: no message, so "0 remain"), and
/// none blames a constraint (TEST 7 used to say a tenant delete removed a row never written).
#[test]
fn verify_says_what_it_could_not_run() {
    let db = TestDb::broken();
    db.client()
        .batch_execute(
            "ALTER TABLE messages ADD COLUMN geo point NOT NULL DEFAULT '(0,0)';
             ALTER TABLE messages ALTER COLUMN geo DROP DEFAULT;",
        )
        .unwrap();
    let out = db.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("TEST 1 NOT RUN: the test rows cannot be written: public.messages has a NOT NULL column geo of type point without a default"),
        "{text}"
    );
    for n in [2, 3, 7, 8] {
        assert!(
            text.contains(&format!("TEST {n} NOT RUN: ")),
            "TEST {n}: {text}"
        );
    }
    assert!(!text.contains("deleted its api_logs row"), "{text}");
    // The catalog assertions still ran, and fail on this broken database.
    for n in [4, 5, 9, 10] {
        assert!(
            text.contains(&format!("TEST {n} FAILED: ")),
            "TEST {n}: {text}"
        );
    }
    assert!(
        error_line(&out).contains("validation assertions failed or could not run"),
        "{}",
        stderr(&out)
    );
}
