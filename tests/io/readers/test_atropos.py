"""The Atropos ScoredDataGroup lines reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from dumps import cli_error, per_row, read_all, write_jsonl
from test_advantages import loop_advantages


def test_atropos_minus_100_masks_lines_as_groups_and_given_advantages(tmp_path: Path) -> None:
    line1 = {"tokens": [[1, 2, 3], [1, 2, 4, 5]], "masks": [[-100, 2, 3], [-100, -100, 4, 5]], "scores": [1.0, 0.0]}
    line2 = {"tokens": [[7, 8], [7, 9], [7, 0]], "masks": [[-100, 8], [-100, 9], [-100, 0]], "scores": [0, 0, 0],
             "advantages": [[0.0, 0.3], [0.0, -0.1], [0.0, 0.2]]}  # fmt: skip
    path = write_jsonl(tmp_path / "groups.jsonl", [line1, line2])
    (batch,) = read_all(path)
    got = per_row(batch)
    assert [u for u, _, _ in got] == ["groups:1"] * 2 + ["groups:2"] * 3
    # a mask of -100 is not trained; any other value (the token id, even 0) is
    assert [m for _, m, _ in got] == [
        [False, True, True],
        [False, False, True, True],
        [False, True],
        [False, True],
        [False, True],
    ]
    g = loop_advantages([1.0, 0.0], [0, 0], "grpo")  # line 1 has no advantages: GRPO of its scores
    assert got[0][2] == [0.0, pytest.approx(g[0]), pytest.approx(g[0])]
    assert got[1][2] == [0.0, 0.0, pytest.approx(g[1]), pytest.approx(g[1])]
    assert [a for _, _, a in got[2:]] == [[0.0, 0.3], [0.0, -0.1], [0.0, 0.2]]


def test_atropos_mismatched_masks_and_scores(tmp_path: Path) -> None:
    good = {"tokens": [[1, 2]], "masks": [[-100, 2]], "scores": [1.0]}
    bad_mask = {"tokens": [[1, 2], [3, 4, 5]], "masks": [[-100, 2], [-100, 4]], "scores": [1.0, 0.0]}
    path = write_jsonl(tmp_path / "a.jsonl", [good, bad_mask])
    assert "a.jsonl: line 2: sample 1: 'masks' has 2 tokens but there are 3 tokens" in cli_error("inspect", str(path))
    bad_scores = {"tokens": [[1, 2], [3, 4]], "masks": [[-100, 2], [-100, 4]], "scores": [1.0]}
    path = write_jsonl(tmp_path / "b.jsonl", [good, bad_scores])
    assert "b.jsonl: line 2: 'scores' has 1 scores but there are 2 samples" in cli_error("inspect", str(path))
