"""Atropos ScoredDataGroup JSON lines (``--env.data_path_to_save_groups``): one group per line.

Fields per line: ``tokens`` (a token list per sample), ``masks`` (per sample: ``-100`` where the
token is not trained on, else the token id), ``scores`` (one per sample), optional
``advantages`` (per token per sample, or one per sample), optional ``token_weights`` and
``token_scores`` (per token per sample: not used here; ``unused_fields`` names them), and others
(``messages``, ``ref_logprobs``, ``overrides``, ...) that are not needed here.

- Groups: the line; the uid is ``{file stem}:{line number}``. Samples keep their line order.
- A sequence is a sample's whole token list (prompt included); its loss tokens are the ones whose
  mask is not ``-100``.
- Advantages: the line's ``advantages`` where present; else (or with ``--advantage``) rebuilt from
  the line's scores with the estimator (GRPO by default, as for verl) and broadcast over the loss
  tokens.
- Step: the number in the file name, else the file's position (Atropos writes no step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from aggscope.core.advantages import outcome_advantages
from aggscope.core.batch import StepBatch, offsets_of
from aggscope.errors import AggscopeError
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, reject_options
from aggscope.io.readers.base import (
    DumpRollouts,
    build_batch,
    estimator_note,
    plan_by_name,
)
from aggscope.io.readers.jsonl import JsonlTable, first_record, read_jsonl

NOT_TRAINED = -100
_PER_TOKEN = pa.list_(pa.list_(pa.float64()))
_PER_SAMPLE = pa.list_(pa.float64())
# Per-token fields that some Atropos environments write (environments/community/selcube) and the weights
# here leave aside (``check``: unused_dump_field). No Atropos trainer reads them: atroposlib's
# ScoredDataGroup and the API server's ScoredData (snapshot 296a0bc) have no such field, so the server
# drops them before a trainer sees the group; example_trainer (data.py) reads no per-token weight or score.
_NO_TRAINER = (
    " No Atropos trainer reads it (the API server's ScoredData has no such field and drops it, atropos 296a0bc), "
    "so --use-dump-weights leaves it out too; only a trainer of your own would."
)
UNUSED_FIELDS = {
    "token_weights": "a weight per token per sample, which a trainer that reads it multiplies into each token's loss term."
    + _NO_TRAINER,
    "token_scores": "a score per token per sample (a dense reward), which a trainer that reads it turns into per-token "
    "advantages in place of the sample's one score." + _NO_TRAINER,
}


@dataclass(frozen=True)
class AtroposSettings:
    """What an Atropos dump is read with.

    Attributes:
        score_field: the per-sample scores (rewards).
        advantage_type: the Arrow type of ``advantages`` (per token per sample, or one per sample).
        estimator: the estimator rebuilding every advantage from the scores, or None to take the
            logged advantages (rebuilt with GRPO only for lines without them).
    """

    score_field: str
    advantage_type: pa.DataType
    estimator: str | None


class AtroposRollouts(DumpRollouts[AtroposSettings]):
    format = "atropos"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> AtroposRollouts:
        reject_options(options, cls.format)
        files = list_files(path, (".jsonl",), "Atropos .jsonl files")
        first = first_record(files[0])
        score_field = options.reward_col or "scores"
        for name in ("tokens", "masks", score_field):
            if name not in first:
                raise AggscopeError(
                    f"{files[0]}: first line has no {name!r} field (fields: {', '.join(first)}); not an Atropos group dump"
                )
        given = first.get("advantages")
        per_sample = isinstance(given, list) and bool(given) and not isinstance(given[0], list)
        plan, notes = plan_by_name(files)
        columns = {
            "uid": "(line)",
            "advantages": "advantages"
            if given is not None and options.advantage is None
            else f"{options.advantage or 'grpo'}({score_field})",
            "loss_mask": "masks != -100",
            "reward": score_field,
            "step": "(file name)",
        }
        estimator = options.advantage or "grpo"
        if given is None or options.advantage is not None:
            notes.append(estimator_note(estimator, score_field))
        settings = AtroposSettings(score_field, _PER_SAMPLE if per_sample else _PER_TOKEN, options.advantage)
        rollouts = cls(path, plan, settings=settings, columns=columns, notes=notes, has_groups=True)
        rollouts.unused_fields = tuple((name, what) for name, what in UNUSED_FIELDS.items() if first.get(name) is not None)
        return rollouts

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        fields = {
            "tokens": pa.list_(pa.list_(pa.int64())),
            "masks": pa.list_(pa.list_(pa.int64())),
            self.settings.score_field: pa.list_(pa.float64()),
            "advantages": self.settings.advantage_type,
        }
        parts = [read_jsonl(file, fields) for file in files]
        lengths, masks, rewards, advantages, uids = [], [], [], [], []
        for part in parts:
            part.require(["tokens", "masks", self.settings.score_field])
            length, mask, reward, advantage, group = self._decode(part)
            lengths.append(length)
            masks.append(mask)
            rewards.append(reward)
            advantages.append(advantage)
            uids.append(group)
        return build_batch(
            step,
            self.step_source(files),
            lengths=np.concatenate(lengths),
            loss_mask=np.concatenate(masks),
            token_advantages=np.concatenate(advantages),
            uids=np.concatenate(uids),
            rewards=np.concatenate(rewards),
        )

    def _decode(self, part: JsonlTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One file's samples: lengths, loss mask, rewards, per-token advantages, uids."""
        tokens = part.column("tokens")
        samples_per_line = _list_lengths(tokens)  # [n_lines]
        sample_tokens = tokens.flatten()
        lengths = _list_lengths(sample_tokens)  # [n_samples]
        masks = part.column("masks")
        _same_lengths(part, samples_per_line, _list_lengths(masks), "masks", "samples", "tokens")
        _same_lengths(part, lengths, _list_lengths(masks.flatten()), "masks", "tokens", "tokens", per_sample=samples_per_line)
        scores = part.column(self.settings.score_field)
        _same_lengths(part, samples_per_line, _list_lengths(scores), self.settings.score_field, "scores", "samples")
        rewards = scores.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        loss_mask = masks.flatten().flatten().to_numpy(zero_copy_only=False) != NOT_TRAINED  # [n_tokens]
        line_of_sample = np.repeat(np.arange(part.num_rows), samples_per_line)
        line_uids = np.char.add(f"{Path(part.path).stem}:", part.lines().astype(str))  # [n_lines]
        uids = line_uids.astype(object)[line_of_sample]
        given = part.column("advantages")
        has_given = ~given.is_null().to_numpy(zero_copy_only=False)  # [n_lines]
        if self.settings.estimator is not None:
            has_given[:] = False
        rebuilt = outcome_advantages(rewards, line_of_sample, self.settings.estimator or "grpo")  # [n_samples]
        advantages = np.where(loss_mask, np.repeat(rebuilt, lengths), 0.0)  # [n_tokens]
        if has_given.any():
            filled = given.fill_null(pa.scalar([], type=given.type)) if given.null_count else given
            given_samples = _list_lengths(filled)
            expected = np.where(has_given, samples_per_line, 0)
            _same_lengths(part, expected, given_samples, "advantages", "entries", "samples")
            sample_given = np.repeat(has_given, samples_per_line)  # [n_samples]
            token_given = np.repeat(sample_given, lengths)  # [n_tokens]
            if pa.types.is_list(given.type.value_type):
                values = filled.flatten()
                _same_lengths(
                    part,
                    lengths[sample_given],
                    _list_lengths(values),
                    "advantages",
                    "values",
                    "tokens",
                    per_sample=np.where(has_given, samples_per_line, 0),
                )
                advantages[token_given] = values.flatten().to_numpy(zero_copy_only=False)
            else:
                per_sample = filled.flatten().to_numpy(zero_copy_only=False)
                spread = np.repeat(per_sample, lengths[sample_given])
                advantages[token_given] = np.where(loss_mask[token_given], spread, 0.0)
        return lengths, loss_mask, rewards, advantages, uids


def _list_lengths(array: pa.Array) -> np.ndarray:
    offsets = array.offsets.to_numpy().astype(np.int64)
    return np.diff(offsets)


def _same_lengths(
    part: JsonlTable,
    expected: np.ndarray,
    actual: np.ndarray,
    field: str,
    unit: str,
    other: str,
    per_sample: np.ndarray | None = None,
) -> None:
    """One-line error at the first line where ``field`` holds a different count than expected."""
    differs = expected != actual
    if not differs.any():
        return
    index = int(np.flatnonzero(differs)[0])
    if per_sample is None:
        raise AggscopeError(f"{part.where(index)}: {field!r} has {actual[index]} {unit} but there are {expected[index]} {other}")
    sample_offsets = offsets_of(per_sample)  # [n_lines + 1]
    line_row = int(np.searchsorted(sample_offsets[1:], index, side="right"))
    sample = index - int(sample_offsets[line_row])
    raise AggscopeError(
        f"{part.where(line_row)}: sample {sample}: {field!r} has {actual[index]} {unit} but there are {expected[index]} {other}"
    )
