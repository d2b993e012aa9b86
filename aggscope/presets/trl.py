"""TRL 1.16.0 ``GRPOTrainer`` (a ``GRPOConfig`` as JSON or YAML; its fields and defaults are
``trl/trainer/grpo_config.py``, the loss ``GRPOTrainer._compute_loss`` in ``grpo_trainer.py``).

With ``B = per_device_train_batch_size``, ``P`` processes, ``GA = gradient_accumulation_steps`` and
``SPG = steps_per_generation``, one optimizer step trains ``N = P * GA * B`` completions and one
generation batch is ``P * SPG * B`` completions (what one ``completions_*.parquet`` file holds, with
``logging_steps`` 1). Per-token weights (``_compute_loss``, then the DDP mean over processes):

| loss_type | weight | aggscope mode |
|---|---|---|
| grpo, sapo | ``1 / (N * L_i)`` | sequence_mean |
| bnpo | ``1 / (P * GA * T_k)`` per micro-batch of B rows | token_mean_legacy |
| dr_grpo | ``1 / (N * max_completion_length)`` | seq_mean_token_sum_norm |
| luspo | ``1 / N`` | seq_mean_token_sum |
| dapo, cispo, vespo | ``SPG / (GA * N_gen)``, N_gen the generation batch's tokens | token_mean when SPG == GA, else token_mean_generation |

Each process trains its contiguous slice of the generation batch (``ranks_first``); ``num_iterations``
trains the same buffered, already-shuffled split again (``passes``), so a token's weight is the sum
over the iterations.

The number of processes is not part of a GRPOConfig: a saved ``to_json_string()`` shows it through
``generation_batch_size = B * P * SPG``; otherwise give ``--set num_processes=N`` (as
``accelerate launch --num_processes``) or ``--dp-size``.
"""

from __future__ import annotations

from aggscope.presets.setup import ConfigReader, Draft, TrainerSetup

RELEASE = "trl 1.16.0"
DETECT = ("per_device_train_batch_size", "num_generations", "loss_type", "steps_per_generation", "max_completion_length")
LOSS_TYPES = {
    "grpo": "sequence_mean",
    "sapo": "sequence_mean",
    "bnpo": "token_mean_legacy",
    "dr_grpo": "seq_mean_token_sum_norm",
    "luspo": "seq_mean_token_sum",
    "dapo": "token_mean",
    "cispo": "token_mean",
    "vespo": "token_mean",
}
_CLIP = "PPO clipping: changes a token's loss away from ratio 1, not the weight of its loss"
KNOWN = {
    "epsilon": _CLIP,
    "epsilon_high": _CLIP,
    "delta": "two-sided clipping bound: changes a token's loss, not its weight",
    "beta": "KL term: added to each token's loss, aggregated with the same weights",
    "importance_sampling_level": "token or sequence ratios: changes each token's loss, not its weight",
    "scale_rewards": "advantage scaling: the completions files hold the advantages",
    "top_entropy_quantile": "entropy mask: multiplies per-token losses by 0 or 1 after the weights (not modelled)",
    "vllm_importance_sampling_correction": "vLLM importance ratio: multiplies per-token losses (not modelled)",
    "off_policy_mask_threshold": "off-policy mask: multiplies per-token losses by 0 or 1 (not modelled)",
    "mask_truncated_completions": "zeroes the mask of truncated completions: the completions files do not say which were "
    "truncated, so their tokens count here (not modelled)",
    "shuffle_dataset": "dataset order: which prompts a step holds, not how they are weighted",
    "seed": "dataset shuffling seed",
    "log_completions": "writes the completions files the trl reader reads",
    "logging_steps": "with more than 1, the completions files skip steps",
}


