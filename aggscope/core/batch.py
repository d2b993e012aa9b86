"""One training step's rollout batch: flat token arrays, per-sequence offsets and group ids.

This is the single representation every analysis shares. Notation used in shape comments:

- ``n_seqs``: sequences (responses, rows) of the step, in input order (``seq_index`` 0..n_seqs-1)
- ``n_tokens``: all tokens of all sequences, masked ones included
- ``n_groups``: distinct prompt-group ids (uids), numbered in order of first appearance
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from aggscope.core.segments import segment_chunks, segment_count_numpy, segment_sum_numpy
from aggscope.errors import AggscopeError

if TYPE_CHECKING:  # torch is imported only when a caller hands in tensors
    import torch


@dataclass(frozen=True)
class SequenceStats:
    """Per-sequence quantities built once from the tokens; every mode and summary reads these.

    All arrays are ``[n_seqs]`` numpy; sums are float64 and counts int64.
    Sums of advantages run over loss tokens whose advantage is finite; where the batch carries a
    per-token factor ``f`` (``StepBatch.token_factor``), they are sums of ``f * A``.

    ``factor_sum``, ``factor_sq_sum``: sums of ``f`` and ``f**2`` over each row's loss tokens
    (``loss_tokens`` itself without a factor); ``factor_min``, ``factor_max``: the extremes of ``f``
    over them (1.0 without a factor or loss token).
    """

    lengths: np.ndarray
    loss_tokens: np.ndarray
    adv_abs_sum: np.ndarray
    adv_sum: np.ndarray
    zero_adv_tokens: np.ndarray
    nonfinite_adv_tokens: np.ndarray
    masked_nonzero_adv_tokens: np.ndarray
    factor_sum: np.ndarray
    factor_sq_sum: np.ndarray
    factor_min: np.ndarray
    factor_max: np.ndarray

    @property
    def adv_pos_sum(self) -> np.ndarray:
        """Sum of the positive finite advantages over loss tokens."""
        return (self.adv_abs_sum + self.adv_sum) / 2

    @property
    def adv_neg_sum(self) -> np.ndarray:
        """Sum of the negative finite advantages over loss tokens (a value <= 0)."""
        return (self.adv_sum - self.adv_abs_sum) / 2

    def rows(self, start: int, stop: int) -> SequenceStats:
        """The stats of sequences ``start:stop`` (views): each sequence is reduced on its own, so
        these are the stats of those sequences reduced apart, bit for bit."""
        return SequenceStats(**{name: getattr(self, name)[start:stop] for name in self.__dataclass_fields__})

    @classmethod
    def concat(cls, parts: Sequence[SequenceStats]) -> SequenceStats:
        """The rows of several steps, in order (empty arrays when ``parts`` is empty)."""
        names = list(cls.__dataclass_fields__)
        if not parts:
            return cls(
                **{name: np.zeros(0, dtype=np.float64 if "sum" in name or "factor" in name else np.int64) for name in names}
            )
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in names})


@dataclass(frozen=True, eq=False)
class StepBatch:
    """The rollout batch of one training step.

    Attributes:
        step: the training step this batch belongs to.
        advantages: ``[n_tokens]`` float advantages, flat over all sequences.
        loss_mask: ``[n_tokens]`` bool, True where the token is trained on.
        offsets: ``[n_seqs + 1]`` int64; sequence ``i`` owns tokens ``offsets[i]:offsets[i+1]``.
        group_ids: ``[n_seqs]`` int64 prompt-group codes in order of first appearance, or None
            when the input has no uid (prompt-level modes and checks are then unavailable).
        uid_labels: ``[n_groups]`` the uid text of each code, or None.
        rewards: ``[n_seqs]`` float64 rewards, or None.
        source: where the batch came from, for messages.
        lengths_estimated: True when token counts were estimated from text.
        uid_texts: ``[n_groups]`` the prompt text of each code (None for a group whose rows hold
            none), or None when the input holds no prompt texts; a group's text is its last row's.
        input_device: the torch device of the tensors the batch was built from (per-token results
            go back there as tensors), or None when it was built from arrays.
        token_factor: ``[n_tokens]`` float per-token factor the trainer multiplies into each token's
            loss term (prime-rl's ``rl_weights``, ``--use-dump-weights``), or None for 1.0 on every
            token. Every mode's weight of a token is its row's weight times this factor; it is
            never 0 on a loss token (``from_flat`` takes such tokens out of the loss mask).

    All arrays are numpy on the host: a batch built from tensors holds host copies of them (views
    of CPU tensors, no copy).
    """

    step: int
    advantages: np.ndarray
    loss_mask: np.ndarray
    offsets: np.ndarray
    group_ids: np.ndarray | None = None
    uid_labels: tuple[str, ...] | None = None
    rewards: np.ndarray | None = None
    source: str = "<memory>"
    lengths_estimated: bool = False
    uid_texts: tuple[str | None, ...] | None = None
    input_device: Any = None
    token_factor: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_tokens = self.advantages.size
        if self.advantages.ndim != 1 or self.loss_mask.shape != self.advantages.shape:
            raise AggscopeError(
                f"{self.source}: advantages and loss mask must be flat arrays of one length "
                f"(got {tuple(self.advantages.shape)} and {tuple(self.loss_mask.shape)})"
            )
        if self.loss_mask.dtype != np.bool_:
            raise AggscopeError(f"{self.source}: the loss mask must be boolean")
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets.dtype != np.int64:
            raise AggscopeError(f"{self.source}: offsets must be a 1-d int64 array of n_seqs + 1 entries")
        if int(self.offsets[-1]) != n_tokens or int(self.offsets[0]) != 0:
            raise AggscopeError(f"{self.source}: offsets must run from 0 to the number of tokens ({n_tokens})")
        n_seqs = self.n_sequences
        if self.group_ids is not None and self.group_ids.shape != (n_seqs,):
            raise AggscopeError(f"{self.source}: {self.group_ids.size} group ids for {n_seqs} sequences")
        if (self.group_ids is None) != (self.uid_labels is None):
            raise AggscopeError(f"{self.source}: group ids and uid labels go together")
        if self.uid_texts is not None and (self.uid_labels is None or len(self.uid_texts) != len(self.uid_labels)):
            raise AggscopeError(f"{self.source}: uid texts must come one per uid label")
        if self.rewards is not None and self.rewards.shape != (n_seqs,):
            raise AggscopeError(f"{self.source}: {self.rewards.size} rewards for {n_seqs} sequences")
        if self.token_factor is not None:
            _check_factor(self.token_factor, self.loss_mask, self.source)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_sequences(self) -> int:
        return self.offsets.size - 1

    @property
    def n_tokens(self) -> int:
        return self.advantages.size

    @property
    def n_groups(self) -> int:
        return 0 if self.uid_labels is None else len(self.uid_labels)

    @property
    def has_groups(self) -> bool:
        return self.group_ids is not None

    @cached_property
    def stats(self) -> SequenceStats:
        """Per-sequence loss-token counts and advantage sums (computed once, then shared)."""
        return sequence_stats_numpy(widen_half(self.advantages), self.loss_mask, self.offsets, self.token_factor)

    def with_stats(self, stats: SequenceStats) -> StepBatch:
        """This batch with ``stats`` already in place of computing them from the tokens.

        For readers that reduce each part of a step as they decode it (``sequence_stats_numpy``
        on each part, then ``SequenceStats.concat``): the result must be what ``stats`` computes.
        """
        if stats.lengths.shape != (self.n_sequences,):
            raise AggscopeError(f"{self.source}: stats of {stats.lengths.size} sequences for {self.n_sequences}")
        self.__dict__["stats"] = stats  # where cached_property keeps its value
        return self

    def uid_text(self, uid: str) -> str | None:
        """The prompt text of ``uid`` in this batch, or None (no such uid, or no text for it)."""
        if self.uid_texts is None or self.uid_labels is None or uid not in self.uid_labels:
            return None
        return self.uid_texts[self.uid_labels.index(uid)]

    def row_uids(self) -> list[str | None]:
        """The uid text of every row in input order (None where the input has no uid)."""
        if self.group_ids is None or self.uid_labels is None:
            return [None] * self.n_sequences
        labels = self.uid_labels
        return [labels[code] for code in self.group_ids.tolist()]

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def from_flat(
        cls,
        advantages: Any,
        loss_mask: Any,
        offsets: Any,
        *,
        uids: Any = None,
        rewards: Any = None,
        step: int = 0,
        source: str = "<memory>",
        prompts: Sequence[str | None] | None = None,
        token_factor: Any = None,
    ) -> StepBatch:
        """Build a batch from flat token arrays and sequence offsets (tensors, arrays or lists).

        Tensors may live on any device: the batch keeps host numpy copies (views of CPU tensors)
        and remembers the device, so ``StepWeights.token_weights()`` returns a tensor there.

        Args:
            advantages: ``[n_tokens]`` per-token advantages.
            loss_mask: ``[n_tokens]`` 0/1 or bool.
            offsets: ``[n_seqs + 1]`` sequence boundaries into the token arrays.
            uids: ``[n_seqs]`` prompt-group ids (ints or strings), or None.
            rewards: ``[n_seqs]`` rewards, or None.
            step: the step number.
            source: a name for messages.
            prompts: ``[n_seqs]`` the prompt text of each row (or None), kept per group as
                ``uid_texts``; needs ``uids``.
            token_factor: ``[n_tokens]`` per-token factor of each token's loss term (prime-rl's
                ``rl_weights``), or None. As prime-rl does, a token whose factor is 0 leaves the
                loss mask, so it leaves every denominator too.
        """
        device = _device_of(advantages, loss_mask, offsets)
        batch = cls._build(advantages, loss_mask, offsets, uids, rewards, step, source, prompts, device)
        return batch if token_factor is None else batch.with_token_factor(token_factor)

    def with_token_factor(self, token_factor: Any) -> StepBatch:
        """This batch with a per-token factor (see ``from_flat``): tokens whose factor is 0 leave the loss mask."""
        factor = np.asarray(host_array(token_factor), dtype=np.float64).reshape(-1)  # [n_tokens]
        if factor.shape != self.loss_mask.shape:
            raise AggscopeError(f"{self.source}: {factor.size} token factors for {self.n_tokens} tokens")
        if not bool(np.isfinite(factor).all()):
            first = int(np.flatnonzero(~np.isfinite(factor))[0])
            raise AggscopeError(f"{self.source}: token factor {factor[first].item()!r} at token {first}; a factor must be finite")
        mask = self.loss_mask & (factor != 0)  # [n_tokens] prime-rl: loss_mask & (rl_weights != 0)
        return replace(self, loss_mask=mask, token_factor=factor)

    @classmethod
    def _build(
        cls,
        advantages: Any,
        loss_mask: Any,
        offsets: Any,
        uids: Any,
        rewards: Any,
        step: int,
        source: str,
        prompts: Sequence[str | None] | None,
        device: Any,
    ) -> StepBatch:
        adv = _as_floats(advantages)
        mask = _as_mask(loss_mask, source)
        offs = np.asarray(host_array(offsets), dtype=np.int64).reshape(-1)
        if offs.size > 1 and bool((offs[1:] < offs[:-1]).any()):
            raise AggscopeError(f"{source}: offsets must not decrease")
        group_ids, labels = factorize_uids(uids, offs.size - 1, source)
        rew = None if rewards is None else np.asarray(host_array(rewards), dtype=np.float64)
        texts = None
        if prompts is not None and group_ids is not None and labels is not None:
            if len(prompts) != offs.size - 1:
                raise AggscopeError(f"{source}: {len(prompts)} prompts for {offs.size - 1} sequences")
            rows = last_row_of_groups(group_ids, len(labels), np.array([p is not None for p in prompts], dtype=bool))
            texts = tuple(None if row < 0 else prompts[row] for row in rows.tolist())
        return cls(step, adv, mask, offs, group_ids, labels, rew, source, uid_texts=texts, input_device=device)

    @classmethod
    def from_padded(
        cls,
        advantages: Any,
        loss_mask: Any,
        *,
        uids: Any = None,
        rewards: Any = None,
        step: int = 0,
        source: str = "<memory>",
    ) -> StepBatch:
        """Build a batch from padded ``[B, L]`` tensors (or arrays) as a trainer holds them.

        Every one of the ``B * L`` positions becomes a token (padding is simply masked), so
        per-token results reshape back to ``[B, L]`` with ``.view(B, L)``; nothing is copied when
        the inputs are contiguous CPU tensors. Left and right padding both work, since only the
        mask decides which positions are trained on.

        Args:
            advantages: ``[B, L]`` per-token advantages, or ``[B]`` one per sequence (broadcast).
            loss_mask: ``[B, L]`` 0/1 or bool.
        """
        device = _device_of(loss_mask, advantages)
        mask = np.asarray(host_array(loss_mask))
        if mask.ndim != 2:
            raise AggscopeError(f"{source}: a padded loss mask must be [B, L], got shape {tuple(mask.shape)}")
        n_rows, width = mask.shape
        adv = _as_floats(advantages)
        if adv.ndim == 1 and adv.shape[0] == n_rows:
            adv = np.repeat(adv, width)
        elif adv.shape != mask.shape:
            raise AggscopeError(
                f"{source}: advantages of shape {tuple(adv.shape)} do not match the loss mask {tuple(mask.shape)}"
            )
        offsets = np.arange(n_rows + 1, dtype=np.int64) * width
        return cls._build(adv.reshape(-1), mask.reshape(-1), offsets, uids, rewards, step, source, None, device)


def _check_factor(factor: np.ndarray, mask: np.ndarray, source: str) -> None:
    if factor.shape != mask.shape or factor.dtype != np.float64:
        raise AggscopeError(f"{source}: the token factor must be a float64 array of one value per token")
    if bool((mask & (factor == 0)).any()):
        raise AggscopeError(f"{source}: a loss token has factor 0; build the batch with from_flat, which masks it")


def is_tensor(value: Any) -> bool:
    """True for a torch tensor (without importing torch: a caller holding one has imported it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def host_array(value: Any) -> Any:
    """A tensor as a host numpy array (a view of a CPU tensor; half floats widened to float32), anything else as it is."""
    if not is_tensor(value):
        return value
    return widen_half(value.detach()).cpu().numpy()


def _device_of(*values: Any) -> Any:
    """The device of the first tensor among ``values``, or None when none is a tensor."""
    return next((value.device for value in values if is_tensor(value)), None)


def _as_floats(values: Any) -> np.ndarray:
    """Advantages as a float array; integers (and lists of numbers, as ``torch.as_tensor`` made
    them) become float32, float arrays keep their precision."""
    if isinstance(values, np.ndarray) or is_tensor(values):
        array = np.asarray(host_array(values))
        if array.dtype.kind not in "fiub":  # complex (the imaginary part would be dropped), text, objects
            raise AggscopeError(f"advantages must be real numbers, got an array of {array.dtype}")
        return array if array.dtype.kind == "f" else array.astype(np.float32)
    return np.asarray(values, dtype=np.float32)


def _as_mask(values: Any, source: str) -> np.ndarray:
    mask = np.asarray(host_array(values))
    if mask.dtype == np.bool_:
        return mask
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise bad_mask_value(f"{source}: loss mask", mask.reshape(-1)[first].item(), f"token {first}")
    return mask != 0


MASK_RULE = "a loss mask may hold only 0 and 1"


def bad_mask_value(subject: str, value: Any, place: str) -> AggscopeError:
    """The one message for a loss-mask value other than 0 and 1: ``{subject} holds {value} at {place}; ...``."""
    return AggscopeError(f"{subject} holds {value!r} at {place}; {MASK_RULE}")


def mask_as_bool(raw: np.ndarray, offsets: np.ndarray, locate: Callable[[int, int], tuple[str, str]]) -> np.ndarray:
    """A flat 0/1 (or bool) loss mask as bool, or a one-line error at its first other value.

    Args:
        raw: ``[n_tokens]`` bools or numbers.
        offsets: ``[n_rows + 1]`` int64 row boundaries of the tokens, to name the row at fault.
        locate: ``(row, token in row) -> (subject, place)`` for the message, e.g.
            ``("f.parquet: row 3: column 'loss_mask'", "token 5")``.

    Raises:
        AggscopeError: ``bad_mask_value`` at the first token that is neither 0 nor 1 (NaN included).
    """
    if raw.dtype == np.bool_:
        return raw
    if raw.dtype.kind in "iu":
        # Seen as unsigned, a 0/1 mask has a maximum of at most 1 (negatives turn huge): one
        # pass without temporaries; a one-byte 0/1 mask then already is a valid bool array.
        unsigned = raw.view(raw.dtype.str.replace("i", "u"))
        if unsigned.size and unsigned.max() > 1:
            _raise_bad_mask(raw, (raw != 0) & (raw != 1), offsets, locate)
        return raw.view(bool) if raw.dtype.itemsize == 1 else raw != 0
    bad = (raw != 0) & (raw != 1)
    if bad.any():
        _raise_bad_mask(raw, bad, offsets, locate)
    return raw != 0


def _raise_bad_mask(raw: np.ndarray, bad: np.ndarray, offsets: np.ndarray, locate: Callable[[int, int], tuple[str, str]]) -> None:
    token = int(np.flatnonzero(bad)[0])
    row = int(np.searchsorted(offsets, token, side="right") - 1)
    subject, place = locate(row, token - int(offsets[row]))
    raise bad_mask_value(subject, raw[token].item(), place)


def offsets_of(lengths: Any) -> np.ndarray:
    """``[n + 1]`` int64 offsets of consecutive segments of the given ``[n]`` lengths (from 0)."""
    lengths = np.asarray(lengths)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, dtype=np.int64, out=offsets[1:])
    return offsets


