"""Opening any input: the one entry point from a path to the reader of its format.

``open_rollouts`` detects the format (from the file names and the first line or schema; an
ambiguous input is a one-line error asking for ``--format``) and returns the reader: the Parquet
reader (``aggscope.io.parquet``) for canonical Parquet, or one of ``aggscope.io.readers``.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aggscope.core.batch import StepBatch
from aggscope.errors import AggscopeError, choose
from aggscope.io.paths import list_files
from aggscope.io.reader import ReadOptions, Rollouts
from aggscope.io.readers import DUMP_SUFFIXES, FORMAT_ALIASES, FORMATS, READERS

SAMPLE_FILE = "rollouts.parquet"


@functools.cache
def bundled_sample_path() -> Path:
    """The sample shipped with the package (the same file as ``sample_data/rollouts.parquet``); looked up
    once (a package-data lookup costs about a millisecond, and messages of every step ask for it)."""
    return Path(str(resources.files("aggscope.sample_data").joinpath(SAMPLE_FILE)))


def open_rollouts(
    path: str | None = None, *, columns: Mapping[str, str] | None = None, format: str | None = None, **options: Any
) -> Rollouts:
    """Open rollout batches of any supported format; with no path, the bundled sample.

    Args:
        path: a file, directory or glob (Parquet also a filesystem URI).
        columns: explicit ``{role: column}`` overrides.
        format: ``parquet``, ``trl``, ``verl``, ``nemo-rl``, ``prime-rl``, ``atropos``, ``slime`` or
            ``skyrl`` (see ``aggscope.io.readers``); None detects it from the files.
        options: ``reward_col``, ``advantage`` (grpo, dr_grpo, rloo), ``tokenizer`` (a local folder),
            ``trust_pickle`` (unpickle a ``.pkl``/``.pt`` file fully: it may run code; only for ``path``
            naming that one file, see ``trusted_pickle_file``), ``eos_trained`` and
            ``max_completion_length`` (TRL: count each completion's trained end token; see
            ``aggscope.io.readers.trl``), ``tool_mask`` (verl: tool turns of multi-turn outputs not
            trained; see ``aggscope.io.readers.verl_tools``).

    Returns:
        The reader (``aggscope.io.reader.Rollouts``): a ``ParquetRollouts`` for Parquet input.
    """
    if path is not None and not str(path).strip():
        raise AggscopeError(f"PATH {str(path)!r}: empty; give a file, a folder or a glob (or no PATH for the bundled sample)")
    target = str(path) if path is not None else str(bundled_sample_path())
    return open_any(target, columns=columns, format=format, **options)


def load_steps(path: str | None = None, *, columns: Mapping[str, str] | None = None) -> list[StepBatch]:
    """Read every step into memory (convenient for small inputs and notebooks)."""
    return list(open_rollouts(path, columns=columns).iter_steps())


def resolve_format(name: str) -> str:
    return choose("--format", name, FORMATS, FORMAT_ALIASES, "format")


def open_any(
    path: str,
    *,
    columns: Mapping[str, str] | None = None,
    format: str | None = None,
    reward_col: str | None = None,
    advantage: str | None = None,
    tokenizer: str | None = None,
    trust_pickle: bool = False,
    eos_trained: bool | None = None,
    max_completion_length: int | None = None,
    use_dump_weights: bool = False,
    tool_mask: bool | None = None,
) -> Rollouts:
    """Open rollouts of any supported format (see the module docstring)."""
    from aggscope.core.advantages import resolve_estimator

    if trust_pickle:
        trusted_pickle_file(path)
    options = ReadOptions(
        columns=dict(columns or {}),
        reward_col=reward_col,
        advantage=None if advantage is None else resolve_estimator(advantage),
        tokenizer=None if tokenizer is None else str(tokenizer),
        trust_pickle=trust_pickle,
        eos_trained=eos_trained,
        max_completion_length=max_completion_length,
        use_dump_weights=use_dump_weights,
        tool_mask=tool_mask,
    )
    fmt = resolve_format(format) if format is not None else detect_format(path)
    if use_dump_weights and fmt != "prime-rl":
        raise AggscopeError(
            f"--use-dump-weights: {DUMP_WEIGHTS_REFUSAL.get(fmt, DUMP_WEIGHTS_REFUSAL[''])} ({path} is read as {fmt})"
        )
    if tool_mask is not None and fmt != "verl":
        given = "--tool-mask" if tool_mask else "--no-tool-mask"
        raise AggscopeError(f"{given} applies to verl dumps (tool turns in the decoded output); {path} is read as {fmt}")
    if trust_pickle and fmt not in PICKLE_FORMATS:
        raise AggscopeError(f"--trust-pickle applies to pickled dumps ({', '.join(PICKLE_FORMATS)}); {path} is read as {fmt}")
    module, name = READERS[fmt]
    reader: type[Rollouts] = getattr(importlib.import_module(module), name)
    rollouts = reader.open(path, options)
    from aggscope.io.readers.facts import DUMP_FACTS

    if fmt in DUMP_FACTS and not rollouts.unrecoverable:  # the formats whose readers do not build their own
        rollouts.unrecoverable = DUMP_FACTS[fmt]
    return rollouts


# Why --use-dump-weights does not apply to a format; prime-rl's rl_weights are the only dump weights a trainer reads.
DUMP_WEIGHTS_REFUSAL = {
    "": "only prime-rl token exports carry per-token loss weights that their trainer reads (rl_weights)",
    "atropos": "no Atropos trainer reads token_weights or token_scores (the API server's ScoredData has no such "
    "field and drops them, atropos 296a0bc), so they stay out of the weights",
}

PICKLE_FORMATS = ("skyrl", "slime")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt")


def trusted_pickle_file(path: str | None) -> str:
    """``path`` when it names one pickled file (``.pkl``, ``.pickle``, ``.pt``) that ``--trust-pickle`` may
    unpickle fully; a one-line error for a folder, a glob or anything else: a scan may find files nobody
    looked at, so trust is never extended to them."""
    if path is None or "://" in path or not os.path.isfile(path):
        where = "the bundled sample" if path is None else path
        raise AggscopeError(
            f"--trust-pickle: {where} is not a file; trust is given to one .pkl or .pt file named as PATH, "
            "never to files found in a folder or by a glob"
        )
    if not path.endswith(PICKLE_SUFFIXES):
        raise AggscopeError(f"--trust-pickle applies to pickled dumps ({', '.join(PICKLE_SUFFIXES)}); {path} is not one")
    return path


def detect_format(path: str) -> str:
    """The format of ``path`` from its file names and first line or schema, or a one-line error."""
    if "://" in path:
        return "parquet"
    files = list_files(path, DUMP_SUFFIXES, ".parquet files (nor .jsonl, .pt or .pkl dumps)")
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
    from aggscope.io.readers.jsonl import first_record

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
