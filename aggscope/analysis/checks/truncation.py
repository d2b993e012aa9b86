"""``truncated_response``: responses that reach the response-length cap, and whether their rewards differ.

A row's response length is its tokens from its first loss token to its end (a dump that holds
the prompt too, Atropos', masks it; a multi-turn response's tool output counts, as the trainer's
cap counts it). A response at or above the cap (``--max-response-len``, or the trainer config's
``response_cap``) was cut off. Without a cap, a step whose longest length is shared by several
rows gets a note suggesting that length as the cap.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from aggscope.analysis.checks.catalogue import CODES, Finding
from aggscope.core.batch import StepBatch
from aggscope.core.segments import segment_chunks
from aggscope.fmt import number, percent, plural

# The rewards of truncated responses "differ" from the rest when the means differ by more than
# this share of the step's reward range (a gap a reader would act on, not rounding).
REWARD_GAP = 0.05


def response_lengths(batch: StepBatch) -> np.ndarray:
    """``[n_seqs]`` int64 tokens from each row's first loss token to its end (0 without loss tokens)."""
    return _response_lengths(batch.offsets, batch.loss_mask)


def response_lengths_of_steps(batches: Sequence[StepBatch]) -> list[np.ndarray]:
    """``response_lengths`` of each step, found on the steps' tokens put back to back (a row's answer
    depends on its own tokens only, so each step's are its own)."""
    if len(batches) < 2:
        return [response_lengths(batch) for batch in batches]
    token_bounds = np.cumsum([0, *(batch.n_tokens for batch in batches)])
    offsets = np.concatenate(
        [
            [0],
            *(
                batch.offsets[1:].astype(np.int64) + start
                for batch, start in zip(batches, token_bounds[:-1].tolist(), strict=True)
            ),
        ]
    )
    lengths = _response_lengths(offsets, np.concatenate([batch.loss_mask for batch in batches]))
    row_bounds = np.cumsum([0, *(batch.n_sequences for batch in batches)]).tolist()
    return [lengths[first:last] for first, last in itertools.pairwise(row_bounds)]


def _response_lengths(row_offsets: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """``response_lengths`` of rows ``row_offsets`` (``[n + 1]``) over the tokens of ``loss_mask``.

    Found in chunks of whole rows of about ``LENGTHS_CHUNK`` tokens, so the loss positions of a
    chunk stay in the CPU caches (each row's answer depends on its own tokens only).
    """
    lengths = np.zeros(row_offsets.size - 1, dtype=np.int64)
    for first, last in segment_chunks(row_offsets, LENGTHS_CHUNK):
        start = int(row_offsets[first])
        offsets = row_offsets[first : last + 1] - start  # [rows + 1] within the chunk
        loss_positions = np.flatnonzero(loss_mask[start : int(row_offsets[last])])  # [n_loss] ascending
        # loss tokens per row (a cumulative count read at the row ends): row r's first loss token is
        # loss_positions[number of loss tokens in the rows before r]; no per-token row search or sort
        before_end = np.searchsorted(loss_positions, offsets)  # [rows + 1] loss tokens before each offset
        rows_with = np.flatnonzero(np.diff(before_end))
        lengths[first + rows_with] = offsets[rows_with + 1] - loss_positions[before_end[rows_with]]
    return lengths


LENGTHS_CHUNK = 1 << 18  # tokens per chunk of rows in ``response_lengths``


def truncated_findings(
    batch: StepBatch, loss_tokens: np.ndarray, cap: int, cap_source: str, lengths: np.ndarray | None = None
) -> list[Finding]:
    """The ``truncated_response`` finding of one step (none when no response reaches ``cap``);
    ``lengths``: its ``response_lengths``, if known."""
    lengths = response_lengths(batch) if lengths is None else lengths
    truncated = (lengths >= cap) & (loss_tokens > 0)
    if not truncated.any():
        return []
    count, answered = int(truncated.sum()), int((loss_tokens > 0).sum())
    differ, rewards_text = _reward_contrast(batch.rewards, truncated, loss_tokens > 0)
    severity = CODES["truncated_response"].severity if differ else "info"
    estimated = " (lengths estimated from text)" if batch.lengths_estimated else ""
    reach, they = ("reaches", "it was") if count == 1 else ("reach", "they were")
    message = (
        f"{plural(count, 'response')} of {number(answered)} ({percent(count / answered)}) {reach} the response cap of "
        f"{plural(cap, 'token')}{estimated} ({cap_source}): {they} cut off before the end. {rewards_text}"
    )
    if differ:
        message += (
            " The update then teaches 'shorter' as if running long were the mistake: DAPO's overlong reward shaping "
            "(verl's DAPO reward manager, overlong_buffer_cfg) or masking truncated responses out of the loss avoids "
            "that; or raise the cap."
        )
    rows = np.flatnonzero(truncated)
    return [
        Finding("truncated_response", severity, batch.step, None, tuple(rows.tolist()), int(loss_tokens[rows].sum()), message)
    ]


def _reward_contrast(rewards: np.ndarray | None, truncated: np.ndarray, answered: np.ndarray) -> tuple[bool, str]:
    """Whether the truncated rows' mean reward differs from the rest's, and the sentence saying so."""
    if rewards is None:
        return False, "No reward column, so whether their rewards differ is unknown."
    values = rewards.astype(np.float64)
    rest = answered & ~truncated
    cut_values, rest_values = values[truncated], values[rest]
    cut_values, rest_values = cut_values[np.isfinite(cut_values)], rest_values[np.isfinite(rest_values)]
    if cut_values.size == 0 or rest_values.size == 0:
        return False, "Their rewards cannot be compared: no finite reward on one side."
    cut_mean, rest_mean = float(cut_values.mean()), float(rest_values.mean())
    every = values[answered & np.isfinite(values)]
    spread = float(every.max() - every.min())
    differ = spread > 0 and abs(cut_mean - rest_mean) > REWARD_GAP * spread
    if cut_values.size == 1:
        text = f"Its reward is {cut_mean:.4g}, against a mean of {rest_mean:.4g} for the other responses"
    else:
        same = f", every one {cut_values[0]:.4g}" if np.all(cut_values == cut_values[0]) else ""
        text = f"Their mean reward is {cut_mean:.4g}{same}, against {rest_mean:.4g} for the other responses"
    return differ, text + ("." if differ else ": no real difference.")


def cap_hint(batch: StepBatch, lengths: np.ndarray | None = None) -> str | None:
    """A note when several rows share the step's longest response length (it looks like a cap);
    ``lengths``: its ``response_lengths``, if known."""
    lengths = response_lengths(batch) if lengths is None else lengths
    if lengths.size == 0 or int(lengths.max()) == 0:
        return None
    longest = int(lengths.max())
    at_longest = int((lengths == longest).sum())
    if at_longest < 2:
        return None
    # no step or count in the text: the steps that share a longest length share one note
    return (
        f"several responses of a step end at its longest length, {number(longest)} tokens: if that is the response "
        f"cap, give --max-response-len {longest} (or the trainer's --config) to check truncated responses"
    )
