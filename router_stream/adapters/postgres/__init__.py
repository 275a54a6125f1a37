"""The Postgres seam: connections, schema migrations and the router's idempotent batch writes.

Everything that talks to Postgres goes through this package; its modules each own one job:

- :mod:`.connections` — connections and pools, connection errors as ``DatabaseUnavailable``;
- :mod:`.migrations` — ``migrations/NNN_*.sql``, applied once each, checksummed;
- :mod:`.tables` — the tables' columns and natural keys, Python values -> column values;
- :mod:`.rows` — Kafka records -> the tables' rows, masked (the one definition of each row);
- :mod:`.writes` — idempotent batch writes (COPY) and the ledger's lookups;
- :mod:`.policy_versions` — published policies and their status.
"""

from router_stream.adapters.postgres.connections import (
    connect,
    create_pool,
    unavailable_as_router_error,
)
from router_stream.adapters.postgres.migrations import (
    MigrationChecksumMismatch,
    MigrationError,
    MigrationFile,
    MigrationState,
    database_status,
    default_migrations_dir,
    load_migrations,
    migrate,
    migrate_database,
    migration_status,
)
from router_stream.adapters.postgres.policy_versions import (
    mark_policy_status,
    record_policy_version,
)
from router_stream.adapters.postgres.tables import (
    BREAKER_TRANSITION_COLUMNS,
    DECISION_COLUMNS,
    DLQ_COLUMNS,
    SHADOW_COLUMNS,
    TRUST_SNAPSHOT_COLUMNS,
    decode_headers,
    dlq_key,
    encode_headers,
    json_text,
)
from router_stream.adapters.postgres.writes import (
    KnownOutcomes,
    copy_decisions,
    delete_decisions_of_inputs,
    delete_pending_dlq_entries,
    insert_breaker_transitions,
    insert_decisions,
    insert_dlq_entries,
    insert_shadow_decisions,
    insert_trust_snapshots,
    known_outcomes,
)

__all__ = [
    "BREAKER_TRANSITION_COLUMNS",
    "DECISION_COLUMNS",
    "DLQ_COLUMNS",
    "SHADOW_COLUMNS",
    "TRUST_SNAPSHOT_COLUMNS",
    "MigrationChecksumMismatch",
    "MigrationError",
    "MigrationFile",
    "MigrationState",
    "json_text",
    "unavailable_as_router_error",
    "connect",
    "copy_decisions",
    "create_pool",
    "database_status",
    "decode_headers",
    "default_migrations_dir",
    "KnownOutcomes",
    "delete_decisions_of_inputs",
    "delete_pending_dlq_entries",
    "dlq_key",
    "encode_headers",
    "insert_breaker_transitions",
    "insert_decisions",
    "insert_dlq_entries",
    "insert_shadow_decisions",
    "insert_trust_snapshots",
    "known_outcomes",
    "load_migrations",
    "mark_policy_status",
    "migrate",
    "migrate_database",
    "migration_status",
    "record_policy_version",
]
