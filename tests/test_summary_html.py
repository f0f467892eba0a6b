"""summary.html: the summary's Markdown as one self-contained page (tables rendered, figures embedded)."""

from __future__ import annotations

import base64

from medcli.report.html import render_html


def test_tables_are_rendered_figures_embedded_and_links_kept(tmp_path):
    (tmp_path / "figures").mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    (tmp_path / "figures" / "d_strategies.png").write_bytes(png)
    text = ("# Summary\n\n| Configuration | CV balanced accuracy |\n|---|---|\n| `resnet18__full` | **0.866 ± 0.119 (6)** |\n\n"
            "![Strategies](figures/d_strategies.png)\n\n![Gone](figures/missing.png)\n\n[gallery](d/runs/x/gallery_disk.png)\n")
    page = render_html(text, tmp_path)
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<strong>0.866 ± 0.119 (6)</strong>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page  # the page needs no other file
    assert 'src="figures/missing.png"' in page  # a missing figure stays a (broken) link, not an error
    assert 'href="d/runs/x/gallery_disk.png"' in page
