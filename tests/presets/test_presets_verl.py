"""The verl preset against verl 0.9.1's own code, loaded from its wheel (see framework_wheels).

verl's side of each comparison runs what its actor runs for one step: the step cut into ``dp``
contiguous rank shards (TransferQueue's ``BatchMeta.chunk``: the shards are contiguous and equal
when the step is a multiple of ``dp``, as verl pads it to be), each rank's mini-batches from verl's
own ``make_iterator`` (the iterator of ``TrainingWorker.train_mini_batch``, seeded
``data_loader_seed + rank``), contiguous micro-batches of ``ppo_micro_batch_size_per_gpu`` rows
(``prepare_micro_batches``) or, with ``use_dynamic_bsz``, verl's own ``rearrange_micro_batches``
run on all ranks at once (their all-reduces really reduce over the ranks), each padded to its
longest row, and verl's own ``agg_loss`` with what
the engine passes it: ``dp_size``, the global mini-batch's token count, ``ppo_mini_batch_size * n``
and ``loss_scale_factor``. The losses of the ranks are averaged (FSDP's gradient mean) and every
mini-batch of every epoch (``ppo_epochs``) is back-propagated; the gradient on each token's loss is
its weight, summed over the epochs (``trainer_losses.verl_weights``). aggscope's side
is only ``--config`` (here as ``--set`` overrides) -> layout and mode -> weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from framework_wheels import IndexBatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainer_losses import verl, verl_weights

from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.split import verl_shuffle_orders
from aggscope.core.weights import compute_weights
from aggscope.presets import load_setup
from aggscope.presets.apply import apply_setup

A = "actor_rollout_ref.actor."


def aggscope_weights(lengths: list[int], masks: list[list[int]], config: dict) -> list[torch.Tensor]:
    sets = [
        f"data.train_batch_size={config['prompts']}",
        f"actor_rollout_ref.rollout.n={config['n']}",
        f"{A}ppo_mini_batch_size={config['mini']}",
        f"{A}ppo_micro_batch_size_per_gpu={config['micro']}",
        f"{A}loss_agg_mode={config['agg']}",
        f"{A}loss_scale_factor={'null' if config['scale'] is None else config['scale']}",
        f"trainer.n_gpus_per_node={config['dp']}",
        "algorithm.adv_estimator=grpo",
        f"{A}ppo_epochs={config['epochs']}",
        f"{A}shuffle={str(config.get('shuffle', False)).lower()}",
        f"{A}data_loader_seed={config.get('seed', 42)}",
    ]
    flags = {}
    if config.get("budget"):
        sets[3] = f"{A}ppo_max_token_len_per_gpu={config['budget']}"
        sets.append(f"{A}use_dynamic_bsz=true")
        flags["prompt_tokens"] = config["prompt"]  # the batch holds responses; the test's prompts are this long
    applied = apply_setup(load_setup([], trainer="verl", sets=sets), flags)
    flat_mask = torch.tensor([bit for m in masks for bit in m], dtype=torch.float64)
    batch = StepBatch.from_flat(torch.ones_like(flat_mask), flat_mask, np.cumsum([0, *lengths]))
    weights = compute_weights(batch, applied.setup.mode, applied.layout).token_weights(torch.float64)
    return list(torch.split(weights, lengths))


@st.composite
def steps(draw: st.DrawFn) -> tuple[list[int], list[list[int]], dict]:
    dp = draw(st.sampled_from([1, 2, 4]))
    n = draw(st.sampled_from([1, 2, 4]))
    per_gpu_prompts = draw(st.integers(1, 2))  # prompts of a mini-batch on one rank, times dp
    mini = per_gpu_prompts * dp
    prompts = mini * draw(st.integers(1, 3))
    per_gpu_rows = mini * n // dp
    micro = draw(st.sampled_from([d for d in range(1, per_gpu_rows + 1) if per_gpu_rows % d == 0]))
    agg = draw(
        st.sampled_from(["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
    )
    scale = draw(st.none() | st.integers(1, 40))
    lengths = draw(st.lists(st.integers(1, 9), min_size=prompts * n, max_size=prompts * n))
    masks = [[draw(st.integers(0, 1)) if draw(st.booleans()) else 1 for _ in range(length)] for length in lengths]
    prompt = draw(st.integers(0, 6))
    # use_dynamic_bsz: a budget from the longest sequence (verl's floor) to a few of them
    budget = draw(st.none() | st.integers(max(lengths) + prompt, 4 * (9 + prompt)))
    epochs = draw(st.sampled_from([1, 1, 2, 3]))  # ppo_epochs
    shuffle = draw(st.booleans())  # actor.shuffle, with data_loader_seed
    seed = draw(st.sampled_from([0, 42, 2**40 + 7]))
    config = {"dp": dp, "n": n, "mini": mini, "prompts": prompts, "micro": micro, "agg": agg, "scale": scale}
    return lengths, masks, config | {"budget": budget, "prompt": prompt, "epochs": epochs, "shuffle": shuffle, "seed": seed}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=steps())
def test_config_weights_equal_verl_own_loss(step: tuple[list[int], list[list[int]], dict]) -> None:
    lengths, masks, config = step
    expected = verl_weights(lengths, masks, config)
    got = aggscope_weights(lengths, masks, config)
    for row, (want, have) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(have, want, rtol=1e-6, atol=1e-12, msg=f"row {row} under {config}")


def test_verl_iterator_gives_each_rank_contiguous_chunks() -> None:
    # the fact ranks_first rests on: without shuffle, verl's iterator walks a rank's shard in order
    chunks = [idx.tolist() for idx in verl().tensordict_utils.make_iterator(IndexBatch(8), 2, epochs=1, seed=42)]
    assert chunks == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_verl_shuffle_orders_are_verls_iterator_draws() -> None:
    # actor.shuffle: the orders aggscope draws for a rank are the chunks verl's make_iterator yields,
    # epoch after epoch from one generator (so the epochs differ), and another seed draws another order
    want = [
        idx.tolist()
        for idx in verl().tensordict_utils.make_iterator(
            IndexBatch(12), 3, epochs=3, seed=43, dataloader_kwargs={"shuffle": True}
        )
    ]
    orders = verl_shuffle_orders(12, 43, 3)
    assert [orders[e][c : c + 3].tolist() for e in range(3) for c in range(0, 12, 3)] == want
    assert orders[0].tolist() != orders[1].tolist() and sorted(orders[2].tolist()) == list(range(12))
    assert verl_shuffle_orders(12, 44, 1)[0].tolist() != orders[0].tolist()


def test_verl_shuffle_changes_token_mean_weights() -> None:
    # 2 mini-batches of 4 rows on one rank, rows of 1..8 loss tokens: unshuffled, rows 0-3 weigh
    # 1 / (1+2+3+4) = 1/10 and rows 4-7 1 / 26; shuffled, the mini-batches hold other rows, so the
    # weights differ, and each equals verl's own
    lengths = [1, 2, 3, 4, 5, 6, 7, 8]
    masks = [[1] * length for length in lengths]
    config = {"dp": 1, "n": 1, "mini": 4, "prompts": 8, "micro": 2, "agg": "token-mean", "scale": None, "epochs": 1}
    plain = aggscope_weights(lengths, masks, config)
    assert [float(w[0]) for w in plain] == pytest.approx([1 / 10] * 4 + [1 / 26] * 4, rel=1e-12)
    shuffled = aggscope_weights(lengths, masks, config | {"shuffle": True})
    assert [float(w[0]) for w in shuffled] != [float(w[0]) for w in plain]
    expected = verl_weights(lengths, masks, config | {"shuffle": True})
    torch.testing.assert_close(torch.cat(shuffled), torch.cat(expected), rtol=1e-12, atol=0)


def test_canonical_composition_is_not_verls() -> None:
    # 2 ranks, 2 mini-batches: verl's mini-batch 0 is rows 0-1 and 4-5, not rows 0-3.
    lengths = [1, 2, 3, 4, 5, 6, 7, 8]
    masks = [[1] * length for length in lengths]
    config = {"dp": 2, "n": 1, "mini": 4, "prompts": 8, "micro": 1, "agg": "token-mean", "scale": None, "epochs": 1}
    expected = torch.cat(verl_weights(lengths, masks, config))
    flat = torch.ones(sum(lengths), dtype=torch.float64)
    batch = StepBatch.from_flat(flat, flat, np.cumsum([0, *lengths]))
    canonical = compute_weights(batch, "token_mean", Layout(mini_batch_size=4, dp_size=2)).token_weights(torch.float64)
    assert float(((canonical - expected).abs() / expected).max()) > 0.3
    assert torch.allclose(torch.cat(aggscope_weights(lengths, masks, config)), expected, rtol=1e-12)


@pytest.mark.parametrize("agg", ["seq-mean-token-sum-norm"])
def test_null_loss_scale_factor_horizon_is_each_micro_batch_width(agg: str) -> None:
    # Rows of 3, 9 | 2, 4 tokens in micro-batches of 2: horizons 9 and 4, not one constant.
    lengths, masks = [3, 9, 2, 4], [[1] * 3, [1] * 9, [1] * 2, [1] * 4]
    config = {"dp": 1, "n": 1, "mini": 4, "prompts": 4, "micro": 2, "agg": agg, "scale": None, "epochs": 1}
    expected = verl_weights(lengths, masks, config)
    assert [float(w[0]) for w in expected] == pytest.approx([1 / 36, 1 / 36, 1 / 16, 1 / 16])
    got = aggscope_weights(lengths, masks, config)
    assert [float(w[0]) for w in got] == pytest.approx([1 / 36, 1 / 36, 1 / 16, 1 / 16], rel=1e-12)
