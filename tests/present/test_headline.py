"""The report's headline: coinciding modes shown once, changes ranked by size with a threshold, length
buckets that never split equal lengths, prompts ranked by gradient mass moved, and the drill-down's numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from aggscope.analysis.breakdown.model import MIN_ROWS_PER_BUCKET, _rank_buckets
from aggscope.core.layout import Layout
from aggscope.core.split import split_step
from aggscope.core.weights import compute_weights
from aggscope.io.open import load_steps
from aggscope.present.report import full_report
from aggscope.present.report.headline import SENTENCE_THRESHOLD
from aggscope.present.report.sentences import NO_LAYOUT_SENTENCE

MODES = ["token_mean", "token_mean_legacy", "token_sum", "sequence_mean", "seq_mean_token_sum", "prompt_mean"]
CUT = Layout(mini_batch_size=100, micro_batch_size=8, dp_size=2)


@pytest.fixture(scope="module")
def steps() -> list[Any]:
    return list(load_steps())


@pytest.fixture(scope="module")
def plain(steps: list[Any]) -> Any:
    return full_report(steps, MODES, Layout(), source="sample")


@pytest.fixture(scope="module")
def cut(steps: list[Any]) -> Any:
    return full_report(steps, MODES, CUT, source="sample")


def proportional_per_update(steps: list[Any], first: str, other: str, layout: Layout) -> bool:
    """A plain loop: in every mini-batch, ``w_other / w_first`` is one number over rows with loss tokens."""
    for batch in steps:
        split = split_step(batch.n_sequences, batch.group_ids, layout, batch.step)
        a = compute_weights(batch, first, layout).row_weight.tolist()
        b = compute_weights(batch, other, layout).row_weight.tolist()
        ratios: dict[int, list[float]] = {}
        for i in range(batch.n_sequences):
            if batch.stats.loss_tokens[i] > 0:
                ratios.setdefault(int(split.mini_batch[i]), []).append(b[i] / a[i])
        for values in ratios.values():
            if max(values) - min(values) > 1e-5 * max(values):
                return False
    return True


def test_modes_that_coincide_are_found_and_shown_once(plain: Any, cut: Any, steps: list[Any]) -> None:
    for report, layout in ((plain, Layout()), (cut, CUT)):
        groups = report.document["coincide"]
        grouped = [label for group in groups for label in group["labels"]]
        for other in MODES[1:]:
            expected = proportional_per_update(steps, "token_mean", other, layout)
            assert (other in grouped and "token_mean" in grouped) == expected, (layout, other)
    # One mini-batch per step, no micro-batches: token_mean's cousins all coincide with it.
    assert plain.document["coincide"][0]["labels"] == ["token_mean", "token_mean_legacy", "token_sum", "seq_mean_token_sum"]
    # Micro-batches of 8 on 2 ranks make token_mean_legacy differ; token_sum still coincides.
    cut_group = cut.document["coincide"][0]["labels"]
    assert "token_sum" in cut_group and "token_mean_legacy" not in cut_group
    sentence = next(s for s in plain.summary if "coincide under this layout" in s)
    assert sentence.startswith("token_mean, token_mean_legacy, token_sum and seq_mean_token_sum coincide")
    glance = [row.label for row in __import__("aggscope").present.report.glance_rows(plain.data)]
    assert glance[0] == "token_mean = token_mean_legacy = token_sum = seq_mean_token_sum"
    assert len(glance) == 3


def test_the_page_says_when_no_layout_was_given(plain: Any, cut: Any) -> None:
    assert NO_LAYOUT_SENTENCE in plain.summary and plain.document["layout_given"] is False
    assert NO_LAYOUT_SENTENCE not in cut.summary and cut.document["layout_given"] is True


def test_changes_are_ranked_by_size_and_small_ones_listed_as_negligible(plain: Any, cut: Any) -> None:
    for report in (plain, cut):
        headline = report.document["headline"]
        assert headline["threshold_points"] == SENTENCE_THRESHOLD
        # Moves of share (points) largest first, then the effective number of tokens (percent).
        kinds = [item["kind"] == "ess" for item in headline["changes"]]
        assert kinds == sorted(kinds)
        for ess in (False, True):
            sizes = [item["size"] for item in headline["changes"] if (item["kind"] == "ess") == ess]
            assert sizes == sorted(sizes, reverse=True)
        for item in headline["changes"]:
            assert item["negligible"] == (item["size"] < SENTENCE_THRESHOLD)
            if item["negligible"]:
                assert item["sentence"] not in report.summary
        stated = [item["sentence"] for item in headline["changes"] if item["sentence"] in report.summary]
        assert stated == [s for s in report.summary if s in stated]  # in order of size
        negligible = [item for item in headline["changes"] if item["negligible"]]
        if negligible:
            line = next(s for s in report.summary if s.startswith("Negligible (under"))
            assert negligible[0]["candidate"] in line
    # Coinciding candidates make no change sentences: the coincidence sentence covers them.
    assert {item["candidate"] for item in plain.document["headline"]["changes"]} <= {"sequence_mean", "prompt_mean"}


def test_updates_per_step_and_total_weight_are_stated_when_they_change(steps: list[Any]) -> None:
    from aggscope.analysis.specs import parse_spec
    from aggscope.present.report import compare

    layout = Layout(mini_batch_size=256)
    specs = [parse_spec(text, layout) for text in ("token_mean", "token_sum,mini-batch-size=128")]
    report = compare(steps, specs, source="sample")
    results = report.document["results"]
    assert results["token_mean"]["updates_per_step"] == [1, 1, 1, 1]
    assert results["token_sum,mini-batch-size=128"]["updates_per_step"] == [2, 2, 2, 2]
    assert "Optimizer updates per step: 1 under token_mean, 2 under token_sum,mini-batch-size=128." in report.summary
    total = results["token_sum,mini-batch-size=128"]["total"]["weight_sum"]
    assert total == sum(int(batch.stats.loss_tokens.sum()) for batch in steps)  # token_sum: 1 per loss token
    line = next(s for s in report.summary if s.startswith("Total weight Σw per optimizer update"))
    # token_mean: 1 per update; token_sum: its loss tokens over its 8 updates.
    assert line.startswith("Total weight Σw per optimizer update: 1 under token_mean, ")
    assert f"{round(total / 8):,} under token_sum,mini-batch-size=128" in line


@pytest.mark.parametrize("n", [3, 7, 12, 40, 101])
def test_length_buckets_never_split_equal_lengths(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.integers(1, 6, size=n)  # many ties
    slot = _rank_buckets(values, 4)
    for length in set(values.tolist()):
        assert len(set(slot[values == length].tolist())) == 1, length
    # Longer responses never land in an earlier bucket than shorter ones.
    order = np.argsort(values, kind="stable")
    assert (np.diff(slot[order]) >= 0).all()
    used = len(set(slot.tolist()))
    assert used <= max(1, min(4, n // MIN_ROWS_PER_BUCKET))


def test_few_responses_fill_fewer_buckets_first_and_last() -> None:
    slot = _rank_buckets(np.arange(12), 4)  # 12 distinct lengths, at least 5 a bucket: 2 buckets
    assert sorted(set(slot.tolist())) == [0, 3]
    assert slot.tolist() == [0] * 6 + [3] * 6


def test_prompts_rank_by_gradient_mass_moved(cut: Any) -> None:
    """Against a loop over the drill-down's rows: each prompt's share of its step's Σ|w·A|."""
    document = cut.document
    prompts = document["drilldown"]["prompts"]
    assert len(prompts) == document["drilldown"]["prompts_total"] == 128
    change = next(c for c in document["changes"] if c["candidate"] == "sequence_mean")
    step_mass: dict[tuple[str, int], float] = {}
    for prompt in prompts:
        for label in ("token_mean", "sequence_mean"):
            mass = sum(row["grad_mass"][label] for row in prompt["rows"])
            assert mass == pytest.approx(prompt["grad_mass"][label], rel=1e-12)
            step_mass[(label, prompt["step"])] = step_mass.get((label, prompt["step"]), 0.0) + mass
    moved = []
    for prompt in prompts:
        before = prompt["grad_mass"]["token_mean"] / step_mass[("token_mean", prompt["step"])]
        after = prompt["grad_mass"]["sequence_mean"] / step_mass[("sequence_mean", prompt["step"])]
        if before > 0 or after > 0:
            moved.append((100 * (after - before), prompt["uid"]))
    moved.sort()
    assert [p["uid"] for p in change["prompts_losing"]] == [uid for _, uid in moved[:5]]
    assert [p["uid"] for p in change["prompts_gaining"]] == [uid for _, uid in moved[::-1][:5]]
    assert [p["change_points"] for p in change["prompts_gaining"]] == pytest.approx([m for m, _ in moved[::-1][:5]], rel=1e-9)


