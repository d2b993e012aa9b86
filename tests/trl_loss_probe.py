"""Per-token weights of TRL's own ``GRPOTrainer._compute_loss``, run in a Python that has TRL.

Run by ``test_presets_trl.py`` as ``$AGGSCOPE_TRL_PYTHON trl_loss_probe.py < specs.json`` (a list of
specs, so TRL is imported once). A spec gives one generation batch (``lengths``, ``masks``, process count ``P``, ``B``, ``GA``, ``SPG``,
``loss_type``, ``max_completion_length``, optional ``iterations``). The probe builds a ``GRPOTrainer`` without a model
(``__new__``; only the attributes ``_compute_loss`` reads are set), stands in for the model's
per-token log-probabilities with leaf tensors, and runs what TRL runs: process ``p`` holds the
``p``-th slice of the batch, cut into ``SPG`` chunks of ``B`` rows (unshuffled here, so the split is
known), micro-step ``j`` trains chunk ``j``, ``GA`` micro-steps per optimizer step, every loss
divided by ``P`` for DDP's gradient mean. At ratio 1 with advantages of 1 the gradient on a
token's log-probability is minus its weight. Prints one ``[[...], ...]`` (per row, per token) per spec.
"""

from __future__ import annotations

import json
import sys
import types
from collections import defaultdict

import torch
from trl import GRPOTrainer


def probe(spec: dict) -> list[list[float]]:
    lengths, masks = spec["lengths"], spec["masks"]
    processes, per_device, accumulation, spg = spec["P"], spec["B"], spec["GA"], spec["SPG"]
    width = max(lengths)
    logps = [torch.zeros(width, dtype=torch.float64, requires_grad=True) for _ in lengths]
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.float64)
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.__dict__.update(
        loss_type=spec["loss_type"],
        beta=0.0,
        epsilon_low=0.2,
        epsilon_high=0.28 if spec["loss_type"] != "cispo" else 5.0,
        importance_sampling_level="token",
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        max_completion_length=spec["max_completion_length"],
        current_gradient_accumulation_steps=accumulation,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(
            num_processes=processes,
            sync_gradients=True,
            gather=lambda x: x,
            gather_for_metrics=lambda x: x,
            reduce=lambda x, reduction="sum": x,
        ),
        args=types.SimpleNamespace(
            delta=None,
            steps_per_generation=spg,
            sapo_temperature_pos=1.0,
            sapo_temperature_neg=1.05,
            vespo_k_pos=2.0,
            vespo_lambda_pos=3.0,
            vespo_k_neg=3.0,
            vespo_lambda_neg=2.0,
            use_bias_correction_kl=False,
        ),
    )
    num_items_in_batch = mask.sum()  # the generation batch's loss tokens over all processes
    local = per_device * spg
    # num_iterations: TRL trains its buffered split of the generation batch again, unchanged
    for micro_step in [step for _ in range(spec.get("iterations", 1)) for step in range(spg)]:
        total = torch.zeros((), dtype=torch.float64)
        for process in range(processes):
            rows = list(range(process * local + micro_step * per_device, process * local + (micro_step + 1) * per_device))
            batch_logps = torch.stack([logps[row] for row in rows])
            trainer._get_per_token_logps_and_entropies = lambda *a, lp=batch_logps, **k: (lp, torch.zeros_like(lp), None)
            inputs = {
                "prompt_ids": torch.zeros(len(rows), 1, dtype=torch.long),
                "prompt_mask": torch.ones(len(rows), 1, dtype=torch.long),
                "completion_ids": torch.zeros(len(rows), width, dtype=torch.long),
                "completion_mask": mask[rows],
                "advantages": torch.ones(len(rows), dtype=torch.float64),
                "num_items_in_batch": num_items_in_batch,
            }
            total = total + trainer._compute_loss(None, inputs) / processes
        total.backward()
    return [(-lp.grad * mask[row]).tolist()[: lengths[row]] for row, lp in enumerate(logps)]


if __name__ == "__main__":
    print(json.dumps([probe(spec) for spec in json.load(sys.stdin)]))
