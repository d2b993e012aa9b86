"""Writing output files whole or not at all, and building Arrow list columns from flat arrays.

Every output is first written under a temporary dot-name beside its target,
``.{name}.{host}-{pid}.{random}.tmp`` (a file, or a folder for a set of files), and renamed into
place when complete: a reader never sees a partial file, and no command reads a dot-name. A
writer killed with SIGKILL cannot remove its temporary; the next write into the same folder
removes those whose process is gone (same host), or that are a day old (another host on a shared
file system).
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from aggscope.errors import AggscopeError

if TYPE_CHECKING:  # numpy and pyarrow are imported by list_array only: a usage error must not pay their import
    import numpy as np
    import pyarrow as pa

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_OLD_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # before the host and pid were in the name
STALE_SECONDS = 24 * 3600  # a temporary of another host (or of the old naming) older than this is litter
_cleaned: set[str] = set()
_active: set[Path] = set()  # temporaries being written now, for a process that must end at once


def discard_active_outputs() -> None:
    """Remove every temporary this process is writing (a process ending on a signal calls this)."""
    for temporary in list(_active):
        _discard(temporary)


def temporary_name(final: Path) -> Path:
    """The temporary path beside ``final`` that this process writes before renaming."""
    return final.parent / f".{final.name}.{_HOST}-{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove aggscope's temporaries in ``directory`` left by writers that were killed; the removed paths.

    Done once per folder and process: a temporary of this host whose process is gone, or one
    older than ``STALE_SECONDS`` (another host's, or of an earlier naming).
    """
    key = str(directory.resolve()) if directory.exists() else str(directory)
    if key in _cleaned:
        return []
    _cleaned.add(key)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    now = time.time()
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and _is_stale(entry, now):
            try:
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another process removed it first, or it is not ours to remove
    return removed


def _is_stale(entry: os.DirEntry[str], now: float) -> bool:
    match = _TEMPORARY.match(entry.name)
    try:
        age = now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    if match is None:
        return _OLD_TEMPORARY.match(entry.name) is not None and age > STALE_SECONDS
    if match["host"] != _HOST:
        return age > STALE_SECONDS
    return not _alive(int(match["pid"]))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or an unknowable one): not ours to judge
    return True


