-- Worker heartbeats for `router-stream policy show`: one row per worker process, upserted by the
-- worker itself every ROUTER_HEARTBEAT_INTERVAL_S (router_stream/worker/heartbeat.py).
-- Numbered 005 on purpose: 004 is reserved for the DLQ masking migration being written alongside.
--
-- last_seen is the database's clock (now() at the upsert), so staleness is judged on one clock
-- whatever the workers' clocks say. A process's beats are numbered: the upsert ignores a beat
-- older than the stored one of the same process (same started_at), e.g. a write that was
-- cancelled on the worker but still reached the server after the final 'stopped' beat.
-- Rows last seen more than 7 days ago are deleted by workers when they start.
CREATE TABLE worker_heartbeats (
    worker_id          text             PRIMARY KEY,    -- ROUTER_WORKER_ID, default host:pid
    group_id           text             NOT NULL,
    host               text             NOT NULL,
    pid                integer          NOT NULL,
    partitions         jsonb            NOT NULL DEFAULT '[]'::jsonb,  -- [[topic, partition], ...]
    policy_version     text             NOT NULL,       -- the active policy it decides with
    candidate_version  text,                            -- rollout candidate, if one runs
    rollout_mode       text             CHECK (rollout_mode IN ('shadow', 'canary')),
    rollout_share      double precision,
    status             text             NOT NULL CHECK (status IN ('running', 'draining', 'stopped', 'failed')),
    signals_processed  bigint           NOT NULL DEFAULT 0,
    beats              bigint           NOT NULL DEFAULT 0,
    interval_s         double precision NOT NULL CHECK (interval_s > 0),
    software_version   text             NOT NULL DEFAULT '',
    started_at         timestamptz      NOT NULL,
    last_seen          timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX worker_heartbeats_last_seen ON worker_heartbeats (last_seen);
