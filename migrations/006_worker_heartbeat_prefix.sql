-- The topic prefix each worker routes under, so `router-stream policy show` lists only the
-- workers of its own deployment when several (ROUTER_TOPIC_PREFIX) share one database.
-- Rows written before this column existed have '' (the default prefix).
ALTER TABLE worker_heartbeats ADD COLUMN topic_prefix text NOT NULL DEFAULT '';
CREATE INDEX worker_heartbeats_topic_prefix ON worker_heartbeats (topic_prefix);
