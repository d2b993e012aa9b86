"""The trainer-side API: what runs inside a training job.

``batch_log`` (``log_batch``: write the batch a trainer trains on, in the background),
``guards`` (``assert_prompts_intact``: fail fast on a split that cuts a prompt) and ``trl``
(``AggscopeGRPOMixin``: TRL's ``GRPOTrainer`` logging each micro-batch as trained; TRL imported
only by ``grpo_trainer_class``).
"""
