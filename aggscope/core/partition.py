"""Length-balanced partitions as verl 0.9.1 draws them: its rank balancing and token-budget micro-batches.

Facts from verl 0.9.1 (``verl/utils/seqlen_balancing.py``, ``verl/workers/engine/utils.py``,
``verl/trainer/ppo/v1/trainer_base.py``); the code here is aggscope's own:

- A row's cost is ``24576 * L + L^2`` for its sequence length ``L`` (prompt + response tokens,
  the row's ``attention_mask`` sum), a 7B model's attention FLOPs up to a constant.
- Rows are split into ``k`` sets by the largest differencing method (Karmarkar-Karp) over those
  costs, with verl's tie-breaking: see ``balanced_partitions``. Each set's rows are listed in
  ascending index order.
- ``balance_batch`` (always on in the v1 trainer) cuts the step into ``dp`` sets of equal size
  and concatenates them, set ``r`` becoming rank ``r``'s contiguous shard.
- ``use_dynamic_bsz`` cuts each rank's chunk of a mini-batch into micro-batches of at most
  ``max_token_len`` tokens (``ppo_max_token_len_per_gpu * ulysses_sequence_parallel_size``): start
  at ``k = min(rows, ceil(tokens / budget))``, take the largest ``k`` over the ranks (verl
  all-reduces it), split each rank's rows into ``k`` balanced sets (sizes free), and while any set
  of any rank holds more than the budget in tokens, try ``k + 1``. The sets run in the order of
  their cost, heaviest in the middle (``sorted desc [::2][::-1] + [1::2]``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from aggscope.errors import AggscopeError

_LINEAR_COST = 24576  # verl's calculate_workload: 12 h^2 / (2 h) for hidden size h = 4096


def workload(length: int) -> int:
    """verl's cost of one row of ``length`` tokens (``24576 * L + L^2``)."""
    return _LINEAR_COST * length + length * length


class _Bin:
    """One set being filled: its total and its ``(index, value)`` items in the order they came."""

    __slots__ = ("items", "total")

    def __init__(self) -> None:
        self.total = 0
        self.items: list[tuple[int, int]] = []

    def key(self) -> tuple[int, int, list[tuple[int, int]]]:
        # verl orders sets by total, then by item count, then by the items themselves
        return (self.total, len(self.items), self.items)


class _Partial:
    """A partial k-way partition: its bins heaviest first. In the heap, the partial with the widest
    spread comes out first; equal spreads: the one with the heaviest bin."""

    __slots__ = ("bins",)

    def __init__(self, bins: list[_Bin]) -> None:
        self.bins = sorted(bins, key=_Bin.key, reverse=True)

    def spread(self) -> int:
        return self.bins[0].total - self.bins[-1].total

    def __lt__(self, other: _Partial) -> bool:
        mine, theirs = self.spread(), other.spread()
        if mine != theirs:
            return mine > theirs
        return self.bins[0].key() > other.bins[0].key()

    def absorb(self, other: _Partial) -> None:
        """Pair my heaviest bin with the other's lightest, and so on, then re-sort."""
        for mine, theirs in zip(self.bins, reversed(other.bins), strict=True):
            mine.items.extend(theirs.items)
            mine.total += theirs.total
        self.bins = sorted(self.bins, key=_Bin.key, reverse=True)


