"""The DLQ as operators work with it: list, show, discard, replay and reindex.

``router-stream dlq ...`` only parses arguments and calls these plain async functions (tests call
them directly). Postgres (``dlq_entries``) is the durable index the commands work on; the
``router.dlq`` topic holds the same records and :func:`reindex.reindex_dlq` rebuilds the index
from it.

- :mod:`.timespec`  ``1h`` / ISO-8601 instants and ``10m`` durations (pure)
- :mod:`.filters`   which entries a command applies to, as a SQL ``WHERE`` (pure)
- :mod:`.store`     the queries on ``dlq_entries``
- :mod:`.view`      how an entry is shown: bytes as text or base64, PII masked (pure)
- :mod:`.order`     which entry may be replayed now, so none overtakes an earlier one of its key
                    (pure)
- :mod:`.replay`    sending entries back to their original topic in original order, marking them
                    after the ack
- :mod:`.reindex`   rebuilding ``dlq_entries`` from ``router.dlq``
"""
