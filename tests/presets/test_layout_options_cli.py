"""The layouts real runs use, on the command line: token budgets, verl's balancing and passes.

Every bad value is one line on stderr naming the option (and the step and row where the data is
what fails), exit 2; a config's token budget and epochs reach the weights.
"""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE_DATA
from typer.testing import CliRunner

from aggscope.cli import app

runner = CliRunner()
A = "actor_rollout_ref.actor."
SAMPLE = str(SAMPLE_DATA / "rollouts.parquet")
VERL = str(SAMPLE_DATA / "verl_grpo.yaml")


def run(*args: str) -> object:
    return runner.invoke(app, list(args))


def totals(result: object, field: str = "weight_sum") -> dict[str, float]:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    modes = json.loads(result.stdout)["total"]["modes"]  # type: ignore[attr-defined]
    return {name: summary[field] for name, summary in modes.items()}


BAD = [
    (["--micro-batch-tokens", "0"], "--micro-batch-tokens must be a whole number of at least 1, got 0"),
    (["--micro-batch-tokens", "900", "--micro-batch-size", "2"], "give --micro-batch-size or --micro-batch-tokens, not both"),
    (["--prompt-tokens", "-3"], "--prompt-tokens must be a whole number from 0"),
    (["--passes", "0"], "--passes must be a whole number of at least 1, got 0"),
    # the sample's longest row has 1024 tokens: verl refuses a budget below a sequence
    (["--micro-batch-tokens", "600"], "rollouts.parquet step 0: layout: row 8 has 1024 tokens (prompt + response), more than"),
    (["--micro-batch-tokens", "1000", "--prompt-tokens", "100"], "raise the budget to at least 1124"),
    (["--order", "balanced", "--dp-size", "7"], "needs the step's 256 rows to be a multiple of --dp-size 7"),
    (["--order", "sorted"], "valid orders: logged, grouped, shuffle, balanced"),
]


@pytest.mark.parametrize(("flags", "expected"), BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_layout_values_are_one_line_and_exit_2(flags: list[str], expected: str) -> None:
    result = run("weights", SAMPLE, *flags)
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: ") and expected in lines[0], result.stderr  # type: ignore[attr-defined]


def test_passes_multiply_every_weight() -> None:
    # 4 steps x 4 mini-batches of 64: token_mean sums to 1 per optimizer step, 16 in all; twice over: 32
    one = totals(run("weights", SAMPLE, "--mini-batch-size", "64", "-m", "token_mean", "--json"))
    two = totals(run("weights", SAMPLE, "--mini-batch-size", "64", "-m", "token_mean", "--passes", "2", "--json"))
    assert one["token_mean"] == pytest.approx(16.0, rel=1e-12)
    assert two["token_mean"] == pytest.approx(32.0, rel=1e-12)


def test_token_budget_changes_only_the_micro_batch_modes() -> None:
    base = ["weights", SAMPLE, "--mini-batch-size", "64", "--dp-size", "2", "-m", "token_mean", "-m", "token_mean_legacy"]
    whole = totals(run(*base, "--json"), "ess_tokens")
    budget = totals(run(*base, "--micro-batch-tokens", "2048", "--json"), "ess_tokens")
    assert budget["token_mean"] == whole["token_mean"]
    # one micro-batch per rank shard, then several of unequal token counts: 1 / (K_b T_k) spreads
    assert budget["token_mean_legacy"] != pytest.approx(whole["token_mean_legacy"], rel=1e-6)


def test_a_verl_config_with_dynamic_bsz_and_epochs_reaches_the_weights() -> None:
    sets = ["--set", f"{A}use_dynamic_bsz=true", "--set", f"{A}ppo_max_token_len_per_gpu=4096", "--set", f"{A}ppo_epochs=2"]
    result = run("weights", SAMPLE, "--config", VERL, *sets, "--prompt-tokens", "64", "--json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert out["layout"]["micro_batch_tokens"] == 4096 and out["layout"]["passes"] == 2
    assert out["layout"]["prompt_tokens"] == 64
    # verl's token-mean: 2 mini-batches a step, 4 steps, 2 epochs
    assert out["total"]["modes"]["token_mean"]["weight_sum"] == pytest.approx(16.0, rel=1e-12)
    notes = " ".join(out["config"]["not_exact"])
    assert "use_dynamic_bsz" in notes and "estimated" in notes


def test_a_micro_batch_size_flag_replaces_the_configs_token_budget() -> None:
    sets = ["--set", f"{A}use_dynamic_bsz=true"]
    result = run("weights", SAMPLE, "--config", VERL, *sets, "--micro-batch-size", "4", "--json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert out["layout"]["micro_batch_size"] == 4 and "micro_batch_tokens" not in out["layout"]
    assert any("--micro-batch-size replaces the config's micro-batch-tokens 16384" in n for n in out["config"]["overrides"])
