"""A real TRL 1.16 ``GRPOTrainer`` run on CPU, for ``tests/trainer/test_trl_run.py``.

Run as ``$AGGSCOPE_TRL_PYTHON trl_grpo_run.py < spec.json`` with aggscope on ``PYTHONPATH`` (or
under ``torchrun --nproc-per-node 2`` for two processes on gloo). The spec gives ``out`` (a folder),
``loss_types``, ``B``, ``GA``, ``SPG``, ``G`` (num_generations), ``steps``,
``max_completion_length``, ``conversational`` (the loss types whose prompts are chat messages) and
``variants`` (``{name: settings}``, more runs with some of these changed, into ``{out}/{name}``). For each loss type it builds, with no hub access, a WordLevel tokenizer
over a few words (EOS doubles as padding) and a random Llama (hidden size 64, 2 layers), trains
``steps`` optimizer steps with ``log_completions=True`` and aggscope's mixin logging into
``{out}/{loss_type}/batches``, and captures the gradient of the loss with respect to the per-token
log-probabilities the loss is computed from (a hook on that tensor: at ratio 1 it is ``-w * A``,
DDP's mean over processes not yet applied), one ``[B, C]`` array per micro-batch, in training
order, into ``{out}/{loss_type}/captured_rank{R}.json``; then, on the main process, what aggscope
reads from the completions files with ``--tokenizer`` (transformers is in this Python, not in
aggscope's test environment) into ``{out}/{loss_type}/dump_read.json``. The reward function returns None for
completions starting with ``w5``, so TRL's NaN rewards appear.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from aggscope.trainer.trl import AggscopeGRPOMixin

WORDS = [f"w{i}" for i in range(10)]
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"


def build_tokenizer(folder: str) -> PreTrainedTokenizerFast:
    vocab = {"<eos>": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(vocab_size: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def reward_w3(completions: list, **_: object) -> list[float | None]:
    """Count of ``w3`` in the completion; None (unscorable) when it starts with ``w5``."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # chat: the assistant message
    return [None if text.startswith("w5") else float(text.split().count("w3")) for text in texts]


class CapturingTrainer(AggscopeGRPOMixin, GRPOTrainer):
    """Captures ``d loss / d per_token_logps`` on the tensor ``_compute_loss`` uses."""

    captured: list[dict]

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        logps = result[0]  # [B, C]; then entropies (and the auxiliary loss)
        if logps.requires_grad:
            step = self.state.global_step + 1
            logps.register_hook(lambda grad: self.captured.append({"step": step, "grad": grad.detach().double().tolist()}))
        return result


def run(spec: dict, name: str, loss_type: str) -> None:
    out = os.path.join(spec["out"], name)
    os.makedirs(out, exist_ok=True)
    tokenizer = build_tokenizer(os.path.join(out, "tokenizer"))
    texts = [" ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(3)) for i in range(32)]
    prompts: list = texts
    if loss_type in spec.get("conversational", []):  # chat messages: TRL logs prompt and completion as messages
        tokenizer.chat_template = CHAT_TEMPLATE
        prompts = [[{"role": "user", "content": text}] for text in texts]
    args = GRPOConfig(
        output_dir=out,
        loss_type=loss_type,
        per_device_train_batch_size=spec["B"],
        gradient_accumulation_steps=spec["GA"],
        steps_per_generation=spec["SPG"],
        num_generations=spec["G"],
        max_completion_length=spec["max_completion_length"],
        max_steps=spec["steps"],
        beta=0.0,
        learning_rate=1e-3,
        log_completions=True,
        num_completions_to_print=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=7,
        disable_tqdm=True,
        temperature=1.0,
        dataloader_num_workers=0,
    )
    trainer = CapturingTrainer(
        model=build_model(len(tokenizer)),
        reward_funcs=reward_w3,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    trainer.captured = []
    trainer.aggscope_folder = os.path.join(out, "batches")
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(out, f"captured_rank{rank}.json"), "w") as handle:
        json.dump(trainer.captured, handle)
    if trainer.accelerator.is_main_process:
        read_dump(out, spec["max_completion_length"])


def read_dump(out: str, max_completion_length: int) -> None:
    """What aggscope reads from TRL's completions files with ``--tokenizer`` (transformers is here)."""
    import numpy as np

    from aggscope.io.open import open_rollouts

    rollouts = open_rollouts(
        os.path.join(out, "completions"),
        tokenizer=os.path.join(out, "tokenizer"),
        max_completion_length=max_completion_length,
    )
    steps = []
    for batch in rollouts.iter_steps():
        steps.append(
            {
                "step": batch.step,
                "lengths": np.diff(batch.offsets).tolist(),
                "advantages": np.asarray(batch.advantages)[batch.offsets[:-1]].tolist(),
                "rewards": [None if np.isnan(r) else r for r in np.asarray(batch.rewards).tolist()],
            }
        )
    document = {"steps": steps, "notes": rollouts.notes, "unrecoverable": [u.as_dict() for u in rollouts.unrecoverable]}
    with open(os.path.join(out, "dump_read.json"), "w") as handle:
        json.dump(document, handle)


def main() -> None:
    spec = json.loads(os.environ["AGGSCOPE_TRL_SPEC"]) if "AGGSCOPE_TRL_SPEC" in os.environ else json.load(sys.stdin)
    for loss_type in spec["loss_types"]:
        run(spec, loss_type, loss_type)
    for name, variant in spec.get("variants", {}).items():  # the same run with other settings
        run({**spec, **variant}, name, variant["loss_type"])


if __name__ == "__main__":
    main()
