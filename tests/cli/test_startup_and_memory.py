"""Start-up cost and memory of whole processes: ``--help`` stays light, a run holds one step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: fresh interpreters and many steps


REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "pandas", "matplotlib", "pyarrow", "numpy", "rich")

PROBE = """
import runpy, sys

sys.argv = ["aggscope", *sys.argv[1:]]
try:
    runpy.run_module("aggscope", run_name="__main__")
except SystemExit:
    pass
print("\\nLOADED", [name for name in {heavy!r} if name in sys.modules])
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["weights", "--help"], ["inspect", "--help"]])
def test_help_and_version_import_no_heavy_library(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "aggscope" in done.stdout
    loaded = done.stdout.rsplit("LOADED", 1)[1].strip()
    assert loaded == "[]", f"aggscope {' '.join(args)} imported {loaded}"


SUMMARY_PROBE = """
import runpy, sys
sys.argv = ["aggscope", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("aggscope", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("\\nEXIT", code, "LOADED", [name for name in ("torch", "pandas", "matplotlib") if name in sys.modules])
"""


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["weights", "--json"], 0),
        (["check", "--json"], 0),
        (["weights", "-m", "nope"], 2),
        (["weights", "no_such_file.parquet"], 2),
        (["weights", "--mini-batch-size", "0"], 2),
        (["check", "-m", "nope"], 2),
        (["check", "no_such_file.parquet"], 2),
        (["check", "--mini-batch-size", "0"], 2),
        (["report", "-m", "nope"], 2),
        (["report", "--mini-batch-size", "0"], 2),
        (["plot", "-m", "nope"], 2),
        (["plot", "--figure", "nope"], 2),
        (["compare", "--from", "nope"], 2),
    ],
)
def test_summaries_and_usage_errors_import_no_torch_pandas_or_matplotlib(args: list[str], exit_code: int) -> None:
    """The summary path is numpy and pyarrow only: torch, pandas and matplotlib cost seconds to import.

    A usage error of ``report``, ``plot`` or ``compare`` is told before their figures import matplotlib.
    """
    code, loaded = _exit_and_loaded(SUMMARY_PROBE, args)
    assert code == exit_code
    assert loaded == "[]", f"aggscope {' '.join(args)} imported {loaded}"


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not hasattr(os, "fork"), reason="the standby child needs fork and two cores")
@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_draws_in_a_child_and_never_imports_matplotlib_itself(tmp_path: Path, command: str) -> None:
    """``report`` and ``compare`` fork a child that imports matplotlib while the steps are read, and draws."""
    extra = ["--from", "token_mean", "--to", "sequence_mean"] if command == "compare" else []
    code, loaded = _exit_and_loaded(SUMMARY_PROBE, [command, *extra, "-o", str(tmp_path / "out")])
    assert code == 0
    assert "matplotlib" not in loaded, loaded
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png")  # the figures were drawn


def _exit_and_loaded(probe: str, args: list[str]) -> tuple[int, str]:
    """Run ``aggscope ARGS`` under ``probe`` in a fresh interpreter: its exit code and the heavy modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    tail = done.stdout.rsplit("EXIT", 1)[1].split()
    return int(tail[0]), " ".join(tail[2:])


USAGE_ERRORS = (
    ["check", "-m", "nope"],
    ["weights", "-m", "nope"],
    ["report", "-m", "nope"],
    ["weights", "--mini-batch-size", "0"],
    ["report", "--mini-batch-size", "0"],
    ["check", "--order", "nope"],
    ["check", "--fail-on", "nope"],
    ["check", "--max-no-grad-share", "2"],
    ["check", "--max-response-len", "0"],
    ["report", "--max-no-grad-share", "nope"],
    ["weights", "--composition", "ranks_first", "--mini-batch-size", "3", "--dp-size", "2"],
)


def test_usage_errors_import_no_numpy_pyarrow_or_rich() -> None:
    """A bad mode or layout is refused before anything numerical loads: numpy and pyarrow are a tenth
    of a second each, rich's console half that, and the whole process should answer in under 0.3 s."""
    probe = SUMMARY_PROBE.replace('("torch", "pandas", "matplotlib")', '("pyarrow", "numpy", "rich")')
    for args in USAGE_ERRORS:
        assert _exit_and_loaded(probe, args) == (2, "[]"), f"aggscope {' '.join(args)}"


def test_json_summaries_import_no_rich() -> None:
    """``--json`` prints no table, so the terminal drawing (rich) stays unloaded."""
    probe = SUMMARY_PROBE.replace('("torch", "pandas", "matplotlib")', '("rich",)')
    for args in (["weights", "--json"], ["check", "--json"]):
        assert _exit_and_loaded(probe, args) == (0, "[]"), f"aggscope {' '.join(args)}"


def test_a_missing_path_is_told_before_numpy_or_pyarrow_load() -> None:
    """A mistyped path (file, folder or glob) costs start-up only: it is checked before any reader loads."""
    probe = SUMMARY_PROBE.replace('("torch", "pandas", "matplotlib")', '("pyarrow", "numpy")')
    for args in (["check", "no_such_file.parquet"], ["weights", "no_such_dir/"], ["report", "nowhere/*.parquet"]):
        assert _exit_and_loaded(probe, args) == (2, "[]"), f"aggscope {' '.join(args)}"


def test_safe_load_imports_torch_only_when_a_dump_needs_it() -> None:
    """``aggscope.io.safe_load`` is imported by the SkyRL and slime readers; its allow-list is built on first use."""
    code = (
        "import sys; import aggscope.io.safe_load as s; before = 'torch' in sys.modules; "
        "n = len(s.SKYRL_GLOBALS); print(before, 'torch' in sys.modules, n > 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]


def _peak_rss_of(command: list[str], stdout: Path) -> int:
    """Run a command to completion and return its peak resident memory in bytes."""
    with stdout.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read() if process.stderr else ""
    return usage.ru_maxrss * 1024


def test_memory_stays_flat_as_steps_grow(tmp_path: Path) -> None:
    """20 steps of 2e6 tokens take no more memory than 2 steps: only the current step is held."""
    sys.path.insert(0, str(REPO))
    from bench.synth import SynthConfig, write_synthetic

    peaks = {}
    for steps in (2, 20):
        path = write_synthetic(tmp_path / f"steps{steps}.parquet", SynthConfig(tokens=2_000_000, steps=steps, median_len=800))
        command = [sys.executable, "-m", "aggscope", "weights", str(path), "--json"]
        peaks[steps] = _peak_rss_of(command, tmp_path / f"out{steps}.json")
        report = json.loads((tmp_path / f"out{steps}.json").read_text())
        assert len(report["steps"]) == steps and report["total"]["tokens"] == steps * 2_000_000
        path.unlink()
    assert peaks[20] <= 1.2 * peaks[2], f"peak RSS grew from {peaks[2] / 2**20:.0f} MiB to {peaks[20] / 2**20:.0f} MiB"
