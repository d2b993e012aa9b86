"""Reports: every applicable mode at one layout (``report``), or candidates against a base (``compare``).

A report is one JSON-ready document built from a ``Breakdown`` (so every summary is the engine's:
``analyse_step`` -> ``compute_weights`` -> ``summarize``), the figures of ``aggscope.present.figures``,
and renderings of both: ``report.html`` (one self-contained file, figures embedded as data URIs,
nothing fetched from anywhere), ``report.md`` (figures beside it) and ``report.json`` (every
number shown). The document starts with a few plain sentences stating the biggest changes.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from aggscope import __version__
from aggscope.analysis.breakdown import Breakdown, Buckets, run_breakdown
from aggscope.analysis.specs import Spec, describe_layout
from aggscope.core.batch import StepBatch
from aggscope.core.layout import Layout
from aggscope.core.modes import Mode
from aggscope.io.writing import atomic_directory
from aggscope.present.figures import earlier_output, figure_bytes, make_figures, mode_colour

RATIO_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
TOP_PROMPTS = 5
# A change smaller than this (in points of share, or percent for ESS) is not worth a sentence.
SENTENCE_THRESHOLD = 0.5
MAX_SENTENCES = 4
# The kinds of change a summary sentence can state, most important first.
SENTENCE_KINDS = ("lost_gradient", "check_errors", "length", "sign", "difficulty", "ess")
HTML_STEP_ROWS = 50
HTML_FINDING_ROWS = 60
QUARTILE_NAMES = ("shortest quarter", "second-shortest quarter", "second-longest quarter", "longest quarter")
DIFFICULTY_TEXT = {
    "hard": "hard prompts (group mean reward in the lowest third of the reward range)",
    "medium": "medium prompts (group mean reward in the middle third)",
    "easy": "easy prompts (group mean reward in the top third)",
    "unscored": "prompts with no finite reward",
}


@dataclass(frozen=True)
class Report:
    """A finished report: its document (``report.json``) and its figures.

    Attributes:
        kind: ``report`` (every mode at one layout) or ``compare`` (candidates against a base).
        document: every number shown, JSON-ready (non-finite values are None).
        figures: figure name -> matplotlib figure.
    """

    kind: str
    document: dict[str, Any]
    figures: dict[str, Figure]

    @property
    def summary(self) -> list[str]:
        """The opening sentences."""
        return list(self.document["summary"])

    def write(self, out_dir: str | os.PathLike[str]) -> ReportFiles:
        """Write ``report.html``, ``report.md``, ``report.json`` and one PNG per figure into ``out_dir``.

        The set appears whole or not at all, replacing the folder (``atomic_directory``): a kill, a
        full disk or another writer never leaves files of two reports, or half of one, in it.
        """
        images = {name: figure_bytes(figure, "png") for name, figure in self.figures.items()}
        document = self.document
        with atomic_directory(out_dir, earlier_output) as temporary:
            figure_paths = {name: _write(temporary / self.document["figures"][name], data) for name, data in images.items()}
            json_path = _write(temporary / "report.json", (json.dumps(document, indent=2) + "\n").encode())
            md_path = _write(temporary / "report.md", render_markdown(document).encode())
            html_path = _write(temporary / "report.html", render_html(document, images).encode())
        directory = Path(out_dir)
        return ReportFiles(
            html=directory / html_path.name,
            markdown=directory / md_path.name,
            json=directory / json_path.name,
            figures={name: directory / path.name for name, path in figure_paths.items()},
        )


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    json: Path
    figures: dict[str, Path]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- entry points --------------------------------------------------------------------------------
def compare(batches: Iterable[StepBatch], specs: Sequence[Spec], *, source: str = "input", notes: Sequence[str] = ()) -> Report:
    """Compare ``specs[1:]`` against ``specs[0]`` on every step (``aggscope compare``).

    ``notes`` are the reader's remarks on the input (``rollouts.notes``), shown in the report.
    """
    return build_report(run_breakdown(batches, specs, source=source), "compare", notes)


def full_report(
    batches: Iterable[StepBatch], modes: Sequence[Mode], layout: Layout, *, source: str = "input", notes: Sequence[str] = ()
) -> Report:
    """Every given mode at one layout, against the first (``aggscope report``)."""
    specs = [Spec(mode, layout) for mode in modes]
    return build_report(run_breakdown(batches, specs, source=source), "report", notes)


def build_report(breakdown: Breakdown, kind: str, notes: Sequence[str] = ()) -> Report:
    """The document and figures of a breakdown; the first SPEC is the base of every comparison."""
    figures = make_figures(breakdown)
    document = build_document(breakdown, kind, notes)
    document["figures"] = {name: f"{name}.png" for name in figures}
    return Report(kind, document, figures)


# ---- the document --------------------------------------------------------------------------------
def build_document(breakdown: Breakdown, kind: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Every number of the report, JSON-ready. The first SPEC is the base."""
    base = breakdown.specs[0]
    quartiles = breakdown.length_buckets(4)
    deciles = breakdown.length_buckets(10)
    difficulty = breakdown.difficulty_buckets()
    zero_grad = breakdown.zero_grad_causes()
    results = {}
    for spec in breakdown.specs:
        result = breakdown.results[spec.label]
        total = result.total
        checks = breakdown.checks[spec.layout]
        results[spec.label] = {
            "total": total.to_dict(),
            "steps": [{"step": step, **summary.to_dict()} for step, summary in zip(breakdown.steps, result.steps, strict=True)],
            "length_quartiles": _bucket_shares(quartiles, spec.label),
            "length_deciles": _bucket_shares(deciles, spec.label),
            "difficulty": None if difficulty is None else _bucket_shares(difficulty, spec.label),
            "advantage_sign": _sign_shares(total.grad_pos_sum, total.grad_neg_sum),
            "prompt_concentration": _concentration(breakdown, spec.label),
            "zero_grad": zero_grad[spec.label],
            "checks": _spec_checks(checks),
        }
    changes = [_change(breakdown, base, candidate, results) for candidate in breakdown.specs[1:]]
    document: dict[str, Any] = {
        "kind": kind,
        "aggscope_version": __version__,
        "input": {
            "source": breakdown.source,
            "steps": breakdown.steps,
            "sequences": breakdown.n_rows,
            "prompts": breakdown.n_prompts if breakdown.has_groups else None,
            "loss_tokens": breakdown.loss_tokens,
            "tokens": sum(size.tokens for size in breakdown.step_sizes),
            "lengths_estimated": breakdown.lengths_estimated,
            "notes": list(notes),
        },
        "base": base.label,
        "specs": [
            {
                "label": spec.label,
                "mode": spec.mode.name,
                "formula": spec.mode.formula,
                "overrides": dict(spec.overrides),
                "layout": spec.layout.to_dict(),
                "layout_text": describe_layout(spec.layout),
                "colour": mode_colour(spec.mode.name),
            }
            for spec in breakdown.specs
        ],
        "buckets": {
            "length_quartiles": _bucket_definition(quartiles),
            "length_deciles": _bucket_definition(deciles),
            "difficulty": None if difficulty is None else _bucket_definition(difficulty),
        },
        "results": results,
        "changes": changes,
    }
    document["summary"] = summary_sentences(document)
    _cap_findings(document)
    return _json_ready(document)


