// Baseline schema of the meta-chat platform: tenants, conversations, messages and api_logs,
// unpartitioned, with every tenant foreign key in place.
//
// History: applied databases checksum this file's output. Never edit it; fix forward.
// barrel builds the tables and columns; the named text foreign keys with their ON DELETE
// actions are plain SQL because barrel's foreign() only makes INTEGER columns.
use barrel::{backend::Pg, functions::AutogenFunction, types, Migration};

pub fn migration() -> String {
    let mut m = Migration::new();

    m.create_table("tenants", |t| {
        t.add_column("id", types::text().nullable(false));
        t.add_column("name", types::text().nullable(false));
        t.add_column(
            "createdAt",
            types::custom("TIMESTAMPTZ")
                .nullable(false)
                .default(AutogenFunction::CurrentTimestamp),
        );
        t.set_primary_key(&["id"]);
    });

    m.create_table("conversations", |t| {
        t.add_column("id", types::text().nullable(false));
        t.add_column("tenantId", types::text().nullable(false));
        t.add_column("title", types::text().nullable(true));
        t.add_column(
            "createdAt",
            types::custom("TIMESTAMPTZ")
                .nullable(false)
                .default(AutogenFunction::CurrentTimestamp),
        );
        t.set_primary_key(&["id"]);
    });

    m.create_table("messages", |t| {
        t.add_column("id", types::text().nullable(false));
        t.add_column("tenantId", types::text().nullable(false));
        t.add_column("conversationId", types::text().nullable(false));
        t.add_column("role", types::text().nullable(false));
        t.add_column("content", types::text().nullable(false));
        t.add_column(
            "createdAt",
            types::custom("TIMESTAMPTZ")
                .nullable(false)
                .default(AutogenFunction::CurrentTimestamp),
        );
        t.set_primary_key(&["id"]);
    });

    m.create_table("api_logs", |t| {
        t.add_column("id", types::text().nullable(false));
        t.add_column("tenantId", types::text().nullable(true));
        t.add_column("method", types::text().nullable(false));
        t.add_column("path", types::text().nullable(false));
        t.add_column("status", types::integer().nullable(false));
        t.add_column("duration", types::integer().nullable(false));
        t.add_column(
            "createdAt",
            types::custom("TIMESTAMPTZ")
                .nullable(false)
                .default(AutogenFunction::CurrentTimestamp),
        );
        t.set_primary_key(&["id"]);
    });

    m.inject_custom(
        r#"ALTER TABLE "conversations" ADD CONSTRAINT "conversations_tenantId_fkey" FOREIGN KEY ("tenantId") REFERENCES "tenants"("id") ON DELETE CASCADE"#,
    );
    m.inject_custom(
        r#"ALTER TABLE "messages" ADD CONSTRAINT "messages_tenantId_fkey" FOREIGN KEY ("tenantId") REFERENCES "tenants"("id") ON DELETE CASCADE"#,
    );
    m.inject_custom(
        r#"ALTER TABLE "messages" ADD CONSTRAINT "messages_conversationId_fkey" FOREIGN KEY ("conversationId") REFERENCES "conversations"("id") ON DELETE CASCADE"#,
    );
    m.inject_custom(
        r#"ALTER TABLE "api_logs" ADD CONSTRAINT "api_logs_tenantId_fkey" FOREIGN KEY ("tenantId") REFERENCES "tenants"("id") ON DELETE SET NULL"#,
    );
    m.inject_custom(r#"CREATE INDEX "conversations_tenantId_idx" ON "conversations" ("tenantId")"#);
    m.inject_custom(
        r#"CREATE INDEX "messages_conversationId_createdAt_idx" ON "messages" ("conversationId", "createdAt")"#,
    );

    m.make::<Pg>()
}
