"""Token counts of text-only dumps (verl, TRL): counted with a local tokenizer, or estimated.

Without ``--tokenizer`` a response of ``b`` bytes of UTF-8 counts ``ceil(b / 4)`` tokens (an
empty response counts 0): the usual rule of thumb of about four characters of English per BPE
token. Measured on the Atropos cybersec dumps in ``shared/data/real`` (Llama 3 tokenizer, where the
true counts are known) it over-counts by 10-20 %; on code, maths or non-Latin scripts the error can
be larger either way. Every output then says that lengths are estimates.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aggscope.core.batch import StepBatch, text_uid
from aggscope.errors import AggscopeError, first_line
from aggscope.io.decode import arrow_codes
from aggscope.io.reader import ReadOptions, reject_options
from aggscope.io.readers.base import DumpRollouts, build_batch, rebuild_advantages

BYTES_PER_TOKEN = 4
ESTIMATE_RULE = f"ceil(UTF-8 bytes / {BYTES_PER_TOKEN})"


def estimate_tokens(texts: pa.Array) -> np.ndarray:
    """``[n]`` int64 estimated token counts: ``ceil(bytes / 4)`` of each text."""
    n_bytes = pc.binary_length(texts.cast(pa.string())).to_numpy(zero_copy_only=False).astype(np.int64)
    return -(-n_bytes // BYTES_PER_TOKEN)


@dataclass(frozen=True)
class TextLengths:
    """How a reader turns response texts into token counts."""

    tokenizer_path: str | None = None

    @property
    def estimated(self) -> bool:
        return self.tokenizer_path is None

    def describe(self) -> str:
        if self.tokenizer_path is None:
            return f"lengths estimated from text as {ESTIMATE_RULE} tokens (pass --tokenizer for real counts)"
        return f"lengths counted with the tokenizer at {self.tokenizer_path} (decoded text re-tokenized)"

    def count(self, texts: pa.Array) -> np.ndarray:
        """``[n]`` int64 token counts of ``texts``."""
        if self.tokenizer_path is None:
            return estimate_tokens(texts)
        encode = load_tokenizer(self.tokenizer_path)
        return np.asarray([len(ids) for ids in encode(texts.to_pylist())], dtype=np.int64)


_TOKENIZERS: dict[str, Callable[[Sequence[str]], list[list[int]]]] = {}
_EOS_TOKENS: dict[str, str | None] = {}
_SPECIAL_TOKENS: dict[str, frozenset[str]] = {}


def tokenizer_eos(path: str) -> str | None:
    """The end-of-sequence token of the local tokenizer at ``path``, or None when it has none."""
    load_tokenizer(path)
    return _EOS_TOKENS.get(path)


def tokenizer_specials(path: str) -> frozenset[str]:
    """The special tokens of the local tokenizer at ``path`` (those ``skip_special_tokens`` removes)."""
    load_tokenizer(path)
    return _SPECIAL_TOKENS.get(path, frozenset())


def load_tokenizer(path: str) -> Callable[[Sequence[str]], list[list[int]]]:
    """A function from texts to token ids, from a local tokenizer folder (``transformers``)."""
    if path in _TOKENIZERS:
        return _TOKENIZERS[path]
    if importlib.util.find_spec("transformers") is None:
        raise AggscopeError(
            "--tokenizer needs the transformers package, which is not installed: pip install 'aggscope[tokenizer]' "
            "(or leave --tokenizer out to estimate lengths from the text)"
        )
    if not os.path.exists(path):
        raise AggscopeError(f"--tokenizer {path}: no such file or directory (give a local tokenizer folder)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; all mean the folder is not a tokenizer
        raise AggscopeError(f"--tokenizer {path}: cannot load a tokenizer from it ({first_line(exc)})") from None

    def encode(texts: Sequence[str]) -> list[list[int]]:
        return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    _TOKENIZERS[path] = encode
    _EOS_TOKENS[path] = getattr(tokenizer, "eos_token", None) or None
    _SPECIAL_TOKENS[path] = frozenset(str(token) for token in getattr(tokenizer, "all_special_tokens", None) or ())
    return encode


def check_tokenizer(path: str | None) -> TextLengths:
    """Validate ``--tokenizer`` early (before any step is read) and return the length rule."""
    if path is not None:
        load_tokenizer(path)
    return TextLengths(path)


@dataclass(frozen=True)
class TextSettings:
    """What every text reader decides when it opens a dump.

    Attributes:
        lengths: how response texts become token counts.
        estimator: the estimator rebuilding advantages from the rewards, or None to take the
            dump's own advantages.
    """

    lengths: TextLengths
    estimator: str | None


Settings = TypeVar("Settings", bound=TextSettings)


class TextDumpRollouts(DumpRollouts[Settings]):
    """A dump of decoded text only (verl, TRL): uids hashed from the prompt text (or a uid field),
    token counts from the response text, advantages given per row or rebuilt from the rewards."""

    @classmethod
    def text_options(cls, options: ReadOptions, *, eos: bool = False) -> TextLengths:
        """Check the options a text dump takes and load ``--tokenizer`` early."""
        reject_options(options, cls.format, tokenizer=True, eos=eos, roles=("uid", "uid_text", "reward"))
        return check_tokenizer(options.tokenizer)

    def text_batch(
        self,
        step: int,
        source: str,
        *,
        prompts: pa.Array,
        responses: pa.Array,
        uid_values: pa.Array | None,
        rewards: np.ndarray | None,
        row_advantages: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        loss_mask: np.ndarray | None = None,
    ) -> StepBatch:
        """One step from ``[n]`` prompt and response texts, uids, rewards and advantages (or the estimator).

        ``lengths`` gives the ``[n]`` token counts where the reader counted them itself (else the
        response texts are counted), ``loss_mask`` the ``[sum(lengths)]`` trained tokens (else all).
        """
        prompts = prompts.cast(pa.string())
        uids: Any
        if uid_values is not None:
            uids = np.asarray(uid_values.cast(pa.string()).to_pylist(), dtype=object)
        else:
            uids = hashed_uids(prompts)
        if row_advantages is None:
            assert rewards is not None and self.settings.estimator is not None
            row_advantages = rebuild_advantages(rewards, uids, self.settings.estimator, source)
        return build_batch(
            step,
            source,
            lengths=self.settings.lengths.count(responses) if lengths is None else lengths,
            loss_mask=loss_mask,
            row_advantages=row_advantages,
            uids=uids,
            rewards=rewards,
            lengths_estimated=self.settings.lengths.estimated,
            prompts=prompts,
        )


def hashed_uids(texts: pa.Array) -> np.ndarray:
    """``[n]`` uids hashed from prompt texts (each distinct text hashed once)."""
    codes, distinct = arrow_codes(texts)
    labels = [text_uid(text) for text in distinct.to_pylist()]  # a loop over distinct prompt texts
    return np.asarray(labels, dtype=object)[codes]
