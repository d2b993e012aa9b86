"""verl v1 dumps (0.9.1's default trainer): sample keys as uids, padding rows, the dump's order.

The advantages are checked against verl 0.9.1's own ``compute_grpo_outcome_advantage`` (loaded
from its wheel), fed the rows its ``compute_advantage_for_multi_trajectories`` selects: each
session's final output, grouped by the prompt uid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dumps import cli_error, per_row, read_all, runner, write_jsonl

from aggscope.cli import app
from aggscope.io.open import open_rollouts

PAD = "pad" + "0123456789abcdef" * 2  # uuid4().hex is 32 lowercase hex digits


def v1_rows() -> list[dict[str, object]]:
    """Two prompts x 3 sessions (prompt b's session 1 has two outputs), two padding rows, sorted by key
    as ``_log_rollout_data`` writes them."""
    samples = [
        ("a7f", 0, 0, 1.0, "aaaa"),
        ("a7f", 1, 0, 0.0, "aaaaaaaa"),
        ("a7f", 2, 0, 1.0, "a"),
        ("b_x", 0, 0, 0.5, "bb"),
        ("b_x", 1, 0, 9.0, "bbbbbbbbbbbb"),  # not the final output of its session: its score is not used
        ("b_x", 1, 1, 0.0, "bbb"),
        ("b_x", 2, 0, 2.0, "bbbbb"),
        (PAD, 0, 0, 0.0, ""),
        (PAD, 1, 0, 0.0, ""),
    ]
    prompt = {"a7f": "Q a", "b_x": "Q b", PAD: ""}
    return [
        {"input": prompt[uid], "output": out, "gts": None, "score": score, "step": 3, "uid": f"{uid}_{session}_{index}"}
        for uid, session, index, score, out in samples
    ]


def verl_advantages(rows: list[dict[str, object]]) -> list[float]:
    """verl's own GRPO on the final output of each session, broadcast to the session's rows."""
    from framework_wheels import load_verl

    core_algos = load_verl().core_algos
    keys = [str(r["uid"]).rsplit("_", 2) for r in rows]
    final: dict[str, tuple[int, int]] = {}
    for row, (uid, session, index) in enumerate(keys):  # as compute_advantage_for_multi_trajectories
        if f"{uid}_{session}" not in final or final[f"{uid}_{session}"][0] < int(index):
            final[f"{uid}_{session}"] = (int(index), row)
    final_rows = [row for _, row in final.values()]
    scores = torch.tensor([[float(rows[i]["score"])] for i in final_rows])  # type: ignore[arg-type]
    index = np.array([keys[i][0] for i in final_rows], dtype=object)
    advantages, _ = core_algos.compute_grpo_outcome_advantage(scores, torch.ones_like(scores), index)
    of_session = {session: float(advantages[k, 0]) for k, session in enumerate(final)}
    return [of_session[f"{uid}_{session}"] for uid, session, _ in keys]


def test_v1_keys_group_by_prompt_and_advantages_equal_verls_own(tmp_path: Path) -> None:
    rows = v1_rows()
    (batch,) = read_all(write_jsonl(tmp_path / "3.jsonl", rows))
    real = [r for r in rows if not str(r["uid"]).startswith("pad")]
    assert batch.n_sequences == 7 and batch.n_groups == 2  # the two padding rows dropped
    assert batch.row_uids() == ["a7f"] * 3 + ["b_x"] * 4
    want = verl_advantages(real)
    got = [adv[0] for _, _, adv in per_row(batch)]
    assert got == pytest.approx(want, rel=1e-6)  # float32 in verl, float64 here
    assert got[4] == got[5]  # one session, one advantage: its final output's
    assert batch.rewards is not None and batch.rewards.tolist() == [r["score"] for r in real]


def test_v1_notes_and_unrecoverable_say_order_and_padding(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "3.jsonl", v1_rows())
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert any("sorted by key, not in the order verl trained them" in n for n in doc["notes"])
    assert any("dropped 2 verl padding rows" in n for n in doc["notes"])
    facts = [u["fact"] for u in doc["unrecoverable"]]
    assert any(f.startswith("the order verl trained the rows in") for f in facts)
    order = next(u for u in doc["unrecoverable"] if u["fact"].startswith("the order"))
    assert "token_mean" in order["modes"] and "sequence_mean" not in order["modes"]
    assert doc["steps"][0]["prompts"] == 2 and doc["steps"][0]["sequences"] == 7


def test_classic_dump_without_uid_says_identical_texts_merge(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "uid"} for r in v1_rows()[:3]]
    rollouts = open_rollouts(str(write_jsonl(tmp_path / "3.jsonl", rows)))
    assert any("two prompts of the same text" in n and "merge into one group" in n for n in rollouts.notes)
    (uids,) = [u for u in rollouts.unrecoverable if u.fact.startswith("the prompt uids")]
    assert uids.modes == ("prompt_mean",)
    assert not any(u.fact.startswith("the order") for u in rollouts.unrecoverable)  # classic: written in training order


def test_a_v1_dump_with_a_plain_uid_names_the_line(tmp_path: Path) -> None:
    rows = v1_rows()
    rows[2] = dict(rows[2], uid="plain")
    message = cli_error("inspect", str(write_jsonl(tmp_path / "3.jsonl", rows)))
    assert "3.jsonl: line 3: uid 'plain' is not a verl v1 key {prompt uid}_{session}_{index}" in message
