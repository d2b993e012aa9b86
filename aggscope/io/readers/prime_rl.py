"""prime-rl token exports (``enable_token_export``): ``token_exports/step_{N}/rank_{R}.jsonl``.

One line per packed sequence (newer versions write one line per sample, which reads the same):
per-token ``position_ids``, ``loss_mask``, ``advantages`` (and ``token_ids``, logprobs, ...),
optional per-token ``rewards``, optional per-token ``rl_weights``, and ``step``, ``rank``, ``micro_step``.

- ``rl_weights`` (``--use-dump-weights``): prime-rl's trainer (``src/prime_rl/trainer/rl/loss.py``
  ``compute_loss``, snapshot 559b447) runs the rl loss on ``loss_mask & (rl_weights != 0)``,
  multiplies each token's loss term by its weight, and divides by the count of those tokens over
  the step and every rank (``train.py``, ``local_rl_scale``). A null stream means 1.0 on the loss
  mask. The batch carries them as its ``token_factor``; without the option, ``unused_fields``
  names them.

- A line packs several samples; a new sample starts where ``position_ids`` stop increasing
  (restart at 0). Samples keep the order ranks (natural order of the files), lines, position.
- There is no group id, so prompt-level modes and checks say they are unavailable.
- Step: the number of the ``step_{N}`` folder, else the number in the file name. A step folder
  without prime-rl's ``STABLE`` marker (when others have one) may still be being written: a note
  says so.
- Reward: the per-token ``rewards`` at a sample's first token, where logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from aggscope.core.batch import StepBatch, mask_as_bool, offsets_of
from aggscope.errors import AggscopeError
from aggscope.io.paths import list_files, step_in_name
from aggscope.io.reader import ReadOptions, reject_options
from aggscope.io.readers.base import DumpRollouts, build_batch
from aggscope.io.readers.jsonl import JsonlTable, check_same_lengths, first_record, mask_type, read_jsonl

RL_WEIGHTS = (
    "a weight per token, which prime-rl's trainer multiplies into each token's loss term; a weight of 0 takes the "
    "token out of the loss mask and the step's token count."
)
RL_WEIGHTS_UNUSED = f"{RL_WEIGHTS} Pass --use-dump-weights to take them in as prime-rl does."
RL_WEIGHTS_USED = (
    f"{RL_WEIGHTS} --use-dump-weights takes them in as prime-rl does: each token's weight is the mode's weight times its "
    "rl_weight, and the denominators count only tokens whose rl_weight is not 0."
)


@dataclass(frozen=True)
class PrimeRlSettings:
    """``reward_field``: the per-token rewards field (a sample's reward at its first token), or None;
    ``rl_weights``: read the ``rl_weights`` stream into each batch's ``token_factor``."""

    reward_field: str | None
    rl_weights: bool = False


class PrimeRlRollouts(DumpRollouts[PrimeRlSettings]):
    format = "prime-rl"

    @classmethod
    def open(cls, path: str, options: ReadOptions) -> PrimeRlRollouts:
        reject_options(options, cls.format, advantage=False)
        files = list_files(path, (".jsonl",), "prime-rl rank_*.jsonl files")
        first = first_record(files[0])
        for name in ("position_ids", "loss_mask", "advantages"):
            if name not in first:
                raise AggscopeError(
                    f"{files[0]}: first line has no {name!r} field (fields: {', '.join(first)}); not a prime-rl token export"
                )
        reward_field = options.reward_col or ("rewards" if isinstance(first.get("rewards"), list) else None)
        plan: dict[int, list[str]] = {}
        for file in files:
            folder = os.path.basename(os.path.dirname(file))
            step = step_in_name(folder) if folder.startswith("step") else None
            if step is None:
                step = step_in_name(file)
            if step is None:
                raise AggscopeError(f"{file}: no step number in its folder (step_N) or file name")
            plan.setdefault(step, []).append(file)
        notes = [
            "packed lines are split into samples where position_ids restart",
            "no group id: prompt-level modes and checks are unavailable",
        ]
        folders = {step: {os.path.dirname(f) for f in step_files} for step, step_files in plan.items()}
        stable = {step: all(os.path.exists(os.path.join(d, "STABLE")) for d in dirs) for step, dirs in folders.items()}
        if any(stable.values()):
            notes += [
                f"step {step}: no STABLE marker; its export may be incomplete" for step, ok in sorted(stable.items()) if not ok
            ]
        columns = {
            "advantages": "advantages",
            "loss_mask": "loss_mask",
            "sequence": "position_ids restarts",
            "step": "step_N folder",
        }
        if reward_field is not None:
            columns["reward"] = reward_field
        has_rl_weights = first.get("rl_weights") is not None
        if options.use_dump_weights:
            columns["token_factor"] = "rl_weights"
            if not has_rl_weights:
                notes.append("--use-dump-weights: the first line has no rl_weights; lines without them weigh 1.0, as in prime-rl")
        settings = PrimeRlSettings(reward_field, rl_weights=options.use_dump_weights)
        rollouts = cls(path, plan, settings=settings, columns=columns, notes=notes, has_groups=False)
        if options.use_dump_weights:
            rollouts.used_fields = (("rl_weights", RL_WEIGHTS_USED),)
        elif has_rl_weights:
            rollouts.unused_fields = (("rl_weights", RL_WEIGHTS_UNUSED),)
        return rollouts

    def _read_step(self, step: int, files: list[str]) -> StepBatch:
        decoded = []
        for file in files:
            # masks are logged as 0/1 or as true/false: read each file as its first line has them
            mask_lists = pa.list_(mask_type(first_record(file).get("loss_mask")))
            fields = {"position_ids": pa.list_(pa.int64()), "loss_mask": mask_lists, "advantages": pa.list_(pa.float64())}
            if self.settings.reward_field is not None:
                fields[self.settings.reward_field] = pa.list_(pa.float64())
            if self.settings.rl_weights:
                fields["rl_weights"] = pa.list_(pa.float64())
            part = read_jsonl(file, fields)
            decoded.append((*self._decode(part), self._rl_weights(part) if self.settings.rl_weights else None))
        rewards = np.concatenate([d[3] for d in decoded]) if self.settings.reward_field is not None else None
        factor = np.concatenate([d[4] for d in decoded]) if self.settings.rl_weights else None
        return build_batch(
            step,
            self.step_source(files),
            lengths=np.concatenate([d[0] for d in decoded]),
            loss_mask=np.concatenate([d[1] for d in decoded]),
            token_advantages=np.concatenate([d[2] for d in decoded]),
            rewards=rewards,
            token_factor=factor,
        )

    @staticmethod
    def _rl_weights(part: JsonlTable) -> np.ndarray:
        """``[n_tokens]`` float64 rl weight of every token of a file; 1.0 on a line whose stream is null
        (prime-rl's default), a one-line error at a line whose weights do not match its tokens."""
        weights = part.column("rl_weights")
        listed = np.diff(part.column("position_ids").offsets.to_numpy().astype(np.int64))  # [n_lines]
        present = ~np.asarray(weights.is_null().to_numpy(zero_copy_only=False), dtype=bool)  # [n_lines]
        counts = np.diff(weights.offsets.to_numpy().astype(np.int64))  # [n_lines], 0 on a null line
        check_same_lengths(part, np.where(present, listed, 0), counts, "rl_weights", "position_ids")
        values = weights.flatten()
        if values.null_count:
            row = int(
                np.searchsorted(weights.offsets.to_numpy(), np.flatnonzero(values.is_null().to_numpy(False))[0], side="right") - 1
            )
            raise AggscopeError(f"{part.where(row)}: 'rl_weights' holds a null; a weight must be a number")
        flat = values.to_numpy(zero_copy_only=False).astype(np.float64)  # [weighted tokens]
        if not np.isfinite(flat).all():
            token = int(np.flatnonzero(~np.isfinite(flat))[0])
            row = int(np.searchsorted(weights.offsets.to_numpy(), token, side="right") - 1)
            raise AggscopeError(f"{part.where(row)}: 'rl_weights' holds {flat[token].item()!r}; a weight must be finite")
        factor = np.ones(int(listed.sum()), dtype=np.float64)  # [n_tokens]
        factor[np.repeat(present, listed)] = flat  # the tokens of the lines that carry weights
        return factor

    def _decode(self, part: JsonlTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One file: per-sample lengths, and flat loss mask, advantages; per-sample rewards."""
        part.require(["position_ids", "loss_mask", "advantages"])
        positions = part.column("position_ids")
        listed = np.diff(positions.offsets.to_numpy().astype(np.int64))  # [n_lines]
        for name in ("loss_mask", "advantages"):
            check_same_lengths(part, listed, np.diff(part.column(name).offsets.to_numpy().astype(np.int64)), name, "position_ids")
        pos = positions.flatten().to_numpy(zero_copy_only=False)  # [n_tokens]
        restart = np.ones(pos.size, dtype=bool)
        restart[1:] = pos[1:] <= pos[:-1]  # position ids stop increasing: a new sample
        line_offsets = offsets_of(listed)
        restart[line_offsets[:-1][listed > 0]] = True  # every line starts a sample
        starts = np.flatnonzero(restart)
        lengths = np.diff(np.append(starts, pos.size)).astype(np.int64)  # [n_samples]
        raw_mask = part.column("loss_mask").flatten().to_numpy(zero_copy_only=False)
        loss_mask = mask_as_bool(raw_mask, line_offsets, lambda row, token: (f"{part.where(row)}: 'loss_mask'", f"token {token}"))
        advantages = part.column("advantages").flatten().to_numpy(zero_copy_only=False)
        rewards = np.zeros(0)
        if self.settings.reward_field is not None:
            reward_lists = part.column(self.settings.reward_field)
            if reward_lists.null_count == len(reward_lists):
                rewards = np.full(starts.size, np.nan)
            else:
                part.require([self.settings.reward_field])
                reward_lengths = np.diff(reward_lists.offsets.to_numpy().astype(np.int64))
                check_same_lengths(part, listed, reward_lengths, self.settings.reward_field, "position_ids")
                rewards = reward_lists.flatten().to_numpy(zero_copy_only=False)[starts].astype(np.float64)
        return lengths, loss_mask, advantages, rewards
