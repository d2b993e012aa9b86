"""TRL ``GRPOConfig(log_completions=True)``: ``{output_dir}/completions/completions_{step:05d}.parquet``.

What TRL 1.16 writes (``GRPOTrainer.log``, every ``logging_steps`` optimizer steps, on the main
process): ``step`` (``state.global_step``, 1 for the first optimizer step), ``prompt`` and
``completion`` (decoded with ``skip_special_tokens=True``; chat messages for conversational
datasets), one column per reward function (NaN where it returned None), any ``log_extra`` columns,
and ``advantage``. The rows are the latest generation batch, in generation order (before the
shuffle that cuts it into micro-batches).

- Groups: the exact ``prompt`` text hashed to a short stable uid (``aggscope.core.batch.text_uid``;
  chat messages: their list hashed, shown as ``role: content`` lines), one group per run of
  consecutive rows with that text (``generation_groups``).
- Reward: the sum of the reward columns, skipping missing (NaN) values as TRL's ``nansum`` with
  its default equal weights does; NaN where every column is NaN (TRL leaves such a row out of its
  group's baseline and gives it advantage 0). Or the one column named by ``--reward-col``.
- Advantages: the logged ``advantage``, broadcast over the completion's tokens; rebuilt from the
  reward with ``--advantage`` when given or when the column is missing, as TRL computes them
  (``aggscope.core.advantages.trl_group_advantages``; ``rloo`` as verl).
- Lengths: from the ``completion`` text (``--tokenizer`` or the estimate of ``readers.text``), plus
  the end-of-sequence token TRL trains (its ``completion_mask`` keeps the first EOS) but decodes
  away (``--eos-trained``, the default); a completion of ``--max-completion-length`` tokens was cut
  there and gets none.
- Repeated generations: with ``steps_per_generation > gradient_accumulation_steps`` (or
  ``num_iterations > 1``) TRL writes the same generation batch into the file of every optimizer
  step it feeds; a file equal to the previous one (apart from ``step``) is read once, under the
  first step, with a note naming the steps it fed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aggscope.core.advantages import outcome_advantages, trl_group_advantages
from aggscope.core.batch import StepBatch, text_uid, uid_codes
from aggscope.errors import AggscopeError, first_line
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, Unrecoverable
from aggscope.io.readers.base import plan_by_name
from aggscope.io.readers.text import TextDumpRollouts, TextSettings, hashed_uids, tokenizer_eos

_NOT_REWARDS = ("step", "advantage")
_ESTIMATOR_NOTES = {
    "grpo": "(r - nanmean) / (nanstd + 1e-4) per group, as TRL's scale_rewards='group'",
    "dr_grpo": "r - nanmean per group, as TRL's scale_rewards='none'",
    "rloo": "r - mean of the others (verl's RLOO; TRL has none)",
}


@dataclass(frozen=True)
class TrlSettings(TextSettings):
    """The columns a TRL dump is read from, and how its token counts are made.

    Attributes:
        reward_sum: True to sum the reward columns (TRL's default), False to take the one chosen.
        eos_trained: count each completion's trained end-of-sequence token.
        max_completion_length: completions of this many text tokens were cut there (no EOS).
    """

    text_column: str
    uid_column: str | None
    reward_columns: tuple[str, ...]
    has_step: bool
    reward_sum: bool
    eos_trained: bool = True
    max_completion_length: int | None = None


class TrlRollouts(TextDumpRollouts[TrlSettings]):
    format = "trl"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> TrlRollouts:
        lengths = cls.text_options(options, eos=True)
        files = list_files(path, (".parquet",), "TRL completions .parquet files")
        schema = _schema(files[0])
        text_column = options.columns.get("uid_text", "prompt")
        uid_column = options.columns.get("uid")
        for name in (text_column, "completion", *([uid_column] if uid_column else [])):
            if name not in schema.names:
                raise AggscopeError(
                    f"{files[0]}: no {name!r} column (columns: {', '.join(schema.names)}); not a TRL completions file"
                )
        reward_columns, reward_col = _reward_columns(schema, files[0], options, {text_column, "completion", uid_column})
        estimator = options.advantage or (None if "advantage" in schema.names else "grpo")
        if estimator is not None and not reward_columns:
            raise AggscopeError(f"{files[0]}: no advantage column and no reward columns to rebuild advantages from")
        has_step = "step" in schema.names
        plan, notes = _plan(files) if has_step else plan_by_name(files)
        plan, repeats = _read_generations_once(plan)
        notes += _repeat_notes(repeats)
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
            notes.append(f"advantages rebuilt from {reward_name!r} with {estimator}: {_ESTIMATOR_NOTES[estimator]}")
        notes.append(lengths.describe())
        eos_trained, eos_notes = _eos_rule(options, lengths.tokenizer_path)
        notes += eos_notes
        if not uid_column:
            notes.append(
                "prompt groups are the runs of consecutive rows with the exact same prompt text (TRL's generation order); "
                "the same text in a later run is another group, uid suffixed #k"
            )
        settings = TrlSettings(
            lengths,
            estimator,
            text_column,
            uid_column,
            tuple(reward_columns),
            has_step,
            reward_col is None,
            eos_trained,
            options.max_completion_length,
        )
        rollouts = cls(
            path, plan, settings=settings, columns=columns, notes=notes, has_groups=True, lengths_estimated=lengths.estimated
        )
        logged = sorted([*rollouts.steps, *(step for later in repeats.values() for step in later)])
        rollouts.unrecoverable = trl_unrecoverable(settings, logged, repeats)
        return rollouts

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        settings = self.settings
        table = self._step_table(step, files)
        source = self.step_source(files)
        for name in [settings.text_column, "completion", *([settings.uid_column] if settings.uid_column else [])]:
            column = table.column(name)
            if column.null_count:
                row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise AggscopeError(f"{source}: step {step} row {row}: column {name!r} is null")
        rewards = _rewards(table, settings) if settings.reward_columns else None
        prompts, prompt_uids = _prompt_texts(table.column(settings.text_column).combine_chunks(), settings.text_column, source)
        completions = _completion_texts(table.column("completion").combine_chunks(), source)
        if settings.uid_column:
            uid_values = table.column(settings.uid_column).combine_chunks()
        else:
            uid_values = generation_groups(np.asarray(prompt_uids) if prompt_uids is not None else hashed_uids(prompts))
        row_advantages = None
        if settings.estimator is None:
            advantage = table.column("advantage")
            if not (
                pa.types.is_floating(advantage.type) or pa.types.is_integer(advantage.type) or pa.types.is_null(advantage.type)
            ):
                raise AggscopeError(f"{source}: column 'advantage' has type {advantage.type}; expected numbers")
            row_advantages = advantage.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            assert rewards is not None
            row_advantages = _rebuilt_advantages(rewards, uid_values, prompts, settings.estimator)
        return self.text_batch(
            step,
            source,
            prompts=prompts,
            responses=completions,
            uid_values=uid_values,
            rewards=rewards,
            row_advantages=row_advantages,
            lengths=trained_lengths(settings.lengths.count(completions), settings.eos_trained, settings.max_completion_length),
        )

    def _step_table(self, step: int, files: list[str]) -> pa.Table:
        settings = self.settings
        wanted = [settings.text_column, "completion", *settings.reward_columns]
        wanted += [c for c in ("step", "advantage", settings.uid_column) if c is not None and c not in wanted]
        tables = []
        for file in files:
            names = _schema(file).names
            missing = [c for c in wanted if c not in names and c not in ("step", "advantage")]
            if missing:
                raise AggscopeError(f"{file}: no {missing[0]!r} column, which {self.files[0]} has")
            table = pq.read_table(file, columns=[c for c in wanted if c in names])
            if settings.has_step:
                table = table.filter(pc.equal(table.column("step"), step))
            tables.append(table)
        return pa.concat_tables(tables, promote_options="permissive")


def generation_groups(prompt_uids: np.ndarray) -> pa.Array:
    """``[n]`` group uids: TRL's groups are runs of consecutive rows of one prompt, in generation order.

    ``RepeatSampler`` repeats each prompt ``num_generations`` times in a row and TRL logs the batch
    before shuffling it, so a prompt text seen again in a later run is another group: its uid gets
    ``#k`` for its ``k``-th run (a prompt repeated in adjacent groups stays one run).
    """
    uids = np.asarray(prompt_uids, dtype=object)
    if uids.size == 0:
        return pa.array([], type=pa.string())
    is_start = np.concatenate([[True], uids[1:] != uids[:-1]])  # [n]
    seen: dict[str, int] = {}
    labels = []
    for uid in uids[is_start]:  # a loop over runs: one per prompt group
        k = seen.get(uid, 0)
        seen[uid] = k + 1
        labels.append(uid if k == 0 else f"{uid}#{k}")
    run_of_row = np.cumsum(is_start) - 1  # [n]
    return pa.array(np.asarray(labels, dtype=object)[run_of_row].tolist(), type=pa.string())


def trained_lengths(text_counts: np.ndarray, eos_trained: bool, max_completion_length: int | None) -> np.ndarray:
    """``[n]`` trained tokens per completion: its text's tokens, plus the EOS TRL trains.

    TRL's ``completion_mask`` keeps every token up to and including the first EOS; a completion
    that reached ``max_completion_length`` without one was cut there, so it has no EOS to add.
    """
    counts = np.asarray(text_counts, dtype=np.int64)
    if not eos_trained:
        return counts
    ended = np.ones(counts.shape, dtype=bool) if max_completion_length is None else counts < max_completion_length
    return counts + ended


def _eos_rule(options: ReadOptions, tokenizer_path: str | None) -> tuple[bool, list[str]]:
    """Whether to count each completion's trained EOS, and the notes saying so."""
    eos = tokenizer_eos(tokenizer_path) if tokenizer_path is not None else None
    if options.eos_trained is False:
        return False, ["--no-eos-trained: the end-of-sequence token TRL trains at the end of each completion is not counted"]
    if options.eos_trained is None and tokenizer_path is not None and eos is None:
        return False, [f"the tokenizer at {tokenizer_path} has no EOS token: none counted (--eos-trained counts one anyway)"]
    which = f"{eos!r}" if eos is not None else "the EOS token"
    notes = [
        f"each completion counts one more token than its text, {which}: TRL trains the first EOS but logs the text "
        "decoded without it (--no-eos-trained to leave it out); a completion of only an EOS is 1 token, not empty"
    ]
    cap = options.max_completion_length
    if cap is not None:
        notes.append(f"completions of {cap} tokens (--max-completion-length) were cut there: no EOS counted for them")
    return True, notes


def _reward_columns(
    schema: pa.Schema, file: str, options: ReadOptions, not_rewards: set[str | None]
) -> tuple[list[str], str | None]:
    """The reward columns (every numeric column but step and advantage, or the one chosen)."""
    skip = {*_NOT_REWARDS, *not_rewards}
    numeric = [f.name for f in schema if (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)) and f.name not in skip]
    reward_col = options.columns.get("reward", options.reward_col)
    if reward_col is None:
        return numeric, None
    if reward_col not in schema.names:
        raise AggscopeError(
            f"{file}: --reward-col {reward_col!r} is not a column (reward columns: {', '.join(numeric) or 'none'})"
        )
    return [reward_col], reward_col


