"""The core stays pure: no I/O, event loop, Kafka, database, network, thread or process imports.

This is what lets every routing rule be tested by feeding values in and reading values out, with
time and randomness injected. The checker reads the source with ``ast`` (nothing is imported), so
a forbidden import inside a function or behind ``if TYPE_CHECKING`` is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "router_stream"
PURE_FILES = sorted((ROOT / "core").rglob("*.py")) + [ROOT / "errors.py"]

FORBIDDEN_MODULES = frozenset({
    "asyncio", "aiokafka", "faust", "mode", "asyncpg", "socket", "http", "urllib.request",
    "threading", "subprocess", "os", "multiprocessing", "concurrent", "requests", "httpx",
    "psycopg", "psycopg2", "kafka", "confluent_kafka", "selectors", "shutil", "tempfile",
})
FORBIDDEN_CALLS = frozenset({"open", "__import__", "exec", "eval"})


def _forbidden(module: str) -> str | None:
    """The forbidden module that ``module`` is or lives under, if any."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in FORBIDDEN_MODULES:
            return prefix
    return None


def impurities(source: str, filename: str = "<source>") -> list[str]:
    """Every forbidden import or call in ``source``, as ``file:line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{filename}:{node.lineno}: calls {func.id}()")
            if (isinstance(func, ast.Attribute) and func.attr == "import_module" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                modules = [node.args[0].value]
        for module in modules:
            bad = _forbidden(module)
            if bad is not None:
                found.append(f"{filename}:{node.lineno}: imports {module} ({bad} is not pure)")
                break
    return found


# --- the checker can fail ------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import os.path",
        "from aiokafka import AIOKafkaProducer",
        "from http.client import HTTPConnection",
        "from urllib import request",
        "import urllib.request as r",
        "def f():\n    import socket\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncpg\n",
        "import importlib\nimportlib.import_module('faust')\n",
        "data = open('x').read()",
        "mod = __import__('subprocess')",
        "from concurrent.futures import ThreadPoolExecutor",
        "import threading, math",
    ],
)
def test_checker_flags_impure_sources(source: str) -> None:
    assert impurities(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import math, random, re, hashlib",
        "from dataclasses import dataclass",
        "import orjson\nimport yaml\nfrom pydantic import BaseModel",
        "from router_stream.core.models import Signal",
        "from . import models",
        "import model_helpers",  # 'mode' is forbidden, 'model...' is not
        "from urllib.parse import quote",
        "osmium = 1",
        "self.open()",
    ],
)
def test_checker_accepts_pure_sources(source: str) -> None:
    assert impurities(source) == []


# --- the real files ------------------------------------------------------------------------


def test_there_are_core_files_to_check() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in PURE_FILES}
    assert {"core/models.py", "core/parsing.py", "core/policy/loading.py", "core/classify.py",
            "core/masking.py", "errors.py"} <= names


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_is_pure(path: Path) -> None:
    assert impurities(path.read_text(), str(path.relative_to(ROOT))) == []
