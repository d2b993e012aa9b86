"""verl 0.9.1 (the v1 sync trainer, ``trainer.use_v1: true``, its default).

Facts from the wheel (``verl/...``):

- ``ppo_mini_batch_size`` counts prompts; the trainer passes ``ppo_mini_batch_size * rollout.n``
  rows as the mini-batch (``trainer/ppo/v1/trainer_base.py`` ``_update_actor``).
- The step is cut into ``dp`` contiguous rank shards first; each rank iterates its shard in
  chunks of ``mini_batch_size / dp`` rows (``workers/engine_workers.py`` ``train_mini_batch``,
  ``utils/tensordict_utils.py`` ``make_iterator``), so mini-batch ``b`` is chunk ``b`` of every
  rank: aggscope's ``ranks_first`` composition. Micro-batches are contiguous chunks of
  ``ppo_micro_batch_size_per_gpu`` rows of a rank's chunk (``workers/engine/utils.py``), or with
  ``use_dynamic_bsz`` verl's balanced token-budget sets (``utils/seqlen_balancing.py``
  ``rearrange_micro_batches``; aggscope's ``micro_batch_tokens``, ``core/partition.py``) of at most
  ``ppo_max_token_len_per_gpu * ulysses_sequence_parallel_size`` tokens (context-parallel size
  under Megatron). The losses need no rescaling: ``agg_loss``'s denominators are global.
- ``agg_loss`` (``trainer/ppo/core_algos.py``) gets the global mini-batch's token count and
  ``ppo_mini_batch_size * n`` as its row count: the canonical modes over mini-batch ``b``.
  ``seq-mean-token-sum-norm`` with ``loss_scale_factor: null`` divides by the padded width of each
  micro-batch (``workers/utils/losses.py``, ``workers/utils/padding.py``).
- ``dp = nnodes * n_gpus_per_node / ulysses_sequence_parallel_size`` (FSDP), or divided by the
  tensor, pipeline and context parallel sizes (Megatron).
- ``ppo_epochs`` passes over the step's mini-batches. With ``actor.shuffle`` each rank walks its
  shard in a new random order every epoch before cutting it into mini-batches: ``make_iterator``
  wraps the shard in a ``torch.utils.data.DataLoader(shuffle=True)`` whose ``torch.Generator`` is
  seeded ``data_loader_seed + dp rank`` (``engine_workers.py`` ``train_mini_batch``), made anew every
  step, so every step draws the same orders; aggscope draws them with torch's own classes
  (``Layout.rank_shuffle_seed``) and sums each token's weight over the epochs' splits. The v0
  trainer (``ray_trainer.py``) passes the same seed and shuffle to the same worker.
"""

from __future__ import annotations

from aggscope.presets.setup import ConfigReader, Draft, TrainerSetup

RELEASE = "verl 0.9.1"
ACTOR = "actor_rollout_ref.actor."
ROLLOUT = "actor_rollout_ref.rollout."
DETECT = ("actor_rollout_ref.", "algorithm.adv_estimator")
LOSS_AGG_MODES = {
    "token-mean": "token_mean",
    "token-sum": "token_sum",
    "seq-mean-token-mean": "sequence_mean",
    "seq-mean-token-sum": "seq_mean_token_sum",
    "seq-mean-token-sum-norm": "seq_mean_token_sum_norm",
}
LOSS_MODES = (
    "vanilla",
    "gspo",
    "sapo",
    "gpg",
    "clip_cov",
    "kl_cov",
    "geo_mean",
    "dro",
    "cispo",
    "dppo_tv",
    "dppo_kl",
    "bypass_mode",
)
_CLIP = "PPO clipping: changes a token's loss away from ratio 1, not the weight of its loss"
KNOWN = {
    ACTOR + "clip_ratio": _CLIP,
    ACTOR + "clip_ratio_low": _CLIP,
    ACTOR + "clip_ratio_high": _CLIP,
    ACTOR + "clip_ratio_c": "dual-clip bound for negative advantages: changes a token's loss, not its weight",
    ACTOR + "entropy_coeff": "entropy bonus: a separate loss term (aggregated the same way), not in the policy-gradient weights",
    ACTOR + "use_kl_loss": "KL loss term: a separate loss term, not in the policy-gradient weights",
    ACTOR + "kl_loss_coef": "KL loss coefficient: a separate loss term",
    ACTOR + "kl_loss_type": "KL estimator of the KL loss term",
    "algorithm.use_kl_in_reward": "KL penalty in the reward: changes advantages (the dump's scores do not include it)",
    "algorithm.gamma": "GAE discount: changes advantages, not weights",
    "algorithm.lam": "GAE lambda: changes advantages, not weights",
    "trainer.balance_batch": "ignored by verl's v1 trainer, which always reorders the batch by length across ranks "
    "(balance_batch): a batch logged after it (aggscope.log_batch before update_actor) is in the actor's order, as "
    "aggscope takes it; for rows in the order before it give --order balanced (verl's reordering, from prompt + "
    "response lengths: add --prompt-tokens)",
    "trainer.rollout_data_dir": "where verl dumps rollouts, sorted by uid: the order the actor trained in is not kept",
    "data.max_prompt_length": "prompt cap: prompts are not loss tokens",
    "algorithm.rollout_correction.rollout_is": "rollout importance-sampling weights (null: off): multiply each token's "
    "loss by a per-token ratio clipped at rollout_is_threshold, on top of the weight aggscope computes (not modelled)",
    "algorithm.rollout_correction.rollout_rs": "rollout rejection sampling: rewrites response_mask but not the loss_mask "
    "verl's token-mean counts, so its denominators keep rejected tokens (not modelled)",
}


