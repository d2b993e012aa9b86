"""The SkyRL and OpenRLHF presets against those trainers' own loss code, loaded from their wheels.

SkyRL 0.4.0: the step's mini-batch boundaries from its own ``compute_prompt_mini_batch_boundaries``,
the prompt boundaries from ``compute_prompt_boundaries``, and each mini-batch's advantages scaled by
its own ``apply_loss_reduction_to_advantages_minibatch`` as ``_normalize_advantages`` calls it (the
prompt boundaries that start inside the mini-batch, rebased). Its policy loss is the masked sum of
the scaled advantages times the per-token loss, times ``dp`` before the DP gradient mean, so with
advantages of 1 the scaled advantage of a token is its weight.

OpenRLHF 0.11.2: one optimizer step's normalisers from its own ``_optimizer_step_loss_norm`` over
the masks of all the step's micro-batches on every rank (what its all-reduce sums), each micro-batch
reduced by its own ``aggregate_loss``, scaled by DeepSpeed's ``1 / gas`` and averaged over ranks.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import torch
from framework_wheels import load_openrlhf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from trainer_losses import skyrl_weights

from aggscope.core.batch import StepBatch
from aggscope.core.weights import compute_weights
from aggscope.presets import load_setup
from aggscope.presets.apply import apply_setup


@functools.cache
def openrlhf() -> types.SimpleNamespace:
    return load_openrlhf()


def padded(lengths: list[int], masks: list[list[int]]) -> torch.Tensor:
    width = max(lengths)
    return torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.float64)


def aggscope_weights(trainer: str, sets: list[str], lengths: list[int], masks: list[list[int]], uids: list[str]) -> torch.Tensor:
    applied = apply_setup(load_setup([], trainer=trainer, sets=sets), {})
    flat = torch.tensor([bit for m in masks for bit in m], dtype=torch.float64)
    batch = StepBatch.from_flat(torch.ones_like(flat), flat, np.cumsum([0, *lengths]), uids=uids)
    weights = compute_weights(batch, applied.setup.mode, applied.layout).token_weights(torch.float64)
    return padded(lengths, [w.tolist() for w in torch.split(weights, lengths)])


@st.composite
def skyrl_steps(draw: st.DrawFn) -> dict:
    dp = draw(st.sampled_from([1, 2, 4]))
    n = draw(st.sampled_from([2, 4]))
    mini = draw(st.sampled_from([1, 2]))
    prompts = mini * draw(st.integers(1, 3))
    per_gpu = mini * n // dp
    if per_gpu < 1 or mini * n % dp:
        dp = 1
        per_gpu = mini * n
    micro = draw(st.sampled_from([d for d in range(1, per_gpu + 1) if per_gpu % d == 0]))
    reduction = draw(
        st.sampled_from(["token_mean", "token_mean_legacy", "sequence_mean", "seq_mean_token_sum_norm", "prompt_mean"])
    )
    lengths = draw(st.lists(st.integers(1, 8), min_size=prompts * n, max_size=prompts * n))
    masks = [[draw(st.integers(0, 1)) if draw(st.booleans()) else 1 for _ in range(length)] for length in lengths]
    uids = [f"p{row // n}" for row in range(prompts * n)]
    return {
        "epochs": draw(st.sampled_from([1, 2])),
        "dp": dp,
        "n": n,
        "mini": mini,
        "prompts": prompts,
        "micro": micro,
        "reduction": reduction,
        "lengths": lengths,
        "masks": masks,
        "uids": uids,
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=skyrl_steps())
def test_skyrl_config_weights_equal_skyrl_own_loss_reduction(step: dict) -> None:
    mask = padded(step["lengths"], step["masks"])
    uids = step["uids"]
    expected = skyrl_weights(mask, uids, step, max_seq_len=64)
    sets = [
        f"trainer.train_batch_size={step['prompts']}",
        f"trainer.policy_mini_batch_size={step['mini']}",
        f"generator.n_samples_per_prompt={step['n']}",
        f"trainer.micro_train_batch_size_per_gpu={step['micro']}",
        f"trainer.placement.policy_num_gpus_per_node={step['dp']}",
        f"trainer.algorithm.loss_reduction={step['reduction']}",
        "trainer.algorithm.max_seq_len=64",
        f"trainer.update_epochs_per_batch={step['epochs']}",
    ]
    got = aggscope_weights("skyrl", sets, step["lengths"], step["masks"], uids)
    torch.testing.assert_close(got, expected * mask, rtol=1e-6, atol=1e-12, msg=str(step))


@st.composite
def openrlhf_steps(draw: st.DrawFn) -> dict:
    dp = draw(st.sampled_from([1, 2, 4]))
    micro = draw(st.sampled_from([1, 2]))
    gas = draw(st.sampled_from([1, 2, 3]))
    rows = dp * micro * gas  # one optimizer step per step: OpenRLHF's shuffle then changes no weight
    lengths = draw(st.lists(st.integers(1, 8), min_size=rows, max_size=rows))
    # some samples with no trained token: OpenRLHF leaves them out of N+
    masks = [
        [0] * length if draw(st.integers(0, 4)) == 0 else [draw(st.integers(0, 1)) | (t == 0) for t in range(length)]
        for length in lengths
    ]
    agg = draw(st.sampled_from(["token-mean", "seq-mean-token-mean"]))
    assume(any(any(m) for m in masks))  # OpenRLHF divides 0 by 0 on a step with no trained token
    return {"dp": dp, "micro": micro, "gas": gas, "rows": rows, "agg": agg, "lengths": lengths, "masks": masks}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=openrlhf_steps())
def test_openrlhf_config_weights_equal_openrlhf_own_loss(step: dict) -> None:
    code = openrlhf()
    mask = padded(step["lengths"], step["masks"])
    losses = torch.zeros_like(mask, requires_grad=True)
    dp, micro, gas = step["dp"], step["micro"], step["gas"]
    shard = step["rows"] // dp
    micro_batches = [[list(range(r * shard + i * micro, r * shard + (i + 1) * micro)) for i in range(gas)] for r in range(dp)]
    info = code.loss_utils._optimizer_step_loss_norm([mask[rows] for rank in micro_batches for rows in rank], None, 1, gas)
    total = torch.zeros((), dtype=torch.float64)
    for rank in micro_batches:
        for rows in rank:
            loss = code.loss.aggregate_loss(
                losses[rows],
                mask[rows],
                token_level_loss=step["agg"] == "token-mean",
                dp_size=dp,  # what the all-reduce over dp ranks gives
                batch_num_tokens=info["batch_num_tokens"].double(),
                global_batch_size=info["global_batch_size"].double(),
            )
            total = total + loss / gas / dp  # DeepSpeed's 1/gas, then the DP gradient mean
    total.backward()
    sets = [
        f"train.batch_size={step['rows']}",
        f"train.micro_batch_size={micro}",
        f"rollout.batch_size={step['rows']}",
        "rollout.n_samples_per_prompt=1",
        f"actor.num_gpus_per_node={dp}",
        f"actor.loss_agg_mode={step['agg']}",
    ]
    got = aggscope_weights("openrlhf", sets, step["lengths"], step["masks"], [f"p{i}" for i in range(step["rows"])])
    torch.testing.assert_close(got, losses.grad * mask, rtol=1e-6, atol=1e-12, msg=str(step))


def test_openrlhf_and_verl_seq_mean_token_mean_differ_on_an_empty_response() -> None:
    # 3 samples of 2, 0 and 4 trained tokens, one optimizer step: OpenRLHF divides by N+ = 2.
    code = openrlhf()
    mask = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    losses = torch.zeros_like(mask, requires_grad=True)
    info = code.loss_utils._optimizer_step_loss_norm([mask], None, 1, 1)
    code.loss.aggregate_loss(
        losses, mask, token_level_loss=False, dp_size=1, global_batch_size=info["global_batch_size"]
    ).backward()
    assert losses.grad[0, 0].item() == 1 / 4 and losses.grad[2, 0].item() == 1 / 8  # 1/(2*2), 1/(2*4)
    got = aggscope_weights(
        "openrlhf",
        [
            "train.batch_size=3",
            "train.micro_batch_size=1",
            "rollout.batch_size=3",
            "actor.num_gpus_per_node=1",
            "actor.loss_agg_mode=seq-mean-token-mean",
        ],
        [4, 4, 4],
        mask.int().tolist(),
        ["a", "b", "c"],
    )
    assert (got[0, 0].item(), got[2, 0].item()) == (1 / 4, 1 / 8)
