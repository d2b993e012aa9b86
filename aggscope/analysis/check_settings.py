"""``check``'s settings and the parsing of their flags: ``--fail-on``, ``--max-no-grad-share``,
``--max-response-len``, and the trainer whose behaviour some findings model.

Nothing here loads numpy: a command refuses a bad flag before the checks themselves are imported
(``aggscope.analysis.checks`` re-exports these names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aggscope.errors import AggscopeError, did_you_mean

SEVERITIES = ("error", "warning", "info")  # worst first
FAIL_ON_LEVELS = (*SEVERITIES, "never")
_SHARE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class NoGradThresholds:
    """Shares of loss tokens without gradient above which ``no_gradient_share`` is raised.

    Attributes:
        warning: a warning above this share (0 to 1).
        error: an error above this share; a share of 1 is always an error.
    """

    warning: float = 0.25
    error: float = 0.5

    def severity(self, share: float) -> str | None:
        """The severity of a share, or None when it is at or below the warning threshold."""
        if share >= 1.0 or share > self.error:
            return "error"
        if share > self.warning:
            return "warning"
        return None


# The trainers whose behaviour the SkyRL-only findings model; an unknown trainer (None) may be one.
BOUNDARY_TRAINERS = frozenset({"skyrl"})
# Dump formats that one trainer writes, so the dump tells the trainer (Atropos feeds several; canonical
# Parquet says nothing).
DUMP_TRAINERS = ("verl", "skyrl", "trl", "nemo-rl", "prime-rl", "slime")


def trainer_of_dump(input_format: str) -> str | None:
    """The trainer that wrote a dump of ``input_format`` (``Rollouts.format``), or None when it does not say."""
    return input_format if input_format in DUMP_TRAINERS else None


@dataclass(frozen=True)
class CheckOptions:
    """Settings of the checks (the object pickles, for engines that run steps elsewhere).

    Attributes:
        no_grad: when ``no_gradient_share`` is a warning or an error (``--max-no-grad-share``).
        response_cap: the response-length cap in tokens (``--max-response-len`` or the trainer
            config's), or None: then ``truncated_response`` does not run.
        cap_source: where the cap came from, for messages.
        trainer: the trainer in use (``--trainer`` or the config's), or None when unknown. Findings
            that model one trainer's behaviour (SkyRL's boundary-based prompt_mean, its assertion on
            non-contiguous uids) run only when it is that trainer or unknown.
    """

    no_grad: NoGradThresholds = field(default_factory=NoGradThresholds)
    response_cap: int | None = None
    cap_source: str = "--max-response-len"
    trainer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_no_grad_share": {"warning": self.no_grad.warning, "error": self.no_grad.error},
            "response_cap": self.response_cap,
            "cap_source": self.cap_source if self.response_cap is not None else None,
            "trainer": self.trainer,
        }

    @property
    def boundary_in_play(self) -> bool:
        """True when a boundary-based prompt_mean (SkyRL's) may be what trains the data."""
        return self.trainer is None or self.trainer in BOUNDARY_TRAINERS


def parse_max_no_grad_share(text: str) -> NoGradThresholds:
    """Parse ``--max-no-grad-share ERROR`` or ``WARNING,ERROR``: shares as ``0.4`` or ``40%``.

    One value sets the error threshold (the warning threshold becomes the lower of it and 25%).

    Raises:
        AggscopeError: one line naming the option and the bad value.
    """
    parts = text.split(",")
    if len(parts) > 2:
        raise AggscopeError(f"--max-no-grad-share {text!r}: give ERROR or WARNING,ERROR, e.g. 0.5 or 25%,50%")
    shares = [_share(text, part) for part in parts]
    if len(shares) == 1:
        return NoGradThresholds(warning=min(NoGradThresholds.warning, shares[0]), error=shares[0])
    if shares[0] > shares[1]:
        raise AggscopeError(f"--max-no-grad-share {text!r}: the warning share is above the error share")
    return NoGradThresholds(warning=shares[0], error=shares[1])


def _share(text: str, part: str) -> float:
    match = _SHARE.match(part)
    if match is None:
        raise AggscopeError(f"--max-no-grad-share {text!r}: {part.strip()!r} is not a share (0 to 1, or 0% to 100%)")
    value = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    if value > 1.0:
        raise AggscopeError(f"--max-no-grad-share {text!r}: {part.strip()!r} is above 100%")
    return value


def parse_max_response_len(value: int | None) -> int | None:
    """Validate ``--max-response-len`` (a whole number of tokens >= 1, or None)."""
    if value is not None and value < 1:
        raise AggscopeError(f"--max-response-len {value}: expected a whole number of tokens >= 1")
    return value


def parse_fail_on(value: str) -> str:
    """Validate a ``--fail-on`` level."""
    level = value.strip().lower()
    if level not in FAIL_ON_LEVELS:
        raise AggscopeError(
            f"--fail-on {value!r}{did_you_mean(level, FAIL_ON_LEVELS)}: expected one of {', '.join(FAIL_ON_LEVELS)}"
        )
    return level