REPORT_FINDINGS_PER_CODE = 1000


def _cap_findings(document: dict[str, Any]) -> None:
    """Keep the first ``REPORT_FINDINGS_PER_CODE`` findings of each code under each SPEC (after the
    sentences counted them all): an input with a finding per prompt would make a report.json of
    gigabytes. The counts stay whole; ``findings_omitted`` (only where some are) says how many are out."""
    for result in document["results"].values():
        checks = result["checks"]
        seen: Counter[str] = Counter()
        kept = []
        for finding in checks["findings"]:
            seen[finding["code"]] += 1
            if seen[finding["code"]] <= REPORT_FINDINGS_PER_CODE:
                kept.append(finding)
        omitted = {code: n - REPORT_FINDINGS_PER_CODE for code, n in seen.items() if n > REPORT_FINDINGS_PER_CODE}
        if omitted:
            checks["findings"] = kept
            checks["findings_omitted"] = omitted


def _bucket_definition(buckets: Buckets) -> dict[str, Any]:
    return {
        "names": buckets.names,
        "sequences": buckets.rows.tolist(),
        "loss_tokens": buckets.loss_tokens.tolist(),
        "min_loss_tokens": buckets.min_tokens.tolist(),
        "max_loss_tokens": buckets.max_tokens.tolist(),
        "loss_token_share": buckets.token_share().tolist(),
    }


def _bucket_shares(buckets: Buckets, label: str) -> dict[str, Any]:
    return {
        "grad_mass": buckets.grad_mass[label].tolist(),
        "grad_mass_share": buckets.grad_share(label).tolist(),
        "weight_mass": buckets.weight_mass[label].tolist(),
    }


def _sign_shares(positive: float, negative: float) -> dict[str, float | None]:
    total = positive - negative  # negative is <= 0
    if not (total > 0 and math.isfinite(total)):
        return {"positive_share": None, "negative_share": None}
    return {"positive_share": positive / total, "negative_share": -negative / total}


def _concentration(breakdown: Breakdown, label: str) -> dict[str, Any]:
    """Top shares and the Gini coefficient of gradient mass across prompts (rows without uids)."""
    mass = np.sort(breakdown.prompt_grad_mass(label).numpy())[::-1]  # [n_units] largest first
    total = float(mass.sum())
    unit = "prompts" if breakdown.has_groups else "sequences"
    if mass.size == 0 or not total > 0:
        return {
            "unit": unit,
            "units": int(mass.size),
            "top_10pct_share": None,
            "top_half_share": None,
            "gini": None,
            "zero_mass_units": None,
        }
    cumulative = np.cumsum(mass) / total
    n = mass.size

    def top(fraction: float) -> float:
        return float(cumulative[max(math.ceil(fraction * n), 1) - 1])

    ascending = mass[::-1]
    # Gini = 1 - 2 * (area under the Lorenz curve), from the ascending cumulative shares.
    lorenz = np.cumsum(ascending) / total
    gini = 1.0 - (2.0 * lorenz.sum() - 1.0) / n
    return {
        "unit": unit,
        "units": int(n),
        "top_10pct_share": top(0.1),
        "top_half_share": top(0.5),
        "gini": float(gini),
        "zero_mass_units": int((mass == 0).sum()),
    }


