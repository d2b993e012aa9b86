"""The SkyRL pickled training batches reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from dumps import per_row, read_all, skyrl_dump

from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts


def test_skyrl_stand_in_pickle_with_prompt_boundaries(tmp_path: Path, stand_in_skyrl: type) -> None:
    path = skyrl_dump(tmp_path / "dumped_data" / "global_step_12_training_input.pkl", stand_in_skyrl,
                      {"policy_prompt_boundaries": [(0, 2), (2, 3)], "policy_mini_batch_boundaries": [(0, 4)]})  # fmt: skip
    rollouts = open_rollouts(str(tmp_path / "dumped_data"))
    assert rollouts.format == "skyrl" and rollouts.steps == [12] and rollouts.has_groups
    (batch,) = list(rollouts.iter_steps())
    # row 3 is trained (inside the mini-batch boundary) but in no prompt range: a group of its own
    assert batch.row_uids() == ["p0", "p0", "p1", "row:3"]
    got = per_row(batch)
    assert [m for _, m, _ in got] == [
        [False, False, True, True],
        [False, True, True, True],
        [False, False, False, True],
        [True] * 4,
    ]
    assert got[2][2] == [0.0, 0.0, 0.0, 2.0]  # the masked 9.0 never reaches SkyRL's loss (reduce_loss): read as 0
    assert any("1 masked tokens carry a non-zero advantage" in note for note in rollouts.notes)
    assert batch.rewards is not None and batch.rewards.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert path.exists()


def test_skyrl_reads_the_same_without_skyrl_installed(
    tmp_path: Path, stand_in_skyrl: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = skyrl_dump(tmp_path / "global_step_1_training_input.pkl", stand_in_skyrl, {"uids": ["a", "a", "b", "b"]})
    (batch,) = read_all(path)
    assert batch.row_uids() == ["a", "a", "b", "b"]
    monkeypatch.delitem(sys.modules, "skyrl_train.training_batch")
    monkeypatch.delitem(sys.modules, "skyrl_train")
    (again,) = read_all(path)  # the safe loader decodes the batch itself: SkyRL is never imported
    assert again.row_uids() == batch.row_uids() and np.array_equal(again.advantages, batch.advantages)


@pytest.mark.parametrize(
    ("uids", "expected"),
    [
        (["a", "b"], "metadata has 2 uids for 4 rows"),
        (["a", 1, None, 2.5], "metadata['uids'][2] is None; a uid is text (or a whole number)"),
        (["a", "a", True, "b"], "metadata['uids'][2] is True; a uid is text (or a whole number)"),
    ],
    ids=["too-few", "none", "bool"],
)
def test_skyrl_uids_that_do_not_name_each_row_are_refused(
    tmp_path: Path, stand_in_skyrl: type, uids: list, expected: str
) -> None:
    """Before, rows without a uid became prompts of their own, and None a uid 'None': groups silently wrong."""
    path = skyrl_dump(tmp_path / "global_step_1_training_input.pkl", stand_in_skyrl, {"uids": uids})
    with pytest.raises(AggscopeError) as info:
        read_all(path)
    assert info.value.message == f"{path}: {expected}"
