"""Sections to a page: one self-contained HTML file (figures inline as SVG, no scripts, no
network resources) or its Markdown twin (figures as SVG files beside it)."""

from __future__ import annotations

import html
import re

from scalinglab.report.document import Section, Table

STYLE = """
body { font-family: Georgia, 'DejaVu Serif', serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; color: #111; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.4rem; border-bottom: 1px solid #ccc; }
p.meta, p.provenance, figcaption, caption { color: #444; font-size: 0.88rem; }
p.missing { font-style: italic; color: #555; }
figure { margin: 1.2rem 0; break-inside: avoid; }
figure svg { display: block; margin: 0 auto; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.85rem; width: 100%; }
caption { caption-side: bottom; text-align: left; padding-top: 0.3rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.4rem; text-align: left; vertical-align: top; }
td.text { font-family: 'DejaVu Sans Mono', monospace; white-space: pre-wrap; font-size: 0.78rem; }
code { font-family: 'DejaVu Sans Mono', monospace; font-size: 0.85em; }
nav ol { padding-left: 1.4rem; }
@media print { body { max-width: none; margin: 0; } h2 { break-after: avoid; } }
"""


def inline(text: str) -> str:
    """Escape text for HTML, then render the two marks readings use: **bold** and `code`."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_table(table: Table, text_columns: set[int]) -> str:
    head = "".join(f"<th>{inline(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{html.escape(cell)}</td>' if i in text_columns else f"<td>{inline(cell)}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in table.rows)
    caption = f"<caption>{inline(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(title: str, meta: list[str], sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # nothing may be fetched: the page must read the same offline and years later
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<p class="meta">{inline(m)}</p>' for m in meta]
    parts.append("<nav><ol>" + "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections)
                 + "</ol></nav>")
    figure_no = 0
    for number, section in enumerate(sections, 1):
        parts.append(f'<section id="{section.key}">')
        parts.append(f"<h2>{number}. {html.escape(section.title)}</h2>")
        if section.missing:
            parts.append(f'<p class="missing">{inline(section.missing)}</p>')
        parts += [f"<p>{inline(r)}</p>" for r in section.readings]
        for table in section.tables:
            text_columns = {len(table.columns) - 1} if section.key == "samples" else set()
            parts.append(_html_table(table, text_columns))
        for figure in section.figures:
            figure_no += 1
            parts.append(f'<figure id="fig-{figure.name}">{figure.svg}'
                         f"<figcaption>Figure {figure_no}. {inline(figure.caption)}</figcaption></figure>")
        parts += [f'<p class="provenance">{inline(p)}</p>' for p in section.provenance]
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def to_markdown(title: str, meta: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", ""] + [f"{m}  " for m in meta] + [""]
    figure_no = 0
    for number, section in enumerate(sections, 1):
        lines += [f"## {number}. {section.title}", ""]
        if section.missing:
            lines += [f"*{section.missing}*", ""]
        for reading in section.readings:
            lines += [reading, ""]
        for table in section.tables:
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            lines += ["", table.caption, ""] if table.caption else [""]
        for figure in section.figures:
            figure_no += 1
            lines += [f"![Figure {figure_no}](figures/{figure.name}.svg)", "",
                      f"*Figure {figure_no}. {figure.caption}*", ""]
        lines += [f"<sub>{p}</sub>  " for p in section.provenance]
        lines.append("")
    return "\n".join(lines)
