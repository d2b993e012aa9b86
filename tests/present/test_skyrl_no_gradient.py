"""``compare``'s ``no gradient`` column under SkyRL: what SkyRL's boundary-based prompt_mean trains at 0.

One step, uids ``a a b b c c``, loss tokens 2 2 3 3 2 2 (14), advantages per token:
a0 [1, 1], a1 [-1, -1], b0 [1, 1, 1], b1 [2, 0, 2], c0 [1, 1], c1 [-1, -1].
The candidate SPEC cuts mini-batches of 3 rows: mb0 = a0 a1 b0, mb1 = b1 c0 c1, so prompt b is cut.

Canonical prompt_mean (aggscope's weights): mb0 P=2, a 1/(2*4) = 1/8, b0 1/(2*3) = 1/6; mb1 P=2,
b1 1/(2*3) = 1/6, c 1/(2*4) = 1/8. No gradient: only b1's zero-advantage token, 1.
SkyRL's prompt_mean (``_normalize_advantages``): mb1 keeps the prompts whose first row lies in it,
only c, so b1 gets 0: its 2 tokens with advantage 2 lose their gradient, the zero one had none.
No gradient under SkyRL: 1 + 2 = 3 of 14 loss tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from trainer_losses import skyrl
from typer.testing import CliRunner

from aggscope.analysis.breakdown.outcomes import trainer_zeroed_per_step
from aggscope.analysis.checks import CheckOptions, run_checks
from aggscope.cli import app
from aggscope.core.layout import Layout
from aggscope.io.open import load_steps

runner = CliRunner()
UIDS = ["a", "a", "b", "b", "c", "c"]
ADVANTAGES = [[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0, 1.0], [2.0, 0.0, 2.0], [1.0, 1.0], [-1.0, -1.0]]
CUT = "prompt_mean,mini-batch-size=3"
SKYRL = [
    "--trainer",
    "skyrl",
    "--set",
    "trainer.train_batch_size=3",
    "--set",
    "trainer.policy_mini_batch_size=3",
    "--set",
    "generator.n_samples_per_prompt=2",
    "--set",
    "trainer.algorithm.loss_reduction=prompt_mean",
]


@pytest.fixture(scope="module")
def cut_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("skyrl_cut") / "cut.parquet"
    table = {"uid": UIDS, "advantages": ADVANTAGES, "loss_mask": [[1] * len(a) for a in ADVANTAGES]}
    pq.write_table(pa.table(table), path)
    return path


def compare(path: Path, out: Path, *args: str) -> tuple[Any, dict[str, Any]]:
    result = runner.invoke(app, ["compare", str(path), *args, "--to", CUT, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "report.json").read_text())


def column(output: str) -> list[str]:
    """The ``no gradient`` cells of the glance table compare prints, one per SPEC."""
    return [line.split("│")[5].strip() for line in output.splitlines() if line.startswith("│■ ")]


def skyrl_no_gradient_tokens() -> int:
    """Loss tokens whose scaled advantage is 0 when SkyRL 0.4.0 reduces this step with mini-batches of
    3 rows: its own ``apply_loss_reduction_to_advantages_minibatch``, fed the prompt boundaries that
    start inside each mini-batch, rebased, as its trainer's ``_normalize_advantages`` does."""
    code = skyrl()
    advantages = torch.tensor([a + [0.0] * (3 - len(a)) for a in ADVANTAGES], dtype=torch.float64)  # [6, 3]
    mask = torch.tensor([[1.0] * len(a) + [0.0] * (3 - len(a)) for a in ADVANTAGES], dtype=torch.float64)  # [6, 3]
    prompts = code.preprocess.compute_prompt_boundaries(UIDS)
    scaled = torch.zeros_like(advantages)
    for start, end in [(0, 3), (3, 6)]:
        rebased = [(s - start, e - start) for s, e in prompts if start <= s < end]
        scaled[start:end] = code.ppo_utils.apply_loss_reduction_to_advantages_minibatch(
            advantages[start:end], mask[start:end], "prompt_mean", 1, None, rebased
        )
    return int(((scaled == 0) & (mask == 1)).sum())