def _spec_checks(checks: dict[str, Any]) -> dict[str, Any]:
    """What ``check`` finds under a SPEC's layout (with the modes of the SPECs at that layout)."""
    return {
        "modes": checks["modes"],
        "counts": checks["counts"],
        "findings": checks["findings"],
        "cut_prompts": checks["cut_prompts"],
        "cut_prompt_counts": {level: len(entries) for level, entries in checks["cut_prompts"].items()},
        "notes": checks["notes"],
    }


def _change(breakdown: Breakdown, base: Spec, candidate: Spec, results: dict[str, Any]) -> dict[str, Any]:
    """What moving from ``base`` to ``candidate`` changes."""
    b, c = results[base.label], results[candidate.label]

    def shift(key: str) -> dict[str, Any] | None:
        if b[key] is None or c[key] is None:
            return None
        before, after = np.array(b[key]["grad_mass_share"], dtype=float), np.array(c[key]["grad_mass_share"], dtype=float)
        return {
            "base_share": before.tolist(),
            "candidate_share": after.tolist(),
            "change_points": (100 * (after - before)).tolist(),
        }

    ess_before, ess_after = b["total"]["ess_tokens"], c["total"]["ess_tokens"]
    ess_change = (ess_after / ess_before - 1.0) if ess_before and ess_after is not None else None
    change: dict[str, Any] = {
        "base": base.label,
        "candidate": candidate.label,
        "length_quartiles": shift("length_quartiles"),
        "length_deciles": shift("length_deciles"),
        "difficulty": shift("difficulty"),
        "advantage_sign": {"base": b["advantage_sign"], "candidate": c["advantage_sign"]},
        "ess_tokens": {"base": ess_before, "candidate": ess_after, "relative_change": ess_change},
        "weight_ratio": breakdown.ratio_quantiles(base.label, candidate.label, RATIO_QUANTILES),
        "zero_grad_tokens": {
            "base": b["total"]["zero_grad_tokens"] + b["total"]["nonfinite_grad_tokens"],
            "candidate": c["total"]["zero_grad_tokens"] + c["total"]["nonfinite_grad_tokens"],
        },
    }
    change.update(_prompt_moves(breakdown, base.label, candidate.label))
    return change


def _prompt_moves(breakdown: Breakdown, base: str, candidate: str) -> dict[str, Any]:
    """The prompts whose share of their step's weight grows or shrinks the most."""
    if not breakdown.has_groups:
        return {"prompts_gaining": None, "prompts_losing": None}
    before = breakdown.prompt_weight_share(base)  # [n_prompts]
    after = breakdown.prompt_weight_share(candidate)
    delta = (after - before).numpy()
    valid = np.isfinite(delta)
    order = np.argsort(np.where(valid, delta, 0.0), kind="stable")
    losing = [int(i) for i in order[:TOP_PROMPTS] if valid[i] and delta[i] < 0]
    gaining = [int(i) for i in order[::-1][:TOP_PROMPTS] if valid[i] and delta[i] > 0]
    loss_tokens = torch.zeros(breakdown.n_prompts, dtype=torch.int64).index_add_(
        0, breakdown.unit_of_row(), breakdown.stats.loss_tokens
    )
    reward = breakdown.prompt_reward

    def row(index: int) -> dict[str, Any]:
        return {
            "step": breakdown.steps[int(breakdown.prompt_step[index])],
            "uid": breakdown.prompt_uid[index],
            "sequences": int(breakdown.prompt_rows[index]),
            "loss_tokens": int(loss_tokens[index]),
            "mean_reward": None if reward is None else float(reward[index]),
            "base_share": float(before[index]),
            "candidate_share": float(after[index]),
            "change_points": float(100 * delta[index]),
        }

    return {"prompts_gaining": [row(i) for i in gaining], "prompts_losing": [row(i) for i in losing]}


