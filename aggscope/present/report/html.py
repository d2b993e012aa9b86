"""``report.html``: the report's sections as one self-contained page.

The figures are embedded as PNG data URIs and the style sheet is inline: the page fetches nothing
from anywhere, so it opens in any browser and can be attached to a pull request.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from html import escape as e

from aggscope.present.report.sections import (
    Block,
    Code,
    FigureBlock,
    Lines,
    Page,
    Paragraph,
    Section,
    Summary,
    TableBlock,
)
from aggscope.present.report.tables import Table

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


def render_html(page: Page, images: Mapping[str, bytes]) -> str:
    """The page, with each figure's PNG (``images``: figure name -> PNG bytes) embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(page.title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{e(page.title)}</h1>",
    ]
    parts += [_block(block, images) for block in page.opening]
    links = [f'<a href="#{e(s.anchor)}">{e(s.nav or s.title)}</a>' for s in page.sections if s.anchor is not None]
    parts.append(f"<nav>{''.join(links)}</nav>")
    for section in page.sections:
        parts += _section(section, images)
    parts.append(
        f"<footer>Made by aggscope {e(page.version)}. Every number on this page is in "
        "<code>report.json</code> beside it.</footer></main></body></html>"
    )
    return "\n".join(parts) + "\n"


def _section(section: Section, images: Mapping[str, bytes]) -> list[str]:
    anchor = "" if section.anchor is None else f' id="{e(section.anchor)}"'
    heading = f"<h{section.level}{anchor}>{e(section.title)}</h{section.level}>"
    return [heading, *(_block(block, images) for block in section.blocks)]


def _block(block: Block, images: Mapping[str, bytes]) -> str:
    if isinstance(block, TableBlock):
        return _table(block.table)
    if isinstance(block, Paragraph):
        text = "".join(f"<code>{e(span.text)}</code>" if isinstance(span, Code) else e(span) for span in block.spans)
        return f'<p class="{block.style}">{text}</p>'
    if isinstance(block, Lines):
        return "\n".join(f'<p class="note">{e(line)}</p>' for line in block.lines)
    if isinstance(block, Summary):
        return '<section class="summary">' + "".join(f"<p>{e(text)}</p>" for text in block.sentences) + "</section>"
    return _figure(block, images[block.name])


def _figure(figure: FigureBlock, png: bytes) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{e(figure.name)}"><img alt="{e(figure.title)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption><b>{e(figure.title)}.</b> {e(figure.caption)}</figcaption></figure>"
    )


def _table(table: Table) -> str:
    def text(cell: str) -> str:
        # Long SPEC labels may break after their commas (not inside numbers such as 1,024).
        return re.sub(r",(?=[^\d\s])", ",<wbr>", e(cell))

    head = "".join(
        f'<th class="left">{text(h)}</th>' if i < table.align_left else f"<th>{text(h)}</th>" for i, h in enumerate(table.headers)
    )
    body = []
    for row, colour in zip(table.rows, table.colours, strict=True):
        cells = []
        for i, cell in enumerate(row):
            css = "message" if table.headers[i] == "message" else ("left" if i < table.align_left else "")
            content = text(cell)
            if i == 0 and colour:
                content = f'<span class="swatch" style="background:{text(colour)}"></span>{content}'
            cells.append(f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
