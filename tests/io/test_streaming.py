"""Streaming reads, chunked per-sequence reductions and row-grouped output give the same numbers
as one-piece computations, however the input is cut into files, row groups and batches."""

from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import aggscope.core.batch as batch_module
import aggscope.io.export as export_module
import aggscope.io.fastread as fastread
import aggscope.io.parquet as loading_module
import aggscope.io.parquet_plan as parquet_plan
import aggscope.io.parquet_steps as parquet_steps
from aggscope.analysis.weights import run_weights
from aggscope.cli import app
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.segments import expand_to_tokens, segment_chunks, segment_count_numpy
from aggscope.core.weights import compute_weights, select_modes
from aggscope.io.open import load_steps, open_rollouts
from aggscope.io.writing import list_array


# ---- the per-sequence reductions ---------------------------------------------------------------
def plain_stats(adv: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> dict[str, list[float]]:
    """The per-sequence quantities by a plain loop over sequences and tokens (independent of the engine)."""
    out: dict[str, list[float]] = {k: [] for k in ("loss", "sum", "abs", "zero", "nonfinite", "masked_nonzero")}
    for i in range(offsets.size - 1):
        loss = total = absolute = zero = nonfinite = masked_nonzero = 0
        values = []
        for t in range(int(offsets[i]), int(offsets[i + 1])):
            a, m = float(adv[t]), bool(mask[t])
            if m:
                loss += 1
                zero += a == 0
                if math.isfinite(a):
                    values.append(a)
                else:
                    nonfinite += 1
            else:
                masked_nonzero += a != 0
        total = math.fsum(values)
        absolute = math.fsum(abs(v) for v in values)
        for key, value in zip(out, (loss, total, absolute, zero, nonfinite, masked_nonzero), strict=True):
            out[key].append(value)
    return out


@st.composite
def ragged_batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = draw(st.lists(st.integers(0, 40), min_size=1, max_size=25))
    n = sum(lengths)
    special = st.sampled_from([0.0, -0.0, 1.5, -2.25, math.nan, math.inf, -math.inf, 3e-8])
    values = draw(st.lists(st.one_of(st.floats(-1e3, 1e3, width=32), special), min_size=n, max_size=n))
    # Masks with about half, few (the sparse path of the reduction) or no masked tokens.
    mask_value = draw(st.sampled_from([st.booleans(), st.sampled_from([True] * 9 + [False]), st.just(True)]))
    mask = draw(st.lists(mask_value, min_size=n, max_size=n))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.array(values, dtype=np.float32), np.array(mask, dtype=bool), offsets


@settings(max_examples=60, deadline=None)
@given(ragged_batches(), st.integers(1, 50))
def test_chunked_stats_match_a_plain_loop(data: tuple[np.ndarray, np.ndarray, np.ndarray], chunk: int) -> None:
    adv, mask, offsets = data
    batch_module.STATS_CHUNK_TOKENS, saved = chunk, batch_module.STATS_CHUNK_TOKENS
    try:
        stats = StepBatch.from_flat(adv, mask, offsets).stats
    finally:
        batch_module.STATS_CHUNK_TOKENS = saved
    expected = plain_stats(adv, mask, offsets)
    assert stats.loss_tokens.tolist() == expected["loss"]
    assert stats.zero_adv_tokens.tolist() == expected["zero"]
    assert stats.nonfinite_adv_tokens.tolist() == expected["nonfinite"]
    assert stats.masked_nonzero_adv_tokens.tolist() == expected["masked_nonzero"]
    # float32 values summed in float64 over <= 40 tokens: only the last bits may differ from fsum.
    np.testing.assert_allclose(stats.adv_sum, expected["sum"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.adv_abs_sum, expected["abs"], rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(ragged_batches(), st.integers(1, 50))
def test_chunked_stats_equal_the_one_piece_reduction_bit_for_bit(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], chunk: int
) -> None:
    """The chunked reduction and the one in a single piece agree exactly."""
    adv, mask, offsets = data
    batch_module.STATS_CHUNK_TOKENS, saved = chunk, batch_module.STATS_CHUNK_TOKENS
    try:
        chunked = batch_module.sequence_stats_numpy(adv, mask, offsets)
        batch_module.STATS_CHUNK_TOKENS = max(adv.size, 1)
        whole = batch_module.sequence_stats_numpy(adv, mask, offsets)
    finally:
        batch_module.STATS_CHUNK_TOKENS = saved
    for name in vars(whole):
        a, b = getattr(chunked, name), getattr(whole, name)
        assert a.dtype == b.dtype, name
        # Same bits, signs of zero included: compare the raw bytes.
        assert a.tobytes() == b.tobytes(), name


@settings(max_examples=40, deadline=None)
@given(ragged_batches(), st.data())
def test_stats_of_parts_concatenated_equal_the_whole_bit_for_bit(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], draw: st.DataObject
) -> None:
    """What the Parquet reader relies on when it reduces each decoded part on its own."""
    adv, mask, offsets = data
    n_seqs = offsets.size - 1
    cuts = sorted(set(draw.draw(st.lists(st.integers(0, n_seqs), max_size=4))) | {0, n_seqs})
    parts = [
        batch_module.sequence_stats_numpy(
            adv[offsets[a] : offsets[b]], mask[offsets[a] : offsets[b]], offsets[a : b + 1] - offsets[a]
        )
        for a, b in itertools.pairwise(cuts)
    ]
    joined = batch_module.SequenceStats.concat(parts)
    whole = batch_module.sequence_stats_numpy(adv, mask, offsets)
    for name in vars(whole):
        assert getattr(joined, name).tobytes() == getattr(whole, name).tobytes(), name


def test_read_step_stats_equal_those_computed_from_its_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read_step reduces each decoded batch on a second thread; the result is what the tokens give."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 300, size=500)
    adv = [np.where(rng.random(n) < 0.1, 0.0, rng.standard_normal(n)).astype(np.float32) for n in lengths]
    adv[7][3:5] = [np.nan, np.inf]
    mask = [rng.random(n) < 0.8 for n in lengths]
    table = pa.table({"advantages": adv, "loss_mask": mask, "uid": [f"u{i // 8}" for i in range(lengths.size)]})
    pq.write_table(table, tmp_path / "r.parquet", row_group_size=120)
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", 5_000)  # many batches, several in flight
    (batch,) = load_steps(str(tmp_path / "r.parquet"))
    primed = batch.stats
    recomputed = StepBatch.from_flat(batch.advantages, batch.loss_mask, batch.offsets).stats
    for name in vars(recomputed):
        assert getattr(primed, name).tobytes() == getattr(recomputed, name).tobytes(), name


def test_long_sequences_sum_exactly_as_numpy_reduceat_does() -> None:
    """Sequences longer than numpy's casting buffer (8192) still sum exactly as one reduceat."""
    rng = np.random.default_rng(3)
    lengths = np.array([50_000, 1, 0, 20_000, 9_000, 3])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    adv = (rng.standard_normal(offsets[-1]) * rng.lognormal(0, 3, offsets[-1])).astype(np.float32)
    mask = np.ones(adv.size, dtype=bool)
    batch_module.STATS_CHUNK_TOKENS, saved = 10_000, batch_module.STATS_CHUNK_TOKENS
    try:
        stats = StepBatch.from_flat(adv, mask, offsets).stats
    finally:
        batch_module.STATS_CHUNK_TOKENS = saved
    nonempty = lengths > 0
    expected = np.zeros(lengths.size)
    expected[nonempty] = np.add.reduceat(adv, offsets[:-1][nonempty], dtype=np.float64)
    assert stats.adv_sum.tobytes() == expected.tobytes()


def test_segment_chunks_cover_every_segment_once() -> None:
    offsets = np.array([0, 5, 5, 30, 31, 40, 100])
    for chunk in (1, 4, 10, 1000):
        runs = segment_chunks(offsets, chunk)
        assert runs[0][0] == 0 and runs[-1][1] == 6
        assert all(a < b for a, b in runs) and all(runs[i][1] == runs[i + 1][0] for i in range(len(runs) - 1))
    # 1-token chunks: every non-empty segment starts a run (the empty one joins its neighbour).
    assert segment_chunks(offsets, 1) == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6)]
    assert segment_chunks(np.array([0]), 8) == [(0, 0)]


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_segment_count_matches_a_loop_at_any_density(density: float) -> None:
    rng = np.random.default_rng(7)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 300, 200))])
    flags = rng.random(int(offsets[-1])) < density
    expected = [int(flags[a:b].sum()) for a, b in itertools.pairwise(offsets)]
    assert segment_count_numpy(flags, offsets).tolist() == expected


