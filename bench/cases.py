"""One benchmark case, run in its own process: ``python -m bench.cases CASE PATH [OUT_DIR]``.

Prints one JSON line: ``seconds`` (the timed work, imports excluded), ``peak_rss`` (the process's
peak resident memory), ``base_rss`` (resident memory after the imports, before the work) and
case-specific results. Every case starts from the same Parquet file.

Cases:
    read       the floor: ``pyarrow.parquet.read_table`` of the columns ``weights`` needs.
    summary    ``aggscope weights`` without per-token output (the library call the CLI makes).
    out        ``aggscope weights --out``: the same plus per-token weights written to Parquet.
    read_write the floor of ``out``: the bare read plus writing the same output bytes.
    check      ``aggscope check`` (when the package has it).
    report     ``aggscope report``: every mode's breakdown, the figures and the files, written to OUT_DIR.
    duckdb     peer: the same per-mode sums in one duckdb query (``bench/peers.py``).
    polars     peer: the same per-mode sums with polars (``bench/peers.py``).
    pandas     reference (a): lists exploded to one row per token, groupby for the denominators.
    padded     reference (b): padded ``[B, max_len]`` torch tensors, a loop over prompts.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# The columns `aggscope weights` reads from the synthetic files (the sample's schema).
NEEDED = ["step", "uid", "advantages", "loss_mask", "reward", "response_length"]
TOKEN_COLUMNS = ["uid", "advantages", "loss_mask"]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _weights_report(path: str, out: str | None) -> dict[str, Any]:
    from aggscope.analysis.weights import run_weights
    from aggscope.core.layout import Layout
    from aggscope.core.weights import select_modes
    from aggscope.io.open import open_rollouts

    rollouts = open_rollouts(path)
    layout = Layout()
    modes = select_modes(None, has_groups=rollouts.has_groups, layout=layout)
    return run_weights(rollouts.iter_steps(), modes, layout, out=out).to_dict()


def _modes_digest(report: dict[str, Any]) -> dict[str, Any]:
    """What the references are checked against: per-mode sums and counts over all steps."""
    keys = ("weight_sum", "grad_abs_sum", "zero_grad_tokens", "loss_tokens")
    return {mode: {k: values[k] for k in keys} for mode, values in report["total"]["modes"].items()}


def case_read(path: str, out_dir: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    table = pq.read_table(path, columns=NEEDED)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "decoded_bytes": table.nbytes, "rows": table.num_rows}


def case_summary(path: str, out_dir: str) -> dict[str, Any]:
    start = time.perf_counter()
    report = _weights_report(path, None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "digest": _modes_digest(report), "report": report}


def case_out(path: str, out_dir: str) -> dict[str, Any]:
    target = Path(out_dir) / "weights.parquet"
    start = time.perf_counter()
    report = _weights_report(path, str(target))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "digest": _modes_digest(report), "out_bytes": target.stat().st_size}


def case_read_write(path: str, out_dir: str) -> dict[str, Any]:
    """Read the input columns, then write the bytes ``out`` wrote (taken from its file, untimed)."""
    import pyarrow.parquet as pq

    start = time.perf_counter()
    pq.read_table(path, columns=NEEDED)
    seconds = time.perf_counter() - start
    source = pq.ParquetFile(Path(out_dir) / "weights.parquet")
    target = Path(out_dir) / "rewritten.parquet"
    with pq.ParquetWriter(target, source.schema_arrow) as writer:
        for group in range(source.num_row_groups):
            table = source.read_row_group(group)
            start = time.perf_counter()
            writer.write_table(table)
            seconds += time.perf_counter() - start
            del table
    target.unlink()
    return {"seconds": seconds}


def case_check(path: str, out_dir: str) -> dict[str, Any]:
    try:
        from aggscope.analysis import checks
    except ImportError:
        return {"skipped": "aggscope.analysis.checks is not in this version of the package"}
    from aggscope.core.layout import Layout
    from aggscope.core.weights import select_modes
    from aggscope.io.open import open_rollouts

    start = time.perf_counter()
    rollouts = open_rollouts(path)  # as ``aggscope check`` does: the opened input, the modes that apply to it
    modes = select_modes(None, has_groups=rollouts.has_groups, layout=Layout())
    result = checks.run_checks(rollouts, modes, Layout())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "findings": len(getattr(result, "findings", []))}


def case_report(path: str, out_dir: str) -> dict[str, Any]:
    from aggscope.core.layout import Layout
    from aggscope.core.weights import select_modes
    from aggscope.io.open import open_rollouts
    from aggscope.present.report import full_report

    start = time.perf_counter()
    rollouts = open_rollouts(path)
    modes = select_modes(None, has_groups=rollouts.has_groups, layout=Layout())
    full_report(rollouts, modes, Layout()).write(Path(out_dir) / "report")
    seconds = time.perf_counter() - start
    return {"seconds": seconds}


def _peer_case(name: str) -> Any:
    def case(path: str, out_dir: str) -> dict[str, Any]:
        from bench.peers import PEERS

        start = time.perf_counter()
        digest = PEERS[name](path)
        return {"seconds": time.perf_counter() - start, "digest": digest}

    return case


def case_pandas(path: str, out_dir: str) -> dict[str, Any]:
    """Reference (a): one row per token, then groupby for every mode's denominator."""
    import pandas as pd
    import pyarrow.parquet as pq

    start = time.perf_counter()
    frame = pq.read_table(path, columns=NEEDED).to_pandas()
    frame["seq"] = np.arange(len(frame))
    tokens = frame[["step", "seq", "uid", "advantages", "loss_mask"]].explode(["advantages", "loss_mask"])
    tokens["advantages"] = tokens["advantages"].astype("float64")
    tokens["loss_mask"] = tokens["loss_mask"].astype("float64")
    digest: dict[str, dict[str, float]] = {}
    by_step = tokens.groupby("step")
    total_tokens = by_step["loss_mask"].transform("sum")  # T
    seq_tokens = tokens.groupby("seq")["loss_mask"].transform("sum")  # L_i
    n_seqs = by_step["seq"].transform("nunique")  # N
    prompt_tokens = tokens.groupby(["step", "uid"])["loss_mask"].transform("sum")  # T_p
    n_prompts = by_step["uid"].transform("nunique")  # P
    weights = {
        "token_mean": 1.0 / total_tokens.clip(lower=1),
        "token_mean_legacy": 1.0 / total_tokens.clip(lower=1),  # one micro-batch: K = 1
        "token_sum": pd.Series(1.0, index=tokens.index),
        "sequence_mean": 1.0 / (n_seqs * seq_tokens.clip(lower=1)),
        "seq_mean_token_sum": 1.0 / n_seqs,
        "prompt_mean": 1.0 / (n_prompts * prompt_tokens.clip(lower=1)),
    }
    for mode, weight in weights.items():
        w = weight * tokens["loss_mask"]
        grad = w * tokens["advantages"]
        digest[mode] = {
            "weight_sum": float(w.sum()),
            "grad_abs_sum": float(grad.abs().sum()),
            "zero_grad_tokens": int(((grad == 0) & (tokens["loss_mask"] == 1)).sum()),
            "loss_tokens": int(tokens["loss_mask"].sum()),
        }
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "digest": digest}


