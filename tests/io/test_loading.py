"""Reading canonical Parquet: layouts, column roles, steps, files, and every bad input."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aggscope.core.batch import text_uid
from aggscope.errors import AggscopeError
from aggscope.io import parquet_plan
from aggscope.io.open import load_steps, open_rollouts


def write(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


WIDE = {
    "uid": ["a", "a", "b"],
    "advantages": [[1.0, 2.0], [0.5, 0.5, -1.0], [3.0]],
    "loss_mask": [[1, 0], [1, 1, 1], [1]],
    "reward": [1.0, 0.0, 1.0],
}


def test_wide_lists(tmp_path: Path) -> None:
    (batch,) = load_steps(str(write(tmp_path / "r.parquet", WIDE)))
    assert batch.step == 0
    assert batch.offsets.tolist() == [0, 2, 5, 6]
    assert batch.advantages.tolist() == [1.0, 2.0, 0.5, 0.5, -1.0, 3.0]
    assert batch.loss_mask.tolist() == [True, False, True, True, True, True]
    assert batch.group_ids.tolist() == [0, 0, 1]
    assert batch.uid_labels == ("a", "b")
    assert batch.rewards.tolist() == [1.0, 0.0, 1.0]
    assert batch.stats.loss_tokens.tolist() == [1, 3, 1]


def test_scalar_advantage_is_broadcast_over_the_mask(tmp_path: Path) -> None:
    columns = {"uid": [7, 7], "advantage": [0.5, -2.0], "loss_mask": [[1, 1, 0], [True, False]]}
    columns["loss_mask"] = [[1, 1, 0], [1, 0]]
    (batch,) = load_steps(str(write(tmp_path / "r.parquet", columns)))
    assert batch.advantages.tolist() == [0.5, 0.5, 0.5, -2.0, -2.0]
    assert batch.loss_mask.tolist() == [True, True, False, True, False]
    assert batch.uid_labels == ("7",)


def test_response_length_stands_in_for_the_mask(tmp_path: Path) -> None:
    (batch,) = load_steps(str(write(tmp_path / "r.parquet", {"advantage": [1.0, 2.0], "response_length": [3, 0]})))
    assert batch.offsets.tolist() == [0, 3, 3]
    assert batch.loss_mask.all()
    lists = {"advantages": [[1.0, 1.0, 1.0], [2.0, 2.0]], "response_length": [2, 2]}
    (batch,) = load_steps(str(write(tmp_path / "l.parquet", lists)))
    assert batch.loss_mask.tolist() == [True, True, False, True, True]


def test_long_layout_equals_wide(tmp_path: Path) -> None:
    # Tokens of sequences 10 and 20 interleaved; sequences ordered by first appearance.
    long = {
        "seq_id": [10, 20, 10, 20, 20, 30],
        "uid": ["a", "a", "a", "a", "a", "b"],
        "advantages": [1.0, 0.5, 2.0, 0.5, -1.0, 3.0],
        "loss_mask": [1, 1, 0, 1, 1, 1],
        "reward": [1.0, 0.0, 1.0, 0.0, 0.0, 1.0],
    }
    (from_long,) = load_steps(str(write(tmp_path / "long.parquet", long)))
    (from_wide,) = load_steps(str(write(tmp_path / "wide.parquet", WIDE)))
    for name in ("advantages", "loss_mask", "offsets", "group_ids", "rewards"):
        assert np.array_equal(getattr(from_long, name), getattr(from_wide, name)), name
    assert from_long.uid_labels == from_wide.uid_labels


def test_steps_in_one_file_and_across_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    write(folder / "b.parquet", {"step": [2, 1], "uid": ["x", "y"], "advantages": [[1.0], [2.0]], "loss_mask": [[1], [1]]})
    write(folder / "a.parquet", {"step": [1, 1], "uid": ["z", "y"], "advantages": [[3.0], [4.0]], "loss_mask": [[1], [1]]})
    batches = load_steps(str(folder))
    assert [b.step for b in batches] == [1, 2]
    # step 1: files in sorted path order (a, then b), rows in file order
    assert batches[0].advantages.tolist() == [3.0, 4.0, 2.0]
    assert batches[0].row_uids() == ["z", "y", "y"]
    assert batches[1].advantages.tolist() == [1.0]
    glob_batches = load_steps(str(folder / "*.parquet"))
    assert [b.advantages.tolist() for b in glob_batches] == [b.advantages.tolist() for b in batches]


def test_row_groups_are_read_per_step(tmp_path: Path) -> None:
    columns = {"step": [0, 0, 1, 1, 2], "advantages": [[1.0]] * 5, "loss_mask": [[1]] * 5}
    rollouts = open_rollouts(str(write(tmp_path / "r.parquet", columns, row_group_size=2)))
    assert rollouts.steps == [0, 1, 2]
    assert [b.n_sequences for b in rollouts.iter_steps()] == [2, 2, 1]


def test_step_from_file_name(tmp_path: Path) -> None:
    write(tmp_path / "global_step_12.parquet", {"advantages": [[1.0]], "loss_mask": [[1]]})
    write(tmp_path / "step_3.parquet", {"advantages": [[1.0]], "loss_mask": [[1]]})
    assert open_rollouts(str(tmp_path)).steps == [3, 12]


def test_one_listing_rule_natural_order_and_no_dot_names(tmp_path: Path) -> None:
    """Every reader lists a directory alike: natural order (part2 before part10), dot names skipped."""
    from aggscope.io.paths import list_files, resolve_paths

    for name in ("part10.parquet", "part2.parquet", "part1.parquet", ".part3.parquet"):
        write(tmp_path / name, {"advantages": [[1.0]], "loss_mask": [[1]]})
    (tmp_path / ".hidden").mkdir()
    write(tmp_path / ".hidden" / "part4.parquet", {"advantages": [[1.0]], "loss_mask": [[1]]})
    expected = [str(tmp_path / n) for n in ("part1.parquet", "part2.parquet", "part10.parquet")]
    assert resolve_paths(str(tmp_path)) == (expected, None)
    assert list_files(str(tmp_path), (".parquet",), ".parquet files") == expected
    assert list_files(str(tmp_path / "part*.parquet"), (), "") == expected
    assert open_rollouts(str(tmp_path)).files == expected


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("12.jsonl", 12),
        ("run/step_12/rank_0.jsonl", 0),
        ("step_12", 12),
        ("global_step_12.parquet", 12),
        ("completions_00012.parquet", 12),
        ("train_data_step3.jsonl", 3),
        ("global_step_6_training_input.pkl", 6),
        ("rank_3.jsonl", 3),
        ("data_v2.parquet", 2),
        ("rollouts.parquet", None),
    ],
)
def test_step_in_a_file_name(name: str, step: int | None) -> None:
    from aggscope.io.paths import step_in_name

    assert step_in_name(name) == step


def test_text_uid_is_stable_and_groups_by_prompt(tmp_path: Path) -> None:
    columns = {"prompt": ["What is 2+2?", "Name a prime.", "What is 2+2?"], "advantages": [[1.0]] * 3, "loss_mask": [[1]] * 3}
    (batch,) = load_steps(str(write(tmp_path / "r.parquet", columns)))
    assert batch.group_ids.tolist() == [0, 1, 0]
    assert batch.uid_labels == (text_uid("What is 2+2?"), text_uid("Name a prime."))
    assert text_uid("What is 2+2?") == hashlib.sha1(b"What is 2+2?").hexdigest()[:12]
    assert batch.uid_texts == ("What is 2+2?", "Name a prime.")  # the texts travel with the batch


def test_prompt_texts_beside_a_uid_travel_with_the_batch(tmp_path: Path) -> None:
    """A ``prompt`` column beside the uid gives each group its text: the last row's that has one."""
    columns = {
        "uid": ["a", "b", "a", "b", "c"],
        "prompt": ["first a", "text b", "last a", None, None],
        "advantages": [[1.0]] * 5,
        "loss_mask": [[1]] * 5,
    }
    (batch,) = load_steps(str(write(tmp_path / "r.parquet", columns)))
    assert batch.uid_labels == ("a", "b", "c") and batch.uid_texts == ("last a", "text b", None)
    long = {"seq_id": [1, 2, 1, 3], "uid": ["a", "b", "a", "a"], "prompt": ["A", "B", "A", "A2"], "advantages": [1.0] * 4}
    (batch,) = load_steps(str(write(tmp_path / "long.parquet", {**long, "loss_mask": [1] * 4})))
    assert batch.uid_labels == ("a", "b") and batch.uid_texts == ("A2", "B")
    (batch,) = load_steps(str(write(tmp_path / "none.parquet", {k: v for k, v in columns.items() if k != "prompt"})))
    assert batch.uid_texts is None


