//! The CHECK kind, declared only here (no platform version uses it yet), through the lifecycle
//! every operation kind goes through ([`common::lifecycle`]); and the months the runner makes
//! while and after it goes on.

mod common;

use common::lifecycle::{lifecycle, Case};
use common::months::*;
use common::*;
use meta_chat_migrations::engine::ops::check::Check;
use meta_chat_migrations::engine::ops::{Declaration, Resolution, Rule};
use meta_chat_migrations::migrate::apply_declaration;

/// Not the README's example (`messages_content_not_empty`), so that following its recipe for a
/// real version leaves this test alone.
static ROLE_NOT_EMPTY: Check = Check {
    name: "messages_role_not_empty",
    table: "messages",
    expression: "(role <> ''::text)",
};

static EMPTY_ROLES: Rule = Rule {
    id: "empty-roles",
    label: "violations",
    what: "have an empty role",
    op: &ROLE_NOT_EMPTY,
    resolution: Resolution::MoveRows {
        archive: "empty_roles_archive",
    },
    after: &[],
};

static DECLARATION: Declaration = Declaration {
    version: 0,
    rules: &[&EMPTY_ROLES],
    phases: &[&[&ROLE_NOT_EMPTY]],
    partitioned: &["messages"],
    source: "tests/op_check.rs",
};

const REMOVE: &str = "ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_role_not_empty";

#[test]
fn a_check_constraint_goes_through_the_lifecycle() {
    lifecycle(&Case {
        declaration: &DECLARATION,
        setup: "",
        remove: REMOVE,
        violating: Some((
            "INSERT INTO messages (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\")
               VALUES ('violating-1', 't1', 'c1', '', 'x', '2025-03-03')",
            "23514",
        )),
        other_shape: "ALTER TABLE messages ADD CONSTRAINT messages_role_not_empty CHECK (role <> 'x')",
    });
}

/// A month an interrupted run left before the CHECK went on the parent lacks it and could never
/// be attached: the next window run drops it (it is empty) and makes the month again, which then
/// has it; one with rows is refused, named, never left to fail its ATTACH on every run.
#[test]
fn a_leftover_month_without_the_check_is_made_again_or_refused_by_name() {
    let db = latest_without_window();
    let mut c = db.client();
    let leftover = |c: &mut postgres::Client, month: &str, first: &str, next: &str| {
        c.batch_execute(&format!(
            "CREATE TABLE messages_{month} (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
             ALTER TABLE messages_{month} ADD CONSTRAINT mcm_month_bound CHECK (\"createdAt\" >= '{first} 00:00:00+00' AND \"createdAt\" < '{next} 00:00:00+00');"
        ))
        .unwrap();
    };
    leftover(&mut c, "2027_01", "2027-01-01", "2027-02-01");
    leftover(&mut c, "2027_03", "2027-03-01", "2027-04-01");
    c.batch_execute("INSERT INTO messages_2027_03 (id, \"tenantId\", \"conversationId\", role, content, \"createdAt\") VALUES ('kept', 't1', 'c1', 'user', 'x', '2027-03-03')")
        .unwrap();
    apply_declaration(&db.settings(), &DECLARATION).unwrap();
    let lacks = |c: &mut postgres::Client, t: &str| {
        count(c, &format!("SELECT count(*) FROM pg_constraint WHERE conrelid = '{t}'::regclass AND conname = 'messages_role_not_empty'")) == 0
    };
    assert!(
        lacks(&mut c, "messages_2027_01"),
        "the leftover predates the CHECK"
    );
    // The negative: attached as it is, it is refused.
    let err = c
        .batch_execute("ALTER TABLE messages ATTACH PARTITION messages_2027_01 FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-02-01 00:00+00')")
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("messages_role_not_empty"),
        "{err}"
    );
    let out = partitions(&db, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("public.messages 2027-03: public.messages_2027_03 is a standalone table an interrupted run left, but rows were written into it since"),
        "{line}"
    );
    assert!(partition_names(&mut c, "messages").contains(&"messages_2027_01".into()));
    assert!(!lacks(&mut c, "messages_2027_01"));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM messages_2027_03 WHERE id = 'kept'"
        ),
        1
    );
}
