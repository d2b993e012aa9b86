"""The library on trainer tensors: padded input, device placement, no hidden copies."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

import aggscope
from aggscope.core.batch import StepBatch, factorize_uids
from aggscope.core.segments import _segment_sum_numpy, _segment_sum_torch


def test_public_names_are_importable() -> None:
    for name in aggscope.__all__:
        assert getattr(aggscope, name) is not None
    with pytest.raises(AttributeError):
        aggscope.no_such_name  # noqa: B018


def test_import_aggscope_is_light() -> None:
    code = "import sys, aggscope; print(sorted(m for m in ('torch', 'pyarrow', 'pandas', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stderr


def test_padded_trainer_tensors_round_trip_to_b_by_l() -> None:
    # Right-padded [2, 4]: row 0 has 3 loss tokens, row 1 has 2; token_mean gives 1/5 each.
    advantages = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    batch = aggscope.StepBatch.from_padded(advantages, mask, uids=torch.tensor([5, 5]))
    weights = aggscope.compute_weights(batch, "token_mean")
    per_token = weights.token_weights().view(2, 4)
    assert torch.equal(per_token, torch.tensor([[0.2, 0.2, 0.2, 0.0], [0.2, 0.2, 0.0, 0.0]]))
    assert weights.row_weight.device == advantages.device
    assert batch.advantages.data_ptr() == advantages.data_ptr()  # a view, not a copy


def test_scalar_advantage_per_row_is_broadcast() -> None:
    batch = aggscope.StepBatch.from_padded(torch.tensor([2.0, -1.0]), torch.tensor([[1, 0], [1, 1]]))
    assert batch.advantages.tolist() == [2.0, 2.0, -1.0, -1.0]


def test_bad_tensor_shapes_raise_one_line_errors() -> None:
    with pytest.raises(aggscope.AggscopeError, match=r"do not match the loss mask"):
        aggscope.StepBatch.from_padded(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(aggscope.AggscopeError, match=r"loss mask holds 2"):
        aggscope.StepBatch.from_padded(torch.zeros(1, 2), torch.tensor([[1, 2]]))
    with pytest.raises(aggscope.AggscopeError, match=r"3 uids for 2 sequences"):
        aggscope.StepBatch.from_padded(torch.zeros(2, 2), torch.ones(2, 2), uids=["a", "b", "c"])


def test_tensor_uids_are_numbered_by_first_appearance() -> None:
    codes, labels = factorize_uids(torch.tensor([9, 3, 9, 7, 3]), 5, torch.device("cpu"))
    assert codes.tolist() == [0, 1, 0, 2, 1]
    assert labels == ("9", "3", "7")
    codes, labels = factorize_uids(["b", "a", "b"], 3, torch.device("cpu"))
    assert codes.tolist() == [0, 1, 0] and labels == ("b", "a")


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(0, 5), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_device_segment_sum_equals_the_cpu_one(lengths: list[int], seed: int) -> None:
    # The torch path (used for GPU tensors) and the numpy path agree; both against a plain loop.
    values = np.random.default_rng(seed).normal(size=sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    loop = [float(values[offsets[i] : offsets[i + 1]].sum()) for i in range(len(lengths))]
    via_numpy = _segment_sum_numpy(values, offsets, torch.float64)
    via_torch = _segment_sum_torch(torch.from_numpy(values), torch.from_numpy(offsets), torch.float64)
    np.testing.assert_allclose(via_numpy, loop, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(via_torch.numpy(), loop, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_results_stay_on_the_gpu() -> None:
    advantages = torch.randn(4, 8, device="cuda")
    batch = StepBatch.from_padded(advantages, torch.ones(4, 8, device="cuda"), uids=torch.tensor([0, 0, 1, 1], device="cuda"))
    weights = aggscope.compute_weights(batch, "prompt_mean", aggscope.Layout(micro_batch_size=1))
    assert weights.row_weight.is_cuda and weights.token_weights().is_cuda and weights.grad_weights().is_cuda
