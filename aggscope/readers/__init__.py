"""Readers for what RL trainers already write, behind one entry point (``open_any``).

One module per format; each returns an object with the interface of
``aggscope.loading.ParquetRollouts`` (``source``, ``files``, ``columns``, ``layout``, ``steps``,
``notes``, ``has_groups``, ``iter_steps()``). ``--format`` picks the reader; without it the format
is detected from the file names and the first line or schema, and an ambiguous input gets a
one-line error asking for ``--format``.

| format     | what it reads                                                        |
|------------|----------------------------------------------------------------------|
| parquet    | the canonical Parquet (``aggscope.loading``), also what ``convert`` and ``log_batch`` write |
| trl        | TRL ``completions/completions_{step:05d}.parquet``                   |
| verl       | verl ``rollout_data_dir/{global_step}.jsonl``                        |
| nemo-rl    | NeMo-RL ``train_data_step{N}.jsonl``                                 |
| prime-rl   | prime-rl ``token_exports/step_{N}/rank_{R}.jsonl``                   |
| atropos    | Atropos ScoredDataGroup ``.jsonl`` (one group per line)              |
| slime      | slime ``--save-debug-rollout-data`` ``{rollout_id}.pt``              |
| skyrl      | SkyRL ``dumped_data/global_step_{N}_training_input.pkl``             |
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import Any

from aggscope.errors import AggscopeError, choose
from aggscope.readers.base import ReadOptions, list_files

READERS = {
    "trl": ("aggscope.readers.trl", "TrlRollouts"),
    "verl": ("aggscope.readers.verl", "VerlRollouts"),
    "nemo-rl": ("aggscope.readers.nemo_rl", "NemoRlRollouts"),
    "prime-rl": ("aggscope.readers.prime_rl", "PrimeRlRollouts"),
    "atropos": ("aggscope.readers.atropos", "AtroposRollouts"),
    "slime": ("aggscope.readers.slime", "SlimeRollouts"),
    "skyrl": ("aggscope.readers.skyrl", "SkyrlRollouts"),
}
FORMATS = ("parquet", *READERS)
_ALIASES = {"nemo_rl": "nemo-rl", "nemorl": "nemo-rl", "prime_rl": "prime-rl", "primerl": "prime-rl", "canonical": "parquet"}
_SUFFIXES = (".parquet", ".jsonl", ".pt", ".pkl", ".pickle")


def resolve_format(name: str) -> str:
    return choose("--format", name, FORMATS, _ALIASES, "format")


def open_any(
    path: str,
    *,
    columns: Mapping[str, str] | None = None,
    format: str | None = None,
    reward_col: str | None = None,
    advantage: str | None = None,
    tokenizer: str | None = None,
) -> Any:
    """Open rollouts of any supported format (see the module docstring)."""
    from aggscope.advantages import resolve_estimator

    options = ReadOptions(
        columns=dict(columns or {}),
        reward_col=reward_col,
        advantage=None if advantage is None else resolve_estimator(advantage),
        tokenizer=None if tokenizer is None else str(tokenizer),
    )
    fmt = resolve_format(format) if format is not None else detect_format(path)
    if fmt == "parquet":
        from aggscope.canonical import open_canonical

        return open_canonical(path, options)
    module, name = READERS[fmt]
    reader = getattr(importlib.import_module(module), name)
    return reader.open(path, options)


def detect_format(path: str) -> str:
    """The format of ``path`` from its file names and first line or schema, or a one-line error."""
    if "://" in path:
        return "parquet"
    files = list_files(path, _SUFFIXES, ".parquet files (nor .jsonl, .pt or .pkl dumps)")
    kinds = {os.path.splitext(f)[1] for f in files}
    if kinds & {".pkl", ".pickle"} and len(kinds) == 1:
        return "skyrl"
    if kinds == {".pt"}:
        return "slime"
    if kinds == {".parquet"}:
        return _parquet_kind(files[0])
    if kinds == {".jsonl"}:
        return _jsonl_kind(path, files)
    if len(kinds) > 1:
        raise AggscopeError(f"{path}: holds {', '.join(sorted(kinds))} files; say which format to read with --format")
    return "parquet"  # one file of another name: the Parquet reader says precisely what is wrong


def _parquet_kind(file: str) -> str:
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(file).names)
    except Exception:  # not a Parquet file: the Parquet reader gives the precise message
        return "parquet"
    canonical = {"advantages", "loss_mask", "token_loss_mask", "response_length", "completion_length"}
    if {"prompt", "completion"} <= names and not names & canonical:
        return "trl"
    return "parquet"


def _jsonl_kind(path: str, files: list[str]) -> str:
    if all(re.fullmatch(r"rank_\d+\.jsonl", os.path.basename(f)) for f in files):
        return "prime-rl"
    if all(re.fullmatch(r"train_data_step\d+\.jsonl", os.path.basename(f)) for f in files):
        return "nemo-rl"
    # Every file's first line: a folder that mixes dumps of two trainers is an error up front.
    by_kind: dict[str, list[str]] = {}
    for file in files:
        by_kind.setdefault(_jsonl_file_kind(file), []).append(file)
    if len(by_kind) > 1:
        parts = [f"{kind} ({os.path.basename(names[0])}{', ...' if len(names) > 1 else ''})" for kind, names in by_kind.items()]
        raise AggscopeError(f"{path}: mixes dumps of {' and '.join(parts)}; give one file or a glob of one kind")
    return next(iter(by_kind))


def _jsonl_file_kind(file: str) -> str:
    from aggscope.readers.jsonl import first_record

    keys = set(first_record(file))
    if {"input", "output"} <= keys:
        return "verl"
    if {"tokens", "masks", "scores"} <= keys:
        return "atropos"
    if {"token_loss_mask", "advantages"} <= keys:
        return "nemo-rl"
    if {"position_ids", "loss_mask", "advantages"} <= keys:
        return "prime-rl"
    raise AggscopeError(
        f"{file}: cannot tell which trainer wrote this JSON-lines file (first line has {', '.join(sorted(keys))}); "
        f"choose one with --format ({', '.join(FORMATS)})"
    )


def uid_text(rollouts: Any, uid: str) -> str | None:
    """The prompt text behind ``uid`` where the input holds it (after its steps were read)."""
    lookup = getattr(rollouts, "uid_text", None)
    if callable(lookup):
        return lookup(uid)
    from aggscope.canonical import parquet_uid_text

    return parquet_uid_text(rollouts, uid)
