-- ISSUE-047, second half: restore api_logs."tenantId" -> tenants(id) ON DELETE SET NULL and index
-- "tenantId" (the spec forgot the index: without it every tenant delete scans all of api_logs).
-- "tenantId" is nullable: some logs belong to no tenant. Idempotent: a no-op where the constraint
-- and a valid index exist.
--
-- meta-chat-migrate builds all of this online before applying this file (per-partition
-- NOT VALID + VALIDATE, parent adoption, CREATE INDEX CONCURRENTLY + ATTACH), so under the
-- runner this file only records itself. Applied some other way, it reaches the same end state
-- the blocking way: the parent ADD CONSTRAINT scans every partition while inserts wait.
-- History: never edit this file (refinery checksums it); fix forward with a new version.
DO $restore$
DECLARE
  orphans bigint;
  part regclass;
  child_index text;
  parent_validated boolean;
BEGIN
  -- NULL when the parent has no such constraint; false when an interrupted run on PostgreSQL
  -- 18+ left it NOT VALID.
  SELECT convalidated INTO parent_validated FROM pg_constraint
   WHERE conrelid = 'api_logs'::regclass AND conname = 'api_logs_tenant_id_fkey';
  IF parent_validated IS DISTINCT FROM true THEN
    SELECT count(*) INTO orphans
      FROM api_logs l
     WHERE l."tenantId" IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = l."tenantId");
    IF orphans > 0 THEN
      RAISE EXCEPTION 'refusing to add api_logs_tenant_id_fkey: % orphaned api_logs reference no tenant', orphans
        USING ERRCODE = 'foreign_key_violation',
              HINT = 'run "meta-chat-migrate check", then "meta-chat-migrate migrate --orphans archive" (or delete)';
    END IF;
    -- Partition constraints left NOT VALID by an interrupted online run are validated first, so
    -- that the parent adopts (or, when NOT VALID itself, validates) only validated ones.
    FOR part IN
      SELECT c.conrelid::regclass FROM pg_constraint c
        JOIN pg_partition_tree('api_logs') p ON p.relid = c.conrelid AND p.isleaf
       WHERE c.conname = 'api_logs_tenant_id_fkey' AND NOT c.convalidated
    LOOP
      EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT api_logs_tenant_id_fkey', part);
    END LOOP;
    IF parent_validated IS NULL THEN
      ALTER TABLE api_logs ADD CONSTRAINT api_logs_tenant_id_fkey
        FOREIGN KEY ("tenantId") REFERENCES tenants(id) ON DELETE SET NULL;
    ELSE
      ALTER TABLE api_logs VALIDATE CONSTRAINT api_logs_tenant_id_fkey;
    END IF;
  END IF;

  IF to_regclass('api_logs_tenant_id_idx') IS NULL THEN
    CREATE INDEX api_logs_tenant_id_idx ON api_logs ("tenantId");
  ELSIF NOT (SELECT indisvalid FROM pg_index WHERE indexrelid = 'api_logs_tenant_id_idx'::regclass) THEN
    -- An interrupted online build: finish it, attaching an index on every partition lacking one.
    FOR part IN
      SELECT p.relid FROM pg_partition_tree('api_logs') p
       WHERE p.isleaf AND NOT EXISTS (
         SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
          WHERE i.inhparent = 'api_logs_tenant_id_idx'::regclass AND x.indrelid = p.relid)
    LOOP
      child_index := (SELECT relname FROM pg_class WHERE oid = part) || '_tenantId_idx';
      IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(quote_ident(child_index)) AND NOT indisvalid) THEN
        EXECUTE format('DROP INDEX %I', child_index);
      END IF;
      EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s ("tenantId")', child_index, part);
      EXECUTE format('ALTER INDEX api_logs_tenant_id_idx ATTACH PARTITION %I', child_index);
    END LOOP;
  END IF;
END
$restore$;
