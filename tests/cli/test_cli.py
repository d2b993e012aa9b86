"""The command line through typer's runner: weights, inspect, sample, help and every error."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import typer
from conftest import REPO, SAMPLE_DATA
from typer.testing import CliRunner

from aggscope.cli import app
from aggscope.core.layout import Layout
from aggscope.core.modes import MODES
from aggscope.core.weights import compute_weights
from aggscope.io.open import bundled_sample_path, load_steps

runner = CliRunner()


def run(*args: str) -> object:
    return runner.invoke(app, list(args))


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "aggscope 0.1.0"


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "aggscope", "--version"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "aggscope 0.1.0"


def test_every_command_has_help_with_an_example_and_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    commands = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"weights", "inspect", "sample"} <= set(commands)
    for name in commands:
        result = run(name, "--help")
        assert result.exit_code == 0, result.output
        assert "Example: aggscope " + name in " ".join(result.stdout.split()), name
        assert f"aggscope {name}" in readme, f"{name} is not in the README"


def test_weights_on_bundled_sample() -> None:
    result = run("weights")
    assert result.exit_code == 0, result.output
    for mode in ("token_mean", "token_mean_legacy", "sequence_mean", "prompt_mean"):
        assert mode in result.stdout
    assert "seq_mean_token_sum_norm" not in result.stdout  # needs --max-seq-len
    assert "all 4 steps" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_weights_json_equals_the_library() -> None:
    result = run(
        "weights", "--json", "--mini-batch-size", "64", "--micro-batch-size", "4", "--dp-size", "2", "--max-seq-len", "1024"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"layout", "modes", "lengths_estimated", "unrecoverable", "steps", "total"}
    assert doc["layout"]["mini_batch_size"] == 64
    default = [name for name, m in MODES.items() if m.in_defaults]  # the trainer variants only when named
    assert doc["modes"] == default
    layout = Layout(mini_batch_size=64, micro_batch_size=4, dp_size=2, max_seq_len=1024)
    batches = load_steps(str(SAMPLE_DATA / "rollouts.parquet"))
    assert [s["step"] for s in doc["steps"]] == [b.step for b in batches]
    for step_doc, batch in zip(doc["steps"], batches, strict=True):
        assert step_doc["sequences"] == batch.n_sequences
        assert step_doc["prompts"] == batch.n_groups
        for mode in default:
            weights = compute_weights(batch, mode, layout).token_weights(torch.float64)
            grads = compute_weights(batch, mode, layout).grad_weights(torch.float64)
            summary = step_doc["modes"][mode]
            # an independent per-token reduction of the engine's token weights
            assert summary["weight_sum"] == pytest.approx(float(weights.sum()), rel=1e-9)
            assert summary["grad_abs_sum"] == pytest.approx(float(np.abs(grads).sum()), rel=1e-6)
            mask = batch.loss_mask
            assert summary["zero_grad_tokens"] == int((grads[mask] == 0).sum())
            assert summary["ess_tokens"] == pytest.approx(float(weights.sum() ** 2 / (weights**2).sum()), rel=1e-9)
    total = doc["total"]
    assert total["steps"] == 4
    assert total["sequences"] == sum(s["sequences"] for s in doc["steps"])
    for mode in default:
        assert total["modes"][mode]["weight_sum"] == pytest.approx(
            sum(s["modes"][mode]["weight_sum"] for s in doc["steps"]), rel=1e-12
        )


def test_weights_out_parquet(tmp_path: Path) -> None:
    out = tmp_path / "w.parquet"
    result = run("weights", "-m", "token_mean", "-m", "seq-mean-token-mean", "--micro-batch-size", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == [
        "step",
        "seq_index",
        "uid",
        "weight_token_mean",
        "grad_token_mean",
        "weight_sequence_mean",
        "grad_sequence_mean",
    ]
    batches = load_steps(str(SAMPLE_DATA / "rollouts.parquet"))
    assert table.num_rows == sum(b.n_sequences for b in batches)
    first = table.filter(pa.compute.equal(table["step"], 0))
    batch = batches[0]
    assert first["seq_index"].to_pylist() == list(range(batch.n_sequences))
    assert first["uid"].to_pylist() == batch.row_uids()
    weights = compute_weights(batch, "sequence_mean", Layout(micro_batch_size=8))
    flat = torch.tensor(pa.concat_arrays([c.flatten() for c in first["weight_sequence_mean"].chunks]).to_numpy())
    assert torch.equal(flat, torch.from_numpy(weights.token_weights()))
    assert bool((flat[torch.from_numpy(~batch.loss_mask)] == 0).all())
    grads = torch.tensor(pa.concat_arrays([c.flatten() for c in first["grad_sequence_mean"].chunks]).to_numpy())
    assert torch.equal(grads, torch.from_numpy(weights.grad_weights()))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_weights_out_is_not_written_on_error(tmp_path: Path) -> None:
    out = tmp_path / "w.parquet"
    result = run("weights", str(tmp_path / "missing.parquet"), "--out", str(out))
    assert result.exit_code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_weights_many_steps_prints_one_line_per_step(tmp_path: Path) -> None:
    assert run("sample", str(tmp_path), "--steps", "9", "--prompts", "2", "--group-size", "2").exit_code == 0
    result = run("weights", str(tmp_path / "rollouts.parquet"))
    assert result.exit_code == 0, result.output
    assert "step 0 ·" not in result.stdout and "9 steps, worst first" in result.stdout
    assert "… 1 more step (--all-steps lists every step" in result.stdout
    assert "more step" not in run("weights", str(tmp_path / "rollouts.parquet"), "--all-steps").stdout


def test_inspect_text_and_json() -> None:
    result = run("inspect")
    assert result.exit_code == 0, result.output
    assert "advantages" in result.stdout and "8×32" in result.stdout
    doc = json.loads(run("inspect", "--json").stdout)
    assert doc["columns"] == {
        "uid": "uid",
        "advantages": "advantages",
        "loss_mask": "loss_mask",
        "reward": "reward",
        "step": "step",
    }
    assert [s["step"] for s in doc["steps"]] == [0, 1, 2, 3]
    assert doc["steps"][0]["group_sizes"] == {"8": 32}
    batch = load_steps(str(SAMPLE_DATA / "rollouts.parquet"))[0]
    assert doc["steps"][0]["loss_tokens"] == int(batch.loss_mask.sum())
    assert doc["steps"][0]["loss_tokens_percentiles"]["p100"] == float(batch.stats.loss_tokens.max())


def test_inspect_without_uid_says_prompt_modes_are_unavailable(tmp_path: Path) -> None:
    pq.write_table(pa.table({"advantages": [[1.0]], "loss_mask": [[1]]}), tmp_path / "r.parquet")
    result = run("inspect", str(tmp_path / "r.parquet"))
    assert result.exit_code == 0, result.output
    assert "prompt_mean and prompt-level checks are unavailable" in " ".join(result.stdout.split())


def test_sample_is_deterministic_and_equals_the_committed_sample(tmp_path: Path) -> None:
    result = run("sample", str(tmp_path))
    assert result.exit_code == 0, result.output
    generated = pq.read_table(tmp_path / "rollouts.parquet")
    assert generated.equals(pq.read_table(SAMPLE_DATA / "rollouts.parquet"))
    assert (SAMPLE_DATA / "rollouts.parquet").stat().st_size < 2_000_000


def test_bundled_default_is_sample_data() -> None:
    assert pq.read_table(bundled_sample_path()).equals(pq.read_table(SAMPLE_DATA / "rollouts.parquet"))


def test_wheel_ships_the_sample(tmp_path: Path) -> None:
    """A plain (non-editable) install gets the same sample: the wheel holds sample_data's bytes."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("aggscope-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("aggscope/sample_data/rollouts.parquet")
        names = set(archive.namelist())
    assert shipped == (SAMPLE_DATA / "rollouts.parquet").read_bytes()
    # every module of the source tree is in the wheel (a subpackage left out of pyproject's list is not)
    modules = {str(path.relative_to(REPO)) for path in (REPO / "aggscope").rglob("*.py")}
    assert modules <= names, sorted(modules - names)


