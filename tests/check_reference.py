"""A straightforward, loop-by-loop re-implementation of the rules of ``aggscope check`` (issue 3).

It shares nothing with ``aggscope.analysis.checks`` except the split (``split_step``, tested by the core): every
count, group statistic, prompt_mean weight and finding is rebuilt here with plain Python loops over
rows and tokens, the way one would write it on paper, so the tests can compare the two.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.weights import split_batch

SEQUENCE_DENOMINATOR_MODES = ("sequence_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "seq_mean_token_sum_norm_padded")
CUT_CODES = {"mini_batch": "prompt_cut_by_mini_batch", "rank": "prompt_cut_by_rank", "micro_batch": "prompt_cut_by_micro_batch"}


@dataclass
class Row:
    uid: str | None
    reward: float | None
    advantages: list[float]
    mask: list[bool]

    @property
    def loss_tokens(self) -> int:
        return sum(1 for m in self.mask if m)

    @property
    def zero_adv(self) -> int:
        return sum(1 for a, m in zip(self.advantages, self.mask, strict=True) if m and a == 0)

    @property
    def nonfinite_adv(self) -> int:
        return sum(1 for a, m in zip(self.advantages, self.mask, strict=True) if m and not math.isfinite(a))

    @property
    def masked_nonzero(self) -> int:
        return sum(1 for a, m in zip(self.advantages, self.mask, strict=True) if not m and a != 0)

    @property
    def finite_abs_sum(self) -> float:
        return sum(abs(a) for a, m in zip(self.advantages, self.mask, strict=True) if m and math.isfinite(a))


def rows_of(batch: StepBatch) -> list[Row]:
    advantages = batch.advantages.tolist()
    mask = batch.loss_mask.tolist()
    offsets = batch.offsets.tolist()
    uids = batch.row_uids()
    rewards = batch.rewards.tolist() if batch.rewards is not None else [None] * batch.n_sequences
    return [
        Row(uids[i], rewards[i], advantages[offsets[i] : offsets[i + 1]], mask[offsets[i] : offsets[i + 1]])
        for i in range(batch.n_sequences)
    ]


@dataclass
class Units:
    """Per-row placement, read from the core split into plain lists."""

    order: list[int]
    mini_batch: list[int]
    rank: list[int]
    micro_batch: list[int]


def units_of(batch: StepBatch, layout: Layout) -> Units:
    split = split_batch(batch, layout)  # the core split, with sequence lengths where the layout counts them
    return Units(split.order.tolist(), split.mini_batch.tolist(), split.rank.tolist(), split.micro_batch.tolist())


def group_rows(rows: list[Row]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        assert row.uid is not None
        groups.setdefault(row.uid, []).append(i)
    return groups


def zero_variance(rows: list[Row], members: list[int]) -> bool:
    if len(members) < 2:
        return False
    finite = [rows[i].reward for i in members if rows[i].reward is not None and math.isfinite(rows[i].reward)]
    if finite:
        return all(r == finite[0] for r in finite)
    return all(rows[i].zero_adv == rows[i].loss_tokens for i in members)


def group_mean(rows: list[Row], members: list[int]) -> float | None:
    finite = [rows[i].reward for i in members if rows[i].reward is not None and math.isfinite(rows[i].reward)]
    return sum(finite) / len(finite) if finite else None


def at_group_mean(row: Row, mean: float | None) -> bool:
    if mean is None or row.reward is None or not math.isfinite(row.reward):
        return False
    return abs(row.reward - mean) <= 1e-9 * max(1.0, abs(mean))


def runs_in_trainer_order(rows: list[Row], units: Units) -> list[tuple[int, int]]:
    """Maximal runs of equal consecutive uids, as (start, end) trainer positions."""
    runs: list[tuple[int, int]] = []
    start = 0
    for p in range(1, len(units.order) + 1):
        if p == len(units.order) or rows[units.order[p]].uid != rows[units.order[start]].uid:
            runs.append((start, p))
            start = p
    return runs


def mini_batch_ranges(units: Units) -> list[tuple[int, int]]:
    """(b0, b1) trainer-position ranges of each mini-batch."""
    ranges: list[tuple[int, int]] = []
    start = 0
    n = len(units.order)
    for p in range(1, n + 1):
        if p == n or units.mini_batch[units.order[p]] != units.mini_batch[units.order[start]]:
            ranges.append((start, p))
            start = p
    return ranges


def rebased_prompt_mean(rows: list[Row], units: Units) -> list[float]:
    """The pseudocode of the reference sheet, line by line; weights by seq_index."""
    n = len(rows)
    scaled_by_position = [0.0] * n
    runs = runs_in_trainer_order(rows, units)
    for b0, b1 in mini_batch_ranges(units):
        mine = [(s, e) for (s, e) in runs if b0 <= s < b1]
        for s, e in mine:
            e = min(e, b1)
            tokens = sum(rows[units.order[p]].loss_tokens for p in range(s, e))
            for p in range(s, e):
                scaled_by_position[p] = 1.0 / (len(mine) * max(tokens, 1))
    weights = [0.0] * n
    for p in range(n):
        weights[units.order[p]] = scaled_by_position[p]
    return weights


def canonical_prompt_mean(rows: list[Row], units: Units) -> list[float]:
    """1 / (P_b * T_{p,b}) with plain loops."""
    weights = [0.0] * len(rows)
    for b in set(units.mini_batch):
        members = [i for i in range(len(rows)) if units.mini_batch[i] == b]
        uids = {rows[i].uid for i in members}
        for i in members:
            tokens = sum(rows[j].loss_tokens for j in members if rows[j].uid == rows[i].uid)
            weights[i] = 1.0 / (len(uids) * max(tokens, 1))
    return weights


def cut_prompts(rows: list[Row], units: Units) -> dict[str, list[str]]:
    """Uids whose rows span more than one unit of each level, in order of first trainer position."""
    first_position: dict[str, int] = {}
    for p, i in enumerate(units.order):
        first_position.setdefault(rows[i].uid, p)  # type: ignore[arg-type]
    out: dict[str, list[str]] = {"mini_batch": [], "rank": [], "micro_batch": []}
    for uid, members in sorted(group_rows(rows).items(), key=lambda item: first_position[item[0]]):
        mini = {units.mini_batch[i] for i in members}
        rank = {(units.mini_batch[i], units.rank[i]) for i in members}
        micro = {(units.mini_batch[i], units.rank[i], units.micro_batch[i]) for i in members}
        for level, spanned in (("mini_batch", mini), ("rank", rank), ("micro_batch", micro)):
            if len(spanned) > 1:
                out[level].append(uid)
    return out


Expected = tuple[str, str, int, "str | None", tuple[int, ...], int]


def no_gradient_share(rows: list[Row], step: int) -> set[Expected]:
    """The step's ``no_gradient_share`` at the default thresholds (above 25%: warning, above 50% or at
    100%: error). Every canonical mode gives each loss token a positive finite weight, so a token has
    no gradient exactly where its advantage is 0 or not finite, the same under every mode."""
    loss = sum(r.loss_tokens for r in rows)
    without = [r.zero_adv + r.nonfinite_adv for r in rows]
    share = sum(without) / loss if loss else 0.0
    if share <= 0.25:
        return set()
    severity = "error" if share > 0.5 or share == 1.0 else "warning"
    return {("no_gradient_share", severity, step, None, tuple(i for i, w in enumerate(without) if w), sum(without))}


def expected_findings(batch: StepBatch, layout: Layout, modes: list[str]) -> set[Expected]:
    """Every finding of one step as (code, severity, step, uid, rows, tokens)."""
    rows = rows_of(batch)
    step = batch.step
    out: set[Expected] = set()

    def per_uid(code: str, severity: str, flagged: list[int], tokens: list[int]) -> None:
        buckets: dict[str | None, list[int]] = {}
        for i in flagged:
            buckets.setdefault(rows[i].uid, []).append(i)
        for uid, members in buckets.items():
            out.add((code, severity, step, uid, tuple(members), sum(tokens[i] for i in members)))

    n = len(rows)
    per_uid("nonfinite_advantage", "error", [i for i in range(n) if rows[i].nonfinite_adv], [r.nonfinite_adv for r in rows])
    per_uid(
        "masked_token_advantage", "warning", [i for i in range(n) if rows[i].masked_nonzero], [r.masked_nonzero for r in rows]
    )
    if any(mode in SEQUENCE_DENOMINATOR_MODES for mode in modes):  # the only modes an empty row dilutes
        per_uid("empty_sequence", "warning", [i for i in range(n) if rows[i].loss_tokens == 0], [0] * n)
    out |= no_gradient_share(rows, step)
    if not batch.has_groups:
        return out

    groups = group_rows(rows)
    sizes = Counter(len(members) for members in groups.values())
    most = max(sizes.values())
    common = max(size for size, count in sizes.items() if count == most)
    loss = [r.loss_tokens for r in rows]
    zeroed = []
    for uid, members in groups.items():
        tokens = sum(loss[i] for i in members)
        variance_zero = zero_variance(rows, members)
        mean = group_mean(rows, members)
        if len(members) == 1:
            out.add(("singleton_group", "warning", step, uid, tuple(members), tokens))
        if 2 <= len(members) < common:
            out.add(("incomplete_group", "warning", step, uid, tuple(members), tokens))
        if variance_zero:
            out.add(("zero_variance_group", "info", step, uid, tuple(members), tokens))
        for i in members:
            all_zero = loss[i] > 0 and rows[i].zero_adv == loss[i]
            # a missing reward in a group with finite ones: advantage 0 by design (TRL's unscorable rows)
            unscorable = rows[i].reward is not None and math.isnan(rows[i].reward) and mean is not None
            if all_zero and not variance_zero and not at_group_mean(rows[i], mean) and not unscorable:
                zeroed.append(i)
    per_uid("zero_advantage", "error", sorted(zeroed), loss)

    units = units_of(batch, layout)
    runs = runs_in_trainer_order(rows, units)
    run_count = Counter(rows[units.order[s]].uid for s, _ in runs)
    for uid, count in run_count.items():
        if count > 1:
            out.add(("noncontiguous_uid", "warning", step, uid, tuple(groups[uid]), sum(loss[i] for i in groups[uid])))

    legacy = "token_mean_legacy" in modes
    severity = {"mini_batch": "warning", "rank": "warning" if legacy else "info", "micro_batch": "warning" if legacy else "info"}
    cuts = cut_prompts(rows, units)
    for uid, members in groups.items():
        for level in ("mini_batch", "rank", "micro_batch"):
            if uid in cuts[level]:
                out.add((CUT_CODES[level], severity[level], step, uid, tuple(members), sum(loss[i] for i in members)))
                break

    contiguous = all(count == 1 for count in run_count.values())
    if "prompt_mean" in modes and contiguous:
        rebased = rebased_prompt_mean(rows, units)
        canonical = canonical_prompt_mean(rows, units)
        silent: dict[str, list[int]] = {}
        misweight: dict[int, list[int]] = {}
        for i in range(n):
            nonzero_advantage = loss[i] - rows[i].zero_adv > 0
            if rebased[i] == 0 and nonzero_advantage:
                silent.setdefault(rows[i].uid, []).append(i)  # type: ignore[arg-type]
            elif loss[i] > 0 and abs(rebased[i] - canonical[i]) > 1e-6 * abs(canonical[i]):
                misweight.setdefault(units.mini_batch[i], []).append(i)
        for uid, members in silent.items():
            out.add(("silent_zero_advantage", "error", step, uid, tuple(members), sum(loss[i] for i in members)))
        for members in misweight.values():
            out.add(("rebased_prompt_mean_misweight", "warning", step, None, tuple(members), sum(loss[i] for i in members)))
    return out


def zero_grad_causes_by_token(batch: StepBatch, row_weight: list[float]) -> Counter[str]:
    """One cause per loss token whose gradient w * A is 0 or not finite, token by token."""
    rows = rows_of(batch)
    groups = group_rows(rows) if batch.has_groups else {}
    variance_zero = {uid: zero_variance(rows, members) for uid, members in groups.items()}
    means = {uid: group_mean(rows, members) for uid, members in groups.items()}
    causes: Counter[str] = Counter()
    for i, row in enumerate(rows):
        w = row_weight[i]
        for a, m in zip(row.advantages, row.mask, strict=True):
            if not m:
                continue
            with_weight = w * a
            if with_weight != 0 and math.isfinite(with_weight):
                continue
            if not math.isfinite(a):
                causes["nonfinite_advantage"] += 1
            elif a == 0 and row.uid is not None and variance_zero[row.uid]:
                causes["zero_variance_group"] += 1
            elif a == 0 and row.uid is not None and at_group_mean(row, means[row.uid]):
                causes["reward_at_group_mean"] += 1
            elif a == 0:
                causes["zero_advantage"] += 1
            elif w == 0:
                causes["zero_weight"] += 1
            else:
                causes["nonfinite_weight"] += 1
    return causes
