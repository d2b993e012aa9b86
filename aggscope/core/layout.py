"""The trainer configuration that decides how a step is split: ``Layout``, checked when it is made.

This module holds the values and their checks only (no numpy), so a command refuses a bad layout
before the numerical code loads; the split itself is ``aggscope.core.split``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aggscope.errors import AggscopeError, did_you_mean

ORDERS = ("logged", "grouped", "shuffle", "balanced")
# Sizes above this cannot be a real trainer's (a step of 2^31 sequences does not fit in memory) and
# would overflow the int64 arithmetic of the split (mini-batch x rank ids); seeds stay within int64.
MAX_SIZE = 2**31 - 1
MAX_SEED = 2**63 - 1
COMPOSITIONS = ("canonical", "ranks_first")
_OPTIONAL_FIELDS = {"micro_batch_tokens": None, "prompt_tokens": 0, "passes": 1, "rank_shuffle_seed": None}


@dataclass(frozen=True)
class Layout:
    """The trainer configuration that decides how a step is split.

    Attributes:
        mini_batch_size: sequences per optimizer step (None: the whole step is one mini-batch).
        mini_batch_prompts: the same counted in prompt runs, as SkyRL counts it.
        micro_batch_size: sequences per micro-batch per rank (None: the whole rank shard).
        dp_size: data-parallel ranks.
        max_seq_len: the constant horizon H of ``seq_mean_token_sum_norm``.
        order: ``logged``, ``grouped`` or ``shuffle``.
        seed: seed of ``shuffle``.
        composition: ``canonical`` (mini-batches, then rank shards inside each) or ``ranks_first``
            (rank shards of the whole step, then mini-batches inside each shard, as verl does).
        micro_batch_tokens: the token budget of a micro-batch per rank (verl ``use_dynamic_bsz``
            with ``ppo_max_token_len_per_gpu``), instead of ``micro_batch_size``.
        prompt_tokens: tokens added to every row's length where the split counts sequence lengths
            (``micro_batch_tokens``, ``balanced``): the prompt, which most dumps do not hold.
        passes: how many times the trainer trains on every mini-batch of the step with the same
            split (verl ``ppo_epochs`` without ``shuffle``, TRL ``num_iterations``): a token's
            weight is the sum over the passes, ``passes`` times one pass's (with
            ``rank_shuffle_seed``, each pass has its own split).
        rank_shuffle_seed: verl's ``actor.shuffle`` with ``data_loader_seed``: under ``ranks_first``,
            each rank's shard is walked in a torch ``DataLoader`` shuffle order seeded
            ``rank_shuffle_seed + rank``, a new draw every pass (None: no shuffle).
    """

    mini_batch_size: int | None = None
    mini_batch_prompts: int | None = None
    micro_batch_size: int | None = None
    dp_size: int = 1
    max_seq_len: int | None = None
    order: str = "logged"
    seed: int = 0
    composition: str = "canonical"
    micro_batch_tokens: int | None = None
    prompt_tokens: int = 0
    passes: int = 1
    rank_shuffle_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("mini_batch_size", "mini_batch_prompts", "micro_batch_size", "max_seq_len", "micro_batch_tokens", "passes"):
            value = getattr(self, name)
            if value is not None and (not _whole(value) or value < 1):
                raise AggscopeError(f"layout: {_flag(name)} must be a whole number of at least 1, got {value!r}")
            if value is not None and value > MAX_SIZE:
                raise AggscopeError(f"layout: {_flag(name)} must be at most {MAX_SIZE:,}, got {value!r}")
        if self.passes is None:
            raise AggscopeError("layout: --passes must be a whole number of at least 1, got None")
        if not _whole(self.dp_size) or self.dp_size < 1:
            raise AggscopeError(f"layout: --dp-size must be a whole number of at least 1, got {self.dp_size!r}")
        if self.dp_size > MAX_SIZE:
            raise AggscopeError(f"layout: --dp-size must be at most {MAX_SIZE:,}, got {self.dp_size!r}")
        if self.mini_batch_size is not None and self.mini_batch_prompts is not None:
            raise AggscopeError("layout: give --mini-batch-size or --mini-batch-prompts, not both")
        if self.micro_batch_size is not None and self.micro_batch_tokens is not None:
            raise AggscopeError("layout: give --micro-batch-size or --micro-batch-tokens, not both")
        if not _whole(self.prompt_tokens) or not 0 <= self.prompt_tokens <= MAX_SIZE:
            raise AggscopeError(
                f"layout: --prompt-tokens must be a whole number from 0 to {MAX_SIZE:,}, got {self.prompt_tokens!r}"
            )
        if self.order not in ORDERS:
            raise AggscopeError(
                f"layout: unknown order {self.order!r}{did_you_mean(self.order, ORDERS)}; valid orders: {', '.join(ORDERS)} (--order)"
            )
        if not _whole(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise AggscopeError(f"layout: --seed must be a whole number from 0 to {MAX_SEED:,}, got {self.seed!r}")
        if self.composition not in COMPOSITIONS:
            raise AggscopeError(
                f"layout: unknown composition {self.composition!r}{did_you_mean(self.composition, COMPOSITIONS)}; valid compositions: {', '.join(COMPOSITIONS)} (--composition)"
            )
        if self.rank_shuffle_seed is not None:
            if not _whole(self.rank_shuffle_seed) or not 0 <= self.rank_shuffle_seed <= MAX_SEED - MAX_SIZE:
                raise AggscopeError(
                    f"layout: rank_shuffle_seed must be a whole number from 0 to {MAX_SEED - MAX_SIZE:,}, got {self.rank_shuffle_seed!r}"
                )
            if self.composition != "ranks_first":
                raise AggscopeError("layout: rank_shuffle_seed (verl's actor.shuffle) needs --composition ranks_first")
        if self.composition == "ranks_first":
            if self.mini_batch_prompts is not None:
                raise AggscopeError("layout: --composition ranks_first counts mini-batches in sequences: give --mini-batch-size")
            if self.mini_batch_size is not None and self.mini_batch_size % self.dp_size:
                raise AggscopeError(
                    f"layout: --composition ranks_first needs --mini-batch-size ({self.mini_batch_size}) divisible by "
                    f"--dp-size ({self.dp_size}): each rank trains mini_batch_size / dp_size rows of every mini-batch"
                )

    @property
    def needs_groups(self) -> bool:
        """True when the split itself needs uids (grouped order or mini-batches counted in prompts)."""
        return self.order == "grouped" or self.mini_batch_prompts is not None

    @property
    def needs_lengths(self) -> bool:
        """True when the split itself counts sequence lengths (token budgets, verl's balancing)."""
        return self.order == "balanced" or self.micro_batch_tokens is not None

    def to_dict(self) -> dict[str, Any]:
        """The fields; those added for trainer-specific layouts only when set, so that the JSON of a
        layout that does not use them stays what it was."""
        values = asdict(self)
        for name, default in _OPTIONAL_FIELDS.items():
            if values[name] == default:
                del values[name]
        return values

    def replace(self, **changes: Any) -> Layout:
        """A copy with some fields changed (validated again)."""
        return Layout(**{**self.to_dict(), **changes})


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
