"""The trainer-side API: what runs inside a training job.

``batch_log`` (``log_batch``: write the batch a trainer trains on, in the background) and
``guards`` (``assert_prompts_intact``: fail fast on a split that cuts a prompt).
"""