def _output_error(final: Path, exc: OSError) -> AggscopeError:
    """One line naming the output (not its temporary) and what the file system said."""
    reason = exc.strerror or _first_line(exc)
    if exc.errno == errno.ENOSPC or "No space left" in str(exc):
        reason = "No space left on device"
    return AggscopeError(f"{final}: cannot write it: {reason}")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_parent(final: Path) -> None:
    parent = final.parent
    if not parent.exists():
        raise AggscopeError(f"{final}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise AggscopeError(f"{final}: {parent} is not a directory")


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it.

    The temporary name starts with a dot and ends in ``.tmp``, so no reader of a directory of
    Parquet files ever picks up a half-written file, even after the writer is killed. An error of
    the file system (a full disk, a read-only folder) is one line naming ``path``.
    """
    final = Path(path)
    if final.is_dir():
        raise AggscopeError(f"{final}: is a directory; give a file name")
    _check_parent(final)
    remove_stale_temporaries(final.parent)
    temporary = temporary_name(final)
    _active.add(temporary)
    try:
        yield temporary
        os.replace(temporary, final)
    except BaseException as exc:
        _discard(temporary)
        if isinstance(exc, OSError) and not isinstance(exc, (BrokenPipeError, InterruptedError)):
            raise _output_error(final, exc) from None
        raise
    finally:
        _active.discard(temporary)


def _discard(temporary: Path) -> None:
    """Remove a temporary file or folder; never raise (the error that got here is the one to report)."""
    try:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_directory(path: str | os.PathLike[str], replaceable: Callable[[str], bool]) -> Iterator[Path]:
    """Yield a temporary folder beside the folder ``path``; on success swap it in whole, else delete it.

    A set of files (a report and its figures) appears whole or not at all: a kill, a full disk or
    a concurrent writer never leaves the files of two runs side by side, or half a set. An
    existing ``path`` is replaced whole, so it may hold only files that ``replaceable(name)``
    accepts (an earlier output of the same kind); anything else is refused, before any work, by
    ``check_replaceable_directory``.
    """
    final = Path(path)
    if final.is_symlink():  # a link to the real folder: replace what it points to
        final = final.resolve()
    check_replaceable_directory(final, replaceable)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)  # the folder's parents are created, as the folder is
    except (FileExistsError, NotADirectoryError):
        raise AggscopeError(f"{final}: a part of {final.parent} is not a directory") from None
    except OSError as exc:
        raise _output_error(final, exc) from None
    remove_stale_temporaries(final.parent)
    temporary = temporary_name(final)
    _active.add(temporary)
    try:
        temporary.mkdir()
        yield temporary
        _swap_in(temporary, final, replaceable)
    except BaseException as exc:
        _discard(temporary)
        if isinstance(exc, OSError) and not isinstance(exc, (BrokenPipeError, InterruptedError)):
            raise _output_error(final, exc) from None
        raise
    finally:
        _active.discard(temporary)


def check_replaceable_directory(final: Path, replaceable: Callable[[str], bool]) -> None:
    """One line when ``final`` cannot take a whole set: not a folder, unnamed, or holding other files."""
    if str(final) in ("", ".", "..", os.sep) or final.name in ("", ".", ".."):
        raise AggscopeError(f"-o {str(final)!r}: name the folder to write into (it is replaced whole), e.g. -o reports")
    if final.exists() and not final.is_dir():
        raise AggscopeError(f"{final}: exists and is not a directory; give a directory for the output")
    if final.is_dir():
        foreign = sorted(name for name in os.listdir(final) if not replaceable(name))
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise AggscopeError(
                f"{final}: holds {foreign[0]!r}{more}, which is not an earlier output of this command; the folder is "
                "replaced whole, so give a new or empty folder"
            )


def _swap_in(temporary: Path, final: Path, replaceable: Callable[[str], bool]) -> None:
    """Put ``temporary`` at ``final``: a rename onto a missing or empty folder, else an atomic exchange.

    Concurrent writers each swap their own complete set in; the last one stays.
    """
    for _ in range(100):
        try:
            os.rename(temporary, final)  # atomic; onto an empty folder too (POSIX)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        check_replaceable_directory(final, replaceable)  # what is there now is an earlier output
        try:
            if _exchange(temporary, final):
                _discard(temporary)  # now the previous output
                return
        except FileNotFoundError:
            continue  # another writer moved it away meanwhile
        # No atomic exchange here: move the previous output aside, then rename (a reader may find
        # no folder for a moment, never a mixed one).
        aside = temporary_name(final)
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            continue  # another writer moved it first
        _discard(aside)
    raise AggscopeError(f"{final}: other processes keep replacing this folder; write the report elsewhere")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def list_array(values: np.ndarray | pa.Array, offsets: np.ndarray) -> pa.Array:
    """A list column from flat ``values`` and ``[n_rows + 1]`` offsets (large offsets when needed)."""
    import numpy as np
    import pyarrow as pa

    flat = values if isinstance(values, pa.Array) else pa.array(values)
    if offsets.size and int(offsets[-1]) >= 2**31 - 1:
        return pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), flat)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)


def refuse_to_overwrite_inputs(output: str | os.PathLike[str], inputs: list[str], source: str | None = None) -> None:
    """Raise when an output path is one of the input files, or lies where the input is read whole.

    Input files are never modified; and a file written into an input folder (or matching its
    glob) would be read as input by the next command, counting its sequences twice.
    """
    target = Path(output).resolve()
    for file in inputs:
        if "://" not in file and Path(file).resolve() == target:
            raise AggscopeError(f"{output}: is one of the input files; choose another output name")
    if source is None or "://" in source:
        return
    if os.path.isdir(source) and target.is_relative_to(Path(source).resolve()):
        raise AggscopeError(
            f"{output}: lies inside the input folder {source}, which is read whole: the next command would read it as "
            "input too; write it outside the folder"
        )
    if any(ch in source for ch in "*?[") and not os.path.exists(source) and fnmatch.fnmatch(str(target), os.path.abspath(source)):
        raise AggscopeError(
            f"{output}: matches the input pattern {source}: the next command would read it as input too; choose another name"
        )
