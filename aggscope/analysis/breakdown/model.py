"""The breakdown: per-sequence data of every step under every SPEC, and the groupings built from it.

A ``Breakdown`` keeps only per-sequence quantities (memory grows with sequences, not tokens), the
engine's summaries, ``check``'s report under each layout, and one fixed-bin histogram of per-token
gradient weights per SPEC. Its queries group rows by response length, prompt difficulty and prompt;
figures and reports are built from them.

Notation: ``n_rows`` sequences of all steps in step order, ``n_prompts`` (step, uid) pairs,
``k`` buckets. A row's gradient mass is ``sum_t |w_i * A[i, t]|`` over its loss tokens with a
finite advantage, its weight mass ``w_i * L_i``; their sums over all rows are the engine's
``grad_abs_sum`` and ``weight_sum``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from aggscope.analysis.checks import CheckReport
from aggscope.analysis.specs import Spec
from aggscope.core.batch import SequenceStats
from aggscope.core.layout import Layout
from aggscope.core.segments import group_sum
from aggscope.core.split import Split
from aggscope.core.summaries import ModeSummary
from aggscope.core.weights import StepSummary
from aggscope.errors import AggscopeError

DIFFICULTY_BUCKETS = ("hard", "medium", "easy", "unscored")
# Per-token gradient weights relative to the mode's mean: 10^-3 .. 10^3, ten bins per decade;
# values outside land in the end bins.
HISTOGRAM_LOG10_EDGES = np.linspace(-3.0, 3.0, 61)
# Length slices hold at least this many responses; fewer responses fill fewer slices.
MIN_ROWS_PER_BUCKET = 5


@dataclass(frozen=True)
class TokenHistogram:
    """Loss tokens by gradient weight ``|w * A|`` relative to the mode's mean in their step.

    Attributes:
        log10_edges: ``[n_bins + 1]`` bin edges of ``log10(|g| / mean |g|)``.
        positive: ``[n_bins]`` token counts with a positive finite advantage.
        negative: ``[n_bins]`` the same for negative advantages.
    """

    log10_edges: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


@dataclass(frozen=True)
class SpecResult:
    """One SPEC over all steps.

    Attributes:
        spec: the mode and layout.
        row_weight: ``[n_rows]`` float64 engine weight ``w_i`` of each row, steps concatenated.
        steps: the engine's summary of each step.
        total: the engine's summary over all steps.
        histogram: per-token gradient weights.
    """

    spec: Spec
    row_weight: np.ndarray
    steps: list[ModeSummary]
    total: ModeSummary
    histogram: TokenHistogram


@dataclass(frozen=True)
class BucketShares:
    """What one SPEC gives each of ``k`` buckets.

    Attributes:
        grad_mass: ``[k]`` gradient mass per bucket.
        grad_mass_share: ``[k]`` its share of the SPEC's gradient mass (NaN when there is none).
        weight_mass: ``[k]`` weight mass per bucket.
    """

    grad_mass: np.ndarray
    grad_mass_share: np.ndarray
    weight_mass: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "grad_mass": self.grad_mass.tolist(),
            "grad_mass_share": self.grad_mass_share.tolist(),
            "weight_mass": self.weight_mass.tolist(),
        }


@dataclass(frozen=True)
class Buckets:
    """Rows grouped into ``k`` buckets and what each bucket gets under each SPEC.

    Attributes:
        names: ``[k]`` bucket names.
        rows: ``[k]`` sequences per bucket.
        loss_tokens: ``[k]`` loss tokens per bucket.
        min_tokens, max_tokens: ``[k]`` loss tokens of the shortest and longest row of a bucket.
        grad_mass: label -> ``[k]`` gradient mass per bucket.
        weight_mass: label -> ``[k]`` weight mass per bucket.
    """

    names: list[str]
    rows: np.ndarray
    loss_tokens: np.ndarray
    min_tokens: np.ndarray
    max_tokens: np.ndarray
    grad_mass: dict[str, np.ndarray]
    weight_mass: dict[str, np.ndarray]
    prompts: np.ndarray | None = None

    @property
    def nonempty(self) -> list[int]:
        """The indices of the buckets that hold rows (ties are never split, so some may be empty)."""
        return [i for i, n in enumerate(self.rows.tolist()) if n > 0]

    @property
    def last(self) -> int:
        """The last bucket holding rows (the longest responses of length buckets)."""
        nonempty = self.nonempty
        return nonempty[-1] if nonempty else len(self.names) - 1

    def grad_share(self, label: str) -> np.ndarray:
        """``[k]`` share of the SPEC's gradient mass per bucket (NaN when there is none)."""
        return _share(self.grad_mass[label])

    def token_share(self) -> np.ndarray:
        """``[k]`` share of all loss tokens per bucket (NaN when there are none)."""
        return _share(self.loss_tokens.astype(np.float64))

    def shares(self, label: str) -> BucketShares:
        """What the SPEC ``label`` gives each bucket."""
        return BucketShares(self.grad_mass[label], self.grad_share(label), self.weight_mass[label])

    def to_dict(self) -> dict[str, Any]:
        """The buckets themselves, JSON-ready (what each SPEC gives them is ``shares``)."""
        return {
            "names": self.names,
            "sequences": self.rows.tolist(),
            "loss_tokens": self.loss_tokens.tolist(),
            "min_loss_tokens": self.min_tokens.tolist(),
            "max_loss_tokens": self.max_tokens.tolist(),
            "loss_token_share": self.token_share().tolist(),
            "nonempty": self.nonempty,
            "prompts": None if self.prompts is None else self.prompts.tolist(),
        }