def derive(reader: ConfigReader) -> TrainerSetup:
    reader.known.update(KNOWN)
    draft = Draft(reader, RELEASE)
    per_device = reader.integer("per_device_train_batch_size", 8)
    accumulation = reader.integer("gradient_accumulation_steps", 1)
    generations = reader.integer("num_generations", 8, minimum=2)
    processes, process_keys, how_many = _processes(reader, draft, per_device)
    spg = _steps_per_generation(reader, per_device, processes, accumulation)
    generation_rows = per_device * processes * spg
    if generation_rows % generations:
        raise reader.error(
            "num_generations",
            f"({generations}) does not divide the generation batch of {generation_rows} completions (per_device_train_batch_size "
            f"{per_device} x {processes} processes x steps_per_generation {spg}); TRL refuses it",
        )
    keys = [*process_keys, "gradient_accumulation_steps", "per_device_train_batch_size"]
    draft.set(
        "step_rows",
        generation_rows,
        [*process_keys, "per_device_train_batch_size", "steps_per_generation"],
        f"{processes} processes x {reader.term('per_device_train_batch_size')} x steps_per_generation {spg} (one generation batch)",
    )
    draft.set(
        "mini_batch_size",
        processes * accumulation * per_device,
        keys,
        f"{processes} processes x {reader.term('gradient_accumulation_steps')} x {reader.term('per_device_train_batch_size')}",
    )
    draft.set("dp_size", processes, process_keys, how_many)
    draft.set(
        "composition",
        "ranks_first",
        [],
        "each process trains its own slice of the generation batch (the files gather them process by process), in "
        "optimizer steps of gradient_accumulation_steps micro-batches",
    )
    if spg >= accumulation and spg % accumulation == 0:
        draft.set(
            "updates",
            spg // accumulation,
            ["steps_per_generation", "gradient_accumulation_steps"],
            f"steps_per_generation {spg} / {reader.term('gradient_accumulation_steps')} (per generation batch)",
        )
    draft.set("micro_batch_size", per_device, ["per_device_train_batch_size"])
    _loss(reader, draft, spg, accumulation)
    return draft.finish()


def _loss(reader: ConfigReader, draft: Draft, spg: int, accumulation: int) -> None:
    """The mode, horizon and passes of ``loss_type``, and what steps_per_generation does to them."""
    loss_type = reader.choice("loss_type", "dapo", tuple(LOSS_TYPES))
    mode = LOSS_TYPES[loss_type]
    cap = reader.integer("max_completion_length", 512)
    draft.set("response_cap", cap, ["max_completion_length"])
    draft.set("max_seq_len", cap, ["max_completion_length"])
    _order(reader, draft, mode)
    if spg < accumulation:
        draft.refuse(
            f"trl config: steps_per_generation {spg} < gradient_accumulation_steps {accumulation}: an optimizer step trains "
            f"{accumulation // spg if accumulation % spg == 0 else 'several'} generation batches and the completions files "
            "hold only the last one, so a file is part of a step: aggscope cannot weigh it as TRL did; give --mini-batch-size "
            "to weigh each file on its own",
            "mini_batch_size",
        )
    elif spg > accumulation and not reader.logged:
        draft.notes.append(
            f"steps_per_generation {spg} > gradient_accumulation_steps {accumulation}: one generation batch is trained over "
            "several optimizer steps and consecutive completions files repeat it (with logging_steps 1): count each "
            "generation batch once"
        )
        draft.not_exact.append(
            "TRL shuffles a generation batch (global torch RNG) before cutting it into optimizer steps: which rows share a "
            "step is not in the files, so the mini-batch split and its findings are estimates"
        )
    if spg > accumulation and mode == "token_mean" and reader.logged:
        draft.not_exact.append(
            f"loss_type {loss_type} with steps_per_generation {spg} > gradient_accumulation_steps {accumulation}: TRL divides "
            "by the loss tokens of the whole generation batch, which the mixin's log splits into optimizer steps: each "
            "step is weighed by its own tokens (token_mean), an estimate"
        )
    elif spg > accumulation and mode == "token_mean":
        # num_items_in_batch counts the whole generation batch, rescaled by GA / SPG
        mode = "token_mean_generation"
        draft.set(
            "mode",
            mode,
            ["loss_type", "steps_per_generation", "gradient_accumulation_steps"],
            f"loss_type {loss_type}: each token weighs steps_per_generation {spg} / ({reader.term('gradient_accumulation_steps')} "
            "x the generation batch's loss tokens), so an optimizer step's weights sum to about 1, not 1",
        )
    else:
        draft.set("mode", mode, ["loss_type"])
    draft.set("advantage", None, [], "the completions files hold the advantages")
    iterations = reader.integer("num_iterations", 1)
    if iterations > 1 and reader.logged:
        draft.notes.append(
            f"num_iterations {iterations}: the mixin logs every iteration as the optimizer steps it is, so each logged step "
            "is one pass (passes 1)"
        )
    elif iterations > 1:
        # TRL keeps the shuffled, split generation batch for all its iterations: the same split each pass
        draft.set(
            "passes",
            iterations,
            ["num_iterations"],
            f"{reader.term('num_iterations')}: the same micro-batches are trained again; a token's weight is the sum over the iterations",
        )


