-- Monthly RANGE partitioning of messages and api_logs on "createdAt" (2024-01 .. 2026-12 plus a
-- DEFAULT partition), rows copied across.
--
-- This reproduces the platform's original migration faithfully, bug included: only the
-- conversation foreign key is restored. messages."tenantId" and api_logs."tenantId" lose their
-- foreign keys to tenants. A database stopped here is the broken state real deployments are in.
-- History: never edit this file (refinery checksums it). The fix is 20251121000002 and 20251121000003.
DO $partition$
DECLARE
  month date;
BEGIN
  -- messages ------------------------------------------------------------------------------
  CREATE TABLE messages_partitioned (LIKE messages INCLUDING DEFAULTS)
    PARTITION BY RANGE ("createdAt");
  ALTER TABLE messages_partitioned
    ADD CONSTRAINT messages_partitioned_pkey PRIMARY KEY (id, "createdAt");
  FOR month IN SELECT generate_series(date '2024-01-01', date '2026-12-01', interval '1 month')::date
  LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF messages_partitioned FOR VALUES FROM (%L) TO (%L)',
                   'messages_' || to_char(month, 'YYYY_MM'), month, (month + interval '1 month')::date);
  END LOOP;
  CREATE TABLE messages_default PARTITION OF messages_partitioned DEFAULT;
  INSERT INTO messages_partitioned SELECT * FROM messages;

  EXECUTE 'ALTER TABLE messages_partitioned ADD CONSTRAINT messages_partitioned_conversation_fkey
    FOREIGN KEY ("conversationId") REFERENCES conversations(id) ON DELETE CASCADE';
  -- (the tenant foreign key was forgotten here: ISSUE-047)

  DROP TABLE messages;
  ALTER TABLE messages_partitioned RENAME TO messages;
  CREATE INDEX "messages_conversationId_createdAt_idx" ON messages ("conversationId", "createdAt");

  -- api_logs ------------------------------------------------------------------------------
  CREATE TABLE api_logs_partitioned (LIKE api_logs INCLUDING DEFAULTS)
    PARTITION BY RANGE ("createdAt");
  ALTER TABLE api_logs_partitioned
    ADD CONSTRAINT api_logs_partitioned_pkey PRIMARY KEY (id, "createdAt");
  FOR month IN SELECT generate_series(date '2024-01-01', date '2026-12-01', interval '1 month')::date
  LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF api_logs_partitioned FOR VALUES FROM (%L) TO (%L)',
                   'api_logs_' || to_char(month, 'YYYY_MM'), month, (month + interval '1 month')::date);
  END LOOP;
  CREATE TABLE api_logs_default PARTITION OF api_logs_partitioned DEFAULT;
  INSERT INTO api_logs_partitioned SELECT * FROM api_logs;

  DROP TABLE api_logs;
  ALTER TABLE api_logs_partitioned RENAME TO api_logs;
END
$partition$;
