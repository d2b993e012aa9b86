"""The fast-read machinery (``aggscope.io.fastread``) changes how fast a step is read, never what:
the same inputs read on the fast path and on the plain path give the same batches byte for byte."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

import aggscope.io.fastread as fastread
import aggscope.io.parquet as parquet_module
from aggscope.core.batch import StepBatch
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts
from aggscope.io.writing import list_array

RNG_SEED = 11


def ragged_columns(rng: np.random.Generator, rows: int, max_len: int, masked: float, mask_type: pa.DataType) -> dict:
    """Ragged ``advantages`` (float32, a few NaN and inf) and ``loss_mask`` (``masked`` of the tokens 0)."""
    lengths = rng.integers(0, max_len, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    adv = np.where(rng.random(n) < 0.05, 0.0, rng.standard_normal(n)).astype(np.float32)
    adv[rng.random(n) < 0.01] = np.nan
    adv[rng.random(n) < 0.005] = -np.inf
    mask = (rng.random(n) >= masked).astype(np.int8)
    return {
        "advantages": list_array(adv, offsets),
        "loss_mask": list_array(pa.array(mask).cast(mask_type).to_numpy(zero_copy_only=False), offsets),
    }


def wide_steps(path: Path) -> Path:
    """Three steps in row groups of 50 rows (a row group holding rows of two steps too), int8 masks."""
    rng = np.random.default_rng(RNG_SEED)
    rows = 240
    table = pa.table(
        {
            "step": np.repeat([0, 1, 2], [100, 90, 50]),
            "uid": [f"p{i // 6}" for i in range(rows)],
            "reward": rng.random(rows),
            **ragged_columns(rng, rows, 120, 0.3, pa.int8()),
        }
    )
    pq.write_table(table, path, row_group_size=50)
    return path


def sparse_bool_masks(path: Path) -> Path:
    """Few masked tokens (the reductions' by-position path), bool masks, integer uids, one row group."""
    rng = np.random.default_rng(RNG_SEED + 1)
    rows = 300
    table = pa.table({"uid": rng.integers(0, 40, rows), **ragged_columns(rng, rows, 200, 0.02, pa.bool_())})
    pq.write_table(table, path)
    return path


def scalar_advantage(path: Path) -> Path:
    """One advantage per row broadcast over ``response_length`` tokens; prompts hashed to uids."""
    rng = np.random.default_rng(RNG_SEED + 2)
    rows = 400
    table = pa.table(
        {
            "prompt": [f"question {i // 8}" for i in range(rows)],
            "advantage": rng.standard_normal(rows),
            "response_length": rng.integers(0, 90, rows).astype(np.int32),
        }
    )
    pq.write_table(table, path, row_group_size=128)
    return path


def long_layout(path: Path) -> Path:
    """One row per token, the tokens of 120 sequences interleaved."""
    rng = np.random.default_rng(RNG_SEED + 3)
    sequence = np.repeat(np.arange(120), rng.integers(1, 60, 120))
    rng.shuffle(sequence)
    table = pa.table(
        {
            "seq_id": sequence,
            "uid": [f"g{s // 4}" for s in sequence],
            "advantages": rng.standard_normal(sequence.size).astype(np.float32),
            "loss_mask": (rng.random(sequence.size) < 0.75).astype(np.int32),
            "reward": (sequence % 5).astype(np.float64),
        }
    )
    pq.write_table(table, path, row_group_size=1000)
    return path


def split_files(path: Path) -> Path:
    """One step over three files of several row groups each."""
    path.mkdir()
    rng = np.random.default_rng(RNG_SEED + 4)
    for part in range(3):
        columns = {"step": np.full(70, 4), "uid": [f"u{part}-{i // 5}" for i in range(70)]}
        table = pa.table({**columns, **ragged_columns(rng, 70, 150, 0.2, pa.int8())})
        pq.write_table(table, path / f"part{part}.parquet", row_group_size=23)
    return path


INPUTS: dict[str, Callable[[Path], Path]] = {
    "wide_steps": wide_steps,
    "sparse_bool_masks": sparse_bool_masks,
    "scalar_advantage": scalar_advantage,
    "long_layout": long_layout,
    "split_files": split_files,
}


def batch_bytes(batch: StepBatch) -> dict[str, object]:
    """Every array of a batch and of its stats as (dtype, shape, raw bytes), and its other fields."""

    def raw(values: np.ndarray | None) -> object:
        return None if values is None else (str(values.dtype), tuple(values.shape), values.tobytes())

    fields: dict[str, object] = {
        name: raw(getattr(batch, name)) for name in ("advantages", "loss_mask", "offsets", "group_ids", "rewards")
    }
    fields.update(step=batch.step, uid_labels=batch.uid_labels, source=batch.source, lengths_estimated=batch.lengths_estimated)
    fields.update({f"stats.{name}": raw(value) for name, value in vars(batch.stats).items()})
    return fields


def read_both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[StepBatch], list[StepBatch], dict[str, int]]:
    """The steps read on the fast path and on the plain path, and how often each helper thread was used."""
    used = {"touchers": 0, "parts_to_thread": 0}
    toucher, worker = fastread.PageToucher.__init__, fastread._stats_worker

    def counting_toucher(self: fastread.PageToucher, arrays: list[np.ndarray]) -> None:
        used["touchers"] += 1
        toucher(self, arrays)

    def counting_worker() -> object:
        used["parts_to_thread"] += 1
        return worker()

    monkeypatch.setattr(fastread.PageToucher, "__init__", counting_toucher)
    monkeypatch.setattr(fastread, "_stats_worker", counting_worker)
    monkeypatch.setattr(fastread, "PLAIN", False)
    fast = list(open_rollouts(str(path)).iter_steps())
    fast_use = dict(used)
    monkeypatch.setattr(fastread, "PLAIN", True)
    plain = list(open_rollouts(str(path)).iter_steps())
    assert used == fast_use, "the plain path started a helper thread"
    return fast, plain, fast_use


