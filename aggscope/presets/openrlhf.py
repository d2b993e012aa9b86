"""OpenRLHF 0.11.2 (its command line, ``openrlhf/cli/train_ppo_ray.py``, saved as a text file).

Facts from the wheel (``openrlhf-0.11.2.data/purelib/openrlhf/...``):

- ``--train.batch_size`` samples per optimizer step over all ranks; ``--train.micro_batch_size``
  per GPU; the accumulation window is ``batch_size / micro_batch_size / world_size``
  (``utils/deepspeed/deepspeed.py``); a step holds ``rollout.batch_size * n_samples_per_prompt``.
- ``aggregate_loss`` (``models/loss.py``) with the window's global normalisers
  (``utils/loss_utils.py``): token mode ``1 / T_step``; sample mode (``seq-mean-token-mean``, or
  ``policy_loss_type gspo``) ``1 / (N+ * L_i)`` where N+ counts only the samples with at least one
  trained token: aggscope's ``sequence_mean_nonempty``, not verl's ``sequence_mean``.
- ``train.max_epochs`` passes (``ppo_actor.py`` ``ppo_train``): the same DataLoader iterated again,
  reshuffled every epoch by the global torch RNG (seed unknown: estimated where it matters).
- Micro-batches come from a ``DataLoader(shuffle=True, drop_last=True)`` on the global torch RNG
  (``trainer/ray/ppo_actor.py``), unless dynamic batching, ring attention or TP > 1.
- ``dp = actor.num_nodes * actor.num_gpus_per_node / ds.ring_attn_size / ds.tensor_parallel_size``.
"""

from __future__ import annotations

from aggscope.presets.setup import ConfigReader, Draft, TrainerSetup

RELEASE = "openrlhf 0.11.2"
DETECT = (
    "rollout.n_samples_per_prompt",
    "train.micro_batch_size",
    "actor.loss_agg_mode",
    "actor.policy_loss_type",
    "train.dynamic_batch_enable",
)
AGG_MODES = {"token-mean": "token_mean", "seq-mean-token-mean": "sequence_mean_nonempty"}
ESTIMATORS = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo", "flash_reinforce")
_CLIP = "PPO clipping: changes a token's loss away from ratio 1, not the weight of its loss"
KNOWN = {
    "actor.eps_clip": _CLIP,
    "actor.eps_clip_low_high": _CLIP,
    "actor.dual_clip": "dual-clip bound: changes a token's loss, not its weight",
    "algo.kl.init_coef": "KL coefficient (in the reward or the loss)",
    "algo.kl.use_loss": "KL loss term: a separate term, not in the policy-gradient weights",
    "algo.kl.estimator": "KL estimator",
    "train.seed": "seed of the global torch RNG, also consumed by model init and sampling: the micro-batch shuffle is not reproducible from it",
    "data.max_len": "prompt + response cap",
}


