"""The prime-rl token exports reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dumps import cli_error, per_row, write_jsonl

from aggscope.io.open import open_rollouts


def test_prime_rl_packed_rows_split_on_position_restarts(tmp_path: Path) -> None:
    root = tmp_path / "token_exports"
    packed = {"step": 1, "rank": 2, "micro_step": 0, "token_ids": list(range(9)), "position_ids": [0, 1, 2, 0, 1, 0, 1, 2, 3],
              "loss_mask": [False, True, True, False, True, False, False, True, True],
              "advantages": [0.0, 1.0, 1.0, 0.0, -2.0, 0.0, 0.0, 0.5, 0.5]}  # fmt: skip
    single = {
        "step": 1,
        "rank": 10,
        "micro_step": 0,
        "token_ids": [5, 6],
        "position_ids": [0, 1],
        "loss_mask": [0, 1],
        "advantages": [0.0, 3.0],
    }
    write_jsonl(root / "step_1" / "rank_10.jsonl", [single])
    write_jsonl(root / "step_1" / "rank_2.jsonl", [packed])  # natural order: rank 2 before rank 10
    (root / "step_1" / "STABLE").touch()
    write_jsonl(root / "step_2" / "rank_0.jsonl", [single])  # no STABLE marker yet
    rollouts = open_rollouts(str(root))
    assert rollouts.format == "prime-rl" and rollouts.steps == [1, 2] and not rollouts.has_groups
    assert any("step 2: no STABLE marker" in n for n in rollouts.notes)
    batch = rollouts.read_step(1)
    got = per_row(batch)
    assert [len(m) for _, m, _ in got] == [3, 2, 4, 2]
    assert [m for _, m, _ in got] == [[False, True, True], [False, True], [False, False, True, True], [False, True]]
    assert got[3][2] == [0.0, 3.0] and batch.group_ids is None
    message = cli_error("weights", str(root), "-m", "prompt_mean")
    assert "prompt_mean" in message


def test_advantage_option_is_refused_for_parquet_and_prime_rl(tmp_path: Path) -> None:
    assert "--advantage rebuilds advantages of dumps that hold only rewards" in cli_error("inspect", "--advantage", "grpo")
    path = write_jsonl(tmp_path / "step_1" / "rank_0.jsonl", [{"position_ids": [0], "loss_mask": [1], "advantages": [1.0]}])
    assert "the prime-rl format has no rewards and prompt groups" in cli_error("inspect", str(path), "--advantage", "rloo")


def test_prime_rl_rl_weights_are_named_as_unused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aggscope.cli import app

    root = tmp_path / "token_exports"
    line = {"step": 0, "position_ids": [0, 1, 2], "loss_mask": [0, 1, 1], "advantages": [0.0, 1.0, -1.0],
            "rl_weights": [0.0, 0.5, 0.5]}  # fmt: skip
    write_jsonl(root / "step_0" / "rank_0.jsonl", [line])
    rollouts = open_rollouts(str(root))
    assert [name for name, _ in rollouts.unused_fields] == ["rl_weights"]
    result = CliRunner().invoke(app, ["check", str(root), "--json"])
    found = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "unused_dump_field"]
    assert len(found) == 1 and found[0]["message"].startswith("the dump carries 'rl_weights'")
    del line["rl_weights"]
    write_jsonl(root / "step_0" / "rank_0.jsonl", [line])
    assert open_rollouts(str(root)).unused_fields == ()


def weighted_export(root: Path, rl_weights: object) -> Path:
    """Two packed samples: A (3 tokens) and B (2 tokens), every token a loss token."""
    line = {"step": 1, "rank": 0, "micro_step": 0, "position_ids": [0, 1, 2, 0, 1], "loss_mask": [1, 1, 1, 1, 1],
            "advantages": [1.0, 1.0, 0.0, -1.0, -1.0], "rl_weights": rl_weights}  # fmt: skip
    write_jsonl(root / "step_1" / "rank_0.jsonl", [line])
    return root


def weights_json(*args: str) -> dict:
    from typer.testing import CliRunner

    from aggscope.cli import app

    result = CliRunner().invoke(app, ["weights", *args, "-m", "token_mean", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["total"]["modes"]["token_mean"]


def test_use_dump_weights_takes_rl_weights_in_as_prime_rl_does(tmp_path: Path) -> None:
    root = str(weighted_export(tmp_path / "token_exports", [1.0, 0.5, 0.0, 1.0, 2.0]))
    # Off: 5 loss tokens of weight 1/5: sum 1; |g| = (1 + 1 + 0 + 1 + 1) / 5 = 0.8.
    off = weights_json(root)
    assert (off["loss_tokens"], off["weight_sum"], off["grad_abs_sum"]) == (5, 1.0, pytest.approx(0.8))
    # On: the weight-0 token (prime-rl's filter_zero_advantages sets it) leaves the mask: T = 4; weights
    # f / 4 = 1/4, 1/8, -, 1/4, 1/2: sum 9/8; |g| = 1/4 + 1/8 + 1/4 + 1/2 = 9/8; max 1/2.
    on = weights_json(root, "--use-dump-weights")
    assert (on["loss_tokens"], on["weight_sum"], on["grad_abs_sum"], on["max_token_weight"]) == (4, 1.125, 1.125, 0.5)


def test_a_null_rl_weights_stream_weighs_one(tmp_path: Path) -> None:
    root = str(weighted_export(tmp_path / "token_exports", None))
    assert weights_json(root, "--use-dump-weights") == weights_json(root)
    batch = open_rollouts(root, use_dump_weights=True).read_step(1)
    assert batch.token_factor is not None and batch.token_factor.tolist() == [1.0] * 5


def test_use_dump_weights_finding_says_the_field_is_used(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aggscope.cli import app

    root = str(weighted_export(tmp_path / "token_exports", [1.0, 0.5, 0.0, 1.0, 2.0]))
    result = CliRunner().invoke(app, ["check", root, "--use-dump-weights", "--json"])
    assert result.exit_code == 0, result.output
    found = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "unused_dump_field"]
    assert [f["severity"] for f in found] == ["info"]
    assert found[0]["message"].startswith("the dump carries 'rl_weights', which these weights use: ")
    assert "Pass --use-dump-weights" in open_rollouts(root).unused_fields[0][1]


def test_use_dump_weights_refusals(tmp_path: Path) -> None:
    root = str(weighted_export(tmp_path / "token_exports", [1.0, 0.5, 0.0, 1.0, 2.0]))
    per_row = "draws and compares one weight per sequence, and the dump's per-token weights vary inside a sequence"
    for command in ("report", "compare", "plot"):
        assert cli_error(command, root, "--use-dump-weights").endswith(
            f"--use-dump-weights: {command} {per_row}; use it with weights or check"
        )
    assert "convert writes canonical Parquet, which has no column for per-token loss weights" in cli_error(
        "convert", root, "-o", str(tmp_path / "out.parquet"), "--use-dump-weights"
    )
    assert "only prime-rl token exports carry per-token loss weights" in cli_error("weights", "--use-dump-weights")
    atropos = write_jsonl(tmp_path / "groups.jsonl", [{"tokens": [[1, 2]], "masks": [[-100, 2]], "scores": [1.0]}])
    assert "no Atropos trainer reads token_weights or token_scores" in cli_error("check", str(atropos), "--use-dump-weights")


def test_bad_rl_weights_are_one_line_errors(tmp_path: Path) -> None:
    root = str(weighted_export(tmp_path / "a", [1.0, 0.5]))
    assert cli_error("weights", root, "--use-dump-weights").endswith("line 1: 'rl_weights' has 2 values but 'position_ids' has 5")
    root = str(weighted_export(tmp_path / "b", [1.0, 0.5, 1.0, None, 1.0]))
    assert cli_error("weights", root, "--use-dump-weights").endswith(
        "line 1: 'rl_weights' holds a null; a weight must be a number"
    )
