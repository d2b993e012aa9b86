"""``report.md``: the report's sections as Markdown, the figures referenced as the files beside it.

Text from the data (uids, messages, SPEC labels, notes) is escaped as ``report.html`` escapes it:
HTML special characters as entities, and the brackets of a Markdown link or image and table-cell
bars with a backslash, so a uid cannot inject markup, a script or an image fetched from elsewhere.
"""

from __future__ import annotations

import html
import re

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
    Summary,
    TableBlock,
)
from aggscope.present.report.tables import Table


def render_markdown(page: Page) -> str:
    """The page as Markdown: every heading and block followed by a blank line."""
    out = [f"# {md(page.title)}", ""]
    for block in page.opening:
        out += [_block(block), ""]
    for section in page.sections:
        if section.web_only:
            continue
        out += [f"{'#' * (section.markdown_level or section.level)} {md(section.title)}", ""]
        for block in section.blocks:
            if not ((isinstance(block, Paragraph) and block.web_only) or isinstance(block, Chart | Explorer)):
                out += [_block(block), ""]
    out += [f"Made by aggscope {page.version}; numbers in report.json.", ""]
    return "\n".join(out)


def _block(block: Block) -> str:
    if isinstance(block, TableBlock):
        return _table(block.table)
    if isinstance(block, Paragraph):
        return "".join(f"`{span.text}`" if isinstance(span, Code) else md(span) for span in block.spans)
    if isinstance(block, Lines):
        return "  \n".join(md(line) for line in block.lines)  # a hard line break between notes
    if isinstance(block, Summary):
        return "  \n".join(f"> {md(text)}" for text in block.sentences)
    if isinstance(block, Group):
        return "\n\n".join([f"**{md(block.summary)}**", *(_block(inner) for inner in block.blocks)])
    if isinstance(block, FigureBlock):
        return _figure(block)
    return ""  # charts and the drill-down are the page's only


def _figure(figure: FigureBlock) -> str:
    return f"![{figure.title}]({figure.file})\n\n*{figure.title}.* {figure.caption}"


def _table(table: Table) -> str:
    def cell(text: str) -> str:
        return md(text)

    lines = ["| " + " | ".join(cell(h) for h in table.headers) + " |"]
    lines.append("|" + "|".join(":---" if i < table.align_left else "---:" for i in range(len(table.headers))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


_SPECIAL = re.compile(r"([\\\[\]|])")


def md(text: str) -> str:
    """Data as Markdown text: HTML escaped, no link or image brackets, no table-cell break, on one line."""
    return _SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")