def _share(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    return values / total if total > 0 else np.full(values.shape, math.nan)


@dataclass(frozen=True)
class SignShares:
    """Shares of a SPEC's gradient mass on positive and negative advantages (None: no finite mass)."""

    positive_share: float | None
    negative_share: float | None

    @classmethod
    def of(cls, summary: ModeSummary) -> SignShares:
        positive, negative = summary.grad_pos_sum, summary.grad_neg_sum
        total = positive - negative  # negative is <= 0
        if not (total > 0 and math.isfinite(total)):
            return cls(None, None)
        return cls(positive / total, -negative / total)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Concentration:
    """How concentrated a SPEC's gradient mass is across prompts (across rows without uids).

    Attributes:
        unit: ``prompts``, or ``sequences`` without uids.
        units: how many there are.
        top_10pct_share, top_half_share: share of the mass on the top 10% and the top half of the
            units, ranked by mass (None: no mass).
        gini: the Gini coefficient of the mass across units (0: all equal; None: no mass).
        zero_mass_units: units with no gradient mass (None: no mass at all).
    """

    unit: str
    units: int
    top_10pct_share: float | None
    top_half_share: float | None
    gini: float | None
    zero_mass_units: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptMove:
    """A prompt whose share of its step's gradient mass changes from a base SPEC to a candidate.

    Attributes:
        mean_reward: the group's mean finite reward (NaN: none; None without rewards).
        base_share, candidate_share: the prompt's share of its step's gradient mass ``Σ|w·A|``
            under each SPEC.
        change_points: ``100 * (candidate_share - base_share)``: the gradient mass it gains (or
            loses), in points of its step's.
        base_weight_share, candidate_weight_share: its share of its step's weight mass ``Σw``.
    """

    step: int
    uid: str
    sequences: int
    loss_tokens: int
    mean_reward: float | None
    base_share: float
    candidate_share: float
    change_points: float
    base_weight_share: float
    candidate_weight_share: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Breakdown:
    """Everything the figures and reports need, from one pass over the steps.

    Attributes:
        source: where the steps came from.
        specs: the SPECs, in the order given.
        steps: step number of each step read.
        step_sizes: sequences, prompts, tokens and loss tokens of each step.
        stats: ``[n_rows]`` per-sequence quantities of all steps.
        row_step: ``[n_rows]`` index of each row's step in ``steps``.
        row_prompt: ``[n_rows]`` index of each row's (step, uid) prompt, or None without uids.
        prompt_step: ``[n_prompts]`` index of each prompt's step.
        prompt_uid: ``[n_prompts]`` uid text of each prompt.
        prompt_rows: ``[n_prompts]`` sequences of each prompt.
        prompt_reward: ``[n_prompts]`` mean finite reward of each prompt (NaN: none), or None.
        reward_range: lowest and highest finite reward of any row, or None.
        results: SPEC label -> its weights and engine summaries.
        splits: layout -> the split of each step.
        group_ids: the uid codes of each step (None without uids), for split pictures.
        uid_labels: the uid text of each code, per step (None without uids).
        checks: what ``check`` reports under each layout, with the modes of the SPECs at that layout.
        cut_prompts: layout -> per step, ``check``'s uids cut at each level (``mini_batch``,
            ``rank``, ``micro_batch``).
        lengths_estimated: True when some step's token counts were estimated from text.
        row_reward: ``[n_rows]`` each row's reward (NaN: none), or None without rewards.
        prompt_text: ``[n_prompts]`` the start of each prompt's text (None: none), or None.
    """

    source: str
    specs: list[Spec]
    steps: list[int]
    step_sizes: list[StepSummary]
    stats: SequenceStats
    row_step: np.ndarray
    row_prompt: np.ndarray | None
    prompt_step: np.ndarray
    prompt_uid: list[str]
    prompt_rows: np.ndarray
    prompt_reward: np.ndarray | None
    reward_range: tuple[float, float] | None
    results: dict[str, SpecResult]
    splits: dict[Layout, list[Split]]
    group_ids: list[np.ndarray | None]
    uid_labels: list[tuple[str, ...] | None]
    checks: dict[Layout, CheckReport]
    cut_prompts: dict[Layout, list[dict[str, tuple[str, ...]]]]
    lengths_estimated: bool = False
    row_reward: np.ndarray | None = None
    prompt_text: list[str | None] | None = None

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.specs]

    @property
    def n_rows(self) -> int:
        return int(self.row_step.size)

    @property
    def n_prompts(self) -> int:
        return int(self.prompt_step.size)

    @property
    def has_groups(self) -> bool:
        return self.row_prompt is not None

    @property
    def loss_tokens(self) -> int:
        return int(self.stats.loss_tokens.sum())

    def zero_grad_causes(self) -> dict[str, dict[str, int]]:
        """label -> cause -> loss tokens with no gradient (``check``'s accounting over all steps)."""
        return {spec.label: dict(self.checks[spec.layout].zero_grad[spec.mode.name]) for spec in self.specs}

    def step_zero_grad_causes(self, label: str) -> list[dict[str, int]]:
        """The same, step by step."""
        spec = self.spec(label)
        return [dict(step.zero_grad[spec.mode.name]) for step in self.checks[spec.layout].steps]

    def spec(self, label: str) -> Spec:
        """The SPEC of a label."""
        return next(s for s in self.specs if s.label == label)

    def worst_step_index(self) -> int:
        """The index in ``steps`` of the step that ``check`` pictures (its ``worst_step``).

        Under several layouts, the worst of their worst steps: most errors, then warnings, then
        infos (counted as ``check --json`` counts them), the first layout on ties; 0 when no layout
        has a picture (no uids).
        """
        best: tuple[tuple[int, ...], int] | None = None
        for report in self.checks.values():
            if report.worst_step is None:
                continue
            step = report.worst_step.step
            key = tuple(report.counts(step).values())  # by severity, worst first
            if best is None or key > best[0]:
                best = (key, self.steps.index(step))
        return 0 if best is None else best[1]

    # ---- per-row quantities --------------------------------------------------------------------
    def row_grad_mass(self, label: str) -> np.ndarray:
        """``[n_rows]`` gradient mass of each row: ``|w_i| * sum_t |A[i, t]|`` over finite advantages."""
        weight = self.results[label].row_weight  # [n_rows]
        finite = np.where(np.isfinite(weight), weight, 0.0)
        return np.abs(finite) * self.stats.adv_abs_sum

    def row_weight_mass(self, label: str) -> np.ndarray:
        """``[n_rows]`` weight mass of each row: ``w_i * L_i``."""
        return self.results[label].row_weight * self.stats.loss_tokens.astype(np.float64)

    # ---- buckets -------------------------------------------------------------------------------
    def buckets(self, bucket_of_row: np.ndarray, names: Sequence[str]) -> Buckets:
        """Sum rows into buckets ``0..k-1`` (``k = len(names)``), for every SPEC at once."""
        k = len(names)
        tokens = self.stats.loss_tokens  # [n_rows] int64
        rows = np.bincount(bucket_of_row, minlength=k).astype(np.int64)  # [k]
        min_tokens = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(min_tokens, bucket_of_row, tokens)
        max_tokens = np.zeros(k, dtype=np.int64)
        np.maximum.at(max_tokens, bucket_of_row, tokens)
        min_tokens = np.where(rows > 0, min_tokens, 0)
        return Buckets(
            names=list(names),
            rows=rows,
            loss_tokens=group_sum(tokens, bucket_of_row, k),
            min_tokens=min_tokens,
            max_tokens=max_tokens,
            grad_mass={label: group_sum(self.row_grad_mass(label), bucket_of_row, k) for label in self.labels},
            weight_mass={label: group_sum(self.row_weight_mass(label), bucket_of_row, k) for label in self.labels},
        )

    def length_bucket_of_row(self, k: int, *, per_step: bool = False, min_rows: int = MIN_ROWS_PER_BUCKET) -> np.ndarray:
        """``[n_rows]`` length bucket ``0..k-1`` (shortest first) of each row.

        Rows are ranked by loss tokens, over all steps or within each step, and cut into ``k``
        equal-count slices; rows of equal length are never split (``_rank_buckets``). With
        ``per_step`` the bucket of a row of step ``s`` is ``s * k + slice``.
        """
        tokens = self.stats.loss_tokens
        if not per_step:
            return _rank_buckets(tokens, k, min_rows)
        out = np.empty(tokens.size, dtype=np.int64)
        # Rows are in step order: each step's rows are one slice of the arrays.
        ends = np.cumsum(np.bincount(self.row_step, minlength=len(self.steps)))  # [n_steps]
        for index, (start, end) in enumerate(zip(ends - np.diff(ends, prepend=0), ends, strict=True)):
            out[start:end] = index * k + _rank_buckets(tokens[start:end], k, min_rows)
        return out

    def length_buckets(self, k: int, min_rows: int = MIN_ROWS_PER_BUCKET) -> Buckets:
        """Rows in ``k`` equal-count length slices over all steps (quartiles: ``k = 4``), ties unsplit.

        ``min_rows``: a slice holds at least this many rows, so few rows fill fewer slices.
        """
        names = [f"{_ordinal(i + 1)} {_slice_name(k)}" for i in range(k)]
        return self.buckets(self.length_bucket_of_row(k, min_rows=min_rows), names)

    def difficulty_of_prompt(self) -> np.ndarray | None:
        """``[n_prompts]`` index into ``DIFFICULTY_BUCKETS`` of each prompt, or None.

        A prompt's group mean reward is placed in the range of all finite rewards
        (``(mean - min) / (max - min)``, the success rate for 0/1 rewards): below 1/3 is hard,
        below 2/3 medium, else easy; a prompt with no finite reward is unscored. None without
        uids or rewards, or when every finite reward is the same.
        """
        reward = self.prompt_reward
        if reward is None or self.reward_range is None:
            return None
        low, high = self.reward_range
        if high == low:
            return None
        finite = np.isfinite(reward)
        position = (reward - low) / (high - low)  # [n_prompts] in [0, 1]
        level = np.where(position < 1 / 3, 0, np.where(position < 2 / 3, 1, 2))
        return np.where(finite, level, 3).astype(np.int64)

    def difficulty_buckets(self) -> Buckets | None:
        """Rows by their prompt's difficulty (see ``difficulty_of_prompt``), or None."""
        level = self.difficulty_of_prompt()
        if level is None or self.row_prompt is None:
            return None
        buckets = self.buckets(level[self.row_prompt], DIFFICULTY_BUCKETS)
        return replace(buckets, prompts=np.bincount(level, minlength=len(DIFFICULTY_BUCKETS)).astype(np.int64))

    # ---- prompts -------------------------------------------------------------------------------
    def unit_of_row(self) -> np.ndarray:
        """``[n_rows]`` the prompt of each row, or the row itself when there are no uids."""
        return self.row_prompt if self.row_prompt is not None else np.arange(self.n_rows, dtype=np.int64)

    def prompt_grad_mass(self, label: str) -> np.ndarray:
        """``[n_units]`` gradient mass of each prompt (of each row without uids)."""
        unit = self.unit_of_row()
        n_units = self.n_prompts if self.row_prompt is not None else self.n_rows
        return group_sum(self.row_grad_mass(label), unit, n_units)

    def ranked_prompt_mass(self, label: str) -> np.ndarray:
        """``[n_units]`` the gradient mass of each prompt (row without uids), largest first."""
        return np.sort(self.prompt_grad_mass(label))[::-1]

    def concentration(self, label: str) -> Concentration:
        """Top shares and the Gini coefficient of the SPEC's gradient mass across prompts."""
        mass = self.ranked_prompt_mass(label)  # [n_units] largest first
        total = float(mass.sum())
        unit = "prompts" if self.has_groups else "sequences"
        n = int(mass.size)
        if n == 0 or not total > 0:
            return Concentration(unit, n, None, None, None, None)
        cumulative = np.cumsum(mass) / total  # [n_units] share of the top 1, 2, ... units

        def top(fraction: float) -> float:
            return float(cumulative[max(math.ceil(fraction * n), 1) - 1])

        # Gini = 1 - 2 * (area under the Lorenz curve), from the ascending cumulative shares.
        lorenz = np.cumsum(mass[::-1]) / total  # [n_units]
        gini = 1.0 - (2.0 * lorenz.sum() - 1.0) / n
        return Concentration(unit, n, top(0.1), top(0.5), float(gini), int((mass == 0).sum()))

    def prompt_moves(self, base: str, candidate: str, top: int) -> tuple[list[PromptMove], list[PromptMove]] | None:
        """The ``top`` prompts whose share of their step's gradient mass grows most, and shrinks most.

        Ranked by gradient mass moved (points of their step's ``Σ|w·A|``). Prompts with no
        gradient under both SPECs (a zero-variance group, say) move nothing and are left out, as
        are those whose share does not change or is not defined under both.

        Returns:
            (gaining, losing), largest change first. None without uids.
        """
        if not self.has_groups:
            return None
        before = self.prompt_share(base, self.row_grad_mass)  # [n_prompts]
        after = self.prompt_share(candidate, self.row_grad_mass)
        delta = after - before
        valid = np.isfinite(delta) & ((before > 0) | (after > 0))
        order = np.argsort(np.where(valid, delta, 0.0), kind="stable")
        losing = [int(i) for i in order[:top] if valid[i] and delta[i] < 0]
        gaining = [int(i) for i in order[::-1][:top] if valid[i] and delta[i] > 0]
        weight_before, weight_after = self.prompt_weight_share(base), self.prompt_weight_share(candidate)
        loss_tokens = group_sum(self.stats.loss_tokens, self.unit_of_row(), self.n_prompts)
        reward = self.prompt_reward

        def move(index: int) -> PromptMove:
            return PromptMove(
                step=self.steps[int(self.prompt_step[index])],
                uid=self.prompt_uid[index],
                sequences=int(self.prompt_rows[index]),
                loss_tokens=int(loss_tokens[index]),
                mean_reward=None if reward is None else float(reward[index]),
                base_share=float(before[index]),
                candidate_share=float(after[index]),
                change_points=float(100 * delta[index]),
                base_weight_share=float(weight_before[index]),
                candidate_weight_share=float(weight_after[index]),
            )

        return [move(i) for i in gaining], [move(i) for i in losing]

    def prompt_share(self, label: str, row_mass: Callable[[str], np.ndarray]) -> np.ndarray:
        """``[n_prompts]`` each prompt's share of its step's ``row_mass`` (NaN where the step has none)."""
        if self.row_prompt is None:
            raise AggscopeError(f"{self.source}: prompt shares need a uid column")
        per_prompt = group_sum(row_mass(label), self.row_prompt, self.n_prompts)  # [n_prompts]
        per_step = group_sum(per_prompt, self.prompt_step, len(self.steps))  # [n_steps]
        step_total = per_step[self.prompt_step]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(step_total > 0, per_prompt / step_total, math.nan)

    def prompt_weight_share(self, label: str) -> np.ndarray:
        """``[n_prompts]`` each prompt's share of its step's weight mass (NaN where it is 0)."""
        return self.prompt_share(label, self.row_weight_mass)

    def ratio_quantiles(self, base: str, candidate: str, quantiles: Sequence[float]) -> dict[str, float | None]:
        """Quantiles over loss tokens of the per-token weight ratio ``w_candidate / w_base``.

        Each row's ratio counts once per loss token. Rows whose base weight is 0 or not finite are
        left out (``excluded_tokens`` counts their loss tokens). Also gives the share of tokens whose
        weight grows (ratio > 1) and shrinks (ratio < 1), relative to the mean ratio, since modes
        are scaled differently (``token_sum`` weights are around 1, ``token_mean`` ones 1 / T).
        """
        w_base = self.results[base].row_weight
        w_cand = self.results[candidate].row_weight
        tokens = self.stats.loss_tokens
        usable = (tokens > 0) & np.isfinite(w_base) & (w_base > 0) & np.isfinite(w_cand)  # [n_rows]
        ratio = w_cand[usable] / w_base[usable]
        count = tokens[usable]
        out: dict[str, float | None] = {"excluded_tokens": float(tokens[~usable].sum())}
        total = float(count.sum())
        if total == 0:
            out.update({f"p{round(q * 100)}": None for q in quantiles})
            out.update({"mean": None, "share_above_mean": None, "share_below_mean": None})
            return out
        order = np.argsort(ratio, kind="stable")
        cumulative = np.cumsum(count[order])  # [n_usable] tokens up to and including each row
        for q in quantiles:
            # The smallest ratio with at least a share q of the tokens at or below it.
            index = int(np.searchsorted(cumulative, q * total, side="left"))
            out[f"p{round(q * 100)}"] = float(ratio[order][min(index, ratio.size - 1)])
        mean = float((ratio * count).sum() / total)
        relative = ratio / mean
        out["mean"] = mean
        out["share_above_mean"] = float(count[relative > 1 + 1e-9].sum() / total)
        out["share_below_mean"] = float(count[relative < 1 - 1e-9].sum() / total)
        return out