def derive(reader: ConfigReader) -> TrainerSetup:
    reader.known.update(KNOWN)
    draft = Draft(reader, RELEASE)
    batch = reader.integer("train.batch_size", 128)
    micro = reader.integer("train.micro_batch_size", 1)
    prompts = reader.integer("rollout.batch_size", 1024)
    n = reader.integer("rollout.n_samples_per_prompt", 1)
    dp = _dp_size(reader, draft)
    if batch % (micro * dp):
        raise reader.error(
            "train.batch_size",
            f"({batch}) is not a multiple of train.micro_batch_size {micro} x {dp} data-parallel ranks: OpenRLHF's accumulation "
            f"window would not be a whole number of micro-batches; choose a multiple of {micro * dp}",
        )
    step_rows = prompts * n
    if batch > step_rows:
        raise reader.error(
            "train.batch_size",
            f"({batch}) is larger than a step (rollout.batch_size {prompts} x n_samples_per_prompt {n} = {step_rows}); make it at most {step_rows}",
        )
    draft.set("step_rows", step_rows, ["rollout.batch_size", "rollout.n_samples_per_prompt"])
    draft.set("mini_batch_size", batch, ["train.batch_size"])
    draft.set(
        "updates",
        -(-step_rows // batch),
        ["rollout.batch_size", "rollout.n_samples_per_prompt", "train.batch_size"],
        f"{step_rows} samples / {reader.term('train.batch_size')}",
    )
    draft.set("micro_batch_size", micro, ["train.micro_batch_size"])
    dynamic = reader.boolean("train.dynamic_batch_enable", False)
    reader.integer("train.max_tokens_per_gpu", 16192)
    shuffled = not dynamic and reader.integer("ds.ring_attn_size", 1) == 1 and reader.integer("ds.tensor_parallel_size", 1) == 1
    several = step_rows > batch
    if shuffled and several:
        draft.set(
            "order",
            "shuffle",
            [],
            "OpenRLHF's DataLoader shuffles with the global torch RNG: aggscope's seeded shuffle is one draw",
        )
        draft.not_exact.append(
            f"{step_rows // batch} optimizer updates per step, their samples drawn by OpenRLHF's unseeded shuffle: which samples "
            "share a step is not recoverable, so every per-step denominator (T_step, N+) and the split findings are one "
            "possible draw (--seed), not the run's"
        )
    if dynamic:
        draft.notes.append(
            "train.dynamic_batch_enable: micro-batches are packed by token budget (train.max_tokens_per_gpu), not modelled; "
            "OpenRLHF's normalisers are global per optimizer step, so the trainer's weights do not depend on it"
        )
    if step_rows % batch:
        draft.notes.append(
            f"a step of {step_rows} samples is not a multiple of train.batch_size {batch}: the trailing partial step is normalised on its own"
        )
    _mode_and_advantage(reader, draft)
    epochs = reader.integer("train.max_epochs", 1)
    if epochs > 1:
        # ppo_actor.py ppo_train: one DataLoader over the replay buffer, iterated max_epochs times
        draft.set(
            "passes",
            epochs,
            ["train.max_epochs"],
            f"{reader.term('train.max_epochs')}: every sample is trained once per epoch; a token's weight is the sum over the epochs",
        )
        if shuffled and several:
            draft.not_exact.append(
                f"estimated: seed unknown: OpenRLHF reshuffles the step every epoch (train.max_epochs {epochs}) with the global "
                "torch RNG, so each epoch's optimizer steps hold other samples; aggscope sums one draw over the epochs"
            )
    if micro > 1 and shuffled:
        draft.notes.append(
            "OpenRLHF's DataLoader drops a rank's last samples that do not fill a micro-batch (drop_last): they are counted here"
        )
    return draft.finish()


def _mode_and_advantage(reader: ConfigReader, draft: Draft) -> None:
    loss = reader.choice("actor.policy_loss_type", "ppo", ("ppo", "gspo"))
    agg = reader.choice("actor.loss_agg_mode", "token-mean", tuple(AGG_MODES))
    if loss == "gspo":
        draft.set(
            "mode",
            "sequence_mean_nonempty",
            ["actor.policy_loss_type"],
            "policy_loss_type gspo (always sample mode: seq-mean-token-mean)",
        )
    else:
        draft.set(
            "mode",
            AGG_MODES[agg],
            ["actor.loss_agg_mode"],
            f"{reader.term('actor.loss_agg_mode')}" + (" (N+: only samples with a trained token)" if agg != "token-mean" else ""),
        )
    cap = reader.integer("rollout.max_new_tokens", None, nullable=True)
    if cap is not None:
        draft.set("response_cap", cap, ["rollout.max_new_tokens"])
        draft.set(
            "max_seq_len",
            cap,
            ["rollout.max_new_tokens"],
            f"{reader.term('rollout.max_new_tokens')} (horizon of the Dr. GRPO comparison)",
        )
    estimator = reader.choice("algo.advantage.estimator", "gae", ESTIMATORS)
    reader.boolean("algo.advantage.no_std_norm", False)
    draft.set(
        "advantage",
        None,
        ["algo.advantage.estimator"],
        f"{reader.term('algo.advantage.estimator')} (advantages are read from the input)",
    )
    if estimator in ("gae", "reinforce", "reinforce_baseline"):
        draft.notes.append(
            f"algo.advantage.estimator {estimator}: OpenRLHF whitens these advantages over all tokens; the input's advantages are used as they are"
        )


def _dp_size(reader: ConfigReader, draft: Draft) -> int:
    keys = ["actor.num_nodes", "actor.num_gpus_per_node"]
    world = reader.integer(keys[0], 1) * reader.integer(keys[1], 8)
    split = ["ds.ring_attn_size", "ds.tensor_parallel_size"]
    divisor = reader.integer(split[0], 1) * reader.integer(split[1], 1)
    if world % divisor:
        raise reader.error(split[0], f"x ds.tensor_parallel_size ({divisor}) does not divide the {world} actor GPUs")
    terms = " x ".join(reader.term(k) for k in keys)
    draft.set("dp_size", world // divisor, keys + split, f"{terms} / {' / '.join(reader.term(k) for k in split)}")
    return world // divisor
