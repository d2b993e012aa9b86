"""Benchmark aggscope against the bare Parquet read and two straightforward references.

    python bench/run.py --sizes 1e6,3e6,1e7,3e7,1e8,1.8e8

For every size it writes one synthetic step of that many tokens (``bench/synth.py``; cached in
``--data-dir``, which is outside git), runs every case in its own process on that same file
(``bench/cases.py``; the best of ``--repeat`` runs) and prints tokens per second, peak memory and
the ratios the targets are stated in. The references run up to ``--ref-max`` tokens. Then it times
whole processes: ``aggscope weights --json`` against a process that only imports pyarrow and
reads the same columns. Results also go to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.cases import NEEDED  # noqa: E402
from bench.goals import Goal, in_process_goals, process_goals, render_goals, startup_goals  # noqa: E402
from bench.synth import SynthConfig, write_synthetic  # noqa: E402

RESULTS = REPO / "bench" / "results"
REFERENCES = ("duckdb", "polars", "pandas", "padded")
DEFAULT_CASES = ("read", "summary", "out", "read_write", "check", "report", "duckdb", "polars", "pandas", "padded")
REPORT_MAX = 1e7  # the largest size ``report`` runs at in the table (it draws every figure)
SMALL_STEP_CASES = ("read", "summary", "check", "report")


def parse_sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def data_file(data_dir: Path, tokens: int, seed: int, steps: int = 1) -> Path:
    path = data_dir / f"synth_{tokens:.2g}_{seed}{f'_x{steps}' if steps > 1 else ''}.parquet".replace("+", "")
    if not path.exists():
        start = time.perf_counter()
        partial = path.with_suffix(".partial")
        write_synthetic(partial, SynthConfig(tokens=tokens, seed=seed, steps=steps))
        partial.rename(path)
        print(
            f"  generated {path.name} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s", flush=True
        )
    return path


def run_case(case: str, path: Path, work_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.cases", case, str(path), str(work_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run's result, with the highest peak memory of all runs."""
    good = [r for r in runs if "seconds" in r]
    if not good:
        return runs[0]
    best = dict(min(good, key=lambda r: r["seconds"]))
    best["peak_rss"] = max(r["peak_rss"] for r in good)
    best["runs"] = [round(r["seconds"], 4) for r in good]
    return best


