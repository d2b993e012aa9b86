"""``aggscope convert``: canonical Parquet that reads back to identical numbers, written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dumps import VERL_ROWS, cli_error, write_jsonl
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.core.batch import text_uid
from aggscope.io.open import open_rollouts

runner = CliRunner()
LAYOUT = ["--mini-batch-size", "4", "--micro-batch-size", "2", "--dp-size", "2", "--max-seq-len", "16"]


def invoke(*args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def weights_json(path: Path, *extra: str) -> dict:
    return invoke("weights", str(path), *LAYOUT, *extra, "--json")


def test_convert_verl_then_weights_gives_identical_numbers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dump" / "5.jsonl", VERL_ROWS)
    write_jsonl(tmp_path / "dump" / "6.jsonl", [dict(r, step=6, score=1.0 - r["score"]) for r in VERL_ROWS])
    out = tmp_path / "verl.parquet"
    summary = invoke("convert", str(tmp_path / "dump"), "-o", str(out), "--advantage", "rloo", "--json")
    assert summary["steps"] == 2 and summary["sequences"] == 12 and summary["lengths_estimated"] is True
    original = weights_json(tmp_path / "dump", "--advantage", "rloo")
    converted = weights_json(out)
    assert converted == original  # every number, per step and in total, and the lengths_estimated flag
    assert converted["lengths_estimated"] is True
    described = invoke("inspect", str(out), "--json")
    assert described["lengths_estimated"] is True and any("estimated from text" in n for n in described["notes"])
    text = invoke("inspect", str(out), "--uid", text_uid("Q2"), "--json")
    assert text["text"] == "Q2" and [o["rows"] for o in text["occurrences"]] == [[1, 3], [1, 3]]


def test_convert_keeps_the_mini_batches_a_dump_records(tmp_path: Path) -> None:
    """A SkyRL trainer dump records its mini-batches: the converted file is weighed with them too."""
    dump = tmp_path / "global_step_3_training_input.pkl"
    dump.write_bytes((Path(__file__).parent / "skyrl_dumps" / "skyrl-0.4.0-trainer-step3.pkl").read_bytes())
    out = tmp_path / "skyrl.parquet"
    invoke("convert", str(dump), "-o", str(out), "--json")
    modes = ["-m", "token_mean", "-m", "prompt_mean", "-m", "seq_mean_token_sum"]
    original, converted = (invoke("weights", str(path), *modes, "--json") for path in (dump, out))
    assert converted["total"] == original["total"] and converted["layout"] == original["layout"]
    assert original["layout"]["mini_batch_prompts"] is not None  # the dump's own mini-batches, not one
    kept, recorded = open_rollouts(str(out)), open_rollouts(str(dump))
    assert kept.recorded_layout == recorded.recorded_layout and kept.recorded_layout_source.endswith("as convert kept it")


def test_convert_keeps_the_prompt_texts_the_batches_carry(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "in.parquet"
    columns = {"uid": ["a", "b", "a"], "prompt": ["Qa", "Qb", "Qa"], "advantages": [[1.0], [2.0], [3.0]], "loss_mask": [[1]] * 3}
    pq.write_table(pa.table(columns), source)
    out = tmp_path / "out.parquet"
    invoke("convert", str(source), "-o", str(out), "--json")
    written = pq.read_table(out)
    assert written.column("prompt").to_pylist() == ["Qa", "Qb", "Qa"] and written.column("uid").to_pylist() == ["a", "b", "a"]
    assert invoke("inspect", str(out), "--uid", "b", "--json")["text"] == "Qb"


def test_convert_atropos_and_canonical_parquet(tmp_path: Path, real_data: Path) -> None:
    source = real_data / "atropos_cybersec_objreward.jsonl"
    out = tmp_path / "atropos.parquet"
    invoke("convert", str(source), "-o", str(out), "--json")
    assert weights_json(out) == weights_json(source)
    again = tmp_path / "again.parquet"  # canonical Parquet (float32 advantages here) converts to itself
    invoke("convert", "-o", str(again), "--json")
    assert weights_json(again) == weights_json(Path(invoke("inspect", "--json")["source"]))


def test_convert_writes_whole_or_nothing(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dump" / "1.jsonl", VERL_ROWS)
    broken = write_jsonl(tmp_path / "dump" / "2.jsonl", VERL_ROWS[:2])
    broken.write_text(broken.read_text() + '{"input": "Q')
    out = tmp_path / "out.parquet"
    assert "2.jsonl: line 3: not valid JSON" in cli_error("convert", str(tmp_path / "dump"), "-o", str(out))
    assert list(tmp_path.iterdir()) == [tmp_path / "dump"]  # no output, no temporary file left


def test_convert_never_overwrites_its_input(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "dump" / "1.jsonl", VERL_ROWS)
    first = tmp_path / "first.parquet"
    invoke("convert", str(source), "-o", str(first), "--json")
    before = first.read_bytes()
    assert cli_error("convert", str(first), "-o", str(first)).endswith(
        f"{first}: is one of the input files; choose another output name"
    )
    assert first.read_bytes() == before
    # A folder is read whole: an output inside it would be read as input by the next command,
    # doubling every step's sequences, so it is refused from the first run on (also for a glob).
    folder = tmp_path / "canon"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(before)
    for command in ("convert", "weights"):
        message = cli_error(command, str(folder), "-o", str(folder / "sub" / "all.parquet"))
        assert message.endswith(
            f"lies inside the input folder {folder}, which is read whole: the next command would read it as input too; write it outside the folder"
        )
        message = cli_error(command, str(folder / "*.parquet"), "-o", str(folder / "all.parquet"))
        assert f"all.parquet: matches the input pattern {folder / '*.parquet'}" in message
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-o", "out.txt"], "out.txt: the output file must end in .parquet"),
        (["-o", "missing_dir/out.parquet"], "the directory missing_dir does not exist"),
        ([], "Missing option '--out'"),
    ],
)
def test_convert_errors(tmp_path: Path, args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert expected in cli_error("convert", *args)


def every_format(root: Path, skyrl_class: type) -> dict[str, Path]:
    """One small dump of every format, built from the fixtures of test_readers."""
    import pyarrow.parquet as pq
    import torch
    from dumps import nemo_record, skyrl_dump, slime_sample, trl_table

    paths = {"verl": write_jsonl(root / "verl" / "5.jsonl", VERL_ROWS)}
    (root / "trl").mkdir()
    pq.write_table(trl_table(1), root / "trl" / "completions_00001.parquet")
    paths["trl"] = root / "trl"
    paths["nemo-rl"] = write_jsonl(
        root / "nemo" / "train_data_step2.jsonl", [nemo_record([1, 2], [3], 1.0, 1.0), nemo_record([1, 2], [4, 5], -1.0, 0.0)]
    )
    paths["prime-rl"] = write_jsonl(
        root / "prime" / "step_3" / "rank_0.jsonl",
        [{"position_ids": [0, 1, 0, 1, 2], "loss_mask": [0, 1, 0, 1, 1], "advantages": [0, 1, 0, -1, -1]}],
    )
    paths["atropos"] = write_jsonl(
        root / "atropos" / "g.jsonl", [{"tokens": [[1, 2], [1, 3]], "masks": [[-100, 2], [-100, 3]], "scores": [1, 0]}]
    )
    (root / "slime").mkdir()
    torch.save({"rollout_id": 4, "samples": [slime_sample(0, 2, 1.0), slime_sample(0, 1, 0.0)]}, root / "slime" / "4.pt")
    paths["slime"] = root / "slime" / "4.pt"
    paths["skyrl"] = skyrl_dump(
        root / "skyrl" / "global_step_6_training_input.pkl", skyrl_class, {"policy_prompt_boundaries": [(0, 2), (2, 4)]}
    )
    return paths


def test_every_command_reads_every_format(tmp_path: Path, stand_in_skyrl: type) -> None:
    for fmt, path in every_format(tmp_path, stand_in_skyrl).items():
        described = invoke("inspect", str(path), "--json")
        assert described["layout"] == fmt
        checked = runner.invoke(app, ["check", str(path), "--json", "--fail-on", "never"])
        assert checked.exit_code == 0, (fmt, checked.output)
        out = tmp_path / f"{fmt}.parquet"
        invoke("convert", str(path), "-o", str(out), "--json")
        assert weights_json(out) == weights_json(path), fmt
        assert json.loads(checked.stdout)["lengths_estimated"] is (fmt in ("verl", "trl"))
        reported = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / f"{fmt}-report")])
        assert reported.exit_code == 0, (fmt, reported.output)


def test_every_reader_is_one_interface_built_in_one_call(tmp_path: Path, stand_in_skyrl: type) -> None:
    """Every format's reader is a ``Rollouts`` with every member set, and what it decided when it opened
    the input is frozen (no attribute is assigned after the reader is built)."""
    import dataclasses

    from aggscope.io.open import bundled_sample_path, open_rollouts
    from aggscope.io.reader import Rollouts

    paths = {**every_format(tmp_path, stand_in_skyrl), "parquet": bundled_sample_path()}
    for fmt, path in paths.items():
        rollouts = open_rollouts(str(path))
        assert isinstance(rollouts, Rollouts), fmt
        assert rollouts.format == ("wide" if fmt == "parquet" else fmt)
        assert isinstance(rollouts.has_groups, bool) and isinstance(rollouts.lengths_estimated, bool)
        assert rollouts.lengths_estimated is (fmt in ("verl", "trl"))
        assert (
            [b.step for b in rollouts.iter_steps()] == rollouts.steps == [b.step for b in map(rollouts.read_step, rollouts.steps)]
        )
        assert all(rollouts.step_tokens(s) is None or rollouts.step_tokens(s) > 0 for s in rollouts.steps)
        decided = rollouts if fmt == "parquet" else rollouts.settings
        assert dataclasses.is_dataclass(decided) and decided.__dataclass_params__.frozen, fmt


def test_report_says_lengths_are_estimates_for_text_dumps(tmp_path: Path) -> None:
    """A verl dump has no token counts: the report's JSON, HTML and terminal summary say so."""
    write_jsonl(tmp_path / "dump" / "5.jsonl", VERL_ROWS)
    result = runner.invoke(app, ["report", str(tmp_path / "dump"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "report.json").read_text())
    assert document["input"]["lengths_estimated"] is True
    assert any("estimated from text" in note for note in document["input"]["notes"])
    assert "Response lengths are estimated from the text" in " ".join(document["summary"])
    assert "Response lengths are estimated" in (tmp_path / "out" / "report.html").read_text()
    assert "Response lengths are estimated" in " ".join(result.stdout.split())
    canonical = runner.invoke(app, ["report", "-o", str(tmp_path / "sample")])
    assert canonical.exit_code == 0 and "estimated" not in canonical.stdout
    assert json.loads((tmp_path / "sample" / "report.json").read_text())["input"]["lengths_estimated"] is False
