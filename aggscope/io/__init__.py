"""Input and output: files <-> step batches.

``open`` is the one entry point (a path -> the reader of its format); ``paths`` finds the files
behind a path; ``parquet`` reads the canonical Parquet (plans the steps, reads their row groups),
``decode`` turns its Arrow tables into batches and ``fastread`` holds the threads that make that
faster (with a switch to the plain read); ``readers/`` reads what trainers already write;
``canonical`` writes the canonical Parquet, ``export`` per-token weights, ``writing`` writes any
file atomically; ``columns`` maps column names to roles. Imports only ``aggscope.core`` and
``aggscope.errors``.
"""
