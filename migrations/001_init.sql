-- 001_init: the tables of SPEC §5.
--
-- Applied once, in one transaction, by `router-stream db migrate` (router_stream/adapters/postgres.py),
-- which keeps its own bookkeeping in `schema_migrations` (filename, sha256). Never edit this file after
-- it has been applied anywhere: add 002_*.sql instead (migrate refuses a changed checksum).
--
-- Idempotency: every table the worker writes has a natural key with a UNIQUE constraint, and the
-- writers use INSERT ... ON CONFLICT DO NOTHING, so re-processing a Kafka record after a crash or a
-- rebalance never creates a second row.

-- ---------------------------------------------------------------------------------------------
-- One row per routed signal (SPEC §3). signal_id is the idempotency key.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE routing_decisions (
    decision_id      text        PRIMARY KEY,
    signal_id        text        NOT NULL UNIQUE,
    tenant           text        NOT NULL DEFAULT 'default',
    kind             text        NOT NULL,
    destinations     text[]      NOT NULL,
    strategy         text        NOT NULL,
    tier             integer     CHECK (tier >= 0),  -- index of the tier that won (0 = primary); NULL without tiers
    policy_version   text        NOT NULL,
    confidence       double precision NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    state            jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- trust scores / breaker states that mattered
    consensus        jsonb,                        -- consensus decisions: value, method, sources_used, outliers
    input_topic      text        NOT NULL,
    input_partition  integer     NOT NULL,
    input_offset     bigint      NOT NULL,
    signal_ts        timestamptz,
    decided_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX routing_decisions_tenant_kind_decided ON routing_decisions (tenant, kind, decided_at);
CREATE INDEX routing_decisions_decided_at ON routing_decisions (decided_at);
CREATE INDEX routing_decisions_policy_version ON routing_decisions (policy_version);

-- ---------------------------------------------------------------------------------------------
-- The DLQ as operators query and replay it (`router-stream dlq ...`). The router.dlq topic holds
-- the same records; this table is what list/show/replay/discard work on.
--
-- dlq_key = '<original_topic>/<original_partition>/<original_offset>' ('/' cannot occur in a topic
-- name), so the same failed record written twice (a crash between DB write and offset commit)
-- stays one entry.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE dlq_entries (
    id                  bigserial   PRIMARY KEY,
    dlq_key             text        NOT NULL UNIQUE,
    reason              text        NOT NULL CHECK (reason IN (
                            'invalid_json', 'invalid_signal', 'unclassified', 'no_route',
                            'no_healthy_destination', 'rate_limited', 'expired', 'duplicate',
                            'processing_error', 'retries_exhausted')),
    error               text        NOT NULL DEFAULT '',
    signal_id           text,
    tenant              text,
    kind                text,
    attempts            integer     NOT NULL DEFAULT 1 CHECK (attempts >= 0),
    status              text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'replayed', 'discarded')),
    original_topic      text        NOT NULL,
    original_partition  integer     NOT NULL,
    original_offset     bigint      NOT NULL,
    original_key        bytea,                    -- NULL when the record had no key
    original_headers    jsonb       NOT NULL DEFAULT '[]'::jsonb,  -- [[name, base64(value) | null], ...] in order
    original_value      bytea,                    -- the original bytes, unchanged; NULL for a tombstone
    original_timestamp  timestamptz,              -- the record timestamp, restored on replay
    first_failed_at     timestamptz NOT NULL,
    last_failed_at      timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    replayed_at         timestamptz,
    replay_count        integer     NOT NULL DEFAULT 0,
    discarded_at        timestamptz,
    discard_reason      text,
    CHECK (last_failed_at >= first_failed_at),
    CHECK (status <> 'replayed'  OR replayed_at  IS NOT NULL),
    CHECK (status <> 'discarded' OR discarded_at IS NOT NULL)
);

