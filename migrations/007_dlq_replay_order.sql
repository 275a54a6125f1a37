-- 007_dlq_replay_order: `dlq replay` streams pending entries in their original order and holds
-- back the later entries of a key that still has an earlier pending entry (docs/operations.md).
--
-- dlq_entries_pending_origin: keyset pages in (original_topic, original_partition,
-- original_offset, id) order, so a replay of any size reads a page at a time.
-- dlq_entries_pending_key: a key's pending entries in order, for the keys of a page. On md5 of the
-- key, not the key: a btree entry is limited to ~2.7 kB and a Kafka key is not.

CREATE INDEX dlq_entries_pending_origin
    ON dlq_entries (original_topic, original_partition, original_offset, id)
    WHERE status = 'pending';

CREATE INDEX dlq_entries_pending_key
    ON dlq_entries (original_topic, md5(original_key), original_partition, original_offset)
    WHERE status = 'pending';
