"""``aggscope.log_batch`` and ``assert_prompts_intact``: exact round trips, a background writer that
does not hold up the training loop, files that appear whole or not at all, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import aggscope
from aggscope.cli import app
from aggscope.errors import AggscopeError
from aggscope.io.open import load_steps
from aggscope.trainer import batch_log
from aggscope.trainer.batch_log import BatchLogger

runner = CliRunner()


def padded_batch(left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[4, 6] advantages, loss mask and attention mask, left- or right-padded."""
    lengths = [3, 6, 2, 5]
    attention = torch.zeros(4, 6, dtype=torch.int64)
    for row, n in enumerate(lengths):
        if left:
            attention[row, 6 - n :] = 1
        else:
            attention[row, :n] = 1
    generator = torch.Generator().manual_seed(0)
    advantages = torch.randn(4, 6, generator=generator) * attention
    loss_mask = attention.clone()
    loss_mask[:, 5 if left else 0] = 0  # a masked token inside every row
    return advantages, loss_mask, attention


@pytest.mark.parametrize("left", [False, True])
def test_padded_round_trip_is_exact(tmp_path: Path, left: bool) -> None:
    advantages, loss_mask, _ = padded_batch(left)
    uids, rewards = ["a", "a", "b", "b"], torch.tensor([1.0, 0.0, 0.5, 0.25], dtype=torch.float64)
    with BatchLogger(tmp_path) as logger:
        logger.log(step=3, uids=uids, advantages=advantages, loss_mask=loss_mask, rewards=rewards)
        logger.log(step=4, uids=uids, advantages=advantages * 2, loss_mask=loss_mask.bool(), rewards=rewards)
    first, second = load_steps(str(tmp_path))
    assert (first.step, second.step) == (3, 4)
    assert torch.equal(torch.from_numpy(first.advantages).view(4, 6), advantages) and first.advantages.dtype == np.float32
    assert torch.equal(torch.from_numpy(first.loss_mask).view(4, 6), loss_mask.bool())
    assert first.row_uids() == uids and first.rewards is not None and torch.equal(torch.from_numpy(first.rewards), rewards)
    assert torch.equal(torch.from_numpy(second.advantages).view(4, 6), advantages * 2)


def test_attention_mask_strips_padding(tmp_path: Path) -> None:
    advantages, loss_mask, attention = padded_batch(left=True)
    with BatchLogger(tmp_path) as logger:
        logger.log(step=0, advantages=advantages, loss_mask=loss_mask, attention_mask=attention)
    (batch,) = load_steps(str(tmp_path))
    offsets = batch.offsets.tolist()
    assert np.diff(offsets).tolist() == [3, 6, 2, 5]
    for row in range(4):
        kept = attention[row].bool()
        assert batch.advantages[offsets[row] : offsets[row + 1]].tolist() == advantages[row][kept].tolist()
        assert batch.loss_mask[offsets[row] : offsets[row + 1]].tolist() == loss_mask[row][kept].bool().tolist()
    assert batch.group_ids is None


def test_bfloat16_and_per_row_advantages(tmp_path: Path) -> None:
    loss_mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    per_token = torch.tensor([[0.5, -1.25, 0.0], [0.0, 3.0, 2.0]], dtype=torch.bfloat16)
    with BatchLogger(tmp_path) as logger:
        logger.log(step=0, advantages=per_token, loss_mask=loss_mask)
        logger.log(step=1, advantages=torch.tensor([0.5, -2.0]), loss_mask=loss_mask)
    token_batch, row_batch = load_steps(str(tmp_path))
    assert token_batch.advantages.tolist() == per_token.float().reshape(-1).tolist()  # bfloat16 widens exactly
    # one value per row is broadcast over the row's loss tokens, 0 on the masked ones (as trainers multiply by the mask)
    assert row_batch.advantages.tolist() == [0.5, 0.5, 0.0, 0.0, -2.0, -2.0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.lists(st.tuples(st.booleans(), st.floats(-1e3, 1e3, width=64)), max_size=7)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 10_000),
)
def test_ragged_round_trip_is_exact(tmp_path_factory: pytest.TempPathFactory, rows: list, step: int) -> None:
    folder = tmp_path_factory.mktemp("ragged")
    uids = [group for group, _ in rows]
    masks = [[int(m) for m, _ in tokens] for _, tokens in rows]
    advantages = [[a for _, a in tokens] for _, tokens in rows]
    rewards = [float(i) for i in range(len(rows))]
    with BatchLogger(folder) as logger:
        logger.log(step=step, uids=uids, advantages=advantages, loss_mask=masks, rewards=rewards)
    (batch,) = load_steps(str(folder))
    offsets = batch.offsets.tolist()
    assert batch.step == step and batch.row_uids() == [str(u) for u in uids]
    (written,) = folder.glob("*.parquet")
    assert pq.read_table(written, columns=["uid"]).column("uid").to_pylist() == uids  # integers stay integers
    for row in range(len(rows)):
        assert batch.advantages[offsets[row] : offsets[row + 1]].tolist() == advantages[row]  # float64 kept exactly
        assert batch.loss_mask[offsets[row] : offsets[row + 1]].tolist() == [bool(m) for m in masks[row]]
    assert batch.rewards is not None and batch.rewards.tolist() == rewards