def _json_ready(value: Any) -> Any:
    """Plain JSON types; a value that is not finite becomes None."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- the opening sentences ----------------------------------------------------------------------
def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _points(change: float | None) -> str:
    return "–" if change is None else f"{change:+.1f} points".replace("-", "−")


def summary_sentences(document: dict[str, Any]) -> list[str]:
    """A few plain sentences: what the input is, what gets no gradient, the biggest changes."""
    source = document["input"]
    base = document["base"]
    base_result = document["results"][base]
    prompts = "" if source["prompts"] is None else f" to {source['prompts']:,} prompts"
    steps = len(source["steps"])
    sentences = [
        f"{source['source']}: {steps} step{'s' * (steps != 1)}, {source['sequences']:,} responses{prompts}, "
        f"{source['loss_tokens']:,} loss tokens."
    ]
    if source["lengths_estimated"]:
        sentences.append(
            "Response lengths are estimated from the text (the input has no token counts): every length and "
            "per-token number here is an estimate; give --tokenizer to count real tokens."
        )
    sentences.append(_zero_grad_sentence(document, base))
    checks = base_result["checks"]
    where = "" if document["kind"] == "report" else f" under the {base} layout"
    counted = [(severity, n) for severity, n in checks["counts"].items() if n]
    if counted:
        listed = ", ".join(f"{n} {severity}{'s' * (n != 1)}" for severity, n in counted)
        codes = Counter(f["code"] for f in checks["findings"])  # findings come worst first
        detail = ", ".join(f"{code} ×{n}" for code, n in list(codes.items())[:3])
        sentences.append(f"check finds {listed}{where}: {detail} (see Findings).")
    else:
        sentences.append(f"check finds nothing to report{where}.")
    opening = len(sentences)
    per_change = [_change_sentences(document, change) for change in document["changes"]]
    if document["kind"] == "compare":
        # Each candidate: its changes in order of importance (lost gradient, check errors, length, ...).
        per_candidate = max(2, MAX_SENTENCES // len(per_change))
        for change, found in zip(document["changes"], per_change, strict=True):
            picked = [found[kind][1] for kind in SENTENCE_KINDS if kind in found and found[kind][0] >= SENTENCE_THRESHOLD]
            if not picked:
                picked = [f"{change['candidate']} gives the same distribution of gradient as {base} on this input."]
            sentences += picked[:per_candidate]
    else:
        # Every mode against the base: for each kind of change, the mode that changes most.
        for kind in SENTENCE_KINDS:
            candidates = [found[kind] for found in per_change if kind in found and found[kind][0] >= SENTENCE_THRESHOLD]
            if candidates:
                sentences.append(max(candidates, key=lambda item: item[0])[1])
            if len(sentences) >= opening + MAX_SENTENCES:
                break
    return sentences


def _zero_grad_sentence(document: dict[str, Any], base: str) -> str:
    result = document["results"][base]
    total = result["total"]
    loss_tokens = max(document["input"]["loss_tokens"], 1)
    none = total["zero_grad_tokens"] + total["nonfinite_grad_tokens"]
    text = f"{100 * none / loss_tokens:.1f}% of loss tokens ({none:,}) get no gradient under {base}"
    causes = {cause: n for cause, n in result["zero_grad"].items() if n}
    if causes:
        cause, tokens = max(causes.items(), key=lambda item: item[1])
        text += f"; the largest cause is {cause.replace('_', ' ')} ({100 * tokens / loss_tokens:.1f}% of loss tokens)"
    return text + "."


def _change_sentences(document: dict[str, Any], change: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Sentences about one change, by kind, with their size (points of share, or percent for ESS)."""
    base, candidate = change["base"], change["candidate"]
    out: dict[str, tuple[float, str]] = {}
    quartiles = change["length_quartiles"]
    if quartiles is not None:
        delta = np.array(quartiles["change_points"], dtype=float)
        if np.isfinite(delta).all():
            loser, gainer = int(np.argmin(delta)), int(np.argmax(delta))
            bounds = document["buckets"]["length_quartiles"]

            def quarter(i: int) -> str:
                return f"the {QUARTILE_NAMES[i]} of responses ({_token_span(bounds, i)} loss tokens)"

            before, after = quartiles["base_share"], quartiles["candidate_share"]
            text = (
                f"Moving from {base} to {candidate} gives {quarter(loser)} {_pct(after[loser])} of the gradient mass "
                f"instead of {_pct(before[loser])} ({_points(delta[loser])}), and {quarter(gainer)} "
                f"{_pct(after[gainer])} instead of {_pct(before[gainer])} ({_points(delta[gainer])})."
            )
            out["length"] = (float(max(-delta[loser], delta[gainer])), text)
    ess = change["ess_tokens"]
    if ess["relative_change"] is not None:
        out["ess"] = (
            abs(100 * ess["relative_change"]),
            f"The effective number of tokens (Σw)²/Σw² goes from {ess['base']:,.0f} under {base} to "
            f"{ess['candidate']:,.0f} under {candidate} ({100 * ess['relative_change']:+.1f}%).".replace("(-", "(−"),
        )
    sign = change["advantage_sign"]
    before, after = sign["base"]["positive_share"], sign["candidate"]["positive_share"]
    if before is not None and after is not None:
        out["sign"] = (
            abs(100 * (after - before)),
            f"Under {candidate}, tokens with a positive advantage get {_pct(after)} of the gradient mass "
            f"instead of {_pct(before)} under {base} ({_points(100 * (after - before))}).",
        )
    difficulty = change["difficulty"]
    if difficulty is not None:
        delta = np.array(difficulty["change_points"], dtype=float)
        names = document["buckets"]["difficulty"]["names"]
        if np.isfinite(delta).any():
            biggest = int(np.nanargmax(np.abs(delta)))
            out["difficulty"] = (
                abs(float(delta[biggest])),
                f"Under {candidate}, {DIFFICULTY_TEXT[names[biggest]]} get "
                f"{_pct(difficulty['candidate_share'][biggest])} of the gradient mass instead of "
                f"{_pct(difficulty['base_share'][biggest])} under {base} ({_points(float(delta[biggest]))}).",
            )
    zero = change["zero_grad_tokens"]
    if zero["candidate"] != zero["base"]:
        loss_tokens = max(document["input"]["loss_tokens"], 1)
        size = abs(100 * (zero["candidate"] - zero["base"]) / loss_tokens)
        out["lost_gradient"] = (
            max(size, 100.0),  # tokens losing all gradient always make the summary
            f"{candidate} leaves {zero['candidate']:,} loss tokens with no gradient, against {zero['base']:,} under {base}.",
        )
    check = _check_sentence(document, base, candidate)
    if check is not None:
        out["check_errors"] = check
    return out


