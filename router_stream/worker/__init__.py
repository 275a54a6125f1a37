"""The router worker: the routing core wired to Kafka and HTTP (Postgres is a projection:
:mod:`router_stream.projection`).

Design (docs/worker.md has the long form):

* **Hot path outside faust's per-event machinery.** faust's stream/agent machinery costs ~4.5k
  msgs/s per process on the reference machine, raw aiokafka ~200k/s. Signals are consumed by an
  aiokafka consumer in the consumer group (``settings.group_id``) with
  ``getmany(max_records=batch_max)``, decided a batch at a time by the pure engine, and made
  durable in the commit order of :mod:`.hotpath` (produce + await every ack -> commit
  offsets); nothing on that path waits for Postgres.
* **Shared state by replay** (:mod:`.state`): every worker reads ``source-health``, ``outcomes``
  and ``router.control`` in full and folds them into its engine, so trust, breakers, overrides
  and the policy are a deterministic replay of those topics, equal on every worker within ~100
  ms. The worker decides nothing before that replay reached the end offsets seen at start.
* **Operations** (:mod:`.http`, :mod:`.metrics`, :mod:`.logs`): ``/livez``, ``/readyz``,
  ``/metrics`` with the SPEC §7 names on a small aiohttp server; JSON log lines with trace_id and
  signal_id.
* **Lifecycle** (:mod:`.service`): SIGTERM drains (stop fetching, finish the batch, flush,
  commit, exit in < 30 s); a bounded "burst" mode exits once the input lag stayed 0 for N s.
* **Hosting** (:mod:`.app`): a plain asyncio loop with SIGTERM/SIGINT handlers that drain
  (not a faust App; see docs/worker.md).
"""

from router_stream.worker.backoff import Backoff
from router_stream.worker.service import RouterWorker, StartupRefused, run_worker

__all__ = ["Backoff", "RouterWorker", "StartupRefused", "run_worker"]