def test_describe_uid_takes_the_text_from_the_batches_not_the_files(tmp_path: Path) -> None:
    from aggscope.analysis.describe import describe_uid

    path = write(
        tmp_path / "r.parquet", {"uid": ["a", "b"], "input": ["Q a", "Q b"], "advantages": [[1.0]] * 2, "loss_mask": [[1]] * 2}
    )
    rollouts = open_rollouts(str(path))
    batches = list(rollouts.iter_steps())
    path.unlink()  # nothing may read the input again to describe a uid
    found = describe_uid(rollouts, "b", batches)
    assert found.text == "Q b" and [o.rows for o in found.occurrences] == [[1]]


def test_explicit_column_roles(tmp_path: Path) -> None:
    columns = {"group": ["p", "q"], "adv": [[1.0], [2.0]], "m": [[1], [0]]}
    path = str(write(tmp_path / "r.parquet", columns))
    rollouts = open_rollouts(path, columns={"uid": "group", "advantages": "adv", "loss_mask": "m"})
    assert rollouts.columns == {"uid": "group", "advantages": "adv", "loss_mask": "m"}
    (batch,) = rollouts.iter_steps()
    assert batch.loss_mask.tolist() == [True, False]


def test_nan_advantages_are_data(tmp_path: Path) -> None:
    (batch,) = load_steps(str(write(tmp_path / "r.parquet", {"advantages": [[float("nan"), 1.0]], "loss_mask": [[1, 1]]})))
    assert batch.stats.nonfinite_adv_tokens.tolist() == [1]


