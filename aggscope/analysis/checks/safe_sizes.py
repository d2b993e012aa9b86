"""Mini-batch sizes that cut no prompt group, and the advice that names the nearest ones.

``safe_chunk_sizes`` finds, for one step, every chunk size that splits the step without cutting a
prompt's span; ``SafeSizes`` holds them in sequences, in prompts and for rows sorted by uid, and
intersects them over steps; ``mini_batch_advice`` names the safe sizes nearest the layout's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from aggscope.core.layout import Layout


@dataclass(frozen=True, eq=False)
class SafeSizes:
    """Mini-batch sizes that cut no prompt: bool arrays indexed by the size (entry 0 unused).

    Attributes:
        sequences: ``[n_seqs + 1]`` sizes in sequences, in the layout's order.
        prompts: ``[n_runs + 1]`` sizes in prompts (runs of equal uids), in the layout's order.
        grouped_sequences: ``[n_seqs + 1]`` sizes in sequences with rows sorted by uid (``--order grouped``).
    """

    sequences: np.ndarray
    prompts: np.ndarray
    grouped_sequences: np.ndarray

    def intersect(self, other: SafeSizes | None) -> SafeSizes:
        """Sizes safe for both; a size past a step's length is one mini-batch, so safe for that step."""
        if other is None:
            return self
        return SafeSizes(
            *(_intersect(mine, theirs) for mine, theirs in zip(vars(self).values(), vars(other).values(), strict=True))
        )


def _intersect(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    out = np.ones(max(first.size, second.size), dtype=bool)
    out[0] = False
    out[: first.size] &= first
    out[: second.size] &= second
    return out


def safe_chunk_sizes(first: np.ndarray, last: np.ndarray, n: int) -> np.ndarray:
    """Which chunk sizes split ``0..n-1`` without cutting any ``[first, last]`` span.

    Args:
        first, last: ``[n_spans]`` first and last element of each span (``first <= last``).
        n: elements.

    Returns:
        ``[n + 1]`` bool; entry ``s`` is True when chunks of ``s`` elements cut no span (entry 0 is
        False; ``s >= n`` is one chunk and always safe).
    """
    safe = np.ones(n + 1, dtype=bool)
    safe[0] = False
    if n <= 1 or first.size == 0:
        return safe
    # inside[m]: a chunk starting at element m (1 <= m < n) would cut a span, i.e. first < m <= last.
    change = np.zeros(n + 1, dtype=np.int64)
    np.add.at(change, first + 1, 1)
    np.add.at(change, last + 1, -1)
    inside = np.cumsum(change)[:n] > 0  # [n]
    # Every chunk start k*s (k >= 1, k*s < n) of every size s < n: about n * ln(n) pairs.
    sizes = np.arange(1, n)
    per_size = (n - 1) // sizes
    size_of_pair = np.repeat(sizes, per_size)
    multiple = np.arange(size_of_pair.size) - np.repeat(np.cumsum(per_size) - per_size, per_size) + 1
    cuts = np.bincount(size_of_pair, weights=inside[size_of_pair * multiple], minlength=n + 1) > 0
    return safe & ~cuts


def mini_batch_advice(layout: Layout, safe: SafeSizes | None, group_sizes: Mapping[int, int]) -> str:
    """Nearest mini-batch sizes, in sequences and in prompts, that cut no prompt of the data so far.

    Args:
        layout: the trainer configuration.
        safe: the sizes safe for every step so far (None: no mini-batch size, or no uid).
        group_sizes: ``{group size: number of prompts}`` over the steps so far.
    """
    if safe is None or not group_sizes:
        return ""
    group_size = max(group_sizes, key=lambda size: (group_sizes[size], size))
    if layout.mini_batch_size is not None:
        sequences, prompts = float(layout.mini_batch_size), layout.mini_batch_size / group_size
    else:
        assert layout.mini_batch_prompts is not None
        sequences, prompts = float(layout.mini_batch_prompts * group_size), float(layout.mini_batch_prompts)
    by_sequences = _nearest(safe.sequences, sequences)
    advice = (
        "Mini-batch sizes that cut no prompt of this data: "
        f"{_sizes('--mini-batch-size', by_sequences, safe.sequences)}; "
        f"{_sizes('--mini-batch-prompts', _nearest(safe.prompts, prompts), safe.prompts)}."
    )
    grouped = _nearest(safe.grouped_sequences, sequences)
    if layout.order != "grouped" and grouped != by_sequences:
        advice += (
            f" With rows sorted by uid (--order grouped): {_sizes('--mini-batch-size', grouped, safe.grouped_sequences)}, "
            "or any --mini-batch-prompts."
        )
    return advice


def _nearest(safe: np.ndarray, target: float) -> list[int]:
    """The largest safe size below ``target`` and the smallest at or above it.

    ``safe[-1]`` (one mini-batch for the longest step) is always safe, and so is every size past it.
    """
    sizes = np.flatnonzero(safe)
    below = sizes[sizes < target]
    above = sizes[sizes >= target]
    if above.size and above[0] == target:
        return [int(target)]
    picked = [int(below[-1])] if below.size else []
    picked.append(int(above[0]) if above.size else int(np.ceil(target)))
    return picked


def _sizes(flag: str, sizes: list[int], safe: np.ndarray) -> str:
    whole = safe.size - 1
    return f"{flag} " + " or ".join(f"{size}{' (one mini-batch per step)' if size >= whole else ''}" for size in sizes)
