"""Decoding the Arrow tables of one step into the flat arrays of a ``StepBatch``.

The Parquet reader (``aggscope.io.parquet``) hands over a step's rows as Arrow tables; these
functions turn them into flat token arrays and per-sequence offsets (wide layout: one row per
sequence with list columns, or one advantage per row broadcast over its loss tokens; long layout:
one row per token with a sequence id), group ids and rewards, and check every value on the way:
each error names the file and row at fault (``RowLocator``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggscope.core.batch import StepBatch, last_row_of_groups, mask_as_bool, offsets_of, text_uid, widen_half
from aggscope.errors import AggscopeError, first_line
from aggscope.io.limits import check_fits


@dataclass(frozen=True)
class RowLocator:
    """Names the file and row behind a row of a step, for error messages."""

    paths: list[str]
    origin: np.ndarray  # [n_rows, 2] (file index, row in file)

    def __call__(self, row: int) -> str:
        file_index, file_row = self.origin[row]
        return f"{self.paths[int(file_index)]}: row {int(file_row)}"


def is_list(data_type: pa.DataType) -> bool:
    """Whether an Arrow type is a list (variable, large or fixed-size)."""
    return bool(pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type))


def concat_rows(tables: list[pa.Table], columns: Mapping[str, str], source: str) -> pa.Table:
    """The per-row columns of a step's batches as one table.

    Files of one input may store a column with different types: numbers are promoted (float32
    and float64 rewards, say); a uid stored as integers in some files and as text in others is
    read as text, which is how uids are compared anyway.
    """
    if len(tables) == 1:
        return tables[0]
    uid = columns.get("uid")
    if uid is not None and len({t.schema.field(uid).type for t in tables}) > 1:
        tables = [t.set_column(t.schema.get_field_index(uid), uid, pc.cast(t.column(uid), pa.string())) for t in tables]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise AggscopeError(f"{source}: the files store a column with types that do not combine ({first_line(exc)})") from None


def column_of(table: pa.Table, name: str) -> pa.Array:
    """A column of ``table`` as one array."""
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def numpy_of(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow array of numbers or bools as numpy (nulls: NaN for floats; other types as pyarrow gives them).

    Read from the array's buffers: pyarrow's ``to_numpy`` imports pandas on first use (0.7-1.6 s
    of a command that never needs it). Numbers are zero-copy views (read-only); bools are unpacked.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    data_type = array.type
    if array.null_count and pa.types.is_floating(data_type):
        array = array.fill_null(float("nan"))
    if array.null_count == 0 and (pa.types.is_integer(data_type) or pa.types.is_floating(data_type)):
        kind = "f" if pa.types.is_floating(data_type) else ("i" if pa.types.is_signed_integer(data_type) else "u")
        dtype = np.dtype(f"{kind}{data_type.bit_width // 8}")
        buffer = array.buffers()[1]
        if buffer is None:
            return np.zeros(0, dtype=dtype)
        return np.frombuffer(buffer, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    if array.null_count == 0 and pa.types.is_boolean(data_type):
        buffer = array.buffers()[1]
        if buffer is None or len(array) == 0:
            return np.zeros(0, dtype=bool)
        bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
        return bits[array.offset : array.offset + len(array)].view(bool)
    return np.asarray(array.to_numpy(zero_copy_only=False))


def _list_parts(array: pa.Array, name: str, where: RowLocator) -> tuple[pa.Array, np.ndarray]:
    """Flat values and rebased ``[n_rows + 1]`` offsets of a list column."""
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise AggscopeError(f"{where(row)}: column {name!r} is null")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        offsets = np.arange(len(array) + 1, dtype=np.int64) * width
        return array.flatten(), offsets
    offsets = numpy_of(array.offsets).astype(np.int64)
    # With no null list, flatten() is this slice of the values; taken directly, without a compute call.
    first = int(offsets[0])
    return array.values.slice(first, int(offsets[-1]) - first), offsets - first


def _floats(array: pa.Array) -> np.ndarray:
    """Float values (float32 kept as float32); nulls become NaN."""
    if pa.types.is_float32(array.type) or pa.types.is_float64(array.type):
        return numpy_of(array)
    if pa.types.is_float16(array.type):
        return widen_half(numpy_of(array))
    return numpy_of(array.cast(pa.float64()))


def _mask_values(values: pa.Array, offsets: np.ndarray, name: str, where: RowLocator) -> np.ndarray:
    """Check a flat mask holds only 0/1 and return it as bool."""
    if values.null_count:
        token = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(offsets, token, side="right") - 1)
        raise AggscopeError(f"{where(row)}: column {name!r} holds a null at token {token - int(offsets[row])}")
    raw = numpy_of(values)
    return mask_as_bool(raw, offsets, lambda row, token: (f"{where(row)}: column {name!r}", f"token {token}"))


def arrow_codes(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """``[n]`` int64 codes of an Arrow column numbered by first appearance, and its distinct values.

    The Arrow twin of ``aggscope.core.batch.factorize`` (the same numbering): a hash table, linear
    in the rows, for columns as long as a step's tokens (the long layout's ids) or the text read.
    A dictionary-typed column (a pandas categorical, say) is numbered by its values too: its own
    indices follow the whole dictionary's order and count values these rows never hold.
    """
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    encoded = array.dictionary_encode()
    return numpy_of(encoded.indices).astype(np.int64), encoded.dictionary


def uid_groups(
    table: pa.Table, columns: Mapping[str, str], where: RowLocator
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """``([n_rows] group codes, uid of each code)`` from the uid column, or hashed from the prompt
    text column (``uid_text``); ``(None, None)`` when the input has neither."""
    if "uid" in columns:
        name = columns["uid"]
        array = column_of(table, name)
        hashed = False
    elif "uid_text" in columns:
        name = columns["uid_text"]
        array = column_of(table, name)
        hashed = True
    else:
        return None, None
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise AggscopeError(f"{where(row)}: column {name!r} (uid) is null")
    if is_list(array.type) or pa.types.is_struct(array.type):
        raise AggscopeError(f"{where(0)}: column {name!r} (uid) has type {array.type}; expected strings or integers")
    codes, distinct = arrow_codes(array)
    labels = [str(v) for v in distinct.to_pylist()]
    if hashed:
        labels = [text_uid(text) for text in labels]
    return codes, tuple(labels)


def is_text(data_type: pa.DataType) -> bool:
    """Whether an Arrow type holds text (prompt texts are read from such columns only)."""
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def uid_texts_of(texts: pa.Array, group_ids: np.ndarray, n_groups: int) -> tuple[str | None, ...]:
    """The prompt text of each of ``n_groups`` groups: the ``texts [n_rows]`` entry of the group's last
    row that has one (``aggscope.core.batch.last_row_of_groups``), None for a group without any."""
    valid = np.asarray(texts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)  # [n_rows]
    rows = last_row_of_groups(group_ids, n_groups, valid)  # [n_groups]
    picked = texts.take(pa.array(np.maximum(rows, 0))).to_pylist() if len(texts) else [None] * n_groups
    return tuple(None if row < 0 else text for row, text in zip(rows.tolist(), picked, strict=True))


def rewards_of(table: pa.Table, columns: Mapping[str, str], where: RowLocator) -> np.ndarray | None:
    """``[n_rows]`` float64 rewards (a list per row is summed; an empty list is NaN), or None."""
    if "reward" not in columns:
        return None
    array = column_of(table, columns["reward"])
    if is_list(array.type):
        values, offsets = _list_parts(array, columns["reward"], where)
        nonempty = offsets[1:] > offsets[:-1]  # [n_rows]; an empty list is NaN
        per_row = np.full(len(array), np.nan)
        if nonempty.any():  # each non-empty row's values run up to the next non-empty row's
            per_row[nonempty] = np.add.reduceat(_floats(values).astype(np.float64), offsets[:-1][nonempty])
        return per_row
    if not (pa.types.is_floating(array.type) or pa.types.is_integer(array.type) or pa.types.is_boolean(array.type)):
        raise AggscopeError(f"{where(0)}: column {columns['reward']!r} (reward) has type {array.type}; expected numbers")
    return _floats(array.cast(pa.float64()) if pa.types.is_boolean(array.type) else array).astype(np.float64)


def decode_wide_tokens(
    table: pa.Table, columns: Mapping[str, str], where: RowLocator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tokens of some rows of the wide layout: ``(advantages, mask bool, offsets)`` of the rows."""
    adv_name = columns["advantages"]
    adv_array = column_of(table, adv_name)
    mask: np.ndarray | None = None
    if is_list(adv_array.type):
        adv_values, offsets = _list_parts(adv_array, adv_name, where)
        advantages = _floats(adv_values)
    else:
        advantages_per_row = _floats(adv_array)
        offsets = None
    if "loss_mask" in columns:
        mask_name = columns["loss_mask"]
        mask_values, mask_offsets = _list_parts(column_of(table, mask_name), mask_name, where)
        if offsets is not None and not np.array_equal(offsets, mask_offsets):
            lengths, mask_lengths = np.diff(offsets), np.diff(mask_offsets)
            row = int(np.flatnonzero(lengths != mask_lengths)[0])
            raise AggscopeError(f"{where(row)}: {adv_name!r} has {lengths[row]} values but {mask_name!r} has {mask_lengths[row]}")
        offsets = mask_offsets
        mask = _mask_values(mask_values, offsets, mask_name, where)
    elif "response_length" in columns:
        length_name = columns["response_length"]
        length_array = column_of(table, length_name)
        if length_array.null_count or not pa.types.is_integer(length_array.type):
            raise AggscopeError(f"{where(0)}: column {length_name!r} (response_length) must hold integers, without nulls")
        raw_lengths = numpy_of(length_array)
        if raw_lengths.dtype == np.uint64 and (raw_lengths > np.iinfo(np.int64).max).any():  # they would turn negative
            row = int(np.flatnonzero(raw_lengths > np.iinfo(np.int64).max)[0])
            raise AggscopeError(f"{where(row)}: column {length_name!r} is {raw_lengths[row]}, more tokens than any row holds")
        loss_lengths = raw_lengths.astype(np.int64)
        if (loss_lengths < 0).any():
            row = int(np.flatnonzero(loss_lengths < 0)[0])
            raise AggscopeError(f"{where(row)}: column {length_name!r} is negative")
        if offsets is None:
            check_fits(int(loss_lengths.sum(dtype=np.float64)), where(0), f"{length_name!r} adds up to")  # before allocating
            offsets = offsets_of(loss_lengths)
            mask = np.ones(int(offsets[-1]), dtype=bool)
        else:
            listed = np.diff(offsets)
            if (loss_lengths > listed).any():
                row = int(np.flatnonzero(loss_lengths > listed)[0])
                raise AggscopeError(
                    f"{where(row)}: {length_name!r} is {loss_lengths[row]} but {adv_name!r} lists only {listed[row]} values"
                )
            position = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], listed)
            mask = position < np.repeat(loss_lengths, listed)
    assert offsets is not None and len(offsets) == table.num_rows + 1
    if mask is None:
        mask = np.ones(int(offsets[-1]), dtype=bool)
    if not is_list(adv_array.type):
        advantages = np.repeat(advantages_per_row, np.diff(offsets))
    return advantages, mask, offsets


