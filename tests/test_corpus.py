"""The corpus (``tests/corpus.py``) as a test: ``pytest -m corpus`` runs every case's commands.

Each run is bounded in time (SIGALRM, ``RUN_SECONDS``) and checked: an ``error`` case exits 2 with
exactly one line on stderr naming the file and the column, row, line, key or option; an ``ok`` case
is read (and its note shown); nothing prints a traceback; the inputs are byte-identical afterwards
(sha256) and no temporary file is left behind. The counts are printed at the end of the session
(and quoted in the README's Safety section).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from corpus import CASES, Case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aggscope.cli import app

pytestmark = [pytest.mark.corpus, pytest.mark.slow]
RUN_SECONDS = int(os.environ.get("AGGSCOPE_CORPUS_SECONDS", "60"))
STATS: Counter[str] = Counter()
runner = CliRunner()


class Hung(BaseException):
    """A run took longer than RUN_SECONDS."""


@contextlib.contextmanager
def bounded(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every input file under ``folder`` (outputs, named ``_out*``, left out)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith("_out") and not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = Path(root, name)
            if name.startswith("_out") or not path.is_file() or not os.access(path, os.R_OK):
                continue
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def as_a_user(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """chmod 000 the case's unreadable folder; as root (who reads anything) listing it fails as for a user."""
    if case.unreadable is None:
        yield
        return
    locked = folder / case.unreadable
    locked.chmod(0)
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path: Any = ".") -> Any:
            if stat.S_IMODE(os.stat(path).st_mode) == 0:
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        yield
    finally:
        locked.chmod(0o755)


def run(args: list[str], case: Case) -> tuple[int, str, str]:
    if case.subprocess:
        done = subprocess.run(
            [sys.executable, "-m", "aggscope", *args], capture_output=True, text=True, timeout=RUN_SECONDS, check=False
        )
        return done.returncode, done.stdout, done.stderr
    with bounded(RUN_SECONDS):
        result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: raised {result.exception!r}") from result.exception
    return result.exit_code, result.stdout, result.stderr


def check_run(case: Case, args: list[str], folder: Path) -> str:
    """Run one command line of a case and check it; the outcome, ``error`` or ``ok``."""
    code, out, err = run(args, case)
    shown = f"{' '.join(a[:60] for a in args)}\nexit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in out + err, shown
    outcome = "error" if code == 2 else "ok"
    if case.expect != "either":
        assert outcome == case.expect, shown
    if outcome == "error":
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aggscope: error: "), shown
        if case.expect == "error":
            for needle in case.needles:
                assert needle.replace("{dir}", str(folder)) in lines[0], f"{needle!r} missing\n{shown}"
    else:
        assert code in (0, 1) if args[0] == "check" else code == 0, shown
        if case.note is not None and args[0] == "inspect":
            assert case.note in " ".join(out.split()), f"note {case.note!r} missing\n{shown}"
    return outcome


def check_case(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    runs = case.runs(folder)
    before = snapshot(folder)
    with as_a_user(case, folder, monkeypatch):
        for args in runs:
            STATS[f"runs {check_run(case, args, folder)}"] += 1
    assert snapshot(folder) == before, "an input changed"
    litter = [p for p in folder.rglob("*.tmp") if not p.is_symlink()]
    assert not litter, f"temporaries left behind: {litter}"
    STATS[f"cases {case.expect}"] += 1


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_case(case, tmp_path, monkeypatch)


# ---- fuzzed bytes (hypothesis): bit flips and cuts of valid files of each format -------------------------
def _valid_files(folder: Path) -> dict[str, Path]:
    from corpus import ADV, GOOD, MASK, VERL, jsonl, parquet, pickled, rows, skyrl_state, slime

    return {
        "parquet": Path(parquet(folder / "a.parquet", rows(), compression="none")),
        "jsonl": Path(jsonl(folder / "3.jsonl", VERL)),
        "pt": Path(slime(folder / "1.pt", GOOD)),
        "pkl": Path(pickled(folder / "global_step_2_training_input.pkl", raw=skyrl_state(loss_mask=MASK, advantages=ADV))),
    }


@settings(max_examples=48, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["parquet", "jsonl", "pt", "pkl"]), data=st.data())
def test_corpus_fuzzed_bytes(kind: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    path = _valid_files(folder)[kind]
    for other in set(folder.iterdir()) - {path}:
        other.unlink()
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="cut"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path.write_bytes(bytes(raw))
    case = Case(f"fuzzed {kind}", lambda d: [str(path)], "either")
    with pytest.MonkeyPatch.context() as monkeypatch:
        check_case(case, folder, monkeypatch)
    STATS["fuzzed"] += 1
