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
    pq.write_table(trl_table(20, completion="another generation"), folder / "completions_00020.parquet")
    rollouts = open_rollouts(str(folder))
    assert rollouts.format == "trl" and rollouts.steps == [10, 20]
    batch = next(rollouts.iter_steps())
    # reward = nansum(accuracy_reward, format_reward): 1.5, 0.5, 0 + 0 (NaN skipped), 1.25
    assert batch.rewards is not None and batch.rewards.tolist() == [1.5, 0.5, 0.0, 1.25]
    rows = per_row(batch)
    # ceil(4/4), ceil(8/4), 0, ceil(3/4), each + the EOS TRL trains but decodes away (the empty text: EOS only)
    assert [len(m) for _, m, _ in rows] == [2, 3, 1, 2]
    assert [adv[0] for _, _, adv in rows] == pytest.approx([0.7, -0.7, -0.1, 0.1])
    without_eos = next(open_rollouts(str(folder), eos_trained=False).iter_steps())
    assert [len(m) for _, m, _ in per_row(without_eos)] == [1, 2, 0, 1]
    assert [uid for uid, _, _ in rows] == [text_uid("P1")] * 2 + [text_uid("P2")] * 2
    (one,) = [b for b in read_all(folder, reward_col="format_reward") if b.step == 10]
    assert one.rewards is not None and one.rewards.tolist() == [0.5, 0.5, 0.0, 0.25]


def test_trl_without_advantage_column_rebuilds_grpo_as_trl(tmp_path: Path) -> None:
    pq.write_table(trl_table(3, advantage=False), tmp_path / "completions_00003.parquet")
    (batch,) = read_all(tmp_path / "completions_00003.parquet")
    # TRL: (r - nanmean) / (nanstd + 1e-4). P1: 1.5, 0.5 -> mean 1, std sqrt(0.5) -> +-0.5 / (0.70711 + 1e-4);
    # P2: 0.0, 1.25 -> mean 0.625, std sqrt(2 * 0.625^2) = 0.88388 -> +-0.625 / (0.88388 + 1e-4)
    p1, p2 = 0.5 / (0.5**0.5 + 1e-4), 0.625 / ((2 * 0.625**2) ** 0.5 + 1e-4)
    assert [adv[0] for _, _, adv in per_row(batch)] == pytest.approx([p1, -p1, -p2, p2], rel=1e-12)
    with pytest.raises(AssertionError):  # not verl's formula (epsilon 1e-6)
        assert loop_advantages([1.5, 0.5, 0.0, 1.25], [0, 0, 1, 1], "grpo")[0] == pytest.approx(p1, rel=1e-9)