def _rewards(table: pa.Table, settings: TrlSettings) -> np.ndarray:
    """``[n]`` rewards: TRL's ``nansum`` over the reward columns, NaN where every column is NaN."""
    stacked = np.stack(
        [table.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in settings.reward_columns]
    )  # [n_cols, n]
    if not settings.reward_sum:
        return stacked[0]
    unscorable = np.isnan(stacked).all(axis=0)  # every reward function returned None
    return np.where(unscorable, np.nan, np.nansum(stacked, axis=0))


def _rebuilt_advantages(rewards: np.ndarray, uid_values: pa.Array | None, prompts: pa.Array, estimator: str) -> np.ndarray:
    """``[n]`` advantages from the rewards per prompt group, with TRL's NaN-aware statistics."""
    uids = np.asarray(uid_values.cast(pa.string()).to_pylist(), dtype=object) if uid_values is not None else hashed_uids(prompts)
    codes, _ = uid_codes(uids)
    if estimator == "rloo":
        return outcome_advantages(rewards, codes, "rloo")
    return trl_group_advantages(rewards, codes, scale=estimator == "grpo")


# ---- text of plain and conversational rows --------------------------------------------------------
def _is_text(column: pa.Array) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def _messages(column: pa.Array, name: str, source: str) -> list[list[dict]]:
    """Each row's chat messages (a list of structs with ``content``), or a one-line error."""
    value = column.type.value_type if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) else None
    if value is None or not pa.types.is_struct(value) or value.get_field_index("content") < 0:
        raise AggscopeError(f"{source}: column {name!r} has type {column.type}; expected text or chat messages (role, content)")
    return [[m for m in row or [] if m] for row in column.to_pylist()]  # a loop over rows: small decoded-text logs


