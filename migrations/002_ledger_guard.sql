-- The worker's "first outcome wins" guard looks decisions up by the record they came from
-- (input topic/partition/offset, the same key as dlq_entries.dlq_key); see worker/sink.py.
CREATE INDEX routing_decisions_input_key
    ON routing_decisions ((input_topic || '/' || input_partition::text || '/' || input_offset::text));
