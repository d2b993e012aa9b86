"""Trainer presets: reading config files, inferring the trainer, and each derivation worked by hand.

The arithmetic of every preset is checked on the sample configs (sample_data/*), whose numbers
match the bundled sample (32 prompts x 8 responses per step), and on small variations of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA

from aggscope.errors import AggscopeError
from aggscope.presets import infer_trainer, load_setup
from aggscope.presets.apply import apply_setup
from aggscope.presets.files import parse_command_line, read_config

VERL = str(SAMPLE_DATA / "verl_grpo.yaml")
TRL = str(SAMPLE_DATA / "trl_grpo.json")
A = "actor_rollout_ref.actor."


def lines(setup: object) -> dict[str, str]:
    return {d.name: d.line for d in setup.derivations}  # type: ignore[attr-defined]


# ---- reading files ------------------------------------------------------------------------------
def test_yaml_interpolations_resolve_as_hydra_does(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: {n: 4}\nb: ${a.n}\nc: ${mul:${a.n},3}\nd: ${oc.select:missing.key,7}\n")
    values = read_config([str(path)]).values
    assert (values["a.n"], values["b"], values["c"], values["d"]) == (4, 4, 12, 7)


def test_defaults_compose_parents_first_then_the_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("x: 1\ny: 2\ngroup_value: 0\n")
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "big.yaml").write_text("size: 64\n")
    (tmp_path / "child.yaml").write_text("defaults:\n  - base\n  - opt: big\n  - ppo_trainer\n  - _self_\ny: 3\n")
    config = read_config([str(tmp_path / "child.yaml")])
    assert (config.values["x"], config.values["y"], config.values["opt.size"]) == (1, 3, 64)
    assert config.missing_defaults == ["ppo_trainer"]
    # NeMo-RL's form: one parent file by name
    (tmp_path / "nemo.yaml").write_text('defaults: "base.yaml"\nx: 9\n')
    assert read_config([str(tmp_path / "nemo.yaml")]).values == {"x": 9, "y": 2, "group_value": 0}


def test_later_files_then_set_win_and_values_are_typed(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("k: 1\nm: {n: 2}\n")
    (tmp_path / "b.yaml").write_text("k: 5\n")
    config = read_config([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")], ["m.n=8", "flag=true", "none=null", "+new=x"])
    assert config.values == {"k": 5, "m.n": 8, "flag": True, "none": None, "new": "x"}
    assert config.origin["k"].endswith("b.yaml") and config.origin["m.n"] == "--set"
    assert config.added == {"new"}


def test_trl_json_and_the_args_block_of_a_saved_run(tmp_path: Path) -> None:
    (tmp_path / "args.json").write_text(json.dumps({"args": {"loss_type": "bnpo", "num_generations": 4}}))
    assert read_config([str(tmp_path / "args.json")]).values == {"loss_type": "bnpo", "num_generations": 4}


def test_a_saved_command_line_gives_argparse_and_hydra_arguments() -> None:
    text = (
        "CUDA_VISIBLE_DEVICES=0 python3 -m openrlhf.cli.train_ppo_ray \\\n  --train.batch_size 64 --train.dynamic_batch_enable \\\n"
        "  --actor.eps_clip_low_high 0.2 0.28 --rollout.n_samples_per_prompt=8  # comment\n"
        "  trainer.nnodes=2 +data.extra=1\n"
    )
    values, programs = parse_command_line(text, "run.sh")
    assert values == {
        "train.batch_size": 64,
        "train.dynamic_batch_enable": True,
        "actor.eps_clip_low_high": [0.2, 0.28],
        "rollout.n_samples_per_prompt": 8,
        "trainer.nnodes": 2,
        "data.extra": 1,
    }
    assert programs == ["openrlhf.cli.train_ppo_ray"]


# ---- which trainer ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "trainer"),
    [
        ("verl_grpo.yaml", "verl"),
        ("skyrl_grpo.yaml", "skyrl"),
        ("trl_grpo.json", "trl"),
        ("openrlhf_grpo.sh", "openrlhf"),
        ("nemo_rl_grpo.yaml", "nemo-rl"),
        ("prime_rl_rl.toml", "prime-rl"),
    ],
)
def test_the_trainer_is_inferred_from_the_keys(name: str, trainer: str) -> None:
    assert infer_trainer(read_config([str(SAMPLE_DATA / name)])) == trainer
    assert load_setup([str(SAMPLE_DATA / name)]).trainer == trainer


def test_the_dump_format_implies_the_trainer_when_the_keys_do_not(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("unrelated: 1\n")
    assert infer_trainer(read_config([str(path)]), input_format="skyrl") == "skyrl"


# ---- verl ---------------------------------------------------------------------------------------
def test_verl_sample_config_arithmetic() -> None:
    setup = load_setup([VERL])
    assert lines(setup) | {} == {
        "step_rows": "rows per step 256 = train_batch_size 32 x rollout.n 8",
        "updates": "updates per step 2 = train_batch_size 32 / ppo_mini_batch_size 16",
        "dp_size": "dp-size 4 = n_gpus_per_node 4 x nnodes 1 / ulysses_sequence_parallel_size 1",
        "mini_batch_size": "mini-batch-size 128 = ppo_mini_batch_size 16 x rollout.n 8",
        "composition": "composition ranks_first = verl cuts rank shards of the whole step first, then mini-batches inside each",
        "order": "order logged = rows in the input's order, taken as the order verl's actor saw them (after balance_batch)",
        "micro_batch_size": "micro-batch-size 8 = ppo_micro_batch_size_per_gpu 8",
        "max_seq_len": "max-seq-len 1024 = max_response_length 1024 (horizon of the Dr. GRPO comparison)",
        "mode": "mode token_mean = loss_agg_mode token-mean",
        "advantage": "advantage grpo = adv_estimator grpo, norm_adv_by_std_in_grpo true",
        "response_cap": "response cap 1024 = max_response_length 1024",
    }
    assert (setup.layout.mini_batch_size, setup.layout.dp_size, setup.layout.micro_batch_size) == (128, 4, 8)
    assert "actor_rollout_ref.actor.clip_ratio_c" in {u.key for u in setup.unmodelled}


def test_the_issues_example_512_rows() -> None:
    sets = [
        "data.train_batch_size=64",
        "actor_rollout_ref.rollout.n=16",
        f"{A}ppo_mini_batch_size=32",
        "trainer.n_gpus_per_node=8",
    ]
    setup = load_setup([VERL], sets=sets)
    assert lines(setup)["mini_batch_size"] == "mini-batch-size 512 = ppo_mini_batch_size 32 x rollout.n 16"


@pytest.mark.parametrize(
    ("sets", "mode", "horizon"),
    [
        ([f"{A}loss_agg_mode=seq-mean-token-sum-norm", f"{A}loss_scale_factor=4096"], "seq_mean_token_sum_norm", 4096),
        ([f"{A}loss_agg_mode=seq-mean-token-sum-norm"], "seq_mean_token_sum_norm_padded", 1024),
        ([f"{A}loss_agg_mode=seq-mean-token-sum-norm", "trainer.use_v1=false"], "seq_mean_token_sum_norm", 1024),
        ([f"{A}loss_agg_mode=seq-mean-token-mean"], "sequence_mean", 1024),
        ([f"{A}policy_loss.loss_mode=sapo", f"{A}loss_agg_mode=token-sum"], "sequence_mean", 1024),
        (["algorithm.norm_adv_by_std_in_grpo=false"], "token_mean", 1024),
    ],
)
def test_verl_modes_and_horizons(sets: list[str], mode: str, horizon: int) -> None:
    setup = load_setup([VERL], sets=sets)
    assert (setup.mode, setup.layout.max_seq_len) == (mode, horizon)


def test_verl_megatron_and_ulysses_rank_counts() -> None:
    megatron = load_setup(
        [VERL], sets=[f"{A}strategy=megatron", f"+{A}megatron.tensor_model_parallel_size=2", "trainer.n_gpus_per_node=8"]
    )
    assert megatron.layout.dp_size == 4
    ulysses = load_setup([VERL], sets=[f"{A}fsdp_config.ulysses_sequence_parallel_size=2"])
    assert ulysses.layout.dp_size == 2


def test_verl_dynamic_bsz_is_a_token_budget_per_rank() -> None:
    # ppo_max_token_len_per_gpu 3000 x ulysses 2 = 6000 tokens a micro-batch on each of 4 / 2 = 2 ranks
    setup = load_setup(
        [VERL],
        sets=[
            f"{A}use_dynamic_bsz=true",
            f"{A}ppo_max_token_len_per_gpu=3000",
            f"{A}fsdp_config.ulysses_sequence_parallel_size=2",
        ],
    )
    assert (setup.layout.micro_batch_tokens, setup.layout.micro_batch_size, setup.layout.dp_size) == (6000, None, 2)
    assert lines(setup)["micro_batch_tokens"] == (
        "micro-batch-tokens 6000 = ppo_max_token_len_per_gpu 3000 x ulysses_sequence_parallel_size 2 (use_dynamic_bsz "
        "true: verl's balanced micro-batches of at most this many tokens per rank)"
    )
    assert any("--prompt-tokens" in text and "estimated" in text for text in setup.not_exact)
    assert not setup.refusals  # the padded Dr. GRPO horizon is modelled under a token budget too
    padded = load_setup([VERL], sets=[f"{A}use_dynamic_bsz=true", f"{A}loss_agg_mode=seq-mean-token-sum-norm"])
    assert padded.mode == "seq_mean_token_sum_norm_padded" and not padded.refusals


def test_epochs_and_iterations_are_passes() -> None:
    verl = load_setup([VERL], sets=[f"{A}ppo_epochs=3"])
    assert verl.layout.passes == 3
    assert lines(verl)["passes"] == "passes 3 = ppo_epochs 3: a token's weight is the sum over the epochs that train it"
    trl = load_setup([TRL], sets=["num_iterations=2"])
    assert trl.layout.passes == 2 and trl.layout.composition == "ranks_first"
    assert load_setup([VERL]).layout.passes == 1


def test_trl_dapo_with_more_steps_per_generation_than_accumulation() -> None:
    # SPG 8, GA 4: two optimizer steps per generation batch, each token weighs 8 / (4 x T_gen) = 2 / T_gen
    setup = load_setup([TRL], sets=["steps_per_generation=8"])
    assert setup.mode == "token_mean_generation" and not setup.refusals
    assert lines(setup)["mode"].startswith(
        "mode token_mean_generation = loss_type dapo: each token weighs steps_per_generation 8"
    )


def test_verl_estimator_dr_grpo_and_unmodelled() -> None:
    assert load_setup([VERL], sets=["algorithm.norm_adv_by_std_in_grpo=false"]).estimator == "dr_grpo"
    gae = load_setup([VERL], sets=["algorithm.adv_estimator=gae"])
    assert gae.estimator is None and "gae" in gae.not_exact[0]


# ---- the other trainers -------------------------------------------------------------------------
def test_skyrl_sample_config_arithmetic() -> None:
    setup = load_setup([str(SAMPLE_DATA / "skyrl_grpo.yaml")])
    assert lines(setup)["mini_batch_prompts"] == "mini-batch-prompts 8 = policy_mini_batch_size 8 prompts (runs of equal uids)"
    assert lines(setup)["dp_size"] == "dp-size 4 = policy_num_nodes 1 x policy_num_gpus_per_node 4 / sequence_parallel_size 1"
    assert (setup.layout.composition, setup.layout.micro_batch_size, setup.mode) == ("canonical", 4, "token_mean")
    norm = load_setup(
        [str(SAMPLE_DATA / "skyrl_grpo.yaml")],
        sets=["trainer.algorithm.loss_reduction=seq_mean_token_sum_norm", "trainer.algorithm.max_seq_len=2048"],
    )
    assert (norm.mode, norm.layout.max_seq_len) == ("seq_mean_token_sum_norm", 2048)


def test_trl_processes_from_a_saved_config_and_loss_types() -> None:
    trl = str(SAMPLE_DATA / "trl_grpo.json")
    setup = load_setup([trl])
    assert lines(setup)["dp_size"] == "dp-size 4 = 4 processes = generation_batch_size 256 / (16 x steps_per_generation 4)"
    assert lines(setup)["mini_batch_size"] == (
        "mini-batch-size 256 = 4 processes x gradient_accumulation_steps 4 x per_device_train_batch_size 16"
    )
    expected = {
        "grpo": "sequence_mean",
        "sapo": "sequence_mean",
        "bnpo": "token_mean_legacy",
        "dr_grpo": "seq_mean_token_sum_norm",
    }
    expected |= {"luspo": "seq_mean_token_sum", "dapo": "token_mean", "cispo": "token_mean", "vespo": "token_mean"}
    for loss_type, mode in expected.items():
        assert load_setup([trl], sets=[f"loss_type={loss_type}"]).mode == mode
    bnpo = load_setup([trl], sets=["loss_type=bnpo"])
    assert bnpo.layout.order == "shuffle" and "one possible draw" in bnpo.not_exact[0]


def test_trl_without_processes_assumes_one_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "grpo.yaml"
    path.write_text("per_device_train_batch_size: 8\ngradient_accumulation_steps: 2\nnum_generations: 8\n")
    setup = load_setup([str(path)])
    assert (setup.layout.dp_size, setup.layout.mini_batch_size) == (1, 16)
    assert any("num_processes" in note for note in setup.notes)
    assert load_setup([str(path)], sets=["+num_processes=4"]).layout.mini_batch_size == 64


def test_openrlhf_sample_mode_counts_only_nonempty_samples() -> None:
    setup = load_setup([str(SAMPLE_DATA / "openrlhf_grpo.sh")])
    assert setup.mode == "sequence_mean_nonempty"
    assert lines(setup)["mini_batch_size"] == "mini-batch-size 256 = batch_size 256"
    several = load_setup([str(SAMPLE_DATA / "openrlhf_grpo.sh")], sets=["train.batch_size=64"])
    assert several.layout.order == "shuffle" and several.not_exact


def test_nemo_rl_and_prime_rl() -> None:
    nemo = load_setup([str(SAMPLE_DATA / "nemo_rl_grpo.yaml")])
    assert (nemo.layout.mini_batch_size, nemo.layout.micro_batch_size, nemo.mode) == (128, None, "token_mean")
    sequence = load_setup([str(SAMPLE_DATA / "nemo_rl_grpo.yaml")], sets=["loss_fn.token_level_loss=false"])
    assert sequence.mode == "sequence_mean_nonempty"
    prime = load_setup([str(SAMPLE_DATA / "prime_rl_rl.toml")])
    assert (prime.layout.mini_batch_size, prime.mode, prime.response_cap) == (None, "token_mean", 1024)


# ---- flags win ----------------------------------------------------------------------------------
def test_explicit_flags_win_and_say_so() -> None:
    applied = apply_setup(load_setup([VERL]), {"micro_batch_size": 4, "dp_size": 4})
    assert (applied.layout.micro_batch_size, applied.layout.dp_size) == (4, 4)
    assert applied.overrides == (
        "--micro-batch-size 4 (command line) wins over the config's micro-batch-size 8 = ppo_micro_batch_size_per_gpu 8",
    )
    assert applied.modes[0] == "token_mean" and "prompt_mean" in applied.modes
    named = apply_setup(load_setup([VERL]), {"mini_batch_prompts": 8}, ["sequence_mean"])
    assert (named.layout.mini_batch_size, named.layout.composition, named.modes) == (None, "canonical", ("sequence_mean",))
    assert any("replaces the config's mode token_mean" in line for line in named.overrides)


def test_a_refusal_is_lifted_by_overriding_what_it_concerns() -> None:
    setup = load_setup([VERL], sets=[f"{A}policy_loss.loss_mode=geo_mean"])
    with pytest.raises(AggscopeError, match="geo_mean"):
        apply_setup(setup, {})
    assert apply_setup(setup, {}, ["token_mean"]).modes == ("token_mean",)


def test_a_verl_dump_is_not_in_the_actors_order() -> None:
    applied = apply_setup(load_setup([VERL]), {}, input_format="verl")
    assert any("sorts by uid" in text for text in applied.not_exact)
    assert not apply_setup(load_setup([VERL]), {}, input_format="parquet").not_exact


def test_config_choices_and_changes() -> None:
    from aggscope.presets.changes import config_changes, parse_config_choice

    choice = parse_config_choice(f",{A}ppo_mini_batch_size=8", [VERL])
    assert (choice.paths, choice.sets, choice.label) == ((VERL,), (f"{A}ppo_mini_batch_size=8",), "ppo_mini_batch_size=8")
    assert parse_config_choice("new.yaml,a.b=1", [VERL]).label == "new.yaml+a.b=1"
    base, other = (
        load_setup([VERL]),
        load_setup([VERL], sets=["trainer.n_gpus_per_node=8", f"{A}loss_agg_mode=seq-mean-token-sum"]),
    )
    assert config_changes(base, other) == [
        f"{A}loss_agg_mode token-mean -> seq-mean-token-sum: mode token_mean -> seq_mean_token_sum",
        "trainer.n_gpus_per_node 4 -> 8: dp-size 4 -> 8",
    ]


def test_naming_the_configs_own_mode_is_not_an_override() -> None:
    assert apply_setup(load_setup([VERL]), {}, ["token-mean"]).overrides == ()
    assert apply_setup(load_setup([VERL]), {}, ["dapo"]).overrides == ()  # an alias of token_mean


def test_verl_shuffle_is_a_seeded_per_rank_order() -> None:
    setup = load_setup([VERL], sets=[f"{A}shuffle=true", f"{A}data_loader_seed=7", f"{A}ppo_epochs=2"])
    assert (setup.layout.rank_shuffle_seed, setup.layout.passes, setup.refusals) == (7, 2, ())
    assert lines(setup)["rank_shuffle_seed"].startswith("rank-shuffle-seed 7 = shuffle true, data_loader_seed 7: each rank walks")
    assert any("torch" in note and "make_iterator" in note for note in setup.notes)
    assert load_setup([VERL]).layout.rank_shuffle_seed is None
    # mini-batches counted in prompts are canonical: verl's per-rank shuffle does not exist there
    applied = apply_setup(setup, {"mini_batch_prompts": 8})
    assert applied.layout.rank_shuffle_seed is None
    assert any("per-rank shuffle (rank-shuffle-seed 7" in line and "dropped" in line for line in applied.overrides)


def test_rank_shuffle_seed_needs_ranks_first() -> None:
    from aggscope.core.layout import Layout

    with pytest.raises(AggscopeError, match=r"rank_shuffle_seed \(verl's actor.shuffle\) needs --composition ranks_first"):
        Layout(rank_shuffle_seed=1)
    with pytest.raises(AggscopeError, match="rank_shuffle_seed must be a whole number"):
        Layout(rank_shuffle_seed=-1, composition="ranks_first")


def test_openrlhf_epochs_are_passes_estimated_when_reshuffled() -> None:
    path = str(SAMPLE_DATA / "openrlhf_grpo.sh")
    one_update = load_setup([path], sets=["train.max_epochs=2"])
    assert one_update.layout.passes == 2 and not any("seed unknown" in t for t in one_update.not_exact)
    several = load_setup([path], sets=["train.max_epochs=2", "train.batch_size=64"])
    assert several.layout.passes == 2
    assert any(t.startswith("estimated: seed unknown: OpenRLHF reshuffles the step every epoch") for t in several.not_exact)
