"""The prime-rl token exports reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

import json
from pathlib import Path

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
