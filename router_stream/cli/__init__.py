"""The ``router-stream`` command line.

Commands only parse arguments and delegate to functions that tests call directly (see arq's cli).
Exit codes scripts can rely on: 0 ok, 1 user error (bad input, bad file, unknown id),
2 runtime failure (broker/database unreachable, timeout).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from router_stream import __version__

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_RUNTIME_FAILURE = 2


class RouterGroup(click.Group):
    """A click group that turns our errors into one clear line and a stable exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from router_stream.errors import RouterError, UserError

        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(EXIT_USER_ERROR)
        except RouterError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(EXIT_RUNTIME_FAILURE)


@click.group(cls=RouterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="router-stream")
def cli() -> None:
    """router-stream: a Kafka-native, stateful signal router.

    Configuration comes from ROUTER_* environment variables (or a .env file);
    `router-stream stack up` prints the ones for the local development stack.

    \b
    Example (a first run on the local stack):
      eval "$(router-stream stack up)"
      router-stream db migrate && router-stream topics apply --policy examples/policy.yaml
      router-stream policy publish examples/policy.yaml
      router-stream produce --logical signals examples/signals.jsonl --key-field sender_id
    """


def _register() -> None:
    """Import every command module; each adds its commands to ``cli``.

    A module that is not there yet is skipped so the CLI still works while the project grows.
    """
    import importlib

    for name in ("stack", "topics", "db", "policy", "worker", "persist", "dlq", "override", "io",
                 "demo", "bench", "simulate"):
        try:
            importlib.import_module(f"router_stream.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"router_stream.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point. click's own usage errors (unknown option, bad value) exit 1 like every other
    user error here, not click's default 2, which this CLI reserves for runtime failures."""
    _register()
    try:
        code = cli.main(args=argv, prog_name="router-stream", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USER_ERROR)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_USER_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


command: Callable[..., Any] = cli.command
group: Callable[..., Any] = cli.group
