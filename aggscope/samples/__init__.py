"""The bundled samples: a deterministic GRPO sample (``generate``) and one with injected faults (``faulty``)."""
