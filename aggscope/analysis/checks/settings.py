"""``CheckOptions``: what ``check_step`` is told beyond the batch, the modes and the layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aggscope.analysis.checks.no_gradient import NoGradThresholds

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
