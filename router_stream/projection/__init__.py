"""The Postgres projection of the decision log (``router-stream persist``): records of
``router.decisions``, ``router.dlq`` and ``router.events`` become rows (:mod:`.rows`), written
in batches with row isolation (:mod:`.writer`) by their own consumer group (:mod:`.service`)."""

from router_stream.projection.service import Projection, run_projection

__all__ = ["Projection", "run_projection"]
