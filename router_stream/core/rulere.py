"""The regular expressions of classification rules, compiled with RE2 so matching is linear-time.

A rule's ``regex`` comes from an operator and is run on attacker-controlled text, so a
backtracking engine would let one signal stall a worker (``^(a+)+$`` on ``"a"*32 + "!"`` takes
minutes under Python's ``re``). RE2 runs in time linear in the input and refuses what it cannot
run that way — backreferences (``\\1``), lookaround (``(?=``, ``(?<!``), possessive and atomic
groups, ``\\Z`` — which :func:`compile_rule_regex` reports as a one-line reason for
``policy validate``. The dialect is documented in docs/policy.md.
"""

from __future__ import annotations

import re
from typing import Any

import re2

__all__ = ["RuleRegexError", "compile_rule_regex"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the reason goes into the validation error, not to stderr


# what a backtracking-only construct looks like in RE2's reason, and what to tell the author
_UNSUPPORTED = (
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), "lookaround is not supported"),
    (re.compile(r"invalid escape sequence: \\[1-9]"), "backreferences are not supported"),
    (re.compile(r"invalid perl operator: \(\?>|bad repetition operator: [*+?]\+"),
     "atomic groups and possessive quantifiers are not supported"),
)


class RuleRegexError(ValueError):
    """A pattern that cannot be a rule's: the message says why, e.g. "is not RE2 syntax: …"."""


MAX_PROGRAM_SIZE = 2_000
"""The most RE2 instructions a rule's pattern may compile to. Linear time has a factor: the
program's size, and past RE2's DFA cache (a large counted repetition such as
``(\\w+\\s?){1,1000}``, 11,000 instructions) each character costs tens of microseconds: a
second per 10 KB field, per signal. At 2,000 a 100 KB field takes ~5 ms; the patterns rules
use compile to tens."""


def compile_rule_regex(pattern: str) -> Any:
    """The compiled pattern (its ``search`` takes a ``str``) or :class:`RuleRegexError`."""
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RuleRegexError(f"is not RE2 syntax: {_explained(str(reason))}") from None
    size = max(compiled.programsize, compiled.reverseprogramsize)
    if size > MAX_PROGRAM_SIZE:
        raise RuleRegexError(f"is too large: {size} RE2 instructions, at most {MAX_PROGRAM_SIZE}"
                             " (a large counted repetition such as {1,1000}?)")
    return compiled


def _explained(reason: str) -> str:
    for shape, hint in _UNSUPPORTED:
        if shape.search(reason):
            return f"{reason} ({hint} in RE2)"
    return reason
