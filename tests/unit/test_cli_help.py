"""Every command's ``--help`` shows a real example, and every ``router-stream <cmd> --option``
the README and docs/ name exists (a renamed or removed option fails here, not for a user)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from router_stream.cli import _register, cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(group: click.Group, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, sub in sorted(group.commands.items()):
        if isinstance(sub, click.Group):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


_register()
ALL = list(_commands(cli))


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=[" ".join(p) or "router-stream"
                                                           for p, _ in ALL])
def test_every_help_has_an_example_of_its_own_command(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert re.search(r"^\s*Examples?\b.*:$", text, re.M), f"no Example(s): section\n{text}"
    example = text[re.search(r"^\s*Examples?\b.*:$", text, re.M).end():]  # type: ignore[union-attr]
    assert f"router-stream {' '.join(path)}".rstrip() in example, example


def test_no_two_commands_share_a_help_text() -> None:
    """`topics list --help` once repeated apply's text: each command says what it does."""
    seen: dict[str, tuple[str, ...]] = {}
    for path, cmd in ALL:
        first = (cmd.help or "").strip().split("\n\n")[0]
        assert first not in seen, f"{path} and {seen[first]} share: {first!r}"
        seen[first] = path
    apply, listing = _help(("topics", "apply")), _help(("topics", "list"))
    assert "create/verify" not in listing and "create/verify" in apply


_USAGE = re.compile(r"router-stream ((?:[\w.-]+ ?)+(?:[^`\n|;&)]*))")


def _usages() -> Iterator[tuple[str, tuple[str, ...], str]]:
    """(where, command path, option) for every `router-stream <cmd> ... --option` in the docs."""
    for doc in DOCS:
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            for match in _USAGE.finditer(line):
                try:
                    tokens = shlex.split(match.group(1), comments=True)
                except ValueError:
                    tokens = match.group(1).split()
                group: click.Command = cli
                path: list[str] = []
                for token in tokens:
                    if isinstance(group, click.Group) and token in group.commands:
                        group = group.commands[token]
                        path.append(token)
                    else:
                        break
                if not path:
                    continue
                for token in tokens[len(path):]:
                    if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", token):
                        yield f"{doc.name}:{lineno}", tuple(path), token.split("=")[0]


USAGES = sorted(set(_usages()))


def test_the_docs_name_options_at_all() -> None:
    assert len(USAGES) > 40  # the pattern still finds the docs' commands


@pytest.mark.parametrize(("where", "path", "option"), USAGES,
                         ids=[f"{w} {' '.join(p)} {o}" for w, p, o in USAGES])
def test_an_option_the_docs_name_exists(where: str, path: tuple[str, ...], option: str) -> None:
    assert re.search(rf"(^|[\s,/]){re.escape(option)}(?![\w-])", _help(path), re.M), (
        f"{where}: `router-stream {' '.join(path)} {option}` is not in its --help")