def test_drilldown_rows_are_the_engines(cut: Any, steps: list[Any]) -> None:
    prompt = cut.document["drilldown"]["prompts"][0]
    batch = next(b for b in steps if b.step == prompt["step"])
    code = batch.uid_labels.index(prompt["uid"])
    rows = np.flatnonzero(batch.group_ids == code)
    assert len(rows) == len(prompt["rows"])
    weights = compute_weights(batch, "sequence_mean", CUT).row_weight
    for i, row in zip(rows, prompt["rows"], strict=True):
        tokens = batch.loss_mask[batch.offsets[i] : batch.offsets[i + 1]]
        advantages = batch.advantages[batch.offsets[i] : batch.offsets[i + 1]][tokens]
        assert row["loss_tokens"] == int(tokens.sum())
        assert row["weight"]["sequence_mean"] == float(weights[i])
        assert row["grad_mass"]["sequence_mean"] == pytest.approx(
            float(np.abs(weights[i] * advantages.astype(np.float64)).sum()), rel=1e-6
        )
        assert row["mean_advantage"] == pytest.approx(float(advantages.astype(np.float64).mean()), rel=1e-6)
        assert row["reward"] == float(batch.rewards[i]) and not math.isnan(row["reward"])


def test_drilldown_writes_numbers_that_are_not_finite_as_null(tmp_path: Any) -> None:
    """A row whose advantages are all NaN and whose reward is NaN: null in report.json and in the page's JSON."""
    import json
    import re

    from aggscope.core.batch import StepBatch

    batch = StepBatch.from_flat(
        np.array([1.0, -1.0, math.nan, math.nan, 0.5]),
        np.ones(5, dtype=bool),
        np.array([0, 1, 2, 4, 5]),
        uids=["a", "a", "b", "b"],
        rewards=[1.0, 0.0, math.nan, 1.0],
    )
    files = full_report([batch], ["token_mean", "sequence_mean"], Layout(), source="nan").write(tmp_path / "out")
    prompts = json.loads(files.json.read_text())["drilldown"]["prompts"]
    (rows,) = [prompt["rows"] for prompt in prompts if prompt["uid"] == "b"]
    assert rows[0]["reward"] is None and rows[0]["mean_advantage"] is None and rows[1]["reward"] == 1.0
    embedded = re.search(r'<script type="application/json" id="aggscope-drilldown">(.*?)</script>', files.html.read_text())
    assert embedded is not None
    assert json.loads(embedded.group(1))["prompts"] == prompts


def test_prompt_text_keeps_its_start_and_its_end() -> None:
    from aggscope.analysis.breakdown.step import PROMPT_TEXT_HEAD, PROMPT_TEXT_TAIL, text_excerpt

    assert text_excerpt(None) is None and text_excerpt("short") == "short"
    text = "S" * 1000 + "the question?"
    excerpt = text_excerpt(text)
    assert excerpt is not None and excerpt.endswith("the question?") and excerpt.startswith("S" * PROMPT_TEXT_HEAD + " … ")
    assert len(excerpt) == PROMPT_TEXT_HEAD + PROMPT_TEXT_TAIL + 3