@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("touch", [False, True], ids=["no_touch", "touch"])
def test_fast_and_plain_reads_are_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, touch: bool) -> None:
    path = INPUTS[name](tmp_path / f"{name}.parquet")
    monkeypatch.setattr(parquet_module, "READ_BATCH_TOKENS", 700)  # several parts per step: the stats thread works
    if touch:  # every step big enough for its pages to be touched, in chunks small enough to race the reader
        monkeypatch.setattr(fastread, "TOUCH_PAGES_FROM", 1)
        monkeypatch.setattr(fastread.PageToucher, "CHUNK_BYTES", 64)
        monkeypatch.setattr(fastread.PageToucher, "PAGE_BYTES", 8)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave with the reader all the time
    try:
        fast, plain, used = read_both_ways(path, monkeypatch)
    finally:
        sys.setswitchinterval(switch)
    assert [b.step for b in fast] == [b.step for b in plain] and fast
    for fast_batch, plain_batch in zip(fast, plain, strict=True):
        assert "stats" not in vars(plain_batch)  # the plain path leaves the stats to StepBatch.stats
        expected, got = batch_bytes(plain_batch), batch_bytes(fast_batch)
        for field in expected:
            assert got[field] == expected[field], (name, fast_batch.step, field)
    # The fast path did use its machinery where it applies (the long layout reads in one piece).
    if name != "long_layout":
        assert all("stats" in vars(b) for b in fast)  # reduced while reading, not afterwards
        assert used["parts_to_thread"] > 0
        # Pages are touched where the step's size is known from the metadata before it is read.
        rollouts = open_rollouts(str(path))
        known = [step for step in rollouts.steps if rollouts.step_tokens(step) is not None]
        assert used["touchers"] == (len(known) if touch else 0)
        assert known or name == "scalar_advantage"  # (no token list column: nothing to preallocate)


