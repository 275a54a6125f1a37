"""Where a rollout candidate_file may be read from: the policy file's own directory, never for a
policy text that came from router.control, a checkpoint or Postgres."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router_stream.errors import PolicyError
from router_stream.worker.policy_source import compile_policy_text

ACTIVE = "destinations: {slack: {}}\nroutes: {alert: {strategy: first_healthy, tiers: [[slack]]}}\n"
CANDIDATE = ("destinations: {email: {}}\n"
             "routes: {alert: {strategy: first_healthy, tiers: [[email]]}}\n")


def with_candidate_file(name: str) -> str:
    return ACTIVE + f"rollout: {{mode: shadow, candidate_file: {name}}}\n"


def test_a_policy_file_reads_its_candidate_from_its_own_directory(tmp_path: Path) -> None:
    (tmp_path / "next.yaml").write_text(CANDIDATE)
    compiled = compile_policy_text(with_candidate_file("next.yaml"), str(tmp_path / "p.yaml"),
                                   directory=tmp_path)
    assert compiled.rollout.candidate.destinations == ("email",)


def test_a_published_policy_must_carry_its_candidate_inline(tmp_path: Path) -> None:
    """The file exists on the worker's host, and is still not read."""
    (tmp_path / "next.yaml").write_text(CANDIDATE)
    with pytest.raises(PolicyError, match="carries its candidate inline"):
        compile_policy_text(with_candidate_file(str(tmp_path / "next.yaml")), "policy p-x")


def test_a_candidate_file_that_is_no_regular_file_is_refused_without_reading_it(
        tmp_path: Path) -> None:
    """A FIFO would block the reader until someone writes to it."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PolicyError, match="fifo is not a file"):
        compile_policy_text(with_candidate_file("fifo"), str(tmp_path / "p.yaml"),
                            directory=tmp_path)
