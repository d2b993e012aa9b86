"""``aggscope check`` and ``aggscope sample --faults`` through the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aggscope.cli import app

REPO = Path(__file__).resolve().parents[2]
FAULTY = REPO / "sample_data" / "faulty.parquet"
FAULTY_ARGS = ["check", str(FAULTY), "--mini-batch-size", "10"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_check_faulty_sample_terminal_output():
    result = invoke(*FAULTY_ARGS)
    assert result.exit_code == 1, result.output
    out = result.stdout
    # Codes grouped worst first, with counts.
    order = [
        out.index(f"{severity.upper():<8}{code}")
        for severity, code in [
            ("error", "no_gradient_share"),
            ("error", "silent_zero_advantage"),
            ("error", "nonfinite_advantage"),
            ("error", "zero_advantage"),
            ("warning", "no_gradient_share"),
            ("warning", "prompt_cut_by_mini_batch"),
            ("warning", "rebased_prompt_mean_misweight"),
            ("warning", "noncontiguous_uid"),
            ("warning", "masked_token_advantage"),
            ("warning", "singleton_group"),
            ("warning", "incomplete_group"),
            ("info", "zero_variance_group"),
        ]
    ]
    assert order == sorted(order)
    assert "prompt_cut_by_mini_batch  7 findings · 28 rows" in out
    assert "… 4 more (--verbose lists every finding)" in out
    # The picture of the worst step (step 0): mini-batch lanes, cut prompts uppercase, silent rows marked.
    assert "step 0: 32 rows in trainer order, 4 mini-batches, 1 char = 1 row" in out
    assert "mb 1 │CCddddeeee│ 10 rows, 3 prompts, 1 cut" in out
    assert "     │^^        │" in out
    # The zero-gradient table: every canonical mode has the same causes here (one column).
    assert "every mode (6)" in out and "zero_variance_group  │  6,326   37.5%" in out
    assert "5 errors · 15 warnings · 8 infos — fails --fail-on error" in out
    assert all(len(line) <= 100 for line in out.splitlines())
    assert result.stderr == ""


def test_check_verbose_lists_everything():
    quiet = invoke(*FAULTY_ARGS).stdout
    verbose = invoke(*FAULTY_ARGS, "--verbose").stdout
    assert "more (--verbose" not in verbose
    assert verbose.count("step 2 · prompt") > quiet.count("step 2 · prompt")
    # Every finding's message is shown with --verbose (8 zero-variance groups, each with its own message).
    assert verbose.count("GRPO gives every sample advantage 0") == 8
    assert quiet.count("GRPO gives every sample advantage 0") == 1


def test_check_rows_in_full_only_with_verbose(tmp_path):
    # One prompt of 12 rows with non-contiguous rows 0, 2, 4, ... (rows alternate between two prompts).
    uids = ["a", "b"] * 12
    path = tmp_path / "alternating.parquet"
    pq.write_table(pa.table({"uid": uids, "advantages": [[1.0]] * 24, "loss_mask": [[1]] * 24, "reward": [1.0, 0.0] * 12}), path)
    quiet = invoke("check", str(path), "-m", "token_mean").stdout
    assert "rows 0, 2, 4, 6, … (12 rows)" in quiet
    verbose = invoke("check", str(path), "-m", "token_mean", "--verbose").stdout
    assert "rows 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22 ·" in verbose


def test_check_json_is_one_document():
    result = invoke(*FAULTY_ARGS, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert list(document)[:3] == ["findings", "zero_grad", "cut_prompts"]
    assert set(document["cut_prompts"]) == {"mini_batch", "rank", "micro_batch"}
    cut = [(f["step"], f["uid"]) for f in document["findings"] if f["code"] == "prompt_cut_by_mini_batch"]
    assert sorted((c["step"], c["uid"]) for c in document["cut_prompts"]["mini_batch"]) == sorted(cut)
    assert len(cut) == 7
    assert set(document["zero_grad"]) == {
        "token_mean",
        "token_mean_legacy",
        "token_sum",
        "sequence_mean",
        "seq_mean_token_sum",
        "prompt_mean",
    }
    first = document["findings"][0]
    assert set(first) == {"code", "severity", "step", "uid", "rows", "tokens", "message", "modes"}
    # step 1: 3,219 of 5,151 loss tokens without gradient (62.5%)
    assert (first["code"], first["step"], first["tokens"], first["modes"]) == ("no_gradient_share", 1, 3219, [])
    silent = next(f for f in document["findings"] if f["code"] == "silent_zero_advantage")
    assert (silent["step"], silent["rows"], silent["modes"]) == (0, [10, 11], ["prompt_mean"])
    assert document["counts"] == {"error": 5, "warning": 15, "info": 8}


@pytest.mark.parametrize(
    ("args", "fail_on", "code"),
    [
        # The faulty sample has errors.
        (FAULTY_ARGS, "error", 1),
        (FAULTY_ARGS, "warning", 1),
        (FAULTY_ARGS, "info", 1),
        (FAULTY_ARGS, "never", 0),
        # The bundled sample cut by 20-row mini-batches, trained with token_mean: warnings (cuts), no error.
        (["check", "--mini-batch-size", "20", "-m", "token_mean"], "error", 0),
        (["check", "--mini-batch-size", "20", "-m", "token_mean"], "warning", 1),
        # The bundled sample as it is: zero-variance groups (info) that take 36.3% of its loss tokens
        # (no_gradient_share, a warning).
        (["check"], "error", 0),
        (["check"], "warning", 1),
        (["check"], "info", 1),
        (["check"], "never", 0),
    ],
)
def test_fail_on_exit_codes(args, fail_on, code):
    result = invoke(*args, "--fail-on", fail_on)
    assert result.exit_code == code, result.output
    assert invoke(*args, "--fail-on", fail_on, "--json").exit_code == code


def test_check_default_fail_on_is_error():
    assert invoke(*FAULTY_ARGS).exit_code == 1
    assert invoke("check", "--mini-batch-size", "20", "-m", "token_mean").exit_code == 0


def test_check_as_a_subprocess_gate():
    result = subprocess.run(
        [sys.executable, "-m", "aggscope", *FAULTY_ARGS, "--json", "--fail-on", "warning"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["counts"]["error"] == 5
    assert result.stderr == ""


def _no_uid(tmp_path: Path) -> Path:
    path = tmp_path / "no_uid.parquet"
    pq.write_table(pa.table({"advantages": [[1.0, 0.0], [0.5]], "loss_mask": [[1, 1], [0]]}), path)
    return path


def test_check_without_uid_runs_row_checks(tmp_path):
    result = invoke("check", str(_no_uid(tmp_path)), "--fail-on", "warning")
    assert result.exit_code == 1, result.output
    assert "masked_token_advantage" in result.stdout and "empty_sequence" in result.stdout
    assert "no uid column" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "missing.parquet"], "missing.parquet: no such file or directory"),
        (["check", "--fail-on", "fatal"], "--fail-on 'fatal': expected one of error, warning, info, never"),
        (["check", "-m", "mean_of_everything"], "unknown mode 'mean_of_everything'; valid modes: token_mean"),
        (["check", "--mini-batch-size", "0"], "--mini-batch-size must be a whole number of at least 1, got 0"),
        (
            ["check", "--mini-batch-size", "8", "--mini-batch-prompts", "2"],
            "give --mini-batch-size or --mini-batch-prompts, not both",
        ),
        (["check", "--order", "sideways"], "unknown order 'sideways'"),
        (["check", "--dp-size", "0"], "--dp-size must be a whole number of at least 1"),
        (["check", "--col", "uid"], "--col 'uid': expected ROLE=NAME"),
        (["check", "--col", "uid=prompt_text"], "column 'prompt_text' given for uid is not in the file"),
        (["check", "--mini-batch-size", "ten"], "Invalid value for '--mini-batch-size'"),
        (["check", "--no-such-flag"], "No such option: --no-such-flag"),
    ],
)
def test_check_usage_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("aggscope: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_input_errors(tmp_path):
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    no_uid = _no_uid(tmp_path)
    cases = [
        (["check", str(not_parquet)], f"{not_parquet}: not a Parquet file"),
        (["check", str(empty)], f"{empty}: the file is empty"),
        (["check", str(no_uid), "-m", "prompt_mean"], "mode prompt_mean is unavailable without a uid column"),
        (["check", str(no_uid), "--order", "grouped"], "--order grouped needs a uid column"),
        (["check", str(no_uid), "--mini-batch-prompts", "2"], "--mini-batch-prompts needs a uid column"),
        (["check", str(tmp_path / "*.none")], "no file matches this pattern"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_check_help_has_an_example():
    result = invoke("check", "--help")
    assert result.exit_code == 0
    assert "Example: aggscope check sample_data/faulty.parquet --mini-batch-size 10" in result.stdout
    for option in ("--fail-on", "--verbose", "--json", "--mini-batch-size", "--mode"):
        assert option in result.stdout


# ---- aggscope sample --faults -----------------------------------------------------------------------
def test_sample_faults_writes_the_committed_file(tmp_path):
    result = invoke("sample", str(tmp_path), "--faults")
    assert result.exit_code == 0, result.output
    written = tmp_path / "faulty.parquet"
    assert written.read_bytes() == FAULTY.read_bytes()
    assert f"check it with: aggscope check {written} --mini-batch-size 10" in result.stdout
    assert not (tmp_path / "rollouts.parquet").exists()


def test_sample_default_output_is_unchanged(tmp_path):
    result = invoke("sample", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rollouts.parquet").read_bytes() == (REPO / "sample_data" / "rollouts.parquet").read_bytes()


def test_sample_faults_layout_follows_the_group_size(tmp_path):
    result = invoke("sample", str(tmp_path), "--faults", "--group-size", "6", "--prompts", "5", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "--mini-batch-size 15" in result.stdout
    checked = invoke("check", str(tmp_path / "faulty.parquet"), "--mini-batch-size", "15", "--json")
    codes = {f["code"] for f in json.loads(checked.stdout)["findings"]}
    assert {"nonfinite_advantage", "zero_advantage", "masked_token_advantage", "singleton_group"} <= codes
    assert {"incomplete_group", "noncontiguous_uid", "prompt_cut_by_mini_batch"} <= codes


def test_sample_faults_errors(tmp_path):
    result = invoke("sample", str(tmp_path), "--faults", "--steps", "2")
    assert result.exit_code == 2
    assert "sample --faults needs at least 3 steps, 3 prompts and a group size of 3 (got 2, 8, 4)" in result.stderr
    assert not (tmp_path / "faulty.parquet").exists()
    result = invoke("sample", str(tmp_path), "--faults", "--group-size", "0")
    assert result.exit_code == 2
    assert "--group-size" in result.stderr


def test_sample_faults_into_a_file_path(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    result = invoke("sample", str(target), "--faults")
    assert result.exit_code == 2
    assert result.stderr.startswith("aggscope: error: ") and str(target) in result.stderr


def test_readme_shows_the_real_check_output():
    readme = (REPO / "README.md").read_text()
    command = "$ aggscope check sample_data/faulty.parquet --mini-batch-size 10\n"
    shown = readme.split(command, 1)[1].split("\n$ echo $?", 1)[0]
    # The README shows the output piped, 100 columns wide; pin it (readline, loaded by pytest, puts
    # COLUMNS=80 into the environment that child processes inherit).
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-m", "aggscope", *command[2:].split()[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 1
    assert shown == result.stdout.rstrip("\n"), "README: paste the real output of the command again"


def test_report_pictures_the_step_check_pictures() -> None:
    """The split map of a report shows the step whose split ``check`` draws: the worst findings."""
    from aggscope.analysis.breakdown import run_breakdown
    from aggscope.analysis.specs import parse_spec
    from aggscope.core.layout import Layout
    from aggscope.io.open import load_steps

    checked = json.loads(invoke(*FAULTY_ARGS, "--json").stdout)
    worst = checked["worst_step"]
    assert worst["counts"] == {
        severity: sum(f["severity"] == severity and f["step"] == worst["step"] for f in checked["findings"])
        for severity in ("error", "warning", "info")
    }
    breakdown = run_breakdown(
        load_steps(str(FAULTY)), [parse_spec("token_mean", Layout()), parse_spec("token_mean,mini-batch-size=10", Layout())]
    )
    assert breakdown.steps[breakdown.worst_step_index()] == worst["step"]


REAL = REPO.parent / "shared" / "data" / "real"


@pytest.mark.skipif(not (REAL / "atropos_cybersec_subjreward.jsonl").exists(), reason="real dumps not present")
def test_a_run_that_learns_nothing_fails():
    # Every score of both groups is 0: all 11,868 loss tokens get no gradient.
    result = invoke("check", str(REAL / "atropos_cybersec_subjreward.jsonl"))
    assert result.exit_code == 1, result.output
    assert "ERROR   no_gradient_share  1 finding · 16 rows · 11,868 tokens" in result.stdout
    assert "11,868 of 11,868 loss tokens in this step (100.0%) get no gradient" in result.stdout
    assert "1 error · 0 warnings · 2 infos — fails --fail-on error" in result.stdout
    # Allowing every share up to 100% still fails at 100%.
    assert invoke("check", str(REAL / "atropos_cybersec_subjreward.jsonl"), "--max-no-grad-share", "100%").exit_code == 1


def test_the_bundled_sample_warns_on_its_lost_tokens():
    result = invoke("check")
    assert "WARNING no_gradient_share" in result.stdout
    assert "118,001 of 324,757 loss tokens over the run (36.3%) get no gradient" in result.stdout
    assert invoke("check", "--max-no-grad-share", "30%").exit_code == 1  # 36.3% > 30%: an error
    assert "over the run" not in invoke("check", "--max-no-grad-share", "40%,60%").stdout  # 36.3% <= 40%


def test_truncated_responses_from_the_flag_and_the_config():
    flag = json.loads(invoke("check", "--max-response-len", "1024", "--json").stdout)
    verl = ["--trainer", "verl", "--set", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8"]
    config = json.loads(invoke("check", *verl, "--set", "data.max_response_length=1024", "--json").stdout)
    for document in (flag, config):
        found = [f for f in document["findings"] if f["code"] == "truncated_response"]
        # the bundled sample caps at 1,024 tokens and scores those responses 0
        assert [f["step"] for f in found] == [0, 1, 2, 3]
        assert all(f["severity"] == "warning" and "every one 0" in f["message"] for f in found)
    assert "(the verl config's data.max_response_length)" in json.dumps(config)
    assert config["options"] == {
        "max_no_grad_share": {"warning": 0.25, "error": 0.5},
        "response_cap": 1024,
        "cap_source": "the verl config's data.max_response_length",
        "trainer": "verl",
    }
    assert flag["options"]["cap_source"] == "--max-response-len" and flag["options"]["trainer"] is None
    # The flag wins over the config.
    both = json.loads(
        invoke("check", *verl, "--set", "data.max_response_length=1024", "--max-response-len", "2048", "--json").stdout
    )
    assert not [f for f in both["findings"] if f["code"] == "truncated_response"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-no-grad-share", "lots"], "--max-no-grad-share 'lots': 'lots' is not a share (0 to 1, or 0% to 100%)"),
        (["--max-no-grad-share", "120%"], "--max-no-grad-share '120%': '120%' is above 100%"),
        (["--max-no-grad-share", "60%,40%"], "--max-no-grad-share '60%,40%': the warning share is above the error share"),
        (["--max-response-len", "0"], "--max-response-len 0: expected a whole number of tokens >= 1"),
    ],
)
def test_bad_verdict_options_are_one_line(args, message):
    result = invoke("check", *args)
    assert result.exit_code == 2
    assert result.stderr == f"aggscope: error: {message}\n"


@pytest.mark.skipif(not (REAL / "verl_rollout_data_dir_step2.jsonl").exists(), reason="real dumps not present")
def test_a_verl_dump_gets_no_skyrl_findings():
    # The rows of verl's dump are in balance_batch order, so uids reappear; verl wrote it, and only SkyRL
    # asserts on that.
    path = str(REAL / "verl_rollout_data_dir_step2.jsonl")
    result = json.loads(invoke("check", path, "--json").stdout)
    assert result["options"]["trainer"] == "verl"
    assert not [f for f in result["findings"] if f["code"] == "noncontiguous_uid"]
    assert any("the trainer here is verl, so they do not run" in note for note in result["notes"])
    skyrl = json.loads(invoke("check", path, "--trainer", "skyrl", "--json").stdout)
    assert len([f for f in skyrl["findings"] if f["code"] == "noncontiguous_uid"]) == 64


def test_one_truncated_response_reads_in_the_singular(tmp_path):
    path = tmp_path / "one_long.parquet"
    table = {"uid": ["a", "a"], "advantages": [[1.0] * 3, [-1.0]], "loss_mask": [[1] * 3, [1]], "reward": [0.0, 1.0]}
    pq.write_table(pa.table(table), path)
    document = json.loads(invoke("check", str(path), "--max-response-len", "3", "--json").stdout)
    out = next(f["message"] for f in document["findings"] if f["code"] == "truncated_response")
    assert "1 response of 2 (50.0%) reaches the response cap of 3 tokens (--max-response-len): it was cut off" in out
    assert "Its reward is 0, against a mean of 1 for the other responses." in out