@pytest.mark.parametrize("name", INPUTS)
def test_a_group_read_whole_and_sliced_is_the_same_as_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A row group of up to ``WHOLE_GROUP_TOKENS`` tokens is read in one call and sliced into batches;
    the steps are the ones ``iter_batches`` gives, byte for byte, on the fast path and the plain one."""
    path = INPUTS[name](tmp_path / f"{name}.parquet")
    monkeypatch.setattr(parquet_module, "READ_BATCH_TOKENS", 700)  # every group of the inputs spans several batches
    batch_reads = {"batched": 0, "whole": 0}
    iter_batches = pq.ParquetFile.iter_batches
    way = "batched"

    def counting_iter_batches(self: pq.ParquetFile, *args: object, **kwargs: object) -> object:
        batch_reads[way] += 1
        return iter_batches(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting_iter_batches)
    for plain in (False, True):
        monkeypatch.setattr(fastread, "PLAIN", plain)
        way = "batched"
        monkeypatch.setattr(parquet_module, "WHOLE_GROUP_TOKENS", 0)  # every group in batches of iter_batches
        batched = list(open_rollouts(str(path)).iter_steps())
        way = "whole"
        monkeypatch.setattr(parquet_module, "WHOLE_GROUP_TOKENS", 1 << 21)
        whole = list(open_rollouts(str(path)).iter_steps())
        assert [b.step for b in whole] == [b.step for b in batched] and whole
        for got, expected in zip(whole, batched, strict=True):
            assert batch_bytes(got) == batch_bytes(expected), (name, plain, got.step)
    assert batch_reads["whole"] == 0  # every group was read in one call and sliced
    assert batch_reads["batched"] > 0 or name in ("long_layout", "scalar_advantage")  # (they have no token list column)


def test_the_last_part_is_reduced_by_the_caller_and_the_stats_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part but the last is reduced on the stats thread, at most ``IN_FLIGHT`` waiting; the last on
    the thread that asks for the result; the stats are the whole step's, bit for bit."""
    rng = np.random.default_rng(RNG_SEED + 9)
    lengths = rng.integers(0, 50, 90)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    adv = rng.standard_normal(int(offsets[-1])).astype(np.float32)
    adv[rng.random(adv.size) < 0.02] = np.nan
    mask = rng.random(adv.size) < 0.8
    expected = fastread.sequence_stats_numpy(adv, mask, offsets)
    thread_of: dict[int, str] = {}  # id of a part's offsets -> the thread that reduced it
    reduce = fastread.sequence_stats_numpy

    def recording(*args: np.ndarray) -> object:
        thread_of[id(args[2])] = threading.current_thread().name
        return reduce(*args)

    monkeypatch.setattr(fastread, "sequence_stats_numpy", recording)
    monkeypatch.setattr(fastread, "PLAIN", False)
    cuts = [0, 7, 20, 21, 40, 41, 66, 90]  # seven parts of whole sequences, one of them empty
    parts = []  # kept, so that no two parts' offsets share an id
    with fastread.StatsPipeline() as pipeline:
        for first, last in itertools.pairwise(cuts):
            start, stop = int(offsets[first]), int(offsets[last])
            parts.append(offsets[first : last + 1] - start)
            pipeline.submit(adv[start:stop], mask[start:stop], parts[-1])
        got = pipeline.result()
    assert got is not None
    for name, value in vars(expected).items():
        assert getattr(got, name).tobytes() == value.tobytes(), name
    here = threading.current_thread().name
    assert [thread_of[id(part)] == here for part in parts] == [False] * 6 + [True]
    with fastread.StatsPipeline() as pipeline:  # one part: never handed to the thread
        pipeline.submit(adv, mask, offsets)
        assert pipeline.result() is not None
    assert thread_of[id(offsets)] == here


