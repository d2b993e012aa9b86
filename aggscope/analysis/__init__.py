"""Analyses: per-step work over a run, merged in step order.

``runner`` (where the per-step work runs: this process or Ray), ``weights`` (weights over a run),
``checks`` (findings), ``breakdown`` (where the gradient goes, for the figures and reports),
``specs`` (what ``compare`` compares), ``describe`` (what ``inspect`` shows).
Imports ``aggscope.core`` and ``aggscope.io``, never the presentation or the CLI.
"""
