-- Shadow rollout: what a candidate policy would have done with a sampled signal, beside what the
-- active policy did (router_stream/core/rollout.py). One row per (signal, candidate).
CREATE TABLE shadow_decisions (
    signal_id          text        NOT NULL,
    candidate_version  text        NOT NULL,
    baseline           jsonb       NOT NULL,  -- destinations (array) or the DLQ reason (string)
    candidate          jsonb       NOT NULL,
    agree              boolean     NOT NULL,
    decided_at         timestamptz NOT NULL,
    PRIMARY KEY (signal_id, candidate_version)
);

CREATE INDEX shadow_decisions_candidate ON shadow_decisions (candidate_version, agree);