def test_the_switch_comes_from_the_environment() -> None:
    code = "import aggscope.io.fastread as f; print(f.PLAIN)"
    for value, expected in (("1", "True"), ("0", "False"), ("", "False")):
        env = {"PATH": "", "PYTHONPATH": str(REPO), "AGGSCOPE_PLAIN_READ": value}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
        assert done.stdout.strip() == expected, done.stderr


def test_touch_pages_only_for_large_steps_off_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = [np.empty(1000, dtype=np.float32), np.empty(1000, dtype=bool)]
    monkeypatch.setattr(fastread, "TOUCH_PAGES_FROM", 1001)
    assert fastread.touch_pages(arrays) is None
    monkeypatch.setattr(fastread, "TOUCH_PAGES_FROM", 1000)
    toucher = fastread.touch_pages(arrays)
    assert isinstance(toucher, fastread.PageToucher)
    toucher.stop()
    monkeypatch.setattr(fastread, "PLAIN", True)
    assert fastread.touch_pages(arrays) is None


# ---- reading the next small step ahead -------------------------------------------------------------
def many_small_steps(path: Path, steps: int = 12, rows: int = 20) -> Path:
    """``steps`` steps of ``rows`` rows, one row group each (a run of many small steps)."""
    rng = np.random.default_rng(RNG_SEED + 5)
    table = pa.table(
        {
            "step": np.repeat(np.arange(steps), rows),
            "uid": [f"s{i // 4}" for i in range(steps * rows)],
            **ragged_columns(rng, steps * rows, 40, 0.2, pa.int8()),
        }
    )
    pq.write_table(table, path, row_group_size=rows, compression="none")
    return path


