"""`snakemake --report`: the HTML report of a tiny workflow run, its categories, captions and figures, and (when a
Chromium is installed) what a headless browser shows of it."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcli import paths

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "slurm" / "config.yaml"  # one dataset, customcnn__scratch, 2 folds, 1 epoch, Grad-CAM
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chromium-headless-shell")
CONFIG = "customcnn__scratch"
RUN = paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 0)

pytestmark = pytest.mark.slow


def _snakemake(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MEDCLI_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml", *args]
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The tiny workflow run to its summary (~70 s on 2 busy cores), then `snakemake --report results/report.html`."""
    folder = tmp_path_factory.mktemp("workflow")
    shutil.copy(TINY, folder / "config.yaml")
    proc = _snakemake(folder, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = _snakemake(folder, "--report", "results/report.html")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return folder / "results" / "report.html"


def _embedded(html: str, name: str):
    """The report's embedded data `<script id="...">var <name> = <JSON>;</script>`."""
    match = re.search(rf'<script id="{name.replace("_", "-")}">\s*var {name} = (.*?);\s*</script>', html, re.DOTALL)
    assert match, f"no `var {name}` in the report"
    return json.loads(match.group(1))


def test_the_report_lists_every_figure_by_dataset_and_configuration_with_captions(report):
    html = report.read_text()
    categories, results = _embedded(html, "categories"), _embedded(html, "results")

    run_figures = [paths.learning_curves_file(RUN)] + [
        paths.eval_figure_file(paths.figures_dir(RUN), kind, split) for split in ("val", "test") for kind in paths.EVAL_FIGURES]
    index = json.loads((report.parents[1] / paths.gradcam_index_file(RUN, "test")).read_text())
    galleries = [os.path.join(paths.gradcam_dir(RUN, "test"), name) for name in index["galleries"].values()]
    assert len(galleries) == 2  # one per true class of the tiny dataset
    summary_figures = [paths.summary_figure_file("results", "tiny", kind) for kind in paths.SUMMARY_FIGURES]
    assert categories == {
        "Summary": {"all datasets": [paths.summary_file("results", "html")], "tiny": sorted(summary_figures, key=os.path.basename)},
        "tiny": {CONFIG: sorted(run_figures + galleries, key=os.path.basename)},
    }

    for path, entry in results.items():
        assert entry["caption"].strip(), f"{path} has no caption"
        if path.endswith(".png"):
            assert entry["mime_type"] == "image/png"
            data = base64.b64decode(entry["data_uri"].split(",", 1)[1])
            assert data == (report.parents[1] / path).read_bytes(), f"{path}: embedded file differs"
    # the table of a configuration names each figure, its split and its run
    confusion_test = results[paths.eval_figure_file(paths.figures_dir(RUN), "confusion", "test")]
    assert confusion_test["labels"] == {"figure": "confusion matrix", "split": "test", "run": "seed 0, fold 0"}
    assert "row-normalised" in confusion_test["caption"]
    assert {results[g]["labels"]["figure"] for g in galleries} == {f"Grad-CAM, true class {c}" for c in index["galleries"]}
    assert "faithfulness" in results[galleries[0]]["caption"]
    assert "best epoch" in results[paths.learning_curves_file(RUN)]["caption"]
    strategies = results[paths.summary_figure_file("results", "tiny", "strategies")]
    assert strategies["labels"] == {"figure": "validation metric of every run, by strategy"}
    assert "balanced_accuracy" in strategies["caption"]  # the config's primary metric

    # the front page describes this experiment and links its categories
    desc = _embedded(html, "workflow_desc")
    assert "medcli" in desc and "tiny" in desc and "customcnn" in desc
    assert "app.showCategory(&#x27;Summary&#x27;)" in desc or "app.showCategory('Summary')" in desc


def test_a_second_run_after_the_report_has_nothing_to_do(report):
    """The figures and galleries the report lists are outputs and inputs the workflow recorded: nothing reruns."""
    proc = _snakemake(report.parents[1], "--cores", "2", "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser on PATH ({', '.join(BROWSERS)}); .ci/run installs Debian's chromium")


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--window-size=1280,900", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# Appended to a copy of the report: once the page has loaded, decode every embedded PNG as an <img> (its natural
# size, 0 when it does not load), open the configuration's sub-category and show its test confusion matrix.
PROBE = """
<script>
window.addEventListener("load", function () {
  var pngs = Object.keys(results).filter(function (p) { return results[p].mime_type === "image/png"; });
  Promise.all(pngs.map(function (p) {
    return new Promise(function (done) {
      var img = new Image();
      img.onload = function () { done([p, img.naturalWidth, img.naturalHeight]); };
      img.onerror = function () { done([p, 0, 0]); };
      img.src = results[p].data_uri;
    });
  })).then(function (sizes) {
    var out = document.createElement("pre");
    out.id = "medcli-probe";
    out.textContent = JSON.stringify(sizes);
    document.body.appendChild(out);
  });
  (function show() {  // once React has created the app
    if (typeof app === "undefined") { setTimeout(show, 50); return; }
    app.setView({navbarMode: "subcategory", category: "tiny", subcategory: "%(config)s"});
    setTimeout(function () {
      app.setView({content: "img", contentPath: results["%(shown)s"].data_uri, resultPath: "%(shown)s"});
    }, 200);
  })();
});
</script>
</body>
"""


def test_headless_chromium_opens_the_report_and_loads_every_figure(report, tmp_path):
    browser = _browser()
    shot = tmp_path / "first-page.png"
    proc = _headless(browser, tmp_path / "profile", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), proc.stderr[-3000:]
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 900)
        pixels = np.asarray(im.convert("L"), dtype=np.int16)
    # a rendered page, not a blank or "Loading..." screen: dark text on a light page over a good part of it
    assert (pixels < 128).mean() > 0.01 and (pixels > 200).mean() > 0.3, "the first page looks blank"

    shown = paths.eval_figure_file(paths.figures_dir(RUN), "confusion", "test")
    probe = tmp_path / "probe.html"
    html = report.read_text()
    probe.write_text(html[: html.rindex("</body>")] + PROBE % {"config": CONFIG, "shown": shown} + html[html.rindex("</body>") + 7:])
    proc = _headless(browser, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    dom = proc.stdout
    assert 'id="medcli-probe"' in dom, proc.stderr[-3000:]
    sizes = json.loads(re.search(r'<pre id="medcli-probe">(.*?)</pre>', dom, re.DOTALL).group(1))
    pngs = [p for p, entry in _embedded(html, "results").items() if entry["mime_type"] == "image/png"]
    assert len(sizes) == len(pngs) == 14
    not_loaded = [p for p, width, height in sizes if width < 100 or height < 100]
    assert not not_loaded, f"figures that did not load in {Path(browser).name}: {not_loaded}"
    # the app rendered its navigation (the sub-category's table of figures) and the chosen figure
    page = re.sub(r"<script.*?</script>", "", dom, flags=re.DOTALL)
    for text in ("tiny", "confusion matrix", "reliability diagram", "learning curves", "Grad-CAM, true class disk", "seed 0, fold 0"):
        assert text in page, text
    assert re.search(r'<img[^>]+src="data:image/png;[^"]*base64,', page)  # the test confusion matrix, shown
