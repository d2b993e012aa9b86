"""Column roles of the canonical rollout table, detected from common names or set explicitly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aggscope.errors import AggscopeError, did_you_mean

# Candidate names per role, first match wins (dump-formats.md); `inspect` shows what was taken.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "uid": ("uid", "prompt_id", "group_id", "group_index", "index"),
    "uid_text": ("prompt", "input"),
    "advantages": ("advantages", "advantage"),
    "loss_mask": ("loss_mask", "token_loss_mask", "action_mask", "completion_mask", "response_mask"),
    "reward": ("reward", "rewards", "score", "scores"),
    "response_length": ("response_length", "completion_length"),
    "step": ("step", "global_step"),
    "sequence": ("seq_id", "sequence_id", "sample_id", "response_id"),
}

METADATA_KEY = b"aggscope"  # the canonical file's schema metadata entry (JSON) that ``convert`` writes

ROLE_ALIASES = {
    "advantage": "advantages",
    "mask": "loss_mask",
    "length": "response_length",
    "seq_id": "sequence",
    "prompt": "uid_text",
}


def parse_column_overrides(specs: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``ROLE=NAME`` options into ``{role: column}``."""
    overrides: dict[str, str] = {}
    for spec in specs:
        role, sep, name = spec.partition("=")
        role = ROLE_ALIASES.get(role.strip(), role.strip())
        if not sep or not name.strip():
            raise AggscopeError(f"--col {spec!r}: expected ROLE=NAME, e.g. --col uid=prompt_id")
        if role not in ROLE_CANDIDATES:
            raise AggscopeError(
                f"--col {spec!r}: unknown role {role!r}{did_you_mean(role, list(ROLE_CANDIDATES))}; roles: {', '.join(ROLE_CANDIDATES)}"
            )
        overrides[role] = name.strip()
    return overrides


def detect_columns(available: Iterable[str], overrides: Mapping[str, str], source: str) -> dict[str, str]:
    """Map each role to a column of ``available``: explicit overrides first, then common names."""
    names = list(available)
    present = set(names)
    mapping: dict[str, str] = {}
    for role, candidates in ROLE_CANDIDATES.items():
        if role in overrides:
            if overrides[role] not in present:
                raise AggscopeError(
                    f"{source}: column {overrides[role]!r} given for {role} is not in the file; columns: {', '.join(names)}"
                )
            mapping[role] = overrides[role]
            continue
        found = next((c for c in candidates if c in present), None)
        if found is not None:
            mapping[role] = found
    if "uid" in mapping:
        mapping.pop("uid_text", None)
    return _one_role_per_column(mapping, overrides)


def _one_role_per_column(mapping: dict[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """A column has one role: two given with --col are an error; a role found by name yields to --col."""
    given: dict[str, str] = {}
    for role, name in overrides.items():
        if name in given:
            raise AggscopeError(f"--col {role}={name}: column {name!r} is already given as {given[name]}; a column has one role")
        given[name] = role
    return {role: name for role, name in mapping.items() if role in overrides or name not in given}