def buckets_used(n_rows: int, k: int, min_rows: int = MIN_ROWS_PER_BUCKET) -> int:
    """How many of ``k`` length slices hold rows: fewer when there are under ``min_rows`` rows a slice."""
    return max(1, min(k, n_rows // min_rows))


def _rank_buckets(values: np.ndarray, k: int, min_rows: int = MIN_ROWS_PER_BUCKET) -> np.ndarray:
    """``[n]`` slot ``0..k-1`` of each value: equal-count slices by rank, ties never split.

    Equal values all go to the slice of their middle rank (so a slice can be larger or smaller
    than ``n / k``, or empty). With few values only ``buckets_used`` slices are filled, spread so
    that the first and the last slot stay the shortest and the longest.
    """
    n = values.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    used = buckets_used(n, k, min_rows)
    ordered = np.sort(values, kind="stable")  # [n]
    first = np.searchsorted(ordered, values, side="left")  # [n] rank of the first equal value
    last = np.searchsorted(ordered, values, side="right") - 1  # [n] rank of the last equal value
    middle = (first + last) // 2
    slice_of_row = (middle * used) // n  # [n] in 0..used-1
    if used == k:
        return slice_of_row.astype(np.int64)
    return (slice_of_row * (k - 1) // max(used - 1, 1)).astype(np.int64)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _slice_name(k: int) -> str:
    return {4: "quartile", 10: "decile", 5: "quintile", 3: "tercile"}.get(k, f"1/{k}")