def derive(reader: ConfigReader) -> TrainerSetup:
    reader.known.update(KNOWN)
    draft = Draft(reader, RELEASE)
    prompts = reader.integer("data.train_batch_size", 1024)
    n = reader.integer(ROLLOUT + "n", 1)
    mini = reader.integer(ACTOR + "ppo_mini_batch_size", 256)
    dynamic = reader.boolean(ACTOR + "use_dynamic_bsz", False)
    if reader.has(ROLLOUT + "log_prob_use_dynamic_bsz") and reader.boolean(ROLLOUT + "log_prob_use_dynamic_bsz") != dynamic:
        raise reader.error(
            ROLLOUT + "log_prob_use_dynamic_bsz", f"must equal {ACTOR}use_dynamic_bsz ({str(dynamic).lower()}): verl asserts it"
        )
    if mini > prompts:
        raise reader.error(
            ACTOR + "ppo_mini_batch_size",
            f"({mini} prompts) is larger than the step (data.train_batch_size {prompts}); verl refuses it: make it at most {prompts}",
        )
    draft.set("step_rows", prompts * n, ["data.train_batch_size", ROLLOUT + "n"])
    dp, sequence_parallel = _dp_size(reader, draft)
    rows = mini * n
    if rows % dp:
        raise reader.error(
            ACTOR + "ppo_mini_batch_size",
            f"x rollout.n = {rows} rows is not divisible by the {dp} data-parallel ranks (verl asserts it): "
            f"choose ppo_mini_batch_size so that ppo_mini_batch_size x {n} is a multiple of {dp}",
        )
    draft.set("mini_batch_size", rows, [ACTOR + "ppo_mini_batch_size", ROLLOUT + "n"])
    updates = -(-prompts // mini)
    draft.set(
        "updates",
        updates,
        ["data.train_batch_size", ACTOR + "ppo_mini_batch_size"],
        f"{reader.term('data.train_batch_size')} / {reader.term(ACTOR + 'ppo_mini_batch_size')}",
    )
    draft.set("composition", "ranks_first", [], "verl cuts rank shards of the whole step first, then mini-batches inside each")
    draft.set("order", "logged", [], "rows in the input's order, taken as the order verl's actor saw them (after balance_batch)")
    if prompts % mini:
        draft.notes.append(
            f"data.train_batch_size {prompts} is not a multiple of ppo_mini_batch_size {mini}: verl pads the step with empty "
            "rows (loss mask 0) up to a multiple of the mini-batch, and they count in the seq-mean denominators; the input must "
            "hold them, as verl's own dump does"
        )
    _micro_batches(reader, draft, rows // dp, dynamic, sequence_parallel)
    _mode(reader, draft, dynamic)
    _advantage(reader, draft)
    cap = reader.integer("data.max_response_length", 512)
    draft.set("response_cap", cap, ["data.max_response_length"])
    _passes(reader, draft, updates)
    return draft.finish()


def _dp_size(reader: ConfigReader, draft: Draft) -> tuple[int, tuple[str, int]]:
    """The data-parallel size, and the sequence-parallel key and size that multiply the token budget."""
    gpus, nodes = reader.integer("trainer.n_gpus_per_node", 8), reader.integer("trainer.nnodes", 1)
    strategy = reader.choice(ACTOR + "strategy", "fsdp", ("fsdp", "fsdp2", "megatron", "veomni", "torchtitan", "automodel"))
    keys = ["trainer.n_gpus_per_node", "trainer.nnodes"]
    if strategy == "megatron":
        split_keys = [
            ACTOR + f"megatron.{name}"
            for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size")
        ]
        divisor = 1
        for key in split_keys:
            divisor *= reader.integer(key, 1)
        sequence_parallel = (split_keys[2], reader.integer(split_keys[2], 1))
    else:
        # the actor's deprecated key wins when it is above 1 (workers/config/actor.py FSDPActorConfig)
        deprecated = reader.integer(ACTOR + "ulysses_sequence_parallel_size", 1)
        current = reader.integer(ACTOR + "fsdp_config.ulysses_sequence_parallel_size", 1)
        split_keys = [
            ACTOR + ("ulysses_sequence_parallel_size" if deprecated > 1 else "fsdp_config.ulysses_sequence_parallel_size")
        ]
        divisor = deprecated if deprecated > 1 else current
        sequence_parallel = (split_keys[0], divisor)
    if (gpus * nodes) % divisor:
        raise reader.error(
            split_keys[0], f"leaves {gpus * nodes} GPUs not divisible into data-parallel ranks ({divisor} per rank)"
        )
    dp = gpus * nodes // divisor
    terms = " x ".join(reader.term(k) for k in keys)
    draft.set("dp_size", dp, keys + split_keys, f"{terms} / {' / '.join(reader.term(k) for k in split_keys)}")
    return dp, sequence_parallel


def _micro_batches(
    reader: ConfigReader, draft: Draft, rows_per_rank: int, dynamic: bool, sequence_parallel: tuple[str, int]
) -> None:
    deprecated = reader.integer(ACTOR + "ppo_micro_batch_size", None, nullable=True)
    per_gpu = reader.integer(ACTOR + "ppo_micro_batch_size_per_gpu", None, nullable=True)
    budget = reader.integer(ACTOR + "ppo_max_token_len_per_gpu", 16384)
    if dynamic:
        sp_key, sp_size = sequence_parallel
        draft.set(
            "micro_batch_tokens",
            budget * sp_size,
            [ACTOR + "use_dynamic_bsz", ACTOR + "ppo_max_token_len_per_gpu", sp_key],
            f"{reader.term(ACTOR + 'ppo_max_token_len_per_gpu')} x {reader.term(sp_key)} (use_dynamic_bsz true: "
            "verl's balanced micro-batches of at most this many tokens per rank)",
        )
        draft.not_exact.append(
            "use_dynamic_bsz: verl partitions micro-batches by sequence length (prompt + response tokens); the input "
            "holds the responses, so each row's length is its tokens here plus --prompt-tokens (0 unless given): which "
            "rows share a micro-batch is estimated, and with it token_mean_legacy, the padded Dr. GRPO horizon and the "
            "micro-batch findings (verl's own token-mean, seq-mean and token-sum weights do not depend on it)"
        )
        if reader.integer(ACTOR + "megatron.virtual_pipeline_model_parallel_size", None, nullable=True):
            draft.notes.append(
                "megatron virtual pipeline: verl rounds the micro-batch count up to a multiple of "
                "microbatch_group_size_per_vp_stage, which aggscope does not model: the token-budget split may have "
                "fewer micro-batches than the run"
            )
        return
    if deprecated is not None and per_gpu is not None:
        raise reader.error(
            ACTOR + "ppo_micro_batch_size",
            "and ppo_micro_batch_size_per_gpu are both set; verl refuses it: remove ppo_micro_batch_size",
        )
    if per_gpu is None:
        key = ACTOR + ("ppo_micro_batch_size" if deprecated is not None else "ppo_micro_batch_size_per_gpu")
        raise reader.error(
            key,
            "is set but verl 0.9.1's engine reads only ppo_micro_batch_size_per_gpu: set that instead"
            if deprecated is not None
            else "is null; verl requires it unless use_dynamic_bsz is true: set it (rows per micro-batch per GPU)",
        )
    if rows_per_rank % per_gpu:
        raise reader.error(
            ACTOR + "ppo_micro_batch_size_per_gpu",
            f"({per_gpu}) does not divide a rank's {rows_per_rank} rows of a mini-batch (verl asserts it): choose a divisor of {rows_per_rank}",
        )
    draft.set("micro_batch_size", per_gpu, [ACTOR + "ppo_micro_batch_size_per_gpu"])


def _mode(reader: ConfigReader, draft: Draft, dynamic: bool) -> str:
    loss_mode = reader.choice(ACTOR + "policy_loss.loss_mode", "vanilla", LOSS_MODES)
    agg = reader.choice(ACTOR + "loss_agg_mode", "token-mean", tuple(LOSS_AGG_MODES))
    scale = reader.integer(ACTOR + "loss_scale_factor", None, nullable=True)
    use_v1 = reader.boolean("trainer.use_v1", True)
    cap = reader.integer("data.max_response_length", 512)
    if loss_mode == "sapo":
        draft.set(
            "max_seq_len",
            cap,
            ["data.max_response_length"],
            f"{reader.term('data.max_response_length')} (horizon of the Dr. GRPO comparison)",
        )
        return draft.set(
            "mode", "sequence_mean", [ACTOR + "policy_loss.loss_mode"], "policy_loss.loss_mode sapo (always seq-mean-token-mean)"
        )
    if loss_mode == "geo_mean":
        draft.refuse(
            "verl config: policy_loss.loss_mode geo_mean takes a plain mean over each micro-batch's rows, ignoring loss_agg_mode "
            "and the global denominators; aggscope does not model it: give --mode to look at another mode",
            "mode",
        )
    mode = LOSS_AGG_MODES[agg]
    keys = [ACTOR + "loss_agg_mode"]
    if mode == "seq_mean_token_sum_norm":
        if scale is not None:
            draft.set("max_seq_len", scale, [ACTOR + "loss_scale_factor"])
        elif use_v1:
            mode = "seq_mean_token_sum_norm_padded"
            keys.append(ACTOR + "loss_scale_factor")
        else:
            draft.set(
                "max_seq_len",
                cap,
                ["data.max_response_length"],
                f"{reader.term('data.max_response_length')} (the v0 trainer pads to it)",
            )
    if "max_seq_len" not in draft.values:
        # the horizon of seq_mean_token_sum_norm when it is shown beside the trainer's own mode
        draft.set(
            "max_seq_len",
            cap,
            ["data.max_response_length"],
            f"{reader.term('data.max_response_length')} (horizon of the Dr. GRPO comparison)",
        )
    arithmetic = " with ".join(reader.term(k) for k in keys)
    if mode == "seq_mean_token_sum_norm_padded":
        arithmetic += ": the horizon is each micro-batch's padded width (its longest row)"
    return draft.set("mode", mode, keys, arithmetic)


def _advantage(reader: ConfigReader, draft: Draft) -> None:
    estimator = reader.text("algorithm.adv_estimator", "gae")
    by_std = reader.boolean("algorithm.norm_adv_by_std_in_grpo", True)
    keys = ["algorithm.adv_estimator"]
    if estimator == "grpo":
        keys.append("algorithm.norm_adv_by_std_in_grpo")
        draft.set("advantage", "grpo" if by_std else "dr_grpo", keys)
    elif estimator == "rloo":
        draft.set("advantage", "rloo", keys)
    else:
        draft.set("advantage", None, keys, f"{reader.term(keys[0])} (not one aggscope rebuilds)")
        draft.not_exact.append(
            f"algorithm.adv_estimator {estimator}: where aggscope rebuilds advantages (verl's dump holds scores, not "
            "advantages) it uses grpo, not the run's estimator: gradient weights (w x A) are not the run's; weights are"
        )


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        return "(not installed)"


def _passes(reader: ConfigReader, draft: Draft, mini_batches: int) -> None:
    epochs = reader.integer(ACTOR + "ppo_epochs", 1)
    shuffle = reader.boolean(ACTOR + "shuffle", False)
    if shuffle:
        # make_iterator: DataLoader(shuffle=True) with a torch.Generator seeded data_loader_seed +
        # dp rank, made anew every step (so every step draws the same orders) and drawn per epoch;
        # verl adds the rank to the seed, so a null seed fails in verl itself
        seed = reader.integer(ACTOR + "data_loader_seed", 42, minimum=0)
        draft.set(
            "rank_shuffle_seed",
            seed,
            [ACTOR + "shuffle", ACTOR + "data_loader_seed"],
            f"{reader.term(ACTOR + 'shuffle')}, {reader.term(ACTOR + 'data_loader_seed')}: each rank walks its shard in "
            "the order of a torch DataLoader shuffle seeded data_loader_seed + rank, a new draw every epoch",
        )
        draft.notes.append(
            f"actor.shuffle true: verl's per-rank orders are drawn here with torch {_torch_version()}'s DataLoader and "
            "Generator, as verl 0.9.1's make_iterator draws them; a trainer on a torch release whose randperm draws "
            "differently would have other mini-batches"
            + ("" if mini_batches > 1 or epochs > 1 else " (one mini-batch and one epoch: the order changes no weight)")
        )
    else:
        reader.integer(ACTOR + "data_loader_seed", 42, minimum=0)
    if epochs > 1:
        draft.set(
            "passes",
            epochs,
            [ACTOR + "ppo_epochs"],
            f"{reader.term(ACTOR + 'ppo_epochs')}: a token's weight is the sum over the epochs that train it"
            + (" (each epoch in its own shuffled mini-batches)" if shuffle else ""),
        )