def test_input_files_are_not_modified(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", WIDE)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    load_steps(str(path))
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# ---- bad input -------------------------------------------------------------------------------------
def error_of(path: str, columns: dict | None = None) -> str:
    with pytest.raises(AggscopeError) as info:
        load_steps(path, columns=columns)
    message = info.value.message
    assert "\n" not in message
    return message


def test_missing_path(tmp_path: Path) -> None:
    assert error_of(str(tmp_path / "nope.parquet")) == f"{tmp_path / 'nope.parquet'}: no such file or directory"


def test_glob_without_match(tmp_path: Path) -> None:
    assert "no file matches" in error_of(str(tmp_path / "*.parquet"))


def test_directory_without_parquet(tmp_path: Path) -> None:
    assert "no .parquet files" in error_of(str(tmp_path))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.parquet").write_bytes(b"")
    assert error_of(str(tmp_path / "e.parquet")) == f"{tmp_path / 'e.parquet'}: the file is empty"


def test_file_without_rows(tmp_path: Path) -> None:
    schema = pa.schema([("advantages", pa.list_(pa.float32())), ("loss_mask", pa.list_(pa.int8()))])
    pq.write_table(schema.empty_table(), tmp_path / "z.parquet")
    assert "holds no rows" in error_of(str(tmp_path / "z.parquet"))


def test_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").write_text('{"advantages": [1]}\n')
    assert error_of(str(tmp_path / "t.parquet")).startswith(f"{tmp_path / 't.parquet'}: not a Parquet file")


def test_a_column_name_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {**WIDE, "zzzz": [0, 0, 0]})
    path.write_bytes(path.read_bytes().replace(b"zzzz", b"\xec\xec\xec\xec"))  # the names in the footer
    assert error_of(str(path)) == f"{path}: not a Parquet file aggscope can read (a column name in its footer is not UTF-8 text)"


@pytest.mark.parametrize(
    "recorded",
    [b'{"notes": null}', b'{"notes": 5}', b'{"notes": [1]}', b'{"format": []}', b"[" * 100_000 + b"]" * 100_000, b"[1]", b"{"],
    ids=["null-notes", "number-notes", "number-note", "list-format", "nested-100000", "list", "not-json"],
)
def test_a_record_convert_did_not_write_is_left_out_with_a_note(tmp_path: Path, recorded: bytes) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table(WIDE).replace_schema_metadata({b"aggscope": recorded}), path)
    rollouts = open_rollouts(str(path))
    assert f"{path}: its 'aggscope' schema metadata is not what convert records; it was not used" in rollouts.notes
    assert not rollouts.lengths_estimated and not rollouts.unrecoverable
    (batch,) = list(rollouts.iter_steps())
    assert batch.stats.loss_tokens.tolist() == [1, 3, 1]


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        (pa.array([2**64 - 1, 3], type=pa.uint64()), "row 0: column 'response_length' is 18446744073709551615, more tokens"),
        (pa.array([3, -2], type=pa.int32()), "row 1: column 'response_length' is negative"),
    ],
    ids=["uint64-max", "negative"],
)
def test_response_lengths_out_of_range_are_named(tmp_path: Path, lengths: pa.Array, expected: str) -> None:
    path = write(tmp_path / "r.parquet", {"uid": ["a", "a"], "advantages": [1.0, -1.0], "response_length": lengths})
    assert error_of(str(path)).startswith(f"{path}: {expected}")


