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
- Sequence packing (``policy.sequence_packing``) and dynamic batching (``policy.dynamic_batching``)
  change which samples share a micro-batch, never a weight: both work inside one global batch
  (``batched_data_dict.py`` ``shard_by_batch_size``: each ``train_global_batch_size`` chunk is packed
  into bins of ``train_mb_tokens`` by ``nemo_rl/data/packing/algorithms.py`` ``get_packer``, bins dealt
  to the ranks round-robin; dynamic batching sorts a chunk by length and strides it over the ranks),
  and the denominators are the global batch's valid tokens or samples summed over all ranks before
  any micro-batch is cut (``models/automodel/data.py`` and ``models/megatron/data.py``
  ``process_global_batch``). Each packed sequence's loss is ``loss_fn`` with those global counts
  (``algorithms/loss/wrapper.py`` ``SequencePackingLossWrapper``), the micro-batch losses are summed
  by backward, scaled by ``dp`` (``models/automodel/train.py`` ``automodel_forward_backward``) and
  averaged over ranks, and padding micro-batches are multiplied by 0. So the weights are those of
  the unpacked layout (tests/presets/test_presets_packing.py checks it on random packings); only
  findings that look at micro-batches describe whole rank shards instead.
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
    "policy.sequence_packing.microbatch_order": "order a rank runs its packed micro-batches in: changes no weight",
    "policy.sequence_packing.sequence_length_round": "padding of packed sequences: padding is not a loss token",
    "policy.make_sequence_length_divisible_by": "padding of packed sequences: padding is not a loss token",
    "policy.dynamic_batching.sequence_length_round": "padding of a micro-batch: padding is not a loss token",
    "policy.sequence_packing.logprob_mb_tokens": "token budget of the log-prob pass: no gradient",
    "policy.dynamic_batching.logprob_mb_tokens": "token budget of the log-prob pass: no gradient",
}
# nemo_rl/data/packing/algorithms.py PackingAlgorithm (get_packer takes the name in any case)
PACKING_ALGORITHMS = ("concatenative", "first_fit_decreasing", "first_fit_shuffle", "modified_first_fit_decreasing")
_NO_WEIGHT_CHANGE = (
    "NeMo-RL's denominators are the global batch's valid tokens or samples over all ranks (process_global_batch), "
    "so no weight depends on it; micro-batch findings describe whole rank shards"
)


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
    _packing(reader, draft, micro)
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


def _packing(reader: ConfigReader, draft: Draft, micro: int) -> None:
    """Micro-batches: ``train_micro_batch_size`` rows, or token-budget bins that change no weight."""
    packing = reader.boolean("policy.sequence_packing.enabled", False)
    dynamic = reader.boolean("policy.dynamic_batching.enabled", False)
    if packing and dynamic:
        raise reader.error(
            "policy.dynamic_batching.enabled",
            "and policy.sequence_packing.enabled are both true; NeMo-RL asserts at most one is: disable one",
        )
    if not (packing or dynamic):
        draft.set("micro_batch_size", micro, ["policy.train_micro_batch_size"])
        return
    section = "policy.sequence_packing." if packing else "policy.dynamic_batching."
    keys = [section + "enabled", section + "train_mb_tokens"]
    budget = reader.integer(keys[1])
    if packing:
        algorithm = reader.text(section + "algorithm")
        if not isinstance(algorithm, str) or algorithm.lower() not in PACKING_ALGORITHMS:
            raise reader.error(
                section + "algorithm", f"is {algorithm!r}; NeMo-RL's get_packer accepts {', '.join(PACKING_ALGORITHMS)}"
            )
        keys.append(section + "algorithm")
        how = f"samples packed by {algorithm.lower()} into sequences of at most {budget} tokens"
    else:
        reader.integer(section + "sequence_length_round")
        how = f"samples sorted by length and cut into micro-batches of at most {budget} tokens"
    draft.set("micro_batch_size", None, keys, f"{section.split('.')[1]} {reader.term(keys[0])}: {how}")
    draft.notes.append(f"{section}enabled: {how}; {_NO_WEIGHT_CHANGE}")


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
