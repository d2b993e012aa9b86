"""Peers: the summaries of ``aggscope weights`` written the way a data engineer would, in duckdb and polars.

``python -m bench.peers duckdb|polars PATH`` prints one JSON line: per mode, over all steps, the sum
of the per-token weights (``weight_sum``), of the gradient weights ``|w * A|`` (``grad_abs_sum``),
the loss tokens with no gradient (``zero_grad_tokens``) and the loss tokens (``loss_tokens``): the
numbers ``bench.run`` checks against aggscope's before it times anything. Both reduce each
response to its loss tokens ``L_i``, ``S_i = sum |A| over them`` and ``Z_i = loss tokens with A = 0``,
then apply each mode's denominator (one micro-batch, one rank: the synthetic files' layout):

    token_mean, token_mean_legacy   w = 1 / T                 (T: loss tokens of the step)
    token_sum                       w = 1
    sequence_mean                   w = 1 / (N * L_i)         (N: responses of the step)
    seq_mean_token_sum              w = 1 / N
    prompt_mean                     w = 1 / (P * T_p)         (P: prompts of the step; T_p: the prompt's loss tokens)

They need the ``bench`` extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

DUCKDB_SQL = """
WITH rows AS (SELECT row_number() OVER () AS seq, step, uid, advantages, loss_mask FROM read_parquet(?)),
tokens AS (SELECT seq, step, uid, unnest(advantages) AS a, unnest(loss_mask) AS m FROM rows),
per_row AS (
    SELECT seq, any_value(step) AS step, any_value(uid) AS uid, sum(m)::DOUBLE AS L,
           sum(abs(a::DOUBLE) * m) AS S, count(*) FILTER (WHERE m = 1 AND a = 0) AS Z
    FROM tokens GROUP BY seq),
counts AS (SELECT step, count(*)::DOUBLE AS N, count(DISTINCT uid)::DOUBLE AS P FROM rows GROUP BY step),
steps AS (SELECT step, sum(L) AS T, sum(S) AS S, sum(Z) AS Z FROM per_row GROUP BY step),
prompts AS (SELECT step, uid, sum(L) AS T, sum(S) AS S FROM per_row GROUP BY step, uid)
SELECT
    (SELECT sum(T / greatest(T, 1)) FROM steps), (SELECT sum(S / greatest(T, 1)) FROM steps),
    (SELECT sum(T) FROM steps), (SELECT sum(S) FROM steps), (SELECT sum(Z) FROM steps),
    (SELECT sum(L / (N * greatest(L, 1))) FROM per_row JOIN counts USING (step)),
    (SELECT sum(S / (N * greatest(L, 1))) FROM per_row JOIN counts USING (step)),
    (SELECT sum(T / N) FROM steps JOIN counts USING (step)), (SELECT sum(S / N) FROM steps JOIN counts USING (step)),
    (SELECT sum(T / (P * greatest(T, 1))) FROM prompts JOIN counts USING (step)),
    (SELECT sum(S / (P * greatest(T, 1))) FROM prompts JOIN counts USING (step))
"""


def _digest(sums: list[float]) -> dict[str, dict[str, Any]]:
    """The per-mode numbers from the eleven sums both peers compute (order of ``DUCKDB_SQL``'s columns)."""
    mean_w, mean_g, tokens, grad, zero, seq_w, seq_g, seqsum_w, seqsum_g, prompt_w, prompt_g = (float(s) for s in sums)
    pairs = {
        "token_mean": (mean_w, mean_g),
        "token_mean_legacy": (mean_w, mean_g),
        "token_sum": (tokens, grad),
        "sequence_mean": (seq_w, seq_g),
        "seq_mean_token_sum": (seqsum_w, seqsum_g),
        "prompt_mean": (prompt_w, prompt_g),
    }
    return {
        mode: {"weight_sum": w, "grad_abs_sum": g, "zero_grad_tokens": int(zero), "loss_tokens": int(tokens)}
        for mode, (w, g) in pairs.items()
    }


def duckdb_digest(path: str) -> dict[str, dict[str, Any]]:
    import duckdb

    row = duckdb.connect().execute(DUCKDB_SQL, [path]).fetchone()
    assert row is not None
    return _digest(list(row))


def polars_digest(path: str) -> dict[str, dict[str, Any]]:
    import polars as pl

    rows = pl.read_parquet(path, columns=["step", "uid", "advantages", "loss_mask"]).with_row_index("seq")
    counts = rows.group_by("step").agg(N=pl.len().cast(pl.Float64), P=pl.col("uid").n_unique().cast(pl.Float64))
    a, m = pl.col("advantages"), pl.col("loss_mask")
    per_row = (
        rows.explode(["advantages", "loss_mask"])
        .group_by("seq")
        .agg(
            pl.col("step").first(),
            pl.col("uid").first(),
            L=m.cast(pl.Float64).sum(),
            S=(a.cast(pl.Float64).abs() * m).sum(),
            Z=((m == 1) & (a == 0)).sum(),
        )
    )
    steps = (
        per_row.group_by("step").agg(pl.col("L").sum().alias("T"), pl.col("S").sum(), pl.col("Z").sum()).join(counts, on="step")
    )
    prompts = per_row.group_by("step", "uid").agg(pl.col("L").sum().alias("T"), pl.col("S").sum()).join(counts, on="step")
    seqs = per_row.join(counts, on="step")
    T, S, L, N, P = pl.col("T"), pl.col("S"), pl.col("L"), pl.col("N"), pl.col("P")

    def sums(frame: Any, *expressions: Any) -> list[float]:
        return list(frame.select(*(e.alias(f"c{i}") for i, e in enumerate(expressions))).row(0))

    step_sums = sums(
        steps,
        (T / T.clip(lower_bound=1)).sum(),
        (S / T.clip(lower_bound=1)).sum(),
        T.sum(),
        S.sum(),
        pl.col("Z").sum(),
        (T / N).sum(),
        (S / N).sum(),
    )
    seq_sums = sums(seqs, (L / (N * L.clip(lower_bound=1))).sum(), (S / (N * L.clip(lower_bound=1))).sum())
    prompt_sums = sums(prompts, (T / (P * T.clip(lower_bound=1))).sum(), (S / (P * T.clip(lower_bound=1))).sum())
    return _digest([*step_sums[:5], *seq_sums, *step_sums[5:], *prompt_sums])


PEERS = {"duckdb": duckdb_digest, "polars": polars_digest}


if __name__ == "__main__":
    print(json.dumps(PEERS[sys.argv[1]](sys.argv[2])))
