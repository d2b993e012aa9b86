"""Check that a change kept every number: the same commands on the same inputs, byte for byte.

Runs ``weights --json``, ``check --json``, ``inspect --json`` and ``report`` (its ``report.json``) on the
bundled samples and on every real dump in ``../shared/data/real`` under several layouts, with the code
of this checkout and with the code of a base revision (checked out into a temporary git worktree), and
diffs the two sets of outputs::

    python bench/same_outputs.py 31ebd54          # compare this checkout against revision 31ebd54
    python bench/same_outputs.py --write DIR      # only write this checkout's outputs into DIR

Exit code 0 when every output is identical, 1 otherwise (the differing files are listed).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"

LAYOUTS = {
    "whole": [],
    "mb64_mu4_dp2": ["--mini-batch-size", "64", "--micro-batch-size", "4", "--dp-size", "2", "--max-seq-len", "1024"],
    "mb10": ["--mini-batch-size", "10"],
    "mp2_grouped": ["--mini-batch-prompts", "2", "--order", "grouped", "--micro-batch-size", "3"],
    "shuffle": ["--mini-batch-size", "8", "--order", "shuffle", "--seed", "3", "--dp-size", "3"],
}


def inputs() -> dict[str, str]:
    found = {"sample": str(ROOT / "sample_data" / "rollouts.parquet"), "faulty": str(ROOT / "sample_data" / "faulty.parquet")}
    if REAL.is_dir():
        for path in sorted(REAL.glob("*.jsonl")):
            found[path.stem] = str(path)
    return found


def _one(code: Path, target: Path, command: str, path: str, flags: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "COLUMNS": "100"}
    args = [sys.executable, "-m", "aggscope", command, path, *flags]
    report_dir = Path(tempfile.mkdtemp())
    args += ["-o", str(report_dir)] if command == "report" else ["--json"]
    done = subprocess.run(args, capture_output=True, env=env, cwd=code, check=False)
    report = report_dir / "report.json"
    body = (report.read_bytes() if report.exists() else b"") if command == "report" else done.stdout
    shutil.rmtree(report_dir, ignore_errors=True)
    # the report folder's name is random: keep it out of the comparison
    stderr = done.stderr.replace(str(report_dir).encode(), b"REPORT_DIR")
    target.write_bytes(b"exit %d\n" % done.returncode + body + b"\n--- stderr\n" + stderr)


def run(code: Path, out: Path) -> None:
    """Write every output of the checkout at ``code`` into ``out`` (one file per command, input and layout)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (out / f"{name}.{layout}.{command}", command, path, flags)
        for name, path in inputs().items()
        for layout, flags in LAYOUTS.items()
        for command in ("weights", "check", "inspect", "report")
        if command != "inspect" or layout == "whole"
    ]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(lambda job: _one(code, *job), jobs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", help="git revision to compare against")
    parser.add_argument("--write", type=Path, help="only write this checkout's outputs into this folder")
    args = parser.parse_args()
    if args.write:
        run(ROOT, args.write)
        return 0
    if not args.base:
        parser.error("give a base revision, or --write DIR")
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree), args.base], check=True)
        try:
            # the base's samples are the bundled files of the base; the real dumps are read in place
            run(worktree, Path(tmp) / "before")
            run(ROOT, Path(tmp) / "after")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
        before, after = sorted(os.listdir(Path(tmp) / "before")), sorted(os.listdir(Path(tmp) / "after"))
        _, differ, errors = filecmp.cmpfiles(Path(tmp) / "before", Path(tmp) / "after", before, shallow=False)
        differ += errors + sorted(set(before) ^ set(after))
        for name in differ:
            print(f"differs: {name}")
        print(f"{len(before) - len(differ)} of {len(before)} outputs identical")
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