def test_log_batch_folder_is_a_multi_step_dataset_for_every_command(tmp_path: Path) -> None:
    folder = tmp_path / "batches"
    for step in range(3):
        aggscope.log_batch(
            folder, step=step, uids=[0, 0, 1, 1], advantages=[[1.0], [-1.0, 0.5], [2.0], []], loss_mask=[[1], [1, 0], [1], []]
        )
    aggscope.log_batch(
        folder, step=2, uids=[2, 2], advantages=[[0.25], [0.75]], loss_mask=[[1], [1]]
    )  # the same step again: a part file
    aggscope.flush_batch_logs()
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_000000000.parquet",
        "step_000000001.parquet",
        "step_000000002.parquet",
        "step_000000002_part0001.parquet",
    ]
    result = runner.invoke(app, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [(s["step"], s["sequences"], s["prompts"]) for s in steps] == [(0, 4, 2), (1, 4, 2), (2, 6, 3)]
    aggscope.close_batch_logs()


def test_uid_types_int_text_and_beyond_int64(tmp_path: Path) -> None:
    """uids keep their type where int64 holds them; 64-bit hashes become text; a folder whose files
    (ranks, steps) store uids differently still reads, the uids compared as text."""
    ones = np.ones((4, 3), dtype=np.float32)
    mask = np.ones((4, 3), dtype=bool)
    hashes = np.array([2**63 + 5] * 2 + [7] * 2, dtype=np.uint64)
    with BatchLogger(tmp_path / "h") as logger:
        logger.log(step=0, uids=hashes, advantages=ones, loss_mask=mask)
        logger.log(step=1, uids=list(np.array([3, 3, 4, 4])), advantages=ones, loss_mask=mask)  # numpy ints
    first, second = sorted((tmp_path / "h").glob("*.parquet"))
    assert pq.read_table(first).column("uid").to_pylist() == [str(2**63 + 5)] * 2 + ["7"] * 2
    assert pq.read_table(second).column("uid").to_pylist() == [3, 3, 4, 4]
    # One step written by two ranks, one with integer uids and one with text.
    with BatchLogger(tmp_path / "mixed", rank=0) as logger:
        logger.log(step=5, uids=[1, 1, 2, 2], advantages=ones, loss_mask=mask)
    with BatchLogger(tmp_path / "mixed", rank=1) as logger:
        logger.log(step=5, uids=["3", "3", "1", "1"], advantages=ones, loss_mask=mask)
    (batch,) = load_steps(str(tmp_path / "mixed"))
    assert batch.row_uids() == ["1", "1", "2", "2", "3", "3", "1", "1"]
    assert batch.n_groups == 3


def test_log_returns_before_a_slow_write_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = batch_log._write_table

    def slow_write(table: object, path: Path) -> None:
        time.sleep(1.5)
        real_write(table, path)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_log, "_write_table", slow_write)
    logger = BatchLogger(tmp_path)
    started = time.perf_counter()
    path = logger.log(step=0, advantages=torch.ones(64, 256), loss_mask=torch.ones(64, 256, dtype=torch.bool))
    returned = time.perf_counter() - started
    assert returned < 0.75, returned  # the loop waited for the host copy only, not the 1.5 s write
    assert not path.exists()
    logger.flush()
    assert path.exists() and time.perf_counter() - started >= 1.5
    logger.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    import pyarrow.parquet as pq
    from aggscope.trainer import batch_log

    folder = sys.argv[1]
    logger = batch_log.BatchLogger(folder)
    logger.log(step=0, uids=[0, 0], advantages=[[1.0], [-1.0]], loss_mask=[[1], [1]])
    logger.flush()

    def stalled_write(table, where, **options):
        # write a real file only half way, then hang: the writer is killed here
        with pq.ParquetWriter(where, table.schema) as writer:
            writer.write_table(table.slice(0, 1))
            writer.file_handle.flush() if hasattr(writer, "file_handle") else None
            print("WRITING", where, flush=True)
            time.sleep(120)

    batch_log.pq.write_table = stalled_write
    logger.log(step=1, uids=[0, 0], advantages=[[1.0], [-1.0]], loss_mask=[[1], [1]])
    time.sleep(120)
    """
)


def test_killed_writer_leaves_no_partial_file_that_a_command_reads(tmp_path: Path) -> None:
    folder = tmp_path / "batches"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the second write is under way
        assert line.startswith("WRITING"), line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    names = sorted(p.name for p in folder.iterdir())
    assert names[0].startswith(".step_000000001.parquet.") and names[0].endswith(".tmp")  # the half-written file
    assert os.path.getsize(folder / names[0]) > 0 and names[1:] == ["step_000000000.parquet"]
    for command in (["inspect", str(folder), "--json"], ["weights", str(folder), "--json"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert [s["step"] for s in json.loads(result.stdout)["steps"]] == [0]


def test_bad_input_is_reported(tmp_path: Path) -> None:
    logger = BatchLogger(tmp_path / "b")
    with pytest.raises(AggscopeError, match=r"advantages of shape \(2, 2\) match neither the loss mask \(2, 3\)"):
        logger.log(step=0, advantages=torch.zeros(2, 2), loss_mask=torch.ones(2, 3))
    with pytest.raises(AggscopeError, match="row 1: advantages has 1 values but loss_mask has 2"):
        logger.log(step=0, advantages=[[1.0], [1.0]], loss_mask=[[1], [1, 1]])
    with pytest.raises(AggscopeError, match="3 uids for 2 rows"):
        logger.log(step=0, uids=[1, 2, 3], advantages=[[1.0], [1.0]], loss_mask=[[1], [1]])
    with pytest.raises(AggscopeError, match="step must be a whole number >= 0"):
        logger.log(step=-1, advantages=[[1.0]], loss_mask=[[1]])
    logger.log(step=5, advantages=[[1.0, 2.0]], loss_mask=[[1, 2]])  # checked in the writer thread
    with pytest.raises(AggscopeError, match=r"log_batch step 5 was not written: loss_mask holds 2 at row 0, position 1"):
        logger.flush()
    with pytest.raises(AggscopeError, match="log the same fields every step"):
        logger.log(step=6, advantages=[[1.0]], loss_mask=[[1]], rewards=[1.0])
    logger.close()
    with pytest.raises(AggscopeError, match="this batch logger is closed"):
        logger.log(step=7, advantages=[[1.0]], loss_mask=[[1]])
    with pytest.raises(AggscopeError, match="give a folder"):
        BatchLogger(tmp_path / "x.parquet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_tensors(tmp_path: Path) -> None:
    advantages, loss_mask, _ = padded_batch(left=True)
    with BatchLogger(tmp_path) as logger:
        logger.log(step=0, advantages=advantages.cuda(), loss_mask=loss_mask.cuda(), uids=torch.tensor([1, 1, 2, 2]).cuda())
    (batch,) = load_steps(str(tmp_path))
    assert torch.equal(torch.from_numpy(batch.advantages).view(4, 6), advantages) and batch.row_uids() == ["1", "1", "2", "2"]


# ---- assert_prompts_intact ---------------------------------------------------------------------------
def test_cut_prompt_is_named() -> None:
    # rows: a a b b c c; mini-batches of 3 rows: [a a b] [b c c] -> prompt b is cut between rows 2 and 3
    with pytest.raises(AggscopeError) as info:
        aggscope.assert_prompts_intact(["a", "a", "b", "b", "c", "c"], 3)
    assert info.value.message.startswith(
        "prompt 'b' is cut by a mini-batch boundary (row 2 in mini-batch 0, row 3 in mini-batch 1)"
    )
    aggscope.assert_prompts_intact(["a", "a", "b", "b", "c", "c"], 2)
    aggscope.assert_prompts_intact(torch.tensor([7, 7, 8, 8]), [(0, 2), (2, 4)])  # SkyRL's (start, end) boundaries
    with pytest.raises(AggscopeError, match="3 prompts are cut in all"):
        aggscope.assert_prompts_intact([1, 1, 1, 2, 2, 2, 3, 3, 3], [0, 2, 4, 8])
    with pytest.raises(AggscopeError, match="outside the batch's 2 rows"):
        aggscope.assert_prompts_intact([1, 1], [5])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=20), st.integers(1, 7))
def test_guard_matches_plain_loop(uids: list[int], size: int) -> None:
    mini_batch_of_row = [row // size for row in range(len(uids))]
    cut = any(len({mini_batch_of_row[r] for r in range(len(uids)) if uids[r] == u}) > 1 for u in set(uids))
    if cut:
        with pytest.raises(AggscopeError, match="is cut by a mini-batch boundary"):
            aggscope.assert_prompts_intact(uids, size)
    else:
        aggscope.assert_prompts_intact(uids, size)
