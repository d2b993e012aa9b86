"""Input and output: files <-> step batches.

``open`` is the one entry point (a path -> the reader of its format); ``parquet`` reads the
canonical Parquet, ``readers/`` what trainers already write; ``canonical`` writes the canonical
Parquet, ``export`` per-token weights, ``writing`` writes any file atomically; ``columns`` maps
column names to roles. Imports only ``aggscope.core`` and ``aggscope.errors``.
"""
