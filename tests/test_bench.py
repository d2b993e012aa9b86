"""``bench/run.py --readme``: the README's generated block is rewritten, the text around it kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from bench.run import README_BEGIN, README_END, machine_line, write_readme


def test_the_readme_has_one_generated_block() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    assert text.index(README_BEGIN) < text.index(README_END)


def test_write_readme_replaces_the_block_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_BEGIN}\nold table\n{README_END}\nafter\n", encoding="utf-8")
    write_readme(readme, "new table")
    assert readme.read_text(encoding="utf-8") == f"before\n{README_BEGIN}\nnew table\n{README_END}\nafter\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary left behind
    readme.write_text("no block\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"no .* block to regenerate"):
        write_readme(readme, "new table")
    assert readme.read_text(encoding="utf-8") == "no block\n"


def test_machine_line_names_the_cores_and_the_load() -> None:
    text = machine_line((0.5, 0.0, 0.0), (1.25, 0.0, 0.0))
    line = " ".join(text.split())
    assert " cores, " in line and "Load average (1 min) 0.5 when the run started and 1.2 when it ended" in line
    assert all(len(row) <= 100 for row in text.splitlines())  # wrapped as the README's prose is
