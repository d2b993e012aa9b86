"""``report.html``: the report's sections as one self-contained page.

The figures are embedded as PNG data URIs, the style sheet and one small script are inline
(``assets``), and the drill-down's data is JSON inside the page: the page fetches nothing from
anywhere, so it opens in any browser and can be attached to a pull request. With scripts off every
table, finding and figure is still there; the script sorts, shows values on hover, opens figures
large and fills the per-prompt drill-down.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable, Mapping
from html import escape as e
from urllib.parse import quote

from aggscope import fmt
from aggscope.present.report.assets import CSS, SCRIPT
from aggscope.present.report.sections import (
    Block,
    Chart,
    Code,
    Explorer,
    FigureBlock,
    Group,
    Lines,
    Page,
    Paragraph,
    Section,
    Summary,
    TableBlock,
)
from aggscope.present.report.tables import Table


def render_html(page: Page, images: Mapping[str, bytes]) -> str:
    """The page, with each figure's PNG (``images``: figure name -> PNG bytes) embedded."""
    return _render(page, {name: _data_uri(png) for name, png in images.items()})


def render_html_before_figures(page: Page) -> Callable[[Mapping[str, bytes]], str]:
    """``render_html`` in two halves, so the page can be rendered while its figures are drawn: the
    page is rendered now, with a slot for each figure; the function returned fills the slots with
    the figures' PNGs and gives the text ``render_html(page, images)`` gives.

    A slot holds a number made afresh for every page (no input can write it), so only slots are filled.
    """
    slots = _Slots(secrets.token_hex(16))
    text = _render(page, slots)

    def fill(images: Mapping[str, bytes]) -> str:
        sources = [_data_uri(images[name]) for name in slots]  # in slot order
        return re.sub(f"{slots.prefix}(\\d+)", lambda match: sources[int(match.group(1))], text)

    return fill


