"""Policy text -> the compiled policy the engine runs: the worker's one seam to core/policy.

Used for the policy file at start-up and for every ``policy_publish`` on ``router.control``.
A text that fails validation raises :class:`~router_stream.errors.PolicyError` (path + reason),
and the caller keeps the policy it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router_stream.config import Settings
from router_stream.errors import ConfigError, PolicyError


def compile_policy_text(text: str, source: str = "<policy>", *,
                        directory: Path | None = None) -> Any:
    """Validate and compile a policy; raises PolicyError when it is not a valid policy.

    A rollout ``candidate_file`` is read relative to ``directory``, the policy file's. A text
    from anywhere else (``router.control``, a checkpoint, Postgres) has no directory: it must
    carry its candidate inline, as ``policy publish`` sends it, and a ``candidate_file`` in it
    is refused. Otherwise whoever can write ``router.control`` could have every worker read
    a file of its host (a FIFO blocks the worker; ``/dev/zero`` fills its memory).
    """
    from router_stream.core.compiled import load_compiled

    def read_candidate(name: str) -> str:
        if directory is None:
            raise PolicyError([("rollout.candidate_file", "a published policy carries its "
                                "candidate inline (`policy publish` inlines candidate_file)")],
                              source)
        path = directory / name
        if not path.is_file():
            raise PolicyError([("rollout.candidate_file", f"{name} is not a file")], source)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError([("rollout.candidate_file", f"cannot read {name}: {exc.strerror}")],
                              source) from exc

    try:
        return load_compiled(text, source, read_candidate)
    except PolicyError:
        raise
    except Exception as exc:  # a validator bug must not take the worker down with it
        raise PolicyError([("", f"{type(exc).__name__}: {exc}")], source) from exc


def read_policy_file(settings: Settings) -> tuple[str, Any]:
    """The configured policy file's text and its compiled form, or one clear error."""
    if not settings.policy_file:
        raise ConfigError("ROUTER_POLICY_FILE is not set: the worker needs a policy file "
                          "(see examples/ and `router-stream policy validate`)")
    path = Path(settings.policy_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
    return text, compile_policy_text(text, str(path), directory=path.parent)


def build_engine(settings: Settings, compiled: Any, *, seed: int = 0) -> Any:
    from router_stream.core.engine import RouterEngine

    return RouterEngine(compiled, seed=seed, dedupe_window_s=settings.dedupe_window_s,
                        dedupe_max_entries=settings.dedupe_max_entries,
                        consumer_group=settings.group_id)
