"""SkyRL 0.4.0 (PyPI ``skyrl``; its defaults are the dataclasses of ``skyrl/train/config/config.py``).

Facts from the wheel (``skyrl/...``):

- ``policy_mini_batch_size`` counts prompts: mini-batches end after that many runs of equal
  consecutive uids (``train/dataset/preprocess.py`` ``compute_prompt_mini_batch_boundaries``), and
  ``train_batch_size`` must be a multiple of it (``train/utils/utils.py`` ``validate_batch_sizes``).
- Each mini-batch is cut into ``dp`` contiguous shards, each shard into micro-batches of
  ``micro_train_batch_size_per_gpu`` rows (``backends/skyrl_train/distributed/dispatch.py``,
  ``workers/worker_utils.py``): aggscope's canonical composition.
- ``loss_reduction`` scales the advantages per mini-batch
  (``backends/skyrl_train/utils/ppo_utils.py`` ``apply_loss_reduction_to_advantages_minibatch``):
  ``token_mean``, ``token_mean_legacy`` (slices of ``micro_train_batch_size_per_gpu`` rows of the
  global mini-batch), ``sequence_mean``, ``seq_mean_token_sum_norm`` (``algorithm.max_seq_len``,
  required) and ``prompt_mean`` (prompt boundaries).
- ``dp = policy_num_nodes * policy_num_gpus_per_node / sequence_parallel_size`` (FSDP), or divided by
  the Megatron tensor, pipeline and context parallel sizes.
"""

from __future__ import annotations

from aggscope.presets.setup import ConfigReader, Draft, TrainerSetup

RELEASE = "skyrl 0.4.0"
T = "trainer."
ALGO = "trainer.algorithm."
DETECT = ("trainer.policy_mini_batch_size", "trainer.algorithm.", "trainer.placement.", "generator.n_samples_per_prompt")
REDUCTIONS = ("token_mean", "token_mean_legacy", "sequence_mean", "seq_mean_token_sum_norm", "prompt_mean")
_CLIP = "PPO clipping: changes a token's loss away from ratio 1, not the weight of its loss"
KNOWN = {
    ALGO + "eps_clip_low": _CLIP,
    ALGO + "eps_clip_high": _CLIP,
    ALGO + "use_kl_loss": "KL loss term: a separate loss term, not in the policy-gradient weights",
    ALGO + "kl_loss_coef": "KL coefficient of the KL loss term",
    ALGO + "entropy_loss_coef": "entropy term: a separate loss term",
    ALGO + "policy_loss_type": "the per-token policy loss; every type goes through the same loss reduction",
    ALGO + "use_kl_in_reward": "KL penalty in the reward: changes advantages, which the dump holds",
    T + "dump_data_batch": "writes the training input the skyrl reader reads",
    T + "epochs": "passes over the dataset, not over one batch",
}


