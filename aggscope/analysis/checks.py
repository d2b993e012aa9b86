"""``aggscope check`` as a library: prompt groups cut by the trainer's split, silent zero-advantage
rows, and one cause for every loss token that gets no gradient.

Per step, ``check_step`` returns a ``StepCheck`` (findings, cut prompts, zero-gradient causes and
the little per-row data the advice and the split picture need); ``CheckAccumulator`` merges steps
into a ``CheckReport``; ``run_checks`` does both over any iterable of steps. All per-step work is
vectorised over rows; Python loops run only over findings.

Notation: rows are ``seq_index`` values (0-based input order within the step); "trainer order" is
the order of ``Split.order``; a *run* is a maximal stretch of equal consecutive uids in trainer
order; ``L_i`` is the loss-token count of row ``i``; ``A`` an advantage.

Rules where the issue leaves a choice (each chosen for what a user debugging a run expects):

- Row-level findings (``nonfinite_advantage``, ``zero_advantage``, ``masked_token_advantage``,
  ``empty_sequence``) are grouped per (step, uid): one finding per prompt, listing its rows; without
  a uid column, one finding per step with ``uid`` null. Group-level findings are one per (step, uid).
  ``rebased_prompt_mean_misweight`` is one finding per (step, mini-batch) with ``uid`` null, since the
  whole mini-batch is re-weighted by one wrong prompt count.
- ``tokens`` counts loss tokens, except ``masked_token_advantage`` (the masked tokens that carry an
  advantage) and ``empty_sequence`` (0: the row has none). A cut prompt's finding lists all the
  prompt's rows and loss tokens.
- A cut prompt is named once, at its coarsest level, with the worst severity of the levels it is
  cut at (so a rank cut is a warning when ``token_mean_legacy`` is selected, as its micro-batch cut
  would be).
- ``noncontiguous_uid`` and the boundary prompt_mean are evaluated in trainer order (what the
  trainer receives). A step with a non-contiguous uid gets neither ``silent_zero_advantage`` nor
  ``rebased_prompt_mean_misweight``: SkyRL stops with an assertion on it instead.
- ``silent_zero_advantage`` and ``rebased_prompt_mean_misweight`` are reported only when
  ``prompt_mean`` is among the selected modes; rows without a loss token are never misweighted.
- ``zero_variance_group``: a group of two or more whose finite rewards are all exactly equal; a group
  whose rewards are all NaN (or data without rewards) is judged by its advantages (all 0).
- "reward equals its group's mean" allows a relative difference of ``1e-9`` (the mean is computed,
  so it carries rounding); the mean is over the group's finite rewards.
- ``incomplete_group`` compares with the step's most common group size (the largest on a tie).

Zero-gradient causes, first that applies, for each loss token whose gradient weight ``w_i * A`` is
0 or not finite: ``nonfinite_advantage`` (A not finite), ``zero_variance_group`` (A == 0 in a
zero-variance group), ``reward_at_group_mean`` (A == 0, the row's reward is its group's mean),
``zero_advantage`` (any other A == 0), and two added causes for non-zero finite advantages:
``zero_weight`` (``w_i == 0``) and ``nonfinite_weight`` (``w_i`` not finite). The canonical modes
give every loss token a positive finite weight, so the added two stay 0 for them; they make the
causes add up to ``zero_grad_tokens + nonfinite_grad_tokens`` of ``weights`` for any weight.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from aggscope.analysis.runner import Engine, SteppedRollouts
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout, Split, split_step
from aggscope.core.modes import Mode, default_modes, resolve_modes
from aggscope.core.segments import group_sum, run_ids
from aggscope.core.weights import compute_weights
from aggscope.errors import AggscopeError

SEVERITIES = ("error", "warning", "info")
FAIL_ON_LEVELS = (*SEVERITIES, "never")
CUT_LEVELS = ("mini_batch", "rank", "micro_batch")
ZERO_GRAD_CAUSES = (
    "nonfinite_advantage",
    "zero_variance_group",
    "reward_at_group_mean",
    "zero_advantage",
    "zero_weight",
    "nonfinite_weight",
)
MISWEIGHT_RTOL = 1e-6
REWARD_MEAN_RTOL = 1e-9


@dataclass(frozen=True)
class CheckCode:
    """A finding's stable code, its default severity and what it means."""

    code: str
    severity: str
    meaning: str


CODES: dict[str, CheckCode] = {
    c.code: c
    for c in (
        CheckCode("prompt_cut_by_mini_batch", "warning", "a prompt group's rows fall in more than one mini-batch"),
        CheckCode("prompt_cut_by_rank", "info", "a prompt group's rows fall in more than one rank shard"),
        CheckCode("prompt_cut_by_micro_batch", "info", "a prompt group's rows fall in more than one micro-batch"),
        CheckCode("silent_zero_advantage", "error", "rows the boundary-based prompt_mean (SkyRL) leaves at weight 0"),
        CheckCode("rebased_prompt_mean_misweight", "warning", "rows the boundary-based prompt_mean weights wrongly"),
        CheckCode("nonfinite_advantage", "error", "NaN or infinite advantage on a loss token"),
        CheckCode("zero_advantage", "error", "a sequence zeroed although its group's rewards vary"),
        CheckCode("noncontiguous_uid", "warning", "a uid that reappears after other uids in a step"),
        CheckCode("masked_token_advantage", "warning", "non-zero advantage on masked tokens"),
        CheckCode("empty_sequence", "warning", "a sequence with no loss token, still counted in denominators"),
        CheckCode("singleton_group", "warning", "a group with one sample"),
        CheckCode("incomplete_group", "warning", "a group smaller than the step's most common group size"),
        CheckCode("zero_variance_group", "info", "a group whose rewards are all equal (advantage 0)"),
    )
}
_CODE_ORDER = {code: index for index, code in enumerate(CODES)}
_SEVERITY_RANK = {severity: index for index, severity in enumerate(SEVERITIES)}
_CUT_CODES = {level: f"prompt_cut_by_{level}" for level in CUT_LEVELS}
_ADVISED_CODES = ("prompt_cut_by_mini_batch", "silent_zero_advantage")