Floats = TypeVar("Floats", np.ndarray, "torch.Tensor")


def widen_half(values: Floats) -> Floats:
    """float16 and bfloat16 values as float32 (exactly: every half value is a float32), others as they are.

    numpy has no bfloat16, and the reductions and the Parquet writer take float32 and float64.
    """
    if isinstance(values, np.ndarray):
        return values.astype(np.float32) if values.dtype == np.float16 else values
    import torch  # a tensor: torch is loaded already

    return values.to(torch.float32) if values.dtype in (torch.float16, torch.bfloat16) else values


def factorize_uids(uids: Any, n_rows: int, source: str = "<memory>") -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Number uids ``0..n_groups-1`` in order of first appearance.

    Args:
        uids: ``[n_rows]`` ints or strings (tensor, array or list), or None.

    Returns:
        ``([n_rows] int64 codes, uid text of each code)``, or ``(None, None)``.
    """
    if uids is None:
        return None, None
    if is_tensor(uids):
        uids = host_array(uids).reshape(-1)
    array = np.asarray(uids, dtype=object) if not isinstance(uids, np.ndarray) else uids
    if array.shape != (n_rows,):
        raise AggscopeError(f"{source}: {array.size} uids for {n_rows} sequences")
    return uid_codes(array)


def uid_codes(uids: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """``[n]`` int64 group codes of ``[n]`` uids numbered by first appearance, and each code's uid text.

    Objects (strings, Python ints, mixtures) are compared by their text; numbers and bools by value.
    """
    if uids.dtype == object:
        # Python strings, not numpy's str dtype: that drops trailing NULs, which would merge '\x00' and ''.
        uids = np.array([str(v) for v in uids.tolist()], dtype=object)
    codes, distinct = factorize(uids)
    return codes, tuple(str(v) for v in distinct.tolist())


def last_row_of_groups(group_ids: np.ndarray, n_groups: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """``[n_groups]`` int64: the last row of each group among the ``eligible [n_rows]`` rows (all
    rows when None), -1 for a group without one. How a group's prompt text is chosen (``uid_texts``)."""
    last = np.full(n_groups, -1, dtype=np.int64)
    rows = np.arange(group_ids.size) if eligible is None else np.flatnonzero(eligible)
    np.maximum.at(last, group_ids[rows], rows)
    return last


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the distinct values of ``values [n]`` ``0..k-1`` in order of first appearance.

    Floats are told apart by their bits (so ``-0.0`` and ``0.0`` are two values) except that every
    NaN is one value, as Arrow's dictionary encoding does.

    Returns:
        ``([n] int64 codes, [k] the distinct values in code order)``.
    """
    keys = values
    if values.dtype.kind == "f" and values.itemsize in (2, 4, 8):
        keys = np.where(np.isnan(values), np.nan, values).astype(values.dtype).view(f"i{values.itemsize}")
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)  # [k] sorted, [n]
    order = np.argsort(first, kind="stable")  # sorted-unique index by first appearance
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)], values[first[order]]


STATS_CHUNK_TOKENS = 1 << 20  # tokens per chunk of the per-sequence reductions (CPU)


def sequence_stats_numpy(adv: np.ndarray, mask: np.ndarray, offs: np.ndarray, factor: np.ndarray | None = None) -> SequenceStats:
    """``SequenceStats`` of flat numpy arrays: ``adv [n_tokens]`` float, ``mask [n_tokens]`` bool,
    ``offs [n_seqs + 1]`` int64 from 0, ``factor [n_tokens]`` float64 or None (``StepBatch.token_factor``).

    Every sequence is reduced on its own, so the stats of consecutive parts of a step, concatenated,
    equal those of the whole step bit for bit (readers use this to reduce each part as it is decoded).

    The reductions run in chunks of whole sequences: working on about ``STATS_CHUNK_TOKENS``
    tokens at a time keeps every temporary (the finite flags, the float64 copy of the advantages,
    the comparison masks) a few MB and in the CPU caches instead of several full-size arrays.
    """
    n_seqs = offs.size - 1
    lengths = offs[1:] - offs[:-1]  # [n_seqs]
    loss_tokens = lengths.copy()
    adv_sum = np.zeros(n_seqs, dtype=np.float64)
    adv_abs_sum = np.zeros(n_seqs, dtype=np.float64)
    zero_adv = np.zeros(n_seqs, dtype=np.int64)
    nonfinite = np.zeros(n_seqs, dtype=np.int64)
    masked_nonzero = np.zeros(n_seqs, dtype=np.int64)
    for first, last in segment_chunks(offs, STATS_CHUNK_TOKENS):
        start, stop = int(offs[first]), int(offs[last])
        rows = slice(first, last)
        a, m = adv[start:stop], mask[start:stop]  # [chunk]
        local = offs[first : last + 1] - start  # [rows + 1]
        masked = ~m  # [chunk]
        nonzero = a != 0  # [chunk]
        # Sums run over loss tokens whose advantage is finite; every other token counts as +0.0
        # (as np.where(m & finite, a, 0) gives it, here by zeroing the masked places of a copy).
        trained = a.astype(np.float64)  # [chunk]
        if factor is not None:
            trained *= factor[start:stop]  # f * A: the gradient weight of a token is w_i * f * A
        n_masked = int(np.count_nonzero(masked))
        if n_masked == 0:
            masked_count = masked_nonzero_count = np.zeros(last - first, dtype=np.int64)
        elif n_masked <= masked.size // 4:
            # Few masked tokens (prompt or tool spans): work on their positions only.
            where_masked = np.flatnonzero(masked)  # [n_masked] ascending
            masked_count = np.diff(np.searchsorted(where_masked, local))
            masked_nonzero_count = np.diff(np.searchsorted(where_masked[nonzero[where_masked]], local))
            trained[where_masked] = 0.0
        else:
            masked_count = segment_count_numpy(masked, local)
            masked_nonzero_count = segment_count_numpy(nonzero & masked, local)
            np.copyto(trained, 0.0, where=masked)
        loss_tokens[rows] = np.diff(local) - masked_count
        masked_nonzero[rows] = masked_nonzero_count
        # Zero advantages on loss tokens: all zeros minus the masked ones.
        zero_adv[rows] = segment_count_numpy(~nonzero, local) - (masked_count - masked_nonzero_count)
        sums = segment_sum_numpy(trained, local, np.float64)
        if not np.isfinite(sums).all():
            # A sum is finite when all its loss tokens are (float32 values summed in float64
            # cannot overflow), so only a chunk with a non-finite sum looks at each token.
            nonfinite_loss = m & ~np.isfinite(a)  # [chunk]
            nonfinite[rows] = segment_count_numpy(nonfinite_loss, local)
            np.copyto(trained, 0.0, where=nonfinite_loss)
            sums = segment_sum_numpy(trained, local, np.float64)
        adv_sum[rows] = sums
        adv_abs_sum[rows] = segment_sum_numpy(np.abs(trained, out=trained), local, np.float64)
    factor_sums = _factor_sums(loss_tokens, mask, offs, factor)
    return SequenceStats(
        lengths=lengths,
        loss_tokens=loss_tokens,
        adv_abs_sum=adv_abs_sum,
        adv_sum=adv_sum,
        zero_adv_tokens=zero_adv,
        nonfinite_adv_tokens=nonfinite,
        masked_nonzero_adv_tokens=masked_nonzero,
        **factor_sums,
    )


def _factor_sums(loss_tokens: np.ndarray, mask: np.ndarray, offs: np.ndarray, factor: np.ndarray | None) -> dict[str, np.ndarray]:
    """The ``factor_*`` fields of ``SequenceStats``: ``[n_seqs]`` float64 each."""
    if factor is None:
        tokens = loss_tokens.astype(np.float64)
        ones = np.ones(loss_tokens.size, dtype=np.float64)
        return {"factor_sum": tokens, "factor_sq_sum": tokens, "factor_min": ones, "factor_max": ones.copy()}
    trained = np.where(mask, factor, 0.0)  # [n_tokens]
    has_tokens = loss_tokens > 0  # [n_seqs]
    starts = offs[:-1][has_tokens]
    # reduceat over each row with loss tokens; the masked places hold +-inf so they are never the extreme
    low = np.minimum.reduceat(np.where(mask, factor, np.inf), starts) if starts.size else np.zeros(0)
    high = np.maximum.reduceat(np.where(mask, factor, -np.inf), starts) if starts.size else np.zeros(0)
    factor_min = np.ones(loss_tokens.size, dtype=np.float64)
    factor_max = np.ones(loss_tokens.size, dtype=np.float64)
    factor_min[has_tokens], factor_max[has_tokens] = low, high
    return {
        "factor_sum": segment_sum_numpy(trained, offs, np.float64),
        "factor_sq_sum": segment_sum_numpy(trained * trained, offs, np.float64),
        "factor_min": factor_min,
        "factor_max": factor_max,
    }


def text_uid(text: str) -> str:
    """A short stable uid for a prompt text: the same text gives the same uid in every file and step."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
