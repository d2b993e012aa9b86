"""Readers for what RL trainers already write; ``aggscope.io.open`` is the one entry point.

One module per format, each a ``aggscope.io.reader.Rollouts`` built with ``Reader.open(path,
options)`` (as is ``aggscope.io.parquet.ParquetRollouts``). ``--format`` picks the reader; without it the format
is detected from the file names and the first line or schema, and an ambiguous input gets a
one-line error asking for ``--format``.

| format     | what it reads                                                        |
|------------|----------------------------------------------------------------------|
| parquet    | the canonical Parquet (``aggscope.io.parquet``), also what ``convert`` and ``log_batch`` write |
| trl        | TRL ``completions/completions_{step:05d}.parquet``                   |
| verl       | verl ``rollout_data_dir/{global_step}.jsonl``                        |
| nemo-rl    | NeMo-RL ``train_data_step{N}.jsonl``                                 |
| prime-rl   | prime-rl ``token_exports/step_{N}/rank_{R}.jsonl``                   |
| atropos    | Atropos ScoredDataGroup ``.jsonl`` (one group per line)              |
| slime      | slime ``--save-debug-rollout-data`` ``{rollout_id}.pt``              |
| skyrl      | SkyRL ``dumped_data/global_step_{N}_training_input.pkl``             |
"""

from __future__ import annotations

READERS = {  # format -> (module, class) of its reader, each built with Reader.open(path, options)
    "parquet": ("aggscope.io.parquet", "ParquetRollouts"),
    "trl": ("aggscope.io.readers.trl", "TrlRollouts"),
    "verl": ("aggscope.io.readers.verl", "VerlRollouts"),
    "nemo-rl": ("aggscope.io.readers.nemo_rl", "NemoRlRollouts"),
    "prime-rl": ("aggscope.io.readers.prime_rl", "PrimeRlRollouts"),
    "atropos": ("aggscope.io.readers.atropos", "AtroposRollouts"),
    "slime": ("aggscope.io.readers.slime", "SlimeRollouts"),
    "skyrl": ("aggscope.io.readers.skyrl", "SkyrlRollouts"),
}
FORMATS = tuple(READERS)
FORMAT_ALIASES = {
    "nemo_rl": "nemo-rl",
    "nemorl": "nemo-rl",
    "prime_rl": "prime-rl",
    "primerl": "prime-rl",
    "canonical": "parquet",
}
DUMP_SUFFIXES = (".parquet", ".jsonl", ".pt", ".pkl", ".pickle")