def test_missing_advantage_column(tmp_path: Path) -> None:
    message = error_of(str(write(tmp_path / "r.parquet", {"uid": ["a"], "loss_mask": [[1]]})))
    assert "no advantage column" in message and "--col advantages=NAME" in message


def test_list_lengths_differ_names_the_row(tmp_path: Path) -> None:
    columns = {"advantages": [[1.0], [1.0, 2.0], [1.0]], "loss_mask": [[1], [1], [1]]}
    path = write(tmp_path / "r.parquet", columns)
    assert error_of(str(path)) == f"{path}: row 1: 'advantages' has 2 values but 'loss_mask' has 1"


def test_mask_not_zero_one(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {"advantages": [[1.0, 1.0], [1.0]], "loss_mask": [[1, 1], [2]]})
    assert error_of(str(path)) == f"{path}: row 1: column 'loss_mask' holds 2 at token 0; a loss mask may hold only 0 and 1"


def test_column_override_names_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", WIDE)
    assert "column 'grp' given for uid is not in the file" in error_of(str(path), {"uid": "grp"})


def test_wrong_column_type(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {"advantages": [["x"]], "loss_mask": [[1]]})
    assert "column 'advantages' (advantages) has type list<" in error_of(str(path))


def test_null_uid_names_the_row(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {"uid": ["a", None], "advantages": [[1.0], [1.0]], "loss_mask": [[1], [1]]})
    assert error_of(str(path)) == f"{path}: row 1: column 'uid' (uid) is null"


def test_long_layout_needs_a_sequence_column(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {"advantages": [1.0, 2.0], "loss_mask": [1, 1]})
    assert "--col sequence=NAME" in error_of(str(path))


def test_scalar_advantage_needs_a_token_count(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {"advantage": [1.0, 2.0]})
    assert "no loss_mask or response_length column" in error_of(str(path))


def test_files_must_share_columns(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", WIDE)
    write(tmp_path / "b.parquet", {"advantages": [[1.0]], "loss_mask": [[1]]})
    assert f"{tmp_path / 'b.parquet'}: missing column 'uid'" in error_of(str(tmp_path))


def test_a_column_only_later_files_have_is_an_error(tmp_path: Path) -> None:
    # Without this, b's steps 0 and 1 would be merged into one step under a's default step 0.
    write(tmp_path / "a.parquet", WIDE)
    write(tmp_path / "b.parquet", {**WIDE, "step": [0, 1, 1]})
    assert error_of(str(tmp_path)) == (
        f"{tmp_path / 'b.parquet'}: has column 'step' (step) that {tmp_path / 'a.parquet'} lacks; "
        "files of one input must have the same columns"
    )


def test_files_may_store_a_column_with_different_number_types(tmp_path: Path) -> None:
    for name, dtype in (("a", pa.float32()), ("b", pa.float64())):
        table = pa.table(
            {
                "uid": pa.array(["a", "a"] if name == "a" else ["b", "b"]),
                "advantage": pa.array([0.5, -0.5], type=dtype),
                "reward": pa.array([1.0, 0.0], type=dtype),
                "response_length": pa.array([2, 3], type=pa.int32() if name == "a" else pa.int64()),
                "step": pa.array([0, 0], type=pa.int32() if name == "a" else pa.int64()),  # one step in two files
            }
        )
        pq.write_table(table, tmp_path / f"{name}.parquet")
    (batch,) = load_steps(str(tmp_path))
    assert batch.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert batch.stats.loss_tokens.tolist() == [2, 3, 2, 3]
    assert batch.uid_labels == ("a", "b")


def test_uid_must_be_constant_within_a_sequence(tmp_path: Path) -> None:
    long = {"seq_id": [1, 1], "uid": ["a", "b"], "advantages": [1.0, 1.0], "loss_mask": [1, 1]}
    path = write(tmp_path / "r.parquet", long)
    assert error_of(str(path)) == f"{path}: row 1: the uid changes within one sequence"


def test_reward_must_be_constant_within_a_sequence(tmp_path: Path) -> None:
    long = {"seq_id": [1, 2, 1, 2], "uid": ["a"] * 4, "advantages": [1.0] * 4, "loss_mask": [1] * 4}
    same = write(tmp_path / "same.parquet", {**long, "reward": [0.5, float("nan"), 0.5, float("nan")]})
    (batch,) = load_steps(str(same))  # NaN repeated is the same reward
    assert batch.rewards is not None and batch.rewards[0] == 0.5 and np.isnan(batch.rewards[1])
    path = write(tmp_path / "r.parquet", {**long, "reward": [0.5, 1.0, 0.5, 0.0]})
    assert error_of(str(path)).startswith(f"{path}: row 3: the reward changes within one sequence (one reward per sequence")


def test_float_mask_and_bool_mask_are_accepted(tmp_path: Path) -> None:
    columns = {"advantages": [[1.0, 2.0]], "loss_mask": [np.array([1.0, 0.0])]}
    (batch,) = load_steps(str(write(tmp_path / "f.parquet", columns)))
    assert batch.loss_mask.tolist() == [True, False]
    columns = {"advantages": [[1.0, 2.0]], "loss_mask": [[True, False]]}
    (batch,) = load_steps(str(write(tmp_path / "b.parquet", columns)))
    assert batch.loss_mask.tolist() == [True, False]


# ---- planning many row groups: the step column is read in runs of row groups ----------------------
def many_groups(tmp_path: Path, steps: list, group_rows: int = 2) -> Path:
    n = len(steps)
    return write(tmp_path / "r.parquet", {"step": steps, "advantages": [[1.0]] * n, "loss_mask": [[1]] * n}, group_rows)


@pytest.mark.parametrize("plan_rows", [1, 3, 4, 1 << 18])
def test_steps_of_many_row_groups_whatever_the_runs_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan_rows: int) -> None:
    # groups of 2 rows: [0 0] [0 1] [1 1] [2 2] [5 5] [3]: one group holds two steps, step 5 comes before 3
    monkeypatch.setattr(parquet_plan, "PLAN_ROWS", plan_rows)
    rollouts = open_rollouts(str(many_groups(tmp_path, [0, 0, 0, 1, 1, 1, 2, 2, 5, 5, 3])))
    assert rollouts.steps == [0, 1, 2, 3, 5]
    assert [b.n_sequences for b in rollouts.iter_steps()] == [3, 3, 2, 1, 2]


