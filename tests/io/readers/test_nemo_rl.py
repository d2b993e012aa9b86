"""The NeMo-RL ``train_data_step{N}.jsonl`` reader on the fixtures of ``dumps.py``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from dumps import cli_error, nemo_record, per_row, write_jsonl

from aggscope.io.open import open_rollouts


def test_nemo_rl_runs_of_prompts_dropped_sample_and_padding(tmp_path: Path) -> None:
    a, b = [11, 12, 13], [21, 22]
    rows = [
        nemo_record(a, [1, 2], 0.5, 1.0),
        nemo_record(a, [3], -0.5, 0.0),
        nemo_record(b, [4, 5, 6], 1.0, 1.0),
        nemo_record(b, [7], 0.0, 0.0, keep=0.0),  # dropped: stays a row, no loss token
        nemo_record(a, [8, 9], 0.25, 1.0),  # prompt a again, a new run: its own group
    ]
    path = write_jsonl(tmp_path / "train_data_step3.jsonl", rows)
    write_jsonl(tmp_path / "train_data_step4.jsonl", rows[:2])
    write_jsonl(tmp_path / "val_data_step3.jsonl", rows[:1])  # validation logs are not training data
    rollouts = open_rollouts(str(tmp_path))
    assert rollouts.format == "nemo-rl" and rollouts.steps == [3, 4]
    batch, later = list(rollouts.iter_steps())
    uid_a = hashlib.sha1(np.asarray(a, dtype=np.int64).tobytes()).hexdigest()[:12]
    uid_b = hashlib.sha1(np.asarray(b, dtype=np.int64).tobytes()).hexdigest()[:12]
    assert batch.row_uids() == [uid_a, uid_a, uid_b, uid_b, uid_a + "#2"]
    assert later.row_uids()[0] == uid_a  # the same prompt gets the same uid in every step
    got = per_row(batch)
    assert [len(m) for _, m, _ in got] == [5, 4, 5, 3, 5]  # input_lengths: the padding is cut off
    assert [sum(m) for _, m, _ in got] == [2, 1, 3, 0, 2]
    assert got[0][2] == [0.5] * 5 and got[3][1] == [False] * 3
    assert batch.rewards is not None and batch.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert path.exists()


def test_nemo_rl_mismatched_lengths_name_the_line(tmp_path: Path) -> None:
    good = nemo_record([1], [2], 1.0, 1.0)
    bad = dict(good, advantages=[1.0] * 5)
    path = write_jsonl(tmp_path / "train_data_step1.jsonl", [good, bad])
    assert "train_data_step1.jsonl: line 2: 'advantages' has 5 values but 'token_loss_mask' has 8" in cli_error(
        "inspect", str(path)
    )


def test_nemo_rl_kept_samples_without_trained_tokens_are_said_to_make_weights_estimated(tmp_path: Path) -> None:
    # NeMo-RL's global_valid_seqs sums sample_mask: the kept sample with no response token (row 1) counts
    # in a sample-level loss's denominator, which aggscope's sequence_mean_nonempty does not model.
    a = [11, 12, 13]
    rows = [nemo_record(a, [1, 2], 0.5, 1.0), nemo_record(a, [], 0.5, 1.0), nemo_record(a, [3], -0.5, 0.0, keep=0.0)]
    write_jsonl(tmp_path / "train_data_step1.jsonl", rows)
    rollouts = open_rollouts(str(tmp_path))
    list(rollouts.iter_steps())
    (note,) = [n for n in rollouts.notes if "global_valid_seqs" in n]
    assert "1 sample(s) kept with no trained token" in note and "estimated" in note
    # the usual dump (a dropped sample, every kept one with trained tokens) gets no such note
    write_jsonl(tmp_path / "train_data_step1.jsonl", [rows[0], rows[2]])
    plain = open_rollouts(str(tmp_path))
    list(plain.iter_steps())
    assert not any("global_valid_seqs" in n for n in plain.notes)
