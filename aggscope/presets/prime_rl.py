"""prime-rl (its ``rl.toml``), read from prime-rl's main branch (snapshot 559b447, 2026-08-21); not
checked against a released wheel.

- One training step is one optimizer step: the trainer runs every micro-batch of the step's batch
  and then ``optimizer.step()`` once (``src/prime_rl/trainer/rl/train.py``).
- Samples are packed into micro-batches of one row of at most ``seq_len`` tokens
  (``src/prime_rl/trainer/batch.py`` ``prepare_batch``, ``packed_samples_into_micro_bs``: first fit),
  ``position_ids`` restarting at each sample. The loss of a packed row is the sum over its samples
  of their masked per-token losses (``loss.py`` ``compute_loss``, split by ``sequence_lengths``),
  divided by ``rl_scale``, the step's loss tokens summed over all ranks and counted before the
  micro-batch loop (``train.py``); FSDP's divide by the rank count is undone. So the weight is
  token_mean over the whole step: neither the packing (``seq_len``) nor the ranks change a weight
  (tests/presets/test_presets_packing.py checks it on random packings).
- A step holds ``orchestrator.batch_size`` samples (``token_batch_size`` instead counts tokens).
"""

from __future__ import annotations

from aggscope.presets.setup import ConfigReader, Draft, TrainerSetup

RELEASE = "prime-rl main (559b447)"
DETECT = ("orchestrator.", "deployment.")
KNOWN = {
    "orchestrator.group_size": "samples per example: groups, not weights",
    "seq_len": "packing length of a micro-batch (trainer/batch.py prepare_batch): the token mean is over the whole step "
    "(train.py rl_scale), so packing changes no weight",
    "orchestrator.seq_len": "packing length of a micro-batch: changes no weight",
    "deployment.num_train_gpus": "trainer ranks: the token mean is over all ranks, so they change no weight",
}


def derive(reader: ConfigReader) -> TrainerSetup:
    reader.known.update(KNOWN)
    draft = Draft(reader, RELEASE)
    samples = reader.integer("orchestrator.batch_size", None, nullable=True)
    tokens = reader.integer("orchestrator.token_batch_size", None, nullable=True)
    if samples is not None and tokens is not None:
        raise reader.error(
            "orchestrator.token_batch_size", "and orchestrator.batch_size are both set; prime-rl accepts one of them"
        )
    if samples is not None:
        draft.set("step_rows", samples, ["orchestrator.batch_size"])
    draft.set("mini_batch_size", None, [], "one optimizer step per training step")
    draft.set("updates", 1, [], "prime-rl steps the optimizer once per training step")
    draft.set("mode", "token_mean", [], "prime-rl divides by the step's loss tokens over all ranks")
    if reader.has("orchestrator.train.sampling.max_completion_tokens"):
        cap = reader.integer("orchestrator.train.sampling.max_completion_tokens")
        draft.set("response_cap", cap, ["orchestrator.train.sampling.max_completion_tokens"])
        draft.set(
            "max_seq_len",
            cap,
            ["orchestrator.train.sampling.max_completion_tokens"],
            f"{reader.term('orchestrator.train.sampling.max_completion_tokens')} (horizon of the Dr. GRPO comparison)",
        )
    draft.set("advantage", None, [], "the token exports hold the advantages")
    draft.notes.append(
        "prime-rl's per-token rl_weights scale each token's loss and a weight of 0 drops the token from the denominator; "
        "aggscope takes them in with --use-dump-weights, else reads the export's loss_mask as it is"
    )
    return draft.finish()
