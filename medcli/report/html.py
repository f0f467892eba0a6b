"""``summary.html``: the summary's Markdown as one self-contained web page, for a browser and Snakemake's report.

The Markdown (:mod:`medcli.report.markdown`) is rendered by Python-Markdown (tables, fenced code), its figures
(``![…](figures/….png)``, relative to the page) embedded as ``data:`` URIs so the page needs no other file, and
a small stylesheet makes the wide tables scroll instead of overflowing. Links to other files (run folders,
Grad-CAM galleries, model cards) stay relative: they work where the page sits beside the results.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.45; color: #1f2328;
       max-width: 1200px; margin: 1.5em auto; padding: 0 1.2em; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; display: block; overflow-x: auto; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; } code { background: #f6f8fa; padding: .05em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; } blockquote { color: #57606a; border-left: 4px solid #d0d7de;
margin-left: 0; padding-left: 1em; }
"""

_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')


def render_html(markdown_text: str, base: str | Path, title: str = "medcli summary") -> str:
    """The HTML page of ``markdown_text``; images whose ``src`` is a file relative to ``base`` (the page's folder)
    are embedded, any other ``src`` (missing file, URL) is left as written."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "sane_lists", "footnotes"], output_format="html")
    body = _IMG_SRC.sub(lambda m: m[1] + _embedded(m[2], Path(base)) + m[3], body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _embedded(src: str, base: Path) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*:", src, re.I):  # data:, http:, file: ... as they are
        return src
    path = base / html.unescape(src)
    kind = mimetypes.guess_type(path.name)[0]
    if kind is None or not kind.startswith("image/") or not path.is_file():
        return src
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
