"""The TRL ``log_completions`` Parquet reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dumps import per_row, read_all, trl_table
from test_advantages import loop_advantages

from aggscope.core.batch import text_uid
from aggscope.io.open import open_rollouts


def test_trl_reward_sum_advantage_column_and_steps(tmp_path: Path) -> None:
    folder = tmp_path / "completions"
    folder.mkdir()
    pq.write_table(trl_table(10), folder / "completions_00010.parquet")
    pq.write_table(trl_table(20), folder / "completions_00020.parquet")
    rollouts = open_rollouts(str(folder))
    assert rollouts.format == "trl" and rollouts.steps == [10, 20]
    batch = next(rollouts.iter_steps())
    # reward = nansum(accuracy_reward, format_reward): 1.5, 0.5, 0 + 0 (NaN skipped), 1.25
    assert batch.rewards is not None and batch.rewards.tolist() == [1.5, 0.5, 0.0, 1.25]
    rows = per_row(batch)
    assert [len(m) for _, m, _ in rows] == [1, 2, 0, 1]  # ceil(4/4), ceil(8/4), 0, ceil(3/4)
    assert [adv for _, _, adv in rows] == [[pytest.approx(0.7)], [pytest.approx(-0.7)] * 2, [], [pytest.approx(0.1)]]
    assert [uid for uid, _, _ in rows] == [text_uid("P1")] * 2 + [text_uid("P2")] * 2
    (one,) = [b for b in read_all(folder, reward_col="format_reward") if b.step == 10]
    assert one.rewards is not None and one.rewards.tolist() == [0.5, 0.5, 0.0, 0.25]


def test_trl_without_advantage_column_rebuilds_grpo(tmp_path: Path) -> None:
    pq.write_table(trl_table(3, advantage=False), tmp_path / "completions_00003.parquet")
    (batch,) = read_all(tmp_path / "completions_00003.parquet")
    want = loop_advantages([1.5, 0.5, 0.0, 1.25], [0, 0, 1, 1], "grpo")
    assert [adv[0] for _, _, adv in per_row(batch) if adv] == pytest.approx([want[0], want[1], want[3]], rel=1e-12)
