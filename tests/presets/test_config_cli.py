"""``--config``, ``--trainer`` and ``--set`` on the command line: inspect's account of a config, the
analysing commands under it, and every config a trainer would refuse (one line, exit 2)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA
from typer.testing import CliRunner

from aggscope.cli import app

runner = CliRunner()
A = "actor_rollout_ref.actor."
VERL = str(SAMPLE_DATA / "verl_grpo.yaml")
SKYRL = str(SAMPLE_DATA / "skyrl_grpo.yaml")
TRL = str(SAMPLE_DATA / "trl_grpo.json")
OPENRLHF = str(SAMPLE_DATA / "openrlhf_grpo.sh")
NEMO = str(SAMPLE_DATA / "nemo_rl_grpo.yaml")
PRIME = str(SAMPLE_DATA / "prime_rl_rl.toml")


def run(*args: str) -> object:
    return runner.invoke(app, list(args))


def assert_error(result: object, *expected: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: "), result.stderr  # type: ignore[attr-defined]
    for text in expected:
        assert text in lines[0], lines[0]


def test_inspect_config_gives_every_value_its_keys_and_arithmetic() -> None:
    result = run("inspect", "--config", VERL)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "mini-batch-size 128" in out and "ppo_mini_batch_size 16 x rollout.n 8" in out
    assert "actor_rollout_ref.actor.ppo_mini_batch_size" in out and "updates per step 2" in out
    assert "read, not modelled" in out and "actor_rollout_ref.actor.clip_ratio_c = 3.0" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_inspect_config_json_is_the_same_account() -> None:
    result = run("inspect", "--config", VERL, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["trainer"] == "verl" and doc["mode"] == "token_mean"
    assert doc["layout"]["composition"] == "ranks_first"
    (mini,) = [d for d in doc["derivations"] if d["name"] == "mini_batch_size"]
    assert mini["keys"] == [f"{A}ppo_mini_batch_size", "actor_rollout_ref.rollout.n"] and mini["value"] == 128
    assert {u["key"] for u in doc["unmodelled"]} >= {f"{A}clip_ratio_c", "trainer.balance_batch"}


@pytest.mark.parametrize("config", [VERL, SKYRL, TRL, OPENRLHF, NEMO, PRIME])
def test_every_sample_config_inspects(config: str) -> None:
    result = run("inspect", "--config", config)
    assert result.exit_code == 0, result.output


def test_weights_under_a_config_say_where_the_layout_came_from_and_flags_win() -> None:
    result = run("weights", "--config", VERL, "--micro-batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layout"] == {**doc["config"]["layout"], "micro_batch_size": 4}
    assert doc["modes"][0] == "token_mean"
    assert doc["config"]["overrides"] == [
        "--micro-batch-size 4 (command line) wins over the config's micro-batch-size 8 = ppo_micro_batch_size_per_gpu 8"
    ]
    text = run("weights", "--config", VERL, "--micro-batch-size", "4", "-m", "token_mean")
    assert text.exit_code == 0, text.output
    assert "config: layout from the verl config" in text.stdout and "wins over the config's" in text.stdout


def test_report_under_the_verl_sample_config(tmp_path: Path) -> None:
    result = run("report", "--config", VERL, "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "report.json").read_text())
    assert any(note.startswith("layout from the verl config") for note in document["input"]["notes"])
    assert "token_mean" in json.dumps(document["specs"][0])


def test_check_and_plot_take_a_config(tmp_path: Path) -> None:
    check = run("check", "--config", SKYRL, "--json")
    assert check.exit_code == 0, check.output
    assert json.loads(check.stdout)["layout"]["mini_batch_prompts"] == 8
    plot = run("plot", "--config", VERL, "-o", str(tmp_path), "--figure", "steps")
    assert plot.exit_code == 0, plot.output


def test_trainer_alone_starts_from_its_defaults() -> None:
    # SkyRL's defaults: train_batch_size 1024, policy_mini_batch_size 256, n_samples_per_prompt 5
    result = run("inspect", "--trainer", "skyrl", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["layout"]["mini_batch_prompts"], doc["files"]) == (256, [])
    changed = run("inspect", "--trainer", "skyrl", "--set", "trainer.policy_mini_batch_size=512", "--json")
    assert json.loads(changed.stdout)["layout"]["mini_batch_prompts"] == 512


BAD = [
    # files
    (["--config", "{tmp}/training_args.bin"], ["training_args.bin", "never unpickles", "to_json_string"]),
    (["--config", "{tmp}/missing.yaml"], ["missing.yaml: no such config file"]),
    (["--config", "{tmp}/run.ini"], ["run.ini: unknown config type '.ini'"]),
    (["--config", "{tmp}/broken.yaml"], ["broken.yaml: not valid YAML"]),
    (["--config", "{tmp}/interp.yaml"], ["interp.yaml", "key b"]),
    (["--config", "{tmp}/broken.toml"], ["broken.toml: not valid TOML"]),
    (["--config", "{tmp}/not_utf8.toml"], ["not_utf8.toml: not valid TOML (the byte at offset 40 is not UTF-8 text)"]),
    (["--config", "{tmp}/deep.toml"], ["deep.toml: not valid TOML for aggscope (arrays or tables nested too deep"]),
    (["--config", "{tmp}/scalar_defaults.yaml"], ["scalar_defaults.yaml: defaults: must be a list of config files, not int 5"]),
    (
        ["--config", "{tmp}/verl_agg_map.yaml"],
        ["actor_rollout_ref.actor.loss_agg_mode is a mapping of keys where one value belongs"],
    ),
    (["--config", VERL, "--set", "noequals"], ["--set 'noequals': write KEY=VALUE"]),
    (["--set", "a=1"], ["--set needs a config"]),
    (["--config", "{tmp}/unknown.yaml"], ["cannot tell which trainer", "--trainer"]),
    (["--config", VERL, "--trainer", "ray"], ["--trainer 'ray': unknown trainer"]),
    # keys
    (
        ["--config", VERL, "--set", f"{A}ppo_mini_batch_sise=8"],
        [f"unknown key {A}ppo_mini_batch_sise (did you mean {A}ppo_mini_batch_size?)"],
    ),
    (
        ["--config", VERL, "--set", "trainer.brand_new=1"],
        ["--set trainer.brand_new: not a key of this verl config", "+trainer.brand_new"],
    ),
    (
        ["--config", VERL, "--set", f"{A}ppo_mini_batch_size=abc"],
        ["--set: actor_rollout_ref.actor.ppo_mini_batch_size must be a whole number"],
    ),
    (["--config", VERL, "--set", f"{A}ppo_mini_batch_size=0"], ["must be at least 1, got 0"]),
    (["--config", VERL, "--set", f"{A}use_dynamic_bsz=maybe"], ["use_dynamic_bsz must be true or false"]),
    (["--config", VERL, "--set", f"{A}loss_agg_mode=mean"], ["loss_agg_mode is 'mean'; verl accepts 'token-mean'"]),
    # verl
    (
        ["--config", VERL, "--set", f"{A}ppo_mini_batch_size=64"],
        ["--set: actor_rollout_ref.actor.ppo_mini_batch_size (64 prompts) is larger than the step", "make it at most 32"],
    ),
    (
        ["--config", VERL, "--set", f"{A}ppo_mini_batch_size=3", "--set", "actor_rollout_ref.rollout.n=1"],
        ["not divisible by the 4 data-parallel ranks"],
    ),
    (
        ["--config", VERL, "--set", f"{A}ppo_micro_batch_size_per_gpu=5"],
        ["ppo_micro_batch_size_per_gpu (5) does not divide a rank's 32 rows"],
    ),
    (
        ["--config", VERL, "--set", f"{A}ppo_micro_batch_size_per_gpu=null"],
        ["ppo_micro_batch_size_per_gpu is null; verl requires it"],
    ),
    (
        ["--config", VERL, "--set", f"+{A}ppo_micro_batch_size=8"],
        ["ppo_micro_batch_size and ppo_micro_batch_size_per_gpu are both set"],
    ),
    (
        ["--config", VERL, "--set", f"{A}ppo_micro_batch_size_per_gpu=null", "--set", f"+{A}ppo_micro_batch_size=8"],
        ["engine reads only ppo_micro_batch_size_per_gpu"],
    ),
    (
        ["--config", "{tmp}/verl_bad.yaml"],
        ["verl_bad.yaml: actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu (5) does not divide"],
    ),
    (
        ["--config", VERL, "--set", f"{A}fsdp_config.ulysses_sequence_parallel_size=3"],
        ["ulysses_sequence_parallel_size leaves 4 GPUs not divisible"],
    ),
    (
        ["--config", VERL, "--set", "+actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true"],
        ["log_prob_use_dynamic_bsz must equal"],
    ),
    # skyrl
    (
        ["--config", SKYRL, "--set", "trainer.policy_mini_batch_size=64"],
        ["policy_mini_batch_size (64) is larger than train_batch_size (32)"],
    ),
    (
        ["--config", SKYRL, "--set", "trainer.policy_mini_batch_size=5"],
        ["train_batch_size (32) is not a multiple of policy_mini_batch_size (5)"],
    ),
    (
        ["--config", SKYRL, "--set", "trainer.micro_train_batch_size_per_gpu=3"],
        ["micro_train_batch_size_per_gpu (3) does not divide"],
    ),
    (["--config", SKYRL, "--set", "trainer.algorithm.loss_reduction=seq_mean_token_sum_norm"], ["max_seq_len must be set"]),
    (
        [
            "--config",
            SKYRL,
            "--set",
            "generator.step_wise_trajectories=true",
            "--set",
            "trainer.algorithm.loss_reduction=token_mean_legacy",
        ],
        ["refused by SkyRL with step-wise"],
    ),
    (["--config", SKYRL, "--set", "trainer.algorithm.loss_reduction=mean"], ["loss_reduction is 'mean'; skyrl accepts"]),
    # trl
    (["--config", TRL, "--set", "num_generations=7"], ["num_generations (7) does not divide the generation batch of 256"]),
    (
        ["--config", TRL, "--set", "generation_batch_size=100"],
        ["generation_batch_size (100) is not per_device_train_batch_size 16 x steps_per_generation 4"],
    ),
    (["--config", TRL, "--set", "loss_type=ppo"], ["loss_type is 'ppo'; trl accepts"]),
    (["--config", TRL, "--set", "num_generations=1"], ["num_generations must be at least 2"]),
    # openrlhf
    (
        ["--config", OPENRLHF, "--set", "train.batch_size=20"],
        ["train.batch_size (20) is not a multiple of train.micro_batch_size 8 x 4"],
    ),
    (["--config", OPENRLHF, "--set", "train.batch_size=512"], ["train.batch_size (512) is larger than a step"]),
    (
        ["--config", OPENRLHF, "--set", "+ds.ring_attn_size=3"],
        ["ds.ring_attn_size x ds.tensor_parallel_size (3) does not divide the 4 actor GPUs"],
    ),
    (["--config", OPENRLHF, "--set", "actor.loss_agg_mode=token-sum"], ["loss_agg_mode is 'token-sum'; openrlhf accepts"]),
    # nemo-rl
    (
        ["--config", NEMO, "--set", "policy.train_global_batch_size=96"],
        ["train_global_batch_size (96) does not divide a step of 256"],
    ),
    (
        ["--config", NEMO, "--set", "policy.train_micro_batch_size=3"],
        ["train_micro_batch_size (3) does not divide a rank's share"],
    ),
    (
        ["--config", VERL, "--set", f"{A}shuffle=true", "--set", f"{A}data_loader_seed=null"],
        ["actor_rollout_ref.actor.data_loader_seed must be a whole number, got None"],
    ),
    (["--config", "{tmp}/nemo_missing.yaml"], ["nemo_missing.yaml: grpo.num_generations_per_prompt is missing"]),
    (
        ["--config", NEMO, "--set", "policy.sequence_packing.algorithm=best_fit"],
        ["policy.sequence_packing.algorithm is 'best_fit'; NeMo-RL's get_packer accepts concatenative, first_fit_decreasing"],
    ),
    (
        ["--config", "{tmp}/nemo_no_budget.yaml"],
        ["nemo_no_budget.yaml: policy.sequence_packing.train_mb_tokens is missing"],
    ),
    (
        ["--config", NEMO, "--set", "policy.dynamic_batching.enabled=true"],
        ["policy.dynamic_batching.enabled and policy.sequence_packing.enabled are both true; NeMo-RL asserts"],
    ),
    (
        [
            "--config",
            NEMO,
            "--set",
            "policy.sequence_packing.enabled=false",
            "--set",
            "policy.dynamic_batching.enabled=true",
            "--set",
            "policy.dynamic_batching.train_mb_tokens=0",
        ],
        ["policy.dynamic_batching.train_mb_tokens must be at least 1, got 0"],
    ),
    (
        ["--config", NEMO, "--set", "policy.dtensor_cfg.tensor_parallel_size=3"],
        ["tensor_parallel_size leaves 4 GPUs not divisible"],
    ),
    # prime-rl
    (
        ["--config", PRIME, "--set", "+orchestrator.token_batch_size=4096"],
        ["token_batch_size and orchestrator.batch_size are both set"],
    ),
]


def _bad_files(tmp: Path) -> None:
    (tmp / "training_args.bin").write_bytes(pickle.dumps({"loss_type": "dapo"}))
    (tmp / "run.ini").write_text("[x]\n")
    (tmp / "broken.yaml").write_text("a: [1, 2\n")
    (tmp / "interp.yaml").write_text("actor_rollout_ref: {actor: {}}\nb: ${nowhere.key}\n")
    (tmp / "broken.toml").write_text("a = \n")
    (tmp / "not_utf8.toml").write_bytes(b'[orchestrator]\nbatch_size = 256\nname = "\xff\xfe"\n')
    (tmp / "deep.toml").write_text("a = " + "[" * 3000 + "]" * 3000 + "\n[orchestrator]\nbatch_size = 256\n")
    (tmp / "scalar_defaults.yaml").write_text("defaults: 5\ndata:\n  train_batch_size: 32\n")
    agg = "loss_agg_mode: token-mean"
    assert agg in Path(VERL).read_text()
    (tmp / "verl_agg_map.yaml").write_text(Path(VERL).read_text().replace(agg, "loss_agg_mode:\n      mode: token-mean"))
    (tmp / "unknown.yaml").write_text("something: 1\n")
    (tmp / "verl_bad.yaml").write_text(
        Path(VERL).read_text().replace("ppo_micro_batch_size_per_gpu: 8", "ppo_micro_batch_size_per_gpu: 5")
    )
    (tmp / "nemo_missing.yaml").write_text("grpo:\n  num_prompts_per_step: 8\n")
    (tmp / "nemo_no_budget.yaml").write_text(
        "\n".join(line for line in Path(NEMO).read_text().splitlines() if not line.strip().startswith("train_mb_tokens")) + "\n"
    )


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(a).replace(str(SAMPLE_DATA) + "/", "") for a, _ in BAD])
def test_every_bad_config_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    _bad_files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_error(run("inspect", *args), *expected)


REFUSED = [
    ([VERL, f"{A}policy_loss.loss_mode=geo_mean"], ["geo_mean", "give --mode"]),
    ([TRL, "steps_per_generation=2"], ["steps_per_generation 2 < gradient_accumulation_steps 4"]),
]


@pytest.mark.parametrize(("config", "expected"), REFUSED, ids=[c[1] for c, _ in REFUSED])
def test_configs_aggscope_cannot_weigh_exactly_are_refused(config: list[str], expected: list[str]) -> None:
    path, *sets = config
    args = ["--config", path, *(item for s in sets for item in ("--set", s))]
    assert_error(run("weights", *args), *expected)
    # inspect shows the refusal instead of failing
    shown = run("inspect", *args)
    assert shown.exit_code == 0 and "refused by the commands that compute weights" in shown.stdout


def test_a_refusal_lifts_when_the_flag_it_names_is_given() -> None:
    result = run("weights", "--config", VERL, "--set", f"{A}policy_loss.loss_mode=geo_mean", "-m", "token_mean")
    assert result.exit_code == 0, result.output
    assert "--mode given: the numbers follow what the command line asks, not the config" in " ".join(result.stdout.split())


# ---- compare two configs -------------------------------------------------------------------------
def test_compare_two_configs_opens_with_the_keys_that_differ(tmp_path: Path) -> None:
    result = run(
        "compare",
        "--from-config",
        VERL,
        "--to-config",
        f",{A}ppo_mini_batch_size=8",
        "--to-config",
        f",{A}clip_ratio=0.3,+trainer.project_name=x",
        "-o",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    notes = json.loads((tmp_path / "report.json").read_text())["input"]["notes"]
    assert notes[:3] == [
        f"verl_grpo.yaml -> ppo_mini_batch_size=8: {A}ppo_mini_batch_size 16 -> 8: mini-batch-size 128 -> 64, "
        "updates per step 2 -> 4",
        f"verl_grpo.yaml -> clip_ratio=0.3+project_name=x: {A}clip_ratio 0.2 -> 0.3: changes the loss, not the weights "
        "aggscope computes (PPO clipping: changes a token's loss away from ratio 1, not the weight of its loss)",
        "verl_grpo.yaml -> clip_ratio=0.3+project_name=x: trainer.project_name (absent) -> x: changes no weight",
    ]
    labels = [json.dumps(spec) for spec in json.loads((tmp_path / "report.json").read_text())["specs"]]
    assert "config=ppo_mini_batch_size=8" in labels[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to-config", SKYRL], "--to-config needs --from-config"),
        (["--config", VERL, "--from-config", VERL, "--to-config", SKYRL], "give --config or --from-config, not both"),
        (["--from-config", VERL, "--to-config", ",noequals"], "',noequals': 'noequals' is not KEY=VALUE"),
        (["--from-config", VERL, "--to-config", SKYRL], "a skyrl config against a verl --from-config"),
        (["--from-config", VERL], "give at least one --to-config"),
        ([], "give --from SPEC (or --from-config FILE)"),
    ],
)
def test_compare_config_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    assert_error(run("compare", *args, "-o", str(tmp_path)), expected)