def case_padded(path: str, out_dir: str) -> dict[str, Any]:
    """Reference (b): padded ``[B, max_len]`` tensors as a trainer holds them, a loop over prompts."""
    import pyarrow.parquet as pq
    import torch

    start = time.perf_counter()
    table = pq.read_table(path, columns=NEEDED)
    steps = table.column("step").to_numpy()
    sums: dict[str, dict[str, float]] = {}
    for step in np.unique(steps):
        part = table.filter(table.column("step").to_numpy() == step)
        adv_list = part.column("advantages").combine_chunks()
        offsets = adv_list.offsets.to_numpy()
        lengths = np.diff(offsets)
        n_rows, max_len = len(lengths), int(lengths.max())
        column = np.arange(max_len)[None, :]  # [1, L]
        valid = torch.from_numpy(column < lengths[:, None])  # [B, L]
        adv = torch.zeros(n_rows, max_len, dtype=torch.float32)
        adv[valid] = torch.from_numpy(adv_list.values.to_numpy())
        mask = torch.zeros(n_rows, max_len, dtype=torch.float32)
        mask[valid] = torch.from_numpy(part.column("loss_mask").combine_chunks().values.to_numpy().astype(np.float32))
        uids = part.column("uid").to_pylist()
        seq_tokens = mask.sum(dim=1, keepdim=True)  # [B, 1]
        weights = {
            "token_mean": mask / mask.sum().clamp(min=1),
            "token_mean_legacy": mask / mask.sum().clamp(min=1),
            "token_sum": mask.clone(),
            "sequence_mean": mask / (n_rows * seq_tokens.clamp(min=1)),
            "seq_mean_token_sum": mask / n_rows,
        }
        prompt = torch.zeros_like(mask)
        rows_of_uid: dict[str, list[int]] = {}
        for row, uid in enumerate(uids):
            rows_of_uid.setdefault(uid, []).append(row)
        for rows in rows_of_uid.values():  # the loop over prompts
            index = torch.tensor(rows)
            prompt[index] = mask[index] / (len(rows_of_uid) * mask[index].sum().clamp(min=1))
        weights["prompt_mean"] = prompt
        for mode, w in weights.items():
            grad = w * adv
            acc = sums.setdefault(mode, {"weight_sum": 0.0, "grad_abs_sum": 0.0, "zero_grad_tokens": 0, "loss_tokens": 0})
            acc["weight_sum"] += float(w.sum())
            acc["grad_abs_sum"] += float(grad.abs().sum())
            acc["zero_grad_tokens"] += int(((grad == 0) & (mask == 1)).sum())
            acc["loss_tokens"] += int((mask == 1).sum())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "digest": sums}


CASES = {
    "read": case_read,
    "summary": case_summary,
    "out": case_out,
    "read_write": case_read_write,
    "check": case_check,
    "report": case_report,
    "duckdb": _peer_case("duckdb"),
    "polars": _peer_case("polars"),
    "pandas": case_pandas,
    "padded": case_padded,
}


def main(argv: list[str]) -> None:
    case, path, out_dir = argv[0], argv[1], argv[2] if len(argv) > 2 else "."
    # Import what every case imports before measuring the resident baseline (read_table imports
    # pyarrow.dataset on its first call: that is start-up, not reading).
    import pyarrow.dataset
    import pyarrow.parquet  # noqa: F401

    if case in ("duckdb", "polars"):
        __import__(case)
    elif case not in ("read", "read_write"):
        # the modules the case calls, and the Parquet reader they load on first use
        import aggscope.analysis.checks
        import aggscope.analysis.weights
        import aggscope.core.weights
        import aggscope.io.open
        import aggscope.io.parquet
    if case == "padded":
        import torch  # noqa: F401
    if case == "report":
        # matplotlib: the report imports it when it draws
        import aggscope.present.figures
        import aggscope.present.report  # noqa: F401
    if case == "pandas":
        import pandas  # noqa: F401
    base = current_rss()
    result = CASES[case](path, out_dir)
    result.update(case=case, base_rss=base, peak_rss=peak_rss())
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
