//! Plain data that errors carry and reports show, depending on nothing else in the crate: what a
//! pre-flight found (rows an operation about to go on would refuse), objects of a declared name
//! that are not what is declared, and months a run did not create.

use std::fmt;

use serde::Serialize;

/// How many sample ids a report shows per rule.
pub const SAMPLE_SIZE: i64 = 10;

/// The rows one rule found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RuleCount {
    /// The rule's stable id, e.g. `orphaned-messages`.
    pub rule: String,
    /// What `check` calls it: `orphans`, `cross-tenant`.
    pub label: String,
    /// The table the rows are in, without its schema, e.g. `messages`.
    pub table: String,
    /// What is wrong with the rows, after "N messages (sample ids: ...)": e.g. "reference no
    /// tenant".
    pub what: String,
    /// How many rows the rule found; 0 when there are none.
    pub count: i64,
    /// Up to ten ids of such rows.
    pub sample_ids: Vec<String>,
}

/// The refusal of `--orphans refuse`: every rule that found rows.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Findings {
    /// One count per rule, in the order the rules run (rules that found nothing included).
    pub rules: Vec<RuleCount>,
}

impl Findings {
    /// The rows found by all rules together.
    pub fn total(&self) -> i64 {
        self.rules.iter().map(|r| r.count).sum()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing to add the foreign keys:")?;
        for r in self.rules.iter().filter(|r| r.count > 0) {
            write!(
                f,
                " {} {} (sample ids: {}) {};",
                r.count,
                r.table,
                r.sample_ids.join(", "),
                r.what
            )?;
        }
        write!(
            f,
            " nothing was changed; inspect them with `meta-chat-migrate check`, then rerun with --orphans archive (moves them to *_archive tables) or --orphans delete"
        )
    }
}

/// Something of a declared name that is not what is declared.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Conflict {
    /// The object, e.g. `constraint fk_x on public.messages` or `index public.ix_y`.
    pub object: String,
    /// What the database has under that name, e.g. `NOT VALID` or another definition.
    pub found: String,
    /// What the migration declares under that name.
    pub expected: String,
}

/// A month, or a whole table's window, that a run does not create, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NotCreated {
    /// The partitioned table, as `schema.name`.
    pub table: String,
    /// The month, as `YYYY-MM`; `None`: none of the table's months.
    pub month: Option<String>,
    /// Why it was not created: the refusal or the error, in words.
    pub reason: String,
}

impl fmt::Display for NotCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.month {
            Some(m) => write!(f, "{} {m}: {}", self.table, self.reason),
            None => write!(f, "{}: {}", self.table, self.reason),
        }
    }
}
