-- 008_decision_indexes: cheaper indexes on routing_decisions, the table the projection writes most.
--
-- Each decision row maintained six btree indexes. Measured (100k rows COPYed in 5,000-row
-- transactions, Postgres backend CPU, docs/performance.md): 1.61-1.84 s with all six, 1.22-1.33 s
-- with the two changes below (-25 %), for the same queries:
--
-- * routing_decisions_decided_at (btree) -> BRIN. Rows arrive roughly in decided_at order, so a
--   block-range index answers time-range scans ("decisions since ...") at a fraction of a btree's
--   upkeep and size. Tenant-scoped time ranges keep routing_decisions_tenant_kind_decided.
-- * routing_decisions_policy_version dropped: nothing in the router queries decisions by policy
--   version (rollouts are compared in shadow_decisions); an ad-hoc count per version scans.
--
-- Kept: the primary key (decision_id), UNIQUE signal_id (the ledger's idempotency key, SPEC §5),
-- routing_decisions_input_key ("first outcome wins" look-ups) and tenant_kind_decided.

DROP INDEX IF EXISTS routing_decisions_decided_at;
DROP INDEX IF EXISTS routing_decisions_policy_version;
CREATE INDEX routing_decisions_decided_at_brin ON routing_decisions USING brin (decided_at);