def test_expand_to_tokens_equals_torch_repeat_interleave() -> None:
    weights = torch.tensor([0.5, 2.0, -1.0, 7.0], dtype=torch.float64)
    offsets = torch.tensor([0, 3, 3, 4, 9])
    expected = torch.repeat_interleave(weights, offsets[1:] - offsets[:-1])
    assert torch.equal(torch.from_numpy(expand_to_tokens(weights.numpy(), offsets.numpy(), 9)), expected)


# ---- files, row groups, batches ------------------------------------------------------------------
def rollout_table(seed: int = 0, steps: int = 3, rows: int = 60) -> pa.Table:
    """Rows of several steps with ragged lengths, NaN advantages and partial masks."""
    rng = np.random.default_rng(seed)
    tables = []
    for step in range(steps):
        lengths = rng.integers(0, 50, rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        n = int(offsets[-1])
        adv = np.repeat(rng.standard_normal(rows), lengths).astype(np.float32)
        adv[rng.random(n) < 0.01] = np.nan
        mask = (rng.random(n) < 0.9).astype(np.int8)
        adv = adv * np.where(rng.random(n) < 0.5, mask, 1).astype(np.float32)
        uids = [f"p{g}" for g in rng.integers(0, rows // 4, rows)]
        tables.append(
            pa.table(
                {
                    "step": np.full(rows, step, dtype=np.int64),
                    "uid": pa.array(uids),
                    "advantages": list_array(adv, offsets),
                    "loss_mask": list_array(mask, offsets),
                }
            )
        )
    return pa.concat_tables(tables)


def write_split(table: pa.Table, directory: Path, files: int, row_group_size: int | None) -> Path:
    directory.mkdir()
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(
            table.slice(bounds[i], bounds[i + 1] - bounds[i]), directory / f"part{i:02d}.parquet", row_group_size=row_group_size
        )
    return directory


def weights_of(path: Path, out: Path | None = None, layout: Layout | None = None) -> dict:
    rollouts = open_rollouts(str(path))
    layout = layout or Layout(mini_batch_size=17, micro_batch_size=4, dp_size=2)
    modes = select_modes(None, has_groups=True, layout=layout)
    return run_weights(rollouts.iter_steps(), modes, layout, out=out).to_dict()


@pytest.mark.parametrize(
    ("files", "row_group_size", "batch_tokens"),
    [(1, None, 1 << 20), (1, 7, 1 << 20), (4, None, 1 << 20), (3, 11, 1 << 20), (1, None, 13), (2, 50, 1)],
)
def test_results_do_not_depend_on_files_row_groups_or_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int, row_group_size: int | None, batch_tokens: int
) -> None:
    table = rollout_table()
    reference_file = tmp_path / "one.parquet"
    pq.write_table(table, reference_file)
    expected = weights_of(reference_file)
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", batch_tokens)
    monkeypatch.setattr(batch_module, "STATS_CHUNK_TOKENS", 97)
    monkeypatch.setattr(parquet_plan, "PLAN_ROWS", 23)  # the step column planned in runs of a few row groups
    split = write_split(table, tmp_path / "split", files, row_group_size)
    got = weights_of(split)
    assert got == expected  # exact: same counts, same float bits (NaN aside, there are none here)


def test_per_token_output_does_not_depend_on_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = rollout_table(seed=2)
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    weights_of(source, out=tmp_path / "whole.parquet")
    monkeypatch.setattr(export_module, "ROW_GROUP_TOKENS", 100)
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", 50)
    weights_of(source, out=tmp_path / "pieces.parquet")
    whole, pieces = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(tmp_path / "pieces.parquet")
    assert pq.ParquetFile(tmp_path / "pieces.parquet").num_row_groups > pq.ParquetFile(tmp_path / "whole.parquet").num_row_groups
    assert whole.schema == pieces.schema
    for name in whole.column_names:
        a, b = whole.column(name).combine_chunks(), pieces.column(name).combine_chunks()
        if pa.types.is_list(a.type):
            assert np.array_equal(a.offsets, b.offsets)
            assert a.values.to_numpy().tobytes() == b.values.to_numpy().tobytes(), name
        else:
            assert a.equals(b), name


def test_token_weights_of_some_rows_are_a_slice_of_all() -> None:
    batch = StepBatch.from_flat([1.0, -2.0, 0.5, 3.0, -1.0, 2.0], [1, 0, 1, 1, 1, 0], [0, 2, 2, 5, 6], uids=["a", "a", "b", "b"])
    result = compute_weights(batch, "sequence_mean")
    # sequence_mean: w_i = 1 / (N L_i), N = 4; L = [1, 0, 3, 1] -> w = [1/4, 1/4 (L clamped to 1), 1/12, 1/4]
    expected = np.array([1 / 4, 0.0, 1 / 12, 1 / 12, 1 / 12, 0.0], dtype=np.float32)
    assert result.token_weights().dtype == np.float32
    np.testing.assert_allclose(result.token_weights(), expected, rtol=1e-7)
    assert np.array_equal(result.token_weights(rows=slice(2, 4)), result.token_weights()[2:6])
    assert np.array_equal(result.grad_weights(rows=slice(1, 3)), result.grad_weights()[2:5])


def test_a_step_split_over_files_is_read_in_input_order(tmp_path: Path) -> None:
    """Rows of one step in two files: file order, then row order, as one step."""
    table = rollout_table(steps=1, rows=40)
    split = write_split(table, tmp_path / "split", 2, 9)
    batch = next(open_rollouts(str(split)).iter_steps())
    values = table.column("advantages").combine_chunks()
    assert batch.n_sequences == 40
    assert np.array_equal(batch.offsets, values.offsets.to_numpy())
    assert batch.advantages.tobytes() == values.values.to_numpy().tobytes()


# ---- errors found while streaming ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("mask_values", "mask_type", "expected"),
    [
        ([1, 2, 1], pa.int8(), "holds 2 at token 1"),
        ([1, -1, 1], pa.int8(), "holds -1 at token 1"),
        ([1, 0, 5], pa.int64(), "holds 5 at token 2"),
        ([1.0, 0.5, 1.0], pa.float32(), "holds 0.5 at token 1"),
    ],
)
def test_a_bad_mask_value_in_a_later_batch_names_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mask_values: list, mask_type: pa.DataType, expected: str
) -> None:
    rows = 10
    good = [[1, 0, 1]] * (rows - 1)
    table = pa.table(
        {
            "uid": [f"u{i // 2}" for i in range(rows)],
            "advantages": pa.array([[0.5, 0.5, 0.5]] * rows, type=pa.list_(pa.float32())),
            "loss_mask": pa.array([*good, mask_values], type=pa.list_(mask_type)),
        }
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=4)
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", 3)
    result = CliRunner().invoke(app, ["weights", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: row 9: column 'loss_mask' {expected}" in result.output


def test_lengths_that_differ_in_a_later_row_group_name_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.table(
        {
            "advantages": pa.array([[1.0, 2.0]] * 6 + [[1.0]], type=pa.list_(pa.float32())),
            "loss_mask": pa.array([[1, 1]] * 7, type=pa.list_(pa.int8())),
        }
    )
    path = tmp_path / "ragged.parquet"
    pq.write_table(table, path, row_group_size=3)
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", 2)
    result = CliRunner().invoke(app, ["weights", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: row 6: 'advantages' has 1 values but 'loss_mask' has 2" in result.output


@pytest.mark.parametrize("capacity", [None, 0, 4, 9, 100])
def test_token_accumulator_joins_batches_whatever_its_capacity(capacity: int | None) -> None:
    """A wrong metadata bound (too small) or none at all still gives the batches joined in order."""
    accumulator = parquet_steps.TokenAccumulator(capacity)
    parts = [
        (np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([1, 0, 1], dtype=bool), np.array([0, 1, 3])),
        (np.array([4.0, 5.0], dtype=np.float32), np.array([1, 1], dtype=bool), np.array([0, 0, 2])),
        (np.array([6.0, 7.0, 8.0, 9.0], dtype=np.float32), np.array([0, 0, 1, 1], dtype=bool), np.array([0, 4])),
    ]
    for adv, mask, offsets in parts:
        accumulator.add(adv, mask, offsets)
    advantages, mask, offsets = accumulator.finish()
    assert advantages.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert mask.tolist() == [True, False, True, True, True, False, False, True, True]
    assert offsets.tolist() == [0, 1, 3, 3, 5, 9]


@pytest.mark.parametrize("repeat", range(3))
def test_page_toucher_never_changes_what_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repeat: int) -> None:
    """Touching the pages of the step's arrays from a thread, in tiny chunks that race the reader,
    gives exactly the tokens of a read without it."""
    table = rollout_table(seed=repeat, steps=1, rows=300)
    path = tmp_path / "one_step.parquet"
    pq.write_table(table, path, row_group_size=300)
    plain = open_rollouts(str(path)).read_step(0)
    monkeypatch.setattr(fastread, "TOUCH_PAGES_FROM", 1)
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", 64)
    monkeypatch.setattr(fastread.PageToucher, "CHUNK_BYTES", 32)
    monkeypatch.setattr(fastread.PageToucher, "PAGE_BYTES", 4)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL back and forth all the time, so the two threads interleave
    try:
        touched = open_rollouts(str(path)).read_step(0)
    finally:
        sys.setswitchinterval(switch)
    assert np.array_equal(touched.advantages.view(np.int32), plain.advantages.view(np.int32))  # bits, NaN too
    assert np.array_equal(touched.loss_mask, plain.loss_mask)
    assert np.array_equal(touched.offsets, plain.offsets)


def test_page_toucher_stops_where_the_reader_arrives() -> None:
    arrays = [np.full(1 << 16, 7.0, dtype=np.float32), np.ones(1 << 16, dtype=bool)]
    toucher = fastread.PageToucher(arrays)
    toucher.before_write(1 << 16)  # the reader wants everything: the thread is stopped before this returns
    assert not toucher._thread.is_alive()
    arrays[0][:] = 3.0
    assert (arrays[0] == 3.0).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_reads_with_its_own_stats_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reducing thread is kept across steps; a child forked after it was started has no such
    thread and must start its own rather than wait forever on the parent's."""
    import time

    lengths = [40] * 200
    table = pa.table({"advantages": [[1.0] * n for n in lengths], "loss_mask": [[1] * n for n in lengths]})
    pq.write_table(table, tmp_path / "r.parquet")
    monkeypatch.setattr(loading_module, "READ_BATCH_TOKENS", 1_000)  # several parts: the thread is used
    (parent,) = load_steps(str(tmp_path / "r.parquet"))
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when it reads the same loss tokens
        try:
            (child,) = load_steps(str(tmp_path / "r.parquet"))
            os._exit(0 if int(child.stats.loss_tokens.sum()) == sum(lengths) else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung reading a step")
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(parent.stats.loss_tokens.sum()) == sum(lengths)
