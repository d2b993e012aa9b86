"""What the dumps of NeMo-RL, prime-rl, Atropos and slime do not hold (``Rollouts.unrecoverable``).

Each list names trainer facts the format never writes (``shared/reference/dump-formats.md`` and the
readers' own docstrings say what it does write) and the numbers each lack changes. ``open_rollouts``
gives a reader of these formats its list; the verl, SkyRL and TRL readers build their own, since
theirs depend on what the dump holds.
"""

from __future__ import annotations

from aggscope.io.reader import Unrecoverable

# the modes whose weight of a row depends on which other rows share its mini-batch or micro-batch
BATCH_MEMBERSHIP_MODES = (
    "token_mean",
    "token_mean_legacy",
    "prompt_mean",
    "sequence_mean_nonempty",
    "seq_mean_token_sum_norm_padded",
)
# every mode but token_sum divides by something counted over its batch
BATCH_SIZE_MODES = (*BATCH_MEMBERSHIP_MODES, "sequence_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def config_fact(keys: str) -> Unrecoverable:
    """The trainer config that cuts a step (never in these dumps): give it with ``--config`` or the flags."""
    return Unrecoverable(
        f"the trainer's batch config ({keys})",
        "mini-batch, rank and micro-batch cuts, so the weights of modes that count over their batch when a step has "
        "several mini-batches or micro-batches; give --config or the layout flags",
        BATCH_MEMBERSHIP_MODES,
    )


_ESTIMATOR = Unrecoverable(
    "the trainer's advantage estimator and its normalisation",
    "advantages rebuilt from the rewards use --advantage (GRPO by default), which may not be the run's",
)

DUMP_FACTS: dict[str, tuple[Unrecoverable, ...]] = {
    "nemo-rl": (
        Unrecoverable(
            "the prompt uids (NeMo-RL writes none)",
            "prompt groups are runs of consecutive samples with identical prompt tokens: two prompts of the same "
            "tokens next to each other merge into one group",
            ("prompt_mean",),
        ),
        config_fact("policy.train_global_batch_size, policy.train_micro_batch_size, the data-parallel size"),
    ),
    "prime-rl": (
        Unrecoverable(
            "the prompt groups (prime-rl exports no group id)",
            "prompt-level modes and checks are unavailable, and advantages cannot be rebuilt",
            ("prompt_mean",),
        ),
    ),
    "atropos": (
        Unrecoverable(
            "the trainer's steps and batches (Atropos saves groups as its environments score them; it writes no step)",
            "a step here is a file: every per-batch denominator is that of the file's groups, not of what the "
            "trainer batched together",
            BATCH_SIZE_MODES,
        ),
        Unrecoverable(
            "the trainer's advantage estimator, for groups saved without advantages",
            "their advantages are rebuilt from the scores with --advantage (GRPO by default), which may not be the run's",
        ),
    ),
    "slime": (
        _ESTIMATOR,
        config_fact("--global-batch-size, --micro-batch-size, the data-parallel size"),
    ),
}
