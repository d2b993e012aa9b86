"""From the path a user gives to the files behind it, and the step a file's name holds.

One rule for every reader: a file is read as itself; a directory recursively, keeping the files
with the reader's suffixes and skipping every name that starts with a dot (the temporary
``.name.tmp`` files of ``aggscope.io.writing`` and ``log_batch``, ``.ipynb_checkpoints``, ...); a
glob (``*``, ``?``, ``[``) as the files it matches. Files come in natural order (``rank_2``
before ``rank_10``), which is sorted order wherever numbers in names have the same width.
Canonical Parquet may also be a URI that pyarrow's filesystems understand (``s3://...``).

Only regular files are read: a FIFO, socket or device (given, or found by a scan or a glob) is
refused naming it, since opening one can block forever; a subfolder that cannot be listed is
refused naming it rather than skipped (its steps would silently go missing). The first contact
with a URI's storage (finding the file or listing the folder) is bounded in time
(``CONNECT_SECONDS``, ``AGGSCOPE_CONNECT_TIMEOUT``): no network is one line, not minutes of silence.
"""

from __future__ import annotations

import glob as globlib
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from aggscope.errors import AggscopeError, first_line
from aggscope.io.limits import check_step

if TYPE_CHECKING:
    import pyarrow.fs as pafs

GLOB_CHARS = frozenset("*?[")
CONNECT_SECONDS = float(os.environ.get("AGGSCOPE_CONNECT_TIMEOUT", "20"))
CONNECT_THREAD = "aggscope-connect"
_NUMBER = re.compile(r"\d+")


def natural_key(path: str) -> tuple[list[Any], str]:
    """Sort key that orders ``rank_2`` before ``rank_10`` (ties, such as ``a01`` and ``a1``, by the text)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)], path


def refuse_missing(path: str) -> None:
    """One line when a local ``path`` (not a URI) names nothing: no file, folder or glob match.

    The command line calls it before anything heavy is imported, so a mistyped path costs
    start-up only; the readers check the same again (``list_files``) with the same words.
    """
    if not path or "://" in path or os.path.lexists(path):
        return  # an empty PATH is told by the readers, with what to give instead
    if any(ch in path for ch in GLOB_CHARS):
        if not any(not os.path.isdir(p) for p in globlib.iglob(path, recursive=True)):
            raise AggscopeError(f"{path}: no file matches this pattern")
        return
    raise AggscopeError(f"{path}: no such file or directory")


def list_files(path: str, suffixes: Sequence[str], what: str) -> list[str]:
    """The local files behind a file, a directory or a glob (see the module docstring).

    Args:
        suffixes: the file endings a directory's files must have (``.parquet``, ``.jsonl``, ...).
        what: how the files are named in the error for a directory without any (``.jsonl files``).
    """
    if any(ch in path for ch in GLOB_CHARS) and not os.path.exists(path):
        files = [p for p in globlib.glob(path, recursive=True) if not os.path.isdir(p)]
        if not files:
            raise AggscopeError(f"{path}: no file matches this pattern")
        return sorted((regular_file(p) for p in files), key=natural_key)
    if not os.path.lexists(path):
        raise AggscopeError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        return [regular_file(path)]
    files = []

    def unreadable(error: OSError) -> None:
        raise AggscopeError(
            f"{error.filename}: this folder of the input cannot be read ({error.strerror}); its files would be left out"
        )

    for root, dirs, names in os.walk(path, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(os.path.join(root, n) for n in names if n.endswith(tuple(suffixes)) and not n.startswith("."))
    if not files:
        raise AggscopeError(f"{path}: no {what} in this directory")
    return sorted((regular_file(f) for f in files), key=natural_key)


def regular_file(path: str) -> str:
    """``path`` when it is a regular file (or a link to one); else one line saying what it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AggscopeError(f"{path}: no such file (a link to nothing?)") from None
    except OSError as exc:
        raise AggscopeError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise AggscopeError(
            f"{path}: not a regular file (a {kind}); aggscope reads only regular files (opening a {kind} can block)"
        )
    return path


_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def resolve_paths(path: str) -> tuple[list[str], pafs.FileSystem | None]:
    """The Parquet files behind a local path (``list_files``) or a URI, and the URI's filesystem."""
    if "://" not in path:
        return list_files(path, (".parquet",), ".parquet files"), None
    import pyarrow as pa
    import pyarrow.fs as pafs

    def contact() -> tuple[Any, str, Any]:
        filesystem, root = pafs.FileSystem.from_uri(path)
        return filesystem, root, filesystem.get_file_info(root)

    try:
        filesystem, root, info = _within(CONNECT_SECONDS, contact, path)
    except AggscopeError:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise AggscopeError(f"{path}: cannot open this location ({first_line(exc)})") from None
    except Exception as exc:  # a storage's own client (Hugging Face's over fsspec) raises errors of its own kinds
        raise AggscopeError(f"{path}: cannot open this location ({type(exc).__name__}: {first_line(exc)})") from None
    if info.type == pafs.FileType.NotFound:
        raise AggscopeError(f"{path}: no such file or directory")
    if info.type != pafs.FileType.Directory:
        return [root], filesystem
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.path.endswith(".parquet")
        and not any(part.startswith(".") for part in PurePosixPath(f.path).relative_to(root).parts)
    ]
    if not files:
        raise AggscopeError(f"{path}: no .parquet files in this directory")
    return sorted(files, key=natural_key), filesystem


def _within(seconds: float, call: Callable[[], Any], path: str) -> Any:
    """``call()`` on a daemon thread, waited for ``seconds`` at most (a storage that never answers
    keeps only that thread, which ends with the process)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=CONNECT_THREAD, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise AggscopeError(
            f"{path}: no answer from the storage within {seconds:g} s (no network, a wrong endpoint or bucket?); "
            "set AGGSCOPE_CONNECT_TIMEOUT=SECONDS to wait longer"
        )
    done, value = outcome[0]
    if not done:
        raise value
    return value


def step_in_name(path: str) -> int | None:
    """The step in a file or folder name: the last number in its stem (``12.jsonl``, ``step_12``,
    ``global_step_12``, ``completions_00012.parquet``, ``global_step_12_training_input.pkl``), or None."""
    numbers = _NUMBER.findall(PurePosixPath(path).name.split(".")[0])
    if not numbers:
        return None
    digits = numbers[-1].lstrip("0") or "0"
    where = f"{path}: the step in the file name"
    if len(digits) > 19:  # beyond int64 (and int() of thousands of digits would itself refuse)
        raise AggscopeError(f"{where}: step {digits[:12]}... ({len(digits)} digits) is beyond the steps aggscope handles")
    return check_step(int(digits), where)
