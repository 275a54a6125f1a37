"""The fast subset of the fault suite, run by the normal test suite: the poison corpus and one
SIGKILL of one of two workers. Same scenarios and checks as ``make chaos``, shorter streams."""

from __future__ import annotations

import pytest

from tests.chaos import scenarios as sc

pytestmark = pytest.mark.chaos_fast


def _explain(row: sc.Row) -> str:
    return "\n".join([*row.failures, *row.notes])


async def test_poison_corpus_each_record_dead_lettered_once_and_the_partition_moves(
        chaos_servers, chaos_dir):
    row = await sc.poison(chaos_servers, chaos_dir, quick=True)
    assert row.passed, _explain(row)
    assert row.lost == 0 and row.duplicate_rows == 0


async def test_sigkill_one_of_two_workers_mid_stream_loses_nothing(chaos_servers, chaos_dir):
    row = await sc.sigkill_workers(chaos_servers, chaos_dir, quick=True, fractions=(0.5,))
    assert row.passed, _explain(row)
    assert row.sent > 0 and row.lost == 0 and row.duplicate_rows == 0
    assert row.state_equal == "yes"