def _token_span(bounds: dict[str, Any], i: int) -> str:
    low, high = bounds["min_loss_tokens"][i], bounds["max_loss_tokens"][i]
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _check_sentence(document: dict[str, Any], base: str, candidate: str) -> tuple[float, str] | None:
    """What check finds under the candidate's layout that it does not under the base's (errors)."""
    before, after = document["results"][base]["checks"], document["results"][candidate]["checks"]
    errors_before, errors_after = before["counts"].get("error", 0), after["counts"].get("error", 0)
    if errors_after == errors_before:
        return None
    codes = sorted({f["code"] for f in after["findings"] if f["severity"] == "error"})
    text = (
        f"Under the {candidate} layout check finds {errors_after} error{'s' * (errors_after != 1)} "
        f"({', '.join(codes)}), against {errors_before} under {base}"
    )
    silent = [f for f in after["findings"] if f["code"] == "silent_zero_advantage"]
    if silent:
        tokens = sum(f["tokens"] for f in silent)
        text += (
            f": a boundary-based prompt_mean (SkyRL's) would leave {tokens:,} loss tokens of {len(silent)} cut "
            f"prompt{'s' * (len(silent) != 1)} with no gradient"
        )
    return (100.0, text + ".")


# ---- rendering -----------------------------------------------------------------------------------
FIGURE_CAPTIONS = {
    "weight_distribution": "Per-token gradient weight |w·A| of every mode, relative to that mode's average token, "
    "for positive and negative advantages. A narrow ridge means tokens are treated alike; a wide one means some "
    "tokens get many times the gradient of others.",
    "mass_vs_length": "Share of gradient mass per response-length decile. The dashed line is each decile's share "
    "of loss tokens: a mode above it favours those responses, below it neglects them.",
    "prompt_concentration": "Prompts ranked by the gradient mass they get. The further a curve bows above the "
    "diagonal, the fewer prompts carry the update.",
    "split_map": "How the trainer cuts a step into mini-batches, rank shards and micro-batches. Prompt groups "
    "cut by a boundary are coloured by the coarsest boundary that cuts them.",
    "zero_grad_causes": "Loss tokens whose gradient weight is zero or not finite, by cause.",
    "steps": "For each training step: the share of loss tokens with no gradient, the share of gradient mass on that "
    "step's longest quarter of responses, and the effective number of tokens.",
}
FIGURE_TITLES = {
    "weight_distribution": "Per-token gradient weight",
    "mass_vs_length": "Gradient mass by response length",
    "prompt_concentration": "Concentration across prompts",
    "split_map": "How a step is split",
    "zero_grad_causes": "Tokens with no gradient",
    "steps": "Per-step trends",
}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value == 0:
            return "0"
        if abs(value) >= 1e6 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _title(document: dict[str, Any]) -> str:
    if document["kind"] == "compare":
        candidates = ", ".join(change["candidate"] for change in document["changes"])
        return f"aggscope compare: {document['base']} → {candidates}"
    return "aggscope report"


@dataclass(frozen=True)
class _Table:
    """A table both renderers draw: header cells, rows of cells, and per-row label colours."""

    headers: list[str]
    rows: list[list[str]]
    colours: list[str | None]
    align_left: int = 1


def _tables(document: dict[str, Any]) -> dict[str, Any]:
    """The tables of a report, as text cells, in the order they appear."""
    specs = document["specs"]
    results = document["results"]
    colour = {spec["label"]: spec["colour"] for spec in specs}
    # Under one layout every mode shares check's findings: they get their own section instead.
    with_checks = document["kind"] == "compare"
    glance_headers = [
        "mode",
        "Σ weight",
        "Σ |w·A|",
        "ESS tokens",
        "long/short",
        "longest ¼ mass",
        "positive-A mass",
        "no gradient",
    ]
    if with_checks:
        glance_headers.append("findings (E/W/I)")
    glance_rows = []
    for spec in specs:
        result = results[spec["label"]]
        total = result["total"]
        row = [
            spec["label"],
            _fmt(total["weight_sum"]),
            _fmt(total["grad_abs_sum"]),
            _fmt(None if total["ess_tokens"] is None else round(total["ess_tokens"])),
            _fmt(total["long_short_ratio"], 3),
            _pct(result["length_quartiles"]["grad_mass_share"][3]),
            _pct(result["advantage_sign"]["positive_share"]),
            _fmt(total["zero_grad_tokens"] + total["nonfinite_grad_tokens"]),
        ]
        if with_checks:
            row.append(severity_counts(result["checks"]))
        glance_rows.append(row)
    tables: dict[str, Any] = {
        "specs": _Table(
            ["mode" if document["kind"] == "report" else "SPEC", "weight of a loss token", "layout"],
            [[s["label"], s["formula"], s["layout_text"]] for s in specs],
            [colour[s["label"]] for s in specs],
            align_left=3,
        ),
        "glance": _Table(glance_headers, glance_rows, [colour[s["label"]] for s in specs]),
    }
    tables["quartiles"] = _bucket_table(document, "length_quartiles", "length quartile")
    if document["buckets"]["difficulty"] is not None:
        tables["difficulty"] = _bucket_table(document, "difficulty", "prompt difficulty")
    tables["changes"] = [_change_tables(document, change) for change in document["changes"]]
    tables["steps"] = _steps_table(document)
    tables["findings"] = _findings_tables(document)
    tables["zero_grad"] = _zero_grad_table(document)
    return tables


def severity_counts(checks: dict[str, Any]) -> str:
    """``errors/warnings/infos`` of check's findings, e.g. ``1/4/12``."""
    return "/".join(str(checks["counts"].get(level, 0)) for level in ("error", "warning", "info"))


