"""NeMo-RL GRPO ``{log_dir}/train_data_step{N}.jsonl``: one line per sample of the training batch.

Fields used: ``token_ids`` (the padded sequence, prompt included), ``token_loss_mask`` (0 on
prompt and padding tokens), ``sample_loss_mask`` (0 = the whole sample was dropped),
``advantages`` (per token), ``rewards``, ``input_lengths`` (the unpadded length) and, with dynamic
sampling, ``filtered_rewards``.

- A sequence is the sample's first ``input_lengths`` tokens (the padding is cut off); the loss mask
  is ``token_loss_mask`` times ``sample_loss_mask``, so a dropped sample stays a row with no loss
  token.
- Groups: runs of consecutive samples with identical prompt tokens (the tokens before the first
  loss token); the uid is a short hash of those tokens, so the same prompt gets the same uid in
  every step, and a prompt that comes back later in the same step gets ``#2``, ``#3``. Without
  ``token_ids`` there are no groups.
- Step: the number in the file name. Reward: ``filtered_rewards`` where present (the rewards of the
  kept samples), else ``rewards``, or ``--reward-col``.
- Advantages: the logged per-token ``advantages``; with ``--advantage`` rebuilt from the reward.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from aggscope.core.batch import StepBatch, mask_as_bool, offsets_of
from aggscope.errors import AggscopeError
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, reject_options
from aggscope.io.readers.base import (
    DumpRollouts,
    build_batch,
    estimator_note,
    plan_by_name,
    rebuild_advantages,
)
from aggscope.io.readers.jsonl import JsonlTable, check_same_lengths, first_record, mask_type, read_jsonl


@dataclass(frozen=True)
class NemoRlSettings:
    """What a NeMo-RL dump is read with.

    Attributes:
        reward_field: the reward field, or None.
        has_tokens: whether lines hold ``token_ids`` (the prompt groups come from them).
        estimator: the estimator rebuilding advantages from the rewards, or None for the logged ones.
    """

    reward_field: str | None
    has_tokens: bool
    estimator: str | None


class NemoRlRollouts(DumpRollouts[NemoRlSettings]):
    format = "nemo-rl"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> NemoRlRollouts:
        reject_options(options, cls.format)
        files = list_files(path, (".jsonl",), "NeMo-RL train_data_step*.jsonl files")
        files = [f for f in files if not f.rsplit("/", 1)[-1].startswith("val_data")] or files
        first = first_record(files[0])
        missing = [name for name in ("advantages", "token_loss_mask") if name not in first]
        if missing:
            raise AggscopeError(
                f"{files[0]}: no {missing[0]!r} field (fields: {', '.join(first)}); aggscope needs NeMo-RL's per-token "
                "training data (advantages, token_loss_mask), which newer NeMo-RL versions log"
            )
        reward_field = options.reward_col or next((f for f in ("filtered_rewards", "rewards") if f in first), None)
        if options.reward_col is not None and options.reward_col not in first:
            raise AggscopeError(f"{files[0]}: --reward-col {options.reward_col!r} is not a field (fields: {', '.join(first)})")
        if options.advantage is not None and reward_field is None:
            raise AggscopeError(f"{files[0]}: no rewards field to rebuild advantages from")
        has_tokens = "token_ids" in first
        if options.advantage is not None and not has_tokens:
            raise AggscopeError(f"{files[0]}: no token_ids, so no prompt groups to rebuild advantages in")
        plan, notes = plan_by_name(files)
        columns = {
            "advantages": "advantages" if options.advantage is None else f"{options.advantage}({reward_field})",
            "loss_mask": "token_loss_mask * sample_loss_mask",
            "response_length": "input_lengths" if "input_lengths" in first else "(list length)",
            "step": "(file name)",
        }
        if has_tokens:
            columns["uid"] = "hash(prompt token_ids)"
        else:
            notes.append("no token_ids field: prompt groups are unknown, so prompt-level modes and checks are unavailable")
        if reward_field is not None:
            columns["reward"] = reward_field
        if options.advantage is not None:
            notes.append(estimator_note(options.advantage, str(reward_field)))
        settings = NemoRlSettings(reward_field, has_tokens, options.advantage)
        return cls(path, plan, settings=settings, columns=columns, notes=notes, has_groups=has_tokens)

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        decoded = []
        for file in files:
            first = first_record(file)  # masks are logged as numbers or true/false: read as this file has them
            fields = {
                "token_loss_mask": pa.list_(mask_type(first.get("token_loss_mask"))),
                "sample_loss_mask": mask_type(first.get("sample_loss_mask")),
                "advantages": pa.list_(pa.float64()),
                "input_lengths": pa.int64(),
                "token_ids": pa.list_(pa.int64()),
            }
            if self.settings.reward_field is not None:
                fields[self.settings.reward_field] = pa.float64()
            decoded.append(self._decode(read_jsonl(file, fields)))
        lengths = np.concatenate([d[0] for d in decoded])
        uids = np.concatenate([d[4] for d in decoded]) if self.settings.has_tokens else None
        rewards = np.concatenate([d[3] for d in decoded]) if self.settings.reward_field is not None else None
        loss_mask = np.concatenate([d[1] for d in decoded])
        source = self.step_source(files)
        token_advantages = row_advantages = None
        if self.settings.estimator is not None:
            assert rewards is not None
            row_advantages = rebuild_advantages(rewards, uids, self.settings.estimator, source)
        else:
            token_advantages = np.concatenate([d[2] for d in decoded])
        return build_batch(
            step,
            source,
            lengths=lengths,
            loss_mask=loss_mask,
            token_advantages=token_advantages,
            row_advantages=row_advantages,
            uids=uids,
            rewards=rewards,
        )

    def _decode(self, part: JsonlTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One file: lengths, loss mask, per-token advantages, rewards and uids of its samples."""
        part.require(["token_loss_mask", "advantages", *(["token_ids"] if self.settings.has_tokens else [])])
        mask_lists = part.column("token_loss_mask")
        adv_lists = part.column("advantages")
        listed = np.diff(mask_lists.offsets.to_numpy().astype(np.int64))  # [n_rows]
        check_same_lengths(part, listed, np.diff(adv_lists.offsets.to_numpy().astype(np.int64)), "advantages", "token_loss_mask")
        if self.settings.has_tokens:
            token_lists = part.column("token_ids")
            check_same_lengths(
                part, listed, np.diff(token_lists.offsets.to_numpy().astype(np.int64)), "token_ids", "token_loss_mask"
            )
        input_lengths = part.column("input_lengths")
        if input_lengths.null_count == len(input_lengths):
            lengths = listed
        else:
            part.require(["input_lengths"])
            lengths = input_lengths.to_numpy().astype(np.int64)
            bad = (lengths > listed) | (lengths < 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise AggscopeError(f"{part.where(row)}: input_lengths is {lengths[row]} but the token lists hold {listed[row]}")
        list_offsets = offsets_of(listed)
        position = np.arange(int(list_offsets[-1])) - np.repeat(list_offsets[:-1], listed)  # [n_listed] index in its row
        keep = position < np.repeat(lengths, listed)  # drops the padding after input_lengths
        offsets = offsets_of(lengths)
        raw_mask = mask_lists.flatten().to_numpy(zero_copy_only=False)[keep]
        trained = mask_as_bool(raw_mask, offsets, lambda row, token: (f"{part.where(row)}: 'token_loss_mask'", f"token {token}"))
        sample_mask = part.column("sample_loss_mask").cast(pa.float64()).fill_null(1.0).to_numpy(zero_copy_only=False)
        loss_mask = trained & np.repeat(sample_mask != 0, lengths)
        self._note_kept_without_tokens(part, sample_mask, trained, offsets)
        advantages = adv_lists.flatten().to_numpy(zero_copy_only=False)[keep]
        rewards = np.zeros(0)
        if self.settings.reward_field is not None:
            part.require([self.settings.reward_field])
            rewards = part.column(self.settings.reward_field).to_numpy(zero_copy_only=False)
        uids = None
        if self.settings.has_tokens:
            tokens = token_lists.flatten().to_numpy(zero_copy_only=False)[keep]
            uids = _prompt_uids(tokens, trained, offsets)
        return lengths, loss_mask, advantages, rewards, uids

    def _note_kept_without_tokens(
        self, part: JsonlTable, sample_mask: np.ndarray, trained: np.ndarray, offsets: np.ndarray
    ) -> None:
        """Say so where the weights of a sample-level loss are estimated: NeMo-RL's ``global_valid_seqs``
        is the sum of ``sample_mask`` (``nemo_rl/models/automodel/data.py``), so a kept sample with no
        trained token still counts, and a fractional mask counts its fraction; aggscope's
        ``sequence_mean_nonempty`` counts the samples with trained tokens."""
        trained_before = np.concatenate([[0], np.cumsum(trained, dtype=np.int64)])  # [n_tokens + 1]
        trained_per_row = trained_before[offsets[1:]] - trained_before[offsets[:-1]]  # [n_rows]
        odd = ((sample_mask != 0) & (trained_per_row == 0)) | ((sample_mask != 0) & (sample_mask != 1))
        if odd.any():
            note = (
                f"{part.where(int(np.flatnonzero(odd)[0]))}: {int(odd.sum())} sample(s) kept with no trained token or a "
                "sample_loss_mask other than 0 or 1; NeMo-RL counts them in a sample-level loss's global_valid_seqs "
                "(the sum of sample_mask): under loss_fn.token_level_loss false the weights of their global batch are estimated"
            )
            if note not in self.notes:
                self.notes.append(note)


def _prompt_uids(tokens: np.ndarray, trained: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[n_rows]`` uids: runs of consecutive rows with the same prompt tokens share one.

    The prompt is a row's tokens before its first trained token (``token_loss_mask``, so a dropped
    sample keeps its prompt).
    """
    n_rows = offsets.size - 1
    lengths = np.diff(offsets)
    first_trained = lengths.copy()  # [n_rows] a row with no trained token is all prompt
    hit = np.flatnonzero(trained)
    if hit.size:
        row_of_hit = np.searchsorted(offsets, hit, side="right") - 1
        np.minimum.at(first_trained, row_of_hit, hit - offsets[row_of_hit])
    digests = [  # one hash per row (a loop over rows while reading, not in the analysis)
        hashlib.sha1(tokens[offsets[row] : offsets[row] + first_trained[row]].astype(np.int64).tobytes()).hexdigest()[:12]
        for row in range(n_rows)
    ]
    labels = np.asarray(digests, dtype=object)
    starts = np.ones(n_rows, dtype=bool)
    starts[1:] = labels[1:] != labels[:-1]  # [n_rows] a new run begins
    run_labels = labels[starts]
    seen: dict[str, int] = {}
    named = []
    for label in run_labels:  # a loop over prompt runs
        seen[label] = seen.get(label, 0) + 1
        named.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return np.asarray(named, dtype=object)[np.cumsum(starts) - 1]
