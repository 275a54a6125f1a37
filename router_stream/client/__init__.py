"""A client for the services that consume ``routed.<destination>`` topics (docs/consumers.md).

Public names are exactly ``__all__``; the modules behind them are private::

    from router_stream.client import DestinationConsumer, Delivery, RoutedSignal

    async def deliver(routed: RoutedSignal) -> Delivery | None:
        await post_to_slack(routed.payload)          # raising reports ok=false
        return None                                  # or Delivery(reward=0.7, cost=0.01)

    async with DestinationConsumer("slack", bootstrap_servers="127.0.0.1:19092",
                                   group_id="slack-sender") as consumer:
        await consumer.run(deliver)
"""

from router_stream.client._consumer import ConsumerStats, Delivery, DestinationConsumer, Handler
from router_stream.client._outcomes import encode_outcome, outcome_for
from router_stream.client._records import (
    InvalidRecord,
    Route,
    RoutedSignal,
    parse_decision,
    parse_dlq,
    parse_routed,
)
from router_stream.client._reporter import OutcomeReporter, ReporterStats
from router_stream.core.models import Decision, DlqEntry, DlqReason, Outcome

__all__ = [
    "ConsumerStats",
    "Decision",
    "Delivery",
    "DestinationConsumer",
    "DlqEntry",
    "DlqReason",
    "Handler",
    "InvalidRecord",
    "Outcome",
    "OutcomeReporter",
    "ReporterStats",
    "Route",
    "RoutedSignal",
    "encode_outcome",
    "outcome_for",
    "parse_decision",
    "parse_dlq",
    "parse_routed",
]
