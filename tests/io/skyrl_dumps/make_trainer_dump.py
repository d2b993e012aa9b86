"""Write ``skyrl-0.4.0-trainer-step3.pkl``: a SkyRL 0.4.0 training-input dump as its trainer writes it.

Run from the repository root: ``python tests/io/skyrl_dumps/make_trainer_dump.py`` (needs the
skyrl 0.4.0 wheel where ``tests/framework_wheels.py`` finds it; nothing of SkyRL is installed).

Every step is SkyRL's own code from the wheel, in the order of ``RayPPOTrainer``
(``skyrl/train/trainer.py``): ``convert_to_training_input`` builds the ``TrainingInputBatch``,
records ``policy_mini_batch_boundaries`` with ``compute_prompt_mini_batch_boundaries``
(``policy_mini_batch_size`` 2 prompts of ``train_batch_size`` 4, ``n_samples_per_prompt`` 2) and
``policy_prompt_boundaries`` with ``compute_prompt_boundaries``, then pads the batch to a multiple of
3 data-parallel ranks with ``pad_training_input_batch`` (one row); the trainer's loop removes
``rewards`` and ``metadata["uids"]``, and ``dump_data`` calls ``TensorBatch.save`` (``pickle.dump``).

The batch is multi-turn: ``response_mask`` covers a tool response that ``loss_mask`` leaves out, and
the GRPO advantages span the ``response_mask`` as SkyRL's do (so masked tokens carry advantages).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))  # tests/, for framework_wheels

from framework_wheels import load_skyrl, skyrl_training_batch  # noqa: E402

UIDS = ["q0", "q0", "q1", "q1", "q2", "q2", "q3", "q3"]
# response tokens (left-padded to 6): 1 = trained, 2 = a tool response token (in response_mask, not in loss_mask)
LAYOUT = [
    [0, 0, 1, 1, 1, 1],
    [0, 0, 0, 0, 1, 1],
    [1, 1, 2, 2, 1, 1],
    [0, 0, 0, 1, 1, 1],
    [0, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 1],
    [1, 2, 2, 1, 1, 1],
    [0, 0, 1, 1, 1, 1],
]
SCORES = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.0, 1.0]


def main() -> None:
    preprocess = load_skyrl().preprocess
    response_mask = torch.tensor([[int(v > 0) for v in row] for row in LAYOUT])
    loss_mask = torch.tensor([[int(v == 1) for v in row] for row in LAYOUT])
    scores = torch.tensor(SCORES)
    grouped = scores.view(4, 2)
    advantage = ((grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-6)).view(-1)
    advantages = advantage[:, None] * response_mask  # [8, 6], SkyRL's GRPO broadcast over response_mask
    rewards = torch.zeros(8, 6)
    rewards[:, -1] = scores
    with skyrl_training_batch() as training_batch:
        batch = training_batch.TrainingInputBatch(
            {
                "sequences": torch.arange(8 * 10).view(8, 10) % 97,
                "attention_mask": torch.ones(8, 10, dtype=torch.long),
                "response_mask": response_mask,
                "loss_mask": loss_mask,
                "rewards": rewards,
                "advantages": advantages,
                "returns": advantages.clone(),
                "action_log_probs": torch.zeros(8, 6, dtype=torch.bfloat16),
                "rollout_logprobs": None,
            }
        )
        batch.metadata = {"uids": list(UIDS)}
        batch.metadata["policy_mini_batch_boundaries"] = preprocess.compute_prompt_mini_batch_boundaries(UIDS, 2, 4, False, 2)
        batch.metadata["policy_prompt_boundaries"] = preprocess.compute_prompt_boundaries(UIDS)
        batch.metadata["response_length"] = 6
        batch.metadata["avg_response_length"] = float(response_mask.sum()) / 8
        batch = training_batch.pad_training_input_batch(batch, 1)  # ceil(8 / 3) * 3 - 8 rows for 3 ranks
        batch.pop("rewards")
        batch.metadata.pop("uids")
        batch.metadata.pop("is_last_step", None)
        batch.save(HERE / "skyrl-0.4.0-trainer-step3.pkl")


if __name__ == "__main__":
    main()
