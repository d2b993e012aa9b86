"""Outputs whole or not at all: temporaries, their litter, a set of files swapped in whole, sizes that cannot fit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aggscope.errors import AggscopeError
from aggscope.io import writing
from aggscope.io.limits import check_fits, check_step
from aggscope.io.writing import atomic_directory, atomic_output, temporary_name


def dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.fixture(autouse=True)
def fresh_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writing, "_cleaned", set())  # each test's folders are cleaned on their first write


def test_a_temporary_names_its_host_and_process(tmp_path: Path) -> None:
    name = temporary_name(tmp_path / "w.parquet").name
    assert name.startswith(".w.parquet.") and name.endswith(".tmp") and f"-{os.getpid()}." in name


def test_the_next_write_removes_the_litter_of_dead_writers_only(tmp_path: Path) -> None:
    host = writing._HOST
    dead = tmp_path / f".w.parquet.{host}-{dead_pid()}.0123abcd.tmp"
    live = tmp_path / f".w.parquet.{host}-{os.getppid()}.0123abcd.tmp"  # the test runner's parent is alive
    other_host_fresh = tmp_path / ".w.parquet.elsewhere-1.0123abcd.tmp"
    other_host_old = tmp_path / ".x.parquet.elsewhere-1.89abcdef.tmp"
    old_naming = tmp_path / ".y.parquet.89abcdef.tmp"
    dead_folder = tmp_path / f".rep.{host}-{dead_pid()}.0123abcd.tmp"
    for path in (dead, live, other_host_fresh, other_host_old, old_naming):
        path.write_bytes(b"partial")
    dead_folder.mkdir()
    (dead_folder / "report.json").write_text("{")
    day_ago = time.time() - 2 * writing.STALE_SECONDS
    for path in (other_host_old, old_naming):
        os.utime(path, (day_ago, day_ago))
    user_file = tmp_path / ".notes.tmp"  # not aggscope's naming: never touched
    user_file.write_text("mine")
    with atomic_output(tmp_path / "w.parquet") as temporary:
        temporary.write_bytes(b"whole")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"w.parquet", live.name, other_host_fresh.name, user_file.name}


def test_a_failed_write_leaves_nothing_and_names_the_output(tmp_path: Path) -> None:
    target = tmp_path / "w.parquet"
    with pytest.raises(AggscopeError, match=rf"^{target}: cannot write it: No space left on device$"), atomic_output(target):
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_below_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with (
        pytest.raises(AggscopeError, match=r"notes\.txt is not a directory"),
        atomic_output(tmp_path / "notes.txt" / "w.parquet"),
    ):
        pass


def replaceable(name: str) -> bool:
    return name in ("a.txt", "b.txt")


def test_a_set_is_swapped_in_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_directory(out, replaceable) as folder:
        (folder / "a.txt").write_text("1")
        (folder / "b.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(out, replaceable) as folder:
        (folder / "a.txt").write_text("2")
        raise RuntimeError("killed between two files")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "1", "b.txt": "1"}  # the previous set, whole
    with atomic_directory(out, replaceable) as folder:
        (folder / "a.txt").write_text("3")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "3"}  # the new set replaces the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_holding_other_files_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with (
        pytest.raises(AggscopeError, match=r"holds 'thesis\.tex', which is not an earlier output"),
        atomic_directory(out, replaceable),
    ):
        pass
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("given", ["", ".", ".."])
def test_an_unnamed_folder_is_refused(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AggscopeError, match="name the folder to write into"), atomic_directory(Path(given), replaceable):
        pass


def test_sizes_that_cannot_fit_are_refused_before_allocating() -> None:
    check_fits(10**6, "x", "holds")
    with pytest.raises(AggscopeError, match=r"^f.parquet: row 3: 'response_length' adds up to 1,099,511,627,776 tokens"):
        check_fits(2**40, "f.parquet: row 3", "'response_length' adds up to")


def test_steps_beyond_int64_are_refused() -> None:
    assert check_step(2**63 - 1, "x") == 2**63 - 1 and check_step(-(2**63), "x") == -(2**63)
    with pytest.raises(AggscopeError, match=r"^f: step 9223372036854775808 is beyond"):
        check_step(2**63, "f")
