"""The core: one step in memory -> numbers.

``batch`` (the one representation of a step: flat token arrays, per-sequence offsets, group ids),
``layout`` (how a trainer splits a step), ``modes`` (the aggregation modes, one registry),
``weights`` (every token's weight under a mode and layout, and its summaries), ``segments``
(reductions over ragged rows), ``advantages`` (outcome advantages rebuilt from rewards).
No files, no threads, no pyarrow: everything above reads and writes through ``aggscope.io``.
"""
