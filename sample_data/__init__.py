"""The bundled sample rollouts (package data; see aggscope.sample)."""