def derive(reader: ConfigReader) -> TrainerSetup:
    reader.known.update(KNOWN)
    draft = Draft(reader, RELEASE)
    prompts = reader.integer(T + "train_batch_size", 1024)
    mini = reader.integer(T + "policy_mini_batch_size", 256)
    n = reader.integer("generator.n_samples_per_prompt", 5)
    step_wise = reader.boolean("generator.step_wise_trajectories", False)
    if mini > prompts:
        raise reader.error(
            T + "policy_mini_batch_size", f"({mini}) is larger than train_batch_size ({prompts}); SkyRL asserts it is not"
        )
    if prompts % mini:
        raise reader.error(
            T + "train_batch_size", f"({prompts}) is not a multiple of policy_mini_batch_size ({mini}); SkyRL asserts it is"
        )
    dp = _dp_size(reader, draft)
    micro = reader.integer(T + "micro_train_batch_size_per_gpu", 1)
    per_gpu = mini * n // dp
    if per_gpu < 1 or per_gpu % micro:
        raise reader.error(
            T + "micro_train_batch_size_per_gpu",
            f"({micro}) does not divide a rank's share of a mini-batch (policy_mini_batch_size {mini} x n_samples_per_prompt {n} / "
            f"{dp} ranks = {per_gpu} rows); SkyRL asserts it does: choose a divisor of {per_gpu}",
        )
    draft.set("step_rows", prompts * n, [T + "train_batch_size", "generator.n_samples_per_prompt"])
    keys = [T + "train_batch_size", T + "policy_mini_batch_size"]
    draft.set("updates", prompts // mini, keys, " / ".join(reader.term(k) for k in keys))
    draft.set(
        "mini_batch_prompts",
        mini,
        [T + "policy_mini_batch_size"],
        f"{reader.term(T + 'policy_mini_batch_size')} prompts (runs of equal uids)",
    )
    token_budget = reader.integer(T + "max_tokens_per_microbatch", -1, minimum=None)
    if token_budget > 0:
        draft.set(
            "micro_batch_size",
            None,
            [T + "max_tokens_per_microbatch"],
            f"{reader.term(T + 'max_tokens_per_microbatch')}: token-based micro-batches (not modelled)",
        )
        draft.notes.append(
            "max_tokens_per_microbatch > 0: SkyRL packs micro-batches by a token budget, not modelled: micro-batch findings "
            "describe whole rank shards (token_mean_legacy slices by micro_train_batch_size_per_gpu all the same)"
        )
    else:
        draft.set("micro_batch_size", micro, [T + "micro_train_batch_size_per_gpu"])
    _mode(reader, draft, step_wise)
    _advantage(reader, draft)
    epochs = reader.integer(T + "update_epochs_per_batch", 1)
    if epochs > 1:
        # SkyRL 0.4.0 (trainer._execute_training_step) stages the mini-batch chunks once and walks the
        # same chunks in the same order every epoch: no reshuffle, so the passes are exact.
        draft.set(
            "passes",
            epochs,
            [T + "update_epochs_per_batch"],
            f"{reader.term(T + 'update_epochs_per_batch')}: every mini-batch is trained again in the same order each "
            "epoch; a token's weight is the sum over the epochs",
        )
    if reader.boolean(ALGO + "advantage_batch_normalize", False):
        draft.notes.append(
            "advantage_batch_normalize: SkyRL z-scores the advantages over the batch after the dump is written, so gradient "
            "weights (w x A) here use the dump's raw advantages"
        )
    return draft.finish()


def _mode(reader: ConfigReader, draft: Draft, step_wise: bool) -> None:
    reduction = reader.choice(ALGO + "loss_reduction", "token_mean", REDUCTIONS)
    if step_wise:
        if reduction == "token_mean_legacy":
            raise reader.error(
                ALGO + "loss_reduction", "token_mean_legacy is refused by SkyRL with step-wise training: use token_mean"
            )
        draft.not_exact.append(
            "generator.step_wise_trajectories: SkyRL counts mini-batches in trajectories and pads each mini-batch to a multiple "
            "of the ranks, not modelled; mini-batch boundaries follow uid runs"
        )
    horizon = reader.integer(ALGO + "max_seq_len", None, nullable=True)
    if reduction == "seq_mean_token_sum_norm" and horizon is None:
        raise reader.error(
            ALGO + "max_seq_len", "must be set for loss_reduction seq_mean_token_sum_norm (SkyRL refuses it otherwise)"
        )
    cap = reader.integer("generator.sampling_params.max_generate_length", 1024)
    draft.set("response_cap", cap, ["generator.sampling_params.max_generate_length"])
    if horizon is not None:
        draft.set("max_seq_len", horizon, [ALGO + "max_seq_len"])
    else:
        draft.set(
            "max_seq_len",
            cap,
            ["generator.sampling_params.max_generate_length"],
            f"{reader.term('generator.sampling_params.max_generate_length')} (horizon of the Dr. GRPO comparison)",
        )
    draft.set("mode", reduction, [ALGO + "loss_reduction"])


def _dp_size(reader: ConfigReader, draft: Draft) -> int:
    nodes = reader.integer(T + "placement.policy_num_nodes", 1)
    gpus = reader.integer(T + "placement.policy_num_gpus_per_node", 1)
    keys = [T + "placement.policy_num_nodes", T + "placement.policy_num_gpus_per_node"]
    strategy = reader.text(T + "strategy", "fsdp")
    if strategy == "megatron":
        split = [
            T + f"policy.megatron_config.{name}"
            for name in ("pipeline_model_parallel_size", "context_parallel_size", "tensor_model_parallel_size")
        ]
    else:
        split = [T + "policy.sequence_parallel_size"]
    divisor = 1
    for key in split:
        divisor *= reader.integer(key, 1)
    if (nodes * gpus) % divisor:
        raise reader.error(
            split[0], f"leaves {nodes * gpus} GPUs not divisible into data-parallel ranks of {divisor} (SkyRL asserts it)"
        )
    dp = nodes * gpus // divisor
    terms = " x ".join(reader.term(k) for k in keys)
    draft.set("dp_size", dp, keys + split, f"{terms} / {' / '.join(reader.term(k) for k in split)}")
    return dp


def _advantage(reader: ConfigReader, draft: Draft) -> None:
    # SkyRL's dump holds its advantages: aggscope reads them; the estimator is shown, not rebuilt.
    estimator = reader.text(ALGO + "advantage_estimator", "grpo")
    by_std = reader.boolean(ALGO + "grpo_norm_by_std", True)
    keys = [ALGO + "advantage_estimator"] + ([ALGO + "grpo_norm_by_std"] if estimator == "grpo" else [])
    named = {"grpo": "grpo" if by_std else "dr_grpo", "rloo": "rloo"}.get(estimator)
    draft.set("advantage", named, keys, " with ".join(reader.term(k) for k in keys) + " (the dump holds the advantages)")
