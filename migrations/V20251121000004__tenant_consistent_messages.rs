// A message belongs to its conversation's tenant: a unique index on conversations (id,
// "tenantId"), and messages ("conversationId", "tenantId") REFERENCES conversations (id,
// "tenantId") ON DELETE CASCADE (ON UPDATE NO ACTION: a conversation with messages cannot
// silently change tenant).
//
// meta-chat-migrate builds both online before applying this version (the index concurrently,
// the key per partition NOT VALID + VALIDATE, then adopted by messages), so under the runner
// this SQL finds everything in place and only records itself. Applied without the runner it
// reaches the same end state the blocking way. It is generated from the version's declaration
// in src/plan.rs; its checksum is pinned by a test, so a change to that declaration or to the
// generator fails CI instead of every deployed database.
//
// History: never edit this file or what it generates; fix forward with a new version.
pub fn migration() -> String {
    crate::plan::fallback_sql(crate::plan::TENANT_CONSISTENT_MESSAGES)
}
