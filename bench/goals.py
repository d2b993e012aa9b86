"""The goals of issue #15, each a ratio of two things measured in the same run, with pass or fail.

``bench/run.py`` calls ``measure_goals`` after its table. Whole processes are timed as a shell user
waits for them (start-up included; the median of ``repeat`` runs); in-process times are the fastest
of the cases' runs (``bench/cases.py``, imports excluded). The duckdb and polars peers
(``bench/peers.py``) are checked equal to aggscope's numbers before they are timed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "rollouts.parquet"


@dataclass(frozen=True)
class Goal:
    """One goal: ``measured`` (a ratio, or seconds for the start-up goals) against ``target`` (at most)."""

    name: str
    measured: float
    target: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.measured <= self.target


def aggscope_command() -> list[str]:
    """The ``aggscope`` script a shell user runs (``python -m aggscope`` where it is not installed)."""
    script = Path(sys.executable).parent / "aggscope"
    return [str(script)] if script.exists() else [sys.executable, "-m", "aggscope"]


def wall_time(command: list[str], repeat: int, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Median wall time of ``repeat`` runs of a whole process (its output discarded), after one untimed run.

    The untimed run leaves what a user's second run finds: the input in the page cache and the
    package's bytecode in ``__pycache__`` (``pip install`` compiles it; ``PYTHONDONTWRITEBYTECODE``,
    set on some machines, is dropped so that a source checkout gets it too). Without it, every run
    would compile each imported module from source, a cost no installed package pays.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO)
    times = []
    subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode not in ok_codes:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return statistics.median(times)


def read_floor(path: Path, columns: list[str] | None) -> list[str]:
    """``python -c 'import pyarrow.parquet; read_table(...)'``: the whole-process floor of reading ``path``."""
    return [sys.executable, "-c", f"import pyarrow.parquet as pq; pq.read_table({str(path)!r}, columns={columns!r})"]


def startup_goals(repeat: int) -> list[Goal]:
    """``--help``, ``weights --help`` and usage errors: under 0.3 s whole process."""
    aggscope = aggscope_command()
    commands = {
        "aggscope --help": ([*aggscope, "--help"], (0,)),
        "aggscope weights --help": ([*aggscope, "weights", "--help"], (0,)),
        "aggscope weights -m nope": ([*aggscope, "weights", str(SAMPLE), "-m", "nope"], (2,)),
        "aggscope check no_such_file.parquet": ([*aggscope, "check", "no_such_file.parquet"], (2,)),
        "aggscope report --mini-batch-size 0": ([*aggscope, "report", str(SAMPLE), "--mini-batch-size", "0"], (2,)),
    }
    bare = wall_time([sys.executable, "-c", "pass"], repeat)
    return [
        Goal(f"`{name}` whole process (s)", wall_time(command, repeat, codes), 0.3, f"bare `python -c pass`: {bare:.3f} s")
        for name, (command, codes) in commands.items()
    ]


def process_goals(paths: dict[int, Path], repeat: int, check_equal: Callable[[str, Path], str]) -> list[Goal]:
    """``weights --json`` against the duckdb script and the read floor, ``report`` against ``weights --json``."""
    from bench.cases import NEEDED

    aggscope = aggscope_command()
    goals = []
    for tokens, path in paths.items():
        size = f"{tokens:.0e}".replace("+0", "")
        agreement = check_equal("duckdb", path)
        weights = wall_time([*aggscope, "weights", str(path), "--json"], repeat)
        duckdb = wall_time([sys.executable, "-m", "bench.peers", "duckdb", str(path)], repeat)
        polars = wall_time([sys.executable, "-m", "bench.peers", "polars", str(path)], repeat)
        floor = wall_time(read_floor(path, NEEDED), repeat)
        detail = f"weights --json {weights:.2f} s, duckdb script {duckdb:.2f} s ({agreement}), polars script {polars:.2f} s"
        goals.append(Goal(f"whole process, {size} tokens: `weights --json` / duckdb script", weights / duckdb, 1.2, detail))
        goals.append(
            Goal(
                f"whole process, {size} tokens: `weights --json` / read_table floor",
                weights / floor,
                1.6,
                f"read_table process {floor:.2f} s",
            )
        )
        if tokens == min(paths):
            out = Path(tempfile.mkdtemp(prefix="aggscope-bench-report"))
            try:
                report = wall_time([*aggscope, "report", str(path), "-o", str(out / "r")], repeat)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            goals.append(
                Goal(
                    f"whole process, {size} tokens: `report` / `weights --json`", report / weights, 3.0, f"report {report:.2f} s"
                )
            )
    check = wall_time([*aggscope, "check", str(SAMPLE), "--json"], repeat)
    sample_floor = wall_time(read_floor(SAMPLE, None), repeat)
    goals.append(
        Goal(
            "whole process: `check --json` on the bundled sample / reading it",
            check / sample_floor,
            3.0,
            f"check {check:.2f} s, read_table process {sample_floor:.2f} s",
        )
    )
    return goals


def in_process_goals(rows: dict[str, dict[str, Any]], one_step: str, small_steps: str) -> list[Goal]:
    """Goals on the cases' fastest in-process runs: ``rows[label][case]`` as ``bench.run`` merges them."""
    goals = []
    for label, cases in rows.items():
        if label == small_steps or "seconds" not in cases.get("summary", {}) or "seconds" not in cases.get("read", {}):
            continue
        goals.append(
            Goal(
                f"in process, {label}: summary / read_table",
                cases["summary"]["seconds"] / cases["read"]["seconds"],
                1.5,
                f"summary {cases['summary']['seconds']:.3f} s, read_table {cases['read']['seconds']:.3f} s",
            )
        )
    one, many = rows.get(one_step, {}), rows.get(small_steps, {})
    if "seconds" in one.get("report", {}) and "seconds" in one.get("summary", {}):
        goals.append(
            Goal(
                f"in process, {one_step}: report / weights",
                one["report"]["seconds"] / one["summary"]["seconds"],
                4.0,
                f"report {one['report']['seconds']:.2f} s, weights {one['summary']['seconds']:.3f} s",
            )
        )
    for case, name in (("summary", "weights"), ("check", "check"), ("report", "report")):
        if "seconds" in one.get(case, {}) and "seconds" in many.get(case, {}):
            goals.append(
                Goal(
                    f"in process, {name}: {small_steps} / {one_step}",
                    many[case]["seconds"] / one[case]["seconds"],
                    1.5,
                    f"{many[case]['seconds']:.3f} s against {one[case]['seconds']:.3f} s",
                )
            )
    return goals


def render_goals(goals: list[Goal]) -> str:
    lines = ["| goal | measured | target (at most) | | in the same run |", "|---|---:|---:|---|---|"]
    for goal in goals:
        verdict = "pass" if goal.passed else "**fail**"
        lines.append(f"| {goal.name} | {goal.measured:.2f} | {goal.target:.2f} | {verdict} | {goal.detail} |")
    return "\n".join(lines)
