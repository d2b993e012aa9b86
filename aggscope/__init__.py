"""aggscope: see where the gradient goes under every loss aggregation mode."""

__version__ = "0.1.0"
