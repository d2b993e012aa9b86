"""The real dumps in ../shared/data/real load with the right groups, samples and loss tokens.

Every expected number is computed here from the raw file with a plain ``json`` loop (one record at
a time, no aggscope code): groups, samples, loss tokens (Atropos: mask entries other than -100;
verl: ceil(UTF-8 bytes / 4) of each piece of output between its ChatML tool turns, the documented
estimate, plus each turn's trained <|im_end|>: ``trained_verl_tokens``), and the zero-variance
groups (all rewards of the group equal). PROVENANCE.md states the same facts independently: the
verl step has 64 prompts x 16 samples, 691 rewards of 1 and one zero-variance group; the Atropos
subjreward file has only zero scores.

The zero-variance groups are found three ways against the plain loop: from the batch's rewards and
group ids, by ``aggscope check`` (its ``zero_variance_group`` findings), and by ``weights`` giving
their loss tokens exactly zero gradient (GRPO gives such a group advantage 0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.io.open import open_rollouts

runner = CliRunner()

ATROPOS = ["atropos_cybersec_objreward.jsonl", "atropos_cybersec_subjreward.jsonl", "atropos_rubiks_groups.jsonl"]
VERL = "verl_rollout_data_dir_step2.jsonl"


def trained_verl_tokens(text: str) -> int:
    """Estimated trained tokens of a verl output: the text outside its tool turns (found with str.find:
    ``\nuser\n<tool_response>\n`` up to the first ``\n</tool_response>\nassistant\n`` with no
    ``\nassistant\n`` before it, or up to the end of the text), and one <|im_end|> per turn."""
    opening, closing, header = "\nuser\n<tool_response>\n", "\n</tool_response>\nassistant\n", "\nassistant\n"
    trained, position, search = 0, 0, 0
    while (start := text.find(opening, search)) >= 0:
        end = text.find(closing, start)
        stop = text.find(header, start)
        if end >= 0 and stop == end + len("\n</tool_response>"):
            span_end = end + len(closing)
        elif stop < 0:
            span_end = len(text)  # a turn cut at the end
        else:
            search = start + 1  # not a tool turn
            continue
        trained += math.ceil(len(text[position:start].encode("utf-8")) / 4) + 1
        position = search = span_end
    return trained + math.ceil(len(text[position:].encode("utf-8")) / 4)


def plain_verl(path: Path) -> dict:
    groups: dict[str, list[tuple[float, int]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        tokens = trained_verl_tokens(record["output"])
        groups.setdefault(record["input"], []).append((float(record["score"]), tokens))
    return summary(list(groups.values()))


def plain_atropos(path: Path) -> dict:
    groups = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        groups.append(
            [(float(s), sum(1 for m in mask if m != -100)) for s, mask in zip(record["scores"], record["masks"], strict=True)]
        )
    return summary(groups)


def plain(path: Path) -> dict:
    return plain_verl(path) if path.name == VERL else plain_atropos(path)


def summary(groups: list[list[tuple[float, int]]]) -> dict:
    zero_variance = [g for g in groups if len({score for score, _ in g}) == 1]
    return {
        "groups": len(groups),
        "samples": sum(len(g) for g in groups),
        "loss_tokens": sum(tokens for g in groups for _, tokens in g),
        "zero_variance_groups": len(zero_variance),
        "zero_variance_tokens": sum(tokens for g in zero_variance for _, tokens in g),
    }


def zero_variance_groups(batch: object) -> int:
    """Groups whose rewards are all equal, from the batch's rewards and group ids (vectorised)."""
    rewards, groups = torch.from_numpy(batch.rewards), torch.from_numpy(batch.group_ids)  # type: ignore[attr-defined]
    n = int(groups.max()) + 1
    high = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, groups, rewards, "amax")
    low = torch.full((n,), math.inf, dtype=torch.float64).scatter_reduce(0, groups, rewards, "amin")
    return int((high == low).sum())


@pytest.mark.parametrize("name", [VERL, *ATROPOS])
def test_real_dump_groups_samples_loss_tokens(real_data: Path, name: str) -> None:
    path = real_data / name
    want = plain(path)
    (batch,) = list(open_rollouts(str(path)).iter_steps())
    assert batch.n_groups == want["groups"]
    assert batch.n_sequences == want["samples"]
    assert int(batch.stats.loss_tokens.sum()) == want["loss_tokens"]
    assert zero_variance_groups(batch) == want["zero_variance_groups"]
    assert batch.lengths_estimated == (name == VERL)


def test_provenance_facts(real_data: Path) -> None:
    verl = plain_verl(real_data / VERL)
    assert (verl["groups"], verl["samples"], verl["zero_variance_groups"]) == (64, 1024, 1)
    (batch,) = list(open_rollouts(str(real_data / VERL)).iter_steps())
    assert batch.rewards is not None and int((batch.rewards == 1).sum()) == 691 and int((batch.rewards == 0).sum()) == 333
    assert plain_atropos(real_data / ATROPOS[1])["zero_variance_groups"] == 2


@pytest.mark.parametrize("name", [VERL, ATROPOS[1]])
def test_zero_variance_groups_get_no_gradient(real_data: Path, name: str) -> None:
    path = real_data / name
    want = plain(path)
    result = runner.invoke(app, ["weights", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lengths_estimated"] is (name == VERL)
    for mode in ("token_mean", "sequence_mean", "prompt_mean"):
        assert report["total"]["modes"][mode]["zero_grad_tokens"] == want["zero_variance_tokens"], mode


@pytest.mark.parametrize("name", [VERL, *ATROPOS])
def test_check_reports_the_zero_variance_groups(real_data: Path, name: str) -> None:
    path = real_data / name
    want = plain(path)
    result = runner.invoke(app, ["check", str(path), "--json"])
    learns_nothing = want["zero_variance_tokens"] == want["loss_tokens"]  # every group zero-variance: an error
    assert result.exit_code == (1 if learns_nothing else 0), result.output
    report = json.loads(result.stdout)
    found = [f for f in report["findings"] if f["code"] == "zero_variance_group"]
    assert len(found) == want["zero_variance_groups"]
    assert sum(f["tokens"] for f in found) == want["zero_variance_tokens"]
    assert report["lengths_estimated"] is (name == VERL)
    text = runner.invoke(app, ["check", str(path)])
    assert ("token counts are estimated from text" in text.stdout) is (name == VERL)