def _content_text(content: object) -> str:
    """A message's content as text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _prompt_texts(column: pa.Array, name: str, source: str) -> tuple[pa.Array, pa.Array | None]:
    """Prompt texts for display, and for chat messages uids hashed from the message list itself."""
    if _is_text(column):
        return column, None
    rows = [[(str(m.get("role") or ""), _content_text(m.get("content"))) for m in row] for row in _messages(column, name, source)]
    texts = ["\n".join(f"{role}: {content}" for role, content in row) for row in rows]
    uids = [text_uid(json.dumps(row, ensure_ascii=False)) for row in rows]
    return pa.array(texts, type=pa.string()), pa.array(uids, type=pa.string())


def _completion_texts(column: pa.Array, source: str) -> pa.Array:
    """Completion texts: for chat messages, their contents joined, the text TRL decoded the tokens to."""
    if _is_text(column):
        return column
    rows = _messages(column, "completion", source)
    return pa.array(["".join(_content_text(m.get("content")) for m in row) for row in rows], type=pa.string())


# ---- files and steps ------------------------------------------------------------------------------
def _schema(file: str) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (OSError, pa.ArrowException) as exc:
        raise AggscopeError(f"{file}: not a Parquet file ({first_line(exc)})") from None
    except UnicodeDecodeError:
        raise AggscopeError(
            f"{file}: not a Parquet file aggscope can read (a column name in its footer is not UTF-8 text)"
        ) from None


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


def _generation(file: str) -> bytes | None:
    """A digest of a one-step file's rows without ``step`` (what repeats when TRL logs one generation twice).

    Compared as Arrow IPC bytes rather than with ``Table.equals``, which takes NaN (a reward
    function's None) as unequal to itself.
    """
    table = pq.read_table(file)
    if "step" in table.column_names:
        if pc.count_distinct(table.column("step")).as_py() > 1:
            return None
        table = table.drop_columns(["step"])
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).digest()


def _read_generations_once(plan: dict[int, list[str]]) -> tuple[dict[int, list[str]], dict[int, list[int]]]:
    """The plan with each step that repeats the previous step's generation left out.

    Returns:
        The plan, and ``{first step: [later steps holding the same generation]}``.
    """
    kept: dict[int, list[str]] = {}
    repeats: dict[int, list[int]] = {}
    first, previous = None, None
    for step in sorted(plan):
        files = plan[step]
        generation = _generation(files[0]) if len(files) == 1 else None
        if generation is not None and first is not None and generation == previous:
            repeats.setdefault(first, []).append(step)
            continue
        kept[step] = files
        first, previous = step, generation
    return kept, repeats


def _repeat_notes(repeats: dict[int, list[int]]) -> list[str]:
    if not repeats:
        return []
    said = "; ".join(f"step {first} (also {', '.join(map(str, later))})" for first, later in repeats.items())
    return [
        f"{sum(map(len, repeats.values()))} step file(s) repeat the generation of the step before: {said}. TRL writes a "
        "generation into every optimizer step it feeds (steps_per_generation > gradient_accumulation_steps, or "
        "num_iterations > 1); each generation is read once, under its first step"
    ]


def trl_unrecoverable(settings: TrlSettings, steps: list[int], repeats: dict[int, list[int]]) -> tuple[Unrecoverable, ...]:
    """What a TRL completions dump cannot tell, from what ``GRPOTrainer`` 1.16 does after logging."""
    facts = [
        Unrecoverable(
            "the order TRL shuffles each generation batch into before cutting it into micro-batches (shuffle_sequence_dict, "
            "global torch RNG)",
            "bnpo's per-micro-batch token denominators (aggscope draws an order and says so); step sums of the other "
            "loss types do not depend on it",
            ("token_mean_legacy",),
        ),
        Unrecoverable(
            "which completions mask_truncated_completions=True zeroed (TRL logs them with their advantage)",
            "with that option, truncated completions train no token in TRL but count here, in every denominator too",
            ("*",),
        ),
        Unrecoverable(
            "the importance ratio of every optimizer step after the first on a generation (num_iterations > 1, or "
            "steps_per_generation > gradient_accumulation_steps: the policy has moved; no log-probabilities logged)",
            "per-token gradients (w x A x ratio, clipped) of those steps; the weights are unaffected",
        ),
        Unrecoverable(
            "the generations trained between logged steps when logging_steps > 1 (TRL writes only the latest generation "
            "at each logging step)",
            _gaps(steps),
        ),
        Unrecoverable(
            "which tokens of a multi-turn completion were tool output (TRL's tool_mask)",
            "tool output in a completion's text counts here as trained tokens",
            ("*",),
        ),
    ]
    if settings.uid_column is None:
        facts.append(
            Unrecoverable(
                "where one group ends and the next begins when a prompt is drawn into two adjacent groups (num_generations "
                "is not logged)",
                "such groups read as one: prompt_mean and rebuilt advantages",
                ("prompt_mean",),
            )
        )
    if settings.lengths.estimated:
        facts.append(Unrecoverable("the completions' token ids (text only)", "every token count: estimated", ("*",)))
    if settings.eos_trained and settings.max_completion_length is None:
        facts.append(
            Unrecoverable(
                "which completions were cut at max_completion_length (they have no EOS token)",
                "each cut completion counts one token too many (give --max-completion-length)",
                ("*",),
            )
        )
    if repeats:
        facts.append(
            Unrecoverable(
                "which rows of a repeated generation fed which of its optimizer steps (shuffled)",
                "per-optimizer-step numbers of every loss type: the generation is one step here",
                ("*",),
            )
        )
    if settings.estimator is not None:
        facts.append(
            Unrecoverable(
                "TRL's reward_weights, scale_rewards and multi_objective_aggregation (not logged)",
                "the rebuilt advantages assume equal weights and sum_then_normalize",
            )
        )
    return tuple(facts)


def _gaps(steps: list[int]) -> str:
    missing = sorted(set(range(steps[0], steps[-1] + 1)) - set(steps)) if steps else []
    if not missing:
        return "totals over steps: they cover the logged generations only (this dump has no gap between its steps)"
    shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
    return f"totals over steps: they cover the logged generations only (steps {shown} are not in this dump)"
