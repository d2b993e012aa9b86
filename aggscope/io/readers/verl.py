"""verl ``trainer.rollout_data_dir``: ``{global_step}.jsonl``, one line per sample.

Fields: ``input`` and ``output`` (decoded text), ``score`` (the sum of the token-level scores),
``step``, optional ``uid``, ``gts``, ``request_id`` and reward extras (``acc``, ``pred``, ...).

- Groups: the ``uid`` field where present, else the exact ``input`` text hashed to a short stable
  uid (``aggscope.core.batch.text_uid``; two prompts of the same text then share a group). The v1
  trainer (verl 0.9.1's default) writes its sample keys ``{prompt uid}_{session}_{index}`` there,
  sorted by key: they are grouped by the prompt uid, its padding rows dropped
  (``aggscope.io.readers.verl_keys``). The classic trainer writes no uid, in ``balance_batch``
  order (the order it trained in), so the samples of one prompt are not contiguous; groups are
  numbered in order of first appearance.
- Step: the ``step`` field (one step per file, as verl writes it), else the number in the name.
- Advantages: rebuilt from ``score`` (or ``--reward-col``) with ``--advantage`` (default GRPO,
  verl's formula), broadcast over the response tokens; with v1 keys, from each session's final
  output as verl does.
- Lengths: from the ``output`` text (``--tokenizer`` or the estimate of ``readers.text``). In
  multi-turn runs ``output`` also holds tool responses that verl does not train on: where the text
  shows them as ChatML tool turns, their tokens are counted at their positions as not trained
  (``aggscope.io.readers.verl_tools``; ``--no-tool-mask`` counts them as loss tokens), and a note
  per step says how many spans and tokens; in a template not recognised they stay loss tokens, and
  a note says how many outputs hold them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggscope.core.batch import StepBatch
from aggscope.errors import AggscopeError
from aggscope.fmt import number, plural
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, Unrecoverable
from aggscope.io.readers.base import estimator_note, plan_by_name
from aggscope.io.readers.facts import BATCH_MEMBERSHIP_MODES, config_fact
from aggscope.io.readers.jsonl import JsonlTable, first_record, read_jsonl, sniffed_type
from aggscope.io.readers.text import TextDumpRollouts, TextSettings
from aggscope.io.readers.verl_keys import V1_KEY, V1Keys, parse_v1_keys, v1_advantages
from aggscope.io.readers.verl_tools import TOOL_MARKER, chatml_spans, marker_rows, tool_masked

TOOL_MASKED = (
    "tool responses (ChatML tool turns in the decoded text: <tool_response> blocks between a user and an "
    "assistant header), which verl's response_mask leaves out of the loss. Their tokens, with the three special "
    "tokens of each turn the decoded text lost, are counted at their positions as not trained (the notes say how "
    "many spans and tokens per step; --no-tool-mask counts them as loss tokens)."
)
TOOL_COUNTED = (
    "tool responses ({why}), which verl's response_mask leaves out of the loss but which are counted here as loss "
    "tokens: loss-token counts and length-normalised weights include them."
)


@dataclass(frozen=True)
class VerlSettings(TextSettings):
    """The fields a verl dump is read from.

    Attributes:
        fields: ``{field: Arrow type}`` read from every line.
        names: the ``(prompt text, uid or None, reward)`` fields.
        step_from_field: True when each file's step is its ``step`` field (else its name).
        v1_keys: True when the uids are the v1 trainer's ``{prompt uid}_{session}_{index}`` keys.
        tool_mask: True to count the ChatML tool turns of the outputs as not trained.
    """

    fields: Mapping[str, pa.DataType]
    names: tuple[str, str | None, str]
    step_from_field: bool
    v1_keys: bool = False
    tool_mask: bool = True


class VerlRollouts(TextDumpRollouts[VerlSettings]):
    format = "verl"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> VerlRollouts:
        lengths = cls.text_options(options)
        files = list_files(path, (".jsonl",), "verl .jsonl files")
        first = first_record(files[0])
        reward_field = options.columns.get("reward", options.reward_col or "score")
        uid_field = options.columns.get("uid", "uid")
        text_field = options.columns.get("uid_text", "input")
        required = (text_field, "output", reward_field, *([uid_field] if "uid" in options.columns else []))
        for name in required:
            if name not in first:
                raise AggscopeError(
                    f"{files[0]}: first line has no {name!r} field (fields: {', '.join(first)}); "
                    "not a verl rollout_data_dir dump, or choose the reward with --reward-col"
                )
        has_uid = uid_field in first and first[uid_field] is not None
        v1_keys = has_uid and "uid" not in options.columns and V1_KEY.fullmatch(str(first[uid_field])) is not None
        plan, notes, step_from_field = _plan(files)
        estimator = options.advantage or "grpo"
        columns = {
            "uid" if has_uid else "uid_text": uid_field if has_uid else text_field,
            "advantages": f"{estimator}({reward_field})",
            "reward": reward_field,
            "response_length": "output (text)",
            "step": "step" if step_from_field else "(file name)",
        }
        notes = [
            *notes,
            estimator_note(estimator, reward_field),
            lengths.describe(),
            _tool_note(tool_mask := options.tool_mask is not False),
        ]
        if v1_keys:
            notes.append(
                "uids are verl v1 sample keys {prompt uid}_{session}_{index}: grouped by the prompt uid; rows are "
                "sorted by key, not in the order verl trained them"
            )
        if not has_uid:
            notes.append(
                "no uid field: prompt groups are the rows with the exact same input text, so two prompts of the same "
                "text (different uids in verl) merge into one group"
            )
        fields = {
            text_field: pa.string(),
            "output": pa.string(),
            reward_field: sniffed_type(first[reward_field], reward_field, files[0], numeric=True),
            "step": pa.int64(),
        }
        if has_uid:
            fields[uid_field] = sniffed_type(first[uid_field], uid_field, files[0], numeric=False)
        names = (text_field, uid_field if has_uid else None, reward_field)
        settings = VerlSettings(lengths, estimator, fields, names, step_from_field, v1_keys, tool_mask)
        # The first file is read once: here, for the tool responses it holds, then given to its step (``load_once``).
        first_table = read_jsonl(files[0], fields)
        rollouts = cls(
            path,
            plan,
            settings=settings,
            columns=columns,
            notes=notes,
            has_groups=True,
            lengths_estimated=lengths.estimated,
            loaded=(files[0], first_table),
        )
        rollouts.unrecoverable = verl_unrecoverable(v1_keys=v1_keys, has_uid=has_uid)
        rollouts.used_fields, rollouts.unused_fields = _tool_fields(first_table, tool_mask)
        return rollouts

    def _read_file(self, file: str) -> JsonlTable:
        return read_jsonl(file, self.settings.fields)

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        text_field, uid_field, reward_field = self.settings.names
        parts = [self.load_once(file, self._read_file) for file in files]
        for part in parts:
            part.require([name for name in (text_field, "output", reward_field, uid_field) if name is not None])
            if self.settings.step_from_field:
                _check_step(part, step)
        outputs = pa.concat_arrays([p.column("output") for p in parts])
        prompts = pa.concat_arrays([p.column(text_field) for p in parts])
        rewards = pa.concat_arrays([p.column(reward_field).cast(pa.float64()) for p in parts]).to_numpy(zero_copy_only=False)
        uid_values = None if uid_field is None else pa.concat_arrays([p.column(uid_field) for p in parts])
        if not self.settings.v1_keys or uid_values is None:
            return self.text_batch(
                step,
                self.step_source(files),
                prompts=prompts,
                responses=outputs,
                uid_values=uid_values,
                rewards=rewards,
                **self._counted(step, outputs),
            )
        keys = _v1_keys(parts, uid_field or "uid")
        keep = ~keys.padding
        if keys.padding.any():
            self._note(
                f"step {step}: dropped {int(keys.padding.sum())} verl padding rows (uid pad<hex>, added by balance_batch; "
                "no loss tokens, score 0)"
            )
        keys, rewards = keys.without_padding(), rewards[keep]
        indices = pa.array(np.flatnonzero(keep))
        kept = outputs.take(indices)
        return self.text_batch(
            step,
            self.step_source(files),
            prompts=prompts.take(indices),
            responses=kept,
            **self._counted(step, kept),
            uid_values=pa.array(keys.prompt_uids.tolist(), type=pa.string()),
            rewards=rewards,
            row_advantages=v1_advantages(rewards, keys, self.settings.estimator or "grpo", self.step_source(files)),
        )

    def _counted(self, step: int, outputs: pa.Array) -> dict[str, np.ndarray | None]:
        """The ``lengths`` and ``loss_mask`` of a step's outputs (tool turns not trained), with the step's notes."""
        if not self.settings.tool_mask:
            with_tools = int(marker_rows(outputs).sum())
            if with_tools:
                self._note(
                    f"step {step}: {number(with_tools)} of {number(len(outputs))} outputs hold tool responses ({TOOL_MARKER}) "
                    "counted as "
                    "loss tokens (--no-tool-mask)"
                )
            return {"lengths": None, "loss_mask": None}
        counted = tool_masked(outputs, self.settings.lengths)
        estimated = ", estimated" if self.settings.lengths.estimated else ""
        if counted.spans:
            cut = f", {number(counted.cut_spans)} of them cut at the output's end" if counted.cut_spans else ""
            self._note(
                f"step {step}: {plural(counted.spans, 'tool span')} ({plural(counted.masked_tokens, 'token')}{estimated}"
                f"{cut}) in {number(counted.rows_with_tools - counted.unrecognised)} of {number(len(outputs))} outputs "
                "counted as not trained (ChatML tool turns: response_mask 0 in verl)"
            )
        if counted.unrecognised:
            self._note(
                f"step {step}: {number(counted.unrecognised)} of {number(len(outputs))} outputs hold tool responses "
                f"({TOOL_MARKER}) but no ChatML tool turn (template not recognised): counted as loss tokens"
            )
        return {"lengths": counted.lengths, "loss_mask": counted.loss_mask}

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


def _tool_note(tool_mask: bool) -> str:
    if not tool_mask:
        return (
            "lengths come from the decoded output text: in multi-turn runs it also holds tool responses that were "
            "not trained on, counted here as loss tokens (--no-tool-mask)"
        )
    return (
        "lengths come from the decoded output text: tool responses it shows as ChatML tool turns are counted as not "
        "trained, as verl's response_mask has them (--no-tool-mask counts them as loss tokens)"
    )


def _tool_fields(first: JsonlTable, tool_mask: bool) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """``(used_fields, unused_fields)`` for the tool responses the first file's outputs hold (none: both empty).

    ``first`` is the first file read with the steps' own fields, so a bad line is told as a step's read tells it."""
    outputs = first.column("output")
    rows = np.flatnonzero(marker_rows(outputs))
    if not rows.size:
        return (), ()
    if not tool_mask:
        return (), (("output", TOOL_COUNTED.format(why="--no-tool-mask")),)
    if not any(chatml_spans(outputs[int(row)].as_py()) for row in rows[:64]):
        return (), (("output", TOOL_COUNTED.format(why=f"{TOOL_MARKER} outside a ChatML tool turn: template not recognised")),)
    return (("output", TOOL_MASKED),), ()


def _plan(files: list[str]) -> tuple[dict[int, list[str]], list[str], bool]:
    """One step per file: the first line's ``step`` field, else the number in the file name."""
    steps = []
    for file in files:
        value = first_record(file).get("step")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise AggscopeError(f"{file}: first line: field 'step' is {value!r}; expected a whole number")
        steps.append(value)
    if all(s is not None for s in steps):
        plan: dict[int, list[str]] = {}
        for file, step in zip(files, steps, strict=True):
            plan.setdefault(int(step), []).append(file)  # type: ignore[arg-type]
        return plan, [], True
    return (*plan_by_name(files), False)


