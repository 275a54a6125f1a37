"""`router-stream bench`'s choice of the page it regenerates (bench/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import cli


@pytest.mark.parametrize(
    ("quick", "only", "page"),
    [
        (False, (), Path("docs/benchmarks.md")),  # a full run of every contender
        (False, ("router_pg", "router_nopg"), None),  # the page would lose the others' rows
        (True, (), None),  # rough figures
    ],
)
def test_only_a_full_run_of_every_contender_regenerates_the_page(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, quick: bool, only: tuple[str, ...],
    page: Path | None,
) -> None:
    published: list[Path | None] = []

    async def run_bench(*_args: Any) -> dict[str, Any]:
        return {"contenders": []}

    def publish(_result: Any, _json: Any, _out: Any, docs: Path | None, _console: Any, *,
                fresh: bool) -> int:
        published.append(docs)
        return 0

    monkeypatch.setattr(cli, "run_bench", run_bench)
    monkeypatch.setattr(cli, "_publish", publish)
    assert cli.main(quick=quick, out_dir=tmp_path, docs=None, only=only) == 0
    assert published == [page]