def balanced_partitions(values: Sequence[int], k: int, *, equal_size: bool) -> list[list[int]]:
    """Split indices ``0..n-1`` into ``k`` sets of balanced ``values`` sums, as verl 0.9.1 does.

    Largest differencing: rows sorted by ``(value, index)`` seed one partial partition each (or,
    with ``equal_size``, each run of ``k`` consecutive sorted rows seeds one partial with one row
    per set); the two partials of widest spread are merged, heaviest set with lightest, until one
    is left. Its sets, heaviest first, are returned with their indices ascending.

    Args:
        values: ``[n]`` non-negative integer costs.
        k: number of sets, ``1 <= k <= n``.
        equal_size: every set gets ``n / k`` rows (``n`` must be a multiple of ``k``).

    Raises:
        AggscopeError: when the split is impossible or leaves a set empty (verl asserts).
    """
    n = len(values)
    if not 1 <= k <= n:
        raise AggscopeError(f"layout: cannot split {n} rows into {k} balanced sets")
    if equal_size and n % k:
        raise AggscopeError(f"layout: {n} rows do not split into {k} sets of equal size")
    ranked = sorted((int(value), index) for index, value in enumerate(values))
    seeds = [ranked[start : start + k] for start in range(0, n, k)] if equal_size else [[item] for item in ranked]
    heap: list[_Partial] = []
    for seed in seeds:
        bins = [_Bin() for _ in range(k)]
        for target, (value, index) in zip(bins, seed, strict=False):
            target.items.append((index, value))
            target.total += value
        heapq.heappush(heap, _Partial(bins))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        first.absorb(second)
        heapq.heappush(heap, first)
    sets = [sorted(index for index, _ in part.items) for part in heap[0].bins]
    if any(not rows for rows in sets):
        raise AggscopeError(f"layout: the balanced split of {n} rows into {k} sets leaves a set empty (verl refuses it)")
    return sets


def balance_batch_order(seq_lengths: Sequence[int], dp_size: int) -> list[int]:
    """verl's ``balance_batch``: the step's rows reordered so rank ``r``'s contiguous shard is the
    ``r``-th of ``dp_size`` equal-size sets of balanced cost. ``[n]`` row indices by new position."""
    costs = [workload(int(length)) for length in seq_lengths]
    return [row for rows in balanced_partitions(costs, dp_size, equal_size=True) for row in rows]


def token_budget_micro_batches(rank_lengths: Sequence[Sequence[int]], budget: int) -> list[list[list[int]]]:
    """verl's ``use_dynamic_bsz`` micro-batches of one mini-batch on every rank.

    Args:
        rank_lengths: per rank, the sequence lengths (prompt + response) of its rows of the
            mini-batch, in the rank's order.
        budget: the most tokens a micro-batch may hold (``ppo_max_token_len_per_gpu`` times the
            Ulysses sequence-parallel size).

    Returns:
        Per rank, its micro-batches in the order verl runs them, each a list of the rank's row
        indices (ascending). Every rank gets the same number of micro-batches.

    Raises:
        AggscopeError: a row longer than the budget, or no micro-batch count keeps every rank
            within it (verl raises too).
    """
    longest = max((max(lengths) for lengths in rank_lengths if lengths), default=0)
    if longest > budget:
        raise AggscopeError(
            f"layout: a sequence of {longest} tokens (prompt + response) is longer than the micro-batch token budget "
            f"{budget} (--micro-batch-tokens; verl's ppo_max_token_len_per_gpu): verl refuses it"
        )
    fewest_rows = min(len(lengths) for lengths in rank_lengths)
    # each rank's first guess, then the largest over ranks (verl all-reduces it with MAX)
    count = max(min(len(lengths), -(-sum(lengths) // budget)) for lengths in rank_lengths)
    count = max(count, 1)  # all rows empty: verl would ask for 0 sets and fail; one micro-batch holds them
    costs = [[workload(int(length)) for length in lengths] for lengths in rank_lengths]
    while True:
        if count > fewest_rows:
            raise AggscopeError(
                f"layout: no micro-batch count keeps every rank within --micro-batch-tokens {budget}: a rank has only "
                f"{fewest_rows} rows for {count} micro-batches (verl raises the same)"
            )
        per_rank = [balanced_partitions(rank_costs, count, equal_size=False) for rank_costs in costs]
        if all(
            sum(lengths[row] for row in micro) <= budget
            for lengths, micros in zip(rank_lengths, per_rank, strict=True)
            for micro in micros
        ):
            break
        count += 1
    return [_run_order(micros, rank_costs) for micros, rank_costs in zip(per_rank, costs, strict=True)]


def _run_order(micros: list[list[int]], costs: list[int]) -> list[list[int]]:
    """verl's running order of micro-batches: by cost (then first row) descending, every other one
    reversed in front so the lightest run first and last (fewer pipeline bubbles)."""
    ranked = sorted(micros, key=lambda rows: (sum(costs[row] for row in rows), rows[0]), reverse=True)
    return ranked[::2][::-1] + ranked[1::2]