def whole_process(path: Path, repeat: int) -> dict[str, float]:
    """Wall time of ``aggscope weights --json`` and of a process that only reads the same columns."""
    read = f"import pyarrow.parquet as pq; pq.read_table({str(path)!r}, columns={NEEDED!r})"
    commands = {
        "aggscope_weights_json": [sys.executable, "-m", "aggscope", "weights", str(path), "--json"],
        "pyarrow_read": [sys.executable, "-c", read],
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times: dict[str, float] = {}
    for name, command in commands.items():
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    times["ratio"] = times["aggscope_weights_json"] / times["pyarrow_read"]
    return times


def agree(reference: dict[str, Any], ours: dict[str, Any], rtol: float) -> bool:
    """True when a reference's per-mode sums and counts match aggscope's."""
    for mode, values in reference.items():
        for key, value in values.items():
            mine = ours[mode][key]
            if isinstance(value, int):
                if value != mine:
                    return False
            elif abs(value - mine) > rtol * max(abs(mine), 1e-300):
                return False
    return True


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def render(rows: list[dict[str, Any]]) -> str:
    header = (
        "| tokens | case | seconds | Mtokens/s | peak RSS MiB | working MiB | x decoded | vs read | aggscope faster by |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for row in rows:
        tokens = row["tokens"]
        results = row["cases"]
        read = results.get("read", {})
        decoded = read.get("decoded_bytes")
        summary_seconds = results.get("summary", {}).get("seconds")
        for case, result in results.items():
            if "seconds" not in result:
                reason = result.get("skipped") or result.get("error") or "-"
                lines.append(f"| {tokens:.2g} | {case} | {reason} | | | | | | |")
                continue
            seconds = result["seconds"]
            working = result["peak_rss"] - result["base_rss"]
            vs_read = f"{seconds / read['seconds']:.2f}" if "seconds" in read else "-"
            if case == "out" and "seconds" in results.get("read_write", {}):
                vs_read = f"{seconds / results['read_write']['seconds']:.2f} (vs read+write)"
            faster = f"{seconds / summary_seconds:.1f}x" if case in REFERENCES and summary_seconds else ""
            if case in REFERENCES and "agrees" in result:
                faster += "" if result["agrees"] else " (DISAGREES)"
            lines.append(
                f"| {tokens:.2g} | {case} | {seconds:.3f} | {tokens / seconds / 1e6:,.1f} | {mib(result['peak_rss'])} | "
                f"{mib(working)} | {working / decoded:.2f} | {vs_read} | {faster} |"
                if decoded
                else f"| {tokens:.2g} | {case} | {seconds:.3f} | {tokens / seconds / 1e6:,.1f} | {mib(result['peak_rss'])} | "
                f"{mib(working)} | - | {vs_read} | {faster} |"
            )
    return "\n".join(lines)


def run_size(tokens: int, path: Path, cases: list[str], args: argparse.Namespace, label: str | None = None) -> dict[str, Any]:
    """Every case on one file, in rounds; the merged results (references checked against aggscope)."""
    print(label or f"{tokens:.2g} tokens", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(dir=args.data_dir) as work:
        # Rounds of every case in turn (not all runs of one case, then the next), so that
        # a busy spell of the machine does not land on one case only.
        rounds = args.repeat if tokens < 1e8 else min(args.repeat, 2)
        for round_index in range(rounds):
            for case in cases:
                if case in REFERENCES and (tokens > args.ref_max or (round_index > 0 and tokens > 1e7)):
                    continue
                if case == "report" and tokens > REPORT_MAX:
                    continue
                if case == "read_write" and not any("seconds" in r for r in runs.get("out", [])):
                    continue
                result = run_case(case, path, Path(work))
                runs.setdefault(case, []).append(result)
                print(f"  {case}: {result.get('seconds', result)}", flush=True)
    results: dict[str, Any] = {case: merge_runs(case_runs) for case, case_runs in runs.items()}
    ours = results.get("summary", {}).get("digest")
    for case in REFERENCES:
        if ours and "digest" in results.get(case, {}):
            results[case]["agrees"] = agree(results[case].pop("digest"), ours, rtol=1e-5)
    for result in results.values():
        result.pop("report", None)
        result.pop("digest", None)
    return {"tokens": tokens, "label": label, "file_bytes": path.stat().st_size, "cases": results}


def peer_agreement(peer: str, path: Path) -> str:
    """Run a peer and aggscope on ``path`` and compare their per-mode numbers; raise if they differ."""
    done = [run_case(case, path, path.parent) for case in (peer, "summary")]
    if any("digest" not in d for d in done):
        raise RuntimeError(f"{peer} or aggscope failed on {path}: {done}")
    if not agree(done[0]["digest"], done[1]["digest"], rtol=1e-9):
        raise RuntimeError(f"{peer}'s numbers differ from aggscope's on {path}")
    return "numbers equal to aggscope's, rtol 1e-9"


README_BEGIN = "<!-- bench/run.py --readme: begin (generated; edit bench/run.py, not this block) -->"
README_END = "<!-- bench/run.py --readme: end -->"


def machine_line(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    """What the numbers ran on: the CPU, cores, memory, library versions and how busy the machine was."""
    import platform
    from importlib import metadata

    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    versions = []
    for name in ("pyarrow", "numpy", "torch", "duckdb", "polars", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    line = (
        f"Machine ({time.strftime('%Y-%m-%d')}): {os.cpu_count()} cores, {model}{memory}; Python "
        f"{platform.python_version()}, {', '.join(versions)}. Load average (1 min) {load_before[0]:.1f} when the "
        f"run started and {load_after[0]:.1f} when it ended (other work on the same cores inflates the "
        "seconds; the ratios of cases run side by side are steadier)."
    )
    return textwrap.fill(line, 100, break_on_hyphens=False)


def write_readme(readme: Path, block: str) -> None:
    """Put ``block`` between the README's markers, the rest of the file unchanged (written whole, then renamed)."""
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_BEGIN!r} ... {README_END!r} block to regenerate")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    partial = readme.with_name(f".{readme.name}.bench.tmp")
    partial.write_text(f"{head}{README_BEGIN}\n{block}\n{README_END}{tail}", encoding="utf-8")
    partial.replace(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,3e6,1e7,3e7", help="tokens per step, comma-separated")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="cases to run, comma-separated")
    parser.add_argument("--ref-max", type=float, default=3e7, help="largest size the references run at")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the fastest is kept; peak memory is the max)")
    parser.add_argument("--process-sizes", default="1.8e8", help="sizes for the whole-process comparison")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "aggscope-bench", help="where inputs go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal-sizes", default="1e7,3e7", help="sizes of the whole-process goals ('' to skip the goals)")
    parser.add_argument("--small-steps", default="200x5e4", help="STEPSxTOKENS: the many-small-steps file of the goals")
    parser.add_argument("--readme", type=Path, help="regenerate this README's generated block with the results")
    args = parser.parse_args()
    load_before = os.getloadavg()

    args.data_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in args.cases.split(",") if c]
    sizes = parse_sizes(args.sizes)
    process_sizes = parse_sizes(args.process_sizes)
    rows = [run_size(tokens, data_file(args.data_dir, tokens, args.seed), cases, args) for tokens in sizes]
    processes = {}
    for tokens in process_sizes:
        path = data_file(args.data_dir, tokens, args.seed)
        processes[f"{tokens:.2g}"] = whole_process(path, args.repeat)
        print(f"whole process at {tokens:.2g} tokens: {processes[f'{tokens:.2g}']}", flush=True)

    goals = []
    if args.goal_sizes:
        goals = measure_all_goals(args, rows)
    parts = [machine_line(load_before, os.getloadavg()), render(rows)]
    for size, times in processes.items():
        parts.append(
            f"Whole process, {size} tokens: aggscope weights --json {times['aggscope_weights_json']:.2f} s, "
            f"import pyarrow + read_table {times['pyarrow_read']:.2f} s, ratio {times['ratio']:.2f}"
        )
    if goals:
        parts += ["Goals of issue #15, from the same run:", render_goals(goals)]
    block = "\n\n".join(parts)
    print()
    print(block)
    if args.readme is not None:
        write_readme(args.readme, block)
        print(f"\nregenerated the block of {args.readme}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(
        json.dumps({"sizes": rows, "processes": processes, "goals": [asdict(g) | {"passed": g.passed} for g in goals]}, indent=1)
    )


def measure_all_goals(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[Goal]:
    """The issue's goals: the many-small-steps file's cases, then the whole processes."""
    steps_text, _, tokens_text = args.small_steps.partition("x")
    n_steps, step_tokens = int(steps_text), int(float(tokens_text))
    small_label = f"{n_steps} steps of {step_tokens:.0e} tokens".replace("+0", "")
    small = run_size(
        step_tokens * n_steps,
        data_file(args.data_dir, step_tokens, args.seed, n_steps),
        list(SMALL_STEP_CASES),
        args,
        label=small_label,
    )
    by_label = {row["label"] or f"{row['tokens']:.0e} tokens".replace("+0", ""): row["cases"] for row in rows}
    by_label[small_label] = small["cases"]
    goal_sizes = parse_sizes(args.goal_sizes)
    one_step = f"{min(goal_sizes):.0e} tokens".replace("+0", "")
    goals = startup_goals(5)
    goals += process_goals({t: data_file(args.data_dir, t, args.seed) for t in goal_sizes}, args.repeat, peer_agreement)
    goals += in_process_goals(by_label, one_step, small_label)
    return goals


if __name__ == "__main__":
    main()