def counting_read_ahead(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the reads ``ReadAhead`` queued (``blocks`` of them of several steps) and of those the
    reader took instead of reading."""
    counts = {"queued": 0, "taken": 0, "blocks": 0}
    submit, take = fastread.ReadAhead.submit, fastread.ReadAhead.take

    def counting_submit(self: fastread.ReadAhead, key: object, read: Callable[[], object]) -> None:
        counts["queued"] += not self.plain
        counts["blocks"] += not self.plain and isinstance(key, tuple) and key[0] == "block"
        submit(self, key, read)

    def counting_take(self: fastread.ReadAhead, key: object) -> object:
        ready = take(self, key)
        counts["taken"] += ready is not None
        return ready

    monkeypatch.setattr(fastread.ReadAhead, "submit", counting_submit)
    monkeypatch.setattr(fastread.ReadAhead, "take", counting_take)
    return counts


@pytest.mark.parametrize("name", ["many_small_steps", "wide_steps", "split_files", "long_layout"])
def test_reading_ahead_gives_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    make = many_small_steps if name == "many_small_steps" else INPUTS[name]
    path = make(tmp_path / f"{name}.parquet")
    counts = counting_read_ahead(monkeypatch)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        fast, plain, _ = read_both_ways(path, monkeypatch)
    finally:
        sys.setswitchinterval(switch)
    for fast_batch, plain_batch in zip(fast, plain, strict=True):
        assert batch_bytes(fast_batch) == batch_bytes(plain_batch), (name, fast_batch.step)
    # Every small step's row groups were read ahead, and every read ahead was used; the long
    # layout's row groups say nothing of their tokens in the metadata, so it reads for itself.
    assert counts["queued"] == counts["taken"]
    assert (counts["queued"] > 0) == (name != "long_layout")
    if name == "many_small_steps":  # the twelve steps are one block: one read, one decoding
        assert counts["queued"] == counts["blocks"] == 1


def test_reading_ahead_skips_a_step_too_large_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = many_small_steps(tmp_path / "r.parquet")
    counts = counting_read_ahead(monkeypatch)
    monkeypatch.setattr(parquet_module, "READ_AHEAD_TOKENS", 1)
    assert len(list(open_rollouts(str(path)).iter_steps())) == 12
    assert counts == {"queued": 0, "taken": 0, "blocks": 0}


def test_a_damaged_row_group_read_ahead_is_named_at_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = many_small_steps(tmp_path / "r.parquet")
    metadata = pq.ParquetFile(path).metadata
    advantages = next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path.startswith("advantages"))
    chunk = metadata.row_group(7).column(advantages)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 12] = b"\xff" * 12  # the data page's thrift header
    path.write_bytes(bytes(data))
    counts = counting_read_ahead(monkeypatch)
    for plain in (False, True):
        monkeypatch.setattr(fastread, "PLAIN", plain)
        seen = []
        with pytest.raises(AggscopeError, match=re.escape(f"{path}: row group 7 cannot be decoded")):
            for batch in open_rollouts(str(path)).iter_steps():
                seen.append(batch.step)
        assert seen == list(range(7))  # the steps before it come out first, as without reading ahead
    assert counts["queued"] > 0


def test_a_loop_left_early_leaves_no_read_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = many_small_steps(tmp_path / "r.parquet")
    monkeypatch.setattr(fastread, "PLAIN", False)
    closed: list[int] = []
    close = fastread.ReadAhead.close

    def recording_close(self: fastread.ReadAhead) -> None:
        close(self)
        closed.append(len(self._pending))

    monkeypatch.setattr(fastread.ReadAhead, "close", recording_close)
    steps = open_rollouts(str(path)).iter_steps()
    assert next(steps).step == 0
    steps.close()
    assert closed == [0]
    assert fastread._ahead_worker().submit(lambda: 1).result() == 1  # the thread is free for the next loop


def test_reading_ahead_around_steps_too_large_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small and large steps mixed: a large step is read by the reader itself with nothing in
    # flight, and reading ahead starts again after it.
    rng = np.random.default_rng(RNG_SEED + 6)
    rows = [5, 5, 60, 5, 60, 60, 5, 5, 5, 60, 5]
    steps = np.repeat(np.arange(len(rows)), rows)
    path = tmp_path / "mixed.parquet"
    table = pa.table(
        {"step": steps, "uid": [f"u{i // 5}" for i in range(steps.size)], **ragged_columns(rng, steps.size, 30, 0.2, pa.int8())}
    )
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for count in rows:  # one row group per step
            writer.write_table(table.slice(start, count))
            start += count
    tokens = [open_rollouts(str(path)).step_tokens(step) or 0 for step in range(len(rows))]
    monkeypatch.setattr(parquet_module, "READ_AHEAD_TOKENS", max(t for t, r in zip(tokens, rows, strict=True) if r == 5))
    # No two threads ever read the file at once (each read holds it a while, to widen the window).
    active, overlaps = [0], [0]
    read_row_group, iter_batches = pq.ParquetFile.read_row_group, pq.ParquetFile.iter_batches

    def exclusive(read: Callable[..., object]) -> Callable[..., object]:
        def wrapped(*args: object, **kwargs: object) -> object:
            active[0] += 1
            overlaps[0] += active[0] > 1
            time.sleep(0.002)
            try:
                result = read(*args, **kwargs)
                return list(result) if read is iter_batches else result
            finally:
                active[0] -= 1

        return wrapped

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", exclusive(read_row_group))
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", exclusive(pq.ParquetFile.read_row_groups))
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", exclusive(iter_batches))
    for depth in (1, 2, 3):
        monkeypatch.setattr(parquet_module, "READ_AHEAD_STEPS", depth)
        counts = counting_read_ahead(monkeypatch)
        fast, plain, _ = read_both_ways(path, monkeypatch)
        assert [batch_bytes(b) for b in fast] == [batch_bytes(b) for b in plain]
        assert counts["queued"] == counts["taken"] == rows.count(5) and counts["blocks"] == 0
    # Room for two small steps a read: the runs of small steps are read in blocks too.
    monkeypatch.setattr(parquet_module, "READ_AHEAD_TOKENS", 2 * max(t for t, r in zip(tokens, rows, strict=True) if r == 5))
    for depth in (1, 2, 3):
        monkeypatch.setattr(parquet_module, "READ_AHEAD_STEPS", depth)
        counts = counting_read_ahead(monkeypatch)
        fast, plain, _ = read_both_ways(path, monkeypatch)
        assert [batch_bytes(b) for b in fast] == [batch_bytes(b) for b in plain]
        assert counts["queued"] == counts["taken"] and counts["blocks"] >= 2  # steps 0-1 and two of 6-8
    assert overlaps == [0]


def test_small_steps_are_read_in_blocks_within_their_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Consecutive small steps of one row group each, in one file, make a block of at most
    ``BLOCK_STEPS`` steps and ``READ_AHEAD_TOKENS`` tokens; a step left alone is a unit of its own."""
    rollouts = open_rollouts(str(many_small_steps(tmp_path / "r.parquet")))
    assert rollouts._units(blocks=True) == [tuple(range(12))]
    assert rollouts._units(blocks=False) == [(step,) for step in range(12)]
    monkeypatch.setattr(parquet_module, "BLOCK_STEPS", 5)
    assert rollouts._units(blocks=True) == [tuple(range(5)), tuple(range(5, 10)), (10, 11)]
    tokens = [rollouts.step_tokens(step) or 0 for step in range(12)]
    monkeypatch.setattr(parquet_module, "BLOCK_STEPS", 64)
    monkeypatch.setattr(parquet_module, "READ_AHEAD_TOKENS", max(tokens))  # one step a read: no block
    assert rollouts._units(blocks=True) == [(step,) for step in range(12)]
    monkeypatch.setattr(parquet_module, "READ_AHEAD_TOKENS", sum(tokens[:3]))
    units = rollouts._units(blocks=True)
    assert [step for unit in units for step in unit] == list(range(12))
    assert units[0] == (0, 1, 2) and all(sum(tokens[s] for s in unit) <= sum(tokens[:3]) for unit in units)


@pytest.mark.parametrize("uid_type", ["text", "int", "prompt_text"])
@pytest.mark.parametrize("reward_type", ["float", "bool", "list", "none"])
def test_a_block_decodes_uids_and_rewards_as_each_step_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uid_type: str, reward_type: str
) -> None:
    """A block's uids and rewards are decoded once for all its steps: each step's codes are numbered
    by first appearance in the step and its rewards are its own, as when the step is read alone,
    also where steps share uids in other orders."""
    rng = np.random.default_rng(RNG_SEED + 9)
    steps, rows = 6, 12
    uids = np.concatenate([rng.permutation(np.repeat(np.arange(4), 3)) for _ in range(steps)])  # shared, reordered
    columns: dict[str, object] = {
        "step": np.repeat(np.arange(steps), rows),
        **ragged_columns(rng, steps * rows, 30, 0.2, pa.int8()),
    }
    if uid_type == "text":
        columns["uid"] = [f"u{u}" for u in uids]
    elif uid_type == "int":
        columns["uid"] = uids * 7
    else:
        columns["prompt"] = [f"question {u}?" for u in uids]
    rewards = rng.random(steps * rows)
    if reward_type == "float":
        columns["reward"] = rewards
    elif reward_type == "bool":
        columns["reward"] = rewards > 0.5
    elif reward_type == "list":
        columns["reward"] = pa.array([[float(r), 1.0] if r > 0.2 else [] for r in rewards], pa.list_(pa.float64()))
    path = tmp_path / "shared.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=rows, compression="none")
    counts = counting_read_ahead(monkeypatch)
    fast, plain, _ = read_both_ways(path, monkeypatch)
    assert counts["blocks"] >= 1
    assert [batch_bytes(b) for b in fast] == [batch_bytes(b) for b in plain]
    assert all(b.uid_labels is not None and len(b.uid_labels) == 4 for b in fast)
    if reward_type == "list":  # a list is summed, an empty one (also a step's last row's) is NaN
        expected = np.where(rewards > 0.2, rewards + 1.0, np.nan)
        got = np.concatenate([b.rewards for b in fast if b.rewards is not None])
        assert np.array_equal(got, expected, equal_nan=True)