@dataclass(frozen=True)
class Finding:
    """One problem found in one step.

    Attributes:
        code: stable code (a key of ``CODES``).
        severity: ``error``, ``warning`` or ``info``.
        step: the step.
        uid: the prompt group, or None where none applies.
        rows: ``seq_index`` values of the rows concerned, ascending.
        tokens: loss tokens affected (see the module notes for the two exceptions).
        message: what it means and what to change.
    """

    code: str
    severity: str
    step: int
    uid: str | None
    rows: tuple[int, ...]
    tokens: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = list(self.rows)
        return out

    @property
    def sort_key(self) -> tuple[int, int, int, int]:
        return (_SEVERITY_RANK[self.severity], _CODE_ORDER[self.code], self.step, self.rows[0] if self.rows else -1)


@dataclass(frozen=True, eq=False)
class StepLanes:
    """What the text picture of a step's split needs; arrays are ``[n_seqs]`` by trainer position.

    Attributes:
        prompt: prompt number by first appearance in trainer order.
        mini_batch: mini-batch of each position.
        rank: rank shard (within its mini-batch) of each position.
        cut_by_mini_batch: the position's prompt is cut by a mini-batch boundary.
        no_gradient: the position is a ``silent_zero_advantage`` row.
    """

    step: int
    prompt: np.ndarray
    mini_batch: np.ndarray
    rank: np.ndarray
    cut_by_mini_batch: np.ndarray
    no_gradient: np.ndarray
    n_mini_batches: int
    dp_size: int


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


