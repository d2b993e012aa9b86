"""The README's library examples run as written: every Python snippet of its "Library", "aggscope
compare" and Ray sections, executed on the bundled sample, and every ``aggscope.*`` name and
``aggscope/*.py`` path those sections mention exists."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, SAMPLE_DATA

from aggscope.analysis import runner
from aggscope.errors import AggscopeError

README = REPO / "README.md"
LIBRARY = "Library"
COMPARE = "`aggscope compare`: before you change a config"
RAY = "Many machines: Ray, clusters and object storage"


def section(heading: str) -> str:
    """The README's text under ``## heading`` up to the next ``## ``."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def python_snippets(heading: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(heading), flags=re.DOTALL)


@pytest.fixture
def in_a_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose ``rollouts/`` is the bundled sample, as the snippets expect."""
    (tmp_path / "rollouts").mkdir()
    shutil.copy(SAMPLE_DATA / "rollouts.parquet", tmp_path / "rollouts" / "rollouts.parquet")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_snippets(snippets: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
    for snippet in snippets:
        exec(compile(snippet, str(README), "exec"), namespace)
    return namespace


def test_library_section_runs(in_a_run_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opened, in_a_trainer = python_snippets(LIBRARY)
    namespace = run_snippets([opened], {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["0", "1", "2", "3"]  # one line per step
    assert all(float(line.split()[1]) > 0 for line in printed)
    # Inside a trainer: the padded [B, L] tensors it is about to train on.
    b, length = 4, 6
    trainer = {
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(b, length),
        "loss_mask": torch.arange(length)[None, :] < torch.tensor([6, 3, 4, 2])[:, None],  # right padding
        "uids": torch.tensor([0, 0, 1, 1]),
        "B": b,
        "L": length,
    }
    namespace = run_snippets([in_a_trainer], {**namespace, **trainer})
    per_token = namespace["per_token"]
    assert per_token.shape == (b, length)
    assert bool((per_token[~trainer["loss_mask"]] == 0).all()) and bool((per_token[trainer["loss_mask"]] > 0).all())


def test_compare_section_runs(in_a_run_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (snippet,) = python_snippets(COMPARE)
    namespace = run_snippets([snippet], {})
    report = namespace["report"]
    assert capsys.readouterr().out.strip() == report.summary[3]
    assert report.document["base"] == "token_mean" and set(report.document["results"]) == {
        "token_mean",
        "prompt_mean,mini-batch-size=100",
    }
    assert (in_a_run_folder / "compare" / "report.html").is_file()


def test_ray_section_runs(in_a_run_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The snippet runs with the local engine: ``open_engine`` is checked as called, then runs here."""
    (snippet,) = python_snippets(RAY)
    real_open_engine = runner.open_engine
    called: list[tuple[Any, ...]] = []

    def local_engine(name: str = "local", address: str | None = None) -> runner.Engine:
        called.append((name, address))
        try:
            real_open_engine(name, address)  # a valid call (Ray itself may be missing here)
        except AggscopeError as exc:
            assert exc.message == runner.RAY_MISSING
        return runner.Engine()

    monkeypatch.setattr(runner, "open_engine", local_engine)
    namespace = run_snippets([snippet], {})
    assert called == [("ray", "auto")]
    assert float(capsys.readouterr().out) == pytest.approx(namespace["weights"].total.modes["token_mean"].ess_tokens)
    assert (in_a_run_folder / "reports" / "report.json").is_file()


def resolve(name: str) -> Any:
    """``aggscope.a.b.c``: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("heading", [LIBRARY, COMPARE, RAY])
def test_names_and_paths_the_sections_mention_exist(heading: str) -> None:
    text = section(heading)
    names = set(re.findall(r"\baggscope(?:\.[A-Za-z_]\w*)+", text))
    assert names or heading == LIBRARY
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"README section {heading!r} names {name}, which does not exist: {exc}")
    for path in re.findall(r"`(aggscope/[\w/]+\.py)`", text):
        assert (REPO / path).is_file(), f"README section {heading!r} names {path}, which does not exist"