def test_a_dictionary_uid_column_reads_as_its_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dictionary-typed uid column (a pandas categorical; one dictionary for the whole file) gives
    every step the batches the same uids stored as text give: codes by first appearance in the step,
    only the uids it holds, whether the step is read in a block or alone."""
    rng = np.random.default_rng(RNG_SEED + 11)
    steps, rows = 6, 8
    pool = [f"p{i}" for i in range(10)]
    index = np.array([(step * 3 + i // 2) % 10 for step in range(steps) for i in range(rows)], dtype=np.int32)
    columns = {"step": np.repeat(np.arange(steps), rows), **ragged_columns(rng, steps * rows, 20, 0.2, pa.int8())}
    as_text = pa.table({**columns, "uid": [pool[i] for i in index]})
    as_dictionary = pa.table({**columns, "uid": pa.DictionaryArray.from_arrays(pa.array(index), pa.array(pool))})
    assert pa.types.is_dictionary(as_dictionary.schema.field("uid").type)
    batches = {}
    for name, table in (("text", as_text), ("dictionary", as_dictionary)):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path, row_group_size=rows, compression="none")
        fast, plain, _ = read_both_ways(path, monkeypatch)
        assert [batch_bytes(b) for b in fast] == [batch_bytes(b) for b in plain]
        batches[name] = [batch_bytes(b) for b in fast]
        for batch in fast:
            assert batch.uid_labels is not None and len(batch.uid_labels) == 4
    for text, dictionary in zip(batches["text"], batches["dictionary"], strict=True):
        assert {k: v for k, v in text.items() if k != "source"} == {k: v for k, v in dictionary.items() if k != "source"}


@pytest.mark.parametrize("fault", ["token_lists", "uid"])
def test_a_bad_step_inside_a_block_raises_its_own_error_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A step whose tokens (or uid) cannot be decoded, in the middle of a block: the steps before it
    come out, then its error, the same as reading the steps one by one."""
    table = pq.read_table(many_small_steps(tmp_path / "good.parquet"))
    row = 5 * 20 + 3  # step 5, its fourth row
    if fault == "token_lists":
        mask = table["loss_mask"].to_pylist()
        mask[row] = [*mask[row], 1]  # one value more than its advantages
        table = table.set_column(table.schema.get_field_index("loss_mask"), "loss_mask", pa.array(mask, pa.list_(pa.int8())))
    else:
        uids = table["uid"].to_pylist()
        uids[row] = None
        table = table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids, pa.string()))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=20, compression="none")
    errors = {}
    for plain in (True, False):
        monkeypatch.setattr(fastread, "PLAIN", plain)
        counts = counting_read_ahead(monkeypatch)
        seen = []
        with pytest.raises(AggscopeError) as raised:
            for batch in open_rollouts(str(path)).iter_steps():
                seen.append(batch.step)
        assert seen == list(range(5))
        errors[plain] = str(raised.value)
        assert counts["blocks"] == (0 if plain else 1)
    assert errors[False] == errors[True] and f"{path}: row {row}" in errors[True]