class _Slots(dict[str, str]):
    """Figure name -> the slot its source takes in the page, made when the page first asks for it."""

    def __init__(self, nonce: str) -> None:
        super().__init__()
        self.prefix = f"aggscope-figure-{nonce}-"

    def __missing__(self, name: str) -> str:
        slot = self[name] = f"{self.prefix}{len(self)}"
        return slot


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _render(page: Page, images: Mapping[str, str]) -> str:
    """The page's text, each figure's ``<img>`` taking its source from ``images`` (figure name -> URI or slot)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(page.title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{e(page.title)}</h1>",
    ]
    parts += [_block(block, images) for block in page.opening]
    links = [f'<a href="#{e(s.anchor)}">{e(s.nav or s.title)}</a>' for s in page.sections if s.anchor is not None]
    parts.append(f"<nav>{''.join(links)}</nav>")
    for section in page.sections:
        parts += _section(section, images)
    parts.append(
        f"<footer>Made by aggscope {e(page.version)}. Every number on this page is in "
        '<code>report.json</code> beside it.</footer></main><div id="tip"></div>'
        f"<script>{SCRIPT}</script></body></html>"
    )
    return "\n".join(parts) + "\n"


def _section(section: Section, images: Mapping[str, str]) -> list[str]:
    anchor = "" if section.anchor is None else f' id="{e(section.anchor)}"'
    heading = f"<h{section.level}{anchor}>{e(section.title)}</h{section.level}>"
    return [heading, *(_block(block, images) for block in section.blocks)]


def _block(block: Block, images: Mapping[str, str]) -> str:
    if isinstance(block, TableBlock):
        return _table(block.table)
    if isinstance(block, Paragraph):
        text = "".join(f"<code>{e(span.text)}</code>" if isinstance(span, Code) else e(span) for span in block.spans)
        return f'<p class="{block.style}">{text}</p>'
    if isinstance(block, Lines):
        return "\n".join(f'<p class="note">{e(line)}</p>' for line in block.lines)
    if isinstance(block, Summary):
        return '<section class="summary">' + "".join(f"<p>{e(text)}</p>" for text in block.sentences) + "</section>"
    if isinstance(block, Group):
        inner = "".join(_block(item, images) for item in block.blocks)
        return f"<details><summary>{e(block.summary)}</summary>{inner}</details>"
    if isinstance(block, Chart):
        return _chart(block)
    if isinstance(block, Explorer):
        return _explorer(block)
    return _figure(block, images[block.name])


def _figure(figure: FigureBlock, source: str) -> str:
    return (
        f'<figure id="fig-{e(figure.name)}" title="click to open large"><img alt="{e(figure.title)}" '
        f'src="{source}">'
        f"<figcaption><b>{e(figure.title)}.</b> {e(figure.caption)}</figcaption></figure>"
    )


def prompt_key(step: str, uid: str) -> str:
    """How the page names a prompt: ``STEP:UID`` (the drill-down's key, and ``#prompt=`` in links)."""
    return f"{step}:{uid}"


def _table(table: Table, *, table_id: str = "", keys: list[str] | None = None) -> str:
    def text(cell: str) -> str:
        # Long SPEC labels may break after their commas (not inside numbers such as 1,024).
        return re.sub(r",(?=[^\d\s])", ",<wbr>", e(cell))

    head = "".join(
        f'<th class="left">{text(h)}</th>' if i < table.align_left else f"<th>{text(h)}</th>" for i, h in enumerate(table.headers)
    )
    # A table with a step and a uid column links each uid to the prompt's drill-down.
    step_col = table.headers.index("step") if "step" in table.headers and "uid" in table.headers else None
    body = []
    for r, (row, colour) in enumerate(zip(table.rows, table.colours, strict=True)):
        cells = []
        for i, cell in enumerate(row):
            css = "message" if table.headers[i] == "message" else ("left" if i < table.align_left else "")
            content = text(cell)
            if i == 0 and colour:
                content = f'<span class="swatch" style="background:{text(colour)}"></span>{content}'
            if step_col is not None and table.headers[i] == "uid" and cell != fmt.MISSING:
                key = prompt_key(row[step_col], cell)
                content = f'<a class="prompt-link" href="#prompt={e(quote(key))}" data-prompt="{e(key)}">{content}</a>'
            cells.append(f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>")
        key_attr = "" if keys is None else f' data-key="{e(keys[r])}"'
        body.append(f"<tr{key_attr}>" + "".join(cells) + "</tr>")
    table_attr = f' id="{table_id}" data-web-only' if table_id else ""
    wrap = "tablewrap tall" if table_id else "tablewrap"
    return f'<div class="{wrap}"><table{table_attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _explorer(explorer: Explorer) -> str:
    data = {"labels": list(explorer.labels), "prompts": list(explorer.prompts)}
    # JSON inside a script element: "<" escaped so no text of the data can close it.
    encoded = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str).replace("<", "\\u003c")
    keys = [prompt_key(str(p["step"]), str(p["uid"])) for p in explorer.prompts]
    return (
        f'<p class="note">{e(explorer.note)} Click a uid to see its responses; every uid in the findings links here.</p>'
        '<input type="search" id="prompt-search" placeholder="search prompts by uid or text" aria-label="search prompts">'
        '<div id="prompt-detail" hidden></div>'
        + _table(explorer.table, table_id="prompt-table", keys=keys)
        + '<noscript><p class="note">The search and each prompt\'s rows need scripts; the table above and '
        "report.json's drilldown hold the same prompts.</p></noscript>"
        f'<script type="application/json" id="aggscope-drilldown">{encoded}</script>'
    )


CHART_WIDTH, BAR_AREA = 760, 200


def _chart(chart: Chart) -> str:
    """A grouped bar chart as inline SVG: one group per category, one bar per SPEC, its value on hover."""
    n_series = max(len(chart.series), 1)
    left, top, height = 44, 24, BAR_AREA
    group_width = (CHART_WIDTH - left - 10) / max(len(chart.categories), 1)
    bar = min(28.0, (group_width - 12) / n_series)
    peak = max((v for _, _, values in chart.series for v in values if v is not None), default=0.0)
    scale = max(peak, 1e-9) * 1.1
    parts = [
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {top + height + 40}" role="img" aria-label="{e(chart.title)}" '
        f'data-key="{e(chart.key)}"><text x="{left}" y="14">{e(chart.title)} (% of each mode\'s Σ|w·A|)</text>',
        f'<line x1="{left}" y1="{top + height}" x2="{CHART_WIDTH - 10}" y2="{top + height}" stroke="#d0d7de"/>',
    ]
    for c, category in enumerate(chart.categories):
        x0 = left + c * group_width + (group_width - bar * n_series) / 2
        for s, (label, colour, values) in enumerate(chart.series):
            value = values[c]
            if value is None:
                continue
            h = height * value / scale
            tip = f"{label} · {category}: {value:.1f}%"
            parts.append(
                f'<rect class="bar" x="{x0 + s * bar:.1f}" y="{top + height - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                f'fill="{e(colour)}" data-tip="{e(tip)}" data-label="{e(label)}" data-category="{c}" '
                f'data-value="{value!r}"><title>{e(tip)}</title></rect>'
            )
        parts.append(
            f'<text x="{left + (c + 0.5) * group_width:.1f}" y="{top + height + 16}" text-anchor="middle">{e(category)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