def _processes(reader: ConfigReader, draft: Draft, per_device: int) -> tuple[int, list[str], str]:
    """The number of processes, the keys it comes from and how."""
    if reader.has("num_processes"):
        processes = reader.integer("num_processes")
        return processes, ["num_processes"], reader.term("num_processes")
    generation = reader.integer("generation_batch_size", None, nullable=True)
    spg = reader.integer("steps_per_generation", None, nullable=True)
    if generation is not None and spg is not None:
        # a saved to_json_string(): GRPOConfig filled both in from the world size it ran with
        if generation % (per_device * spg):
            raise reader.error(
                "generation_batch_size",
                f"({generation}) is not per_device_train_batch_size {per_device} x steps_per_generation {spg} x a number of processes",
            )
        processes = generation // (per_device * spg)
        keys = ["generation_batch_size", "per_device_train_batch_size", "steps_per_generation"]
        return (
            processes,
            keys,
            f"{processes} processes = {reader.term('generation_batch_size')} / ({per_device} x steps_per_generation {spg})",
        )
    draft.notes.append(
        "the number of processes is not in a GRPOConfig: 1 is assumed; give --set num_processes=N (accelerate launch "
        "--num_processes) for a multi-GPU run"
    )
    return 1, [], "1 process (assumed: not in a GRPOConfig)"


def _steps_per_generation(reader: ConfigReader, per_device: int, processes: int, accumulation: int) -> int:
    spg = reader.integer("steps_per_generation", None, nullable=True)
    generation = reader.integer("generation_batch_size", None, nullable=True)
    if spg is not None and generation is not None:
        if generation != per_device * processes * spg:
            raise reader.error(
                "generation_batch_size",
                f"({generation}) is not per_device_train_batch_size x processes x steps_per_generation "
                f"({per_device} x {processes} x {spg}); TRL accepts one of generation_batch_size and steps_per_generation",
            )
        return spg
    if generation is not None:
        if generation % (per_device * processes):
            raise reader.error(
                "generation_batch_size",
                f"({generation}) must be a multiple of per_device_train_batch_size x processes ({per_device * processes}); TRL refuses it",
            )
        return generation // (per_device * processes)
    return spg if spg is not None else accumulation


def _order(reader: ConfigReader, draft: Draft, mode: str) -> None:
    if reader.logged:  # the mixin logs each micro-batch as TRL feeds it to the loss, after its shuffle
        draft.set("order", "logged", [], "the mixin logged each micro-batch in the order TRL trained it (after its shuffle)")
    elif mode == "token_mean_legacy":
        draft.set(
            "order",
            "shuffle",
            [],
            "TRL shuffles the generation batch with its global RNG before cutting micro-batches: aggscope's seeded shuffle is one draw",
        )
        draft.not_exact.append(
            "loss_type bnpo normalises each micro-batch by its own tokens, and TRL's micro-batches come from a shuffle with "
            "its global RNG that the files do not record: the token_mean_legacy weights are one possible draw (--seed), not the run's"
        )
