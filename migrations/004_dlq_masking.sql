-- 004_dlq_masking: DLQ rows hold a masked copy of what failed (SPEC §5: "PII named by the policy is
-- masked in what is persisted"); the original bytes stay byte-exact on the router.dlq topic.
--
-- The worker and `dlq reindex` mask key, value, headers, error, signal_id, tenant and kind per the
-- policy's `redact` section (router_stream/core/redaction.py). When that changed key, value or
-- headers, `masked` is true and `dlq replay` sends the record read back from router.dlq at
-- (dlq_topic, dlq_partition, dlq_offset) instead of the columns here; an entry whose record is
-- past the topic's retention cannot be replayed byte-exact and is reported, not sent.
-- Rows written before this migration have no coordinates (NULL) and `masked` false: replay keeps
-- using their columns, and `dlq reindex` masks them and fills the coordinates in.

ALTER TABLE dlq_entries
    ADD COLUMN masked        boolean NOT NULL DEFAULT false,
    ADD COLUMN dlq_topic     text,
    ADD COLUMN dlq_partition integer CHECK (dlq_partition >= 0),
    ADD COLUMN dlq_offset    bigint  CHECK (dlq_offset >= 0),
    -- a masked row must say where its original bytes are, or it could never be replayed
    ADD CONSTRAINT dlq_entries_masked_has_origin_record CHECK (
        NOT masked OR (dlq_topic IS NOT NULL AND dlq_partition IS NOT NULL
                       AND dlq_offset IS NOT NULL));

COMMENT ON COLUMN dlq_entries.masked IS
    'original_key/original_value/original_headers are masked copies; the originals are in router.dlq at dlq_topic/dlq_partition/dlq_offset';
COMMENT ON COLUMN dlq_entries.dlq_offset IS
    'where this entry''s record is on the DLQ topic (the latest failure''s), NULL for rows written before 004';