-- `dlq list --status pending --reason no_route --since ...` and its pagination
CREATE INDEX dlq_entries_status_reason_created ON dlq_entries (status, reason, created_at, id);
CREATE INDEX dlq_entries_signal_id ON dlq_entries (signal_id) WHERE signal_id IS NOT NULL;
CREATE INDEX dlq_entries_tenant_kind ON dlq_entries (tenant, kind, created_at);
-- the dlq_backlog gauge: count(*) of pending entries without scanning the rest
CREATE INDEX dlq_entries_pending ON dlq_entries (created_at) WHERE status = 'pending';

-- ---------------------------------------------------------------------------------------------
-- Every circuit-breaker transition (SPEC §3 "every transition is recorded"). target is a
-- destination or source id (one id space). The UNIQUE key makes re-recording the same
-- transition (same target, same instant, same move) a no-op.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE breaker_transitions (
    id           bigserial   PRIMARY KEY,
    target       text        NOT NULL,
    from_state   text        NOT NULL CHECK (from_state IN ('closed', 'open', 'half_open')),
    to_state     text        NOT NULL CHECK (to_state   IN ('closed', 'open', 'half_open')),
    reason       text        NOT NULL DEFAULT '',
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- failures, error rate, cooldown, forced_by ...
    at           timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (target, at, from_state, to_state)
);

CREATE INDEX breaker_transitions_target_at ON breaker_transitions (target, at DESC);

-- ---------------------------------------------------------------------------------------------
-- Periodic trust scores per source/destination, with the five components (freshness, error_rate,
-- latency, deviation, availability) so a score can be explained after the fact.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE trust_snapshots (
    id           bigserial        PRIMARY KEY,
    source_id    text             NOT NULL,
    score        double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    components   jsonb            NOT NULL DEFAULT '{}'::jsonb,
    at           timestamptz      NOT NULL,
    created_at   timestamptz      NOT NULL DEFAULT now(),
    UNIQUE (source_id, at)
);

CREATE INDEX trust_snapshots_at ON trust_snapshots (at);

-- ---------------------------------------------------------------------------------------------
-- Every policy ever published. version is the policy's content hash (core/policy.py), so
-- publishing the same file twice is one row. At most one row is 'active' (partial unique index);
-- 'candidate' is a rollout (shadow/canary) policy.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE policy_versions (
    version            text        PRIMARY KEY,
    policy             text        NOT NULL,       -- the YAML as published (comments kept)
    policy_json        jsonb,                      -- the validated model, for queries
    status             text        NOT NULL CHECK (status IN (
                           'candidate', 'active', 'superseded', 'rejected', 'rolled_back')),
    status_reason      text,                       -- why rejected / rolled back
    published_at       timestamptz NOT NULL,
    published_by       text        NOT NULL DEFAULT '',
    status_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX policy_versions_one_active ON policy_versions ((true)) WHERE status = 'active';
CREATE INDEX policy_versions_published_at ON policy_versions (published_at DESC);

-- ---------------------------------------------------------------------------------------------
-- Operator overrides with a TTL (`router-stream override set|list|clear`). id comes from the
-- control command, so re-applying a command is idempotent. An override is in force while
-- cleared_at IS NULL AND (expires_at IS NULL OR expires_at > now()).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE routing_overrides (
    id            text        PRIMARY KEY,
    override_kind text        NOT NULL CHECK (override_kind <> ''),  -- e.g. force_route, block_destination, force_breaker
    selector      jsonb       NOT NULL DEFAULT '{}'::jsonb,         -- what it applies to: {"kind": ..., "tenant": ...}
    target        text,                                             -- destination (or breaker state) it imposes
    reason        text        NOT NULL DEFAULT '',
    created_by    text        NOT NULL DEFAULT '',
    expires_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    cleared_at    timestamptz,
    cleared_by    text
);

CREATE INDEX routing_overrides_in_force ON routing_overrides (expires_at) WHERE cleared_at IS NULL;
