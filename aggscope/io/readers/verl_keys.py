"""verl v1's sample keys, ``{prompt uid}_{session}_{index}``, and the advantages its trainer gives them.

verl 0.9.1's v1 trainer (its default) puts every agent-loop output into the TransferQueue under the
key ``{uid}_{session_id}_{index}`` (``trainer/ppo/v1/agent_loop_tq.py``): ``uid`` is the prompt's,
``session_id`` numbers the ``rollout.n`` samples of that prompt and ``index`` the outputs of one
agent loop (several in multi-output agent loops). ``_log_rollout_data`` writes these keys as the
``uid`` field of ``rollout_data_dir``, sorted by ``(uid, session, index)``.

- Groups: the prompt uid (the key's part before the last two ``_``), as verl's
  ``compute_advantage`` groups on the batch's ``uid`` field.
- Advantages (``trainer/ppo/v1/utils.py``, ``compute_advantage_for_multi_trajectories``): for GRPO
  (also Dr. GRPO, its ``norm_adv_by_std_in_grpo=False``) only each session's final output (its
  highest ``index``) joins the group statistics, and the session's other outputs get that output's
  advantage; other estimators (RLOO) use every row.
- Padding: ``balance_batch`` fills the batch to a multiple of the data-parallel and mini-batch sizes
  with rows keyed ``pad{uuid4 hex}_{i}_0`` (``trainer/ppo/padding_utils.py``): one EOS response
  token with ``response_mask`` 0 and score 0. They hold no loss token, so they add nothing to verl's
  token counts, and verl's sequence means divide by the configured ``ppo_mini_batch_size * n``, not by
  the rows present: the reader drops them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from aggscope.io.readers.base import rebuild_advantages

V1_KEY = re.compile(r"(?P<uid>.+)_(?P<session>\d+)_(?P<index>\d+)")
PADDING_UID = re.compile(r"pad[0-9a-f]{32}")
FINAL_OUTPUT_ESTIMATORS = ("grpo", "dr_grpo")  # verl's GRPO estimator, with or without the std


@dataclass(frozen=True)
class V1Keys:
    """The parts of ``[n]`` v1 keys.

    Attributes:
        prompt_uids: ``[n]`` the prompt uid of each row (object strings).
        sessions: ``[n]`` ``{prompt uid}_{session}`` of each row (object strings).
        output_index: ``[n]`` int64 index of each row's output within its agent loop.
        padding: ``[n]`` bool, True on ``balance_batch``'s padding rows.
    """

    prompt_uids: np.ndarray
    sessions: np.ndarray
    output_index: np.ndarray
    padding: np.ndarray

    def without_padding(self) -> V1Keys:
        keep = ~self.padding
        return V1Keys(self.prompt_uids[keep], self.sessions[keep], self.output_index[keep], self.padding[keep])


def parse_v1_keys(keys: list[str]) -> V1Keys | None:
    """The parts of every key when all are v1 keys, else None (uids of another form are kept whole)."""
    matches = [V1_KEY.fullmatch(key) for key in keys]
    if not matches or any(m is None for m in matches):
        return None
    parts = [(m["uid"], m["session"], int(m["index"])) for m in matches if m is not None]
    prompt_uids = np.asarray([uid for uid, _, _ in parts], dtype=object)
    return V1Keys(
        prompt_uids=prompt_uids,
        sessions=np.asarray([f"{uid}_{session}" for uid, session, _ in parts], dtype=object),
        output_index=np.asarray([index for _, _, index in parts], dtype=np.int64),
        padding=np.asarray([PADDING_UID.fullmatch(uid) is not None for uid in prompt_uids.tolist()], dtype=bool),
    )


def v1_advantages(rewards: np.ndarray, keys: V1Keys, estimator: str, where: str) -> np.ndarray:
    """``[n]`` row advantages as verl's v1 trainer computes them from one reward per row.

    Args:
        rewards: ``[n]`` scores.
        keys: the rows' parsed keys (padding already dropped).
        estimator: ``grpo``, ``dr_grpo`` or ``rloo``.
        where: the file, for messages.
    """
    if estimator not in FINAL_OUTPUT_ESTIMATORS:
        return rebuild_advantages(rewards, keys.prompt_uids, estimator, where)
    final_row: dict[str, int] = {}
    for row, (session, index) in enumerate(zip(keys.sessions.tolist(), keys.output_index.tolist(), strict=True)):
        # the first row holding a session's highest index is its final output, as verl's loop keeps it
        if session not in final_row or keys.output_index[final_row[session]] < index:
            final_row[session] = row
    final_rows = np.asarray(list(final_row.values()), dtype=np.int64)  # [n_sessions]
    final_advantages = rebuild_advantages(rewards[final_rows], keys.prompt_uids[final_rows], estimator, where)
    position = {session: k for k, session in enumerate(final_row)}
    return final_advantages[np.asarray([position[s] for s in keys.sessions.tolist()], dtype=np.int64)]
