"""The feedback loop on the real broker: outcomes reported by router_stream.client move a
Thompson route (issue 17's acceptance, smaller; ``python3 -m bench.feedback_loop`` runs 5k)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.feedback_loop import DESTINATIONS, run_loop

pytestmark = pytest.mark.integration


async def test_thompson_learns_the_best_destination_from_client_outcomes(settings):
    r = await run_loop(settings, signals=800, wave=50, tail=200)

    assert len(r.routed_to) == 800  # every signal delivered once, to one destination
    assert r.outcomes_sent == 800  # the only outcomes anyone wrote: one per delivery
    # The first wave was decided before any outcome existed: Thompson on its priors spreads it.
    first = Counter(r.routed_to[f"loop-{i:06d}"] for i in range(50))
    assert first["best"] / 50 < 0.8, first
    assert set(first) == set(DESTINATIONS), first
    # Outcomes from the client moved traffic to the destination that succeeds most.
    assert r.tail_share["best"] >= 0.8, r.tail_share