def test_under_skyrl_the_column_the_json_and_the_sentence_count_what_skyrl_trains(cut_step: Path, tmp_path: Path) -> None:
    assert skyrl_no_gradient_tokens() == 3  # SkyRL's own reduction: 1 zero advantage + b1's 2 tokens
    result, document = compare(cut_step, tmp_path / "skyrl", *SKYRL)
    base, candidate = (spec["label"] for spec in document["specs"])
    assert base == "prompt_mean,config=skyrl" and candidate == CUT
    assert column(result.output) == ["1", "3"]  # the config's layout (whole prompts) cuts nothing
    cut = document["results"][candidate]
    assert cut["no_gradient_tokens"] == skyrl_no_gradient_tokens() == 3
    assert cut["trainer_zeroed_tokens"] == 2 and cut["trainer_zeroed_per_step"] == [2]
    assert cut["zero_grad"]["skyrl_cut_prompt"] == 2 and sum(cut["zero_grad"].values()) == 3
    assert document["results"][base]["no_gradient_tokens"] == 1
    sentences = " ".join(document["summary"])
    assert (
        f"SkyRL's boundary-based prompt_mean leaves 2 loss tokens with a non-zero advantage in 1 cut prompt with no "
        f"gradient, counted in {candidate}'s 3 loss tokens with no gradient." in sentences
    )
    assert f"{candidate} leaves 3 loss tokens with no gradient, against 1 under {base}." in sentences
    # The finding names the tokens that lose their gradient, not every loss token of the row.
    silent = next(f for f in cut["checks"]["findings"] if f["code"] == "silent_zero_advantage")
    assert "2 loss tokens with non-zero advantage get no gradient (of their 3 loss tokens)" in silent["message"]
    report = (tmp_path / "skyrl" / "report.md").read_text()
    assert "| skyrl cut prompt | 0 (0.0%) | 2 (14.3%) |" in report and "| total | 1 (7.1%) | 3 (21.4%) |" in report


def test_without_the_trainer_the_numbers_stay_the_canonical_ones(cut_step: Path, tmp_path: Path) -> None:
    # No --trainer: the input (canonical Parquet) does not say which trainer ran, so check says a
    # boundary-based prompt_mean *would* leave b1's 3 loss tokens at 0 and the column keeps aggscope's
    # weights: 1 token (b1's zero advantage).
    result, document = compare(cut_step, tmp_path / "plain", "--from", "prompt_mean")
    assert column(result.output) == ["1", "1"]
    cut = document["results"][CUT]
    assert cut["no_gradient_tokens"] == 1 and cut["trainer_zeroed_tokens"] == 0 and "skyrl_cut_prompt" not in cut["zero_grad"]
    sentences = " ".join(document["summary"])
    assert "a boundary-based prompt_mean (SkyRL's) would leave 3 loss tokens of 1 cut prompt with no gradient." in sentences
    assert "counted in" not in sentences


@pytest.mark.parametrize(("trainer", "counted"), [("skyrl", (2,)), (None, ()), ("verl", ())])
def test_only_skyrl_under_prompt_mean_is_counted(cut_step: Path, trainer: str | None, counted: tuple[int, ...]) -> None:
    # The check's count (b1's 2 tokens with finite non-zero advantage) is there whenever the boundary
    # check runs (trainer SkyRL or unknown); the outcome counts it only for SkyRL, and only under prompt_mean.
    report = run_checks(
        load_steps(str(cut_step)), ["prompt_mean", "token_mean"], Layout(mini_batch_size=3), options=CheckOptions(trainer=trainer)
    )
    assert report.boundary_zeroed_tokens == (0 if trainer == "verl" else 2)
    assert trainer_zeroed_per_step(report.for_mode("prompt_mean"), "prompt_mean", [0]) == counted
    assert trainer_zeroed_per_step(report.for_mode("token_mean"), "token_mean", [0]) == ()
