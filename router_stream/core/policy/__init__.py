"""The policy file (SPEC §4): pydantic models, loading with YAML line numbers, version, diff.

A policy is validated in two passes. The models check each section on its own (types, ranges,
unknown fields, regexes, ``range`` bounds, trust weights summing to 1, empty tiers);
:func:`cross_check` then checks what spans sections (routes name declared destinations, every
kind a rule produces has a route, rule names are unique, strategy parameters match the strategy).
:func:`load_policy` runs both on YAML text and reports *every* issue as
``routes.alert.tiers[1]: empty tier (line 23)``, the path and line coming from the YAML node
marks, so ``router-stream policy validate`` can point at the exact line.

Constructing :class:`Policy` directly (``Policy.model_validate(...)``) runs both passes too; the
cross-section issues then surface as one ``ValueError`` at the root because pydantic cannot place
them, which is why the CLI and the worker go through :func:`load_policy`.

:func:`policy_version` hashes the canonical JSON of the validated model (defaults filled in,
sorted keys), so reordering keys or spelling out a default does not change the version, while
any change that alters behaviour does. A candidate under ``rollout.candidate_file`` is only a
path here: reading it is I/O, done by the caller, which then validates it with this package.

Modules: ``fields`` (names and field types), ``sections`` and ``conditions`` (the section
models), ``model`` (:class:`Policy`), ``checks`` (cross-section checks), ``loading`` (YAML with
line numbers), ``diff`` (version and diff).
"""

from router_stream.core.policy.checks import cross_check
from router_stream.core.policy.conditions import (
    AllOf,
    AnyOf,
    Condition,
    FieldMatch,
    NotOf,
    Range,
    Rule,
)
from router_stream.core.policy.diff import canonical_json, diff_policies, policy_version
from router_stream.core.policy.fields import (
    BANDIT_STRATEGIES,
    DETECTORS,
    SIGNAL_FIELDS,
    STRATEGIES,
    Detector,
    split_path,
)
from router_stream.core.policy.loading import load_policy
from router_stream.core.policy.model import Policy, Rollback, Rollout
from router_stream.core.policy.sections import (
    BanditParams,
    BreakerOverride,
    BreakerPolicy,
    BucketLimit,
    ConsensusParams,
    Defaults,
    Destination,
    RedactPolicy,
    RetryParams,
    Route,
    TenantLimit,
    TrustPolicy,
    TrustWeights,
)

__all__ = [
    "BANDIT_STRATEGIES",
    "DETECTORS",
    "SIGNAL_FIELDS",
    "STRATEGIES",
    "AllOf",
    "AnyOf",
    "BanditParams",
    "BreakerOverride",
    "BreakerPolicy",
    "BucketLimit",
    "Condition",
    "ConsensusParams",
    "Defaults",
    "Destination",
    "Detector",
    "FieldMatch",
    "NotOf",
    "Policy",
    "Range",
    "RedactPolicy",
    "RetryParams",
    "Rollback",
    "Rollout",
    "Route",
    "Rule",
    "TenantLimit",
    "TrustPolicy",
    "TrustWeights",
    "canonical_json",
    "cross_check",
    "diff_policies",
    "load_policy",
    "policy_version",
    "split_path",
]
