"""Every scenario of the fault suite as a pytest test (``-m chaos`` or ``RUN_CHAOS=1``;
``CHAOS_QUICK=1`` for the short variants). ``make chaos`` runs the same functions through
``python -m tests.chaos.run`` and prints the table."""

from __future__ import annotations

import os

import pytest

from tests.chaos import scenarios as sc

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]
QUICK = os.environ.get("CHAOS_QUICK") == "1"


def _assert_row(row: sc.Row) -> None:
    assert row.passed, "\n".join([*row.failures, *row.notes])
    assert row.lost == 0 and row.duplicate_rows == 0


async def test_1_sigkill_a_worker_at_20_40_60_80_percent(chaos_servers, chaos_dir):
    _assert_row(await sc.sigkill_workers(chaos_servers, chaos_dir, QUICK))


async def test_2_sigkill_the_broker_and_restart_it(own_stack, chaos_dir):
    _assert_row(await sc.sigkill_broker(own_stack, chaos_dir, QUICK))


async def test_3_sigstopped_zombie_neither_duplicates_rows_nor_commits_stale_offsets(
        chaos_servers, chaos_dir):
    _assert_row(await sc.sigstop_zombie(chaos_servers, chaos_dir, QUICK))


async def test_4_postgres_down_30s_routing_goes_on_and_the_projection_catches_up(own_stack, chaos_dir):
    _assert_row(await sc.postgres_outage(own_stack, chaos_dir, QUICK))


async def test_5_unwritable_dlq_stops_commits_loudly_and_continues_after_the_fix(
        chaos_servers, chaos_dir):
    _assert_row(await sc.dlq_unwritable(chaos_servers, chaos_dir, QUICK))


async def test_6_poison_corpus(chaos_servers, chaos_dir):
    _assert_row(await sc.poison(chaos_servers, chaos_dir, QUICK))


async def test_7_sigterm_under_load_drains_within_30s(chaos_servers, chaos_dir):
    _assert_row(await sc.sigterm_under_load(chaos_servers, chaos_dir, QUICK))


async def test_8_soak_at_half_the_sustainable_rate(chaos_servers, chaos_dir):
    _assert_row(await sc.soak(chaos_servers, chaos_dir, QUICK))