@dataclass(frozen=True, eq=False)
class StepCheck:
    """The checks of one step, ready to merge with other steps.

    Messages of ``prompt_cut_by_mini_batch`` and ``silent_zero_advantage`` get their advice (mini-batch
    sizes that cut no prompt of the whole data) when merged by ``CheckAccumulator``; merge the steps of
    a run through it, even when they were checked elsewhere (the object pickles).

    Attributes:
        cut_prompts: ``{level: uids cut at that level}`` for every level in ``CUT_LEVELS``.
        zero_grad: ``{mode: {cause: loss tokens}}``.
        safe: the mini-batch sizes that cut no prompt of this step (None when the layout has no
            mini-batch size or there is no uid).
        group_sizes: ``{group size: number of prompts}``.
        notes: remarks on checks that could not run.
    """

    step: int
    sequences: int
    loss_tokens: int
    findings: tuple[Finding, ...]
    cut_prompts: dict[str, tuple[str, ...]]
    zero_grad: dict[str, dict[str, int]]
    lanes: StepLanes | None = None
    safe: SafeSizes | None = None
    group_sizes: dict[int, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def severity_counts(self) -> tuple[int, int, int]:
        counts = Counter(f.severity for f in self.findings)
        return (counts["error"], counts["warning"], counts["info"])


# ---- per-step quantities ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Rows:
    """Per-row numpy views of one step and its split (all ``[n]``, by seq_index unless noted)."""

    batch: StepBatch
    loss: np.ndarray
    zero_adv: np.ndarray
    nonfinite_adv: np.ndarray
    masked_nonzero: np.ndarray
    adv_abs: np.ndarray
    order: np.ndarray  # [n] seq_index at each trainer position
    position: np.ndarray
    mini_batch: np.ndarray
    rank: np.ndarray
    micro_batch: np.ndarray
    rank_unit: np.ndarray
    micro_unit: np.ndarray
    n_mini_batches: int

    @classmethod
    def of(cls, batch: StepBatch, split: Split) -> _Rows:
        stats = batch.stats

        def host(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().cpu().numpy()

        return cls(
            batch=batch,
            loss=host(stats.loss_tokens).astype(np.int64),
            zero_adv=host(stats.zero_adv_tokens).astype(np.int64),
            nonfinite_adv=host(stats.nonfinite_adv_tokens).astype(np.int64),
            masked_nonzero=host(stats.masked_nonzero_adv_tokens).astype(np.int64),
            adv_abs=host(stats.adv_abs_sum).astype(np.float64),
            order=host(split.order),
            position=host(split.position),
            mini_batch=host(split.mini_batch),
            rank=host(split.rank),
            micro_batch=host(split.micro_batch),
            rank_unit=host(split.rank_unit),
            micro_unit=host(split.micro_unit),
            n_mini_batches=split.n_mini_batches,
        )

    @property
    def n(self) -> int:
        return int(self.loss.size)


@dataclass(frozen=True, eq=False)
class _Groups:
    """Per-group quantities of one step (``[G]`` arrays) and each group's rows."""

    code: np.ndarray  # [n] group of each row
    labels: tuple[str, ...]
    size: np.ndarray
    rows_sorted: np.ndarray  # [n] rows grouped by group, ascending within a group
    starts: np.ndarray  # [G + 1] group g owns rows_sorted[starts[g]:starts[g+1]]
    first_position: np.ndarray
    last_position: np.ndarray
    runs: np.ndarray  # runs of the group in trainer order
    run_of_position: np.ndarray  # [n] run index of each trainer position
    zero_variance: np.ndarray  # bool
    reward_mean: np.ndarray  # mean of finite rewards, NaN where none
    at_mean: np.ndarray  # [n] bool: the row's finite reward equals its group's mean
    common_size: int

    def rows(self, group: int) -> np.ndarray:
        return self.rows_sorted[self.starts[group] : self.starts[group + 1]]

    @classmethod
    def of(cls, batch: StepBatch, rows: _Rows) -> _Groups:
        assert batch.group_ids is not None and batch.uid_labels is not None
        code = batch.group_ids.detach().cpu().numpy().astype(np.int64)
        n_groups = len(batch.uid_labels)
        size = np.bincount(code, minlength=n_groups)
        rows_sorted = np.argsort(code, kind="stable")
        starts = np.concatenate([[0], np.cumsum(size)])
        first_position = np.full(n_groups, rows.n, dtype=np.int64)
        np.minimum.at(first_position, code, rows.position)
        last_position = np.full(n_groups, -1, dtype=np.int64)
        np.maximum.at(last_position, code, rows.position)
        code_by_position = code[rows.order]
        run_of_position = run_ids(torch.from_numpy(code_by_position)).numpy()
        run_starts = np.ones(rows.n, dtype=bool)
        run_starts[1:] = run_of_position[1:] != run_of_position[:-1]
        runs = np.bincount(code_by_position[run_starts], minlength=n_groups)

        nonzero_adv_tokens = np.bincount(code, weights=rows.loss - rows.zero_adv, minlength=n_groups)  # NaN counts as non-zero
        all_adv_zero = nonzero_adv_tokens == 0
        reward_mean = np.full(n_groups, np.nan)
        at_mean = np.zeros(rows.n, dtype=bool)
        equal_rewards = all_adv_zero
        if batch.rewards is not None:
            rewards = batch.rewards.detach().cpu().numpy().astype(np.float64)
            finite = np.isfinite(rewards)
            n_finite = np.bincount(code, weights=finite, minlength=n_groups)
            total = np.bincount(code, weights=np.where(finite, rewards, 0.0), minlength=n_groups)
            has_finite = n_finite > 0
            reward_mean = np.where(has_finite, total / np.maximum(n_finite, 1), np.nan)
            low = np.full(n_groups, np.inf)
            np.minimum.at(low, code[finite], rewards[finite])
            high = np.full(n_groups, -np.inf)
            np.maximum.at(high, code[finite], rewards[finite])
            # Finite rewards all exactly equal; a group without a finite reward falls back on its advantages.
            equal_rewards = np.where(has_finite, low == high, all_adv_zero)
            mean_of_row = reward_mean[code]
            with np.errstate(invalid="ignore"):
                at_mean = finite & (np.abs(rewards - mean_of_row) <= REWARD_MEAN_RTOL * np.maximum(1.0, np.abs(mean_of_row)))
        zero_variance = (size >= 2) & equal_rewards
        present = size[size > 0]
        counts = np.bincount(present)
        common_size = int(np.flatnonzero(counts == counts.max())[-1]) if present.size else 0
        return cls(
            code=code,
            labels=batch.uid_labels,
            size=size,
            rows_sorted=rows_sorted,
            starts=starts,
            first_position=first_position,
            last_position=last_position,
            runs=runs,
            run_of_position=run_of_position,
            zero_variance=zero_variance,
            reward_mean=reward_mean,
            at_mean=at_mean,
            common_size=common_size,
        )


def _host(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().cpu().numpy().astype(np.float64)


# ---- the boundary-based prompt_mean -------------------------------------------------------------
def boundary_prompt_mean(loss_tokens: torch.Tensor, group_ids: torch.Tensor, split: Split) -> torch.Tensor:
    """Row weights of ``prompt_mean`` as SkyRL computes it from prompt boundaries (reference sheet).

    Runs of equal consecutive uids in trainer order; a run belongs to the mini-batch its start lies
    in, and its rows past that mini-batch's end get 0; the mini-batch's prompt count is the number
    of runs starting inside it:
    ``w_i = 1 / (runs starting in b * max(T_run in b, 1))`` for a row of its run's first mini-batch.

    Args:
        loss_tokens: ``[n_seqs]`` loss tokens per row ``L_i``.
        group_ids: ``[n_seqs]`` uid codes.
        split: where every row lands.

    Returns:
        ``[n_seqs]`` float64 weights by seq_index, on the device of ``loss_tokens``.
    """
    order = split.order
    n_rows = order.numel()
    if n_rows == 0:
        return torch.zeros(0, dtype=torch.float64, device=loss_tokens.device)
    run = run_ids(group_ids[order])  # [n] run of each trainer position
    n_runs = int(run[-1]) + 1
    mini_batch = split.mini_batch[order]  # [n] by position
    starts_run = torch.ones(n_rows, dtype=torch.bool, device=order.device)
    starts_run[1:] = run[1:] != run[:-1]
    mini_batch_of_run = mini_batch[starts_run]  # [n_runs] where each run starts
    kept = mini_batch == mini_batch_of_run[run]  # [n] inside its run's first mini-batch
    tokens = torch.where(kept, loss_tokens[order].to(torch.float64), 0.0)  # [n]
    run_tokens = group_sum(tokens, run, n_runs)  # [n_runs] T_p over the kept rows
    runs_starting = torch.bincount(mini_batch_of_run, minlength=split.n_mini_batches).to(torch.float64)  # [n_mb] len(mine)
    weight = 1.0 / (runs_starting[mini_batch].clamp(min=1) * run_tokens[run].clamp(min=1))  # [n]
    weight = torch.where(kept, weight, 0.0)
    out = torch.empty_like(weight)
    out[order] = weight
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


def zero_grad_causes(
    loss_tokens: np.ndarray,
    zero_adv_tokens: np.ndarray,
    nonfinite_adv_tokens: np.ndarray,
    row_weight: np.ndarray,
    zero_variance: np.ndarray,
    at_group_mean: np.ndarray,
) -> dict[str, int]:
    """One cause for every loss token whose gradient weight ``w_i * A`` is 0 or not finite.

    Args:
        loss_tokens, zero_adv_tokens, nonfinite_adv_tokens: ``[n_seqs]`` per-row token counts.
        row_weight: ``[n_seqs]`` weight ``w_i``.
        zero_variance: ``[n_seqs]`` bool, the row's group is zero-variance.
        at_group_mean: ``[n_seqs]`` bool, the row's reward equals its group's mean.

    Returns:
        ``{cause: loss tokens}`` over ``ZERO_GRAD_CAUSES``; the values add up to the
        ``zero_grad_tokens + nonfinite_grad_tokens`` that ``weights.summarize`` counts.
    """
    # A token with finite non-zero A has a zero or non-finite gradient only through its weight.
    finite_nonzero = loss_tokens - zero_adv_tokens - nonfinite_adv_tokens  # [n]
    other_zero = ~zero_variance & ~at_group_mean
    return {
        "nonfinite_advantage": int(nonfinite_adv_tokens.sum()),
        "zero_variance_group": int(zero_adv_tokens[zero_variance].sum()),
        "reward_at_group_mean": int(zero_adv_tokens[~zero_variance & at_group_mean].sum()),
        "zero_advantage": int(zero_adv_tokens[other_zero].sum()),
        "zero_weight": int(finite_nonzero[row_weight == 0].sum()),
        "nonfinite_weight": int(finite_nonzero[~np.isfinite(row_weight)].sum()),
    }


# ---- text helpers -------------------------------------------------------------------------------
def format_rows(rows: Sequence[int] | np.ndarray, limit: int | None = None) -> str:
    """Rows as ranges, ``0-3, 8, 10-11``; with ``limit``, at most that many ranges then ``…``."""
    values = np.asarray(rows, dtype=np.int64)
    if values.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [values.size]]) - 1
    pieces = [
        str(values[s]) if s == e else f"{values[s]}-{values[e]}" for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    if limit is not None and len(pieces) > limit:
        return ", ".join(pieces[:limit]) + f", … ({values.size} rows)"
    return ", ".join(pieces)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 row``, ``3 rows``; ``many`` for irregular plurals (``mini-batches``)."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"


def layout_flags(layout: Layout, **changes: Any) -> str:
    """The command-line flags that give ``layout`` (with ``changes``), defaults left out."""
    values = {**layout.to_dict(), **changes}
    default = Layout().to_dict()
    flags = []
    for name, value in values.items():
        if value is None or value == default[name] or (name == "seed" and values["order"] != "shuffle"):
            continue
        flags.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(flags)


def _command(source: str, layout: Layout, **changes: Any) -> str:
    from aggscope.io.open import bundled_sample_path

    path = "" if source.startswith("<") or source == str(bundled_sample_path()) else f" {source}"
    flags = layout_flags(layout, **changes)
    return f"aggscope check{path}{' ' + flags if flags else ''}"


# ---- the checks of one step ---------------------------------------------------------------------
def check_step(
    batch: StepBatch,
    modes: Sequence[Mode | str] | None = None,
    layout: Layout | None = None,
    split: Split | None = None,
) -> StepCheck:
    """Check one step: findings, cut prompts and zero-gradient causes.

    Args:
        batch: the step.
        modes: the modes the user trains with (names or ``Mode``); default every mode that applies.
            They decide the zero-gradient table, whether the boundary-based prompt_mean is checked
            (only with ``prompt_mean``) and the micro-batch cut severity (``token_mean_legacy``).
        layout: the trainer configuration (default: one mini-batch).
        split: the split of this batch under ``layout``, if already computed.
    """
    layout = layout or Layout()
    if modes is None:
        resolved = default_modes(has_groups=batch.has_groups, max_seq_len=layout.max_seq_len)
    else:
        resolved = resolve_modes(m if isinstance(m, str) else m.name for m in modes)
    if split is None:
        split = split_step(batch.n_sequences, batch.group_ids, layout, batch.step, batch.device)
    weights = {mode.name: compute_weights(batch, mode, layout, split).row_weight for mode in resolved}
    rows = _Rows.of(batch, split)
    mode_names = set(weights)
    findings: list[Finding] = []
    notes: list[str] = []
    groups = _Groups.of(batch, rows) if batch.has_groups else None
    zero_variance_row = groups.zero_variance[groups.code] if groups is not None else np.zeros(rows.n, dtype=bool)
    at_mean_row = groups.at_mean if groups is not None else np.zeros(rows.n, dtype=bool)
    zero_grad = {
        name: zero_grad_causes(
            rows.loss, rows.zero_adv, rows.nonfinite_adv, w.detach().cpu().numpy(), zero_variance_row, at_mean_row
        )
        for name, w in weights.items()
    }
    row_level = _RowFindings(batch.step, groups)
    findings += row_level.nonfinite_advantage(rows)
    findings += row_level.masked_token_advantage(rows)
    findings += row_level.empty_sequence(rows)

    cut_prompts: dict[str, tuple[str, ...]] = {level: () for level in CUT_LEVELS}
    lanes = None
    safe = None
    group_sizes: dict[int, int] = {}
    if groups is None:
        notes.append(
            "no uid column: prompt cuts, group checks, zero_advantage and the boundary prompt_mean check need one "
            "(set it with --col uid=NAME)"
        )
    else:
        present = groups.size[groups.size > 0]
        group_sizes = {int(s): int(c) for s, c in enumerate(np.bincount(present)) if c}
        findings += row_level.zero_advantage(rows, groups, _host(batch.rewards))
        findings += _group_findings(batch, rows, groups)
        contiguous = bool((groups.runs <= 1).all())
        if "prompt_mean" not in mode_names:
            notes.append(
                "the boundary prompt_mean checks (silent_zero_advantage, rebased_prompt_mean_misweight) run only with "
                "prompt_mean among the modes"
            )
        findings += _noncontiguous(batch, rows, groups, layout)
        cut_findings, cut_prompts, cut_by_mini_batch = _cuts(batch.step, rows, groups, mode_names, contiguous)
        findings += cut_findings
        no_gradient = np.zeros(rows.n, dtype=bool)
        if "prompt_mean" in mode_names and contiguous:
            boundary_findings, no_gradient = _boundary_prompt_mean(batch, rows, groups, split, weights["prompt_mean"])
            findings += boundary_findings
        if layout.mini_batch_size is not None or layout.mini_batch_prompts is not None:
            n_runs = int(groups.run_of_position[-1]) + 1 if rows.n else 0
            used = groups.size > 0
            first_run = groups.run_of_position[groups.first_position[used]]
            last_run = groups.run_of_position[groups.last_position[used]]
            grouped_end = np.cumsum(groups.size[used])  # grouped order: groups back to back by first appearance
            safe = SafeSizes(
                sequences=safe_chunk_sizes(groups.first_position[used], groups.last_position[used], rows.n),
                prompts=safe_chunk_sizes(first_run, last_run, n_runs),
                grouped_sequences=safe_chunk_sizes(grouped_end - groups.size[used], grouped_end - 1, rows.n),
            )
        prompt_by_position = np.argsort(np.argsort(groups.first_position, kind="stable"), kind="stable")[groups.code[rows.order]]
        lanes = StepLanes(
            step=batch.step,
            prompt=prompt_by_position,
            mini_batch=rows.mini_batch[rows.order],
            rank=rows.rank[rows.order],
            cut_by_mini_batch=cut_by_mini_batch[groups.code[rows.order]],
            no_gradient=no_gradient[rows.order],
            n_mini_batches=rows.n_mini_batches,
            dp_size=layout.dp_size,
        )
    findings.sort(key=lambda f: f.sort_key)
    return StepCheck(
        step=batch.step,
        sequences=rows.n,
        loss_tokens=int(rows.loss.sum()),
        findings=tuple(findings),
        cut_prompts=cut_prompts,
        zero_grad=zero_grad,
        lanes=lanes,
        safe=safe,
        group_sizes=group_sizes,
        notes=tuple(notes),
    )


@dataclass(frozen=True, eq=False)
class _RowFindings:
    """Row-level findings, one per (step, uid) or, without uids, one per step."""

    step: int
    groups: _Groups | None

    def _per_uid(
        self, code: str, flagged: np.ndarray, tokens: np.ndarray, message: Callable[[np.ndarray, str | None], str]
    ) -> list[Finding]:
        rows = np.flatnonzero(flagged)
        if rows.size == 0:
            return []
        if self.groups is None:
            buckets: list[tuple[str | None, np.ndarray]] = [(None, rows)]
        else:
            by_code = rows[np.argsort(self.groups.code[rows], kind="stable")]
            uniques, starts = np.unique(self.groups.code[by_code], return_index=True)
            ends = np.append(starts[1:], rows.size)
            buckets = [(self.groups.labels[g], by_code[s:e]) for g, s, e in zip(uniques.tolist(), starts, ends, strict=True)]
        severity = CODES[code].severity
        return [
            Finding(code, severity, self.step, uid, tuple(members.tolist()), int(tokens[members].sum()), message(members, uid))
            for uid, members in buckets
        ]

    def nonfinite_advantage(self, rows: _Rows) -> list[Finding]:
        def message(members: np.ndarray, uid: str | None) -> str:
            count = int(rows.nonfinite_adv[members].sum())
            return (
                f"{plural(count, 'loss token')} of {_who(uid, members)} {_has(count)} a NaN or infinite advantage: "
                "the gradient there is not finite in every mode, and one NaN in the loss poisons the whole update. Fix "
                "the advantage at its source (a NaN reward, a 0/0 in the std normalisation) or drop these rows."
            )

        return self._per_uid("nonfinite_advantage", rows.nonfinite_adv > 0, rows.nonfinite_adv, message)

    def masked_token_advantage(self, rows: _Rows) -> list[Finding]:
        def message(members: np.ndarray, uid: str | None) -> str:
            count = int(rows.masked_nonzero[members].sum())
            return (
                f"{plural(count, 'masked token')} of {_who(uid, members)} {'carries' if count == 1 else 'carry'} a "
                "non-zero advantage: harmless where the loss masks its numerator, a bug where it does not (ROLL's "
                "token-mean, open PR #444). Multiply the advantages by the loss mask."
            )

        return self._per_uid("masked_token_advantage", rows.masked_nonzero > 0, rows.masked_nonzero, message)

    def empty_sequence(self, rows: _Rows) -> list[Finding]:
        def message(members: np.ndarray, uid: str | None) -> str:
            return (
                f"{_who(uid, members)} {_has(int(members.size))} no loss token but still count in the "
                "sequence denominator N_b (sequence_mean, seq_mean_token_sum, seq_mean_token_sum_norm), diluting every "
                "other row of the mini-batch. Drop empty responses before the update, or check the mask."
            )

        return self._per_uid("empty_sequence", rows.loss == 0, np.zeros_like(rows.loss), message)

    def zero_advantage(self, rows: _Rows, groups: _Groups, rewards: np.ndarray | None) -> list[Finding]:
        all_zero = (rows.loss > 0) & (rows.zero_adv == rows.loss)
        flagged = all_zero & ~groups.zero_variance[groups.code] & ~groups.at_mean

        def message(members: np.ndarray, uid: str | None) -> str:
            if rewards is not None:
                values = ", ".join(f"{v:.4g}" for v in rewards[members][:4].tolist())
                mean = groups.reward_mean[groups.code[members[0]]]
                against = f"a group mean of {mean:.4g}" if np.isfinite(mean) else "no finite reward in the group"
                why = f"reward {values}{' …' if members.size > 4 else ''} against {against}"
            else:
                why = "no reward column, so a reward at the group mean cannot be told apart"
            return (
                f"every loss token of {_who(uid, members)} has advantage 0 although the group's rewards vary ({why}): "
                f"{plural(int(rows.loss[members].sum()), 'token')} get no gradient but count in every denominator. "
                "Look for an advantage zeroed after the estimator (a NaN reward replaced by 0, earlier turns of a "
                "multi-turn rollout left at 0, a mask applied twice)."
            )

        return self._per_uid("zero_advantage", flagged, rows.loss, message)


def _has(count: int) -> str:
    return "has" if count == 1 else "have"


def _who(uid: str | None, members: np.ndarray) -> str:
    noun = "row" if members.size == 1 else "rows"
    prompt = f" of prompt {uid}" if uid is not None else ""
    return f"{noun} {format_rows(members, 6)}{prompt}"


def _group_finding(code: str, step: int, groups: _Groups, group: int, rows: _Rows, message: str) -> Finding:
    members = groups.rows(group)
    return Finding(
        code, CODES[code].severity, step, groups.labels[group], tuple(members.tolist()), int(rows.loss[members].sum()), message
    )


def _group_findings(batch: StepBatch, rows: _Rows, groups: _Groups) -> list[Finding]:
    out = []
    step, size = batch.step, groups.size
    rewards = _host(batch.rewards)
    for group in np.flatnonzero(size == 1).tolist():
        row = int(groups.rows(group)[0])
        reward = f", reward {rewards[row]:.4g}" if rewards is not None else ""
        out.append(
            _group_finding(
                "singleton_group",
                step,
                groups,
                group,
                rows,
                f"prompt {groups.labels[group]} has one sample (row {row}{reward}): GRPO has no group baseline for it "
                "(verl's estimator takes mean 0 and std 1, so the raw reward is the advantage). Sample n >= 2 responses "
                "per prompt, or drop the prompt.",
            )
        )
    for group in np.flatnonzero((size >= 2) & (size < groups.common_size)).tolist():
        out.append(
            _group_finding(
                "incomplete_group",
                step,
                groups,
                group,
                rows,
                f"prompt {groups.labels[group]} has {size[group]} samples where most prompts of the step have "
                f"{groups.common_size}: responses were lost (filtered, failed or truncated away), so its advantages come "
                "from fewer samples while prompt-level modes weight it like a full group. Find where rows were dropped.",
            )
        )
    for group in np.flatnonzero(groups.zero_variance).tolist():
        members = groups.rows(group)
        loss_tokens = int(rows.loss[members].sum())
        nonzero = loss_tokens - int(rows.zero_adv[members].sum())
        if rewards is not None and np.isfinite(rewards[members]).any():
            finite = rewards[members][np.isfinite(rewards[members])]
            why = f"all {plural(int(finite.size), 'finite reward')} are {finite[0]:.4g}"
        else:
            why = "all advantages are 0"
        if nonzero:
            effect = (
                f"yet {plural(nonzero, 'loss token')} carry a non-zero advantage: they come from something other than "
                "this group's rewards (a value baseline, another group's statistics), so check the estimator."
            )
        else:
            effect = (
                f"so GRPO gives every sample advantage 0; its {plural(loss_tokens, 'loss token')} get no gradient but "
                "still count in every denominator (prime-rl excepted). DAPO-style dynamic sampling filters such groups."
            )
        message = f"prompt {groups.labels[group]} ({plural(int(members.size), 'sample')}): {why}, {effect}"
        out.append(_group_finding("zero_variance_group", step, groups, group, rows, message))
    return out


def _noncontiguous(batch: StepBatch, rows: _Rows, groups: _Groups, layout: Layout) -> list[Finding]:
    out = []
    command = _command(batch.source, layout, order="grouped")
    for group in np.flatnonzero(groups.runs > 1).tolist():
        members = groups.rows(group)
        out.append(
            _group_finding(
                "noncontiguous_uid",
                batch.step,
                groups,
                group,
                rows,
                f"prompt {groups.labels[group]} appears in {groups.runs[group]} separate runs in trainer order (rows "
                f"{format_rows(members, 6)}): a boundary-based prompt_mean (SkyRL) stops with an assertion on it, and "
                "prompt counting takes each run for a prompt, so this step's boundary check is skipped. Sort rows by uid "
                f"before splitting; `{command}` shows the effect.",
            )
        )
    return out


def _cuts(
    step: int, rows: _Rows, groups: _Groups, mode_names: set[str], contiguous: bool
) -> tuple[list[Finding], dict[str, tuple[str, ...]], np.ndarray]:
    """Prompts whose rows span more than one unit of each level; findings at the coarsest level."""
    units_by_position = {
        "mini_batch": rows.mini_batch[rows.order],
        "rank": rows.rank_unit[rows.order],
        "micro_batch": rows.micro_unit[rows.order],
    }
    used = groups.size > 0
    first = np.minimum(groups.first_position, max(rows.n - 1, 0))
    last = np.maximum(groups.last_position, 0)
    cut: dict[str, np.ndarray] = {}
    for level, unit in units_by_position.items():
        # Units are contiguous and numbered in trainer order, so a prompt spans several iff its
        # first and last rows sit in different units.
        cut[level] = used & (unit[first] != unit[last]) if rows.n else np.zeros_like(used)
    legacy = "token_mean_legacy" in mode_names
    boundary = "prompt_mean" in mode_names and contiguous
    severity = {
        "mini_batch": "warning",
        "rank": "warning" if legacy else "info",
        "micro_batch": "warning" if legacy else "info",
    }
    findings = []
    for group in np.flatnonzero(cut["micro_batch"]).tolist():
        level = next(lv for lv in CUT_LEVELS if cut[lv][group])
        members = groups.rows(group)
        message = _cut_message(level, groups.labels[group], members, rows, legacy=legacy, boundary=boundary)
        findings.append(
            Finding(
                _CUT_CODES[level],
                severity[level],
                step,
                groups.labels[group],
                tuple(members.tolist()),
                int(rows.loss[members].sum()),
                message,
            )
        )
    cut_prompts = {level: tuple(groups.labels[g] for g in _by_first_position(cut[level], groups)) for level in CUT_LEVELS}
    return findings, cut_prompts, cut["mini_batch"]


def _by_first_position(flagged: np.ndarray, groups: _Groups) -> list[int]:
    chosen = np.flatnonzero(flagged)
    return chosen[np.argsort(groups.first_position[chosen], kind="stable")].tolist()


def _spread(members: np.ndarray, unit: np.ndarray, name: str) -> str:
    values, counts = np.unique(unit[members], return_counts=True)
    return ", ".join(f"{count} in {name} {value}" for value, count in zip(values.tolist(), counts.tolist(), strict=True))


def _cut_message(level: str, uid: str, members: np.ndarray, rows: _Rows, *, legacy: bool, boundary: bool) -> str:
    size = plural(int(members.size), "row")
    if level == "mini_batch":
        text = (
            f"prompt {uid} ({size}: {_spread(members, rows.mini_batch, 'mini-batch')}): one group's update is spread over "
            "several optimizer steps"
        )
        if boundary:
            text += "; a boundary-based prompt_mean (SkyRL) gives its rows past the boundary no gradient (silent_zero_advantage)"
        return text + "."
    mini_batch = int(rows.mini_batch[members[0]])
    if level == "rank":
        text = (
            f"prompt {uid} ({size} in mini-batch {mini_batch}: {_spread(members, rows.rank, 'rank')}): the gradient average "
            "over ranks weights it as if unsplit, but anything computed per rank (advantage whitening, per-rank token "
            "means) sees only part of the group"
        )
    else:
        text = (
            f"prompt {uid} ({size} in mini-batch {mini_batch}, rank {int(rows.rank[members[0]])}: "
            f"{_spread(members, rows.micro_batch, 'micro-batch')}): split over gradient-accumulation steps"
        )
    if legacy:
        text += (
            "; token_mean_legacy normalises each micro-batch by its own token count, so the group's rows get unequal "
            "per-token weights: use token_mean (one global token count)"
        )
    return text + "."


def _boundary_prompt_mean(
    batch: StepBatch, rows: _Rows, groups: _Groups, split: Split, canonical: torch.Tensor
) -> tuple[list[Finding], np.ndarray]:
    """``silent_zero_advantage`` and ``rebased_prompt_mean_misweight`` of one step with contiguous uids."""
    assert batch.group_ids is not None
    rebased = boundary_prompt_mean(batch.stats.loss_tokens, batch.group_ids, split).cpu().numpy()  # [n]
    can = canonical.detach().cpu().numpy()  # [n]
    has_nonzero_adv = rows.loss - rows.zero_adv > 0  # NaN counts as non-zero
    silent = (rebased == 0) & has_nonzero_adv
    misweight = (rows.loss > 0) & ~silent & (np.abs(rebased - can) > MISWEIGHT_RTOL * np.abs(can))
    mass = can * rows.adv_abs  # [n] sum over the row's finite loss tokens of |A| * w
    mass_of_mini_batch = np.bincount(rows.mini_batch, weights=mass, minlength=rows.n_mini_batches)
    run_start = np.ones(rows.n, dtype=bool)
    run_start[1:] = groups.run_of_position[1:] != groups.run_of_position[:-1]
    runs_starting = np.bincount(rows.mini_batch[rows.order][run_start], minlength=rows.n_mini_batches)  # prompts SkyRL counts
    findings = []
    silent_rows = np.flatnonzero(silent)
    for group in np.unique(groups.code[silent_rows]).tolist():
        members = silent_rows[groups.code[silent_rows] == group]
        tokens = int(rows.loss[members].sum())
        lost = float(mass[members].sum())
        lanes = np.unique(rows.mini_batch[members]).tolist()
        share = lost / float(mass_of_mini_batch[lanes].sum()) if mass_of_mini_batch[lanes].sum() > 0 else 0.0
        start = int(rows.mini_batch[groups.rows(group)].min())
        nonfinite = int(rows.nonfinite_adv[members].sum())
        message = (
            f"rows {format_rows(members, 6)} of prompt {groups.labels[group]} lie in mini-batch "
            f"{', '.join(map(str, lanes))} but the prompt's run starts in mini-batch {start}, so a boundary-based "
            f"prompt_mean (SkyRL) leaves them at weight 0: {plural(tokens, 'loss token')} with non-zero advantage get no "
            f"gradient. Gradient mass lost: {lost:.4g} (sum of |A| x canonical prompt_mean weight over them, "
            f"{share:.1%} of that mini-batch's)"
            f"{f'; {nonfinite} non-finite advantages left out of the sum' if nonfinite else ''}. Make mini-batches whole "
            "prompts (--mini-batch-prompts, as SkyRL does)."
        )
        findings.append(
            Finding("silent_zero_advantage", "error", batch.step, groups.labels[group], tuple(members.tolist()), tokens, message)
        )
    misweight_rows = np.flatnonzero(misweight)
    for mini_batch in np.unique(rows.mini_batch[misweight_rows]).tolist():
        members = misweight_rows[rows.mini_batch[misweight_rows] == mini_batch]
        in_mini_batch = rows.mini_batch == mini_batch
        canonical_prompts = np.unique(groups.code[in_mini_batch]).size
        ratio = rebased[members] / can[members]
        parts = []
        for value in np.unique(np.round(ratio, 6)).tolist():
            picked = members[np.isclose(ratio, value, rtol=0, atol=5e-7)]
            prompts = np.unique(groups.code[picked]).size
            parts.append(f"{plural(int(picked.size), 'row')} of {plural(prompts, 'prompt')} at {value:.4g}x")
        zeroed = members[rebased[members] == 0]
        note = " (the rows at 0x have advantage 0, so no gradient is lost there)" if zeroed.size else ""
        rebased_prompts = int(runs_starting[mini_batch])
        message = (
            f"mini-batch {mini_batch}: a boundary-based prompt_mean (SkyRL) counts {rebased_prompts} prompts where "
            f"{canonical_prompts} have rows in it, because a prompt cut at the mini-batch start is left out; "
            f"weights: {'; '.join(parts)} the canonical prompt_mean weight{note}. Make mini-batches whole prompts."
        )
        findings.append(
            Finding(
                "rebased_prompt_mean_misweight",
                "warning",
                batch.step,
                None,
                tuple(members.tolist()),
                int(rows.loss[members].sum()),
                message,
            )
        )
    return findings, silent


# ---- many steps ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepZeroGrad:
    """The zero-gradient causes of one step."""

    step: int
    loss_tokens: int
    zero_grad: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss_tokens": self.loss_tokens, "zero_grad": self.zero_grad}


@dataclass(frozen=True, eq=False)
class CheckReport:
    """The result of ``aggscope check``.

    Attributes:
        findings: every finding, worst first (severity, code, step, first row).
        zero_grad: ``{mode: {cause: loss tokens}}`` over all steps.
        cut_prompts: ``{level: [(step, uid), ...]}`` for every level in ``CUT_LEVELS``.
        steps: the zero-gradient causes of each step.
        loss_tokens: loss tokens over all steps.
        worst_step: the split picture data of the step with the worst findings, or None.
    """

    layout: Layout
    modes: list[str]
    findings: list[Finding]
    zero_grad: dict[str, dict[str, int]]
    cut_prompts: dict[str, list[tuple[int, str]]]
    steps: list[StepZeroGrad]
    loss_tokens: int
    sequences: int
    notes: list[str]
    worst_step: StepLanes | None = None
    lengths_estimated: bool = False

    def counts(self, step: int | None = None) -> dict[str, int]:
        """Findings per severity, over all steps or in one step."""
        counts = Counter(f.severity for f in self.findings if step is None or f.step == step)
        return {severity: counts[severity] for severity in SEVERITIES}

    def fails(self, fail_on: str) -> bool:
        """True when some finding is at or above ``fail_on`` (``error``, ``warning``, ``info``, ``never``)."""
        threshold = parse_fail_on(fail_on)
        if threshold == "never":
            return False
        return any(_SEVERITY_RANK[f.severity] <= _SEVERITY_RANK[threshold] for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "zero_grad": self.zero_grad,
            "cut_prompts": {
                level: [{"step": step, "uid": uid} for step, uid in pairs] for level, pairs in self.cut_prompts.items()
            },
            "counts": self.counts(),
            "loss_tokens": self.loss_tokens,
            "sequences": self.sequences,
            "steps": [s.to_dict() for s in self.steps],
            "layout": self.layout.to_dict(),
            "modes": self.modes,
            "notes": self.notes,
            "lengths_estimated": self.lengths_estimated,
            "worst_step": None
            if self.worst_step is None
            else {"step": self.worst_step.step, "counts": self.counts(self.worst_step.step)},
        }


def parse_fail_on(value: str) -> str:
    """Validate a ``--fail-on`` level."""
    level = value.strip().lower()
    if level not in FAIL_ON_LEVELS:
        raise AggscopeError(f"--fail-on {value!r}: expected one of {', '.join(FAIL_ON_LEVELS)}")
    return level


@dataclass
class CheckAccumulator:
    """Merges ``StepCheck`` results, one step at a time, into a ``CheckReport``.

    Keeps the findings, the cut prompts, the per-step zero-gradient counts, the running intersection
    of the safe mini-batch sizes, and the split picture of the worst step only.
    """

    layout: Layout
    findings: list[Finding] = field(default_factory=list)
    steps: list[StepZeroGrad] = field(default_factory=list)
    cut_prompts: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: {level: [] for level in CUT_LEVELS})
    group_sizes: Counter[int] = field(default_factory=Counter)
    notes: dict[str, None] = field(default_factory=dict)
    safe: SafeSizes | None = None
    modes: list[str] | None = None
    loss_tokens: int = 0
    sequences: int = 0
    _worst: tuple[tuple[int, int, int], StepLanes] | None = None

    def add(self, check: StepCheck) -> None:
        if self.modes is None:
            self.modes = list(check.zero_grad)
        self.findings.extend(check.findings)
        self.steps.append(StepZeroGrad(check.step, check.loss_tokens, check.zero_grad))
        self.loss_tokens += check.loss_tokens
        self.sequences += check.sequences
        for level, uids in check.cut_prompts.items():
            self.cut_prompts[level].extend((check.step, uid) for uid in uids)
        self.group_sizes.update(check.group_sizes)
        for note in check.notes:
            self.notes.setdefault(note, None)
        if check.safe is not None:
            self.safe = check.safe.intersect(self.safe)
        if check.lanes is not None:
            key = check.severity_counts()
            if self._worst is None or key > self._worst[0]:
                self._worst = (key, check.lanes)

    def report(self) -> CheckReport:
        modes = self.modes or []
        total = {mode: dict.fromkeys(ZERO_GRAD_CAUSES, 0) for mode in modes}
        for step in self.steps:
            for mode, causes in step.zero_grad.items():
                for cause, tokens in causes.items():
                    total[mode][cause] += tokens
        advice = self._advice()
        findings = [
            replace(f, message=f"{f.message} {advice}") if advice and f.code in _ADVISED_CODES else f for f in self.findings
        ]
        findings.sort(key=lambda f: f.sort_key)
        notes = list(self.notes)
        return CheckReport(
            layout=self.layout,
            modes=modes,
            findings=findings,
            zero_grad=total,
            cut_prompts={level: list(pairs) for level, pairs in self.cut_prompts.items()},
            steps=list(self.steps),
            loss_tokens=self.loss_tokens,
            sequences=self.sequences,
            notes=notes,
            worst_step=self._worst[1] if self._worst is not None else None,
        )

    def _advice(self) -> str:
        """Nearest mini-batch sizes, in sequences and in prompts, that cut no prompt of the data so far."""
        layout, safe = self.layout, self.safe
        if safe is None or not self.group_sizes:
            return ""
        group_size = max(self.group_sizes, key=lambda size: (self.group_sizes[size], size))
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


def run_checks(
    batches: Iterable[StepBatch], modes: Sequence[Mode | str] | None = None, layout: Layout | None = None
) -> CheckReport:
    """Check every step, one at a time, and merge the results.

    Args:
        batches: the steps (any iterable, e.g. ``rollouts.iter_steps()``).
        modes: the modes the user trains with; default every mode that applies to the first step.
        layout: the trainer configuration.
    """
    layout = layout or Layout()
    accumulator = CheckAccumulator(layout)
    estimated = False
    for batch in batches:
        if modes is None:
            modes = default_modes(has_groups=batch.has_groups, max_seq_len=layout.max_seq_len)
        accumulator.add(check_step(batch, modes, layout))
        estimated = estimated or batch.lengths_estimated
    report = accumulator.report()
    return replace(report, lengths_estimated=True) if estimated else report


def run_checks_on(
    engine: Engine,
    rollouts: SteppedRollouts,
    modes: Sequence[Mode | str],
    layout: Layout | None = None,
    progress: Callable[[Iterator[StepCheck]], Iterable[StepCheck]] | None = None,
) -> CheckReport:
    """``run_checks`` with the per-step work on an engine (``local``, or one Ray task per step).

    The steps' ``StepCheck`` results are merged in step order, so the report is the same on
    every engine.

    Args:
        engine: where the steps run (``aggscope.analysis.runner.open_engine``).
        rollouts: the opened input (``open_rollouts``).
        modes: the modes the user trains with.
        progress: optional wrapper of the results as they arrive (a progress bar).
    """
    layout = layout or Layout()
    accumulator = CheckAccumulator(layout)
    results = engine.map_steps(rollouts, functools.partial(check_step, modes=list(modes), layout=layout))
    for check in progress(results) if progress is not None else results:
        accumulator.add(check)
    report = accumulator.report()
    return replace(report, lengths_estimated=True) if getattr(rollouts, "lengths_estimated", False) else report