# ---- errors: one line on stderr, exit code 2 -----------------------------------------------------------
def assert_error(result: object, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aggscope: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_error_missing_path(tmp_path: Path) -> None:
    assert_error(run("weights", str(tmp_path / "x.parquet")), f"{tmp_path / 'x.parquet'}: no such file or directory")


def test_error_unknown_mode() -> None:
    assert_error(
        run("weights", "-m", "mean_of_means"), "unknown mode 'mean_of_means'; valid modes: token_mean, token_mean_legacy"
    )


def test_error_impossible_layouts(tmp_path: Path) -> None:
    assert_error(run("weights", "--mini-batch-size", "0"), "--mini-batch-size must be a whole number of at least 1")
    assert_error(run("weights", "--mini-batch-size", "4", "--mini-batch-prompts", "2"), "not both")
    assert_error(run("weights", "--order", "sorted"), "unknown order 'sorted'; valid orders: logged, grouped, shuffle")
    assert_error(run("weights", "--dp-size", "0"), "--dp-size must be a whole number of at least 1")
    assert_error(run("weights", "-m", "dr_grpo"), "mode seq_mean_token_sum_norm needs the horizon: give --max-seq-len H")
    assert_error(run("weights", "--micro-batch-size", "many"), "Invalid value for '--micro-batch-size'")
    assert_error(run("weights", "--seed", "3"), "--seed applies only to --order shuffle")
    assert_error(run("weights", "a.parquet", "b.parquet"), "quote a glob, 'runs/*.parquet', or give the directory")
    assert run("weights", "--order", "shuffle", "--seed", "3", "--json").exit_code == 0
    compare = ["compare", "--from", "token_mean", "--to", "token_mean,order=shuffle", "--seed", "7", "-o"]
    assert run(*compare, str(tmp_path / "c")).exit_code == 0  # the seed serves the SPEC that shuffles


def test_error_layout_needs_uids(tmp_path: Path) -> None:
    pq.write_table(pa.table({"advantages": [[1.0]], "loss_mask": [[1]]}), tmp_path / "r.parquet")
    path = str(tmp_path / "r.parquet")
    assert_error(run("weights", path, "--mini-batch-prompts", "2"), "--mini-batch-prompts needs a uid column")
    assert_error(run("weights", path, "--order", "grouped"), "--order grouped needs a uid column")
    assert_error(run("weights", path, "-m", "prompt_mean"), "mode prompt_mean is unavailable without a uid column")


def test_error_bad_files(tmp_path: Path) -> None:
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert_error(run("weights", str(tmp_path / "empty.parquet")), "the file is empty")
    (tmp_path / "text.parquet").write_text("not parquet")
    assert_error(run("inspect", str(tmp_path / "text.parquet")), "not a Parquet file")
    pq.write_table(pa.table({"advantages": [[1.0, 2.0]], "loss_mask": [[1]]}), tmp_path / "bad.parquet")
    assert_error(run("weights", str(tmp_path / "bad.parquet")), "row 0: 'advantages' has 2 values but 'loss_mask' has 1")
    pq.write_table(pa.table({"advantages": [[1.0]], "loss_mask": [[3]]}), tmp_path / "mask.parquet")
    assert_error(run("weights", str(tmp_path / "mask.parquet")), "column 'loss_mask' holds 3 at token 0")
    pq.write_table(pa.table({"uid": ["a"]}), tmp_path / "nocol.parquet")
    assert_error(run("weights", str(tmp_path / "nocol.parquet")), "no advantage column")


def test_error_bad_col_option() -> None:
    assert_error(run("weights", "--col", "group"), "--col 'group': expected ROLE=NAME")
    assert_error(run("weights", "--col", "colour=uid"), "unknown role 'colour'")
    assert_error(run("inspect", "--col", "uid=nope"), "column 'nope' given for uid is not in the file")


def test_error_out_must_be_parquet(tmp_path: Path) -> None:
    assert_error(run("weights", "--out", str(tmp_path / "w.csv")), "the output file must end in .parquet")
    assert_error(run("weights", "--out", str(tmp_path / "no" / "w.parquet")), "does not exist")


def test_error_out_is_an_input(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"advantages": [[1.0]], "loss_mask": [[1]]}), path)
    before = path.read_bytes()
    assert_error(run("weights", str(path), "--out", str(path)), "is one of the input files")
    assert path.read_bytes() == before


def test_error_sample_arguments(tmp_path: Path) -> None:
    assert_error(run("sample", str(tmp_path), "--steps", "0"), "Invalid value for '--steps'")
    (tmp_path / "file").write_text("x")
    assert_error(run("sample", str(tmp_path / "file")), f"{tmp_path / 'file'}: File exists")


def test_error_unknown_command() -> None:
    assert_error(run("wieghts"), "No such command 'wieghts'")
