"""TRL ``GRPOConfig(log_completions=True)``: ``{output_dir}/completions/completions_{step:05d}.parquet``.

Columns: ``step``, ``prompt`` and ``completion`` (decoded text), one numeric column per reward
function (named after it), any extra logged columns, and ``advantage`` (one per completion).

- Groups: the exact ``prompt`` text hashed to a short stable uid (``aggscope.core.batch.text_uid``).
- Reward: the sum of the reward columns, skipping missing (NaN) values as TRL's ``nansum`` with
  its default equal weights does, or the one column named by ``--reward-col``. The reward columns
  are the numeric columns other than ``step`` and ``advantage``; a note lists them.
- Advantages: the logged ``advantage``, broadcast over the completion's tokens; rebuilt from the
  reward with ``--advantage`` when given or when the column is missing.
- Lengths: from the ``completion`` text (``--tokenizer`` or the estimate of ``readers.text``).
- Conversational datasets log ``prompt`` and ``completion`` as chat messages (lists of
  ``{"role", "content"}``): each is read as its messages' text, ``role: content`` per message, one
  per line (the prompt's text groups the rows; the completion's gives the length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggscope.core.batch import StepBatch
from aggscope.errors import AggscopeError, first_line
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions
from aggscope.io.readers.base import estimator_note, plan_by_name
from aggscope.io.readers.text import TextDumpRollouts, TextSettings

_NOT_REWARDS = ("step", "advantage")


@dataclass(frozen=True)
class TrlSettings(TextSettings):
    """The columns a TRL dump is read from.

    Attributes:
        reward_sum: True to sum the reward columns (TRL's default), False to take the one chosen.
    """

    text_column: str
    uid_column: str | None
    reward_columns: tuple[str, ...]
    has_step: bool
    reward_sum: bool


class TrlRollouts(TextDumpRollouts[TrlSettings]):
    format = "trl"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> TrlRollouts:
        lengths = cls.text_options(options)
        files = list_files(path, (".parquet",), "TRL completions .parquet files")
        schema = _schema(files[0])
        text_column = options.columns.get("uid_text", "prompt")
        uid_column = options.columns.get("uid")
        for name in (text_column, "completion", *([uid_column] if uid_column else [])):
            if name not in schema.names:
                raise AggscopeError(
                    f"{files[0]}: no {name!r} column (columns: {', '.join(schema.names)}); not a TRL completions file"
                )
        not_rewards = {*_NOT_REWARDS, text_column, "completion", *([uid_column] if uid_column else [])}
        numeric = [
            f.name for f in schema if (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)) and f.name not in not_rewards
        ]
        reward_col = options.columns.get("reward", options.reward_col)
        if reward_col is not None:
            if reward_col not in schema.names:
                raise AggscopeError(
                    f"{files[0]}: --reward-col {reward_col!r} is not a column (reward columns: {', '.join(numeric) or 'none'})"
                )
            reward_columns = [reward_col]
        else:
            reward_columns = numeric
        estimator = options.advantage or (None if "advantage" in schema.names else "grpo")
        if estimator is not None and not reward_columns:
            raise AggscopeError(f"{files[0]}: no advantage column and no reward columns to rebuild advantages from")
        has_step = "step" in schema.names
        plan, notes = _plan(files) if has_step else plan_by_name(files)
        reward_name = " + ".join(reward_columns) if reward_columns else None
        columns = {
            "uid" if uid_column else "uid_text": uid_column or text_column,
            "advantages": "advantage" if estimator is None else f"{estimator}({reward_name})",
            "response_length": "completion (text)",
            "step": "step" if has_step else "(file name)",
        }
        if reward_name:
            columns["reward"] = reward_name
            if len(reward_columns) > 1:
                notes.append(
                    f"reward = {reward_name} (TRL's default equal weights, missing values skipped); pick one with --reward-col"
                )
        if estimator is not None:
            notes.append(estimator_note(estimator, reward_name or "reward"))
        notes.append(lengths.describe())
        if not uid_column:
            notes.append("prompt groups are the rows with the exact same prompt text")
        settings = TrlSettings(lengths, estimator, text_column, uid_column, tuple(reward_columns), has_step, reward_col is None)
        return cls(
            path, plan, settings=settings, columns=columns, notes=notes, has_groups=True, lengths_estimated=lengths.estimated
        )

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        settings = self.settings
        wanted = [settings.text_column, "completion", *settings.reward_columns]
        wanted += [c for c in ("step", "advantage", settings.uid_column) if c is not None and c not in wanted]
        tables = []
        for file in files:
            names = _schema(file).names
            missing = [c for c in wanted if c not in names and c not in ("step", "advantage")]
            if missing:
                raise AggscopeError(f"{file}: no {missing[0]!r} column, which {files[0]} has")
            table = pq.read_table(file, columns=[c for c in wanted if c in names])
            if settings.has_step:
                table = table.filter(pc.equal(table.column("step"), step))
            tables.append((file, table))
        table = pa.concat_tables([t for _, t in tables], promote_options="permissive")
        source = self.step_source(files)
        for name in [settings.text_column, "completion", *([settings.uid_column] if settings.uid_column else [])]:
            column = table.column(name)
            if column.null_count:
                row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise AggscopeError(f"{source}: step {step} row {row}: column {name!r} is null")
        rewards = None
        if settings.reward_columns:
            stacked = np.stack([table.column(c).cast(pa.float64()).to_numpy() for c in settings.reward_columns])  # [n_cols, n]
            rewards = np.nansum(stacked, axis=0) if settings.reward_sum else stacked[0]
        return self.text_batch(
            step,
            source,
            prompts=_as_text(table.column(settings.text_column).combine_chunks(), settings.text_column, source),
            responses=_as_text(table.column("completion").combine_chunks(), "completion", source),
            uid_values=table.column(settings.uid_column).combine_chunks() if settings.uid_column else None,
            rewards=rewards,
            row_advantages=None if settings.estimator is not None else table.column("advantage").cast(pa.float64()).to_numpy(),
        )


def _as_text(column: pa.Array, name: str, source: str) -> pa.Array:
    """A text column as text; chat messages (a list of role and content per row) as their lines."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    value = column.type.value_type if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) else None
    if value is None or not pa.types.is_struct(value) or value.get_field_index("content") < 0:
        raise AggscopeError(f"{source}: column {name!r} has type {column.type}; expected text or chat messages (role, content)")
    texts = [  # a loop over rows: conversational logs are small (decoded text, one row per completion)
        "\n".join(f"{m.get('role') or ''}: {m.get('content') or ''}" for m in row or [] if m) for row in column.to_pylist()
    ]
    return pa.array(texts, type=pa.string())


def _schema(file: str) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (OSError, pa.ArrowException) as exc:
        raise AggscopeError(f"{file}: not a Parquet file ({first_line(exc)})") from None


def _plan(files: list[str]) -> tuple[dict[int, list[str]], list[str]]:
    """Which files hold which steps, from their ``step`` columns (read alone: cheap)."""
    plan: dict[int, list[str]] = {}
    for file in files:
        column = pq.read_table(file, columns=["step"]).column("step")
        if column.null_count or not pa.types.is_integer(column.type):
            raise AggscopeError(f"{file}: column 'step' must hold whole numbers, without nulls")
        for step in pc.unique(column).to_pylist():
            plan.setdefault(int(step), []).append(file)
    return plan, []