@pytest.mark.parametrize("plan_rows", [1, 1 << 18])
@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([0, 0, 1, 1, None, 2], "r.parquet: row 4: column 'step' (step) is null"),
        ([0, 0, 1, 1, 1.5, 2], "r.parquet: column 'step' (step) holds a value that is not a whole number"),
        ([0.0, 0, 1, 1, float("inf"), 2], "r.parquet: column 'step' (step) holds an infinite value"),
        ([0, 0, 1, 1, 2**62 * 1.0, 2**64 * 1.0], "step 18446744073709551616 is beyond the steps aggscope handles"),
    ],
)
def test_a_bad_step_in_a_later_row_group_is_named_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan_rows: int, steps: list, message: str
) -> None:
    monkeypatch.setattr(parquet_plan, "PLAN_ROWS", plan_rows)
    with pytest.raises(AggscopeError, match=re.escape(message)):
        open_rollouts(str(many_groups(tmp_path, steps)))


def test_a_damaged_step_column_names_its_row_group(tmp_path: Path) -> None:
    # 200 small row groups are planned in one read; a corrupt page in group 7 is named by a re-read
    path = tmp_path / "r.parquet"
    pq.write_table(
        pa.table({"step": np.repeat(np.arange(100), 2), "advantages": [[1.0]] * 200}), path, row_group_size=1, compression="none"
    )
    chunk = pq.ParquetFile(path).metadata.row_group(7).column(0)
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    data[start : start + 12] = b"\xff" * 12  # the data page's thrift header
    path.write_bytes(bytes(data))
    with pytest.raises(AggscopeError, match=re.escape(f"{path}: row group 7 cannot be decoded")):
        open_rollouts(str(path))


def test_a_storage_client_error_of_its_own_kind_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face's client (hf:// through fsspec) raises its own errors, not OSError: one line too."""
    from aggscope.io import paths

    class ConnectError(Exception):
        pass

    def refuse(seconds: float, call: object, path: str) -> None:  # what contacting the storage raised
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(paths, "_within", refuse)
    message = error_of("hf://datasets/x/y")
    assert message == "hf://datasets/x/y: cannot open this location (ConnectError: [Errno -2] Name or service not known)"


def test_a_step_the_input_does_not_hold_is_named_with_those_it_does(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", {**WIDE, "step": [3, 3, 5]})
    with pytest.raises(AggscopeError) as info:
        open_rollouts(str(path)).read_step(4)
    assert info.value.message == f"{path}: no step 4; steps: 3, 5"