def _check_step(part: JsonlTable, step: int) -> None:
    """Every line of a file holds the step of its first line (verl writes one file per step)."""
    values = part.column("step")
    differs = pc.fill_null(pc.not_equal(values, step), False).to_numpy(zero_copy_only=False)
    if differs.any():
        row = int(np.flatnonzero(differs)[0])
        raise AggscopeError(
            f"{part.where(row)}: step {values[row].as_py()} differs from step {step} of the first line; "
            "aggscope reads one step per verl file ({global_step}.jsonl)"
        )


def _v1_keys(parts: list[JsonlTable], uid_field: str) -> V1Keys:
    """The rows' v1 keys, or one line naming the first row whose uid is not one."""
    values: list[str] = []
    for part in parts:
        column = part.column(uid_field).cast(pa.string()).to_pylist()
        for row, value in enumerate(column):
            if V1_KEY.fullmatch(value) is None:
                raise AggscopeError(
                    f"{part.where(row)}: uid {value!r} is not a verl v1 key {{prompt uid}}_{{session}}_{{index}} like the "
                    "first line's (one dump holds one kind of uid)"
                )
        values.extend(column)
    keys = parse_v1_keys(values)
    assert keys is not None  # every value matched above
    return keys


def verl_unrecoverable(*, v1_keys: bool, has_uid: bool) -> tuple[Unrecoverable, ...]:
    """What a verl ``rollout_data_dir`` dump does not hold, and what it changes."""
    facts = [
        Unrecoverable(
            "the response_mask (which output tokens verl trained: tool responses of multi-turn runs are not trained)",
            "token counts and every per-token weight come from the decoded output text; tool responses shown as "
            "ChatML tool turns are masked as verl masks them (counted piece by piece between the special tokens the "
            "text lost); exact at best with --tokenizer, estimated without",
            ("*",),
        ),
        Unrecoverable(
            "the special tokens of each output (decoded with skip_special_tokens=True: a trained EOS is not in the text)",
            "token counts of EOS-terminated outputs are one short (the final EOS; a ChatML tool turn's is counted), and "
            "the weights of length-normalised modes with them",
            ("*",),
        ),
        Unrecoverable(
            "the KL penalty in the reward (algorithm.use_kl_in_reward) and the log-probabilities",
            "advantages are rebuilt from the score alone, and gradient weights are those at importance ratio 1 "
            "(ppo_epochs > 1 and clipping not modelled)",
        ),
        config_fact("actor.ppo_mini_batch_size, ppo_micro_batch_size_per_gpu, the data-parallel size"),
    ]
    if v1_keys:
        facts.append(
            Unrecoverable(
                "the order verl trained the rows in (the v1 dump is sorted by key; balance_batch's order is not kept)",
                "which rows share a mini-batch and a micro-batch, so the weights of modes that count what their batch "
                "holds, when a step has several mini-batches (or micro-batches); exact with one",
                BATCH_MEMBERSHIP_MODES,
            )
        )
    if not has_uid:
        facts.append(
            Unrecoverable(
                "the prompt uids (the classic trainer writes none)",
                "prompt groups are rebuilt from the input text: two prompts of the same text merge into one group, "
                "changing their rebuilt advantages and prompt_mean's groups",
                ("prompt_mean",),
            )
        )
    return tuple(facts)
