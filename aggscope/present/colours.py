"""The one mode -> colour map of aggscope, shared by the figures and the reports (no matplotlib here)."""

from __future__ import annotations

from aggscope.core.modes import MODES

# One colour per mode, everywhere (Okabe-Ito, readable by colour-blind readers). A mode added
# later without an entry here takes the next colour of FALLBACK_COLOURS by registry position.
MODE_COLOURS: dict[str, str] = {
    "token_mean": "#0072B2",
    "token_mean_legacy": "#56B4E9",
    "token_sum": "#CC79A7",
    "sequence_mean": "#D55E00",
    "seq_mean_token_sum": "#E69F00",
    "seq_mean_token_sum_norm": "#009E73",
    "prompt_mean": "#6A3D9A",
    "sequence_mean_nonempty": "#8C564B",
    "seq_mean_token_sum_norm_padded": "#17BECF",
    "token_mean_generation": "#BCBD22",
}
FALLBACK_COLOURS = ("#8C564B", "#17BECF", "#BCBD22", "#7F7F7F")


def mode_colour(name: str) -> str:
    """The colour of a mode (canonical name) in every figure and report."""
    if name in MODE_COLOURS:
        return MODE_COLOURS[name]
    position = list(MODES).index(name) if name in MODES else len(MODES)
    return FALLBACK_COLOURS[position % len(FALLBACK_COLOURS)]