def decode_long(
    table: pa.Table,
    columns: Mapping[str, str],
    step: int,
    source: str,
    where: RowLocator,
    lengths_estimated: bool = False,
    text_column: str | None = None,
) -> StepBatch:
    """One step of the long layout (one row per token), sequences in order of first appearance;
    ``text_column`` holds the prompt texts, if any."""
    sequence = column_of(table, columns["sequence"])
    if sequence.null_count:
        row = int(np.flatnonzero(sequence.is_null().to_numpy(zero_copy_only=False))[0])
        raise AggscopeError(f"{where(row)}: column {columns['sequence']!r} (sequence id) is null")
    codes, _ = arrow_codes(sequence)  # [n_tokens]
    token_order = np.argsort(codes, kind="stable")  # tokens of sequence 0, then 1, ... in row order
    lengths = np.bincount(codes)
    offsets = offsets_of(lengths)
    first_row = token_order[offsets[:-1]]  # [n_seqs] the first token row of each sequence
    advantages = _floats(column_of(table, columns["advantages"]))[token_order]
    if "loss_mask" in columns:
        mask_array = column_of(table, columns["loss_mask"])
        mask = _mask_values(mask_array, np.arange(len(mask_array) + 1), columns["loss_mask"], where)[token_order]
    else:
        mask = np.ones(advantages.size, dtype=bool)
    per_sequence = table.take(pa.array(first_row))
    first_where = RowLocator(where.paths, where.origin[first_row])
    token_groups, labels = uid_groups(table, columns, where)
    group_ids = None
    if token_groups is not None:
        # Sequences are ordered by their first row, so the first-appearance numbering of uids over
        # token rows is also their first-appearance order over sequences.
        token_uid = token_groups[token_order]  # [n_tokens] in sequence order
        sequence_uid = token_uid[offsets[:-1]]  # [n_seqs]
        differs = token_uid != np.repeat(sequence_uid, lengths)
        if differs.any():
            token = int(np.flatnonzero(differs)[0])
            raise AggscopeError(f"{where(int(token_order[token]))}: the uid changes within one sequence")
        group_ids = sequence_uid.copy()
    rewards = rewards_of(per_sequence, columns, first_where)
    if rewards is not None:  # every token row repeats its sequence's reward
        by_token = rewards_of(table, columns, where)
        assert by_token is not None  # (the reward column is there)
        token_rewards, repeated = by_token[token_order], np.repeat(rewards, lengths)  # [n_tokens] in sequence order
        differs = ~((token_rewards == repeated) | (np.isnan(token_rewards) & np.isnan(repeated)))
        if differs.any():
            token = int(np.flatnonzero(differs)[0])
            raise AggscopeError(
                f"{where(int(token_order[token]))}: the reward changes within one sequence (one reward per sequence, on "
                "each of its rows: a per-token reward cannot be read)"
            )
    texts = None
    if text_column is not None and group_ids is not None and labels is not None:
        texts = uid_texts_of(column_of(per_sequence, text_column), group_ids, len(labels))
    return step_batch(step, source, advantages, mask, offsets, group_ids, labels, rewards, lengths_estimated, texts)


def step_batch(
    step: int,
    source: str,
    advantages: np.ndarray,
    mask: np.ndarray,
    offsets: np.ndarray,
    group_ids: np.ndarray | None,
    labels: tuple[str, ...] | None,
    rewards: np.ndarray | None,
    lengths_estimated: bool = False,
    uid_texts: tuple[str | None, ...] | None = None,
) -> StepBatch:
    """The batch of decoded arrays (sharing their memory; Arrow's buffers may be read-only, and
    nothing in aggscope writes into a batch's arrays)."""
    arrays = np.ascontiguousarray(advantages), np.ascontiguousarray(mask), np.ascontiguousarray(offsets)
    return StepBatch(step, *arrays, group_ids, labels, rewards, source, lengths_estimated, uid_texts)