def _bucket_table(document: dict[str, Any], key: str, title: str) -> _Table:
    definition = document["buckets"][key]
    labels = [spec["label"] for spec in document["specs"]]
    headers = [title, "responses", "loss tokens", "share of tokens", *labels]
    rows = []
    for i, name in enumerate(definition["names"]):
        if definition["sequences"][i] == 0:
            continue
        span = ""
        if key.startswith("length"):
            span = f" ({_token_span(definition, i)} tokens)"
        rows.append(
            [
                name + span,
                _fmt(definition["sequences"][i]),
                _fmt(definition["loss_tokens"][i]),
                _pct(definition["loss_token_share"][i]),
                *(_pct(document["results"][label][key]["grad_mass_share"][i]) for label in labels),
            ]
        )
    return _Table(headers, rows, [None] * len(rows))


def _shift_lines(shift: dict[str, Any], names: Sequence[str | None]) -> list[list[str]]:
    """One table line per bucket (None: an empty bucket, left out): base share, candidate share, change."""
    return [
        [
            f"gradient mass on {name}",
            _pct(shift["base_share"][i]),
            _pct(shift["candidate_share"][i]),
            _points(shift["change_points"][i]),
        ]
        for i, name in enumerate(names)
        if name is not None
    ]


def _change_tables(document: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    base, candidate = change["base"], change["candidate"]
    lines = []
    if change["length_quartiles"] is not None:
        lines += _shift_lines(change["length_quartiles"], [f"the {name} of responses" for name in QUARTILE_NAMES])
    sign = change["advantage_sign"]
    b_pos, c_pos = sign["base"]["positive_share"], sign["candidate"]["positive_share"]
    lines.append(
        [
            "gradient mass on positive advantages",
            _pct(b_pos),
            _pct(c_pos),
            "–" if b_pos is None or c_pos is None else _points(100 * (c_pos - b_pos)),
        ]
    )
    if change["difficulty"] is not None:
        definition = document["buckets"]["difficulty"]
        names = [f"{name} prompts" if definition["sequences"][i] else None for i, name in enumerate(definition["names"])]
        lines += _shift_lines(change["difficulty"], names)
    ess = change["ess_tokens"]
    lines.append(
        [
            "effective number of tokens",
            _fmt(None if ess["base"] is None else round(ess["base"])),
            _fmt(None if ess["candidate"] is None else round(ess["candidate"])),
            "–" if ess["relative_change"] is None else f"{100 * ess['relative_change']:+.1f}%".replace("-", "−"),
        ]
    )
    zero = change["zero_grad_tokens"]
    lines.append(
        ["loss tokens with no gradient", _fmt(zero["base"]), _fmt(zero["candidate"]), _fmt(zero["candidate"] - zero["base"])]
    )
    moves = _Table(["", base, candidate, "change"], lines, [None] * len(lines))
    ratio = change["weight_ratio"]
    keys = [f"p{round(q * 100)}" for q in RATIO_QUANTILES]
    mean = ratio["mean"]
    relative = ["–" if ratio[k] is None or not mean else _fmt(ratio[k] / mean, 3) for k in keys]
    ratio_table = _Table(["", *keys], [["w_candidate / w_base ÷ its mean", *relative]], [None])
    prompts = {}
    for key in ("prompts_gaining", "prompts_losing"):
        entries = change[key]
        if entries is None:
            continue
        prompts[key] = _Table(
            ["step", "uid", "responses", "loss tokens", "mean reward", "base share", "candidate share", "change"],
            [
                [
                    str(e["step"]),
                    e["uid"],
                    _fmt(e["sequences"]),
                    _fmt(e["loss_tokens"]),
                    _fmt(e["mean_reward"], 3),
                    _pct(e["base_share"]),
                    _pct(e["candidate_share"]),
                    _points(e["change_points"]),
                ]
                for e in entries
            ],
            [None] * len(entries),
            align_left=2,
        )
    return {
        "base": base,
        "candidate": candidate,
        "moves": moves,
        "ratio": ratio_table,
        "ratio_note": f"{_pct(ratio['share_above_mean'])} of loss tokens gain weight relative to the rest and "
        f"{_pct(ratio['share_below_mean'])} lose; quantiles over loss tokens of the per-token weight ratio, divided "
        "by its token-weighted mean (1 = unchanged relative to the rest, since modes are scaled differently).",
        "prompts": prompts,
    }


def _steps_table(document: dict[str, Any]) -> _Table:
    specs = [spec["label"] for spec in document["specs"]]
    headers = ["step", *(f"{label}: ESS tokens" for label in specs), "no gradient (base)"]
    rows = []
    base = document["results"][document["base"]]
    for i, step in enumerate(document["input"]["steps"][:HTML_STEP_ROWS]):
        cells = [str(step)]
        for label in specs:
            ess = document["results"][label]["steps"][i]["ess_tokens"]
            cells.append(_fmt(None if ess is None else round(ess)))
        entry = base["steps"][i]
        cells.append(_fmt(entry["zero_grad_tokens"] + entry["nonfinite_grad_tokens"]))
        rows.append(cells)
    return _Table(headers, rows, [None] * len(rows))


def _more_findings(block: dict[str, Any]) -> str:
    if block["omitted"]:
        return (
            f"{block['more']:,} more findings: report.json holds the first {REPORT_FINDINGS_PER_CODE:,} of each code, "
            "aggscope check --json lists every one."
        )
    return f"{block['more']:,} more findings in report.json."


def _findings_tables(document: dict[str, Any]) -> list[dict[str, Any]]:
    """check's findings, once per distinct layout (the SPECs of one layout share them)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in document["specs"]:
        if spec["layout_text"] in seen:
            continue
        seen.add(spec["layout_text"])
        checks = document["results"][spec["label"]]["checks"]
        findings = checks["findings"]
        rows = [
            [
                f["severity"],
                f["code"],
                str(f["step"]),
                "–" if f["uid"] is None else str(f["uid"]),
                _fmt(f["tokens"]),
                f["message"],
            ]
            for f in findings[:HTML_FINDING_ROWS]
        ]
        out.append(
            {
                "layout": spec["layout_text"],
                "modes": ", ".join(checks["modes"]),
                "table": _Table(["severity", "code", "step", "uid", "tokens", "message"], rows, [None] * len(rows), 6),
                "more": len(findings) + sum(checks.get("findings_omitted", {}).values()) - len(rows),
                "omitted": bool(checks.get("findings_omitted")),
                "notes": checks["notes"],
            }
        )
    return out


def _zero_grad_table(document: dict[str, Any]) -> _Table:
    """Loss tokens with no gradient by check's cause (rows) and SPEC (columns)."""
    labels = [spec["label"] for spec in document["specs"]]
    loss_tokens = max(document["input"]["loss_tokens"], 1)
    causes: list[str] = []
    for label in labels:
        causes += [c for c, n in document["results"][label]["zero_grad"].items() if n and c not in causes]
    rows = []
    for cause in [*causes, "total"]:
        cells = [cause.replace("_", " ")]
        for label in labels:
            per_cause = document["results"][label]["zero_grad"]
            tokens = sum(per_cause.values()) if cause == "total" else per_cause.get(cause, 0)
            cells.append(f"{tokens:,} ({100 * tokens / loss_tokens:.1f}%)")
        rows.append(cells)
    return _Table(["cause", *labels], rows, [None] * len(rows))


# ---- HTML ----------------------------------------------------------------------------------------
_CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: var(--muted); margin: 0 0 20px; font-size: 14px; }
.summary { background: #eef6ff; border-left: 4px solid var(--accent); padding: 14px 18px; border-radius: 6px; }
.summary p { margin: 6px 0; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td:first-child { white-space: nowrap; }
td.left, th.left { text-align: left; }
td.message { text-align: left; min-width: 320px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 7px; vertical-align: -1px; }
figure { margin: 18px 0 30px; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; }
.note { color: var(--muted); font-size: 13.5px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  background: var(--soft); padding: 1px 4px; border-radius: 4px; }
nav { font-size: 14px; margin: 12px 0 0; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
footer { margin-top: 48px; color: var(--muted); font-size: 13px; }
"""


def _html_table(table: _Table) -> str:
    def e(text: str) -> str:
        # Long SPEC labels may break after their commas (not inside numbers such as 1,024).
        return re.sub(r",(?=[^\d\s])", ",<wbr>", html.escape(text))

    head = "".join(
        f'<th class="left">{e(h)}</th>' if i < table.align_left else f"<th>{e(h)}</th>" for i, h in enumerate(table.headers)
    )
    body = []
    for row, colour in zip(table.rows, table.colours, strict=True):
        cells = []
        for i, cell in enumerate(row):
            css = "message" if table.headers[i] == "message" else ("left" if i < table.align_left else "")
            content = e(cell)
            if i == 0 and colour:
                content = f'<span class="swatch" style="background:{e(colour)}"></span>{content}'
            cells.append(f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def render_html(document: dict[str, Any], images: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page (PNG figures embedded as data URIs)."""
    e = html.escape
    tables = _tables(document)
    source = document["input"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(_title(document))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{e(_title(document))}</h1>",
        f'<p class="meta">{e(source["source"])} · aggscope {e(document["aggscope_version"])}</p>',
        '<section class="summary">' + "".join(f"<p>{e(text)}</p>" for text in document["summary"]) + "</section>",
        "".join(f'<p class="note">input: {e(note)}</p>' for note in source.get("notes", [])),
        '<nav><a href="#glance">At a glance</a><a href="#figures">Figures</a>'
        + ('<a href="#changes">Changes</a>' if document["changes"] else "")
        + '<a href="#findings">Findings</a><a href="#steps">Steps</a></nav>',
        '<h2 id="glance">At a glance</h2>',
        _html_table(tables["specs"]),
        _html_table(tables["glance"]),
        '<p class="note">Σ weight and Σ |w·A|: sums over all loss tokens of all steps. ESS tokens: effective number of '
        "tokens (Σw)²/Σw². long/short: mean per-token weight of the longest quarter of responses over the shortest "
        "quarter's. longest ¼ mass: share of the gradient mass on the longest quarter of responses.</p>",
        "<h3>Gradient mass by response length</h3>",
        _html_table(tables["quartiles"]),
    ]
    if "difficulty" in tables:
        parts += [
            "<h3>Gradient mass by prompt difficulty</h3>",
            _html_table(tables["difficulty"]),
            '<p class="note">A prompt\'s difficulty is its group mean reward placed in the range of all rewards: hard '
            "in the lowest third, easy in the top third (for 0/1 rewards: the group's success rate).</p>",
        ]
    parts.append('<h2 id="figures">Figures</h2>')
    for name, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        title = FIGURE_TITLES.get(name, name)
        parts.append(
            f'<figure id="fig-{e(name)}"><img alt="{e(title)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption><b>{e(title)}.</b> {e(FIGURE_CAPTIONS.get(name, ''))}</figcaption></figure>"
        )
    if tables["changes"]:
        parts.append('<h2 id="changes">Changes against the base</h2>')
        for change in tables["changes"]:
            parts.append(f"<h3>{e(change['base'])} → {e(change['candidate'])}</h3>")
            parts.append(_html_table(change["moves"]))
            parts.append(_html_table(change["ratio"]))
            parts.append(f'<p class="note">{e(change["ratio_note"])}</p>')
            for key, heading in (
                ("prompts_gaining", "Prompts that gain the most"),
                ("prompts_losing", "Prompts that lose the most"),
            ):
                if key in change["prompts"] and change["prompts"][key].rows:
                    parts.append(f"<h3>{heading} (share of their step's weight)</h3>")
                    parts.append(_html_table(change["prompts"][key]))
    parts.append('<h2 id="findings">Findings</h2>')
    parts.append('<p class="note">What <code>aggscope check</code> finds under each layout, worst first.</p>')
    for block in tables["findings"]:
        parts.append(f"<h3>{e(block['layout'])}</h3>")
        parts.append(f'<p class="note">modes checked: {e(block["modes"])}</p>')
        parts.append(_html_table(block["table"]) if block["table"].rows else '<p class="note">No findings.</p>')
        if block["more"] > 0:
            parts.append(f'<p class="note">{e(_more_findings(block))}</p>')
        parts += [f'<p class="note">note: {e(note)}</p>' for note in block["notes"]]
    parts.append("<h3>Why tokens get no gradient</h3>")
    parts.append(_html_table(tables["zero_grad"]))
    parts += [
        '<h2 id="steps">Steps</h2>',
        _html_table(tables["steps"]),
    ]
    if len(source["steps"]) > HTML_STEP_ROWS:
        parts.append(f'<p class="note">First {HTML_STEP_ROWS} of {len(source["steps"])} steps; report.json has them all.</p>')
    parts.append(
        f"<footer>Made by aggscope {e(document['aggscope_version'])}. Every number on this page is in "
        "<code>report.json</code> beside it.</footer></main></body></html>"
    )
    return "\n".join(parts) + "\n"


# ---- Markdown ------------------------------------------------------------------------------------
def _md_table(table: _Table) -> str:
    def cell(text: str) -> str:
        return _md(text)

    lines = ["| " + " | ".join(cell(h) for h in table.headers) + " |"]
    lines.append("|" + "|".join(":---" if i < table.align_left else "---:" for i in range(len(table.headers))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(document: dict[str, Any]) -> str:
    """The report as Markdown, the figures referenced as the files beside it."""
    tables = _tables(document)
    source = document["input"]
    out = [f"# {_md(_title(document))}", "", f"{_md(source['source'])} · aggscope {document['aggscope_version']}", ""]
    out += [f"> {_md(text)}" + ("  " if i < len(document["summary"]) - 1 else "") for i, text in enumerate(document["summary"])]
    out += [""] + [f"input: {_md(note)}  " for note in source.get("notes", [])]
    out += ["", "## At a glance", "", _md_table(tables["specs"]), "", _md_table(tables["glance"]), ""]
    out += ["### Gradient mass by response length", ""]
    out += [_md_table(tables["quartiles"]), ""]
    if "difficulty" in tables:
        out += ["### Gradient mass by prompt difficulty", "", _md_table(tables["difficulty"]), ""]
    out += ["## Figures", ""]
    for name, filename in document.get("figures", {}).items():
        title = FIGURE_TITLES.get(name, name)
        out += [f"![{title}]({filename})", "", f"*{title}.* {FIGURE_CAPTIONS.get(name, '')}", ""]
    for change in tables["changes"]:
        out += [f"## {_md(change['base'])} → {_md(change['candidate'])}", "", _md_table(change["moves"]), ""]
        out += [_md_table(change["ratio"]), "", _md(change["ratio_note"]), ""]
        for key, heading in (("prompts_gaining", "Prompts that gain the most"), ("prompts_losing", "Prompts that lose the most")):
            if key in change["prompts"] and change["prompts"][key].rows:
                out += [f"### {heading} (share of their step's weight)", "", _md_table(change["prompts"][key]), ""]
    out += ["## Findings", ""]
    for block in tables["findings"]:
        out += [f"### {_md(block['layout'])}", "", f"modes checked: {_md(block['modes'])}", ""]
        out += [_md_table(block["table"]) if block["table"].rows else "No findings.", ""]
        if block["more"] > 0:
            out += [_md(_more_findings(block)), ""]
        out += [f"note: {_md(note)}" for note in block["notes"]] + ([""] if block["notes"] else [])
    out += ["### Why tokens get no gradient", "", _md_table(tables["zero_grad"]), ""]
    out += [
        "## Steps",
        "",
        _md_table(tables["steps"]),
        "",
        f"Made by aggscope {document['aggscope_version']}; numbers in report.json.",
        "",
    ]
    return "\n".join(out)


_MD_SPECIAL = re.compile(r"([\\\[\]|])")


def _md(text: str) -> str:
    """Data as Markdown text: HTML escaped as in report.html, and no link, image or table-cell break."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")
