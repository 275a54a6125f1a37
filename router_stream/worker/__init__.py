"""The router worker: the routing core wired to Kafka and HTTP (Postgres is a projection:
:mod:`router_stream.projection`).

Design (docs/worker.md has the long form):

* **Hot path** (:mod:`.hotpath`): signals are consumed in the consumer group
  (``settings.group_id``) a batch at a time, decided by the pure engine, and made durable in the
  commit order written in :mod:`.pipeline`; nothing on that path waits for Postgres.
* **Shared state by replay** (:mod:`.state`): every worker reads ``source-health``, ``outcomes``
  and ``router.control`` in full and folds them into its engine, so trust, breakers, overrides
  and the policy are a deterministic replay of those topics, equal on every worker within ~100
  ms. The worker decides nothing before that replay reached the end offsets seen at start.
* **Operations** (:mod:`.http`, :mod:`.metrics`, :mod:`.logs`): ``/livez``, ``/readyz``,
  ``/metrics`` with the SPEC §7 names on a small aiohttp server; JSON log lines with trace_id and
  signal_id.
* **Lifecycle** (:mod:`.service`): SIGTERM drains (stop fetching, finish the batch, flush,
  commit, exit in < 30 s); a bounded "burst" mode exits once the input lag stayed 0 for N s.
* **Hosting** (:mod:`.app`): a plain asyncio loop with SIGTERM/SIGINT handlers that drain;
  :mod:`.supervisor` runs N of them (``--processes``).
"""

from router_stream.worker.backoff import Backoff
from router_stream.worker.service import RouterWorker, StartupRefused, run_worker

__all__ = ["Backoff", "RouterWorker", "StartupRefused", "run_worker"]
