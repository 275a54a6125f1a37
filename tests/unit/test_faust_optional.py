"""faust is an optional extra: the worker, the CLI and router_stream.client run without it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nothing_but_router_stream_faust_imports_faust():
    code = ("import sys, router_stream.cli, router_stream.worker, router_stream.client, "
            "router_stream.demo; print(sorted(m for m in sys.modules "
            "if m == 'faust' or m.startswith('faust.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_faust_is_an_extra_and_a_dev_dependency_not_a_runtime_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = lambda reqs: {r.split(">")[0].split("=")[0].strip() for r in reqs}  # noqa: E731
    assert "faust-streaming" not in named(project["dependencies"])
    assert "faust-streaming" in named(project["optional-dependencies"]["faust"])
    assert "faust-streaming" in named(project["optional-dependencies"]["dev"])
    assert "aiohttp" in named(project["dependencies"])  # worker/http.py, once faust's


def test_the_faust_extra_brings_the_codec_of_the_workers_default_compression():
    """aiokafka (under faust) decodes lz4, zstd and snappy batches only with cramjam, which its
    extras of those names install; without it a faust consumer of routed.<d> fails on the first
    batch the worker wrote with its default compression."""
    from router_stream.config import Settings

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    codec = Settings.model_fields["compression_type"].default
    for extra in ("faust", "dev", "bench"):
        [aiokafka] = [r for r in project["optional-dependencies"][extra]
                      if r.startswith("aiokafka")]
        codecs = re.match(r"aiokafka(?:\[([a-z0-9,]*)\])?", aiokafka).group(1) or ""
        assert codec in ("none", "gzip") or codec in codecs.split(","), (extra, aiokafka)
