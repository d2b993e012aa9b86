"""NeMo-RL GRPO (its YAML, e.g. ``examples/configs/grpo_math_1B.yaml``), read from NeMo-RL's main
branch (snapshot 7ea279a, 2026-08-22); not checked against a released wheel.

- A step holds ``grpo.num_prompts_per_step * grpo.num_generations_per_prompt`` samples; the policy
  trains it in global batches of ``policy.train_global_batch_size`` samples, each cut into ``dp``
  shards and micro-batches of ``policy.train_micro_batch_size`` (``nemo_rl/distributed/
  batched_data_dict.py`` ``shard_by_batch_size``: chunk first, then shard): the canonical composition.
- The loss (``nemo_rl/algorithms/loss/loss_functions.py`` ``ClippedPGLossFn``) divides by the global
  batch's valid tokens (``loss_fn.token_level_loss: true``: token_mean) or by its valid samples
  after a per-sample token mean (``false``: the samples with ``sample_mask`` 1; aggscope's
  ``sequence_mean_nonempty``, since the nemo-rl reader zeroes the mask of dropped samples).
- ``dp = cluster.num_nodes * cluster.gpus_per_node`` over the tensor, context (and Megatron
  pipeline) parallel sizes. NeMo-RL has no defaults for these keys: a config without them is refused.
"""

from __future__ import annotations

from aggscope.presets.setup import ConfigReader, Draft, TrainerSetup

RELEASE = "nemo-rl main (7ea279a)"
DETECT = ("policy.train_global_batch_size", "grpo.num_prompts_per_step", "loss_fn.token_level_loss")
_CLIP = "PPO clipping: changes a token's loss away from ratio 1, not the weight of its loss"
KNOWN = {
    "loss_fn.ratio_clip_min": _CLIP,
    "loss_fn.ratio_clip_max": _CLIP,
    "loss_fn.ratio_clip_c": "dual-clip bound: changes a token's loss, not its weight",
    "loss_fn.reference_policy_kl_penalty": "KL term: aggregated like the policy loss, not in the policy-gradient weights",
    "loss_fn.use_importance_sampling_correction": "importance weights multiply per-token losses (not modelled)",
    "loss_fn.sequence_level_importance_ratios": "sequence-level ratios (GSPO): change each token's loss, not its weight",
    "grpo.normalize_rewards": "advantage scaling: the dump holds the advantages",
    "grpo.use_leave_one_out_baseline": "advantage baseline: the dump holds the advantages",
}


def derive(reader: ConfigReader) -> TrainerSetup:
    reader.known.update(KNOWN)
    draft = Draft(reader, RELEASE)
    prompts = reader.integer("grpo.num_prompts_per_step")
    generations = reader.integer("grpo.num_generations_per_prompt")
    batch = reader.integer("policy.train_global_batch_size")
    micro = reader.integer("policy.train_micro_batch_size")
    step_rows = prompts * generations
    if step_rows % batch:
        raise reader.error(
            "policy.train_global_batch_size",
            f"({batch}) does not divide a step of {step_rows} samples (num_prompts_per_step {prompts} x num_generations_per_prompt "
            f"{generations}); NeMo-RL asserts it does",
        )
    dp = _dp_size(reader, draft)
    if batch % dp or (batch // dp) % micro:
        raise reader.error(
            "policy.train_micro_batch_size",
            f"({micro}) does not divide a rank's share of a global batch ({batch} / {dp} ranks): choose sizes that divide",
        )
    draft.set("step_rows", step_rows, ["grpo.num_prompts_per_step", "grpo.num_generations_per_prompt"])
    draft.set("mini_batch_size", batch, ["policy.train_global_batch_size"])
    draft.set(
        "updates",
        step_rows // batch,
        ["grpo.num_prompts_per_step", "grpo.num_generations_per_prompt", "policy.train_global_batch_size"],
        f"{step_rows} samples / {reader.term('policy.train_global_batch_size')}",
    )
    packed = [key for key in ("policy.sequence_packing.enabled", "policy.dynamic_batching.enabled") if reader.boolean(key, False)]
    if packed:
        draft.set("micro_batch_size", None, packed, f"{reader.term(packed[0])}: micro-batches by token budget (not modelled)")
        draft.notes.append(
            f"{packed[0]}: micro-batches hold whole samples up to a token budget, not modelled; NeMo-RL's denominators are "
            "global per batch, so the trainer's weights do not depend on it; micro-batch findings describe whole rank shards"
        )
    else:
        draft.set("micro_batch_size", micro, ["policy.train_micro_batch_size"])
    token_level = reader.boolean("loss_fn.token_level_loss", True)
    if token_level:
        draft.set("mode", "token_mean", ["loss_fn.token_level_loss"])
    else:
        draft.set(
            "mode",
            "sequence_mean_nonempty",
            ["loss_fn.token_level_loss"],
            f"{reader.term('loss_fn.token_level_loss')}: per-sample mean over the valid samples",
        )
    cap = reader.integer("policy.max_total_sequence_length")
    draft.set(
        "response_cap",
        cap,
        ["policy.max_total_sequence_length"],
        f"{reader.term('policy.max_total_sequence_length')} (prompt + response)",
    )
    draft.set(
        "max_seq_len",
        cap,
        ["policy.max_total_sequence_length"],
        f"{reader.term('policy.max_total_sequence_length')} (horizon of the Dr. GRPO comparison)",
    )
    draft.set("advantage", None, [], "the dump holds the advantages")
    return draft.finish()


def _dp_size(reader: ConfigReader, draft: Draft) -> int:
    keys = ["cluster.num_nodes", "cluster.gpus_per_node"]
    world = reader.integer(keys[0]) * reader.integer(keys[1])
    if reader.boolean("policy.megatron_cfg.enabled", False):
        split = [
            f"policy.megatron_cfg.{name}"
            for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size")
        ]
    else:
        split = ["policy.dtensor_cfg.tensor_parallel_size", "policy.dtensor_cfg.context_parallel_size"]
    divisor = 1
    for key in split:
        divisor *= reader.integer(key, 1)
    if world % divisor:
        raise reader.error(split[0], f"leaves {world} GPUs not divisible into data-parallel ranks of {divisor}")
    terms = " x ".join(reader.term(k) for k in keys)
    draft.set("dp_size", world // divisor, keys + split, f"{terms} / {' / '.join(reader.term(k) for k in split)}")
    return world // divisor