def test_a_block_that_cannot_be_read_is_read_step_by_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block read that fails for a reason of its own (not a damaged row group) is read again step
    by step by the reader once nothing else reads the file: the same steps come out."""
    path = many_small_steps(tmp_path / "r.parquet")
    monkeypatch.setattr(parquet_module, "BLOCK_STEPS", 4)
    monkeypatch.setattr(fastread, "PLAIN", True)
    plain = [batch_bytes(b) for b in open_rollouts(str(path)).iter_steps()]
    monkeypatch.setattr(fastread, "PLAIN", False)
    read_row_groups = pq.ParquetFile.read_row_groups
    failed = []

    def failing_second(self: pq.ParquetFile, groups: list[int], **kwargs: object) -> pa.Table:
        if groups[0] == 4:
            failed.append(groups)
            raise MemoryError("no room for this block")
        return read_row_groups(self, groups, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", failing_second)
    counts = counting_read_ahead(monkeypatch)
    assert [batch_bytes(b) for b in open_rollouts(str(path)).iter_steps()] == plain
    assert failed == [[4, 5, 6, 7]] and counts["blocks"] == 3


def test_a_file_that_cannot_be_opened_is_named_at_its_own_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One step per file; the file of step 5 is damaged after the loop started (so after planning):
    # reading ahead meets it two steps early and leaves it to the reader, which names it at step 5.
    monkeypatch.setattr(fastread, "PLAIN", False)
    table = pq.read_table(many_small_steps(tmp_path / "all.parquet", steps=8))
    folder = tmp_path / "run"
    folder.mkdir()
    for step in range(8):
        pq.write_table(table.filter(pa.compute.equal(table["step"], step)), folder / f"step{step}.parquet")
    seen = []
    with pytest.raises(AggscopeError, match=re.escape(f"{folder / 'step5.parquet'}: not a Parquet file")):
        for batch in open_rollouts(str(folder)).iter_steps():
            if batch.step == 0:
                (folder / "step5.parquet").write_bytes(b"not parquet, not even close" * 40)
            seen.append(batch.step)
    assert seen == list(range(5))


# ---- the helper threads ---------------------------------------------------------------------------
def test_a_helper_thread_runs_calls_in_order_and_counts_them() -> None:
    helper = fastread.HelperThread("aggscope-stats-test")  # idle after the test, as forking tests need
    gate = threading.Event()
    order: list[int] = []
    first = helper.submit(gate.wait)
    later = [helper.submit(order.append, n) for n in range(5)]
    failing = helper.submit(int, "not a number")
    assert helper.busy == 7 and not any(f.done() for f in later)  # the first call holds the thread
    cancelled = helper.submit(order.append, 99)
    assert cancelled.cancel()
    gate.set()
    assert first.result(timeout=10) is True and [f.result(timeout=10) for f in later] == [None] * 5
    with pytest.raises(ValueError):
        failing.result(timeout=10)
    assert helper.submit(len, "abc").result(timeout=10) == 3
    assert order == [0, 1, 2, 3, 4] and helper.busy == 0
    assert helper._thread is not None and helper._thread.daemon


def test_no_fork_while_a_helper_thread_is_busy() -> None:
    from aggscope.present import forked

    if not forked.can_fork():
        pytest.skip("forking needs POSIX, two cores and no other thread")
    gate = threading.Event()
    read = fastread._ahead_worker().submit(gate.wait)  # a read still in flight: its thread is not idle
    try:
        assert not forked.can_fork()
    finally:
        gate.set()
    read.result(timeout=10)
    assert forked.can_fork()


INTERRUPTED_START = """
import threading
from aggscope.io import fastread

start = threading.Thread.start

def interrupted(self):
    start(self)
    if self.name.startswith("aggscope-"):
        raise KeyboardInterrupt  # as a SIGTERM handler raises in the wait at the end of Thread.start

threading.Thread.start = interrupted
try:
    fastread._stats_worker().submit(int)
except KeyboardInterrupt:
    pass
"""


def test_a_signal_while_a_helper_thread_starts_does_not_hold_up_the_exit() -> None:
    """A thread pool's thread whose start was interrupted is unknown to the pool's exit hook, and the
    interpreter waited for it at exit for ever (``weights --out`` stopped by SIGTERM hung in CI)."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_START], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
