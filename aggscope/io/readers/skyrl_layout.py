"""What a SkyRL 0.4.0 dump's metadata records of how it was trained, and what it does not.

SkyRL's trainer (``skyrl/train/trainer.py`` ``convert_to_training_input``) records, before it pads
and dumps the batch:

- ``policy_mini_batch_boundaries``: ``(start, end)`` row ranges, each spanning
  ``trainer.policy_mini_batch_size`` prompts (``train/dataset/preprocess.py``
  ``compute_prompt_mini_batch_boundaries``; the last may hold fewer in step-wise training);
- ``policy_prompt_boundaries``: one ``(start, end)`` row range per prompt;
- ``pad_size``: how many rows ``pad_training_input_batch`` appended (copies of row 0 with
  ``loss_mask`` 0, to fill the data-parallel ranks; they lie after every boundary).

It does not record its config (``loss_reduction``, ``micro_train_batch_size_per_gpu``,
``algorithm.max_seq_len``, the ranks, ``update_epochs_per_batch``, ``advantage_batch_normalize``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from aggscope.errors import AggscopeError
from aggscope.io.reader import Unrecoverable


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ranges(value: Any) -> list[tuple[int, int]] | None:
    """``value`` as ``(start, end)`` pairs of whole numbers, or None when it is not that."""
    if not isinstance(value, (list, tuple)):
        return None
    pairs = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not all(_whole(v) for v in item):
            return None
        pairs.append((int(item[0]), int(item[1])))
    return pairs


def pad_size(metadata: Mapping[str, Any]) -> int:
    """The padding rows the metadata records (0 where it records none)."""
    value = metadata.get("pad_size", 0)
    return int(value) if _whole(value) and value > 0 else 0


def trained_rows(metadata: Mapping[str, Any], n_rows: int, file: str) -> int:
    """How many leading rows are SkyRL's own (the rest are its padding rows).

    Args:
        metadata: the batch's metadata.
        n_rows: rows in the dump.
        file: the dump, for messages.
    """
    if "pad_size" in metadata:
        value = metadata["pad_size"]
        if not _whole(value) or not 0 <= value <= n_rows:
            raise AggscopeError(f"{file}: metadata['pad_size'] is {value!r}; expected a whole number from 0 to {n_rows}")
        return n_rows - int(value)
    mini_batches = _ranges(metadata.get("policy_mini_batch_boundaries"))
    if mini_batches:
        end = mini_batches[-1][1]
        if not 0 < end <= n_rows:
            raise AggscopeError(
                f"{file}: metadata['policy_mini_batch_boundaries'] ends at row {end}, outside the batch's {n_rows} rows"
            )
        return end
    return n_rows


def recorded_mini_batch_prompts(metadata: Mapping[str, Any]) -> int | None:
    """The prompts per mini-batch the dump's boundaries record, or None where they do not give one.

    Every mini-batch but the last must start on a prompt boundary and span the same number of
    prompts, the last no more (SkyRL's rule, and aggscope's ``mini_batch_prompts``).
    """
    mini_batches = _ranges(metadata.get("policy_mini_batch_boundaries"))
    prompts = _ranges(metadata.get("policy_prompt_boundaries"))
    if not mini_batches or not prompts:
        return None
    starts = [start for start, _ in prompts]
    if mini_batches[0][0] != 0 or any(end != nxt for (_, end), (nxt, _) in itertools.pairwise(mini_batches)):
        return None
    if any(start not in starts for start, _ in mini_batches) or mini_batches[-1][1] != prompts[-1][1]:
        return None
    counts = [sum(1 for s in starts if start <= s < end) for start, end in mini_batches]
    if any(count != counts[0] for count in counts[:-1]) or counts[-1] > counts[0] or counts[0] < 1:
        return None
    return counts[0]


def skyrl_unrecoverable(*, has_uids: bool, has_boundaries: bool) -> tuple[Unrecoverable, ...]:
    """What a SkyRL training-input dump does not hold, and what it changes."""
    facts = [
        Unrecoverable(
            "trainer.algorithm.loss_reduction",
            "which mode trained: the dump holds the advantages before SkyRL's loss-reduction scaling; give --config or -m",
        ),
        Unrecoverable(
            "trainer.micro_train_batch_size_per_gpu and the data-parallel ranks",
            "micro-batch and rank cuts: token_mean_legacy's slices, and micro-batch findings; give --config or the flags",
            ("token_mean_legacy", "seq_mean_token_sum_norm_padded"),
        ),
        Unrecoverable(
            "trainer.algorithm.max_seq_len",
            "the constant horizon of seq_mean_token_sum_norm; give --config or --max-seq-len",
            ("seq_mean_token_sum_norm",),
        ),
        Unrecoverable(
            "trainer.algorithm.advantage_batch_normalize (applied after the dump)",
            "where it is on, SkyRL z-scored the advantages over the batch after writing them: gradient weights (w x A) "
            "use the dump's raw advantages",
        ),
        Unrecoverable(
            "trainer.update_epochs_per_batch",
            "how many passes each mini-batch had: the numbers are those of one pass (give --passes or --config)",
        ),
    ]
    if not has_uids and not has_boundaries:
        facts.append(
            Unrecoverable(
                "the prompt groups (no uids, no policy_prompt_boundaries)",
                "prompt-level modes and checks",
                ("prompt_mean",),
            )
        )
    return tuple(facts)
